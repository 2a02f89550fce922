"""A multiclass gradient-boosted tree model trained the way ``xgboost.train`` trains one,
logged the way ``mlflow.xgboost.autolog()`` logs it.

Plain numpy/scikit-learn trees + the plain ``mlflow`` API.  The booster params and
``num_boost_round`` / ``early_stopping_rounds`` / ``maximize`` / ``verbose_eval`` are logged as
params.  Autolog's training callback logs, after every boosting round, one metric per
(evals entry, eval_metric) as ``{data_name}-{metric}`` with ``step=iteration`` (from 0): here
``train-mlogloss``, ``train-merror``, ``validation-mlogloss``, ``validation-merror``.  With
early stopping it also logs ``stopped_iteration`` and ``best_iteration`` at the end.  Written
without looking at the doctor.

The booster is Newton boosting with softmax: every round fits one regression tree per class to
``-g/h`` weighted by ``h`` (xgboost's second-order approximation), with leaf values
``-G/(H + lambda)`` scaled by ``eta``.  Faults are real settings: ``--eta`` far too high
(the Newton steps overshoot) or too low; ``--max_depth`` deep, ``--lambda 0`` and a small
``--train_rows``; ``--num_class`` smaller than the labels present (xgboost's label check).
"""

import time

import _setup
import mlflow
import numpy as np
from sklearn.datasets import load_digits, load_wine
from sklearn.tree import DecisionTreeRegressor

args = _setup.parse_flags(
    {
        "--seed": 0,
        "--dataset": "digits",
        "--eta": 0.3,
        "--max_depth": 4,
        "--min_child_weight": 1.0,
        "--lambda": ("reg_lambda", 1.0),
        "--subsample": 0.8,
        "--colsample_bytree": 0.8,
        "--num_boost_round": 60,
        "--early_stopping_rounds": 0,
        "--num_class": 0,
        "--test_size": 0.25,
        "--train_rows": 0,
        "--verbose_eval": 10,
    }
)
rng = _setup.seeded(args.seed, torch=False)

X, y = (load_wine if args.dataset == "wine" else load_digits)(return_X_y=True)
X = X.astype(np.float64)
order = rng.permutation(len(X))
n_val = int(round(args.test_size * len(X)))
Xva, yva = X[order[:n_val]], y[order[:n_val]]
tr = order[n_val:]
if args.train_rows:
    tr = tr[: args.train_rows]
Xtr, ytr = X[tr], y[tr]
K = args.num_class or int(y.max()) + 1

params = {
    "objective": "multi:softprob",
    "num_class": K,
    "eta": args.eta,
    "max_depth": args.max_depth,
    "min_child_weight": args.min_child_weight,
    "lambda": args.reg_lambda,
    "subsample": args.subsample,
    "colsample_bytree": args.colsample_bytree,
    "eval_metric": ["mlogloss", "merror"],
    "seed": args.seed,
    "tree_method": "exact",
}


def softmax(F):
    e = np.exp(F - F.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def one_hot(labels):
    if labels.max() >= K:  # xgboost: label must be in [0, num_class)
        bad = int(labels.max())
        raise ValueError(
            f"[xgboost] Check failed: label < num_class (label {bad} vs. num_class {K}): "
            "SoftmaxMultiClassObj: label must be in [0, num_class)."
        )
    Y = np.zeros((len(labels), K))
    Y[np.arange(len(labels)), labels] = 1.0
    return Y


def evaluate(F, labels):
    P = np.clip(softmax(F), 1e-15, 1.0)
    mlogloss = float(-np.mean(np.log(P[np.arange(len(labels)), labels])))
    merror = float(np.mean(P.argmax(1) != labels))
    return mlogloss, merror


class Booster:
    def __init__(self):
        self.trees = []  # per round: [(tree, cols, leaf_values)] * K

    def predict_margin(self, Xs, upto=None):
        F = np.full((len(Xs), K), 0.5)  # base_score
        for rnd in self.trees[:upto]:
            for k, (tree, cols, leaf) in enumerate(rnd):
                F[:, k] += args.eta * leaf[tree.apply(Xs[:, cols])]
        return F


def grow(Xs, g, h):
    rows = rng.random(len(Xs)) < args.subsample
    cols = np.sort(rng.permutation(Xs.shape[1])[: max(1, int(args.colsample_bytree * Xs.shape[1]))])
    tree = DecisionTreeRegressor(
        max_depth=args.max_depth,
        min_weight_fraction_leaf=0.0,
        random_state=int(rng.integers(1 << 31)),
    )
    tree.fit(Xs[rows][:, cols], -g[rows] / h[rows], sample_weight=h[rows])
    leaves = tree.apply(Xs[rows][:, cols])
    leaf = np.zeros(tree.tree_.node_count)
    G = np.bincount(leaves, g[rows], minlength=len(leaf))
    H = np.bincount(leaves, h[rows], minlength=len(leaf))
    ok = (H > 0) & (H >= args.min_child_weight)
    leaf[ok] = -G[ok] / (H[ok] + args.reg_lambda)
    return tree, cols, leaf


with mlflow.start_run():
    logged = {k: v for k, v in params.items() if k != "eval_metric"}
    logged["eval_metric"] = ",".join(params["eval_metric"])
    mlflow.log_params(
        {
            **logged,
            "num_boost_round": args.num_boost_round,
            "early_stopping_rounds": args.early_stopping_rounds or None,
            "maximize": None,
            "verbose_eval": args.verbose_eval,
            "custom_metric": None,
        }
    )
    Ytr = one_hot(ytr)
    one_hot(yva)
    booster = Booster()
    Ftr, Fva = booster.predict_margin(Xtr), booster.predict_margin(Xva)
    best, best_it, stopped = np.inf, 0, None
    t0 = time.time()
    for it in range(args.num_boost_round):
        P = softmax(Ftr)
        g, h = P - Ytr, np.maximum(2.0 * P * (1.0 - P), 1e-6)
        rnd = [grow(Xtr, g[:, k], h[:, k]) for k in range(K)]
        booster.trees.append(rnd)
        for k, (tree, cols, leaf) in enumerate(rnd):
            Ftr[:, k] += args.eta * leaf[tree.apply(Xtr[:, cols])]
            Fva[:, k] += args.eta * leaf[tree.apply(Xva[:, cols])]
        tl, te = evaluate(Ftr, ytr)
        vl, ve = evaluate(Fva, yva)
        mlflow.log_metrics(
            {
                "train-mlogloss": tl,
                "train-merror": te,
                "validation-mlogloss": vl,
                "validation-merror": ve,
            },
            step=it,
        )
        if args.verbose_eval and (it % args.verbose_eval == 0 or it == args.num_boost_round - 1):
            print(
                f"[{it}]\ttrain-mlogloss:{tl:.5f}\ttrain-merror:{te:.5f}\t"
                f"validation-mlogloss:{vl:.5f}\tvalidation-merror:{ve:.5f}",
                flush=True,
            )
        if vl < best:
            best, best_it = vl, it
        elif args.early_stopping_rounds and it - best_it >= args.early_stopping_rounds:
            stopped = it
            print(f"Stopping. Best iteration:\n[{best_it}]\tvalidation-mlogloss:{best:.5f}")
            break
    if args.early_stopping_rounds:
        mlflow.log_metrics(
            {
                "stopped_iteration": float(stopped if stopped is not None else it),
                "best_iteration": float(best_it),
            }
        )
    print(f"trained {len(booster.trees)} rounds in {time.time() - t0:.1f}s", flush=True)
