"""A churn classifier boosted as CatBoost's ``CatBoostClassifier.fit(eval_set=...)`` boosts one,
each iteration's metrics sent to MLflow by the team's ``after_iteration`` callback.

Plain numpy + the plain ``mlflow`` API (no CatBoost here).  What is imitated:

* symmetric (oblivious) trees of ``depth`` levels, one split (feature, border) per level for
  all the level's leaves, chosen by the L2 gain of the Newton leaf values with
  ``random_strength`` noise on the scores; features quantised to ``border_count`` borders;
  Bayesian bootstrap weights (``bagging_temperature``); leaf values one Newton step,
  ``-sum(g) / (sum(h) + l2_leaf_reg)`` times ``learning_rate``; ``Logloss`` objective;
* categorical features as ordered target statistics: each training row's CTR uses only the rows
  before it in a random permutation, ``(count_in_class + prior) / (total + 1)``; evaluation rows
  use the whole training set;
* the team's callback ``after_iteration(info)`` logs ``info.metrics`` (the
  ``get_evals_result()`` layout, ``{'learn': {'Logloss': ...}, 'validation': {'Logloss': ...,
  'AUC': ..., 'Accuracy': ...}}``) as ``learn/Logloss``, ``validation/Logloss``,
  ``validation/AUC``, ``validation/Accuracy`` at ``step = info.iteration`` (from 0), every
  ``metric_period`` iterations, with ``passed_time`` and ``remaining_time`` (seconds, as
  ``catboost_info/time_left.tsv``); learn metrics on the training rows with their bootstrap-free
  predictions; at the end ``best_iteration`` and ``best_score`` once;
* ``od_type='Iter'`` with ``od_wait`` (0 = off) and ``use_best_model``, the overfitting
  detector on validation Logloss; the verbose line ``0:	learn: 0.68	test: 0.68	best: ...``.

Data: a generated customer table: 8 numeric columns (tenure, charges, ...) and 2 categorical
ones (region, plan), churn from a nonlinear score plus noise; ``train_rows`` and ``eval_rows``;
``sample_weight`` from the team's ``weighting`` (``none``, ``tenure``: 1 / months of tenure,
newer customers weigh more).  Written without looking at the doctor.

Faults are real settings and data: ``--learning_rate``; ``--depth`` deep with few
``--train_rows``, no ``l2_leaf_reg`` and the detector off; ``--weighting tenure`` on an export
whose newest customers have a tenure of 0 months (their first month not yet complete).
"""

import time

import _setup
import mlflow
import numpy as np

args = _setup.parse_flags(
    {
        "--seed": 0,
        "--iterations": 400,
        "--learning_rate": 0.05,
        "--depth": 6,
        "--l2_leaf_reg": 3.0,
        "--border_count": 32,
        "--random_strength": 1.0,
        "--bagging_temperature": 1.0,
        "--train_rows": 6000,
        "--eval_rows": 2000,
        "--metric_period": 1,
        "--od_wait": 60,
        "--use_best_model": 1,
        "--weighting": "none",
        "--fresh_customers": 0,
    }
)
rng = _setup.seeded(args.seed, torch=False)

# ----------------------------------------------------------------------------- the export
N = args.train_rows + args.eval_rows
tenure = rng.integers(1, 72, N).astype(float)
if args.fresh_customers:  # the newest sign-ups: first month not complete yet
    tenure[rng.permutation(N)[: args.fresh_customers]] = 0
charges = rng.uniform(18, 120, N)
num = np.stack(
    [
        tenure,
        charges,
        tenure * charges / 72 + rng.normal(0, 20, N),
        rng.poisson(2, N).astype(float),  # support calls
        rng.uniform(0, 1, N),  # usage share
        rng.normal(0, 1, N),
        rng.normal(0, 1, N),
        rng.integers(0, 2, N).astype(float),  # paperless billing
    ],
    1,
)
region = rng.integers(0, 25, N)
plan = rng.integers(0, 4, N)
region_eff = rng.normal(0, 0.8, 25)
plan_eff = np.array([0.9, 0.1, -0.6, -1.0])
score = (
    -1.0
    - 0.04 * (tenure - 30)
    + 0.015 * (charges - 60)
    + 0.45 * num[:, 3]
    - 1.2 * (num[:, 4] - 0.5) ** 2 * 4
    + 0.6 * np.sin(2 * num[:, 5])
    + 0.5 * num[:, 5] * num[:, 6]
    + region_eff[region]
    + plan_eff[plan]
)
y = (rng.uniform(0, 1, N) < 1 / (1 + np.exp(-score))).astype(float)
cat = np.stack([region, plan], 1)
tr, ev = slice(0, args.train_rows), slice(args.train_rows, N)
if args.weighting == "tenure":  # newer customers weigh more
    w_train = 1.0 / tenure[tr]
else:
    w_train = np.ones(args.train_rows)
print(
    f"train rows: {args.train_rows}, eval rows: {args.eval_rows}, churn rate {y.mean():.3f}",
    flush=True,
)


# ----------------------------------------------------------------------------- CTRs, borders
def ctr_features(cat_tr, y_tr, cat_ev, prior=0.5):
    perm = rng.permutation(len(cat_tr))
    f_tr = np.zeros(cat_tr.shape)
    f_ev = np.zeros(cat_ev.shape)
    for j in range(cat_tr.shape[1]):
        k = cat_tr[:, j].max() + 1
        cnt, pos = np.zeros(k), np.zeros(k)
        for i in perm:  # ordered target statistics
            c = cat_tr[i, j]
            f_tr[i, j] = (pos[c] + prior) / (cnt[c] + 1)
            cnt[c] += 1
            pos[c] += y_tr[i]
        f_ev[:, j] = (pos[cat_ev[:, j]] + prior) / (cnt[cat_ev[:, j]] + 1)
    return f_tr, f_ev


c_tr, c_ev = ctr_features(cat[tr], y[tr], cat[ev])
X_tr = np.concatenate([num[tr], c_tr], 1)
X_ev = np.concatenate([num[ev], c_ev], 1)
F = X_tr.shape[1]
borders = [
    np.unique(np.quantile(X_tr[:, f], np.linspace(0, 1, args.border_count + 2)[1:-1]))
    for f in range(F)
]
B = max(len(b) for b in borders) + 1
Q_tr = np.stack([np.searchsorted(borders[f], X_tr[:, f], side="right") for f in range(F)], 1)
Q_ev = np.stack([np.searchsorted(borders[f], X_ev[:, f], side="right") for f in range(F)], 1)
y_tr, y_ev = y[tr], y[ev]


# ----------------------------------------------------------------------------- boosting
def sigmoid(z):
    return 1 / (1 + np.exp(-np.clip(z, -35, 35)))


def logloss(z, t, w=None):
    p = np.clip(sigmoid(z), 1e-15, 1 - 1e-15)
    ll = -(t * np.log(p) + (1 - t) * np.log(1 - p))
    return float(np.average(ll, weights=w))


def auc(z, t):
    order = np.argsort(z)
    ranks = np.empty(len(z))
    ranks[order] = np.arange(1, len(z) + 1)
    n1 = t.sum()
    return float((ranks[t == 1].sum() - n1 * (n1 + 1) / 2) / (n1 * (len(t) - n1)))


def fit_tree(g, h):
    """One oblivious tree: per level the (feature, border) with the best summed gain."""
    leaf = np.zeros(len(g), dtype=np.int64)
    splits = []
    for level in range(args.depth):
        n_leaf = 2**level
        idx = (leaf[:, None] * F + np.arange(F)[None, :]) * B + Q_tr
        G = np.bincount(idx.ravel(), np.repeat(g, F), n_leaf * F * B).reshape(n_leaf, F, B)
        H = np.bincount(idx.ravel(), np.repeat(h, F), n_leaf * F * B).reshape(n_leaf, F, B)
        GL, HL = np.cumsum(G, 2)[:, :, :-1], np.cumsum(H, 2)[:, :, :-1]
        GT, HT = G.sum(2, keepdims=True), H.sum(2, keepdims=True)
        GR, HR = GT - GL, HT - HL
        lam = args.l2_leaf_reg + 1e-12
        gain = (GL**2 / (HL + lam) + GR**2 / (HR + lam)).sum(0)  # (F, B-1)
        gain = gain + rng.normal(
            0, args.random_strength * gain.std() / (level + 1) + 1e-12, gain.shape
        )
        f, b = np.unravel_index(np.argmax(gain), gain.shape)
        splits.append((int(f), int(b)))
        leaf = leaf * 2 + (Q_tr[:, f] > b)
    Gl = np.bincount(leaf, g, 2**args.depth)
    Hl = np.bincount(leaf, h, 2**args.depth)
    values = -Gl / (Hl + args.l2_leaf_reg) * args.learning_rate
    return splits, values, leaf


def apply_tree(splits, values, Q):
    leaf = np.zeros(len(Q), dtype=np.int64)
    for f, b in splits:
        leaf = leaf * 2 + (Q[:, f] > b)
    return values[leaf]


with mlflow.start_run():
    mlflow.log_params(vars(args))
    z_tr, z_ev = np.zeros(len(y_tr)), np.zeros(len(y_ev))
    best, best_it, t0 = np.inf, 0, time.time()
    for it in range(args.iterations):
        p = sigmoid(z_tr)
        bw = (-np.log(rng.uniform(size=len(p)))) ** args.bagging_temperature  # Bayesian bootstrap
        g, h = (p - y_tr) * w_train * bw, p * (1 - p) * w_train * bw
        splits, values, leaf = fit_tree(g, h)
        z_tr = z_tr + values[leaf]
        z_ev = z_ev + apply_tree(splits, values, Q_ev)
        learn_ll = logloss(z_tr, y_tr, w_train)
        val_ll = logloss(z_ev, y_ev)
        if val_ll < best:
            best, best_it = val_ll, it
        passed = time.time() - t0
        if it % args.metric_period == 0 or it == args.iterations - 1:
            mlflow.log_metrics(
                {
                    "learn/Logloss": learn_ll,
                    "validation/Logloss": val_ll,
                    "validation/AUC": auc(z_ev, y_ev),
                    "validation/Accuracy": float(((z_ev > 0) == (y_ev == 1)).mean()),
                    "passed_time": passed,
                    "remaining_time": passed / (it + 1) * (args.iterations - it - 1),
                },
                step=it,
            )
        if it % 20 == 0 or it == args.iterations - 1:
            print(
                f"{it}:\tlearn: {learn_ll:.7f}\ttest: {val_ll:.7f}\tbest: {best:.7f} ({best_it})"
                f"\ttotal: {passed:.2f}s\tremaining: {passed / (it + 1) * (args.iterations - it - 1):.2f}s",
                flush=True,
            )
        if args.od_wait and it - best_it >= args.od_wait:
            print(f"Stopped by overfitting detector  ({args.od_wait} iterations wait)", flush=True)
            break
    print(f"\nbestTest = {best:.7f}\nbestIteration = {best_it}\n", flush=True)
    if args.use_best_model:
        print(f"Shrink model to first {best_it + 1} iterations.", flush=True)
    mlflow.log_metrics({"best_iteration": best_it, "best_score": best}, step=it)
