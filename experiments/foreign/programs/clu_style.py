"""A classifier trained by a Flax/JAX training loop in the style of the Flax examples, logged
through CLU's ``metric_writers`` (its scalars mirrored to MLflow).

Plain torch + the plain ``mlflow`` API (no JAX here).  The ``ml_collections`` config is logged
as hparams (``config.learning_rate``, ``config.batch_size``, ...).  Every
``config.log_every_steps`` steps the loop writes the averaged ``train_loss``,
``train_accuracy`` and ``learning_rate``; CLU's ``ReportProgress`` hook writes
``steps_per_sec`` and ``uptime``; at each epoch's end ``eval_loss`` and ``eval_accuracy``.
All with ``step = step`` (the optimizer step, from 1).  Written without looking at the doctor.

Faults are real settings: ``--config.learning_rate`` far too high or too low; a tiny train
split with a wide model and no weight decay (``--config.train_examples``); the flag
``--config.half_precision`` with un-normalised features (float16 overflows); a
``prefetch`` of the whole (repeated) dataset to the device (``--config.prefetch_repeats``).
"""

import time

import _setup
import mlflow
import numpy as np
import torch
import torch.nn.functional as F
from sklearn.datasets import load_breast_cancer, load_digits, load_wine

args = _setup.parse_flags(
    {
        "--config.seed": ("seed", 0),
        "--config.dataset": ("dataset", "digits"),
        "--config.learning_rate": ("learning_rate", 0.1),
        "--config.momentum": ("momentum", 0.9),
        "--config.warmup_epochs": ("warmup_epochs", 1.0),
        "--config.num_epochs": ("num_epochs", 15),
        "--config.batch_size": ("batch_size", 64),
        "--config.width": ("width", 128),
        "--config.weight_decay": ("weight_decay", 1e-4),
        "--config.eval_examples": ("eval_examples", 300),
        "--config.train_examples": ("train_examples", 0),
        "--config.normalize": ("normalize", 1),
        "--config.half_precision": ("half_precision", 0),
        "--config.prefetch_repeats": ("prefetch_repeats", 0),
        "--config.log_every_steps": ("log_every_steps", 10),
    }
)
rng = _setup.seeded(args.seed)
loader = {"digits": load_digits, "wine": load_wine, "breast_cancer": load_breast_cancer}
X, y = loader[args.dataset](return_X_y=True)
X = X.astype(np.float32)
order = rng.permutation(len(X))
ev, tr = order[: args.eval_examples], order[args.eval_examples :]
if args.train_examples:
    tr = tr[: args.train_examples]
if args.normalize:
    mu, sd = X[tr].mean(0), X[tr].std(0)
    sd[sd < 1e-3] = 1.0  # features constant over the train split
    X = (X - mu) / sd
Xtr, ytr, Xev, yev = X[tr], y[tr], X[ev], y[ev]
K = int(y.max()) + 1
dtype = torch.float16 if args.half_precision else torch.float32

model = torch.nn.Sequential(
    torch.nn.Linear(X.shape[1], args.width),
    torch.nn.ReLU(),
    torch.nn.Linear(args.width, args.width),
    torch.nn.ReLU(),
    torch.nn.Linear(args.width, K),
)
params_f32 = list(model.parameters())
opt = torch.optim.SGD(params_f32, lr=args.learning_rate, momentum=args.momentum, nesterov=True)
steps_per_epoch = max(1, len(Xtr) // args.batch_size)
total = steps_per_epoch * args.num_epochs


def lr_at(step):  # create_learning_rate_fn: linear warm-up, then cosine
    warm = args.warmup_epochs * steps_per_epoch
    if step < warm:
        return args.learning_rate * step / warm
    return args.learning_rate * 0.5 * (1 + np.cos(np.pi * (step - warm) / max(1, total - warm)))


def forward(x):
    if args.half_precision:  # the model in float16 (flax dtype=jnp.float16)
        h = x.to(dtype)
        for layer in model:
            if isinstance(layer, torch.nn.Linear):
                h = h @ layer.weight.to(dtype).t() + layer.bias.to(dtype)
            else:
                h = torch.relu(h)
        return h.float()
    return model(x)


def cross_entropy(logits, labels):
    return F.cross_entropy(logits, labels)


with mlflow.start_run():
    mlflow.log_params(
        {
            "config.seed": args.seed,
            "config.dataset": args.dataset,
            "config.model": f"MLP(width={args.width})",
            "config.optimizer": "sgd_nesterov",
            "config.learning_rate": args.learning_rate,
            "config.momentum": args.momentum,
            "config.warmup_epochs": args.warmup_epochs,
            "config.num_epochs": args.num_epochs,
            "config.batch_size": args.batch_size,
            "config.weight_decay": args.weight_decay,
            "config.half_precision": bool(args.half_precision),
            "config.log_every_steps": args.log_every_steps,
            "config.num_train_steps": total,
        }
    )
    if args.prefetch_repeats:  # flax_utils.prefetch_to_device of the repeated dataset, at once
        shape = (args.prefetch_repeats, len(Xtr), X.shape[1])
        device_buffer = torch.empty(shape, dtype=torch.float32)
        device_buffer[:] = torch.from_numpy(Xtr)
    start = time.time()
    last_t, last_step = time.time(), 0
    step = 0
    buf = {"loss": [], "acc": []}
    for _epoch in range(args.num_epochs):
        perm = rng.permutation(len(Xtr))
        for b in range(steps_per_epoch):
            idx = perm[b * args.batch_size : (b + 1) * args.batch_size]
            xb, yb = torch.from_numpy(Xtr[idx]), torch.from_numpy(ytr[idx]).long()
            step += 1
            for g in opt.param_groups:
                g["lr"] = lr_at(step)
            logits = forward(xb)
            loss = cross_entropy(logits, yb)
            l2 = sum((p**2).sum() for p in params_f32 if p.dim() > 1)
            opt.zero_grad()
            (loss + 0.5 * args.weight_decay * l2).backward()
            opt.step()
            buf["loss"].append(loss.item())
            buf["acc"].append((logits.argmax(1) == yb).float().mean().item())
            if step % args.log_every_steps == 0:
                now = time.time()
                mlflow.log_metrics(
                    {
                        "train_loss": float(np.mean(buf["loss"])),
                        "train_accuracy": float(np.mean(buf["acc"])),
                        "learning_rate": lr_at(step),
                        "steps_per_sec": (step - last_step) / (now - last_t),
                        "uptime": now - start,
                    },
                    step=step,
                )
                print(
                    f"[{step}] train_loss={np.mean(buf['loss']):.4f}, "
                    f"train_accuracy={np.mean(buf['acc']):.4f}, learning_rate={lr_at(step):.4g}",
                    flush=True,
                )
                last_t, last_step = now, step
                buf = {"loss": [], "acc": []}
        with torch.no_grad():
            logits = forward(torch.from_numpy(Xev))
            el = cross_entropy(logits, torch.from_numpy(yev).long()).item()
            ea = (logits.argmax(1).numpy() == yev).mean()
        mlflow.log_metrics({"eval_loss": el, "eval_accuracy": float(ea)}, step=step)
        print(f"[{step}] eval_loss={el:.4f}, eval_accuracy={ea:.4f}", flush=True)
