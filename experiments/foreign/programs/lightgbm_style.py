"""A gradient-boosted credit-default classifier trained with ``lightgbm.train`` under
``mlflow.lightgbm.autolog()``.

Plain numpy + scikit-learn's trees + the plain ``mlflow`` API (no LightGBM here).  What is
imitated:

* ``lgb.train(params, train_set, num_boost_round, valid_sets=[train_set, valid_set],
  valid_names=["train", "valid"], callbacks=[lgb.early_stopping(stopping_rounds)])`` with
  ``objective: binary`` (or a callable objective, LightGBM 4's ``params["objective"] = fobj``),
  ``metric: ["binary_logloss", "auc"]``, ``learning_rate``, ``num_leaves`` (leaf-wise growth:
  the best-first tree of ``max_leaf_nodes = num_leaves``), ``min_data_in_leaf``,
  ``lambda_l2``, ``bagging_fraction`` / ``bagging_freq``, ``feature_fraction``; the initial
  score ``boost_from_average``; leaf values the Newton step ``-G / (H + lambda_l2)`` times the
  learning rate;
* ``mlflow.lightgbm.autolog()``: its ``record_eval_results`` callback logs every round's
  evaluation as ``{valid_name}-{metric}`` (``train-binary_logloss``, ``train-auc``,
  ``valid-binary_logloss``, ``valid-auc``) at ``step = iteration`` (from 0); with early
  stopping, ``stopped_iteration`` and ``best_iteration`` once at the end and the best
  iteration's scores again at ``step = len(eval_results)``;
* LightGBM's console lines ``[LightGBM] [Info] Number of positive: 1234, number of negative:
  3456``, ``Training until validation scores don't improve for 50 rounds``, ``Early stopping,
  best iteration is: [123]  train's binary_logloss: ... valid's binary_logloss: ...``.

Data: a generated credit-default table (``n_rows`` loans, 24 numeric features of which a few
are informative, a few percent of labels noisy), split into train / valid by
``valid_frac``; ``--train_rows`` keeps only the first rows of the training split;
``--extract_round`` merges next month's extract (``extract_rows`` new loans) into the training table at
that round and boosting goes on from the current model (``init_model``), as the team's
monthly refresh does.
Written without looking at the doctor.

Faults are real settings and code: ``--learning_rate``; ``--num_leaves`` with
``--min_data_in_leaf``, ``--train_rows`` and no early stopping; ``--extract_label repaid`` (the
extract's ETL wrote the label column the other way round).
"""

import time

import _setup
import mlflow
import numpy as np
from sklearn.datasets import make_classification
from sklearn.metrics import roc_auc_score
from sklearn.tree import DecisionTreeRegressor

args = _setup.parse_flags(
    {
        "--seed": 0,
        "--n_rows": 6000,
        "--valid_frac": 0.2,
        "--train_rows": 0,  # 0: the whole training split
        "--objective": "binary",  # binary | focal (the team's callable objective)
        "--focal_gamma": 2.0,
        "--fobj_dtype": "float64",
        "--learning_rate": 0.1,
        "--num_leaves": 31,
        "--min_data_in_leaf": 20,
        "--lambda_l2": 1.0,
        "--bagging_fraction": 1.0,
        "--bagging_freq": 0,
        "--feature_fraction": 1.0,
        "--num_boost_round": 200,
        "--stopping_rounds": 50,  # 0: no early stopping
        "--extract_round": 0,  # 0: no new monthly extract during training
        "--extract_rows": 2000,
        "--extract_label": "default",  # the extract's label column: default | repaid
    },
)
rng = _setup.seeded(args.seed, torch=False)

# ----------------------------------------------------------------------------- data
X_book, y_book = make_classification(
    n_samples=args.n_rows + 6000,  # the loan book, then the next months' loans
    n_features=24,
    n_informative=8,
    n_redundant=4,
    n_clusters_per_class=3,
    weights=[0.75],
    flip_y=0.04,
    class_sep=0.9,
    random_state=7,  # the same loan book for every run
)
X, y = X_book[: args.n_rows], y_book[: args.n_rows]
order = np.random.default_rng(11).permutation(args.n_rows)
n_valid = int(args.valid_frac * args.n_rows)
va, tr = order[:n_valid], order[n_valid:]
if args.train_rows:
    tr = tr[: args.train_rows]
Xt, yt, Xv, yv = X[tr], y[tr].astype(float), X[va], y[va].astype(float)
# next month's extract: the loans after the book's first n_rows
Xe = X_book[args.n_rows : args.n_rows + args.extract_rows]
ye = y_book[args.n_rows : args.n_rows + args.extract_rows].astype(float)
if args.extract_label == "repaid":  # its ETL's label column is 1 for a repaid loan
    ye = 1.0 - ye


def sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


def binary_grad_hess(score, label):
    p = sigmoid(score)
    return p - label, p * (1 - p)


def focal_grad_hess(score, label):
    """The team's focal loss (gamma) as a LightGBM callable objective; its arithmetic in
    ``fobj_dtype`` ("float16 halves the gradient buffers on the big book")."""
    dt = np.dtype(args.fobj_dtype)
    x = score.astype(dt)
    t = label.astype(dt)
    g = dt.type(args.focal_gamma)
    e = np.exp(x)
    p = e / (1 + e)
    pt = np.where(t == 1, p, 1 - p)
    sign = np.where(t == 1, dt.type(1), dt.type(-1))
    # d/dx of -(1 - pt)^g log(pt), with dpt/dx = sign pt (1 - pt)
    grad = sign * (1 - pt) ** g * (g * pt * np.log(pt) - (1 - pt))
    hess = (1 - pt) ** g * pt * (1 - pt) + dt.type(1e-6)
    return grad.astype(np.float64), hess.astype(np.float64)


def logloss(score, label):
    p = np.clip(sigmoid(score), 1e-15, 1 - 1e-15)
    return float(-np.mean(label * np.log(p) + (1 - label) * np.log(1 - p)))


def auc(score, label):
    if not np.all(np.isfinite(score)):
        return float("nan")
    return float(roc_auc_score(label, score))


grad_hess = focal_grad_hess if args.objective == "focal" else binary_grad_hess

with mlflow.start_run():
    mlflow.log_params({k: v for k, v in vars(args).items()})
    pos = int(yt.sum())
    print(
        f"[LightGBM] [Info] Number of positive: {pos}, number of negative: {len(yt) - pos}",
        flush=True,
    )
    print(
        f"[LightGBM] [Info] Total Bins 6120\n[LightGBM] [Info] Number of data points in the "
        f"train set: {len(yt)}, number of used features: 24",
        flush=True,
    )
    init = float(np.log(yt.mean() / (1 - yt.mean())))  # boost_from_average
    st, sv = np.full(len(yt), init), np.full(len(yv), init)
    if args.objective != "binary":
        st[:], sv[:] = 0.0, 0.0
    else:
        print(f"[LightGBM] [Info] Start training from score {init:f}", flush=True)
    if args.stopping_rounds:
        print(
            f"Training until validation scores don't improve for {args.stopping_rounds} rounds",
            flush=True,
        )
    eval_results = []
    best_it, best = 0, np.inf
    t0 = time.time()
    trees = []
    for it in range(args.num_boost_round):
        if args.extract_round and it == args.extract_round:
            # the team's monthly refresh: lgb.train(init_model=booster) on the merged table
            se = np.full(len(ye), init)
            for tr_, cols_, lookup_ in trees:
                se = se + args.learning_rate * lookup_[tr_.apply(Xe[:, cols_])]
            Xt, yt, st = (
                np.concatenate([Xt, Xe]),
                np.concatenate([yt, ye]),
                np.concatenate([st, se]),
            )
            print(f"[LightGBM] [Info] merged the new extract: {len(yt)} rows", flush=True)
        g, h = grad_hess(st, yt)
        rows = np.arange(len(yt))
        if args.bagging_freq and it % args.bagging_freq == 0:
            bag = rng.uniform(size=len(yt)) < args.bagging_fraction
        elif not args.bagging_freq:
            bag = np.ones(len(yt), bool)
        rows = rows[bag]
        cols = np.sort(rng.choice(24, max(1, int(round(24 * args.feature_fraction))), False))
        tree = DecisionTreeRegressor(
            max_leaf_nodes=args.num_leaves,
            min_samples_leaf=args.min_data_in_leaf,
            random_state=int(rng.integers(1 << 30)),
        )
        ok = np.isfinite(g) & np.isfinite(h)
        gg = np.where(ok, g, 0.0)
        hh = np.where(ok, h, 0.0)
        tree.fit(Xt[rows][:, cols], -gg[rows] / np.maximum(hh[rows], 1e-12), hh[rows] + 1e-12)
        leaf_t = tree.apply(Xt[:, cols])
        leaves = np.unique(leaf_t[rows])
        value = {}
        for leaf in leaves:
            m = leaf_t[rows] == leaf
            value[leaf] = -g[rows][m].sum() / (h[rows][m].sum() + args.lambda_l2)
        lookup = np.zeros(tree.tree_.node_count)
        for leaf, v in value.items():
            lookup[leaf] = v
        trees.append((tree, cols, lookup))
        st = st + args.learning_rate * lookup[leaf_t]
        sv = sv + args.learning_rate * lookup[tree.apply(Xv[:, cols])]
        res = {
            "train-binary_logloss": logloss(st, yt),
            "train-auc": auc(st, yt),
            "valid-binary_logloss": logloss(sv, yv),
            "valid-auc": auc(sv, yv),
        }
        eval_results.append(res)
        mlflow.log_metrics(res, step=it)  # autolog's record_eval_results
        if (it + 1) % 50 == 0:
            print(
                f"[{it + 1}]\ttrain's binary_logloss: {res['train-binary_logloss']:g}\t"
                f"train's auc: {res['train-auc']:g}\tvalid's binary_logloss: "
                f"{res['valid-binary_logloss']:g}\tvalid's auc: {res['valid-auc']:g}",
                flush=True,
            )
        v = res["valid-binary_logloss"]
        if v < best:
            best, best_it = v, it
        if args.stopping_rounds and it - best_it >= args.stopping_rounds:
            print(
                f"Early stopping, best iteration is:\n[{best_it + 1}]\tvalid's binary_logloss: "
                f"{best:g}",
                flush=True,
            )
            break
    if args.stopping_rounds:
        mlflow.log_metrics({"stopped_iteration": it + 1, "best_iteration": best_it + 1})
        mlflow.log_metrics(eval_results[best_it], step=len(eval_results))
    print(f"trained {len(eval_results)} rounds in {time.time() - t0:.1f} s", flush=True)
