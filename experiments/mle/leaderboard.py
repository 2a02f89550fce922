"""Build a competition's ``leaderboard.csv`` from a spread of honest baseline solutions.

Every "team" is a real scikit-learn solution trained on the public ``train.csv`` (some on a
random fraction of it, as weaker teams would) and graded on the private answers with the
competition's own ``grade.py``. The shipped leaderboards were made with::

    python -m experiments.mle.leaderboard            # all built-in tasks (about a minute)
    python -m experiments.mle.leaderboard wine-cultivar --data-dir /tmp/mle

Rows are written best first (MLE-Bench reads the order to tell whether lower is better).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.base import clone
from sklearn.dummy import DummyClassifier, DummyRegressor
from sklearn.ensemble import (
    ExtraTreesClassifier,
    ExtraTreesRegressor,
    GradientBoostingRegressor,
    HistGradientBoostingClassifier,
    HistGradientBoostingRegressor,
    RandomForestClassifier,
    RandomForestRegressor,
)
from sklearn.impute import SimpleImputer
from sklearn.linear_model import Lasso, LinearRegression, LogisticRegression, Ridge
from sklearn.naive_bayes import GaussianNB
from sklearn.neighbors import KNeighborsClassifier, KNeighborsRegressor
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC, SVR
from sklearn.tree import DecisionTreeClassifier, DecisionTreeRegressor

from experiments.mle.competition import LITE, Competition, load_competition, prepare
from experiments.mle.taskinfo import TaskInfo, infer_task
from model.files import atomic_path


def _scaled(model):
    return make_pipeline(SimpleImputer(), StandardScaler(), model)


def _plain(model):
    return make_pipeline(SimpleImputer(), model)


def classifier_zoo() -> dict[str, object]:
    return {
        "prior": _plain(DummyClassifier(strategy="prior")),
        "naive-bayes": _plain(GaussianNB()),
        "tree-d2": _plain(DecisionTreeClassifier(max_depth=2, random_state=0)),
        "tree-d4": _plain(DecisionTreeClassifier(max_depth=4, random_state=0)),
        "tree-d8": _plain(DecisionTreeClassifier(max_depth=8, random_state=0)),
        "logreg-C0.01": _scaled(LogisticRegression(C=0.01, max_iter=2000)),
        "logreg-C0.1": _scaled(LogisticRegression(C=0.1, max_iter=2000)),
        "logreg-C1": _scaled(LogisticRegression(C=1.0, max_iter=2000)),
        "logreg-C10": _scaled(LogisticRegression(C=10.0, max_iter=4000)),
        "knn-1": _scaled(KNeighborsClassifier(1)),
        "knn-5": _scaled(KNeighborsClassifier(5)),
        "knn-25": _scaled(KNeighborsClassifier(25)),
        "rf-d3": _plain(RandomForestClassifier(100, max_depth=3, random_state=0)),
        "rf-200": _plain(RandomForestClassifier(200, random_state=0)),
        "extra-trees-200": _plain(ExtraTreesClassifier(200, random_state=0)),
        "hist-gb": _plain(HistGradientBoostingClassifier(random_state=0)),
        "hist-gb-slow": _plain(
            HistGradientBoostingClassifier(learning_rate=0.05, max_iter=200, random_state=0)
        ),
        "svc-C1": _scaled(SVC(C=1.0, probability=True, random_state=0)),
        "svc-C10": _scaled(SVC(C=10.0, probability=True, random_state=0)),
    }


def regressor_zoo() -> dict[str, object]:
    return {
        "mean": _plain(DummyRegressor()),
        "median": _plain(DummyRegressor(strategy="median")),
        "linear": _scaled(LinearRegression()),
        "ridge-1": _scaled(Ridge(1.0)),
        "ridge-100": _scaled(Ridge(100.0)),
        "lasso-1": _scaled(Lasso(1.0, max_iter=10000)),
        "tree-d2": _plain(DecisionTreeRegressor(max_depth=2, random_state=0)),
        "tree-d4": _plain(DecisionTreeRegressor(max_depth=4, random_state=0)),
        "tree-d8": _plain(DecisionTreeRegressor(max_depth=8, random_state=0)),
        "knn-3": _scaled(KNeighborsRegressor(3)),
        "knn-10": _scaled(KNeighborsRegressor(10)),
        "knn-30": _scaled(KNeighborsRegressor(30)),
        "rf-300": _plain(RandomForestRegressor(300, random_state=0)),
        "rf-d4": _plain(RandomForestRegressor(100, max_depth=4, random_state=0)),
        "extra-trees-300": _plain(ExtraTreesRegressor(300, random_state=0)),
        "hist-gb": _plain(HistGradientBoostingRegressor(random_state=0)),
        "gb-500": _plain(
            GradientBoostingRegressor(
                n_estimators=500, learning_rate=0.05, max_depth=3, random_state=0
            )
        ),
        "svr-C10": _scaled(SVR(C=10.0)),
        "svr-C100": _scaled(SVR(C=100.0)),
    }


def predict_frame(
    model, info: TaskInfo, X_test: pd.DataFrame, ids: pd.Series, label_range=(0, None)
) -> pd.DataFrame:
    """Turn a fitted model's predictions into the submission's columns."""
    out = pd.DataFrame({info.id_col: ids.to_numpy()})
    if info.mode == "regression":
        out[info.target] = model.predict(X_test)
    elif info.mode == "label":
        pred = model.predict(X_test)
        if info.metric == "qwk" and not hasattr(model, "predict_proba"):  # a regressor on grades
            pred = np.clip(np.round(pred), *label_range).astype(int)
        out[info.target] = pred
    elif info.mode == "proba_binary":
        out[info.target] = model.predict_proba(X_test)[:, 1]
    else:
        proba = model.predict_proba(X_test)
        by_label = {str(c): proba[:, i] for i, c in enumerate(model.classes_)}
        for col, label in zip(info.submission_cols, info.classes, strict=True):
            out[col] = by_label.get(label, np.zeros(len(X_test)))
    return out


FRACTIONS = (1.0, 0.5, 0.15)  # weaker "teams" saw less data


def baseline_scores(comp: Competition, log: Callable[[str], None] = lambda s: None) -> pd.DataFrame:
    info = infer_task(comp.public_dir, comp.grader_name)
    train = pd.read_csv(comp.public_dir / "train.csv")
    test = pd.read_csv(comp.public_dir / "test.csv")
    answers = pd.read_csv(comp.answers)
    grade = comp.grade_fn()
    feats = [c for c in info.features if pd.api.types.is_numeric_dtype(train[c])]
    zoo = regressor_zoo() if info.mode == "regression" else classifier_zoo()
    if info.metric == "qwk":  # ordinal grades: regressors rounded to the nearest grade compete too
        zoo |= {
            f"{k}-rounded": v
            for k, v in regressor_zoo().items()
            if k in ("ridge-1", "rf-300", "svr-C10", "hist-gb")
        }
    rows = []
    label_range = (train[info.target].min(), train[info.target].max())
    for frac in FRACTIONS:
        for name, proto in zoo.items():
            if frac < 1.0 and name in ("prior", "mean", "median"):
                continue
            sub_train = (
                train if frac == 1.0 else train.sample(frac=frac, random_state=len(rows) + 7)
            )
            if (
                info.mode != "regression"
                and sub_train[info.target].nunique() < train[info.target].nunique()
            ):
                continue  # a tiny sample that misses a class cannot make a valid submission
            try:
                model = clone(proto).fit(sub_train[feats], sub_train[info.target])
                sub = predict_frame(model, info, test[feats], test[info.id_col], label_range)
            except ValueError:  # e.g. more neighbours than rows: that team never submitted
                continue
            score = round(float(grade(sub, answers)), 5)
            team = name if frac == 1.0 else f"{name}-{int(frac * 100)}pct"
            rows.append({"teamName": team, "score": score})
            log(f"{comp.id}: {team} {score}")
    board = pd.DataFrame(rows)
    ascending = info.lower_is_better
    board = board.sort_values("score", ascending=ascending, kind="mergesort").reset_index(drop=True)
    board.insert(0, "teamId", np.arange(1, len(board) + 1))
    return board


def write_leaderboard(board: pd.DataFrame, path: Path) -> None:
    with atomic_path(path) as tmp:
        board.to_csv(tmp, index=False)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("tasks", nargs="*", default=list(LITE))
    ap.add_argument("--data-dir", type=Path, default=None)
    ap.add_argument("--out", type=Path, default=None, help="write here instead of the task dir")
    args = ap.parse_args(argv)
    data = args.data_dir or Path(tempfile.mkdtemp(prefix="mle-lb-"))
    for task in args.tasks:
        comp = prepare(load_competition(task, data))
        board = baseline_scores(comp, log=lambda m: print(m, file=sys.stderr, flush=True))
        dest = (args.out / f"{comp.id}.csv") if args.out else comp.leaderboard
        if args.out:
            args.out.mkdir(parents=True, exist_ok=True)
        write_leaderboard(board, dest)
        print(
            f"{comp.id}: {len(board)} teams, best {board['score'].iloc[0]}, worst {board['score'].iloc[-1]} → {dest}"
        )


if __name__ == "__main__":
    main()
