"""Grading and medal thresholds against MLE-Bench's rules, on constructed leaderboards."""

from __future__ import annotations

import shutil

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import cohen_kappa_score

from experiments.mle.competition import LITE, TASKS_DIR, load_competition, prepare
from experiments.mle.grading import medal_positions, rank_score
from experiments.mle.taskinfo import infer_task


@pytest.mark.parametrize(
    "teams, expected",
    [
        (1, (1, 1, 1)),
        (9, (1, 1, 3)),  # int(0.9)=0 → position 1; int(3.6)=3
        (50, (5, 10, 20)),
        (99, (9, 19, 39)),
        (100, (10, 20, 40)),  # gold is the 10th team from 100 teams on
        (249, (10, 49, 99)),
        (250, (10, 50, 100)),  # 10 + int(0.5); silver/bronze fixed at 50 / 100
        (999, (11, 50, 100)),
        (1000, (12, 50, 100)),  # 10 + 2; silver/bronze top 5% / 10%
        (5000, (20, 250, 500)),
    ],
)
def test_medal_positions_follow_kaggle_progression(teams, expected):
    assert medal_positions(teams) == expected


def test_higher_is_better_thresholds_ties_and_exclusive_medals():
    board = pd.DataFrame({"score": np.arange(100, 50, -1, dtype=float)})  # 50 teams, best 100
    r = rank_score(96.0, board)  # gold threshold: 5th place = 96 — a tie earns it
    assert (r.gold_threshold, r.silver_threshold, r.bronze_threshold) == (96.0, 91.0, 81.0)
    assert not r.is_lower_better and r.gold_medal and not r.silver_medal and r.medal == "gold"
    assert rank_score(95.9, board).medal == "silver"
    assert rank_score(81.0, board).medal == "bronze"
    r = rank_score(80.99, board)
    assert r.medal == "none" and not r.any_medal and r.above_median
    assert not rank_score(r.median_threshold, board).above_median  # strict, like MLE-Bench
    assert rank_score(101.0, board).percentile == 1.0


def test_lower_is_better_is_read_from_the_order():
    board = pd.DataFrame({"score": np.linspace(0.1, 5.0, 200)})  # 200 teams, best 0.1
    r = rank_score(board["score"].iloc[9], board)  # gold = 10th place for 100-249 teams
    assert r.is_lower_better and r.gold_medal
    assert rank_score(board["score"].iloc[9] + 1e-6, board).medal == "silver"
    assert rank_score(board["score"].iloc[39], board).medal == "silver"  # top 20% = 40th
    assert rank_score(board["score"].iloc[79], board).medal == "bronze"  # top 40% = 80th
    assert rank_score(board["score"].iloc[80], board).medal == "none"


def test_large_leaderboards_and_missing_scores():
    board = list(np.arange(600, 0, -1, dtype=float))  # 600 teams
    r = rank_score(board[10], board)  # gold position 10 + int(1.2) = 11
    assert r.gold_medal
    assert rank_score(board[11], board).medal == "silver"
    assert (
        rank_score(board[49], board).medal == "silver"
        and rank_score(board[50], board).medal == "bronze"
    )
    assert rank_score(board[100], board).medal == "none"
    none = rank_score(None, board)
    assert not none.any_medal and not none.above_median and none.percentile == 0.0


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    return prepare(load_competition("digits-recognition", tmp_path_factory.mktemp("data")))


def test_grade_perfect_invalid_and_missing_submissions(digits, tmp_path):
    answers = pd.read_csv(digits.answers)
    perfect = tmp_path / "perfect.csv"
    answers.to_csv(perfect, index=False)
    rep = digits.grade(perfect)
    assert rep.score == 1.0 and rep.medal == "gold" and rep.valid_submission
    short = tmp_path / "short.csv"
    answers.iloc[:-3].to_csv(short, index=False)
    bad = digits.grade(short)
    assert bad.score is None and not bad.valid_submission and "rows" in bad.error
    assert digits.grade(tmp_path / "absent.csv").error.startswith("no submission")
    # Public data never holds the answers' label column for the test rows.
    assert "label" not in pd.read_csv(digits.public_dir / "test.csv").columns


def test_custom_metric_matches_reference_kappa(tmp_path):
    grade = load_competition("diabetes-severity", tmp_path).grade_fn()
    rng = np.random.default_rng(0)
    truth = rng.integers(0, 5, 80)
    pred = np.clip(truth + rng.integers(-1, 2, 80), 0, 4)
    ans = pd.DataFrame({"id": np.arange(80), "severity": truth})
    sub = pd.DataFrame({"id": np.arange(80)[::-1], "severity": pred[::-1]})  # order must not matter
    assert grade(sub, ans) == pytest.approx(cohen_kappa_score(truth, pred, weights="quadratic"))


def test_builtin_tasks_are_complete_and_leaderboards_sorted():
    assert len(LITE) >= 6
    lower = set()
    for tid in LITE:
        d = TASKS_DIR / tid
        for name in ("config.yaml", "description.md", "prepare.py", "grade.py", "leaderboard.csv"):
            assert (d / name).is_file(), f"{tid}/{name}"
        board = pd.read_csv(d / "leaderboard.csv")
        scores = board["score"].to_numpy()
        assert len(board) >= 40 and scores[0] != scores[-1]
        diffs = np.diff(scores)
        assert (diffs >= 0).all() or (diffs <= 0).all(), tid
        if scores[0] < scores[-1]:
            lower.add(tid)
    assert lower == {
        "wine-cultivar",
        "diabetes-progression",
        "friedman-regression",
        "diabetes-cost",
        "breast-cancer-categorical",
    }


def test_task_info_is_inferred_from_public_files(tmp_path):
    modes = {}
    for tid in ("wine-cultivar", "breast-cancer-diagnosis", "diabetes-progression"):
        comp = prepare(load_competition(tid, tmp_path))
        modes[tid] = infer_task(comp.public_dir, comp.grader_name)
    assert modes["wine-cultivar"].mode == "proba_multi"
    assert modes["wine-cultivar"].classes == ("0", "1", "2")
    assert modes["breast-cancer-diagnosis"].mode == "proba_binary"
    assert (
        modes["diabetes-progression"].mode == "regression"
        and modes["diabetes-progression"].lower_is_better
    )


def test_mlebench_style_directory_loads_its_own_grade_py(tmp_path):
    """A competition copied out of MLE-Bench names ``mlebench.competitions.<id>.grade:grade``."""
    comp_dir = tmp_path / "comps" / "my-comp"
    shutil.copytree(TASKS_DIR / "friedman-regression", comp_dir)
    cfg = (comp_dir / "config.yaml").read_text().replace("friedman-regression", "my-comp")
    cfg = cfg.replace("experiments.mle.tasks.my-comp", "mlebench.competitions.my-comp")
    (comp_dir / "config.yaml").write_text(cfg)
    comp = prepare(load_competition(comp_dir, tmp_path / "data"))
    assert (
        comp.id == "my-comp"
        and comp.private_dir == tmp_path / "data" / "my-comp" / "prepared" / "private"
    )
    rep = comp.grade(comp.answers)
    assert rep.score == 0.0 and rep.medal == "gold"
