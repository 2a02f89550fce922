"""A wine/breast-cancer classifier logged the way PyTorch Lightning's ``MLFlowLogger`` does.

Plain PyTorch + the plain ``mlflow`` API.  Names as Lightning writes them with
``self.log(..., on_step=True, on_epoch=True)``: ``train_loss_step`` (per step),
``train_loss_epoch``, ``val_loss`` and ``val_acc`` (once per epoch, on a small validation
set), ``epoch``, ``lr-AdamW`` (LearningRateMonitor); hyperparameters flattened with ``/``
(``model/lr``, ``trainer/gradient_clip_val``, ``data/train_size``).  Written without looking at
the doctor.

``--data/train_size N`` keeps only N training rows; ``--model/hidden`` sets the width;
``--data/replay_copies C`` keeps C noisy copies of the training set per epoch in a replay
buffer that is never trimmed (memory grows every epoch).
"""

import math

import _setup
import mlflow
import numpy as np
import torch
from sklearn.datasets import load_breast_cancer, load_wine

args = _setup.parse_flags(
    {
        "--model/lr": ("lr", 3e-3),
        "--model/hidden": ("hidden", 64),
        "--model/dropout": ("dropout", 0.1),
        "--model/weight_decay": ("weight_decay", 1e-4),
        "--trainer/max_epochs": ("max_epochs", 30),
        "--trainer/gradient_clip_val": ("clip", 0.0),
        "--data/name": ("data", "breast_cancer"),
        "--data/batch_size": ("batch_size", 32),
        "--data/train_size": ("train_size", 0),
        "--data/val_size": ("val_size", 60),
        "--data/replay_copies": ("replay", 0),
        "--trainer/log_every_n_steps": ("log_every", 4),
        "--seed_everything": ("seed", 0),
    }
)

rng = _setup.seeded(args.seed)
X, y = (load_wine if args.data == "wine" else load_breast_cancer)(return_X_y=True)
X = ((X - X.mean(0)) / (X.std(0) + 1e-8)).astype(np.float32)
idx = rng.permutation(len(X))
va, tr = idx[: args.val_size], idx[args.val_size :]
if args.train_size:
    tr = tr[: args.train_size]
Xtr, ytr, Xva, yva = X[tr], y[tr], X[va], y[va]
buf_x, buf_y = Xtr[:0], ytr[:0]
n_cls = int(y.max()) + 1

model = torch.nn.Sequential(
    torch.nn.Linear(Xtr.shape[1], args.hidden),
    torch.nn.ReLU(),
    torch.nn.Dropout(args.dropout),
    torch.nn.Linear(args.hidden, args.hidden),
    torch.nn.ReLU(),
    torch.nn.Dropout(args.dropout),
    torch.nn.Linear(args.hidden, n_cls),
)
opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
steps_per_epoch = math.ceil(len(Xtr) / args.batch_size)
sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=args.max_epochs * steps_per_epoch)

with mlflow.start_run():
    hp = {f"model/{k}": getattr(args, k) for k in ("lr", "hidden", "dropout", "weight_decay")}
    hp |= {
        "trainer/max_epochs": args.max_epochs,
        "trainer/gradient_clip_val": args.clip,
        "trainer/log_every_n_steps": args.log_every,
        "data/name": args.data,
        "data/batch_size": args.batch_size,
        "data/train_size": len(Xtr),
        "data/val_size": len(Xva),
        "data/replay_copies": args.replay,
        "seed": args.seed,
    }
    mlflow.log_params(hp)
    step = 0
    for epoch in range(args.max_epochs):
        model.train()
        if args.replay:
            noisy = (
                np.repeat(Xtr[None], args.replay, 0)
                + rng.standard_normal((args.replay, *Xtr.shape), dtype=np.float32) * 0.1
            )
            buf_x = np.concatenate([buf_x, noisy.reshape(-1, Xtr.shape[1])])
            buf_y = np.concatenate([buf_y, np.tile(ytr, args.replay)])
        order = rng.permutation(len(Xtr))
        ep_losses = []
        for b in range(steps_per_epoch):
            bi = order[b * args.batch_size : (b + 1) * args.batch_size]
            xb, yb = Xtr[bi], ytr[bi]
            if len(buf_x):
                ri = rng.integers(0, len(buf_x), len(bi) // 2)
                xb, yb = np.concatenate([xb, buf_x[ri]]), np.concatenate([yb, buf_y[ri]])
            out = model(torch.from_numpy(xb))
            loss = torch.nn.functional.cross_entropy(out, torch.from_numpy(yb))
            opt.zero_grad()
            loss.backward()
            if args.clip > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), args.clip)
            opt.step()
            sched.step()
            ep_losses.append(loss.item())
            if step % args.log_every == 0:
                mlflow.log_metrics(
                    {"train_loss_step": loss.item(), "lr-AdamW": sched.get_last_lr()[0]}, step=step
                )
            step += 1
        model.eval()
        with torch.no_grad():
            out = model(torch.from_numpy(Xva))
            vl = torch.nn.functional.cross_entropy(out, torch.from_numpy(yva)).item()
            acc = float((out.argmax(1).numpy() == yva).mean())
        mlflow.log_metrics(
            {
                "val_loss": vl,
                "val_acc": acc,
                "epoch": epoch,
                "train_loss_epoch": float(np.mean(ep_losses)),
            },
            step=step - 1,
        )
    print(f"done: {args.max_epochs} epochs, val_loss {vl:.4f} val_acc {acc:.3f}")
