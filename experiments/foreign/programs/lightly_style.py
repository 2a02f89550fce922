"""lightly's BYOL example (``examples/pytorch_lightning/byol.py``) run by the team's own
Lightning-like loop on scikit-learn's 8 x 8 digits, its ``self.log`` calls mirrored to MLflow.

Plain PyTorch + scikit-learn + the plain ``mlflow`` API (no lightly import here).  What is
imitated:

* ``BYOL``: a backbone (MLP 64 -> ``width`` -> ``width`` features), ``BYOLProjectionHead``
  (``width`` -> 256 -> 64, BatchNorm) and ``BYOLPredictionHead`` (64 -> 256 -> 64); the momentum
  backbone and projection head are deep copies updated by ``update_momentum`` with
  ``m = cosine_schedule(epoch, max_epochs, 0.996, 1)``;
* the loss: ``NegativeCosineSimilarity`` symmetrised,
  ``0.5 * (criterion(p0, z1) + criterion(p1, z0))`` (from -1 to 1);
* the transform: two views per image, each with a random shift of up to one pixel, random
  intensity scaling, Gaussian noise and a random 3 x 3 erased patch;
* the optimizer: SGD (momentum 0.9, weight decay 5e-4) at ``lr`` with ``warmup_epochs`` of
  linear warm-up then cosine decay, stepped every batch;
* ``self.log``: ``train_loss_ssl`` every step, ``lr`` and ``momentum`` every step at
  ``step = global_step``; every ``knn_every`` epochs the benchmarks' k-NN classifier
  (``knn_k`` neighbours, cosine metric) of the backbone's features, fitted on the labelled
  first ``knn_labels`` training digits and scored on ``val_size`` held-out
  digits (from the field scanner: shifted by up to one pixel, noisy), logged as ``kNN_accuracy``
  (percent) with ``epoch``.

Written without looking at the doctor.

Team options (the faults are real settings, data and code paths):

* ``--lr``, ``--batch_size``, ``--width``, ``--warmup_epochs``, ``--max_epochs``,
  ``--val_size``, ``--knn_k``, ``--knn_metric``, ``--knn_every``;
* ``--extra_epoch k``: the scanner's second export (``digits_scan2.csv``, re-scanned copies of
  the training digits) joins the unlabelled pool at epoch k; ``--extra_missing``: ``zero`` or
  ``nan`` (how its exporter writes an unread pixel);
* ``--feature_bank 1``: the team's online feature bank keeps every batch's backbone outputs
  (with their graphs) to plot the feature spread at the end.
"""

import copy
import math

import _setup
import mlflow
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from sklearn.datasets import load_digits
from sklearn.neighbors import KNeighborsClassifier

args = _setup.parse_flags(
    {
        "--seed": 0,
        "--lr": 0.06,
        "--batch_size": 128,
        "--width": 128,
        "--warmup_epochs": 2,
        "--max_epochs": 40,
        "--val_size": 400,
        "--knn_k": 20,
        "--knn_metric": "cosine",
        "--knn_every": 5,
        "--knn_labels": 300,
        "--extra_epoch": 0,
        "--extra_missing": "zero",
        "--feature_bank": 0,
    }
)
rng = _setup.seeded(args.seed)

X, y = load_digits(return_X_y=True)
X = (X / 16.0).astype(np.float32)
perm = rng.permutation(len(X))
val_idx, tr_idx = perm[: args.val_size], perm[args.val_size :]
Xtr, ytr, Xval, yval = X[tr_idx], y[tr_idx], X[val_idx], y[val_idx]
# the held-out digits come from the field scanner: shifted by up to one pixel, noisy
gv = np.random.default_rng(7)
_v = Xval.reshape(-1, 8, 8)
_v = np.stack([np.roll(im, tuple(gv.integers(-1, 2, 2)), axis=(0, 1)) for im in _v])
Xval = np.clip(_v.reshape(-1, 64) + gv.normal(0, 0.1, (len(_v), 64)), 0, 1).astype(np.float32)
lab = np.arange(args.knn_labels)  # the labelled subset the k-NN classifier is fitted on

# the scanner's second export: re-scanned copies of the training digits, written to CSV
g2 = np.random.default_rng(4000 + args.seed)
scan2 = np.clip(Xtr + g2.normal(0, 0.05, Xtr.shape), 0, 1).astype(np.float32)
unread = g2.random(scan2.shape) < 0.01
scan2[unread] = np.nan if args.extra_missing == "nan" else 0.0
np.savetxt("digits_scan2.csv", scan2, delimiter=",", fmt="%.4f")


def load_scan(path):
    return np.genfromtxt(path, delimiter=",").astype(np.float32)


def augment(x):
    b = x.shape[0]
    img = x.view(b, 8, 8)
    sx, sy = torch.randint(-1, 2, (2,)).tolist()
    img = torch.roll(img, shifts=(sx, sy), dims=(1, 2))
    img = img * (0.7 + 0.6 * torch.rand(b, 1, 1)) + 0.05 * torch.randn_like(img)
    i, j = torch.randint(0, 6, (2,)).tolist()
    mask = torch.ones_like(img)
    mask[torch.rand(b) < 0.5, i : i + 3, j : j + 3] = 0
    return (img * mask).view(b, 64)


def mlp(i, h, o, bn=True):
    return nn.Sequential(
        nn.Linear(i, h), nn.BatchNorm1d(h) if bn else nn.Identity(), nn.ReLU(), nn.Linear(h, o)
    )


class BYOL(nn.Module):
    def __init__(self):
        super().__init__()
        w = args.width
        self.backbone = nn.Sequential(nn.Linear(64, w), nn.ReLU(), nn.Linear(w, w), nn.ReLU())
        self.projection_head = mlp(w, 256, 64)
        self.prediction_head = mlp(64, 256, 64)
        self.backbone_momentum = copy.deepcopy(self.backbone)
        self.projection_head_momentum = copy.deepcopy(self.projection_head)
        for p in list(self.backbone_momentum.parameters()) + list(
            self.projection_head_momentum.parameters()
        ):
            p.requires_grad = False

    def forward(self, x):
        y = self.backbone(x)
        return self.prediction_head(self.projection_head(y)), y

    def forward_momentum(self, x):
        with torch.no_grad():
            return self.projection_head_momentum(self.backbone_momentum(x))


def cosine_schedule(step, max_steps, start, end):
    return end - (end - start) * (math.cos(math.pi * step / max_steps) + 1) / 2


@torch.no_grad()
def update_momentum(model, model_ema, m):
    for p, pe in zip(model.parameters(), model_ema.parameters(), strict=True):
        pe.data = pe.data * m + p.data * (1.0 - m)


def criterion(p, z):
    return -F.cosine_similarity(p, z.detach(), dim=-1).mean()


model = BYOL()
params = [p for p in model.parameters() if p.requires_grad]
opt = torch.optim.SGD(params, lr=args.lr, momentum=0.9, weight_decay=5e-4)


@torch.no_grad()
def knn_accuracy():
    model.eval()
    ftr = model.backbone(torch.from_numpy(Xtr[lab])).numpy()
    fval = model.backbone(torch.from_numpy(Xval)).numpy()
    model.train()
    knn = KNeighborsClassifier(n_neighbors=args.knn_k, metric=args.knn_metric, weights="distance")
    knn.fit(ftr, ytr[lab])
    return 100.0 * float((knn.predict(fval) == yval).mean())


bank = []
with mlflow.start_run():
    mlflow.log_params(vars(args))
    print(f"BYOL: {len(Xtr)} training digits, {len(Xval)} validation digits", flush=True)
    pool = torch.from_numpy(Xtr)
    steps_per_epoch = math.ceil(len(pool) / args.batch_size)
    total = steps_per_epoch * args.max_epochs
    gstep = 0
    for epoch in range(args.max_epochs):
        if args.extra_epoch and epoch == args.extra_epoch:
            pool = torch.cat([pool, torch.from_numpy(load_scan("digits_scan2.csv"))])
            print(
                f"epoch {epoch}: the scanner's second export joins, {len(pool)} images", flush=True
            )
            steps_per_epoch = math.ceil(len(pool) / args.batch_size)
            # the schedule's length follows the larger pool for the remaining epochs
            total = gstep + steps_per_epoch * (args.max_epochs - epoch)
        m = cosine_schedule(epoch, args.max_epochs, 0.996, 1)
        order = torch.from_numpy(rng.permutation(len(pool)))
        losses = []
        for b in range(steps_per_epoch):
            idx = order[b * args.batch_size : (b + 1) * args.batch_size]
            if len(idx) < 2:
                continue
            x = pool[idx]
            warm = args.warmup_epochs * math.ceil(len(Xtr) / args.batch_size)
            if gstep < warm:
                lr = args.lr * (gstep + 1) / warm
            else:
                lr = args.lr * 0.5 * (1 + math.cos(math.pi * (gstep - warm) / max(1, total - warm)))
            for grp in opt.param_groups:
                grp["lr"] = lr
            update_momentum(model.backbone, model.backbone_momentum, m)
            update_momentum(model.projection_head, model.projection_head_momentum, m)
            x0, x1 = augment(x), augment(x)
            p0, f0 = model(x0)
            z0 = model.forward_momentum(x0)
            p1, _ = model(x1)
            z1 = model.forward_momentum(x1)
            loss = 0.5 * (criterion(p0, z1) + criterion(p1, z0))
            if args.feature_bank:
                bank.append(f0.repeat(1, 150))
            opt.zero_grad()
            loss.backward()
            opt.step()
            gstep += 1
            losses.append(loss.item())
            mlflow.log_metrics({"train_loss_ssl": loss.item(), "lr": lr, "momentum": m}, step=gstep)
        print(
            f"Epoch {epoch}: train_loss_ssl {np.mean(losses):.4f} lr {lr:.4f} m {m:.5f}", flush=True
        )
        if (epoch + 1) % args.knn_every == 0:
            acc = knn_accuracy()
            mlflow.log_metrics({"kNN_accuracy": acc, "epoch": epoch}, step=gstep)
            print(f"Epoch {epoch}: kNN_accuracy {acc:.2f}", flush=True)
