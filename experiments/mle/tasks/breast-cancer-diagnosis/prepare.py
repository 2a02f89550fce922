from pathlib import Path

from sklearn.datasets import load_breast_cancer

from experiments.mle.sklearn_tasks import rounded, split_and_write


def prepare(raw: Path, public: Path, private: Path) -> None:
    X, y = load_breast_cancer(return_X_y=True, as_frame=True)
    df = rounded(X, 5)
    df.columns = [c.replace(" ", "_") for c in df.columns]
    df["malignant"] = (y == 0).astype(int)  # sklearn codes malignant as 0
    split_and_write(
        df,
        "malignant",
        public,
        private,
        test_size=0.4,
        seed=2718,
        stratify=True,
        sample_value=0.5,
    )
