import numpy as np
import pandas as pd

from experiments.mle.grading import align


def grade(submission: pd.DataFrame, answers: pd.DataFrame) -> float:
    sub, ans = align(submission, answers, "id", ["progression"])
    err = sub["progression"].to_numpy(float) - ans["progression"].to_numpy(float)
    return float(np.sqrt(np.mean(err**2)))
