from pathlib import Path

from sklearn.datasets import load_diabetes

from experiments.mle.sklearn_tasks import rounded, split_and_write


def prepare(raw: Path, public: Path, private: Path) -> None:
    X, y = load_diabetes(return_X_y=True, as_frame=True, scaled=False)
    df = rounded(X, 4)
    df["progression"] = y.astype(float)
    split_and_write(
        df, "progression", public, private, test_size=0.35, seed=4242, sample_value=150.0
    )
