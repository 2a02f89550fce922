import numpy as np
import pandas as pd

from experiments.mle.grading import InvalidSubmissionError, align


def grade(submission: pd.DataFrame, answers: pd.DataFrame) -> float:
    sub, ans = align(submission, answers, "id", ["malignant"])
    p = sub["malignant"].to_numpy(float)
    if ((p < 0) | (p > 1)).any():
        raise InvalidSubmissionError("probabilities must lie in [0, 1]")
    p = np.clip(p, 1e-15, 1 - 1e-15)
    t = ans["malignant"].to_numpy(int)
    return float(-np.mean(t * np.log(p) + (1 - t) * np.log(1 - p)))
