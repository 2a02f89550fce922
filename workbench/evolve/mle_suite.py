"""The ``mle`` suite: score a scaffold's MLE search knobs (``mle.yaml``) on built-in tasks.

A variant is scored by running the rules-brain tree search (``workbench.mle.evaluate``) on each
task of a split over a few seeds.  fitness = 0.8·mean leaderboard percentile + 0.2·any-medal
rate, both over (task, seed) runs; ``missed`` counts runs that ended without a valid submission
(a child may not raise it, as with the fault suite's silently-missed faults).

The task split, the evaluation cost (steps, time limit, seeds) and the graders all live here and
in ``experiments/mle`` — outside the editable scaffold.  Results are memoised per (mle.yaml
text, task, seed), so the staged evaluation (subset → selection) never reruns a search.

The rules brain (``mle_rules_proposal``) reads the weak tasks and mutates the knobs they
implicate: the draft/improve/debug split of the step budget, the improve-step probabilities,
and the hyper-parameter grid (draft default or range) of a model family for that task's kind.
"""

from __future__ import annotations

import hashlib
import random
import shutil
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from workbench.errors import BadInputError


def default_split() -> dict[str, list[str]]:
    """Selection = the task split's ``tune`` side, heldout = its ``heldout`` side
    (``experiments/mle/split.yaml``, the one record of it): both hold classification and
    regression tasks; the heldout tasks are never shown to the brain nor used in selection."""
    from experiments.mle.competition import task_split

    split = task_split()
    return {"selection": list(split["tune"]), "heldout": list(split["heldout"])}


@dataclass
class MleSuite:
    """The built-in MLE tasks, split, with the evaluation cost fixed for a whole evolution."""

    split: dict[str, list[str]] = field(default_factory=default_split)
    seeds: int = 1
    steps: int = 4
    time_limit_s: float = 60.0
    workers: int = 2
    data_dir: Path | None = None
    out_dir: Path | None = None
    subset_extra: int = 0  # the loop's stage 1 adds this many random other tasks
    _memo: dict[tuple[str, str, int], dict[str, Any]] = field(default_factory=dict, repr=False)
    _kinds: dict[str, str] = field(default_factory=dict, repr=False)

    name = "mle"

    def __post_init__(self) -> None:
        from experiments.mle.competition import TASKS_DIR, split_of

        known = {d.name for d in TASKS_DIR.iterdir() if (d / "config.yaml").is_file()}
        for split, tasks in self.split.items():
            bad = [t for t in tasks if t not in known]
            if bad:
                raise BadInputError(f"mle suite: unknown task(s) in {split}: {', '.join(bad)}")
        held = [t for t in self.split.get("selection", []) if split_of(t) == "heldout"]
        if held:  # selection steers the search: a held-out task there is no longer held out
            raise BadInputError(f"mle suite: held-out task(s) in selection: {', '.join(held)}")
        if self.steps < 1 or self.seeds < 1 or self.time_limit_s <= 0:
            raise BadInputError("--mle-steps, --mle-seeds and --mle-time-limit must be positive")

    # ---------------------------------------------------------------- the suite protocol
    def load(self, folder: str | Path) -> Any:
        from workbench.mle.config import load_mle_scaffold

        return load_mle_scaffold(folder)

    def ids(self, split: str) -> list[str]:
        if split == "all":
            return [t for v in self.split.values() for t in v]
        return list(self.split[split])

    def kind(self, task: str) -> str:
        """classification | regression (from the task's public files)."""
        if task not in self._kinds:
            from experiments.mle.competition import TASKS_DIR, load_competition
            from experiments.mle.taskinfo import infer_task
            from workbench.mle.agent import ensure_prepared

            comp = ensure_prepared(load_competition(TASKS_DIR / task, self.data_dir))
            info = infer_task(comp.public_dir, comp.grader_name)
            self._kinds[task] = "regression" if info.mode == "regression" else "classification"
        return self._kinds[task]

    def score(self, sc: Any, split: str = "selection", only: Any = None) -> dict[str, Any]:
        """Run the search (memoised) on the split's tasks; fitness and per-task rows."""
        from workbench.mle.evaluate import evaluate

        tasks = self.ids(split)
        if only is not None:
            tasks = [t for t in tasks if t in set(only)]
        if not tasks:
            raise BadInputError(f"no mle tasks in split {split!r}")
        key = _scaffold_key(sc)
        todo = [(t, s) for t in tasks for s in range(self.seeds) if (key, t, s) not in self._memo]
        from experiments.mle.competition import TASKS_DIR

        for seed in sorted({s for _, s in todo}):
            names = [t for t, s in todo if s == seed]
            base = Path(self.out_dir or Path(".workbench/mle/evolve")) / key[:12]
            rep = evaluate(
                sc,
                [TASKS_DIR / t for t in names],
                [seed],
                data_dir=self.data_dir,
                steps=self.steps,
                time_limit_s=self.time_limit_s,
                workers=min(self.workers, len(names)),
                track=False,
                out_dir=base,
            )
            for r in rep.results:
                self._memo[(key, r.task, seed)] = {
                    "task": r.task,
                    "seed": seed,
                    "percentile": r.percentile,
                    "medal": r.medal,
                    "any_medal": r.any_medal,
                    "valid": r.valid_submission,
                    "score": r.score,
                    "nodes": r.nodes,
                    "buggy_nodes": r.buggy_nodes,
                }
            shutil.rmtree(base, ignore_errors=True)  # solution scripts: not needed once graded
        runs = [self._memo[(key, t, s)] for t in tasks for s in range(self.seeds)]
        return with_fitness(runs, {t: self.kind(t) for t in tasks})

    @staticmethod
    def brief(res: dict[str, Any]) -> dict[str, Any]:
        keys = ("fitness", "mean_percentile", "medal_rate", "missed", "runs", "per_task")
        return {k: res.get(k) for k in keys}

    @staticmethod
    def failures(res: dict[str, Any]) -> list[dict[str, Any]]:
        """Tasks not at the top of their leaderboard, weakest first: what the brain targets.
        (Not "no gold": small searches win gold on easy tasks, and a gold can still improve.)"""
        out = [t for t in res["tasks"] if t["mean_percentile"] < 1.0]
        return sorted(out, key=lambda t: (t["mean_percentile"], t["scenario"]))

    @staticmethod
    def propose_rules(files: dict[str, str], fails: list[dict[str, Any]], rng: random.Random):
        return mle_rules_proposal(files, fails, rng)


def _scaffold_key(sc: Any) -> str:
    blob = sc.model_dump_json(exclude={"source"})
    return hashlib.sha1(blob.encode()).hexdigest()


def with_fitness(runs: list[dict[str, Any]], kinds: dict[str, str]) -> dict[str, Any]:
    pct = statistics.fmean(r["percentile"] for r in runs)
    medal = sum(r["any_medal"] for r in runs) / len(runs)
    tasks = []
    for t in dict.fromkeys(r["task"] for r in runs):
        rs = [r for r in runs if r["task"] == t]
        tasks.append(
            {
                "scenario": t,
                "kind": kinds.get(t, "classification"),
                "mean_percentile": round(statistics.fmean(r["percentile"] for r in rs), 4),
                "medals": [r["medal"] for r in rs],
                "gold_rate": sum(r["medal"] == "gold" for r in rs) / len(rs),
                "buggy_nodes": sum(r["buggy_nodes"] for r in rs),
                "nodes": sum(r["nodes"] for r in rs),
                "invalid": sum(not r["valid"] for r in rs),
            }
        )
    return {
        "fitness": round(0.8 * pct + 0.2 * medal, 6),
        "mean_percentile": round(pct, 4),
        "medal_rate": round(medal, 4),
        "missed": sum(not r["valid"] for r in runs),
        "runs": len(runs),
        "per_task": {t["scenario"]: t["mean_percentile"] for t in tasks},
        "tasks": tasks,
    }


# ------------------------------------------------------------------ the rules brain (mle.yaml)
# search knob → (kind of value, low, high); moves are small steps inside these ranges.
KNOBS = {
    "num_drafts": ("int", 1, 12),
    "debug_prob": ("prob", 0.0, 1.0),
    "max_debug_depth": ("int", 0, 6),
    "ensemble_prob": ("prob", 0.0, 1.0),
    "family_switch_prob": ("prob", 0.0, 1.0),
}


def _set_knob(text: str, key: str, rng: random.Random) -> tuple[str, str]:
    from workbench.evolve.propose import InvalidEdit, set_threshold

    data = yaml.safe_load(text) or {}
    old = (data.get("search") or {}).get(key)
    if not isinstance(old, int | float):
        raise InvalidEdit(f"mle.yaml: no search.{key}")
    typ, lo, hi = KNOBS[key]
    if typ == "int":
        new = old + rng.choice([-1, 1])
    else:
        new = round(old + rng.choice([-1, 1]) * rng.choice([0.1, 0.2]), 3)
    new = min(hi, max(lo, new))
    if key == "num_drafts":
        new = min(new, int((data.get("search") or {}).get("steps", new)))
    if new == old:
        raise InvalidEdit(f"mle.yaml: search.{key} is at its bound ({old})")
    out, a, b = set_threshold(text, "search", key, float(new))
    return out, f"mle.yaml: search.{key} {a} → {b}"


_GRID_LINE = r"^(?P<ind>\s{{4}}){fam}:\s*(?P<body>\{{.*\}})(?P<post>\s*(#.*)?)$"


def _set_grid(text: str, kind: str, rng: random.Random) -> tuple[str, str]:
    """Change one family's grid for ``kind``: a new draft default, or a wider range."""
    import re

    from workbench.evolve.propose import InvalidEdit

    lines = text.splitlines(keepends=True)
    start = next((i for i, ln in enumerate(lines) if re.match(rf"^  {kind}:\s*$", ln)), None)
    if start is None:
        raise InvalidEdit(f"mle.yaml: no families.{kind}")
    cands = []
    for j in range(start + 1, len(lines)):
        if not lines[j].startswith("    "):
            break
        m = re.match(r"^\s{4}(\w+):\s*(\{.*\})", lines[j])
        if m:
            cands.append((j, m.group(1)))
    if not cands:
        raise InvalidEdit(f"mle.yaml: families.{kind} has no flow-style grid")
    j, fam = rng.choice(cands)
    m = re.match(_GRID_LINE.format(fam=re.escape(fam)), lines[j].rstrip("\n"))
    grid = yaml.safe_load(m["body"])
    param = rng.choice(sorted(grid))
    values = list(grid[param])
    nums = [v for v in values if isinstance(v, int | float) and not isinstance(v, bool)]
    moves = ["default"] if len(values) > 1 else []
    if nums and len(values) < 8:
        moves.append("widen")
    if not moves:
        raise InvalidEdit(f"mle.yaml: {kind}.{fam}.{param} has nothing to change")
    if rng.choice(moves) == "default":
        pick = rng.choice(values[1:])
        values = [pick] + [v for v in values if v != pick]
        what = f"draft default {grid[param][0]} → {pick}"
    else:
        up = rng.random() < 0.5
        edge = max(nums) if up else min(nums)
        if isinstance(edge, int):
            new = edge * 2 if up else max(1, edge // 2)
        else:
            new = round(edge * 2 if up else edge / 2, 6)
        if new in values:
            raise InvalidEdit(f"mle.yaml: {kind}.{fam}.{param} cannot widen past {edge}")
        values.append(new)
        what = f"range + {new}"
    grid[param] = values
    body = yaml.safe_dump(grid, default_flow_style=True, sort_keys=False, width=1000).strip()
    lines[j] = f"{m['ind']}{fam}: {body}{m['post']}\n"
    return "".join(lines), f"mle.yaml: {kind}.{fam}.{param} {what}"


def mle_rules_proposal(
    parent_files: dict[str, str], fails: list[dict[str, Any]], rng: random.Random
):
    """Targeted mutation of the knobs a weak task implicates (a few tries for a valid edit).

    A task with buggy nodes → the debug knobs; otherwise the draft/improve split of the step
    budget, the improve-step probabilities, or a hyper-parameter grid of its kind (regression or
    classification) — the part of the search space that task draws from.
    """
    from workbench.evolve.propose import InvalidEdit, Proposal

    if not fails:
        raise InvalidEdit("the parent tops every selection leaderboard: nothing to target")
    if "mle.yaml" not in parent_files:
        raise InvalidEdit("the scaffold has no mle.yaml")
    text = parent_files["mle.yaml"]
    last: Exception | None = None
    # Weaker tasks are targeted more often.
    weights = [1.0 + (1.0 - f["mean_percentile"]) * 4 for f in fails]
    for _ in range(10):
        f = rng.choices(fails, weights=weights, k=1)[0]
        moves = ["grid", "grid", "num_drafts", "ensemble_prob", "family_switch_prob"]
        if f.get("buggy_nodes"):
            moves += ["debug_prob", "max_debug_depth"]
        move = rng.choice(moves)
        try:
            if move == "grid":
                new, what = _set_grid(text, f["kind"], rng)
            else:
                new, what = _set_knob(text, move, rng)
        except InvalidEdit as exc:
            last = exc
            continue
        if new == text:
            continue
        why = f"{f['scenario']} ({f['kind']}) at percentile {f['mean_percentile']:.2f}"
        return Proposal({"mle.yaml": new}, f"{what} — weak {why}")
    raise InvalidEdit(f"no targeted mle.yaml edit found ({last})")
