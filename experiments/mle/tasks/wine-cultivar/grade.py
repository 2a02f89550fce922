import numpy as np
import pandas as pd
from sklearn.metrics import log_loss

from experiments.mle.grading import InvalidSubmissionError, align

CLASSES = ["class_0", "class_1", "class_2"]


def grade(submission: pd.DataFrame, answers: pd.DataFrame) -> float:
    sub, ans = align(submission, answers, "id", CLASSES)
    p = sub[CLASSES].to_numpy(dtype=float)
    if (p < 0).any():
        raise InvalidSubmissionError("probabilities must be non-negative")
    # Kaggle's multi-class log loss: clip, then rescale each row to sum to one.
    p = np.clip(p, 1e-15, 1 - 1e-15)
    p = p / p.sum(axis=1, keepdims=True)
    return float(log_loss(ans["cultivar"].astype(int), p, labels=[0, 1, 2]))
