"""A 2-D segmentation net trained by MONAI's ``SupervisedTrainer`` / ``SupervisedEvaluator``
engines (a small UNet, ``DiceLoss(sigmoid=True)``), logged by MONAI's ``MLFlowHandler``.

Plain torch + the plain ``mlflow`` API (no monai here).  The data are generated: 32x32
"scans" with one to three bright ellipses (the foreground) over smooth noise, 200 training
cases and ``--val_cases`` validation cases; the training cases are stored in case-id order and
``--shuffle 0`` reads them in that order (``DataLoader(shuffle=False)``, as many scripts
leave it).  Validation resamples each image to ``--val_pixdim`` (as a ``Spacingd`` transform:
pixdim 0.5 doubles every side) before inference and back.  The engines' arguments are logged
as params.

As MONAI's MLFlowHandler writes them: on the trainer, every iteration the loss under its tag
name ``Loss`` and the optimizer's ``lr_group_0`` with step = ``engine.state.iteration``
(from 1, over all epochs); at every epoch's end the trainer's metrics (``train_mean_dice``, the
key train metric, over the epoch's predictions) with step = epoch; on the evaluator (run
every ``--val_interval`` epochs) ``val_mean_dice`` and the state attributes ``best_metric``
and ``best_metric_epoch``, with step = the trainer's epoch (``global_epoch_transform``).
There is no validation loss.  The console shows the StatsHandler's ``Epoch: e/E, Iter: i/n
-- Loss: ...`` lines.  Written without looking at the doctor.

Faults are real settings: a learning rate far too high; the cases of a second site (case ids
120-159) whose masks were exported mirrored left-right, read in order (``--mirrored_site 1
--shuffle 0``); a ``post_pred`` that one-hot encodes the prediction into two channels while
the label keeps one (``--post_pred_onehot 1``: the Dice metric refuses the shapes at the first
validation); a ``Spacingd`` pixdim given in the wrong unit (``--val_pixdim 0.01``: the
validation images are resampled a hundredfold per side).
"""

import time
from datetime import datetime

import _setup
import mlflow
import numpy as np
import torch
import torch.nn.functional as F

args = _setup.parse_flags(
    {
        "--seed": 0,
        "--max_epochs": 25,
        "--batch_size": 16,
        "--val_cases": 40,
        "--val_interval": 1,
        "--lr": 0.001,
        "--optimizer": "Adam",
        "--lr_scheduler": "none",
        "--channels": 16,
        "--shuffle": 1,
        "--mirrored_site": 0,
        "--post_pred_onehot": 0,
        "--val_pixdim": 1.0,
        "--val_batch_size": 8,
        "--noise": 0.35,
    }
)
rng = _setup.seeded(args.seed)


def log(msg):
    stamp = datetime.now().strftime("%Y-%m-%d %H:%M:%S,%f")[:-3]
    print(f"{stamp} - INFO - {msg}", flush=True)


# ---------------------------------------------------------------- data
S = 32
data_rng = np.random.default_rng(777)  # the cases are fixed; --seed moves the training
yy, xx = np.mgrid[0:S, 0:S].astype(np.float32)


def make_case():
    mask = np.zeros((S, S), bool)
    for _ in range(data_rng.integers(1, 4)):
        cy, cx = data_rng.uniform(6, S - 6, 2)
        ay, ax = data_rng.uniform(2.5, 7, 2)
        th = data_rng.uniform(0, np.pi)
        dy, dx = yy - cy, xx - cx
        u = dx * np.cos(th) + dy * np.sin(th)
        v = -dx * np.sin(th) + dy * np.cos(th)
        mask |= (u / ax) ** 2 + (v / ay) ** 2 <= 1.0
    noise = data_rng.normal(0, 1, (S // 4, S // 4)).astype(np.float32)
    noise = np.kron(noise, np.ones((4, 4), np.float32)) * 0.3
    img = mask * data_rng.uniform(0.6, 1.0) + noise + data_rng.normal(0, args.noise, (S, S))
    return img.astype(np.float32), mask.astype(np.float32)


cases = [make_case() for _ in range(200 + args.val_cases)]
train_img = np.stack([c[0] for c in cases[:200]])[:, None]
train_seg = np.stack([c[1] for c in cases[:200]])[:, None]
if args.mirrored_site:
    train_seg[120:160] = train_seg[120:160, :, :, ::-1].copy()  # site B exported mirrored masks
val_img = torch.from_numpy(np.stack([c[0] for c in cases[200:]])[:, None])
val_seg = torch.from_numpy(np.stack([c[1] for c in cases[200:]])[:, None])


# ---------------------------------------------------------------- model
class UNet(torch.nn.Module):
    def __init__(self, c):
        super().__init__()

        def block(i, o, stride=1):
            return torch.nn.Sequential(
                torch.nn.Conv2d(i, o, 3, stride, 1),
                torch.nn.InstanceNorm2d(o, affine=True),
                torch.nn.PReLU(),
            )

        self.e1 = block(1, c)
        self.e2 = block(c, 2 * c, 2)
        self.b = block(2 * c, 2 * c)
        self.up = torch.nn.ConvTranspose2d(2 * c, c, 2, 2)
        self.d1 = block(2 * c, c)
        self.out = torch.nn.Conv2d(c, 1, 1)

    def forward(self, x):
        a = self.e1(x)
        b = self.b(self.e2(a))
        return self.out(self.d1(torch.cat([a, self.up(b)], 1)))


model = UNet(args.channels)
if args.optimizer == "SGD":
    opt = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9)
else:
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
iters_per_epoch = -(-200 // args.batch_size)
sched = None
if args.lr_scheduler == "cosine":
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=args.max_epochs * iters_per_epoch)
elif args.lr_scheduler == "step":
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=10 * iters_per_epoch, gamma=0.5)


def dice_loss(logits, seg, smooth=1e-5):
    p = torch.sigmoid(logits)
    inter = (p * seg).sum((2, 3))
    den = p.sum((2, 3)) + seg.sum((2, 3))
    return (1.0 - (2.0 * inter + smooth) / (den + smooth)).mean()


def mean_dice(pred, seg):
    """DiceMetric(include_background=True, reduction="mean") over binarised predictions."""
    if pred.shape != seg.shape:
        raise ValueError(
            f"y_pred and y should have same shapes, got {tuple(pred.shape)} and {tuple(seg.shape)}."
        )
    inter = (pred * seg).sum((2, 3))
    den = pred.sum((2, 3)) + seg.sum((2, 3))
    d = 2.0 * inter / den
    return d[den > 0]


def post_pred(logits):
    if args.post_pred_onehot:  # AsDiscrete(argmax=True, to_onehot=2) on a 1-channel output
        cls = (logits > 0).long()[:, 0]
        return F.one_hot(cls, 2).permute(0, 3, 1, 2).float()
    return (torch.sigmoid(logits) > 0.5).float()  # AsDiscrete(threshold=0.5)


def evaluate():
    model.eval()
    dices = []
    with torch.no_grad():
        for s in range(0, len(val_img), args.val_batch_size):
            x = val_img[s : s + args.val_batch_size]
            if args.val_pixdim != 1.0:  # Spacingd(pixdim=...) then Invertd back
                x = F.interpolate(x, scale_factor=1.0 / args.val_pixdim, mode="bilinear")
            logits = model(x)
            if args.val_pixdim != 1.0:
                logits = F.interpolate(logits, size=(S, S), mode="bilinear")
            dices.append(mean_dice(post_pred(logits), val_seg[s : s + args.val_batch_size]))
    model.train()
    return torch.cat(dices).mean().item()


with mlflow.start_run():
    mlflow.log_params(vars(args) | {"network": "UNet", "loss_function": "DiceLoss(sigmoid=True)"})
    iteration, best_metric, best_epoch = 0, -1.0, -1
    t0 = time.time()
    for epoch in range(1, args.max_epochs + 1):
        order = rng.permutation(200) if args.shuffle else np.arange(200)
        train_d = []
        for i in range(iters_per_epoch):
            idx = order[i * args.batch_size : (i + 1) * args.batch_size]
            x, seg = torch.from_numpy(train_img[idx]), torch.from_numpy(train_seg[idx])
            logits = model(x)
            loss = dice_loss(logits, seg)
            opt.zero_grad()
            loss.backward()
            opt.step()
            iteration += 1
            lr_now = opt.param_groups[0]["lr"]
            if sched is not None:
                sched.step()
            with torch.no_grad():
                train_d.append(mean_dice((torch.sigmoid(logits) > 0.5).float(), seg))
            mlflow.log_metrics({"Loss": loss.item(), "lr_group_0": lr_now}, step=iteration)
            log(
                f"Epoch: {epoch}/{args.max_epochs}, Iter: {i + 1}/{iters_per_epoch} -- Loss: {loss.item():.4f}"
            )
        tmd = torch.cat(train_d).mean().item()
        mlflow.log_metrics({"train_mean_dice": tmd}, step=epoch)
        log(f"Epoch[{epoch}] Metrics -- train_mean_dice: {tmd:.4f}")
        log(f"Epoch[{epoch}] Complete. Time taken: {time.time() - t0:.2f}s")
        if epoch % args.val_interval == 0:
            vmd = evaluate()
            if vmd > best_metric:
                best_metric, best_epoch = vmd, epoch
                log(f"Got new best metric of val_mean_dice: {vmd:.4f}")
            mlflow.log_metrics(
                {"val_mean_dice": vmd, "best_metric": best_metric, "best_metric_epoch": best_epoch},
                step=epoch,
            )
            log(f"Epoch[{epoch}] Metrics -- val_mean_dice: {vmd:.4f}")
    log(
        f"Train completed, saved final checkpoint, best_metric: {best_metric:.4f} at epoch: {best_epoch}"
    )
