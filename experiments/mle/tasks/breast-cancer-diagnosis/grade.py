import pandas as pd
from sklearn.metrics import roc_auc_score

from experiments.mle.grading import align


def grade(submission: pd.DataFrame, answers: pd.DataFrame) -> float:
    sub, ans = align(submission, answers, "id", ["malignant"])
    return float(roc_auc_score(ans["malignant"].astype(int), sub["malignant"]))
