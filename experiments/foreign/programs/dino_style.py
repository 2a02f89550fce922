"""facebookresearch/dino's ``main_dino.py`` self-distillation on a tiny MLP backbone, the
MetricLogger's per-iteration numbers and the per-epoch averages mirrored to MLflow by the team.

Plain PyTorch + the plain ``mlflow`` API (no dino import here).  What is imitated:

* ``MultiCropWrapper``: a backbone and a ``DINOHead`` (MLP, L2-normalised bottleneck, a
  weight-normalised last layer of ``out_dim`` prototypes) for the student; the teacher is the
  same network updated only as an EMA of the student (``momentum_teacher`` raised to 1 by a
  cosine schedule);
* ``DINOLoss``: the teacher's outputs centred (``center_momentum`` 0.9) and sharpened (teacher
  temperature warmed up linearly from ``warmup_teacher_temp`` to ``teacher_temp`` over
  ``warmup_teacher_temp_epochs``), cross-entropy against the student at ``student_temp`` 0.1
  over all pairs of different views;
* the schedules of ``utils.cosine_scheduler``: lr linearly warmed up for ``warmup_epochs`` to
  ``lr * batch_size / 256`` then cosine to ``min_lr``; weight decay cosine from
  ``weight_decay`` to ``weight_decay_end``; AdamW; ``clip_grad`` 3.0; the last layer frozen for
  the first ``freeze_last_layer`` epochs;
* the MetricLogger's per-iteration ``loss``, ``lr``, ``wd`` and the team's ``momentum`` (the
  teacher's EMA rate) at step = global iteration from 1; per epoch ``train_loss`` (the epoch's
  averaged loss) at step = epoch from 1 and, every ``knn_every`` epochs,
  ``eval_knn.py``'s weighted 20-NN accuracy of the teacher backbone's features on the held-out
  images (``knn_top1``, ``knn_top5``, in percent).

Data: scikit-learn's 8 x 8 digits (1,400 train / 397 held out, the held-out ones re-scanned:
shifted by up to a pixel, noisier), standardised per pixel, two augmented global views per
image (random shift, pixel dropout, Gaussian jitter).  Written without looking at the doctor.

Team options (the faults are real settings, data and code paths):

* ``--lr``, ``--batch_size_per_gpu``, ``--epochs``, ``--hidden``, ``--out_dim``,
  ``--warmup_epochs``, ``--warmup_teacher_temp_epochs``, ``--momentum_teacher``,
  ``--weight_decay_end``, ``--knn_every``;
* ``--extra_data_epoch k``: a second scanner's 900 re-scanned digits join the unlabelled pool at
  epoch k; ``--extra_data_missing`` how its unread pixels are written (``zero`` or ``nan``,
  taken as is by the team's loader);
* ``--feature_monitor 1``: the team's collapse monitor keeps the student's outputs on the whole
  training set every iteration for an end-of-run plot;
* ``--saveckp_freq k`` with ``--saveckp_keys``: every k epochs a checkpoint dict of those
  fields is saved (read from the run's state by name).
"""

import copy
import math
import os
import tempfile
import time

import _setup
import mlflow
import numpy as np
import torch
import torch.nn as nn
from mlflow.entities import Metric
from mlflow.tracking import MlflowClient
from sklearn.datasets import load_digits
from torch.nn import functional as F

args = _setup.parse_flags(
    {
        "--seed": 0,
        "--lr": 0.008,
        "--min_lr": 1e-6,
        "--batch_size_per_gpu": 64,
        "--epochs": 30,
        "--hidden": 256,
        "--out_dim": 256,
        "--warmup_epochs": 2,
        "--warmup_teacher_temp": 0.02,
        "--teacher_temp": 0.04,
        "--warmup_teacher_temp_epochs": 10,
        "--momentum_teacher": 0.99,
        "--weight_decay": 0.04,
        "--weight_decay_end": 0.4,
        "--freeze_last_layer": 1,
        "--clip_grad": 3.0,
        "--knn_every": 5,
        "--extra_data_epoch": 0,
        "--extra_data_missing": "zero",
        "--feature_monitor": 0,
        "--saveckp_freq": 0,
        "--saveckp_keys": "student,teacher,optimizer,epoch,dino_loss",
    }
)
rng = _setup.seeded(args.seed)

# ----------------------------------------------------------------------------- data
d = load_digits()
X = (d.data / 16.0).astype(np.float32)
y = d.target.astype(np.int64)
perm = np.random.default_rng(11).permutation(len(X))
tr, te = perm[:1400], perm[1400:]
mean, std = X[tr].mean(0), X[tr].std(0) + 0.1
X = (X - mean) / std
Xtr, ytr = X[tr], y[tr]
# the held-out images are the second scanner's re-scans of the test digits: framed up to one
# pixel off and noisier, so the k-NN probe rewards features invariant to that
_g = np.random.default_rng(123)
_img = X[te].reshape(-1, 8, 8).copy()
for _i in range(len(_img)):
    _dx, _dy = _g.integers(-1, 2, 2)
    _img[_i] = np.roll(np.roll(_img[_i], _dx, axis=0), _dy, axis=1)
Xte = (_img.reshape(-1, 64) + _g.normal(0, 0.3, (len(te), 64))).astype(np.float32)
yte = y[te]


def second_scanner():
    g = np.random.default_rng(5000 + args.seed)
    ix = g.choice(len(Xtr), 900, replace=False)
    x = (Xtr[ix] + g.normal(0, 0.1, (900, 64))).astype(np.float32)
    unread = g.random(x.shape) < 0.01
    x[unread] = np.nan if args.extra_data_missing == "nan" else 0.0
    return x


def augment(xb):
    """A global crop: shift by up to one pixel, drop 10 % of pixels, jitter."""
    n = len(xb)
    img = xb.reshape(n, 8, 8)
    dx, dy = rng.integers(-1, 2, 2)
    img = np.roll(np.roll(img, dx, axis=1), dy, axis=2)
    img = img * (rng.random(img.shape) > 0.1) + rng.normal(0, 0.2, img.shape)
    return torch.tensor(img.reshape(n, 64), dtype=torch.float32)


# ----------------------------------------------------------------------------- model
class DINOHead(nn.Module):
    def __init__(self, in_dim, out_dim, bottleneck=64):
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(in_dim, args.hidden), nn.GELU(), nn.Linear(args.hidden, bottleneck)
        )
        self.last_layer = nn.utils.parametrizations.weight_norm(
            nn.Linear(bottleneck, out_dim, bias=False)
        )
        # norm_last_layer: the weight-norm gain fixed to 1
        self.last_layer.parametrizations.weight.original0.data.fill_(1.0)
        self.last_layer.parametrizations.weight.original0.requires_grad = False

    def forward(self, x):
        x = F.normalize(self.mlp(x), dim=-1)
        return self.last_layer(x)


class MultiCropWrapper(nn.Module):
    def __init__(self):
        super().__init__()
        self.backbone = nn.Sequential(
            nn.Linear(64, args.hidden), nn.GELU(), nn.Linear(args.hidden, args.hidden), nn.GELU()
        )
        self.head = DINOHead(args.hidden, args.out_dim)

    def forward(self, x):
        return self.head(self.backbone(x))


student = MultiCropWrapper()
teacher = copy.deepcopy(student)
for p in teacher.parameters():
    p.requires_grad = False


class DINOLoss(nn.Module):
    def __init__(self):
        super().__init__()
        self.student_temp = 0.1
        self.center_momentum = 0.9
        self.register_buffer("center", torch.zeros(1, args.out_dim))
        self.teacher_temp_schedule = np.concatenate(
            (
                np.linspace(
                    args.warmup_teacher_temp, args.teacher_temp, args.warmup_teacher_temp_epochs
                ),
                np.ones(args.epochs - args.warmup_teacher_temp_epochs) * args.teacher_temp,
            )
        )

    def forward(self, student_out, teacher_out, epoch):
        s = [o / self.student_temp for o in student_out]
        temp = self.teacher_temp_schedule[epoch]
        t = [F.softmax((o - self.center) / temp, dim=-1).detach() for o in teacher_out]
        total, n = 0, 0
        for iq, q in enumerate(t):
            for v, sv in enumerate(s):
                if v == iq:
                    continue
                total = total + torch.sum(-q * F.log_softmax(sv, dim=-1), dim=-1).mean()
                n += 1
        self.update_center(torch.cat(teacher_out))
        return total / n

    @torch.no_grad()
    def update_center(self, teacher_output):
        batch_center = teacher_output.mean(0, keepdim=True)
        self.center = self.center * self.center_momentum + batch_center * (1 - self.center_momentum)


dino_loss = DINOLoss()


def cosine_scheduler(base, final, epochs, niter, warmup_epochs=0, start_warmup=0):
    warmup = np.array([])
    wi = warmup_epochs * niter
    if warmup_epochs > 0:
        warmup = np.linspace(start_warmup, base, wi)
    iters = np.arange(epochs * niter - wi)
    sched = final + 0.5 * (base - final) * (1 + np.cos(np.pi * iters / len(iters)))
    return np.concatenate((warmup, sched))


trainable = [(n, p) for n, p in student.named_parameters() if p.requires_grad]
regularized = [p for n, p in trainable if not n.endswith(".bias")]
not_regularized = [p for n, p in trainable if n.endswith(".bias")]
optimizer = torch.optim.AdamW(
    [{"params": regularized}, {"params": not_regularized, "weight_decay": 0.0}]
)


@torch.no_grad()
def knn_eval(k=20, T=0.07):
    train_f = F.normalize(teacher.backbone(torch.tensor(Xtr)), dim=1)
    test_f = F.normalize(teacher.backbone(torch.tensor(Xte)), dim=1)
    sim = test_f @ train_f.T
    dist, idx = sim.topk(k, dim=1)
    cand = torch.tensor(ytr)[idx]
    w = (dist / T).exp()
    votes = torch.zeros(len(Xte), 10).scatter_add_(1, cand, w)
    pred = votes.argsort(1, descending=True)
    yt = torch.tensor(yte)
    top1 = (pred[:, 0] == yt).float().mean().item() * 100
    top5 = (pred[:, :5] == yt[:, None]).any(1).float().mean().item() * 100
    return top1, top5


with mlflow.start_run() as active:
    run_id, client = active.info.run_id, MlflowClient()
    mlflow.log_params(vars(args))
    pool = Xtr
    bs = args.batch_size_per_gpu
    niter = len(pool) // bs
    lr_schedule = cosine_scheduler(
        args.lr * bs / 256.0, args.min_lr, args.epochs, niter, args.warmup_epochs
    )
    wd_schedule = cosine_scheduler(args.weight_decay, args.weight_decay_end, args.epochs, niter)
    momentum_schedule = cosine_scheduler(args.momentum_teacher, 1, args.epochs, niter)
    monitor = []
    ckpt_dir = tempfile.mkdtemp(prefix="dino-ckpt-")
    print(f"Data loaded: there are {len(pool)} images.", flush=True)
    it = 0
    t0 = time.time()
    for epoch in range(args.epochs):
        if args.extra_data_epoch and epoch + 1 == args.extra_data_epoch:
            pool = np.concatenate([Xtr, second_scanner()])
            print(f"epoch {epoch + 1}: second scanner joined, {len(pool)} images", flush=True)
        order = rng.permutation(len(pool))
        losses, pending = [], []
        for b in range(niter):
            gi = min(it, len(lr_schedule) - 1)
            for i, group in enumerate(optimizer.param_groups):
                group["lr"] = lr_schedule[gi]
                if i == 0:
                    group["weight_decay"] = wd_schedule[gi]
            xb = pool[order[b * bs : (b + 1) * bs]]
            views = [augment(xb), augment(xb)]
            teacher_output = [teacher(v) for v in views]
            student_output = [student(v) for v in views]
            loss = dino_loss(student_output, teacher_output, epoch)
            if not math.isfinite(loss.item()):
                print(f"Loss is {loss.item()}, stopping training", flush=True)
            optimizer.zero_grad()
            loss.backward()
            nn.utils.clip_grad_norm_(student.parameters(), args.clip_grad)
            if epoch < args.freeze_last_layer:
                for n, p in student.named_parameters():
                    if "last_layer" in n:
                        p.grad = None
            optimizer.step()
            with torch.no_grad():
                m = momentum_schedule[gi]
                for ps, pt in zip(student.parameters(), teacher.parameters(), strict=True):
                    pt.data.mul_(m).add_((1 - m) * ps.detach().data)
            if args.feature_monitor:
                monitor.append(student(torch.tensor(Xtr)))  # kept with its graph
            it += 1
            losses.append(loss.item())
            ts = int(time.time() * 1000)
            vals = {
                "loss": loss.item(),
                "lr": lr_schedule[gi],
                "wd": wd_schedule[gi],
                "momentum": m,
            }
            pending += [Metric(k, float(v), ts, it) for k, v in vals.items()]
            if it % 10 == 0:
                print(
                    f"Epoch: [{epoch}/{args.epochs}]  [{b}/{niter}]  loss: {loss.item():.6f}  "
                    f"lr: {lr_schedule[gi]:.6f}  wd: {wd_schedule[gi]:.6f}",
                    flush=True,
                )
        client.log_batch(run_id, metrics=pending)
        train_loss = float(np.mean(losses))
        mlflow.log_metric("train_loss", train_loss, step=epoch + 1)
        print(f"Averaged stats: loss: {train_loss:.6f}", flush=True)
        if (epoch + 1) % args.knn_every == 0 or epoch + 1 == args.epochs:
            top1, top5 = knn_eval()
            mlflow.log_metrics({"knn_top1": top1, "knn_top5": top5}, step=epoch + 1)
            print(f"20-NN classifier result: Top1: {top1:.2f}, Top5: {top5:.2f}", flush=True)
        if args.saveckp_freq and (epoch + 1) % args.saveckp_freq == 0:
            state = {
                "student": student.state_dict(),
                "teacher": teacher.state_dict(),
                "optimizer": optimizer.state_dict(),
                "epoch": epoch + 1,
                "args": vars(args),
                "dino_loss": dino_loss.state_dict(),
            }
            save_dict = {k: state[k] for k in args.saveckp_keys.split(",")}
            torch.save(save_dict, os.path.join(ckpt_dir, f"checkpoint{epoch + 1:04}.pth"))
            print(f"saved checkpoint{epoch + 1:04}.pth", flush=True)
    print(f"Training time {time.time() - t0:.1f} s", flush=True)
