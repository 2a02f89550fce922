"""What a tabular competition asks for, read from its public files alone.

Only public data is consulted (``train.csv``, ``test.csv``, ``sample_submission.csv``) plus the
grader's *name* from ``config.yaml`` — never the answers. This is what the ``rules`` search and
the leaderboard baselines need: the id column, the target, the submission columns, whether to
predict labels, probabilities or values, and the metric to validate with.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import pandas as pd

# metric → (lower is better, kind of prediction it scores)
METRICS: dict[str, bool] = {
    "accuracy": False,
    "log-loss": True,
    "roc-auc": False,
    "rmse": True,
    "rmsle": True,
    "mae": True,
    "qwk": False,
}
MODES = ("label", "proba_binary", "proba_multi", "regression")


class TaskInfoError(ValueError):
    """The public files do not describe a single-target tabular task we can handle."""


@dataclass(frozen=True)
class TaskInfo:
    id_col: str
    target: str
    submission_cols: tuple[str, ...]
    mode: str  # one of MODES
    metric: str  # one of METRICS
    classes: tuple[str, ...] = ()  # proba_multi: train label (as text) per submission column
    n_train: int = 0
    n_test: int = 0
    features: tuple[str, ...] = ()

    @property
    def lower_is_better(self) -> bool:
        return METRICS[self.metric]

    def to_dict(self) -> dict:
        d = asdict(self)
        d["lower_is_better"] = self.lower_is_better
        return d


def normalise_metric(grader_name: str) -> str | None:
    """Map MLE-Bench grader names (``auc-roc``, ``multi-class-log-loss``, …) to our metrics."""
    n = grader_name.lower().replace("_", "-").replace(" ", "-")
    if "kappa" in n or n == "qwk":
        return "qwk"
    if "log" in n and "loss" in n:
        return "log-loss"
    if "auc" in n:
        return "roc-auc"
    if "rmsle" in n:
        return "rmsle"
    if "rmse" in n or "root-mean-squared" in n:
        return "rmse"
    if n in ("mae", "mean-absolute-error") or "absolute" in n:
        return "mae"
    if "accuracy" in n:
        return "accuracy"
    return None


def _is_label_column(s: pd.Series) -> bool:
    if s.dtype == object or s.dtype == bool:
        return s.nunique() <= 50
    values = s.dropna()
    return bool(((values - values.round()).abs() < 1e-9).all() and values.nunique() <= 20)


def infer_task(public_dir: Path, grader_name: str = "") -> TaskInfo:
    public_dir = Path(public_dir)
    try:
        train = pd.read_csv(public_dir / "train.csv")
        test = pd.read_csv(public_dir / "test.csv", nrows=5)
        sample = pd.read_csv(public_dir / "sample_submission.csv")
    except (OSError, pd.errors.ParserError) as exc:
        raise TaskInfoError(
            f"{public_dir}: needs train.csv, test.csv, sample_submission.csv ({exc})"
        ) from None
    id_col = str(sample.columns[0])
    sub_cols = tuple(str(c) for c in sample.columns[1:])
    extra = [c for c in train.columns if c not in test.columns]
    if len(extra) == 1:
        target = str(extra[0])
    elif len(sub_cols) == 1 and sub_cols[0] in train.columns:
        target = sub_cols[0]
    else:
        raise TaskInfoError(f"cannot tell the target column (train-only columns: {extra})")
    y = train[target]
    metric = normalise_metric(grader_name)
    classes: tuple[str, ...] = ()
    if sub_cols == (target,):
        if metric in ("rmse", "rmsle", "mae") or not _is_label_column(y):
            mode = "regression"
        elif metric in ("roc-auc", "log-loss") and y.nunique() == 2:
            mode = "proba_binary"
        else:
            mode = "label"
    else:
        labels = [str(v) for v in sorted(y.dropna().unique().tolist())]
        if len(labels) != len(sub_cols):
            raise TaskInfoError(
                f"{len(sub_cols)} submission columns but {len(labels)} labels in `{target}`"
            )
        by_name = {}
        for col in sub_cols:
            match = [lab for lab in labels if col == lab or col.endswith(f"_{lab}")]
            by_name[col] = match[0] if len(match) == 1 else None
        if all(by_name.values()) and len(set(by_name.values())) == len(labels):
            classes = tuple(by_name[c] for c in sub_cols)
        else:  # columns in label order
            classes = tuple(labels)
        mode = "proba_multi"
    if metric is None:
        metric = {"regression": "rmse", "label": "accuracy"}.get(mode, "log-loss")
    features = tuple(str(c) for c in test.columns if c != id_col and c in train.columns)
    return TaskInfo(
        id_col=id_col,
        target=target,
        submission_cols=sub_cols,
        mode=mode,
        metric=metric,
        classes=classes,
        n_train=len(train),
        n_test=len(sample),
        features=features,
    )
