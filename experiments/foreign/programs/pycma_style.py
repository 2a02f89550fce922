"""A small MLP's weights searched with pycma's ``CMAEvolutionStrategy`` ask/tell loop, the
``CMADataLogger`` ``fit`` columns mirrored to MLflow by the team's logger.

Plain numpy + the plain ``mlflow`` API (no pycma here).  What is imitated:

* ``cma.CMAEvolutionStrategy(x0, sigma0, {'popsize', 'seed', 'maxiter', 'CMA_diagonal'})``: the
  default population ``4 + 3 ln n``, log-weighted recombination of the best half, cumulative
  step-size adaptation (``cs``, ``damps``), rank-one and rank-mu covariance updates, the
  eigendecomposition of ``C`` every ``lazy_gap_evals`` iterations (here every iteration);
* ``es.ask()`` / ``es.tell(X, fit)`` with ``es.countiter`` counting iterations from 1 and
  ``es.countevals`` the evaluations;
* ``CMADataLogger``'s ``outcmaesfit.dat`` row, mirrored once an iteration at
  ``step = es.countiter``: ``evaluation`` (countevals), ``sigma``, ``axis ratio``
  (max/min sqrt eigenvalue of C), ``bestever``, ``best``, ``median``, ``worst`` objective
  values; the ``outcmaesstddev.dat`` extremes as ``min std`` and ``max std``;
* ``es.disp()`` lines (``Iterat #Fevals   function value  axis ratio  sigma  min&max std
  t[m:s]``) every ``verb_disp`` iterations;
* the team's own additions: ``val_logloss`` and ``val_accuracy`` of ``es.mean`` on a held-out
  split every ``val_every`` iterations, and ``evals_per_sec`` of the last iteration.

Objective: the mean log loss of a tanh MLP (30 inputs, ``hidden`` units, one logit) on
scikit-learn's breast-cancer set (standardised), with an L2 term ``l2``.  Written without
looking at the doctor.

Team options (the faults are real settings, data and code paths):

* ``--archive 1``: every evaluated solution appended to ``archive.csv``; before each ``ask`` the
  whole archive is read back to skip re-evaluating duplicates (pycma's ``es.archive`` done by
  hand);
* ``--checkpoint_every k``: ``pickle.dump`` of the strategy object every k iterations (the
  objective is stored on the object, a closure);
* ``--n_workers w``: evaluations farmed out to w worker threads through queues;
  ``--max_tasks_per_worker k``: each worker retires after k evaluations (as
  ``multiprocessing.Pool(maxtasksperchild=k)`` would, to bound a slow leak);
* ``--new_shard_iter k``: the hospital's second export (200 rows) joins the objective at
  iteration k; ``--new_shard_label_map inverted`` is the export's 0 = malignant coding read as
  scikit-learn's 0 = benign.
"""

import os
import pickle
import queue
import threading
import time

import _setup
import mlflow
import numpy as np
from sklearn.datasets import load_breast_cancer

args = _setup.parse_flags(
    {
        "--seed": 0,
        "--hidden": 4,
        "--sigma0": 0.3,
        "--popsize": 0,  # 0: pycma's default 4 + 3 ln n
        "--maxiter": 150,
        "--l2": 1e-2,
        "--val_frac": 0.2,
        "--val_every": 10,
        "--verb_disp": 50,
        "--archive": 0,
        "--checkpoint_every": 0,
        "--n_workers": 0,
        "--max_tasks_per_worker": 0,  # 0: workers never recycled
        "--new_shard_iter": 0,
        "--new_shard_label_map": "same",  # same | inverted
    }
)
rng = _setup.seeded(args.seed, torch=False)

# ----------------------------------------------------------------------------- data
X, y = load_breast_cancer(return_X_y=True)
drng = np.random.default_rng(7)
order = drng.permutation(len(y))
X = (X - X.mean(0)) / X.std(0)
shard_idx, order = order[:200], order[200:]  # held back: the second export
n_val = int(args.val_frac * len(order))
val_idx, tr_idx = order[:n_val], order[n_val:]
Xtr, ytr = X[tr_idx], y[tr_idx].astype(float)
Xv, yv = X[val_idx], y[val_idx].astype(float)
Xs = X[shard_idx] + drng.normal(0, 0.05, X[shard_idx].shape)
ys = y[shard_idx].astype(float)
if args.new_shard_label_map == "inverted":
    ys = 1.0 - ys

D_IN, H = X.shape[1], args.hidden
N = D_IN * H + H + H + 1


def forward(w, Xb):
    W1 = w[: D_IN * H].reshape(D_IN, H)
    b1 = w[D_IN * H : D_IN * H + H]
    w2 = w[D_IN * H + H : D_IN * H + 2 * H]
    return np.tanh(Xb @ W1 + b1) @ w2 + w[-1]


def logloss(w, Xb, yb):
    z = forward(w, Xb)
    return float(np.mean(np.logaddexp(0, z) - yb * z))


data = {"X": Xtr, "y": ytr}


def objective(w):
    return logloss(w, data["X"], data["y"]) + args.l2 * float(w @ w)


# ----------------------------------------------------------------------------- CMA-ES
class CMAEvolutionStrategy:
    def __init__(self, x0, sigma0, popsize, fun):
        n = len(x0)
        self.fun = lambda x: fun(x)  # as the team's wrapper stores it
        self.N, self.mean, self.sigma = n, x0.copy(), sigma0
        self.lam = popsize or 4 + int(3 * np.log(n))
        self.mu = self.lam // 2
        w = np.log(self.mu + 0.5) - np.log(np.arange(1, self.mu + 1))
        self.weights = w / w.sum()
        self.mueff = 1 / np.sum(self.weights**2)
        self.cc = (4 + self.mueff / n) / (n + 4 + 2 * self.mueff / n)
        self.cs = (self.mueff + 2) / (n + self.mueff + 5)
        self.c1 = 2 / ((n + 1.3) ** 2 + self.mueff)
        self.cmu = min(
            1 - self.c1, 2 * (self.mueff - 2 + 1 / self.mueff) / ((n + 2) ** 2 + self.mueff)
        )
        self.damps = 1 + 2 * max(0, np.sqrt((self.mueff - 1) / (n + 1)) - 1) + self.cs
        self.chiN = np.sqrt(n) * (1 - 1 / (4 * n) + 1 / (21 * n * n))
        self.pc, self.ps = np.zeros(n), np.zeros(n)
        self.B, self.D, self.C = np.eye(n), np.ones(n), np.eye(n)
        self.countiter, self.countevals = 0, 0
        self.bestever = np.inf

    def ask(self):
        self.Z = rng.standard_normal((self.lam, self.N))
        return self.mean + self.sigma * (self.Z * self.D) @ self.B.T

    def tell(self, Xs_, fit):
        n = self.N
        self.countiter += 1
        self.countevals += len(fit)
        idx = np.argsort(fit)
        old = self.mean
        Y = (Xs_[idx[: self.mu]] - old) / self.sigma
        self.mean = old + self.sigma * self.weights @ Y
        ymean = self.weights @ Y
        invsqrtC = (self.B / self.D) @ self.B.T
        self.ps = (1 - self.cs) * self.ps + np.sqrt(self.cs * (2 - self.cs) * self.mueff) * (
            invsqrtC @ ymean
        )
        hsig = np.linalg.norm(self.ps) / np.sqrt(
            1 - (1 - self.cs) ** (2 * self.countiter)
        ) / self.chiN < 1.4 + 2 / (n + 1)
        self.pc = (1 - self.cc) * self.pc + hsig * np.sqrt(
            self.cc * (2 - self.cc) * self.mueff
        ) * ymean
        self.C = (
            (1 - self.c1 - self.cmu) * self.C
            + self.c1 * (np.outer(self.pc, self.pc) + (1 - hsig) * self.cc * (2 - self.cc) * self.C)
            + self.cmu * (Y.T * self.weights) @ Y
        )
        self.sigma *= np.exp((self.cs / self.damps) * (np.linalg.norm(self.ps) / self.chiN - 1))
        self.C = np.triu(self.C) + np.triu(self.C, 1).T
        ev, self.B = np.linalg.eigh(self.C)
        self.D = np.sqrt(np.maximum(ev, 1e-20))
        self.bestever = min(self.bestever, float(fit[idx[0]]))


es = CMAEvolutionStrategy(rng.normal(0, 0.1, N), args.sigma0, args.popsize, objective)

# ----------------------------------------------------------------------------- evaluation
tasks, results = queue.Queue(), queue.Queue()


def worker():
    done = 0
    while True:
        i, x = tasks.get()
        results.put((i, es.fun(x)))
        done += 1
        if args.max_tasks_per_worker and done >= args.max_tasks_per_worker:
            # recycled to bound the evaluation code's memory growth; the pool was meant to
            # start a replacement (it never does)
            print(f"{threading.current_thread().name}: recycled after {done} tasks", flush=True)
            return


for _ in range(args.n_workers):
    threading.Thread(target=worker, daemon=True).start()


def evaluate(Xs_):
    if not args.n_workers:
        return np.array([es.fun(x) for x in Xs_])
    for i, x in enumerate(Xs_):
        tasks.put((i, x))
    out = np.empty(len(Xs_))
    for _ in range(len(Xs_)):
        i, f = results.get()
        out[i] = f
    return out


with mlflow.start_run():
    mlflow.log_params(vars(args))
    print(
        f"({es.lam // 2}_w,{es.lam})-aCMA-ES (mu_w={es.mueff:.1f},w_1={100 * es.weights[0]:.0f}%) in dimension {N} (seed={args.seed})",
        flush=True,
    )
    print("Iterat #Fevals   function value  axis ratio  sigma  min&max std  t[m:s]", flush=True)
    t0 = time.time()
    seen = set()
    for it in range(1, args.maxiter + 1):
        t_it = time.time()
        if args.new_shard_iter and it == args.new_shard_iter:
            data["X"] = np.concatenate([Xtr, Xs])
            data["y"] = np.concatenate([ytr, ys])
            print(f"iteration {it}: second export merged, {len(data['y'])} rows", flush=True)
        if args.archive and os.path.exists("archive.csv"):
            arch = np.loadtxt("archive.csv", delimiter=",", ndmin=2)
            seen = {tuple(r) for r in np.round(arch[:, 1:], 5)}
        cand = es.ask()
        if seen:
            cand = np.array([x for x in cand if tuple(np.round(x, 5)) not in seen] or cand)
        fit = evaluate(cand)
        if args.archive:
            with open("archive.csv", "a") as fh:
                for f, x in zip(fit, cand, strict=True):
                    fh.write(f"{f:.6f}," + ",".join(f"{v:.5f}" for v in x) + "\n")
        es.tell(cand, fit)
        dt = time.time() - t_it
        stds = es.sigma * np.sqrt(np.diag(es.C))
        srt = np.sort(fit)
        row = {
            "evaluation": es.countevals,
            "sigma": es.sigma,
            "axis ratio": float(es.D.max() / es.D.min()),
            "bestever": es.bestever,
            "best": float(srt[0]),
            "median": float(np.median(srt)),
            "worst": float(srt[-1]),
            "min std": float(stds.min()),
            "max std": float(stds.max()),
            "evals_per_sec": len(fit) / max(dt, 1e-6),
        }
        if it % args.val_every == 0:
            row["val_logloss"] = logloss(es.mean, Xv, yv)
            row["val_accuracy"] = float(np.mean((forward(es.mean, Xv) > 0) == (yv > 0.5)))
        mlflow.log_metrics(row, step=es.countiter)
        if it % args.verb_disp == 0 or it == 1:
            el = time.time() - t0
            print(
                f"{it:6d} {es.countevals:7d} {srt[0]:.12e} {row['axis ratio']:.1e} {es.sigma:.2e}"
                f" {stds.min():.0e} {stds.max():.0e} {int(el // 60)}:{el % 60:05.2f}",
                flush=True,
            )
        if args.checkpoint_every and it % args.checkpoint_every == 0:
            with open("outcmaes.pkl", "wb") as fh:
                pickle.dump(es, fh)
    print(
        f"termination on maxiter={args.maxiter}; final/bestever f-value = {srt[0]:e} {es.bestever:e}",
        flush=True,
    )
