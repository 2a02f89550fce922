from pathlib import Path

import numpy as np
from sklearn.datasets import load_diabetes

from experiments.mle.sklearn_tasks import rounded, split_and_write


def _z(v):
    return (v - v.mean()) / v.std()


def prepare(raw: Path, public: Path, private: Path) -> None:
    """A skewed, log-normal cost driven by progression and by interactions of the inputs
    (bmi × blood pressure, age × s5): a model needs the target transform and the products."""
    X, y = load_diabetes(return_X_y=True, as_frame=True, scaled=False)
    df = rounded(X, 4)
    df["sex"] = np.where(X["sex"] > 1.5, "F", "M")
    rng = np.random.default_rng(1729)
    log_cost = (
        5.0
        + 0.45 * _z(y)
        + 0.55 * _z(X["bmi"]) * _z(X["bp"])
        + 0.40 * _z(X["age"]) * _z(X["s5"])
        + 0.25 * (df["sex"] == "F")
        + rng.normal(0.0, 0.25, len(df))
    )
    df["cost"] = np.round(np.exp(log_cost), 2)
    split_and_write(df, "cost", public, private, test_size=0.35, seed=1729, sample_value=150.0)
