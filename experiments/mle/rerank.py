"""Medals of an eval's runs re-read against other leaderboards (a run's score on the private
answers does not depend on the leaderboard, so an earlier eval is placed on a newer field).

    python -m experiments.mle.rerank EVAL.json [--boards DIR]   # DIR/<task>.csv, else the task's

Prints, per task, any-medal and gold counts over seeds, and over seeds the mean ± standard
error of the share of tasks with any medal and with gold.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
from pathlib import Path

import pandas as pd

from experiments.mle.competition import TASKS_DIR
from experiments.mle.grading import rank_score


def _mean_sem(values: list[float]) -> tuple[float, float]:
    if len(values) < 2:
        return (values[0] if values else 0.0), 0.0
    return statistics.fmean(values), statistics.stdev(values) / math.sqrt(len(values))


def rerank(runs: list[dict], boards: Path | None = None) -> dict:
    rows: dict[str, list[dict]] = {}
    for r in runs:
        task = r["task"]
        path = boards / f"{task}.csv" if boards else None
        if path is None or not path.is_file():
            path = TASKS_DIR / task / "leaderboard.csv"
        rk = rank_score(r["score"], pd.read_csv(path))
        rows.setdefault(task, []).append(
            {"seed": r["seed"], "score": r["score"], "gold": rk.gold_medal, "any": rk.any_medal}
        )
    seeds = sorted({r["seed"] for r in runs})
    per_seed_any = [
        100.0 * statistics.fmean(x["any"] for rs in rows.values() for x in rs if x["seed"] == s)
        for s in seeds
    ]
    per_seed_gold = [
        100.0 * statistics.fmean(x["gold"] for rs in rows.values() for x in rs if x["seed"] == s)
        for s in seeds
    ]
    return {
        "tasks": {
            t: {
                "any_medal": f"{sum(x['any'] for x in rs)}/{len(rs)}",
                "gold": f"{sum(x['gold'] for x in rs)}/{len(rs)}",
                "scores": [x["score"] for x in rs],
            }
            for t, rs in rows.items()
        },
        "any_medal_pct": _mean_sem(per_seed_any),
        "gold_pct": _mean_sem(per_seed_gold),
    }


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("eval_json", type=Path)
    ap.add_argument("--boards", type=Path, default=None)
    args = ap.parse_args(argv)
    out = rerank(json.loads(args.eval_json.read_text())["runs"], args.boards)
    for task, row in out["tasks"].items():
        print(
            f"{task:28s} any-medal {row['any_medal']}  gold {row['gold']}  scores {row['scores']}"
        )
    for key in ("any_medal_pct", "gold_pct"):
        m, s = out[key]
        print(f"{key}: {m:.1f} ± {s:.1f} (mean ± SEM over seeds)")


if __name__ == "__main__":
    main()
