"""The rules brain's draft priors, measured on the ``tune`` side of the task split only.

The first drafts of every run (``drafts`` in ``scaffold/mle.yaml``) are a belief about which
model families win on small tables. Written by hand they were a belief formed while looking at
every built-in task, held-out ones included; here they are derived instead:

1. every family of the scaffold's grids at its grid default, plus the linear model on degree-2
   polynomial features, is scored by the search's own solution script (K-fold CV on the public
   ``train.csv``, the same sandbox) on each ``tune`` task;
2. a blend and a stack of the three families with the best mean CV rank so far (per kind:
   classification, regression) are scored the same way;
3. per kind, candidates are ordered by mean CV rank over that kind's tune tasks, those that
   fit the eval's budget first: a candidate whose script took longer on average than one
   node's share of the default eval run (``EVAL_TIME_LIMIT_S / EVAL_STEPS``) goes behind
   every one that fits, since a draft that eats the run's budget leaves no time to improve it
   (or, cut by the time limit, no submission at all); the first ``DRAFTS`` of them (at most one
   ensemble) are the draft recipes.

The record (``experiments/mle/priors.json``) keeps every CV score and wall time; ``drafts_from_record``
recomputes the order from it, and a test checks that ``mle.yaml``'s drafts equal it and that no
held-out task was read.

    python -m workbench.mle.priors [--seed 0] [--record PATH] [--scaffold DIR] [--write]
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import yaml

from experiments.mle.competition import TASKS_DIR, load_competition, task_split
from experiments.mle.taskinfo import TaskInfo, infer_task
from model.files import atomic_write_text
from workbench.errors import BadInputError
from workbench.mle.brains import NodeView, Proposal, TaskContext, render_script
from workbench.mle.budget import EVAL_STEPS, EVAL_TIME_LIMIT_S
from workbench.mle.config import PACKAGED, MleScaffold, load_mle_scaffold

RECORD = Path(__file__).resolve().parents[2] / "experiments" / "mle" / "priors.json"
DRAFTS = 5  # draft recipes kept per kind
TOP = 3  # families an ensemble candidate takes
KINDS = ("classification", "regression")
NODE_BUDGET_S = EVAL_TIME_LIMIT_S / EVAL_STEPS  # one node's share of a default eval run


def kind_of(info: TaskInfo) -> str:
    return "regression" if info.mode == "regression" else "classification"


def single_candidates(sc: MleScaffold, kind: str) -> dict[str, dict]:
    """label → spec: each family at its grid default, and linear on polynomial features."""
    grids = sc.families.regression if kind == "regression" else sc.families.classification
    out = {
        fam: {"family": fam, "params": {k: v[0] for k, v in g.items()}} for fam, g in grids.items()
    }
    if "linear" in out:
        out["linear+poly2"] = {**out["linear"], "fe": {"poly": 2}}
    return out


def ensemble_candidates(singles: dict[str, dict], order: Sequence[str]) -> dict[str, dict]:
    """A blend and a stack of the ``TOP`` best singles (``order``: best first)."""
    members = [copy.deepcopy(singles[label]) for label in order[:TOP]]
    return {kind: {"family": kind, "members": members} for kind in ("stack", "blend")}


class _Fixed:
    """A brain that writes the given specs in order, whatever step the search asks for."""

    name = "priors"

    def __init__(self, specs: Sequence[dict]) -> None:
        self.specs = list(specs)
        self.i = 0

    def _next(self, ctx: TaskContext) -> Proposal:
        spec = self.specs[min(self.i, len(self.specs) - 1)]
        self.i += 1
        plan = f"priors candidate {self.i}"
        return Proposal(plan=plan, code=render_script(ctx, spec, plan), spec=spec, brain=self.name)

    def draft(self, ctx: TaskContext, memory: list[NodeView]) -> Proposal:
        return self._next(ctx)

    def improve(self, ctx: TaskContext, node: NodeView, memory: list[NodeView]) -> Proposal:
        return self._next(ctx)

    def debug(self, ctx: TaskContext, node: NodeView) -> Proposal:
        return self._next(ctx)


def task_info(task: str, data_dir: Path | None) -> TaskInfo:
    from workbench.mle.agent import ensure_prepared

    comp = ensure_prepared(load_competition(TASKS_DIR / task, data_dir))
    return infer_task(comp.public_dir, comp.grader_name)


Measured = tuple[float | None, float]  # (CV score or None where the script failed, wall s)


def measure(
    task: str, specs: Sequence[dict], seed: int, sc: MleScaffold, data_dir: Path | None
) -> list[Measured]:
    """(CV score, wall seconds) of each spec on ``task``, in order."""
    from workbench.mle.agent import run_task

    scores: list[Measured] = []
    with tempfile.TemporaryDirectory(prefix="mle-priors-") as tmp:
        run_task(
            task,
            data_dir=data_dir,
            brain=_Fixed(specs),
            steps=len(specs),
            time_limit_s=sc.sandbox.node_timeout_s * (len(specs) + 1),
            seed=seed,
            scaffold=sc,
            track=False,
            out_dir=Path(tmp) / task,
            on_node=lambda n: scores.append((n.score if n.status == "ok" else None, n.wall_s)),
        )
    return scores


def mean_ranks(scores: dict[str, dict[str, float | None]], lower: dict[str, bool]) -> dict:
    """label → mean rank over tasks (1 = best, ties share their mean rank, a failed script
    ranks last on its task)."""
    ranks: dict[str, list[float]] = {}
    for task, by_label in scores.items():
        sign = 1.0 if lower[task] else -1.0  # after the sign, lower is better everywhere
        ok = [sign * s for s in by_label.values() if s is not None]
        for label, s in by_label.items():
            if s is None:
                rank = float(len(by_label))
            else:
                better = sum(v < sign * s for v in ok)
                tied = sum(v == sign * s for v in ok)
                rank = 1.0 + better + (tied - 1) / 2.0
            ranks.setdefault(label, []).append(rank)
    return {label: statistics.fmean(r) for label, r in ranks.items()}


def ordered(ranks: dict[str, float]) -> list[str]:
    """Best mean rank first; ties broken by label so the order is reproducible."""
    return sorted(ranks, key=lambda label: (ranks[label], label))


def _column(measured: dict[str, dict[str, Measured]], i: int) -> dict[str, dict[str, Any]]:
    """task → label → the ``i``-th part of each measurement (0: CV score, 1: wall seconds)."""
    return {t: {label: m[i] for label, m in by_label.items()} for t, by_label in measured.items()}


def mean_walls(walls: dict[str, dict[str, float]]) -> dict[str, float]:
    """label → mean wall seconds over tasks."""
    per: dict[str, list[float]] = {}
    for by_label in walls.values():
        for label, w in by_label.items():
            per.setdefault(label, []).append(w)
    return {label: statistics.fmean(w) for label, w in per.items()}


def drafts_from_record(record: dict) -> dict[str, list[dict]]:
    """Per kind, the ``DRAFTS`` best candidates by mean CV rank, those within the record's
    node budget first, at most one ensemble."""
    out: dict[str, list[dict]] = {}
    budget = record.get("node_budget_s")
    for kind in KINDS:
        part = record["kinds"].get(kind)
        if not part:
            out[kind] = []
            continue
        lower = {t: record["tasks"][t]["lower_is_better"] for t in part["scores"]}
        walls = mean_walls(part.get("wall_s", {}))

        over = {lb: budget is not None and walls.get(lb, 0.0) > budget for lb in part["specs"]}
        picks: list[dict] = []
        ensemble_taken = False
        # a stable sort: within each side of the budget, the CV order stays
        for label in sorted(ordered(mean_ranks(part["scores"], lower)), key=over.__getitem__):
            spec = part["specs"][label]
            is_ensemble = spec["family"] in ("blend", "stack")
            if is_ensemble and ensemble_taken:
                continue
            ensemble_taken |= is_ensemble
            picks.append(spec)
            if len(picks) == DRAFTS:
                break
        out[kind] = picks
    return out


def derive(
    tasks: Sequence[str] | None = None,
    *,
    seed: int = 0,
    scaffold: MleScaffold | None = None,
    data_dir: Path | None = None,
    score: Callable[..., list[Measured]] | None = None,
    info: Callable[[str, Path | None], TaskInfo] | None = None,
) -> dict:
    """Measure the candidates on tune tasks; the record ``drafts_from_record`` reads."""
    score = score or measure
    info = info or task_info
    tune = task_split()["tune"]
    tasks = list(tune if tasks is None else tasks)
    held = [t for t in tasks if t not in tune]
    if held:
        # The guard the split exists for: priors never see a held-out (or unknown) task.
        raise BadInputError(f"priors read tune tasks only; not tune: {', '.join(held)}")
    sc = scaffold or load_mle_scaffold()
    infos = {t: info(t, data_dir) for t in tasks}
    record: dict[str, Any] = {
        "split": "tune",
        "seed": seed,
        "folds": sc.validation.folds,
        "node_budget_s": round(NODE_BUDGET_S, 3),
        "tasks": {
            t: {"kind": kind_of(i), "metric": i.metric, "lower_is_better": i.lower_is_better}
            for t, i in infos.items()
        },
        "kinds": {},
    }
    lower = {t: i.lower_is_better for t, i in infos.items()}
    for kind in KINDS:
        mine = [t for t in tasks if kind_of(infos[t]) == kind]
        if not mine:
            continue
        singles = single_candidates(sc, kind)

        def scored(t: str, specs: dict[str, dict]) -> dict[str, Measured]:
            got = list(score(t, list(specs.values()), seed, sc, data_dir))
            # a run cut short: the rest failed, after the whole node timeout
            got += [(None, float(sc.sandbox.node_timeout_s))] * (len(specs) - len(got))
            return dict(zip(specs, got[: len(specs)], strict=True))

        measured = {t: scored(t, singles) for t in mine}
        singles_rank = mean_ranks(_column(measured, 0), lower)
        ensembles = ensemble_candidates(singles, ordered(singles_rank))
        for t in mine:
            measured[t].update(scored(t, ensembles))
        scores = _column(measured, 0)
        walls = {
            t: {lb: round(w, 2) for lb, w in m.items()} for t, m in _column(measured, 1).items()
        }
        record["kinds"][kind] = {
            "tasks": mine,
            "specs": {**singles, **ensembles},
            "scores": scores,
            "wall_s": walls,
            "mean_rank": {k: round(v, 3) for k, v in mean_ranks(scores, lower).items()},
            "mean_wall_s": {k: round(v, 2) for k, v in mean_walls(walls).items()},
        }
    record["drafts"] = drafts_from_record(record)
    return record


def write_drafts(yaml_path: Path, drafts: dict[str, list[dict]]) -> None:
    """Replace the ``drafts:`` block of ``mle.yaml`` (the rest of the file, comments included,
    stays as it is)."""
    lines = yaml_path.read_text().splitlines(keepends=True)
    start = next((i for i, ln in enumerate(lines) if ln.rstrip() == "drafts:"), None)
    if start is None:
        raise BadInputError(f"{yaml_path}: no top-level `drafts:` block to replace")
    end = start + 1
    while end < len(lines) and (lines[end].startswith((" ", "\n")) or not lines[end].strip()):
        end += 1
    # Blank lines and comments just above the next key belong to it, not to the block.
    while end > start + 1 and (
        not lines[end - 1].strip() or lines[end - 1].lstrip().startswith("#")
    ):
        end -= 1
    block = ["drafts:\n"]
    for kind in KINDS:
        specs = drafts.get(kind, [])
        block.append(f"  {kind}:{'' if specs else ' []'}\n")
        for spec in specs:
            flow = yaml.safe_dump(spec, default_flow_style=True, sort_keys=False, width=10_000)
            block.append(f"    - {flow.strip()}\n")
    atomic_write_text(yaml_path, "".join(lines[:start] + block + lines[end:]))


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m workbench.mle.priors", description=__doc__)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--record", type=Path, default=RECORD, help="where the record is written")
    ap.add_argument("--scaffold", type=Path, default=PACKAGED, help="folder holding mle.yaml")
    ap.add_argument("--data-dir", type=Path, default=None)
    ap.add_argument("--write", action="store_true", help="also rewrite mle.yaml's drafts")
    args = ap.parse_args(argv)
    try:
        sc = load_mle_scaffold(args.scaffold)
        record = derive(seed=args.seed, scaffold=sc, data_dir=args.data_dir)
        atomic_write_text(args.record, json.dumps(record, indent=1) + "\n")
        if args.write:
            write_drafts(Path(sc.source), record["drafts"])
    except BadInputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for kind, part in record["kinds"].items():
        print(f"{kind} ({', '.join(part['tasks'])}): mean CV rank, mean wall s")
        for label in ordered(part["mean_rank"]):
            wall = part["mean_wall_s"][label]
            over = "" if wall <= record["node_budget_s"] else "  (over the node budget)"
            print(f"  {part['mean_rank'][label]:5.2f}  {wall:6.1f}  {label}{over}")
    print(f"record: {args.record}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
