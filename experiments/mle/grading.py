"""Grading and medals, with MLE-Bench's semantics.

``rank_score`` follows ``mlebench.grade_helpers.Grader.rank_score``: the leaderboard is read in
its file order (best team first); lower-is-better is inferred from it (first score < last
score); a threshold is the score *at* a 1-based leaderboard position; a score that ties a
threshold earns that medal; medals are exclusive (gold beats silver beats bronze); "above
median" is strict. Positions by number of teams (Kaggle's progression rules):

    teams      gold                    silver               bronze
    1–99       top 10%                 top 20%              top 40%
    100–249    10th place              top 20%              top 40%
    250–999    10 + 0.2% of teams      50th place           100th place
    ≥1000      10 + 0.2% of teams      top 5%               top 10%

where "top p%" is position ``max(1, int(teams * p))``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import pandas as pd


class InvalidSubmissionError(Exception):
    """The submission cannot be graded (missing ids, wrong columns, NaNs, ...)."""


# ---------------------------------------------------------------------------- thresholds


def medal_positions(num_teams: int) -> tuple[int, int, int]:
    """1-based leaderboard positions whose scores are the gold/silver/bronze thresholds."""
    n = int(num_teams)
    if n < 1:
        raise ValueError("a leaderboard needs at least one team")
    if n < 100:
        return max(1, int(n * 0.1)), max(1, int(n * 0.2)), max(1, int(n * 0.4))
    if n < 250:
        return 10, max(1, int(n * 0.2)), max(1, int(n * 0.4))
    if n < 1000:
        return 10 + int(n * 0.002), 50, 100
    return 10 + int(n * 0.002), max(1, int(n * 0.05)), max(1, int(n * 0.1))


def is_lower_better(scores: Sequence[float]) -> bool:
    """MLE-Bench's rule: the leaderboard is sorted best first, so a rising order means lower wins."""
    return bool(scores[0] < scores[-1])


@dataclass(frozen=True)
class Ranking:
    gold_medal: bool
    silver_medal: bool
    bronze_medal: bool
    above_median: bool
    gold_threshold: float
    silver_threshold: float
    bronze_threshold: float
    median_threshold: float
    is_lower_better: bool
    percentile: float  # fraction of leaderboard teams this score strictly beats (0 when None)

    @property
    def any_medal(self) -> bool:
        return self.gold_medal or self.silver_medal or self.bronze_medal

    @property
    def medal(self) -> str:
        for name in ("gold", "silver", "bronze"):
            if getattr(self, f"{name}_medal"):
                return name
        return "none"


def rank_score(score: float | None, leaderboard: pd.DataFrame | Sequence[float]) -> Ranking:
    """Medals and thresholds of ``score`` against a leaderboard (``score`` column, best first)."""
    if isinstance(leaderboard, pd.DataFrame):
        if "score" not in leaderboard.columns:
            raise ValueError("the leaderboard needs a `score` column")
        scores = [float(s) for s in leaderboard["score"].tolist()]
    else:
        scores = [float(s) for s in leaderboard]
    lower = is_lower_better(scores)
    g, s, b = medal_positions(len(scores))
    gold_t, silver_t, bronze_t = scores[g - 1], scores[s - 1], scores[b - 1]
    median_t = float(pd.Series(scores).median())
    if score is None or (isinstance(score, float) and math.isnan(score)):
        return Ranking(False, False, False, False, gold_t, silver_t, bronze_t, median_t, lower, 0.0)

    def at_least(t: float) -> bool:
        return score <= t if lower else score >= t

    gold = at_least(gold_t)
    silver = not gold and at_least(silver_t)
    bronze = not gold and not silver and at_least(bronze_t)
    above = score < median_t if lower else score > median_t
    beaten = sum(1 for x in scores if (score < x if lower else score > x))
    return Ranking(
        gold,
        silver,
        bronze,
        above,
        gold_t,
        silver_t,
        bronze_t,
        median_t,
        lower,
        beaten / len(scores),
    )


# ---------------------------------------------------------------------------- helpers for grade.py


def align(
    submission: pd.DataFrame, answers: pd.DataFrame, id_col: str, cols: Sequence[str]
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Check a submission's shape against the answers; both come back sorted by id."""
    if id_col not in submission.columns:
        raise InvalidSubmissionError(f"submission has no `{id_col}` column")
    missing = [c for c in cols if c not in submission.columns]
    if missing:
        raise InvalidSubmissionError(f"submission misses columns {missing}")
    if len(submission) != len(answers):
        raise InvalidSubmissionError(
            f"submission has {len(submission)} rows, expected {len(answers)}"
        )
    if submission[id_col].duplicated().any():
        raise InvalidSubmissionError("submission has duplicate ids")
    if set(submission[id_col].tolist()) != set(answers[id_col].tolist()):
        raise InvalidSubmissionError("submission ids differ from the test ids")
    sub = submission.sort_values(id_col).reset_index(drop=True)
    ans = answers.sort_values(id_col).reset_index(drop=True)
    for c in cols:
        values = pd.to_numeric(sub[c], errors="coerce")
        if values.isna().any():
            raise InvalidSubmissionError(f"column `{c}` has missing or non-numeric values")
        sub[c] = values
    return sub, ans


# ---------------------------------------------------------------------------- a graded submission


@dataclass(frozen=True)
class Report:
    competition_id: str
    score: float | None
    valid_submission: bool
    error: str | None
    medal: str
    any_medal: bool
    above_median: bool
    gold_threshold: float
    silver_threshold: float
    bronze_threshold: float
    median_threshold: float
    is_lower_better: bool
    percentile: float
    num_teams: int
    submission_path: str

    def to_dict(self) -> dict:
        return asdict(self)


def grade_submission(
    competition_id: str,
    grade_fn: Callable[[pd.DataFrame, pd.DataFrame], float],
    submission_path: Path,
    answers_path: Path,
    leaderboard_path: Path,
) -> Report:
    """Grade a submission CSV against the private answers and place it on the leaderboard.

    Like MLE-Bench, an invalid or missing submission scores ``None`` (no medal) instead of
    raising; the reason is kept in ``error``.
    """
    leaderboard = pd.read_csv(leaderboard_path)
    score: float | None = None
    err: str | None = None
    if not Path(submission_path).is_file():
        err = f"no submission at {submission_path}"
    else:
        try:
            sub = pd.read_csv(submission_path)
            ans = pd.read_csv(answers_path)
            raw = float(grade_fn(sub, ans))
            if math.isnan(raw) or math.isinf(raw):
                raise InvalidSubmissionError(f"the metric is {raw}")
            score = round(raw, 5)
        except InvalidSubmissionError as exc:
            err = f"invalid submission: {exc}"
        except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
            err = f"unreadable submission: {exc}"
        except Exception as exc:  # noqa: BLE001 — a grader crash is reported, not raised
            err = f"grader error: {type(exc).__name__}: {exc}"
    r = rank_score(score, leaderboard)
    return Report(
        competition_id=competition_id,
        score=score,
        valid_submission=score is not None,
        error=err,
        medal=r.medal,
        any_medal=r.any_medal,
        above_median=r.above_median,
        gold_threshold=r.gold_threshold,
        silver_threshold=r.silver_threshold,
        bronze_threshold=r.bronze_threshold,
        median_threshold=r.median_threshold,
        is_lower_better=r.is_lower_better,
        percentile=r.percentile,
        num_teams=len(leaderboard),
        submission_path=str(submission_path),
    )
