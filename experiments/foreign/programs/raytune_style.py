"""A regressor trained as a Ray Tune function trainable on a stream of daily data shards,
logged the way Ray's ``MLflowLoggerCallback`` (``ray.air.integrations.mlflow``) logs a trial.

Plain PyTorch + the plain ``mlflow`` API.  One trial, one run.  The trial's config is logged
as params (``log_trial_start``).  Every ``train.report(...)`` is one result: the user's keys
(``loss``, ``val_loss``, ``val_mae``, ``lr``) plus the keys Tune adds to every result
(``training_iteration``, ``time_this_iter_s``, ``time_total_s``, ``time_since_restore``,
``iterations_since_restore``, ``timestamp``, ``pid``, ``done``), of which the callback keeps the
numeric ones and logs them with ``step=training_iteration`` (from 1).  Written without
looking at the doctor.

The trainable trains continually: iteration i makes one pass over day i's shard (a CSV file
written at start-up from a generated Friedman-style housing price), then validates on a fixed
hold-out.  Faults are real paths:
``--storage.cold_from K`` – days K on sit in a cold tier: gzip CSV that the streaming reader
re-opens and re-parses for every batch;
``--precision fp16`` – the model and the MSE run in float16 (no loss scaling);
``--normalize_target 0`` – the price is fed in dollars/1000 instead of standardised.
"""

import gzip
import io
import os
import socket
import tempfile
import time

import _setup
import mlflow
import numpy as np
import torch
from sklearn.datasets import make_friedman1

args = _setup.parse_flags(
    {
        "--seed": 0,
        "--lr": 3e-3,
        "--batch_size": 64,
        "--hidden": 128,
        "--num_layers": 2,
        "--num_days": 40,
        "--rows_per_day": 2048,
        "--val_rows": 1000,
        "--lr_schedule": "constant",
        "--warmup_iters": 0,
        "--weight_decay": 0.0,
        "--normalize_target": 1,
        "--precision": "fp32",
        "--storage.cold_from": -1,
    }
)
config = dict(vars(args))

rng = _setup.seeded(args.seed)
n_total = args.num_days * args.rows_per_day + args.val_rows
X, y = make_friedman1(n_total, n_features=10, noise=1.0, random_state=args.seed)
y = 20.0 * y  # a price in dollars / 1000
X = X.astype(np.float32)
Xva, yva = X[: args.val_rows], y[: args.val_rows]
mu, sd = float(y.mean()), float(y.std())

tmp = tempfile.TemporaryDirectory(prefix="tune_days_")
day_files = []
for d in range(args.num_days):
    lo = args.val_rows + d * args.rows_per_day
    block = np.column_stack([X[lo : lo + args.rows_per_day], y[lo : lo + args.rows_per_day]])
    cold = 0 <= config["storage.cold_from"] <= d
    path = os.path.join(tmp.name, f"day={d:03d}.csv" + (".gz" if cold else ""))
    with gzip.open(path, "wt") if cold else open(path, "w") as f:
        np.savetxt(f, block, fmt="%.6f", delimiter=",")
    day_files.append(path)


def read_day(d):
    """The hot tier is read once per pass; the cold tier is streamed per batch."""
    path = day_files[d]
    if not path.endswith(".gz"):
        block = np.loadtxt(path, delimiter=",", dtype=np.float32)
        order = rng.permutation(len(block))
        for b in range(0, len(block), args.batch_size):
            yield block[order[b : b + args.batch_size]]
        return
    n = args.rows_per_day
    order = rng.permutation(n)
    for b in range(0, n, args.batch_size):
        with gzip.open(path, "rt") as f:  # a fresh range request and decode per batch
            block = np.loadtxt(io.StringIO(f.read()), delimiter=",", dtype=np.float32)
        yield block[order[b : b + args.batch_size]]


dtype = torch.float16 if args.precision == "fp16" else torch.float32
layers, width = [], 10
for _ in range(args.num_layers):
    layers += [torch.nn.Linear(width, args.hidden), torch.nn.ReLU()]
    width = args.hidden
model = torch.nn.Sequential(*layers, torch.nn.Linear(width, 1)).to(dtype)
optimizer = torch.optim.Adam(
    model.parameters(),
    lr=args.lr,
    weight_decay=args.weight_decay,
    eps=1e-4 if dtype == torch.float16 else 1e-8,
)


def lr_at(it):
    warm = min(1.0, (it + 1) / args.warmup_iters) if args.warmup_iters else 1.0
    if args.lr_schedule == "cosine":
        return args.lr * warm * 0.5 * (1 + np.cos(np.pi * it / args.num_days))
    return args.lr * warm


def target(t):
    return (t - mu) / sd if args.normalize_target else t


def to_price(p):
    return p * sd + mu if args.normalize_target else p


with mlflow.start_run():
    mlflow.log_params(config)
    pid, host = os.getpid(), socket.gethostname()
    print(f"Trial train_fn_00000 started with config {config}", flush=True)
    t_start = time.time()
    xv = torch.from_numpy(Xva).to(dtype)
    for it in range(args.num_days):
        t0 = time.time()
        for g in optimizer.param_groups:
            g["lr"] = lr_at(it)
        model.train()
        tl, n = 0.0, 0
        for block in read_day(it):
            xb = torch.from_numpy(block[:, :10]).to(dtype)
            yb = torch.from_numpy(target(block[:, 10:])).to(dtype)
            loss = torch.nn.functional.mse_loss(model(xb), yb)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            tl, n = tl + loss.item() * len(block), n + len(block)
        model.eval()
        with torch.no_grad():
            pred = model(xv).float().numpy()[:, 0]
        val_loss = float(np.mean((pred - target(yva)) ** 2))
        val_mae = float(np.mean(np.abs(to_price(pred) - yva)))
        now = time.time()
        result = {
            "loss": tl / n,
            "val_loss": val_loss,
            "val_mae": val_mae,
            "lr": optimizer.param_groups[0]["lr"],
            "timestamp": int(now),
            "checkpoint_dir_name": None,
            "done": False,
            "training_iteration": it + 1,
            "trial_id": "5f3a1_00000",
            "date": time.strftime("%Y-%m-%d_%H-%M-%S"),
            "time_this_iter_s": now - t0,
            "time_total_s": now - t_start,
            "pid": pid,
            "hostname": host,
            "node_ip": "127.0.0.1",
            "time_since_restore": now - t_start,
            "iterations_since_restore": it + 1,
        }
        metrics = {}
        for k, v in result.items():  # MLflowLoggerCallback: only what float() accepts
            try:
                metrics[k] = float(v)
            except (TypeError, ValueError):
                continue
        mlflow.log_metrics(metrics, step=result["training_iteration"])
        print(
            f"iter {it + 1:>3}  loss {result['loss']:.4f}  val_loss {val_loss:.4f}  "
            f"val_mae {val_mae:.2f}  {result['time_this_iter_s']:.3f}s",
            flush=True,
        )
    print(f"Trial train_fn_00000 completed after {args.num_days} iterations.", flush=True)
tmp.cleanup()
