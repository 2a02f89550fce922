"""Self-supervised pretraining as solo-learn trains SimSiam (``main_pretrain.py``: a
``BaseMethod`` LightningModule with an online linear classifier on the detached backbone
features), logged by Lightning's ``MLFlowLogger``.

Plain PyTorch + numpy + the plain ``mlflow`` API (no solo-learn, no Lightning here).  What is
imitated, as solo-learn/Lightning log it:

* solo-learn's ``training_step`` logs with ``on_epoch=True`` (and Lightning's default
  ``on_step=True``), so Lightning writes every name twice: ``<name>_step`` every
  ``log_every_n_steps=50`` (when ``(global_step + 1) % 50 == 0``, at ``step = global_step``)
  and ``<name>_epoch`` (the epoch's mean) at the epoch's end.  The names: ``train_class_loss``,
  ``train_acc1``, ``train_acc5`` (the online classifier, accuracies in percent) and SimSiam's
  ``train_neg_cos_sim`` (the symmetrised negative cosine similarity of predictor output and
  stop-gradient projection, -1 at best) and ``train_z_std`` (the std over the batch of the
  L2-normalised projections, averaged over dimensions: 1/sqrt(dim) when spread, 0 when the
  representation has collapsed);
* at each validation epoch's end ``val_loss``, ``val_acc1``, ``val_acc5`` (the online
  classifier on the validation set);
* ``lr-SGD/pg1`` (backbone, projector, predictor) and ``lr-SGD/pg2`` (classifier) from
  ``LearningRateMonitor(logging_interval="step")``, and ``epoch`` beside every point;
* solo-learn's optimisation: SGD with momentum 0.9, lr scaled by ``batch_size / 256``,
  ``warmup_cosine`` schedule (linear warm-up from ``warmup_start_lr`` over
  ``--warmup_epochs``, then cosine), the predictor at a fixed lr, the classifier with its
  own ``--classifier_lr`` and no weight decay; ``drop_last=True``; a ``Checkpointer`` callback
  saving ``{name}-{run_id}-ep={epoch}.ckpt`` every ``--checkpoint_frequency`` epochs, the name
  formatted from the config (``--name``, e.g. ``simsiam-{dataset}``).

Data: scikit-learn's 8x8 digits (1797 images, 10 classes) split into ``--val_size`` validation
images and the rest for training; two augmented views per image (random 1-pixel shifts,
brightness/contrast jitter, Gaussian noise, random erasing of a 3x3 patch).  The labels come
from a separate ``labels.csv`` joined by image index, as a dataset folder with a label file.
Backbone: an MLP (``--proj_hidden_dim`` wide, BatchNorm + ReLU) to ``--feat_dim`` features;
SimSiam projector (3 layers, BN) to ``--proj_output_dim`` and predictor (bottleneck
``--pred_hidden_dim``).  Written without looking at the doctor.

Faults are real code paths and data: ``--stop_grad 0`` (a refactor that lost the ``.detach()``
on the projection target); ``--lr`` far too high; ``--label_offset K``: the label file sorted
differently from the images, so every label is the label of the image K rows later; a
``--name`` template that names a config key the config no longer has, so the first checkpoint
cannot be named.
"""

import math
import os
import tempfile
import time

import _setup
import mlflow
import numpy as np
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from torch import nn

args = _setup.parse_flags(
    {
        "--dataset": "digits",
        "--name": "simsiam-{dataset}",
        "--max_epochs": 30,
        "--batch_size": 64,
        "--lr": 0.5,
        "--classifier_lr": 0.1,
        "--weight_decay": 1e-5,
        "--warmup_epochs": 2,
        "--warmup_start_lr": 0.0,
        "--feat_dim": 256,
        "--proj_hidden_dim": 256,
        "--proj_output_dim": 256,
        "--pred_hidden_dim": 64,
        "--val_size": 360,
        "--noise": 0.1,
        "--stop_grad": 1,
        "--label_offset": 0,
        "--checkpoint_frequency": 10,
        "--seed": 5,
    }
)
rng = _setup.seeded(args.seed)
LOG_EVERY_N_STEPS = 50

# ----------------------------------------------------------------------------- data
digits = load_digits()
images = digits.data.astype(np.float32) / 16.0
labels = np.roll(digits.target, -args.label_offset)  # labels.csv joined by row index
order = rng.permutation(len(images))
val_idx, tr_idx = order[: args.val_size], order[args.val_size :]
X_tr, y_tr = torch.tensor(images[tr_idx]), torch.tensor(labels[tr_idx])
X_va, y_va = torch.tensor(images[val_idx]), torch.tensor(labels[val_idx])


def augment(x):
    n = len(x)
    img = x.reshape(n, 8, 8)
    dx, dy = torch.randint(-1, 2, (2,)).tolist()
    img = torch.roll(img, shifts=(dy, dx), dims=(1, 2))
    c = 1 + (torch.rand(n, 1, 1) - 0.5) * 0.8
    b = (torch.rand(n, 1, 1) - 0.5) * 0.4
    img = img * c + b + torch.randn_like(img) * args.noise
    erase = torch.rand(n) < 0.5
    r, q = torch.randint(0, 6, (2,)).tolist()
    mask = torch.ones(8, 8)
    mask[r : r + 3, q : q + 3] = 0
    img = torch.where(erase[:, None, None], img * mask, img)
    return img.reshape(n, 64)


# ----------------------------------------------------------------------------- model
def mlp(dims, last_bn=True):
    layers = []
    for i, (a, b) in enumerate(zip(dims[:-1], dims[1:], strict=True)):
        layers.append(nn.Linear(a, b, bias=False))
        if i < len(dims) - 2 or last_bn:
            layers.append(nn.BatchNorm1d(b))
        if i < len(dims) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


H = args.proj_hidden_dim
backbone = nn.Sequential(mlp([64, H, args.feat_dim], last_bn=True), nn.ReLU())
projector = mlp([args.feat_dim, H, H, args.proj_output_dim])
predictor = nn.Sequential(
    nn.Linear(args.proj_output_dim, args.pred_hidden_dim, bias=False),
    nn.BatchNorm1d(args.pred_hidden_dim),
    nn.ReLU(),
    nn.Linear(args.pred_hidden_dim, args.proj_output_dim),
)
classifier = nn.Linear(args.feat_dim, 10)
modules = nn.ModuleList([backbone, projector, predictor, classifier])

scaled_lr = args.lr * args.batch_size / 256
opt = torch.optim.SGD(
    [
        {"params": list(backbone.parameters()) + list(projector.parameters())},
        {"params": predictor.parameters(), "fixed_lr": True},
        {"params": classifier.parameters(), "lr": args.classifier_lr, "weight_decay": 0.0},
    ],
    lr=scaled_lr,
    momentum=0.9,
    weight_decay=args.weight_decay,
)
steps_per_epoch = len(X_tr) // args.batch_size  # drop_last=True
total_steps = steps_per_epoch * args.max_epochs
warmup_steps = steps_per_epoch * args.warmup_epochs


def lr_at(step):
    if step < warmup_steps:
        return args.warmup_start_lr + (scaled_lr - args.warmup_start_lr) * step / warmup_steps
    t = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return 0.5 * scaled_lr * (1 + math.cos(math.pi * t))


def neg_cos(p, z):
    if args.stop_grad:
        z = z.detach()
    return -F.cosine_similarity(p, z, dim=-1).mean()


def accuracy(logits, y):
    top5 = logits.topk(5, dim=1).indices
    return (
        100.0 * (top5[:, 0] == y).float().mean(),
        100.0 * (top5 == y[:, None]).any(1).float().mean(),
    )


# ----------------------------------------------------------------------------- fit
with mlflow.start_run() as run:
    mlflow.log_params(vars(args))
    ckpt_dir = tempfile.mkdtemp()
    print(
        f"  | Name       | Type       | Params\n"
        f"0 | backbone   | MLP        | {sum(p.numel() for p in backbone.parameters()):,}\n"
        f"1 | classifier | Linear     | {sum(p.numel() for p in classifier.parameters()):,}\n"
        f"2 | projector  | Sequential | {sum(p.numel() for p in projector.parameters()):,}\n"
        f"3 | predictor  | Sequential | {sum(p.numel() for p in predictor.parameters()):,}",
        flush=True,
    )
    gs = 0
    for epoch in range(args.max_epochs):
        t0 = time.time()
        modules.train()
        perm = torch.randperm(len(X_tr))
        sums: dict[str, float] = {}
        for b in range(steps_per_epoch):
            idx = perm[b * args.batch_size : (b + 1) * args.batch_size]
            x, y = X_tr[idx], y_tr[idx]
            # warmup_cosine on every group but the predictor's (fixed_lr, as solo-learn)
            opt.param_groups[0]["lr"] = lr_at(gs)
            opt.param_groups[2]["lr"] = args.classifier_lr * lr_at(gs) / scaled_lr
            x1, x2 = augment(x), augment(x)
            f1, f2 = backbone(x1), backbone(x2)
            z1, z2 = projector(f1), projector(f2)
            p1, p2 = predictor(z1), predictor(z2)
            ssl = neg_cos(p1, z2) / 2 + neg_cos(p2, z1) / 2
            logits = classifier(f1.detach())
            class_loss = F.cross_entropy(logits, y)
            opt.zero_grad()
            (ssl + class_loss).backward()
            opt.step()
            with torch.no_grad():
                z_std = F.normalize(z1, dim=-1).std(dim=0).mean()
                acc1, acc5 = accuracy(logits, y)
            m = {
                "train_class_loss": float(class_loss),
                "train_acc1": float(acc1),
                "train_acc5": float(acc5),
                "train_neg_cos_sim": float(ssl),
                "train_z_std": float(z_std),
            }
            for k, v in m.items():
                sums[k] = sums.get(k, 0.0) + v
            if (gs + 1) % LOG_EVERY_N_STEPS == 0:
                out = {f"{k}_step": v for k, v in m.items()}
                out.update(
                    {
                        "lr-SGD/pg1": opt.param_groups[0]["lr"],
                        "lr-SGD/pg2": opt.param_groups[2]["lr"],
                        "epoch": epoch,
                    }
                )
                mlflow.log_metrics(out, step=gs)
            gs += 1
        modules.eval()
        with torch.no_grad():
            vl = classifier(backbone(X_va))
            val_loss = F.cross_entropy(vl, y_va)
            v1, v5 = accuracy(vl, y_va)
        out = {f"{k}_epoch": v / steps_per_epoch for k, v in sums.items()}
        out.update(
            {"val_loss": float(val_loss), "val_acc1": float(v1), "val_acc5": float(v5), "epoch": epoch}
        )  # fmt: skip
        mlflow.log_metrics(out, step=gs - 1)
        print(
            f"Epoch {epoch}: 100%|##########| {steps_per_epoch}/{steps_per_epoch} "
            f"[{time.time() - t0:.1f}s, train_neg_cos_sim={out['train_neg_cos_sim_epoch']:.3f}, "
            f"val_loss={float(val_loss):.3f}, val_acc1={float(v1):.2f}]",
            flush=True,
        )
        if (epoch + 1) % args.checkpoint_frequency == 0:
            name = args.name.format(**vars(args))
            path = os.path.join(ckpt_dir, f"{name}-{run.info.run_id[:8]}-ep={epoch}.ckpt")
            torch.save(modules.state_dict(), path)
            print(f"Checkpoint saved: {os.path.basename(path)}", flush=True)
    print(f"`Trainer.fit` stopped: `max_epochs={args.max_epochs}` reached.", flush=True)
