import numpy as np
import pandas as pd

from experiments.mle.grading import InvalidSubmissionError, align

GRADES = 5


def quadratic_weighted_kappa(actual: np.ndarray, predicted: np.ndarray, k: int = GRADES) -> float:
    """Cohen's kappa with quadratic weights, written out (the competition's custom metric)."""
    observed = np.zeros((k, k))
    for a, p in zip(actual, predicted, strict=True):
        observed[a, p] += 1
    weights = np.array([[(i - j) ** 2 / (k - 1) ** 2 for j in range(k)] for i in range(k)])
    expected = np.outer(observed.sum(axis=1), observed.sum(axis=0)) / observed.sum()
    denom = (weights * expected).sum()
    return float(1.0 - (weights * observed).sum() / denom) if denom > 0 else 0.0


def grade(submission: pd.DataFrame, answers: pd.DataFrame) -> float:
    sub, ans = align(submission, answers, "id", ["severity"])
    pred = sub["severity"].to_numpy(float)
    if (np.abs(pred - np.round(pred)) > 1e-9).any() or pred.min() < 0 or pred.max() > GRADES - 1:
        raise InvalidSubmissionError(f"severity must be an integer grade 0..{GRADES - 1}")
    return quadratic_weighted_kappa(ans["severity"].to_numpy(int), pred.astype(int))
