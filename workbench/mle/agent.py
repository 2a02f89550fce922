"""The AIDE-style search: a tree of complete solution scripts, each run in the sandbox.

    run_task(task) → for each step: policy picks draft | debug(buggy leaf) | improve(best)
                   → the brain writes a script → it runs sandboxed → a node (ok | buggy)
                   → best node by validation score → its submission is graded (outside)

Every node is a nested MLflow run under the task's run (code and log as artifacts, validation
score as a metric, status as a tag); the journal (``journal.json`` in the run dir) is rewritten
after every node, so a killed run leaves a readable record of what it tried.
"""

from __future__ import annotations

import json
import math
import os
import random
import re
import shutil
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from experiments.mle.competition import (
    TASKS_DIR,
    Competition,
    CompetitionError,
    load_competition,
    prepare,
)
from experiments.mle.taskinfo import TaskInfoError, infer_task
from model.files import atomic_write_text
from trainer.tracking import MlflowTracker, NullTracker, Tracker, TrackingError
from workbench.errors import BadInputError
from workbench.mle.brains import Brain, NodeView, Proposal, TaskContext, last_error, make_mle_brain
from workbench.mle.config import MleScaffold, load_mle_scaffold
from workbench.mle.isolation import (
    GAPS,
    NodeLimits,
    choose_level,
    copy_public,
    prepare_workdir,
    run_solution,
    sklearn_data_dirs,
)

_FOLDS = re.compile(r"validation_folds:\s*(\[[^\]\n]*\])")
_SCORE = re.compile(
    r"validation_score:\s*([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?|nan|inf)", re.I
)


@dataclass
class Node:
    id: int
    parent: int | None
    stage: str  # draft | improve | debug
    plan: str
    code: str
    spec: dict | None
    brain: str
    debug_depth: int = 0
    status: str = "pending"  # ok | buggy
    score: float | None = None
    cv_folds: list[float] = field(default_factory=list)  # per-fold CV scores (the spread)
    cv_std: float | None = None
    error: str | None = None
    wall_s: float = 0.0
    log_tail: str = ""
    children: list[int] = field(default_factory=list)
    mlflow_run_id: str | None = None

    def view(self) -> NodeView:
        return NodeView(
            self.id,
            self.stage,
            self.plan,
            self.code,
            self.spec,
            self.status,
            self.score,
            self.log_tail,
            self.cv_std,
        )


@dataclass
class RunResult:
    task: str
    seed: int
    brain: str
    score: float | None
    medal: str
    any_medal: bool
    above_median: bool
    percentile: float
    valid_submission: bool
    validation_score: float | None
    best_node: int | None
    nodes: int
    buggy_nodes: int
    wall_s: float
    run_dir: str
    mlflow_run_id: str | None
    hiding: str
    grade_error: str | None = None
    sandbox_uncovered: dict[str, str] = field(default_factory=dict)  # GAPS the sandbox left

    def to_dict(self) -> dict:
        return asdict(self)


def hidden_paths(comp: Competition, run_dir: Path) -> list[Path]:
    """What a solution must never read: every competition's data (raw, prepared, answers),
    every task folder (``grade.py``, ``prepare.py``), scikit-learn's bundled datasets. The
    run's own copy of the public files lives in ``run_dir``, outside all of these."""
    data = comp.data_dir
    try:
        run_dir.resolve().relative_to(data.resolve())
        data = comp.data_dir / comp.id  # a run kept under the data dir: hide this task's only
    except ValueError:
        pass
    dirs = [data, comp.raw_dir, comp.private_dir, comp.answers, comp.comp_dir, TASKS_DIR]
    return [*dict.fromkeys(dirs), *sklearn_data_dirs()]


# ------------------------------------------------------------------------------------ policy


def better(a: float, b: float, lower: bool) -> bool:
    return a < b if lower else a > b


def best_node(nodes: list[Node], lower: bool) -> Node | None:
    best = None
    for n in nodes:
        if (
            n.status == "ok"
            and n.score is not None
            and (best is None or better(n.score, best.score, lower))
        ):
            best = n
    return best


def subtree_size(nodes: list[Node], node: Node) -> int:
    """How many descendants a node has (how much its branch has been explored)."""
    by_id = {n.id: n for n in nodes}
    todo, size = list(node.children), 0
    while todo:
        child = by_id.get(todo.pop())
        if child is not None:
            size += 1
            todo.extend(child.children)
    return size


def pick_node(nodes: list[Node], lower: bool, explore_c: float) -> Node | None:
    """The node to improve: good CV rank plus a bonus for a little-explored branch (UCB)."""
    ok = [n for n in nodes if n.status == "ok" and n.score is not None]
    if not ok:
        return None
    ranked = sorted(ok, key=lambda n: n.score, reverse=not lower)  # best first
    total = math.log(len(nodes) + 1)

    def value(i: int, n: Node) -> float:
        rank = 1.0 - i / max(1, len(ranked) - 1) if len(ranked) > 1 else 1.0
        return rank + explore_c * math.sqrt(total / (1 + subtree_size(nodes, n)))

    return max(enumerate(ranked), key=lambda t: (value(*t), -t[0]))[1]


def choose_action(
    nodes: list[Node], sc: MleScaffold, lower: bool, rng: random.Random
) -> tuple[str, Node | None]:
    """AIDE's policy: drafts first; then maybe debug a buggy leaf; else improve a node chosen
    by CV score and by how little its branch has been explored."""
    knobs = sc.search
    if sum(1 for n in nodes if n.stage == "draft") < knobs.num_drafts:
        return "draft", None
    if rng.random() < knobs.debug_prob:
        leaves = [
            n
            for n in nodes
            if n.status == "buggy" and not n.children and n.debug_depth < knobs.max_debug_depth
        ]
        if leaves:
            return "debug", rng.choice(leaves)
    target = pick_node(nodes, lower, knobs.explore_c)
    if target is None:
        return "draft", None
    return "improve", target


# ------------------------------------------------------------------------------------ checks


def parse_folds(log: str) -> list[float]:
    found = _FOLDS.findall(log or "")
    try:
        values = [float(v) for v in json.loads(found[-1])] if found else []
    except (ValueError, TypeError):
        return []
    return values if all(math.isfinite(v) for v in values) else []


def parse_validation_score(log: str) -> float | None:
    found = _SCORE.findall(log or "")
    if not found:
        return None
    value = float(found[-1])
    return value if math.isfinite(value) else None


def check_submission(path: Path, sample: pd.DataFrame) -> str | None:
    """None when the file matches the sample submission's columns and ids; else the problem."""
    if not path.is_file():
        return "no submission/submission.csv was written"
    try:
        sub = pd.read_csv(path)
    except Exception as exc:  # noqa: BLE001 — any unreadable file is the script's bug
        return f"submission.csv is unreadable: {exc}"
    if list(sub.columns) != list(sample.columns):
        return f"submission columns {list(sub.columns)[:6]} != sample {list(sample.columns)[:6]}"
    if len(sub) != len(sample):
        return f"submission has {len(sub)} rows, the sample {len(sample)}"
    id_col = sample.columns[0]
    if set(sub[id_col].astype(str)) != set(sample[id_col].astype(str)):
        return "submission ids differ from the sample submission's"
    if sub[sample.columns[1:]].isna().any().any():
        return "submission has missing values"
    return None


def data_preview(public_dir: Path, max_cols: int = 20) -> str:
    lines = []
    for name in ("train.csv", "test.csv", "sample_submission.csv"):
        p = public_dir / name
        if not p.is_file():
            continue
        df = pd.read_csv(p, nrows=3)
        cols = list(df.columns)
        more = f" … (+{len(cols) - max_cols} more)" if len(cols) > max_cols else ""
        lines.append(f"{name}: columns {cols[:max_cols]}{more}")
        lines.append(df.iloc[:, :max_cols].to_string(index=False))
    return "\n".join(lines)


# ------------------------------------------------------------------------------------ tracking


def _tracker(track: bool, uri: str | None, name: str, tags: dict[str, str]) -> Tracker:
    """The trainer's tracker (one metrics path into MLflow), experiment ``mle``; nodes are its
    child runs."""
    if not track:
        return NullTracker()
    try:
        return MlflowTracker(uri, "mle", run_name=name, tags=tags, system_metrics=False)
    except TrackingError as exc:
        raise BadInputError(str(exc)) from None


def _harness_refusal(code: str) -> str | None:
    """Why a solution script may not run (it touches the fault harness's switches), or None."""
    from workbench.supervisor.patches import HarnessGuardError, guard

    try:
        guard({}, {"solution.py": code})
    except HarnessGuardError as exc:
        return str(exc)
    return None


def _write_json(path: Path, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=1, default=str))


# ------------------------------------------------------------------------------------ the run


def ensure_prepared(comp: Competition) -> Competition:
    if comp.is_prepared():
        return comp
    if comp.comp_dir.parent == TASKS_DIR:  # built-in: cheap to build locally
        return prepare(comp)
    raise BadInputError(
        f"{comp.id} is not prepared under {comp.data_dir} (prepare it with `workbench mle prepare "
        f"{comp.comp_dir}` or point --data-dir at MLE-Bench's data dir)"
    )


def run_task(
    task: str | Path,
    *,
    data_dir: Path | None = None,
    brain: str | Brain = "rules",
    steps: int | None = None,
    time_limit_s: float | None = None,
    seed: int = 0,
    scaffold: str | Path | MleScaffold | None = None,
    tracking_uri: str | None = None,
    track: bool = True,
    out_dir: Path | None = None,
    brain_opts: dict | None = None,
    on_node: Callable[[Node], None] | None = None,
) -> RunResult:
    t0 = time.monotonic()
    try:
        comp = ensure_prepared(load_competition(task, data_dir))
    except CompetitionError as exc:
        raise BadInputError(str(exc)) from None
    sc = scaffold if isinstance(scaffold, MleScaffold) else load_mle_scaffold(scaffold)
    sc = sc.with_search(steps=steps, time_limit_s=time_limit_s)
    try:
        info = infer_task(comp.public_dir, comp.grader_name)
    except TaskInfoError as exc:
        raise BadInputError(f"{comp.id}: {exc}") from None
    the_brain = (
        make_mle_brain(brain, seed=seed, **(brain_opts or {})) if isinstance(brain, str) else brain
    )
    fallback: Brain | None = getattr(the_brain, "fallback", None)  # an LLM brain's rules
    lower = info.lower_is_better
    stamp = time.strftime("%Y%m%d-%H%M%S")
    run_dir = Path(
        out_dir or Path(".workbench/mle/runs") / f"{comp.id}-{stamp}-s{seed}-{os.getpid()}"
    ).resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(run_dir, 0o755)
    input_dir = copy_public(comp.public_dir, run_dir / "input")
    hide = hidden_paths(comp, run_dir)
    level = choose_level(sc.sandbox.backend)  # docker mounts only the work dir: copy inputs
    sample = pd.read_csv(comp.sample_submission)
    ctx = TaskContext(
        info=info,
        description=comp.description,
        data_preview=data_preview(comp.public_dir),
        scaffold=sc,
        seed=seed,
    )
    limits_base = sc.sandbox
    rng = random.Random(seed)
    tracker = _tracker(
        track,
        tracking_uri,
        f"{comp.id}-s{seed}",
        {"mle.task": comp.id, "mle.brain": the_brain.name},
    )
    tracker.log_params(
        {
            "task": comp.id,
            "brain": the_brain.name,
            "seed": seed,
            "steps": sc.search.steps,
            "time_limit_s": sc.search.time_limit_s,
            "metric": info.metric,
            "scaffold": sc.source,
        }
    )
    nodes: list[Node] = []
    hiding = "n/a"
    uncovered: tuple[str, ...] = ()

    def journal() -> None:
        _write_json(
            run_dir / "journal.json",
            {
                "task": comp.id,
                "seed": seed,
                "brain": the_brain.name,
                "metric": info.metric,
                "lower_is_better": lower,
                "sandbox": {"backend": hiding, "uncovered": {k: GAPS[k] for k in uncovered}},
                "nodes": [asdict(n) for n in nodes],
            },
        )

    t_search = time.monotonic()  # the time limit is the search's: set-up above is not counted
    for step in range(sc.search.steps):
        elapsed = time.monotonic() - t_search
        remaining = sc.search.time_limit_s - elapsed
        if remaining <= 1.0:
            break
        action, target = choose_action(nodes, sc, lower, rng)
        writer: Brain = the_brain
        last = nodes[-1] if nodes else None
        if fallback is not None and last is not None and last.status == "buggy":
            if last.brain == the_brain.name and last.stage != "debug":
                action, target = "debug", last  # a model's bad script is debugged once, by it
            elif last.brain == the_brain.name:  # its fix failed too: rules take this step
                writer = fallback
                if action == "debug":
                    best = pick_node(nodes, lower, sc.search.explore_c)
                    action, target = ("improve", best) if best else ("draft", None)
        memory = [n.view() for n in nodes]
        if action == "draft":
            prop: Proposal = writer.draft(ctx, memory)
        elif action == "debug":
            prop = writer.debug(ctx, target.view())
        else:
            prop = writer.improve(ctx, target.view(), memory)
        if writer is not the_brain:
            prop = Proposal(
                plan=f"(the model's script and its fix failed; rules step) {prop.plan}",
                code=prop.code,
                spec=prop.spec,
                brain="rules",
            )
        node = Node(
            id=step,
            parent=target.id if target else None,
            stage=action,
            plan=prop.plan,
            code=prop.code,
            spec=prop.spec,
            brain=prop.brain,
            debug_depth=(target.debug_depth + 1) if action == "debug" else 0,
        )
        if target is not None:
            target.children.append(node.id)
        node_dir = run_dir / "nodes" / f"{step:03d}"
        prepare_workdir(node_dir, input_dir, prop.code, link_inputs=level != "docker")
        limits = NodeLimits(
            timeout_s=max(1.0, min(limits_base.node_timeout_s, remaining)),
            cpu_s=limits_base.cpu_s,
            memory_mb=limits_base.memory_mb,
            threads=limits_base.threads,
            backend=limits_base.backend,
            image=limits_base.image,
        )
        refused = _harness_refusal(prop.code)  # the one patch guard, before anything runs
        res = None if refused else run_solution(node_dir, hide, limits)
        if res is not None:
            hiding, uncovered = res.hiding, res.uncovered
            node.wall_s = round(res.wall_s, 3)
            node.log_tail = res.log[-4000:]
        problem = refused
        if res is not None and (res.timed_out or res.returncode != 0):
            problem = last_error(res.log)
        elif res is not None:
            node.score = parse_validation_score(res.log)
            node.cv_folds = parse_folds(res.log)
            if len(node.cv_folds) > 1:
                node.cv_std = round(statistics.stdev(node.cv_folds), 6)
            problem = check_submission(node_dir / "submission" / "submission.csv", sample)
            if problem is None and node.score is None:
                problem = "the script printed no `validation_score: <float>` line"
        node.status = "buggy" if problem else "ok"
        node.error = problem
        if problem:
            node.score = None
        nodes.append(node)
        _log_node(tracker, node, node_dir)
        journal()
        if on_node:
            on_node(node)

    best = best_node(nodes, lower)
    sub_path = run_dir / "submission.csv"
    if best is not None:
        shutil.copyfile(
            run_dir / "nodes" / f"{best.id:03d}" / "submission" / "submission.csv", sub_path
        )
    report = comp.grade(sub_path)  # outside the sandbox: the only reader of the answers
    result = RunResult(
        task=comp.id,
        seed=seed,
        brain=the_brain.name,
        score=report.score,
        medal=report.medal if comp.awards_medals else "none",
        any_medal=report.any_medal and comp.awards_medals,
        above_median=report.above_median,
        percentile=report.percentile,
        valid_submission=report.valid_submission,
        validation_score=best.score if best else None,
        best_node=best.id if best else None,
        nodes=len(nodes),
        buggy_nodes=sum(1 for n in nodes if n.status == "buggy"),
        wall_s=round(time.monotonic() - t0, 2),
        run_dir=str(run_dir),
        mlflow_run_id=tracker.run_id,
        hiding=hiding,
        grade_error=report.error,
        sandbox_uncovered={k: GAPS[k] for k in uncovered},
    )
    metrics = {
        "nodes": result.nodes,
        "buggy_nodes": result.buggy_nodes,
        "percentile": result.percentile,
        "any_medal": float(result.any_medal),
        "wall_s": result.wall_s,
    }
    if result.score is not None:
        metrics["test_score"] = result.score
    if result.validation_score is not None:
        metrics["validation_score"] = result.validation_score
    tracker.log_metrics(metrics, step=0)
    tracker.set_tags(
        {
            "mle.medal": result.medal,
            "mle.best_node": str(result.best_node),
            "mle.sandbox": hiding,
            "mle.sandbox.uncovered": ",".join(uncovered) or "none",
        }
    )
    _write_json(run_dir / "result.json", {**result.to_dict(), "grade": report.to_dict()})
    journal()
    if sub_path.is_file():
        tracker.log_artifact(sub_path)
    tracker.log_artifact(run_dir / "journal.json")
    tracker.finish("FINISHED")
    return result


def _log_node(tracker: Tracker, node: Node, node_dir: Path) -> None:
    child = tracker.child(
        f"node-{node.id:03d}-{node.stage}",
        {
            "mle.stage": node.stage,
            "mle.status": node.status,
            "mle.brain": node.brain,
            "mle.node": str(node.id),
        },
    )
    node.mlflow_run_id = child.run_id
    child.log_params(
        {
            "stage": node.stage,
            "parent_node": node.parent,
            "plan": node.plan[:500],
            "spec": json.dumps(node.spec) if node.spec else "",
            "debug_depth": node.debug_depth,
        }
    )
    metrics = {"wall_s": node.wall_s}
    if node.score is not None:
        metrics["validation_score"] = node.score
    if node.cv_std is not None:
        metrics["validation_std"] = node.cv_std
    child.log_metrics(metrics, step=0)
    if node.error:
        child.set_tags({"mle.error": node.error[:500]})
    child.log_artifact(node_dir / "solution.py", "code")
    if (node_dir / "run.log").is_file():
        child.log_artifact(node_dir / "run.log", "logs")
    child.finish("FINISHED" if node.status == "ok" else "FAILED")
