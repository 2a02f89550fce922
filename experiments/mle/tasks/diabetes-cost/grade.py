import numpy as np
import pandas as pd

from experiments.mle.grading import InvalidSubmissionError, align


def grade(submission: pd.DataFrame, answers: pd.DataFrame) -> float:
    sub, ans = align(submission, answers, "id", ["cost"])
    pred = sub["cost"].to_numpy(float)
    if (pred < 0).any():
        raise InvalidSubmissionError("cost predictions must be non-negative")
    err = np.log1p(pred) - np.log1p(ans["cost"].to_numpy(float))
    return float(np.sqrt(np.mean(err**2)))
