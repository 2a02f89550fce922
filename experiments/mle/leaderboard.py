"""Build a competition's ``leaderboard.csv`` from a spread of honest baseline solutions.

Every "team" is a real scikit-learn solution trained on the public ``train.csv`` (some on a
random fraction of it, as weaker teams would) and graded on the private answers with the
competition's own ``grade.py``. Besides the baseline zoo, a few strong teams do what a
competent practitioner does in a few minutes of CPU: cross-validated boosting and SVMs,
ridge on polynomial features, calibrated and stacked models, one-hot codes for categorical
columns and the log of a target scored in log space. The shipped leaderboards were made with::

    python -m experiments.mle.leaderboard            # all built-in tasks (about a minute)
    python -m experiments.mle.leaderboard wine-cultivar --data-dir /tmp/mle

Rows are written best first (MLE-Bench reads the order to tell whether lower is better).
"""

from __future__ import annotations

import argparse
import itertools
import sys
import tempfile
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.base import clone
from sklearn.calibration import CalibratedClassifierCV
from sklearn.compose import ColumnTransformer, TransformedTargetRegressor
from sklearn.dummy import DummyClassifier, DummyRegressor
from sklearn.ensemble import (
    ExtraTreesClassifier,
    ExtraTreesRegressor,
    GradientBoostingRegressor,
    HistGradientBoostingClassifier,
    HistGradientBoostingRegressor,
    RandomForestClassifier,
    RandomForestRegressor,
    StackingClassifier,
    StackingRegressor,
)
from sklearn.impute import SimpleImputer
from sklearn.linear_model import (
    Lasso,
    LinearRegression,
    LogisticRegression,
    LogisticRegressionCV,
    Ridge,
    RidgeCV,
)
from sklearn.model_selection import GridSearchCV, KFold, StratifiedKFold
from sklearn.naive_bayes import GaussianNB
from sklearn.neighbors import KNeighborsClassifier, KNeighborsRegressor
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import OneHotEncoder, PolynomialFeatures, StandardScaler
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


SCORERS = {
    "accuracy": "accuracy",
    "qwk": "accuracy",
    "roc-auc": "roc_auc",
    "log-loss": "neg_log_loss",
    "rmse": "neg_root_mean_squared_error",
    "rmsle": "neg_root_mean_squared_error",  # fitted on log1p(y)
    "mae": "neg_mean_absolute_error",
}


def _columns(train: pd.DataFrame, feats: list[str]) -> ColumnTransformer:
    numeric = [c for c in feats if pd.api.types.is_numeric_dtype(train[c])]
    cats = [c for c in feats if c not in numeric]
    parts = [("num", make_pipeline(SimpleImputer(), StandardScaler()), numeric)]
    if cats:
        parts.append(("cat", OneHotEncoder(handle_unknown="ignore", sparse_output=False), cats))
    return ColumnTransformer(parts)


BOOST_GRID = {"learning_rate": [0.05, 0.1], "max_leaf_nodes": [7, 15]}  # boosting's telling knobs


def strong_zoo(info: TaskInfo, train: pd.DataFrame, feats: list[str]) -> dict[str, object]:
    """What a competent practitioner fits in a few CPU minutes, tuned by 3-fold CV."""
    pre = _columns(train, feats)
    scoring = SCORERS[info.metric]
    regression = info.mode == "regression"
    cv = (KFold if regression else StratifiedKFold)(3, shuffle=True, random_state=0)
    search = partial(GridSearchCV, cv=cv, scoring=scoring)  # every grid: same folds, the metric
    if regression:
        hgb = search(HistGradientBoostingRegressor(max_iter=300, random_state=0), BOOST_GRID)
        poly = make_pipeline(
            PolynomialFeatures(2, include_bias=False),
            StandardScaler(),
            RidgeCV(alphas=np.logspace(-2, 3, 12)),
        )
        svr = search(SVR(), {"C": [1, 10, 100], "gamma": ["scale", 0.03]})
        stack = StackingRegressor(  # members at sound fixed settings: no nested search
            [
                ("svr", SVR(C=30.0)),
                ("poly", clone(poly)),
                (
                    "hgb",
                    HistGradientBoostingRegressor(
                        learning_rate=0.05, max_iter=200, max_leaf_nodes=15, random_state=0
                    ),
                ),
            ],
            RidgeCV(),
            cv=cv,
        )
        zoo = {"cv-hist-gb": hgb, "poly-ridge-cv": poly, "svr-cv": svr, "stack-svr-poly-gb": stack}
        zoo = {k: make_pipeline(clone(pre), v) for k, v in zoo.items()}
        if (
            info.metric in ("rmsle",)
            or (train[info.target] > 0).all()
            and train[info.target].skew() > 2
        ):
            zoo = {
                k: TransformedTargetRegressor(v, func=np.log1p, inverse_func=np.expm1)
                for k, v in zoo.items()
            }
        return zoo
    hgb = search(HistGradientBoostingClassifier(max_iter=200, random_state=0), BOOST_GRID)
    svc = search(SVC(probability=True, random_state=0), {"C": [1, 3, 10], "gamma": ["scale"]})
    logreg = LogisticRegressionCV(Cs=10, cv=cv, max_iter=5000, scoring=scoring)
    poly = make_pipeline(
        PolynomialFeatures(2, include_bias=False),
        StandardScaler(),
        LogisticRegressionCV(Cs=6, cv=cv, max_iter=5000, scoring=scoring),
    )
    zoo = {
        "cv-hist-gb": hgb,
        "svc-cv": svc,
        "logreg-cv": logreg,
        "calibrated-svc": CalibratedClassifierCV(
            SVC(C=3.0, random_state=0), method="sigmoid", cv=3
        ),
        "calibrated-extra-trees": CalibratedClassifierCV(
            ExtraTreesClassifier(400, random_state=0), method="isotonic", cv=3
        ),
        "stack-svc-logreg-gb": StackingClassifier(
            [
                ("svc", SVC(C=3.0, probability=True, random_state=0)),
                ("logreg", LogisticRegression(max_iter=3000)),
                ("hgb", HistGradientBoostingClassifier(random_state=0)),
            ],
            LogisticRegression(max_iter=2000),
            cv=cv,
        ),
    }
    if len(feats) <= 40:  # pairwise products of a few dozen columns stay small
        zoo["poly-logreg-cv"] = poly
    return {k: make_pipeline(clone(pre), v) for k, v in zoo.items()}


def predict_frame(
    model, info: TaskInfo, X_test: pd.DataFrame, ids: pd.Series, label_range=(0, None)
) -> pd.DataFrame:
    """Turn a fitted model's predictions into the submission's columns."""
    out = pd.DataFrame({info.id_col: ids.to_numpy()})
    if info.mode == "regression":
        pred = model.predict(X_test)
        out[info.target] = np.clip(pred, 0, None) if info.metric == "rmsle" else pred
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


def baseline_scores(
    comp: Competition,
    log: Callable[[str], None] = lambda s: None,
    keep: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """Every team's score. ``keep``: an existing board whose baseline rows are kept as they
    are (the baseline zoo is deterministic), so only the strong teams are (re)fitted."""
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
    rows: list[dict] = []
    label_range = (train[info.target].min(), train[info.target].max())
    strong = strong_zoo(info, train, list(info.features))
    if keep is not None:
        rows = [
            {"teamName": t, "score": s}
            for t, s in zip(keep["teamName"], keep["score"], strict=True)
            if t not in strong
        ]
        zoo = {}

    def baseline_teams() -> Iterator[tuple[str, object, pd.DataFrame, list[str]]]:
        # Lazy: a sample's seed is the number of rows written so far, as the boards were made.
        for frac in FRACTIONS if zoo else ():
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
                team = name if frac == 1.0 else f"{name}-{int(frac * 100)}pct"
                yield team, clone(proto), sub_train, feats

    strong_teams = [(name, model, train, list(info.features)) for name, model in strong.items()]
    for team, model, fit_on, cols in itertools.chain(baseline_teams(), strong_teams):
        try:
            fitted = model.fit(fit_on[cols], fit_on[info.target])
            sub = predict_frame(fitted, info, test[cols], test[info.id_col], label_range)
        except ValueError as exc:  # e.g. more neighbours than rows: that team never submitted
            log(f"{comp.id}: team {team} failed: {exc}")
            continue
        score = round(float(grade(sub, answers)), 5)
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
    ap.add_argument(
        "--strong-only",
        action="store_true",
        help="keep the task's baseline rows, refit only the strong teams",
    )
    args = ap.parse_args(argv)
    data = args.data_dir or Path(tempfile.mkdtemp(prefix="mle-lb-"))
    for task in args.tasks:
        comp = prepare(load_competition(task, data))
        keep = pd.read_csv(comp.leaderboard) if args.strong_only else None
        board = baseline_scores(
            comp, log=lambda m: print(m, file=sys.stderr, flush=True), keep=keep
        )
        dest = (args.out / f"{comp.id}.csv") if args.out else comp.leaderboard
        if args.out:
            args.out.mkdir(parents=True, exist_ok=True)
        write_leaderboard(board, dest)
        print(
            f"{comp.id}: {len(board)} teams, best {board['score'].iloc[0]}, worst {board['score'].iloc[-1]} → {dest}"
        )


if __name__ == "__main__":
    main()
