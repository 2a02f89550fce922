"""A digits classifier trained the way a Hugging Face ``Trainer`` run looks in MLflow.

Plain PyTorch + the plain ``mlflow`` API, metric names as HF's MLflow callback writes them:
per logging step ``loss``, ``learning_rate``, ``grad_norm``, ``epoch``; per evaluation
``eval_loss``, ``eval_accuracy``, ``eval_runtime``, ``eval_samples_per_second``; at the end
``train_runtime``, ``train_samples_per_second``, ``train_loss``.  Params are the
``TrainingArguments`` names.  Written without looking at the doctor.

Settings come as ``--key value`` flags (TrainingArguments style).  ``--corrupt_shard K``
reads the data in fixed shards without shuffling, one of which has its labels written one
class off (a preprocessing bug in one shard file).  ``--tta_copies N`` evaluates with N
augmented copies of the whole eval set at once (a memory-hungry evaluation).
"""

import math
import time

import _setup
import mlflow
import numpy as np
import torch
from sklearn.datasets import load_digits

args = _setup.parse_flags(
    {
        "--learning_rate": 1e-3,
        "--max_grad_norm": 1.0,
        "--warmup_ratio": 0.0,
        "--lr_scheduler_type": "linear",
        "--num_train_epochs": 4,
        "--per_device_train_batch_size": 32,
        "--logging_steps": 4,
        "--eval_steps": 25,
        "--weight_decay": 0.0,
        "--seed": 42,
        "--corrupt_shard": -1,
        "--tta_copies": 1,
    }
)

rng = _setup.seeded(args.seed)

X, y = load_digits(return_X_y=True)
X = (X / 16.0).astype(np.float32)
idx = rng.permutation(len(X))
n_eval = 300
ev, tr = idx[:n_eval], idx[n_eval:]
Xtr, ytr, Xev, yev = X[tr], y[tr].copy(), X[ev], y[ev]

shards = np.array_split(np.arange(len(Xtr)), 6)
if args.corrupt_shard >= 0:
    bad = shards[args.corrupt_shard]
    ytr[bad] = (ytr[bad] + 1) % 10

model = torch.nn.Sequential(
    torch.nn.Linear(64, 128),
    torch.nn.GELU(),
    torch.nn.Linear(128, 64),
    torch.nn.GELU(),
    torch.nn.Linear(64, 10),
)
opt = torch.optim.AdamW(model.parameters(), lr=args.learning_rate, weight_decay=args.weight_decay)
bs = args.per_device_train_batch_size
steps_per_epoch = math.ceil(len(Xtr) / bs)
total = steps_per_epoch * args.num_train_epochs
warmup = int(args.warmup_ratio * total)


def lr_at(step):
    if step < warmup:
        return args.learning_rate * (step + 1) / warmup
    frac = (step - warmup) / max(1, total - warmup)
    if args.lr_scheduler_type == "cosine":
        return args.learning_rate * 0.5 * (1 + math.cos(math.pi * frac))
    if args.lr_scheduler_type == "constant":
        return args.learning_rate
    return args.learning_rate * (1 - frac)


def evaluate():
    t0 = time.time()
    xe = torch.from_numpy(Xev)
    if args.tta_copies > 1:
        # test-time augmentation: every copy of the eval set with its own pixel noise
        xe = xe.unsqueeze(0).expand(args.tta_copies, -1, -1)
        xe = xe + 0.05 * torch.randn(args.tta_copies, len(Xev), 64)
        xe = xe.reshape(-1, 64)
    with torch.no_grad():
        logits = model(xe).reshape(args.tta_copies, len(Xev), 10).mean(0)
        loss = torch.nn.functional.cross_entropy(logits, torch.from_numpy(yev)).item()
        acc = (logits.argmax(1).numpy() == yev).mean()
    dt = time.time() - t0
    return {
        "eval_loss": loss,
        "eval_accuracy": float(acc),
        "eval_runtime": dt,
        "eval_samples_per_second": len(Xev) / max(dt, 1e-6),
    }


with mlflow.start_run():
    mlflow.log_params({k: v for k, v in vars(args).items() if k != "corrupt_shard"})
    mlflow.log_params({"fp16": False, "optim": "adamw_torch", "gradient_accumulation_steps": 1})
    t_start = time.time()
    step, losses, seen = 0, [], 0
    for _epoch in range(args.num_train_epochs):
        order = np.concatenate(shards) if args.corrupt_shard >= 0 else rng.permutation(len(Xtr))
        for b in range(steps_per_epoch):
            bi = order[b * bs : (b + 1) * bs]
            xb, yb = torch.from_numpy(Xtr[bi]), torch.from_numpy(ytr[bi])
            for g in opt.param_groups:
                g["lr"] = lr_at(step)
            loss = torch.nn.functional.cross_entropy(model(xb), yb)
            opt.zero_grad()
            loss.backward()
            gn = torch.nn.utils.clip_grad_norm_(
                model.parameters(), args.max_grad_norm if args.max_grad_norm > 0 else float("inf")
            )
            opt.step()
            step += 1
            seen += len(bi)
            losses.append(loss.item())
            if step % args.logging_steps == 0:
                mlflow.log_metrics(
                    {
                        "loss": float(np.mean(losses[-args.logging_steps :])),
                        "grad_norm": float(gn),
                        "learning_rate": lr_at(step),
                        "epoch": step / steps_per_epoch,
                    },
                    step=step,
                )
            if step % args.eval_steps == 0:
                mlflow.log_metrics(evaluate(), step=step)
    rt = time.time() - t_start
    mlflow.log_metrics(
        {
            "train_runtime": rt,
            "train_samples_per_second": seen / rt,
            "train_loss": float(np.mean(losses)),
        },
        step=step,
    )
    print(f"done: {step} steps, final eval {evaluate()}")
