"""Evaluate a scaffold on a set of competitions over seeds, as MLE-Bench reports it.

Any-medal % and gold % are computed per seed (the share of tasks that won any medal / gold) and
reported as the mean ± standard error over seeds. ``evaluate(scaffold_path, tasks, seeds)`` is the library entry
point the evolve loop calls; its ``scores`` (task → mean leaderboard percentile, 0..1, higher is
better) are a smoother fitness than medals alone.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from experiments.mle.competition import task_dirs
from workbench.mle.agent import RunResult, run_task
from workbench.mle.config import MleScaffold, load_mle_scaffold


@dataclass
class EvalReport:
    any_medal_pct: float
    any_medal_sem: float
    seeds: list[int]
    results: list[RunResult]
    scores: dict[str, float] = field(default_factory=dict)  # task → mean percentile
    wall_s: float = 0.0
    gold_pct: float = 0.0
    gold_sem: float = 0.0

    def per_task(self) -> list[dict]:
        rows = []
        for task in dict.fromkeys(r.task for r in self.results):
            rs = [r for r in self.results if r.task == task]
            valid = [r.score for r in rs if r.score is not None]
            rows.append(
                {
                    "task": task,
                    "scores": [r.score for r in rs],
                    "mean_score": statistics.fmean(valid) if valid else None,
                    "medals": [r.medal for r in rs],
                    "any_medal_rate": sum(r.any_medal for r in rs) / len(rs),
                    "gold": sum(r.medal == "gold" for r in rs),
                    "any_medal": sum(r.any_medal for r in rs),
                    "mean_percentile": statistics.fmean(r.percentile for r in rs),
                    "nodes": [r.nodes for r in rs],
                    "buggy_nodes": sum(r.buggy_nodes for r in rs),
                }
            )
        return rows

    def to_dict(self) -> dict:
        return {
            "any_medal_pct": self.any_medal_pct,
            "any_medal_sem": self.any_medal_sem,
            "gold_pct": self.gold_pct,
            "gold_sem": self.gold_sem,
            "seeds": self.seeds,
            "scores": self.scores,
            "wall_s": self.wall_s,
            "tasks": self.per_task(),
            "runs": [r.to_dict() for r in self.results],
        }


def mean_sem(values: Sequence[float]) -> tuple[float, float]:
    if not values:
        return 0.0, 0.0
    mean = statistics.fmean(values)
    if len(values) < 2:
        return mean, 0.0
    return mean, statistics.stdev(values) / math.sqrt(len(values))


def evaluate(
    scaffold_path: str | Path | MleScaffold | None,
    tasks: str | Path | Sequence[str | Path] = "lite",
    seeds: int | Sequence[int] = 3,
    *,
    data_dir: Path | None = None,
    brain: str = "rules",
    steps: int | None = None,
    time_limit_s: float | None = None,
    workers: int = 1,
    tracking_uri: str | None = None,
    track: bool = True,
    out_dir: Path | None = None,
    brain_opts: dict | None = None,
    on_run: Callable[[RunResult], None] | None = None,
) -> EvalReport:
    """Run the search on every (task, seed) and summarise; runs go ``workers`` at a time."""
    import time

    t0 = time.monotonic()
    sc = (
        scaffold_path
        if isinstance(scaffold_path, MleScaffold)
        else load_mle_scaffold(scaffold_path)
    )
    seed_list = list(range(seeds)) if isinstance(seeds, int) else list(seeds)
    if isinstance(tasks, str | Path):
        dirs = task_dirs(tasks)
    else:
        dirs = [d for t in tasks for d in task_dirs(t)]
    jobs = [(d, s) for s in seed_list for d in dirs]
    base = Path(out_dir or Path(".workbench/mle/eval") / time.strftime("%Y%m%d-%H%M%S")).resolve()

    def one(job: tuple[Path, int]) -> RunResult:
        d, s = job
        res = run_task(
            d,
            data_dir=data_dir,
            brain=brain,
            steps=steps,
            time_limit_s=time_limit_s,
            seed=s,
            scaffold=sc,
            tracking_uri=tracking_uri,
            track=track,
            out_dir=base / f"{d.name}-s{s}",
            brain_opts=brain_opts,
        )
        if on_run:
            on_run(res)
        return res

    # Runs mostly wait on their sandboxed scripts, so threads are enough to overlap them.
    if workers > 1:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            results = list(pool.map(one, jobs))
    else:
        results = [one(j) for j in jobs]

    def per_seed(won: Callable[[RunResult], bool]) -> tuple[float, float]:
        shares = []
        for s in seed_list:
            rs = [r for r in results if r.seed == s]
            shares.append(100.0 * sum(won(r) for r in rs) / max(1, len(rs)))
        return mean_sem(shares)

    pct, sem = per_seed(lambda r: r.any_medal)
    gold, gold_sem = per_seed(lambda r: r.medal == "gold")
    scores = {}
    for r in results:
        scores.setdefault(r.task, []).append(r.percentile)
    return EvalReport(
        any_medal_pct=pct,
        any_medal_sem=sem,
        gold_pct=gold,
        gold_sem=gold_sem,
        seeds=seed_list,
        results=results,
        scores={t: statistics.fmean(v) for t, v in scores.items()},
        wall_s=round(time.monotonic() - t0, 1),
    )
