"""An image classifier trained by an MMEngine ``Runner`` (EpochBasedTrainLoop), logged the way
``MLflowVisBackend`` logs it.

Plain torch + the plain ``mlflow`` API.  The config is logged flattened as params
(``optim_wrapper.optimizer.lr``, ``train_dataloader.batch_size``, ...).  ``LoggerHook``
(``interval``, here 10) logs the smoothed train scalars ``lr``, ``data_time``, ``time``,
``loss``, ``loss_cls`` (and ``grad_norm`` when ``optim_wrapper.clip_grad`` is set) with
``step = iter + 1``; after each validation epoch it logs ``accuracy/top1`` and
``accuracy/top5`` with ``step = epoch`` (``log_metric_by_epoch``).  Written without looking at
the doctor.

Faults are real settings: ``--optim_wrapper.optimizer.lr`` far too high; a
``LoadImageFromFile`` that re-decodes zlib-compressed samples per batch from a given epoch
(``--train_dataloader.decode_from``); a ``Resize`` in the test pipeline far too big (the
first validation cannot allocate); ``accuracy`` ``topk`` larger than the classes present.
"""

import time
import zlib

import _setup
import mlflow
import numpy as np
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits

args = _setup.parse_flags(
    {
        "--randomness.seed": ("seed", 0),
        "--optim_wrapper.optimizer.lr": ("lr", 0.05),
        "--optim_wrapper.optimizer.momentum": ("momentum", 0.9),
        "--optim_wrapper.optimizer.weight_decay": ("weight_decay", 1e-4),
        "--optim_wrapper.clip_grad.max_norm": ("max_norm", 0.0),
        "--param_scheduler.warmup_iters": ("warmup_iters", 20),
        "--param_scheduler.type": ("sched", "CosineAnnealingLR"),
        "--train_cfg.max_epochs": ("max_epochs", 12),
        "--train_dataloader.batch_size": ("batch_size", 32),
        "--train_dataloader.decode_from": ("decode_from", 0),
        "--train_dataloader.decode_rounds": ("decode_rounds", 200),
        "--val_dataloader.num_samples": ("val_samples", 300),
        "--test_pipeline.resize": ("resize", 8),
        "--val_evaluator.topk": ("topk", "1,5"),
        "--model.num_classes": ("num_classes", 10),
        "--default_hooks.logger.interval": ("interval", 10),
    }
)
rng = _setup.seeded(args.seed)

X, y = load_digits(return_X_y=True)
X = (X / 16.0).astype(np.float32).reshape(-1, 1, 8, 8)
y = y % args.num_classes
order = rng.permutation(len(X))
va, tr = order[: args.val_samples], order[args.val_samples :]
Xtr, ytr, Xva, yva = X[tr], y[tr], X[va], y[va]
packed = [zlib.compress(x.tobytes(), 9) for x in Xtr]  # the dataset "on disk"

model = torch.nn.Sequential(
    torch.nn.Conv2d(1, 16, 3, padding=1),
    torch.nn.BatchNorm2d(16),
    torch.nn.ReLU(),
    torch.nn.Conv2d(16, 32, 3, padding=1),
    torch.nn.ReLU(),
    torch.nn.AdaptiveAvgPool2d(1),
    torch.nn.Flatten(),
    torch.nn.Linear(32, args.num_classes),
)
opt = torch.optim.SGD(
    model.parameters(), lr=args.lr, momentum=args.momentum, weight_decay=args.weight_decay
)
iters_per_epoch = len(Xtr) // args.batch_size
max_iters = iters_per_epoch * args.max_epochs


def lr_at(it):
    warm = min(1.0, 0.001 + (1 - 0.001) * it / args.warmup_iters) if args.warmup_iters else 1.0
    if args.sched == "CosineAnnealingLR":
        return args.lr * warm * 0.5 * (1 + np.cos(np.pi * it / max_iters))
    if args.sched == "MultiStepLR":
        return args.lr * warm * (0.1 ** sum(it >= m * iters_per_epoch for m in (8, 11)))
    return args.lr * warm


def load(idx, epoch):
    if args.decode_from and epoch >= args.decode_from:  # LoadImageFromFile, no cache
        out = []
        for i in idx:
            for _ in range(args.decode_rounds):
                raw = zlib.decompress(packed[i])
            out.append(np.frombuffer(raw, np.float32).reshape(1, 8, 8))
        return torch.from_numpy(np.stack(out))
    return torch.from_numpy(Xtr[idx])


def validate():
    model.eval()
    with torch.no_grad():
        xs = torch.from_numpy(Xva)
        if args.resize != 8:  # test_pipeline Resize(scale=...)
            xs = F.interpolate(xs.expand(-1, 64, -1, -1), size=(args.resize, args.resize))
            xs = xs.mean(1, keepdim=True)
        logits = model(xs)
    model.train()
    topk = tuple(int(k) for k in args.topk.split(","))
    _, pred = logits.topk(max(topk), dim=1)  # mmpretrain Accuracy
    hit = pred == torch.from_numpy(yva)[:, None]
    return {f"accuracy/top{k}": 100.0 * hit[:, :k].any(1).float().mean().item() for k in topk}


with mlflow.start_run():
    mlflow.log_params(
        {
            "randomness.seed": args.seed,
            "model.type": "ImageClassifier",
            "model.head.num_classes": args.num_classes,
            "optim_wrapper.type": "OptimWrapper",
            "optim_wrapper.optimizer.type": "SGD",
            "optim_wrapper.optimizer.lr": args.lr,
            "optim_wrapper.optimizer.momentum": args.momentum,
            "optim_wrapper.optimizer.weight_decay": args.weight_decay,
            "optim_wrapper.clip_grad": {"max_norm": args.max_norm} if args.max_norm else None,
            "param_scheduler": f"LinearLR(warmup {args.warmup_iters})+{args.sched}",
            "train_cfg.by_epoch": True,
            "train_cfg.max_epochs": args.max_epochs,
            "train_cfg.val_interval": 1,
            "train_dataloader.batch_size": args.batch_size,
            "val_dataloader.batch_size": len(Xva),
            "val_evaluator.type": "Accuracy",
            "val_evaluator.topk": args.topk,
            "default_hooks.logger.interval": args.interval,
        }
    )
    it = 0
    win = {"loss": [], "data_time": [], "time": [], "grad_norm": []}
    for epoch in range(args.max_epochs):
        perm = rng.permutation(len(Xtr))
        t_end = time.perf_counter()
        for b in range(iters_per_epoch):
            idx = perm[b * args.batch_size : (b + 1) * args.batch_size]
            xb = load(idx, epoch)
            yb = torch.from_numpy(ytr[idx]).long()
            t_data = time.perf_counter()
            for g in opt.param_groups:
                g["lr"] = lr_at(it)
            loss = F.cross_entropy(model(xb), yb)
            opt.zero_grad()
            loss.backward()
            if args.max_norm:
                gn = torch.nn.utils.clip_grad_norm_(model.parameters(), args.max_norm)
                win["grad_norm"].append(float(gn))
            opt.step()
            now = time.perf_counter()
            win["loss"].append(loss.item())
            win["data_time"].append(t_data - t_end)
            win["time"].append(now - t_end)
            t_end = now
            it += 1
            if it % args.interval == 0:
                vals = {k: float(np.mean(v)) for k, v in win.items() if v}
                scalars = {"lr": lr_at(it - 1), **vals, "loss_cls": vals["loss"]}
                mlflow.log_metrics(scalars, step=it)
                print(
                    f"Epoch(train) [{epoch + 1}][{b + 1:>3}/{iters_per_epoch}]  "
                    f"lr: {scalars['lr']:.4e}  time: {vals['time']:.4f}  "
                    f"data_time: {vals['data_time']:.4f}  loss: {vals['loss']:.4f}",
                    flush=True,
                )
                win = {k: [] for k in win}
        acc = validate()
        mlflow.log_metrics(acc, step=epoch + 1)
        print(
            f"Epoch(val) [{epoch + 1}][1/1]  " + "  ".join(f"{k}: {v:.4f}" for k, v in acc.items()),
            flush=True,
        )
