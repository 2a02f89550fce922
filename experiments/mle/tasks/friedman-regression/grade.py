import numpy as np
import pandas as pd

from experiments.mle.grading import align


def grade(submission: pd.DataFrame, answers: pd.DataFrame) -> float:
    sub, ans = align(submission, answers, "id", ["y"])
    return float(np.mean(np.abs(sub["y"].to_numpy(float) - ans["y"].to_numpy(float))))
