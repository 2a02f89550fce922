"""Shared by the built-in tasks' ``prepare.py``: split a frame into public / private files.

Public: ``train.csv`` (id, features, target), ``test.csv`` (id, features) and
``sample_submission.csv``. Private: ``test.csv`` with the id and the true target — only the
grader reads it.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.model_selection import train_test_split


def split_and_write(
    df: pd.DataFrame,
    target: str,
    public: Path,
    private: Path,
    *,
    test_size: float,
    seed: int,
    stratify: bool = False,
    proba_columns: Sequence[str] | None = None,
    sample_value: float = 0.0,
) -> None:
    """Shuffle, give each row an opaque id, split, and write the competition files.

    ``proba_columns``: the submission holds one probability column per name (else a single
    ``target`` column holding ``sample_value`` in the sample submission).
    """
    rng = np.random.default_rng(seed)
    df = df.reset_index(drop=True)
    # Ids are a random permutation so that row order leaks nothing about the split.
    df.insert(0, "id", rng.permutation(len(df)) + 10_000)
    train, test = train_test_split(
        df, test_size=test_size, random_state=seed, stratify=df[target] if stratify else None
    )
    train = train.sort_values("id")
    test = test.sort_values("id")
    public.mkdir(parents=True, exist_ok=True)
    private.mkdir(parents=True, exist_ok=True)
    train.to_csv(public / "train.csv", index=False)
    test.drop(columns=[target]).to_csv(public / "test.csv", index=False)
    test[["id", target]].to_csv(private / "test.csv", index=False)
    sample = test[["id"]].copy()
    if proba_columns:
        for c in proba_columns:
            sample[c] = round(1.0 / len(proba_columns), 6)
    else:
        sample[target] = sample_value
    sample.to_csv(public / "sample_submission.csv", index=False)


def rounded(frame: pd.DataFrame, decimals: int = 5) -> pd.DataFrame:
    """Keep the CSVs small and stable across platforms."""
    return frame.round(decimals)


def breast_cancer() -> tuple[pd.DataFrame, pd.Series]:
    """scikit-learn's breast cancer table: features with ``_`` for spaces, and ``malignant``
    (1 = malignant; scikit-learn codes malignant as 0)."""
    from sklearn.datasets import load_breast_cancer

    X, y = load_breast_cancer(return_X_y=True, as_frame=True)
    X.columns = [c.replace(" ", "_") for c in X.columns]
    return X, (y == 0).astype(int).rename("malignant")


def write_malignant(
    df: pd.DataFrame, malignant: pd.Series, public: Path, private: Path, seed: int
) -> None:
    """The breast cancer tasks' split: 40 % test, stratified, a 0.5 sample submission."""
    split_and_write(
        df.assign(malignant=malignant),
        "malignant",
        public,
        private,
        test_size=0.4,
        seed=seed,
        stratify=True,
        sample_value=0.5,
    )
