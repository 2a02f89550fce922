from pathlib import Path

import numpy as np
import pandas as pd

from experiments.mle.sklearn_tasks import breast_cancer, rounded, write_malignant

CODED = 16  # measurements reported only as a lab's code for their range


def prepare(raw: Path, public: Path, private: Path) -> None:
    """Most measurements arrive as opaque range codes (the code letters are shuffled per
    column, so their order says nothing): a categorical-heavy table."""
    X, malignant = breast_cancer()
    rng = np.random.default_rng(31337)
    coded = list(rng.choice(X.columns, CODED, replace=False))
    df = pd.DataFrame(index=X.index)
    for col in X.columns:
        if col in coded:
            bins = pd.qcut(X[col], 6, labels=False, duplicates="drop").astype(int)
            letters = rng.permutation(list("ABCDEFGH"))
            df[col] = [f"{col[:3].upper()}-{letters[b]}" for b in bins]
        else:
            df[col] = rounded(X[[col]], 5)[col]
    df = df[[c for c in X.columns if c in coded] + [c for c in X.columns if c not in coded]]
    write_malignant(df, malignant, public, private, seed=31337)
