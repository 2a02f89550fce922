from pathlib import Path

from sklearn.datasets import load_wine

from experiments.mle.sklearn_tasks import rounded, split_and_write


def prepare(raw: Path, public: Path, private: Path) -> None:
    X, y = load_wine(return_X_y=True, as_frame=True)
    df = rounded(X, 4)
    df["cultivar"] = y.astype(int)
    classes = [f"class_{k}" for k in sorted(df["cultivar"].unique())]
    split_and_write(
        df,
        "cultivar",
        public,
        private,
        test_size=0.4,
        seed=5120,
        stratify=True,
        proba_columns=classes,
    )
