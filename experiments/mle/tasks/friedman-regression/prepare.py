from pathlib import Path

from sklearn.datasets import make_friedman1

from experiments.mle.sklearn_tasks import rounded, split_and_write


def prepare(raw: Path, public: Path, private: Path) -> None:
    # Friedman #1: y = 10 sin(pi x0 x1) + 20 (x2 - 0.5)^2 + 10 x3 + 5 x4 + noise; x5..x9 are noise.
    import pandas as pd

    X, y = make_friedman1(n_samples=1500, n_features=10, noise=1.0, random_state=80231)
    df = rounded(pd.DataFrame(X, columns=[f"x{i}" for i in range(X.shape[1])]), 5)
    df["y"] = y.round(5)
    split_and_write(df, "y", public, private, test_size=0.4, seed=80231, sample_value=14.0)
