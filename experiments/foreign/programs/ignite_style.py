"""A digits classifier trained the way a PyTorch-Ignite script with an ``MLflowLogger`` logs.

Plain PyTorch + the plain ``mlflow`` API; the loop is Ignite's engine pattern written out (a
trainer engine, a ``train_evaluator`` and a ``validation_evaluator``), names as Ignite's
``ignite.handlers.mlflow_logger`` handlers compose them: tag and key joined by a space (MLflow's
handler, unlike the TensorBoard one, does not join them with a slash):

* ``OutputHandler(tag="training", output_transform=...)`` every ``--log_interval``
  iterations: ``training batch_loss`` (the loss of that one batch) and
  ``training grad_norm`` (the update function returns it), step = the trainer's iteration;
* ``OptimizerParamsHandler(optimizer)`` at the same events: ``lr group_0``;
* ``OutputHandler(tag=..., metric_names=["loss", "accuracy"])`` on both evaluators after
  every epoch: ``training loss``, ``training accuracy``, ``validation loss``,
  ``validation accuracy``, with ``global_step_from_engine(trainer, ...)``: the trainer's
  iteration by default, or its epoch (``--eval_global_step epoch``, what
  ``global_step_from_engine(trainer)`` gives when no event is named).

Params as an Ignite example logs them (``mlflow_logger.log_params``): seed, batch sizes, model,
optimiser, versions.  ``TerminateOnNan`` is attached as in Ignite's examples.  Written without
looking at the doctor.

The data are read shard by shard (8 shards, samples shuffled inside a shard).
``--misaligned_shard K``: shard K's label file is off by one row against its images (every
label belongs to the previous image).  ``--model`` picks the CNN of Ignite's MNIST example
(default) or an MLP; ``--clip_grad`` clips the gradient norm (0: no clipping).  A ``Checkpoint`` keeps the ``--n_saved`` best models by the validation metric named
``--checkpoint_score``, saved every ``--checkpoint_every`` epochs.
"""

import math
import os
import tempfile
import time

import _setup
import mlflow
import numpy as np
import torch
from sklearn.datasets import load_digits

args = _setup.parse_flags(
    {
        "--seed": 0,
        "--batch_size": 32,
        "--val_batch_size": 256,
        "--epochs": 10,
        "--lr": 0.03,
        "--momentum": 0.9,
        "--optimizer": "sgd",
        "--weight_decay": 0.0,
        "--lr_scheduler": "none",
        "--warmup_iters": 0,
        "--log_interval": 4,
        "--model": "cnn",
        "--hidden": 64,
        "--clip_grad": 0.0,
        "--train_size": 0,
        "--val_size": 360,
        "--eval_global_step": "iteration",
        "--misaligned_shard": -1,
        "--checkpoint_score": "accuracy",
        "--checkpoint_every": 1,
        "--n_saved": 2,
        "--terminate_on_nan": 1,
    }
)

rng = _setup.seeded(args.seed)
X, y = load_digits(return_X_y=True)
X = (X / 16.0).astype(np.float32)
idx = rng.permutation(len(X))
va, tr = idx[: args.val_size], idx[args.val_size :]
if args.train_size:
    tr = tr[: args.train_size]
Xtr, ytr, Xva, yva = X[tr], y[tr].copy(), X[va], y[va]

# the training set as it sits on disk: 8 shard files of images + labels, read in order
shards = np.array_split(np.arange(len(Xtr)), 8)
if args.misaligned_shard >= 0:
    s = shards[args.misaligned_shard]
    ytr[s] = np.roll(ytr[s], 1)  # the label file was written one row late


class CNN(torch.nn.Module):
    def __init__(self, hidden):
        super().__init__()
        self.conv1 = torch.nn.Conv2d(1, 16, 3, padding=1)
        self.conv2 = torch.nn.Conv2d(16, 32, 3, padding=1)
        self.fc1 = torch.nn.Linear(32 * 2 * 2, hidden)
        self.fc2 = torch.nn.Linear(hidden, 10)

    def forward(self, x):
        x = x.view(-1, 1, 8, 8)
        x = torch.nn.functional.max_pool2d(torch.relu(self.conv1(x)), 2)
        x = torch.nn.functional.max_pool2d(torch.relu(self.conv2(x)), 2)
        return self.fc2(torch.relu(self.fc1(x.flatten(1))))


class MLP(torch.nn.Module):
    def __init__(self, hidden):
        super().__init__()
        self.net = torch.nn.Sequential(
            torch.nn.Linear(64, hidden),
            torch.nn.ReLU(),
            torch.nn.Linear(hidden, hidden),
            torch.nn.ReLU(),
            torch.nn.Linear(hidden, 10),
        )

    def forward(self, x):
        return self.net(x)


model = {"cnn": CNN, "mlp": MLP}[args.model](args.hidden)
if args.optimizer == "adam":
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
else:
    optimizer = torch.optim.SGD(
        model.parameters(), lr=args.lr, momentum=args.momentum, weight_decay=args.weight_decay
    )
criterion = torch.nn.CrossEntropyLoss()
iters_per_epoch = sum(math.ceil(len(s) / args.batch_size) for s in shards)
max_iters = iters_per_epoch * args.epochs


def lr_at(it):  # ignite.handlers param schedulers, evaluated per iteration
    if it < args.warmup_iters:  # create_lr_scheduler_with_warmup, linear from 0
        return args.lr * (it + 1) / args.warmup_iters
    if args.lr_scheduler == "cosine":  # CosineAnnealingScheduler
        frac = (it - args.warmup_iters) / max(1, max_iters - args.warmup_iters)
        return args.lr * 0.5 * (1 + math.cos(math.pi * frac))
    if args.lr_scheduler == "step":  # LRScheduler(StepLR(step_size=3 epochs, gamma=0.5))
        return args.lr * 0.5 ** (it // (3 * iters_per_epoch))
    return args.lr


class State:
    iteration = 0
    epoch = 0


trainer = State()


def train_step(xb, yb):
    """The trainer's process function: its output is what the OutputHandler sees."""
    model.train()
    optimizer.zero_grad()
    loss = criterion(model(xb), yb)
    loss.backward()
    max_norm = args.clip_grad if args.clip_grad > 0 else float("inf")
    gn = torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
    optimizer.step()
    return {"batch_loss": loss.item(), "grad_norm": gn.item()}


def run_evaluator(Xe, ye):
    """create_supervised_evaluator with Loss(criterion) and Accuracy()."""
    model.eval()
    tot, correct = 0.0, 0
    with torch.no_grad():
        for b in range(0, len(Xe), args.val_batch_size):
            xb = torch.from_numpy(Xe[b : b + args.val_batch_size])
            yb = torch.from_numpy(ye[b : b + args.val_batch_size])
            out = model(xb)
            tot += criterion(out, yb).item() * len(yb)
            correct += (out.argmax(1) == yb).sum().item()
    return {"loss": tot / len(Xe), "accuracy": correct / len(Xe)}


def eval_step():
    """global_step_from_engine(trainer[, Events.ITERATION_COMPLETED])"""
    return trainer.epoch if args.eval_global_step == "epoch" else trainer.iteration


_ckpt_tmp = tempfile.TemporaryDirectory(prefix="ignite-ckpt-")  # a DiskSaver dirname
ckpt_dir = _ckpt_tmp.name
saved = []  # (score, path): Checkpoint(..., n_saved, score_function, score_name)


def checkpoint(val_metrics):
    score = val_metrics[args.checkpoint_score]  # Checkpoint.get_default_score_fn(name)
    path = os.path.join(
        ckpt_dir, f"best_model_{trainer.epoch}_{args.checkpoint_score}={score:.4f}.pt"
    )
    torch.save(model.state_dict(), path)
    saved.append((score, path))
    saved.sort(key=lambda t: -t[0])
    for _, old in saved[args.n_saved :]:
        os.remove(old)
    del saved[args.n_saved :]


with mlflow.start_run():
    mlflow.log_params(
        {
            "seed": args.seed,
            "batch_size": args.batch_size,
            "val_batch_size": args.val_batch_size,
            "epochs": args.epochs,
            "lr": args.lr,
            "momentum": args.momentum,
            "optimizer": type(optimizer).__name__,
            "weight_decay": args.weight_decay,
            "lr_scheduler": args.lr_scheduler,
            "warmup_iters": args.warmup_iters,
            "model": type(model).__name__,
            "hidden": args.hidden,
            "clip_grad": args.clip_grad,
            "train size": len(Xtr),
            "val size": len(Xva),
            "pytorch version": torch.__version__,
            "ignite version": "0.5.2",
        }
    )
    t_start = time.time()
    terminated = False
    for epoch in range(1, args.epochs + 1):
        trainer.epoch = epoch
        t0 = time.time()
        for s in shards:  # shard by shard, shuffled inside the shard
            order = s[rng.permutation(len(s))]
            for b in range(0, len(order), args.batch_size):
                bi = order[b : b + args.batch_size]
                for g in optimizer.param_groups:
                    g["lr"] = lr_at(trainer.iteration)
                out = train_step(torch.from_numpy(Xtr[bi]), torch.from_numpy(ytr[bi]))
                trainer.iteration += 1
                it = trainer.iteration
                if it % args.log_interval == 0:  # Events.ITERATION_COMPLETED(every=...)
                    mlflow.log_metrics({f"training {k}": v for k, v in out.items()}, step=it)
                    mlflow.log_metrics(
                        {f"lr group_{i}": g["lr"] for i, g in enumerate(optimizer.param_groups)},
                        step=it,
                    )
                if args.terminate_on_nan and not all(map(math.isfinite, out.values())):
                    print(f"TerminateOnNan: Output '{out}' contains NaN or Inf. Stop training")
                    terminated = True
                    break
            if terminated:
                break
        if terminated:
            break
        tr_m = run_evaluator(Xtr, ytr)
        va_m = run_evaluator(Xva, yva)
        mlflow.log_metrics({f"training {k}": v for k, v in tr_m.items()}, step=eval_step())
        mlflow.log_metrics({f"validation {k}": v for k, v in va_m.items()}, step=eval_step())
        print(
            f"Epoch[{epoch}] Iter[{trainer.iteration}] Training Results - Avg accuracy:"
            f" {tr_m['accuracy']:.3f} Avg loss: {tr_m['loss']:.4f} | Validation Results - Avg"
            f" accuracy: {va_m['accuracy']:.3f} Avg loss: {va_m['loss']:.4f}"
            f" ({time.time() - t0:.2f}s)",
            flush=True,
        )
        if epoch % args.checkpoint_every == 0:
            checkpoint(va_m)
    print(f"Engine run complete. Time taken: {time.time() - t_start:.2f}s; best: {saved[:1]}")
