"""A digit classifier trained by Catalyst's ``SupervisedRunner.train`` (an MLP over 8x8 digit
images) with ``loggers={"mlflow": MLflowLogger(..., log_batch_metrics=True)}``.

Plain torch + the plain ``mlflow`` API (no catalyst here).  The data are scikit-learn's bundled
digits (1797 images): ``--valid_size`` images for the ``valid`` loader, the rest cut into
``--num_shards`` shard files that the ``train`` loader streams in a fixed order, shuffling
within a shard (a sharded, WebDataset-like reader).  The runner's arguments are logged as
params.

As Catalyst's MLflowLogger writes them: every batch of every loader (``log_batch_metrics``)
``{metric}/{loader_key}/batch`` with step = ``runner.batch_step``, the global batch counter,
which counts train AND valid batches (so the train batches' steps have a gap where each
epoch's valid batches went): ``loss``, ``accuracy01``, ``accuracy03``, ``lr``, ``momentum``
and the TimerCallback's ``_timer/_fps`` (samples per second of the batch), ``_timer/batch_time``,
``_timer/data_time``, ``_timer/model_time``; after every epoch ``{metric}/{loader_key}/epoch``
with step = ``runner.epoch_step`` (from 1): ``loss`` (the loader's mean), ``loss/std``,
``accuracy01``, ``accuracy03``, ``accuracy01/std`` and, for ``train``, ``lr`` and
``momentum``.  The console shows Catalyst's ``train (e/E) loss: ... | accuracy01: ...`` lines.
Written without looking at the doctor.

Faults are real settings: a learning rate far too high; one shard whose labels were written
one class off (``--corrupt_shard``); from some epoch on the reader re-parses the shard's text
dump for every single sample (``--text_reader_from_epoch``); a OneCycleLR whose total steps are
computed as ``len(dataset) // batch_size`` per epoch while the loader keeps the last partial
batch (``--steps_per_epoch_floor 1``: the scheduler runs out of steps); a wide MLP on a few dozen
training images (``--train_limit``).
"""

import gzip
import os
import tempfile
import time

import _setup
import mlflow
import numpy as np
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits

args = _setup.parse_flags(
    {
        "--seed": 42,
        "--num_epochs": 12,
        "--batch_size": 32,
        "--valid_size": 400,
        "--num_shards": 8,
        "--optimizer": "Adam",
        "--lr": 0.001,
        "--momentum": 0.9,
        "--weight_decay": 0.0,
        "--scheduler": "none",
        "--steps_per_epoch_floor": 0,
        "--hidden": 128,
        "--dropout": 0.1,
        "--train_limit": 0,
        "--corrupt_shard": -1,
        "--text_reader_from_epoch": 0,
    }
)
rng = _setup.seeded(args.seed)

# ---------------------------------------------------------------- data
X, y = load_digits(return_X_y=True)
X = (X / 16.0).astype(np.float32)
perm = np.random.default_rng(0).permutation(len(X))  # a fixed split; --seed moves training
X, y = X[perm], y[perm]
Xva, yva = torch.from_numpy(X[: args.valid_size]), torch.from_numpy(y[: args.valid_size])
Xtr, ytr = X[args.valid_size :], y[args.valid_size :]
if args.train_limit:
    Xtr, ytr = Xtr[: args.train_limit], ytr[: args.train_limit]
shard_dir = tempfile.mkdtemp(prefix="catalyst-shards-")
shards = []
for i, idx in enumerate(np.array_split(np.arange(len(Xtr)), args.num_shards)):
    xs, ys = Xtr[idx], ytr[idx].copy()
    if i == args.corrupt_shard:
        ys = (ys + 1) % 10  # the shard was written with every label one class off
    shards.append((xs, ys))
    with gzip.open(os.path.join(shard_dir, f"shard-{i:05d}.txt.gz"), "wt") as f:
        np.savetxt(f, np.column_stack([xs, ys]), fmt="%.6f")


def read_sample_text(i, j):
    """The slow path: re-open and parse the shard's gzip'd text dump for one sample."""
    with gzip.open(os.path.join(shard_dir, f"shard-{i:05d}.txt.gz"), "rt") as f:
        rows = np.loadtxt(f, dtype=np.float32)
    return rows[j, :-1], int(rows[j, -1])


def train_batches(epoch):
    slow = args.text_reader_from_epoch and epoch >= args.text_reader_from_epoch
    buf_x, buf_y = [], []
    for i, (xs, ys) in enumerate(shards):
        for j in rng.permutation(len(xs)):
            if slow:
                xj, yj = read_sample_text(i, j)
            else:
                xj, yj = xs[j], int(ys[j])
            buf_x.append(xj)
            buf_y.append(yj)
            if len(buf_x) == args.batch_size:
                yield torch.from_numpy(np.stack(buf_x)), torch.tensor(buf_y)
                buf_x, buf_y = [], []
    if buf_x:  # the loader keeps the last, partial batch (drop_last=False)
        yield torch.from_numpy(np.stack(buf_x)), torch.tensor(buf_y)


def valid_batches():
    for s in range(0, len(Xva), args.batch_size):
        yield Xva[s : s + args.batch_size], yva[s : s + args.batch_size]


# ---------------------------------------------------------------- model
model = torch.nn.Sequential(
    torch.nn.Linear(64, args.hidden),
    torch.nn.ReLU(),
    torch.nn.Dropout(args.dropout),
    torch.nn.Linear(args.hidden, args.hidden),
    torch.nn.ReLU(),
    torch.nn.Dropout(args.dropout),
    torch.nn.Linear(args.hidden, 10),
)
if args.optimizer == "SGD":
    opt = torch.optim.SGD(
        model.parameters(), lr=args.lr, momentum=args.momentum, weight_decay=args.weight_decay
    )
else:
    opt = torch.optim.Adam(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
n_train = len(Xtr)
if args.steps_per_epoch_floor:
    steps_per_epoch = n_train // args.batch_size  # forgets the last partial batch
else:
    steps_per_epoch = -(-n_train // args.batch_size)
sched = None
if args.scheduler == "OneCycleLR":
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=args.lr, epochs=args.num_epochs, steps_per_epoch=steps_per_epoch
    )
elif args.scheduler == "MultiStepLR":
    sched = torch.optim.lr_scheduler.MultiStepLR(
        opt, milestones=[args.num_epochs // 2, 3 * args.num_epochs // 4], gamma=0.3
    )
elif args.scheduler == "CosineAnnealingLR":
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=args.num_epochs)
per_batch_sched = args.scheduler == "OneCycleLR"


def mom():
    g = opt.param_groups[0]
    return g["betas"][0] if "betas" in g else g.get("momentum", 0.0)


def accuracy(logits, yb, k):
    top = logits.topk(k, dim=1).indices
    return (top == yb[:, None]).any(1).float().mean().item()


with mlflow.start_run():
    mlflow.log_params(
        {k: v for k, v in vars(args).items()} | {"model": "MLP", "loaders": "train,valid"}
    )
    batch_step = 0
    t_run = time.time()
    for epoch in range(1, args.num_epochs + 1):
        epoch_metrics = {}
        for loader_key in ("train", "valid"):
            is_train = loader_key == "train"
            model.train(is_train)
            losses, acc1, acc3, sizes = [], [], [], []
            it = train_batches(epoch) if is_train else valid_batches()
            t_data = time.perf_counter()
            for xb, yb in it:
                t_model = time.perf_counter()
                data_time = t_model - t_data
                with torch.set_grad_enabled(is_train):
                    logits = model(xb)
                    loss = F.cross_entropy(logits, yb)
                    if is_train:
                        opt.zero_grad()
                        loss.backward()
                        opt.step()
                        if per_batch_sched:
                            sched.step()
                t_end = time.perf_counter()
                batch_step += 1
                a1, a3 = accuracy(logits, yb, 1), accuracy(logits, yb, 3)
                losses.append(loss.item())
                acc1.append(a1)
                acc3.append(a3)
                sizes.append(len(yb))
                bm = {
                    "loss": loss.item(),
                    "accuracy01": a1,
                    "accuracy03": a3,
                    "lr": opt.param_groups[0]["lr"],
                    "momentum": mom(),
                    "_timer/_fps": len(yb) / (t_end - t_data),
                    "_timer/batch_time": t_end - t_data,
                    "_timer/data_time": data_time,
                    "_timer/model_time": t_end - t_model,
                }
                mlflow.log_metrics(
                    {f"{k}/{loader_key}/batch": v for k, v in bm.items()},
                    step=batch_step,
                    synchronous=False,
                )
                t_data = time.perf_counter()
            w = np.array(sizes, dtype=float)
            m = {
                "loss": float(np.average(losses, weights=w)),
                "loss/std": float(np.std(losses)),
                "accuracy01": float(np.average(acc1, weights=w)),
                "accuracy03": float(np.average(acc3, weights=w)),
                "accuracy01/std": float(np.std(acc1)),
            }
            if is_train:
                m |= {"lr": opt.param_groups[0]["lr"], "momentum": mom()}
            epoch_metrics[loader_key] = m
        if sched is not None and not per_batch_sched:
            sched.step()
        for loader_key, m in epoch_metrics.items():
            mlflow.log_metrics(
                {f"{k}/{loader_key}/epoch": v for k, v in m.items()}, step=epoch, synchronous=False
            )
            print(
                f"{loader_key} ({epoch}/{args.num_epochs}) "
                + " | ".join(f"{k}: {v:.6g}" for k, v in m.items()),
                flush=True,
            )
        print(f"* Epoch ({epoch}/{args.num_epochs}) done, {time.time() - t_run:.1f}s", flush=True)
    print("Top best models:", flush=True)
