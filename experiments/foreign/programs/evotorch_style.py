"""Neuroevolution as EvoTorch runs it: a ``PGPE`` searcher on a ``Problem`` (objective sense
``"min"``), its status written by ``evotorch.logging.MlflowLogger`` and printed by
``StdOutLogger``.

Plain PyTorch + numpy + the plain ``mlflow`` API (no EvoTorch here).  What is imitated:

* ``Problem("min", objective, solution_length=n, initial_bounds=(-0.1, 0.1))`` whose fitness is
  the mean squared error of a small tanh MLP (the solution vector holds its flattened weights)
  on a generated sensor-calibration regression set, evaluated for the whole population at once
  (a vectorized ``evaluate_batch``);
* ``PGPE(problem, popsize, center_learning_rate, stdev_learning_rate, stdev_init,
  optimizer="adam", ranking_method="centered", symmetric=True, stdev_max_change=0.2)``:
  antithetic sampling around the center, centered-rank fitness shaping, the center moved by
  Adam on the estimated gradient, the per-parameter stdev by its own rule;
* ``MlflowLogger(searcher)``: after every ``searcher.step()`` the scalar items of
  ``searcher.status`` logged with ``step = iter`` (iterations from 1): ``iter``,
  ``mean_eval``, ``median_eval``, ``pop_best_eval``, ``best_eval``, ``worst_eval``, and what the
  team's ``after_step_hook`` adds: ``center_val_mse`` (the center's error on held-out data,
  every ``val_every`` iterations) and ``stdev_mean``; ``StdOutLogger``'s printed
  ``iter : 10`` / ``mean_eval : ...`` blocks;
* EvoTorch's Ray actors (``num_actors``) replaced by the team's thread pool: the population is
  cut into ``num_actors`` pieces evaluated by worker threads that answer through a queue.

Team code paths given by flags: ``--checkpoint_every`` / ``--checkpoint_format`` (the center and
status saved with ``torch.save`` or written as JSON); ``--hof_after`` (a hall of fame kept by
the worker threads once that iteration is reached); ``--keep_history`` (every iteration's
population predictions and hidden activations kept for a diversity study).  Written without looking at the doctor.
"""

import json
import os
import queue
import threading
import time

import _setup
import mlflow
import numpy as np
import torch

args = _setup.parse_flags(
    {
        "--seed": 0,
        "--n_train": 2000,
        "--n_val": 500,
        "--hidden": 16,
        "--popsize": 60,
        "--center_learning_rate": 0.02,
        "--stdev_learning_rate": 0.1,
        "--stdev_init": 0.05,
        "--num_generations": 400,
        "--val_every": 10,
        "--num_actors": 1,
        "--checkpoint_every": 0,
        "--checkpoint_format": "pt",  # pt | json
        "--hof_after": 0,
        "--keep_history": 0,
    }
)
rng = _setup.seeded(args.seed)

# ----------------------------------------------------------------------------- data
drng = np.random.default_rng(7)  # the same sensors for every run
D = 6
W_true = drng.normal(0, 1, (D, 3))


def make(n, r):
    x = r.normal(0, 1, (n, D))
    h = np.tanh(x @ W_true)
    y = h[:, 0] - 0.5 * h[:, 1] * h[:, 2] + 0.3 * np.sin(2 * x[:, 0]) + r.normal(0, 0.05, n)
    return torch.tensor(x, dtype=torch.float32), torch.tensor(y, dtype=torch.float32)


Xtr, ytr = make(args.n_train, np.random.default_rng(11 + args.seed))
Xva, yva = make(args.n_val, np.random.default_rng(1011))
H = args.hidden
n_params = D * H + H + H + 1


def predict(sol, x, with_hidden=False):  # sol: (P, n_params) -> (P, n)
    p = sol.shape[0]
    i = 0
    w1 = sol[:, i : i + D * H].reshape(p, D, H)
    i += D * H
    b1 = sol[:, i : i + H]
    i += H
    w2 = sol[:, i : i + H]
    i += H
    b2 = sol[:, i]
    h = torch.tanh(torch.einsum("nd,pdh->pnh", x, w1) + b1[:, None, :])
    out = torch.einsum("pnh,ph->pn", h, w2) + b2[:, None]
    return (out, h) if with_hidden else out


history = []


def evaluate_piece(sol):
    if args.keep_history:  # predictions and hidden activations, for the diversity study
        pred, h = predict(sol, Xtr, with_hidden=True)
        history.append((pred.double().clone(), h.double().clone()))
    else:
        pred = predict(sol, Xtr)
    return ((pred - ytr) ** 2).mean(1)


# ------------------------------------------------------------- the team's actor pool
hof_lock = threading.Lock()
hall_of_fame = {"eval": float("inf"), "solution": None}
tasks, results = queue.Queue(), queue.Queue()
it_now = [0]


def save_best():
    with hof_lock:  # the same (non-reentrant) lock the caller already holds
        np.save("hof_best.npy", hall_of_fame["solution"])


def worker():
    while True:
        k, sol = tasks.get()
        ev = evaluate_piece(sol)
        if args.hof_after and it_now[0] >= args.hof_after:
            j = int(torch.argmin(ev))
            with hof_lock:
                if float(ev[j]) < hall_of_fame["eval"]:
                    hall_of_fame["eval"] = float(ev[j])
                    hall_of_fame["solution"] = sol[j].numpy().copy()
                    save_best()
        results.put((k, ev))


if args.num_actors > 1:
    for _ in range(args.num_actors):
        threading.Thread(target=worker, daemon=True).start()


def evaluate_batch(pop):
    if args.num_actors <= 1:
        return evaluate_piece(pop)
    pieces = torch.chunk(pop, args.num_actors)
    for k, piece in enumerate(pieces):
        tasks.put((k, piece))
    got = dict(results.get() for _ in pieces)
    return torch.cat([got[k] for k in range(len(pieces))])


# ----------------------------------------------------------------------------- PGPE
center = torch.tensor(rng.uniform(-0.1, 0.1, n_params), dtype=torch.float32)
stdev = torch.full((n_params,), args.stdev_init)
m = torch.zeros(n_params)
v = torch.zeros(n_params)
b1, b2, eps = 0.9, 0.999, 1e-8
best_eval = float("inf")
half = args.popsize // 2
gen = torch.Generator().manual_seed(args.seed)


def centered_ranks(f):
    r = torch.empty_like(f)
    r[torch.argsort(f)] = torch.arange(len(f), dtype=torch.float32)
    return r / (len(f) - 1) - 0.5


with mlflow.start_run():
    mlflow.log_params(vars(args))
    print(f"Problem(objective_sense='min', solution_length={n_params}) PGPE popsize={args.popsize}")
    start = time.time()
    for it in range(1, args.num_generations + 1):
        it_now[0] = it
        z = torch.randn(half, n_params, generator=gen) * stdev
        pop = torch.cat([center + z, center - z])
        evals = evaluate_batch(pop)
        # "min": lower is better, so the utility is the negated rank
        u = -centered_ranks(evals)
        up, um = u[:half], u[half:]
        grad_c = ((up - um)[:, None] * z).sum(0) / (2 * half)
        s2 = ((up + um)[:, None] * ((z**2 - stdev**2) / stdev)).sum(0) / (2 * half)
        m = b1 * m + (1 - b1) * grad_c
        v = b2 * v + (1 - b2) * grad_c**2
        mh, vh = m / (1 - b1**it), v / (1 - b2**it)
        center = center + args.center_learning_rate * mh / (vh.sqrt() + eps)
        new_stdev = stdev + args.stdev_learning_rate * s2
        stdev = torch.clamp(new_stdev, 0.8 * stdev, 1.2 * stdev)
        pop_best = float(evals.min())
        best_eval = min(best_eval, pop_best)
        status = {
            "iter": it,
            "mean_eval": float(evals.mean()),
            "median_eval": float(evals.median()),
            "pop_best_eval": pop_best,
            "best_eval": best_eval,
            "worst_eval": float(evals.max()),
            "stdev_mean": float(stdev.mean()),
        }
        if it % args.val_every == 0:  # after_step_hook
            with torch.no_grad():
                status["center_val_mse"] = float(
                    ((predict(center[None], Xva)[0] - yva) ** 2).mean()
                )
        mlflow.log_metrics(status, step=it)  # MlflowLogger
        if it % 10 == 0:  # StdOutLogger(interval=10)
            print("\n".join(f"{k:>16} : {v:g}" for k, v in status.items()), flush=True)
            print(flush=True)
        if args.checkpoint_every and it % args.checkpoint_every == 0:
            ckpt = {"iter": it, "center": center, "stdev": stdev, "status": status}
            if args.checkpoint_format == "json":
                with open(f"pgpe_{it}.json", "w") as f:
                    json.dump(ckpt, f)
            else:
                torch.save(ckpt, f"pgpe_{it}.pt")
    print(f"done in {time.time() - start:.1f} s; best_eval {best_eval:g}", flush=True)
    if os.path.exists("hof_best.npy"):
        print("hall of fame saved", flush=True)
