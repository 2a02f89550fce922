from pathlib import Path

from experiments.mle.sklearn_tasks import breast_cancer, rounded, write_malignant


def prepare(raw: Path, public: Path, private: Path) -> None:
    X, malignant = breast_cancer()
    write_malignant(rounded(X, 5), malignant, public, private, seed=2718)
