import pandas as pd
from sklearn.metrics import accuracy_score

from experiments.mle.grading import align


def grade(submission: pd.DataFrame, answers: pd.DataFrame) -> float:
    sub, ans = align(submission, answers, "id", ["label"])
    return float(accuracy_score(ans["label"].astype(int), sub["label"].round().astype(int)))
