"""Rollouts: real ``fix`` episodes of one brain on scenarios, in parallel, and their figures.

One rollout is one supervisor episode (``workbench.supervisor.episode.fix_run``) on a
scenario's failing run: the brain diagnoses, proposes, the graph patches a branch, relaunches
and verifies. ``run_episode`` is module-level and takes plain data, so it runs as a thread, a
process or a Ray task alike (``trainer.rl.rollout.run_tasks``). Relaunches reuse a run that
already trained exactly the same files (``reuse_runs``): a remedy is measured once per
scenario, then every episode that proposes it is judged on that run.

Reward (from ``verify``): a verified fix earns 1, less 0.2 per extra attempt and 0.01 per whole
5 minutes of wall time; an episode that ends without one earns 0; every turn the rules brain had to take
over costs the policy 0.5 (its answers were not usable).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from workbench.rl.episodes import Episode, parse_episode


def episode_reward(summary: dict, wall_s: float) -> float:
    if summary.get("status") != "fixed":
        base = 0.0
    else:
        # wall time in whole 5-minute steps: finer differences are the machine's load, not the
        # policy (measured: they were the only reward differences inside a group, ~1e-4, and
        # a baseline turns them into advantages of pure noise)
        slow = min(0.01 * int(wall_s // 300), 0.1)
        base = 1.0 - 0.2 * (max(int(summary.get("attempts", 1)), 1) - 1) - slow
    return round(base - 0.5 * int(summary.get("fallbacks", 0)), 4)


def run_episode(job: dict) -> dict:
    """One fix episode. ``job``: scenario (a manifest row), tracking_uri, home, thread_id,
    brain (rules | local | openai), brain_opts, max_attempts, reuse_runs, run_timeout_s."""
    import os

    from workbench.supervisor.episode import fix_run

    os.environ.setdefault("OMP_NUM_THREADS", "1")
    sc = job["scenario"]
    t0 = time.monotonic()
    try:
        summary = fix_run(
            sc["run_id"], repo=sc["repo"], tracking_uri=job["tracking_uri"], home=job["home"],
            brain=job.get("brain", "rules"), brain_opts=job.get("brain_opts") or {},
            thread_id=job["thread_id"], max_attempts=int(job.get("max_attempts", 3)),
            reuse_runs=job.get("reuse_runs"), run_timeout_s=job.get("run_timeout_s"),
        )  # fmt: skip
        error = None
    except Exception as exc:  # noqa: BLE001 — one broken episode must not stop a batch
        summary, error = {"status": "error", "attempts": 0, "fallbacks": 0}, f"{exc}"[:300]
    wall = time.monotonic() - t0
    traj = Path(job["home"]) / "trajectories" / f"{job['thread_id']}.jsonl"
    return {
        "scenario": sc["name"],
        "split": sc["split"],
        "thread_id": job["thread_id"],
        "trajectory": str(traj),
        "wall_s": round(wall, 1),
        "reward": episode_reward(summary, wall) if error is None else 0.0,
        "error": error,
        **{k: summary.get(k) for k in ("status", "attempts", "remedy", "diagnosis", "verified",
                                       "brain_calls", "fallbacks", "branch")},
    }  # fmt: skip


def run_episodes(
    jobs: list[dict],
    *,
    workers: int = 2,
    kind: str = "thread",
    address: str | None = None,
    progress: Callable[[str], None] = lambda msg: None,
) -> Iterator[dict]:
    """Every job's result, as episodes finish (at most ``workers`` run at once)."""
    from trainer.rl.rollout import run_tasks

    for _, res in run_tasks(
        run_episode, [(j,) for j in jobs], workers=workers, kind=kind, address=address
    ):  # as episodes finish
        progress(
            f"{res['scenario']}: {res['status']} in {res['attempts']} attempt(s)"
            f" ({res['remedy'] or '-'}), fallbacks {res['fallbacks']}, {res['wall_s']:.0f}s"
            + (f": {res['error']}" if res["error"] else "")
        )
        yield res


def summarize_results(results: list[dict]) -> dict[str, Any]:
    """The figures of a set of episodes: verified-fix rate, mean attempts to a verified fix,
    fallbacks per brain decision, episodes with no fallback, and the brain's *own* verified
    fixes (verified with no fallback: a fix the rules brain took over does not count for it)."""
    n = len(results)
    fixed = [r for r in results if r.get("verified")]
    calls = sum(int(r.get("brain_calls") or 0) for r in results)
    falls = sum(int(r.get("fallbacks") or 0) for r in results)
    return {
        "episodes": n,
        "verified_fix_rate": round(len(fixed) / n, 4) if n else 0.0,
        "mean_attempts_to_fix": round(sum(r["attempts"] for r in fixed) / len(fixed), 3)
        if fixed
        else None,
        "fallbacks": falls,
        "brain_calls": calls,
        "no_fallback_rate": round(sum(not r.get("fallbacks") for r in results) / n, 4)
        if n
        else 0.0,
        "own_verified_fix_rate": round(
            sum(bool(r.get("verified")) and not r.get("fallbacks") for r in results) / n, 4
        )
        if n
        else 0.0,
        "errors": sum(bool(r.get("error")) for r in results),
        "error_messages": [f"{r['thread_id']}: {r['error']}" for r in results if r.get("error")],
        "wall_s": round(sum(r["wall_s"] for r in results), 1),
    }


def recorded(results: list[dict]) -> list[dict]:
    """The results whose episode left a trajectory (one that broke before it began left none)."""
    return [r for r in results if Path(r["trajectory"]).exists()]


def episodes_of(results: list[dict]) -> list[Episode]:
    eps = []
    for r in recorded(results):
        ep = parse_episode(Path(r["trajectory"]))
        ep.scenario = r["scenario"]
        eps.append(ep)
    return eps
