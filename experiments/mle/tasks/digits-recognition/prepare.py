from pathlib import Path

from sklearn.datasets import load_digits

from experiments.mle.sklearn_tasks import split_and_write


def prepare(raw: Path, public: Path, private: Path) -> None:
    X, y = load_digits(return_X_y=True, as_frame=True)
    df = X.astype(int)
    df.columns = [f"pixel_{i}" for i in range(df.shape[1])]
    df["label"] = y.astype(int)
    split_and_write(df, "label", public, private, test_size=0.35, seed=9341, stratify=True)
