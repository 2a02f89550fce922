"""Run one fix episode end to end: ``fix_run`` (used by ``workbench fix``, ``watch --fix``, demo).

It builds the graph with its ``SqliteSaver`` checkpoint at ``<home>/state.db``, starts or
resumes the thread, answers an approval interrupt when given one, and returns a summary.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from trainer.tracking import DEFAULT_TRACKING_URI
from workbench import DEFAULT_HOME
from workbench.errors import BadInputError


def fix_run(
    run_id: str | None,
    *,
    repo: str | Path = ".",
    tracking_uri: str = DEFAULT_TRACKING_URI,
    home: str | Path = DEFAULT_HOME,
    brain: str = "rules",
    brain_opts: dict[str, Any] | None = None,
    approve: bool = False,
    answer: str | None = None,
    resume: str | None = None,
    thread_id: str | None = None,
    max_attempts: int = 3,
    backend: str = "local",
    run_timeout_s: float | None = None,
    progress: Callable[[str], None] | None = None,
    scaffold_dir: str | Path | None = None,
    doctor: Callable | None = None,
    brain_model: Any = None,
    launch_cmd: str | None = None,
    config_path: str | None = None,
    reuse_runs: str | Path | None = None,
) -> dict:
    """Fix ``run_id`` (or resume thread ``resume``); returns the episode's summary dict."""
    from langgraph.types import Command

    from workbench.runs.gitops import check_ref_part, check_repo
    from workbench.supervisor.brains import make_brain
    from workbench.supervisor.graph import Deps, build_graph

    if not resume:  # checked before any work: no monitoring, no episode state for a bad repo
        if not run_id:
            raise BadInputError("give a RUN_ID to fix, or --resume THREAD_ID")
        check_repo(Path(repo))
    home = Path(home).resolve()
    home.mkdir(parents=True, exist_ok=True)
    deps = Deps(
        brain=brain_model if brain_model is not None else make_brain(brain, **(brain_opts or {})),
        scaffold_dir=Path(scaffold_dir) if scaffold_dir else None,
        backend=backend,
        run_timeout_s=run_timeout_s,
        progress=progress or (lambda msg: None),
        doctor=doctor,
        reuse_runs=Path(reuse_runs) if reuse_runs else None,
    )
    conn = sqlite3.connect(home / "state.db", check_same_thread=False, timeout=30)
    try:
        graph = build_graph(deps, _checkpoints(conn))
        if resume:
            tid = check_ref_part(resume)
            config = {"configurable": {"thread_id": tid}}
            snap = graph.get_state(config)
            if not snap.values:
                raise BadInputError(f"no episode {tid} in {home / 'state.db'}")
            payload = Command(resume=answer) if (snap.interrupts and answer is not None) else None
            if snap.next or payload is not None:
                graph.invoke(payload, config, durability="sync")
        else:
            if not run_id:
                raise BadInputError("give a RUN_ID to fix, or --resume THREAD_ID")
            check_ref_part(run_id)
            _check_spec(Path(repo), launch_cmd, config_path, tracking_uri, run_id)
            tid = check_ref_part(thread_id or f"fix-{run_id[:12]}-{int(time.time())}")
            config = {"configurable": {"thread_id": tid}}
            if graph.get_state(config).values:
                raise BadInputError(f"episode {tid} exists already; use --resume {tid}")
            state = {
                "thread_id": tid,
                "run_id": run_id,
                "repo": str(Path(repo).resolve()),
                "home": str(home),
                "tracking_uri": tracking_uri,
                "max_attempts": int(max_attempts),
                "approve": bool(approve),
                "launch_cmd": launch_cmd,
                "config_path": config_path,
                "attempts": [],
            }
            progress and progress(f"episode {tid}: fixing run {run_id}")
            graph.invoke(state, config, durability="sync")
            snap = graph.get_state(config)
            if snap.interrupts and answer is not None:
                graph.invoke(Command(resume=answer), config, durability="sync")
        return summarize(graph.get_state(config))
    finally:
        conn.close()


def _checkpoints(conn: sqlite3.Connection, tries: int = 40):
    """The graph's checkpoint store on ``conn``, its schema created.

    Episodes that start together on a fresh home (the loop's parallel rollouts) all create the
    schema at once; switching a new file to WAL there fails at once with "database is locked"
    instead of waiting, so the schema step is retried."""
    from langgraph.checkpoint.sqlite import SqliteSaver

    saver = SqliteSaver(conn)
    for k in range(tries - 1):
        try:
            saver.setup()
            return saver
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc):
                raise
            time.sleep(0.05 * (k + 1))
    saver.setup()  # the last try: its error is the caller's
    return saver


def _check_spec(repo: Path, launch: str | None, config: str | None, uri: str, run_id: str):
    """Bad input found before the episode starts: one clear line, nothing written."""
    from workbench.runs.launch import absolute_tracking_uri, repo_spec
    from workbench.runs.tracking import TrackingClient

    repo_spec(repo, launch, config)
    TrackingClient(absolute_tracking_uri(uri)).run(run_id)  # unreachable / missing: one line


def summarize(snap) -> dict:
    s = snap.values
    cur = s.get("current") or {}
    out = {
        "thread_id": s.get("thread_id"),
        "run_id": s.get("run_id"),
        "status": s.get("status", "running"),
        "diagnosis": (s.get("diagnosis") or {}).get("cause"),
        "attempts": len(s.get("attempts", []))
        + (1 if cur and cur not in s.get("attempts", []) else 0),
        "remedy": cur.get("remedy_id") or (s.get("attempts") or [{}])[-1].get("remedy_id"),
        "branch": cur.get("branch"),
        "new_run_id": cur.get("new_run_id"),
        "verified": bool(cur.get("passed")),
        "reward": s.get("reward", 0.0),
        "review_id": s.get("review_id"),
        "brain_calls": s.get("brain_calls", 0),
        "fallbacks": s.get("fallbacks", 0),
        "before": (s.get("before") or {}).get("best_eval"),
        "after": (cur.get("after") or {}).get("best_eval"),
    }
    if snap.interrupts:
        out["status"] = "waiting_approval"
        out["question"] = snap.interrupts[0].value
    return out


def load_trajectory(home: str | Path, thread_id: str) -> list[dict]:
    path = Path(home) / "trajectories" / f"{thread_id}.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line]
