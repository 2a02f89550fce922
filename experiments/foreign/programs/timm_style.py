"""A small image classifier trained the way timm's ``train.py`` trains one, its per-epoch
summary row mirrored to MLflow.

Plain PyTorch + the plain ``mlflow`` API.  timm's ``train.py`` writes one ``summary.csv`` row
per epoch (``utils.update_summary``): ``epoch``, the train metrics prefixed ``train_``
(``train_loss``), the eval metrics prefixed ``eval_`` (``eval_loss``, ``eval_top1``,
``eval_top5``, top-k in percent) and ``lr``; the mirror logs that row with ``step=epoch``
(from 0).  The args (timm's ``args.yaml``) are logged as params, dashes turned into
underscores as argparse does.  The scheduler steps per epoch (``sched_on_updates`` off), with
timm's linear warm-up from ``--warmup-lr``.  Written without looking at the doctor.

Data: scikit-learn's 8x8 digits, upsampled to ``--img-size`` by the train/eval transforms.
Faults are real paths: ``--lr`` far too high or too low; ``--img-size`` large enough that
the stem's activations cannot be allocated.  (``--train-samples N --no-aug 1``, a tiny subset
without augmentation, was tried as an overfitting fault: the eval loss kept falling.)
"""

import time

import _setup
import mlflow
import numpy as np
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits

args = _setup.parse_flags(
    {
        "--model": "resnet_tiny",
        "--seed": 42,
        "--epochs": 15,
        "--batch-size": 64,
        "--validation-batch-size": 128,
        "--img-size": 12,
        "--opt": "sgd",
        "--lr": 0.05,
        "--momentum": 0.9,
        "--weight-decay": 2e-5,
        "--sched": "cosine",
        "--min-lr": 0.0,
        "--warmup-epochs": 3,
        "--warmup-lr": 1e-5,
        "--smoothing": 0.1,
        "--drop": 0.0,
        "--width": 12,
        "--clip-grad": 0.0,
        "--val-split": 0.2,
        "--train-samples": 0,
        "--no-aug": 0,
    }
)
_setup.seeded(args.seed)

X, y = load_digits(return_X_y=True)
X = (X / 16.0).astype(np.float32).reshape(-1, 1, 8, 8)
order = np.random.default_rng(0).permutation(len(X))  # timm's ImageFolder split is fixed
n_val = int(round(args.val_split * len(X)))
val_idx, train_idx = order[:n_val], order[n_val:]
if args.train_samples:
    train_idx = train_idx[: args.train_samples]
Xtr, ytr = torch.from_numpy(X[train_idx]), torch.from_numpy(y[train_idx])
Xva, yva = torch.from_numpy(X[val_idx]), torch.from_numpy(y[val_idx])
MEAN, STD = 0.3, 0.4


def transform(x, train):
    x = F.interpolate(x, size=(args.img_size, args.img_size), mode="bilinear")
    if train and not args.no_aug:  # RandomResizedCrop's cousin: a random shift of up to one cell
        s = max(1, args.img_size // 8)
        dx, dy = np.random.randint(-s, s + 1, size=2)
        x = torch.roll(x, shifts=(int(dy), int(dx)), dims=(2, 3))
    return (x - MEAN) / STD


class Block(torch.nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = torch.nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = torch.nn.BatchNorm2d(cout)
        self.conv2 = torch.nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = torch.nn.BatchNorm2d(cout)
        self.short = (
            torch.nn.Sequential(
                torch.nn.Conv2d(cin, cout, 1, stride, bias=False), torch.nn.BatchNorm2d(cout)
            )
            if stride != 1 or cin != cout
            else torch.nn.Identity()
        )

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.short(x))


class ResNetTiny(torch.nn.Module):
    def __init__(self, width, drop, num_classes=10):
        super().__init__()
        w = width
        self.conv1 = torch.nn.Conv2d(1, w, 3, 1, 1, bias=False)
        self.bn1 = torch.nn.BatchNorm2d(w)
        self.layer1 = Block(w, w, 1)
        self.layer2 = Block(w, 2 * w, 2)
        self.drop = drop
        self.fc = torch.nn.Linear(2 * w, num_classes)

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer2(self.layer1(x))
        x = F.adaptive_avg_pool2d(x, 1).flatten(1)
        return self.fc(F.dropout(x, self.drop, self.training))


np.random.seed(args.seed)
model = ResNetTiny(args.width, args.drop)
decay = [p for p in model.parameters() if p.ndim > 1]
no_decay = [p for p in model.parameters() if p.ndim <= 1]  # timm: no wd on norm/bias
groups = [
    {"params": decay, "weight_decay": args.weight_decay},
    {"params": no_decay, "weight_decay": 0.0},
]
if args.opt == "adamw":
    optimizer = torch.optim.AdamW(groups, lr=args.lr)
else:
    optimizer = torch.optim.SGD(groups, lr=args.lr, momentum=args.momentum, nesterov=True)


def lr_at(epoch):
    if epoch < args.warmup_epochs:
        return args.warmup_lr + epoch * (args.lr - args.warmup_lr) / args.warmup_epochs
    if args.sched == "cosine":
        t = (epoch - args.warmup_epochs) / max(1, args.epochs - args.warmup_epochs)
        return args.min_lr + 0.5 * (args.lr - args.min_lr) * (1 + np.cos(np.pi * t))
    if args.sched == "step":
        return args.lr * 0.1 ** ((epoch - args.warmup_epochs) // 10)
    return args.lr


def accuracy(logits, target, topk=(1, 5)):
    top = logits.topk(max(topk), 1).indices
    hit = top.eq(target[:, None])
    return [100.0 * hit[:, :k].any(1).float().mean().item() for k in topk]


with mlflow.start_run():
    mlflow.log_params({k: v for k, v in vars(args).items()})
    print(f"Model {args.model} created, param count:{sum(p.numel() for p in model.parameters())}")
    print(f"Scheduled epochs: {args.epochs}. LR stepped per epoch.", flush=True)
    best = None
    for epoch in range(args.epochs):
        for g in optimizer.param_groups:
            g["lr"] = lr_at(epoch)
        model.train()
        perm = torch.randperm(len(Xtr))
        loss_sum, n_seen, t0 = 0.0, 0, time.time()
        for b, i in enumerate(range(0, len(perm), args.batch_size)):
            idx = perm[i : i + args.batch_size]
            out = model(transform(Xtr[idx], True))
            loss = F.cross_entropy(out, ytr[idx], label_smoothing=args.smoothing)
            optimizer.zero_grad()
            loss.backward()
            if args.clip_grad:
                torch.nn.utils.clip_grad_norm_(model.parameters(), args.clip_grad)
            optimizer.step()
            loss_sum, n_seen = loss_sum + loss.item() * len(idx), n_seen + len(idx)
            if b % 10 == 0:
                print(
                    f"Train: {epoch} [{i:>4}/{len(perm)}]  Loss: {loss.item():#.3g} "
                    f"({loss_sum / n_seen:#.3g})  LR: {optimizer.param_groups[0]['lr']:.3e}",
                    flush=True,
                )
        model.eval()
        vl, t1, t5, nv = 0.0, 0.0, 0.0, 0
        with torch.no_grad():
            for i in range(0, len(Xva), args.validation_batch_size):
                xb, yb = (
                    Xva[i : i + args.validation_batch_size],
                    yva[i : i + args.validation_batch_size],
                )
                out = model(transform(xb, False))
                a1, a5 = accuracy(out, yb)
                vl += F.cross_entropy(out, yb).item() * len(yb)
                t1, t5, nv = t1 + a1 * len(yb), t5 + a5 * len(yb), nv + len(yb)
        row = {
            "train_loss": loss_sum / n_seen,
            "eval_loss": vl / nv,
            "eval_top1": t1 / nv,
            "eval_top5": t5 / nv,
            "lr": optimizer.param_groups[0]["lr"],
        }
        mlflow.log_metrics(row, step=epoch)
        if best is None or row["eval_top1"] > best[0]:
            best = (row["eval_top1"], epoch)
        print(
            f"Test: [{epoch}]  Loss: {row['eval_loss']:.4f}  Acc@1: {row['eval_top1']:.3f}  "
            f"Acc@5: {row['eval_top5']:.3f}  ({time.time() - t0:.2f}s)",
            flush=True,
        )
    print(f"*** Best metric: {best[0]:.3f} (epoch {best[1]})", flush=True)
