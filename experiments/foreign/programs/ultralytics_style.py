"""An image classifier trained the way ``yolo classify train`` trains, logged the way the
Ultralytics MLflow callback (``ultralytics/utils/callbacks/mlflow.py``) logs it.

Plain PyTorch + the plain ``mlflow`` API.  The data are sklearn's bundled 8x8 digits, resized
to ``imgsz`` (nearest neighbour, three channels) as the classification dataset would.  The
trainer follows BaseTrainer: three parameter groups (weights with decay ``pg0``, norm weights
``pg1``, biases ``pg2``), an iteration-based warm-up over ``warmup_epochs`` (biases from
``warmup_bias_lr``, the others from 0, momentum from ``warmup_momentum``), then the linear
(``lrf``) or cosine (``cos_lr``) epoch schedule.  The callback logs, with ``step=epoch``
(from 0), at ``on_train_epoch_end`` the learning rates ``lr/pg0``, ``lr/pg1``, ``lr/pg2`` and
``train/loss`` (the running mean of the epoch's batch losses), and at ``on_fit_epoch_end`` the
validator's ``metrics/accuracy_top1``, ``metrics/accuracy_top5``, ``val/loss`` (the SANITIZE
step drops brackets from names).  Params are ``trainer.args``.  Written without looking at
the doctor.

``--fraction F`` trains on a fraction of the train split (as the Ultralytics argument does);
``--classes 0,1,...`` trains on those classes only, with a head of that many outputs;
``--cache ram`` keeps every image the loader has decoded (at ``imgsz``, float32) in a cache
that is filled on first access, the validation images included.
"""

import math
import time

import _setup
import mlflow
import numpy as np
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

args = _setup.parse_flags(
    {
        "--task": "classify",
        "--mode": "train",
        "--model": "yolov8n-cls.yaml",
        "--data": "digits",
        "--epochs": 20,
        "--batch": 32,
        "--imgsz": 32,
        "--optimizer": "SGD",
        "--lr0": 0.01,
        "--lrf": 0.01,
        "--momentum": 0.937,
        "--weight_decay": 0.0005,
        "--warmup_epochs": 3.0,
        "--warmup_momentum": 0.8,
        "--warmup_bias_lr": 0.1,
        "--cos_lr": 0,
        "--dropout": 0.0,
        "--fraction": 1.0,
        "--classes": "",
        "--cache": "false",
        "--width": 16,
        "--val_fraction": 0.25,
        "--seed": 0,
        "--deterministic": 1,
    }
)

rng = _setup.seeded(args.seed)
X, y = load_digits(return_X_y=True)
X = (X / 16.0).astype(np.float32).reshape(-1, 1, 8, 8)
Xtr, Xva, ytr, yva = train_test_split(
    X, y, test_size=args.val_fraction, stratify=y, random_state=args.seed
)
if args.fraction < 1.0:  # the dataset keeps the first round(len * fraction) images
    keep = max(1, round(len(Xtr) * args.fraction))
    Xtr, ytr = Xtr[:keep], ytr[:keep]
nc = 10
if args.classes:  # train on a subset of the classes: the head gets len(classes) outputs
    keep = [int(c) for c in args.classes.split(",")]
    mask = np.isin(ytr, keep)
    Xtr, ytr = Xtr[mask], ytr[mask]
    nc = len(keep)  # (the validation split is not filtered)


class ClassificationDataset:
    """Decodes (resizes) an image on access; ``cache ram`` keeps the decoded float32 image."""

    def __init__(self, images, labels, cache):
        self.images, self.labels = images, torch.from_numpy(labels.astype(np.int64))
        self.cache_ram = cache == "ram"
        self.ims = [None] * len(images)

    def load(self, i):
        im = self.ims[i] if self.cache_ram else None
        if im is None:
            src = torch.from_numpy(self.images[i])[None]
            im = F.interpolate(src, size=(args.imgsz, args.imgsz), mode="nearest")[0]
            im = im.expand(3, -1, -1).contiguous()
            if self.cache_ram:
                self.ims[i] = im
        return im

    def batch(self, idx):
        return torch.stack([self.load(int(i)) for i in idx]), self.labels[idx]


train_set = ClassificationDataset(Xtr, ytr, args.cache)
val_set = ClassificationDataset(Xva, yva, args.cache)


class ClassificationModel(torch.nn.Module):
    """Conv-BN-SiLU blocks and a Classify head (pool, dropout, linear)."""

    def __init__(self, w):
        super().__init__()

        def conv(c1, c2, s):
            return torch.nn.Sequential(
                torch.nn.Conv2d(c1, c2, 3, s, 1, bias=False),
                torch.nn.BatchNorm2d(c2),
                torch.nn.SiLU(),
            )

        self.backbone = torch.nn.Sequential(conv(3, w, 2), conv(w, 2 * w, 2), conv(2 * w, 4 * w, 2))
        self.drop = torch.nn.Dropout(args.dropout)
        self.linear = torch.nn.Linear(4 * w, nc)

    def forward(self, x):
        x = self.backbone(x).mean((2, 3))
        return self.linear(self.drop(x))


model = ClassificationModel(args.width)
g_decay, g_norm, g_bias = [], [], []
for mod in model.modules():
    for name, p in mod.named_parameters(recurse=False):
        if name == "bias":
            g_bias.append(p)
        elif isinstance(mod, torch.nn.BatchNorm2d):
            g_norm.append(p)
        else:
            g_decay.append(p)
if args.optimizer == "SGD":
    optimizer = torch.optim.SGD(g_bias, lr=args.lr0, momentum=args.momentum, nesterov=True)
else:
    optimizer = torch.optim.AdamW(g_bias, lr=args.lr0, betas=(args.momentum, 0.999), weight_decay=0)
optimizer.add_param_group({"params": g_decay, "weight_decay": args.weight_decay})
optimizer.add_param_group({"params": g_norm, "weight_decay": 0.0})
# BaseTrainer's order is pg0 = decay weights, pg1 = norm weights, pg2 = biases
optimizer.param_groups[:] = [optimizer.param_groups[i] for i in (1, 2, 0)]

if args.cos_lr:

    def lf(x):
        return ((1 - math.cos(x * math.pi / args.epochs)) / 2) * (args.lrf - 1) + 1
else:

    def lf(x):
        return max(1 - x / args.epochs, 0) * (1.0 - args.lrf) + args.lrf


for g in optimizer.param_groups:
    g["initial_lr"] = args.lr0
scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda=lf)
nb = math.ceil(len(Xtr) / args.batch)
nw = max(round(args.warmup_epochs * nb), 100) if args.warmup_epochs > 0 else -1


def SANITIZE(d):
    return {k.replace("(", "").replace(")", ""): float(v) for k, v in d.items()}


def validate():
    model.eval()
    loss, top1, top5, n = 0.0, 0, 0, 0
    with torch.no_grad():
        for b in range(0, len(Xva), args.batch * 2):
            xb, yb = val_set.batch(np.arange(b, min(b + args.batch * 2, len(Xva))))
            preds = model(xb)
            loss += F.cross_entropy(preds, yb, reduction="sum").item()
            top = preds.topk(5, 1).indices
            top1 += (top[:, 0] == yb).sum().item()
            top5 += (top == yb[:, None]).any(1).sum().item()
            n += len(yb)
    return {
        "metrics/accuracy_top1": top1 / n,
        "metrics/accuracy_top5": top5 / n,
        "val/loss": loss / n,
    }


with mlflow.start_run():
    mlflow.log_params({k: v for k, v in vars(args).items()})
    print(f"Starting training for {args.epochs} epochs...", flush=True)
    ni = 0
    for epoch in range(args.epochs):
        t0 = time.time()
        model.train()
        order = rng.permutation(len(Xtr))
        tloss = None
        for i, b in enumerate(range(0, len(Xtr), args.batch)):
            ni = i + nb * epoch
            if ni <= nw:  # warm-up
                for j, g in enumerate(optimizer.param_groups):
                    start = args.warmup_bias_lr if j == 2 else 0.0
                    g["lr"] = np.interp(ni, [0, nw], [start, g["initial_lr"] * lf(epoch)])
                    if "momentum" in g:
                        g["momentum"] = np.interp(
                            ni, [0, nw], [args.warmup_momentum, args.momentum]
                        )
            xb, yb = train_set.batch(order[b : b + args.batch])
            loss = F.cross_entropy(model(xb), yb)
            optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm=10.0)
            optimizer.step()
            item = loss.detach()
            tloss = item if tloss is None else (tloss * i + item) / (i + 1)
        lr = {f"lr/pg{ir}": x["lr"] for ir, x in enumerate(optimizer.param_groups)}
        mlflow.log_metrics({**SANITIZE(lr), **SANITIZE({"train/loss": tloss})}, step=epoch)
        scheduler.step()
        metrics = validate()
        mlflow.log_metrics(SANITIZE(metrics), step=epoch)
        print(
            f"{epoch + 1:>5}/{args.epochs}  loss {float(tloss):.4f}  "
            f"top1_acc {metrics['metrics/accuracy_top1']:.3f}  "
            f"top5_acc {metrics['metrics/accuracy_top5']:.3f}  "
            f"val_loss {metrics['val/loss']:.4f}  {time.time() - t0:.2f}s",
            flush=True,
        )
    print(f"{args.epochs} epochs completed.", flush=True)
