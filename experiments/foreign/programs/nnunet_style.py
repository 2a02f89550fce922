"""A 2d nnU-Net (``nnUNetTrainer``, ``2d`` configuration) trained on a small synthetic CT
dataset, its ``nnUNetLogger`` entries mirrored into MLflow as ``nnUNetLoggerTB`` writes them.

Plain PyTorch + numpy + the plain ``mlflow`` API (no nnunetv2 here).  The plans (patch size,
batch size, features per stage, ...) and the trainer's settings are logged as params.  As the
logger records them, one value per epoch (MLflow step = the epoch, from 0): ``lrs`` (the poly
learning rate set at the epoch's start), ``epoch_start_timestamps`` and ``epoch_end_timestamps``
(wall-clock ``time()``, seconds since 1970: the epoch's duration is their difference),
``train_losses`` (mean of the epoch's ``--num_iterations_per_epoch`` iteration losses),
``val_losses`` (mean over ``--num_val_iterations_per_epoch`` validation batches),
``mean_fg_dice`` (the pseudo Dice: per foreground class 2 TP / (2 TP + FP + FN) summed over the
validation batches, then the mean over classes), ``ema_fg_dice`` (0.9 * previous + 0.1 *
mean_fg_dice) and ``dice_per_class_or_region`` (its first entry, class 1, as the TB logger
writes a list).  The loss is nnU-Net's ``DC_and_CE_loss`` under deep supervision: cross-entropy
plus the *negative* soft Dice of the foreground classes (batch Dice), so it starts near +1 and
falls below 0 as the network learns (about -0.8 when segmenting well).  The console shows
nnU-Net's ``Epoch N``, ``Current learning rate``, ``train_loss``, ``val_loss``, ``Pseudo dice``,
``Epoch time`` and ``Yayy! New best EMA pseudo Dice`` lines.  Written without looking at the
doctor.

Data: ``--num_cases`` generated CT volumes (air, a body ellipse of soft tissue, an organ,
label 1, with lesions inside, label 2; Gaussian noise), preprocessed as nnU-Net does
(``CTNormalization``: clip to the foreground's 0.5/99.5 percentiles, z-score with its mean and
std), saved as ``.npz`` and unpacked to ``.npy`` (``unpack_dataset``); 5-fold split, ``--fold``
held out for validation.  The 2d data loader samples a case, a slice and a patch, a third of
each batch forced to contain foreground (``oversample_foreground_percent``), with mirroring,
rotation by 90 degrees, multiplicative brightness, gamma and Gaussian noise augmentation
(``--no_da 1``: nnUNetTrainerNoDA).  Network: PlainConvUNet (conv-InstanceNorm-LeakyReLU
twice per stage, strided-conv downsampling, transposed-conv upsampling, a segmentation head per
decoder stage); SGD (nesterov, momentum 0.99, weight decay 3e-5), poly learning rate, gradient
norm clipped at 12.

Faults are real settings: ``--initial_lr`` far too high; ``--npz_from_epoch K`` - from epoch K
the unpacked ``.npy`` files are gone (a scratch-disk clean-up) and the loader falls back to
decompressing each case's ``.npz`` every time it samples it, as nnU-Net does when no ``.npy``
exists; ``--keep_loss_graph 1`` - a trainer variant that back-propagates with
``retain_graph=True`` and logs ``torch.stack(losses).mean()`` without ``detach``, so every
epoch's loss keeps that epoch's graphs and their saved activations alive in the logger's list;
``--stray_label_case K`` - case K's segmentation carries a small patch of label 3, a class the
dataset does not have (no ``--verify_dataset_integrity`` run); ``--num_train_cases`` a handful
of cases with ``--no_da 1`` for many epochs.
"""

import datetime
import os
import shutil
import tempfile
import time

import _setup
import mlflow
import numpy as np
import torch
import torch.nn.functional as F

args = _setup.parse_flags(
    {
        "--seed": 0,
        "--fold": 0,
        "--num_cases": 30,
        "--num_train_cases": 0,  # 0: all cases of the fold's training split
        "--slices": 24,
        "--image_size": 48,
        "--patch_size": 40,
        "--batch_size": 8,
        "--features": "8,16,32",
        "--num_epochs": 20,
        "--num_iterations_per_epoch": 12,
        "--num_val_iterations_per_epoch": 6,
        "--initial_lr": 3e-2,
        "--weight_decay": 3e-5,
        "--oversample_foreground_percent": 0.33,
        "--noise": 50.0,
        "--no_da": 0,
        "--npz_from_epoch": -1,
        "--keep_loss_graph": 0,
        "--stray_label_case": -1,
    }
)
rng = _setup.seeded(args.seed)
features = [int(f) for f in args.features.split(",")]
num_classes = 3  # background, organ, lesion
P = args.patch_size


def log(msg):
    print(f"{datetime.datetime.now()}: {msg}", flush=True)


# ---------------------------------------------------------------- dataset (fixed; seed 2025)
data_rng = np.random.default_rng(2025)
raw_dir = tempfile.mkdtemp(prefix="nnUNet_preprocessed_")


def make_case():
    Z, S = args.slices, args.image_size
    z, y, x = np.meshgrid(np.arange(Z), np.arange(S), np.arange(S), indexing="ij")
    img = np.full((Z, S, S), -1000.0)
    seg = np.zeros((Z, S, S), np.int8)
    by, bx = data_rng.uniform(0.36, 0.46) * S, data_rng.uniform(0.40, 0.48) * S
    body = ((y - S / 2) / by) ** 2 + ((x - S / 2) / bx) ** 2 < 1
    img[body] = 40.0
    cz, cy, cx = data_rng.uniform(0.35, 0.65) * Z, *data_rng.uniform(0.4, 0.6, 2) * S
    rz, ry, rx = data_rng.uniform(0.3, 0.45) * Z, *data_rng.uniform(0.14, 0.24, 2) * S
    organ = ((z - cz) / rz) ** 2 + ((y - cy) / ry) ** 2 + ((x - cx) / rx) ** 2 < 1
    img[organ] = data_rng.uniform(90, 120)
    seg[organ] = 1
    for _ in range(data_rng.integers(1, 4)):
        lz, ly, lx = (
            cz + data_rng.uniform(-0.5, 0.5) * rz,
            cy + data_rng.uniform(-0.5, 0.5) * ry,
            cx + data_rng.uniform(-0.5, 0.5) * rx,
        )
        r = data_rng.uniform(0.08, 0.14) * S
        les = organ & (((z - lz) * S / Z / 1.5) ** 2 + (y - ly) ** 2 + (x - lx) ** 2 < r**2)
        img[les] = data_rng.uniform(-20, 20)
        seg[les] = 2
    img += data_rng.normal(0, args.noise, img.shape)
    img[body] = img[body] * data_rng.uniform(0.85, 1.15) + data_rng.normal(0, 20)  # scanner
    return img.astype(np.float32), seg


cases = [f"CT_{i:03d}" for i in range(args.num_cases)]
fg_values = []
raw = {}
for i, c in enumerate(cases):
    raw[c] = make_case()
    if i == args.stray_label_case:  # an annotator's extra "vessel" label, not in dataset.json
        seg = raw[c][1]
        zs = np.argwhere(seg.any((1, 2)))[:, 0]
        z = zs[len(zs) // 2]
        yx = np.argwhere(seg[z] == 1)
        y, x = yx[len(yx) // 2]
        seg[z, max(y - 2, 0) : y + 2, max(x - 2, 0) : x + 2] = 3
    fg_values.append(raw[c][0][raw[c][1] > 0][::10])
fg = np.concatenate(fg_values)
lo, hi = np.percentile(fg, [0.5, 99.5])
mean, std = fg[(fg >= lo) & (fg <= hi)].mean(), fg[(fg >= lo) & (fg <= hi)].std()
class_locations = {}
for c in cases:
    img, seg = raw[c]
    data = ((np.clip(img, lo, hi) - mean) / max(std, 1e-8)).astype(np.float32)
    np.savez_compressed(os.path.join(raw_dir, f"{c}.npz"), data=data[None], seg=seg[None])
    np.save(os.path.join(raw_dir, f"{c}.npy"), data[None])  # unpack_dataset
    np.save(os.path.join(raw_dir, f"{c}_seg.npy"), seg[None])
    class_locations[c] = {k: np.argwhere(seg == k) for k in (1, 2)}
del raw
folds = np.array_split(np.random.default_rng(12345).permutation(len(cases)), 5)
val_keys = [cases[i] for i in folds[args.fold]]
tr_keys = [c for c in cases if c not in val_keys]
if args.num_train_cases:
    tr_keys = tr_keys[: args.num_train_cases]


def load_case(key):
    """nnUNetDataset.load_case: the unpacked .npy when it exists (memory-mapped), else the
    compressed .npz."""
    npy = os.path.join(raw_dir, f"{key}.npy")
    if os.path.isfile(npy):
        return np.load(npy, mmap_mode="r"), np.load(npy[:-4] + "_seg.npy", mmap_mode="r")
    with np.load(os.path.join(raw_dir, f"{key}.npz")) as z:
        return z["data"], z["seg"]


def get_batch(keys, augment):
    B, S = args.batch_size, args.image_size
    xs = np.zeros((B, 1, P, P), np.float32)
    ys = np.zeros((B, 1, P, P), np.int64)
    for b in range(B):
        key = keys[rng.integers(len(keys))]
        data, seg = load_case(key)
        force_fg = b >= round(B * (1 - args.oversample_foreground_percent))
        locs = class_locations[key][int(rng.integers(1, 3))] if force_fg else None
        if force_fg and len(locs):
            zc, yc, xc = locs[rng.integers(len(locs))]
            y0 = int(np.clip(yc - P // 2 + rng.integers(-P // 4, P // 4 + 1), 0, S - P))
            x0 = int(np.clip(xc - P // 2 + rng.integers(-P // 4, P // 4 + 1), 0, S - P))
        else:
            zc = rng.integers(data.shape[1])
            y0, x0 = rng.integers(0, S - P + 1, 2)
        xs[b, 0] = data[0, zc, y0 : y0 + P, x0 : x0 + P]
        ys[b, 0] = seg[0, zc, y0 : y0 + P, x0 : x0 + P]
    if augment and not args.no_da:
        for b in range(B):
            k = int(rng.integers(4))
            xs[b], ys[b] = np.rot90(xs[b], k, (1, 2)).copy(), np.rot90(ys[b], k, (1, 2)).copy()
            for ax in (1, 2):
                if rng.random() < 0.5:
                    xs[b], ys[b] = np.flip(xs[b], ax).copy(), np.flip(ys[b], ax).copy()
            if rng.random() < 0.1:
                xs[b] += rng.normal(0, rng.uniform(0, 0.1), xs[b].shape).astype(np.float32)
            if rng.random() < 0.15:
                xs[b] *= rng.uniform(0.75, 1.25)
            if rng.random() < 0.3:
                mn, rnge = xs[b].min(), xs[b].max() - xs[b].min() + 1e-7
                xs[b] = ((xs[b] - mn) / rnge) ** rng.uniform(0.7, 1.5) * rnge + mn
    x, y = torch.from_numpy(xs), torch.from_numpy(ys)
    return x, [y, F.interpolate(y.float(), scale_factor=0.5, mode="nearest").long()]


# ---------------------------------------------------------------- network, loss
def conv_block(cin, cout, stride):
    return torch.nn.Sequential(
        torch.nn.Conv2d(cin, cout, 3, stride, 1),
        torch.nn.InstanceNorm2d(cout, eps=1e-5, affine=True),
        torch.nn.LeakyReLU(0.01, inplace=True),
        torch.nn.Conv2d(cout, cout, 3, 1, 1),
        torch.nn.InstanceNorm2d(cout, eps=1e-5, affine=True),
        torch.nn.LeakyReLU(0.01, inplace=True),
    )


class PlainConvUNet(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.stages = torch.nn.ModuleList()
        cin = 1
        for i, f in enumerate(features):
            self.stages.append(conv_block(cin, f, 1 if i == 0 else 2))
            cin = f
        self.transpconvs = torch.nn.ModuleList()
        self.dec = torch.nn.ModuleList()
        self.seg_layers = torch.nn.ModuleList()
        for f_skip, f_below in zip(features[-2::-1], features[:0:-1], strict=True):
            self.transpconvs.append(torch.nn.ConvTranspose2d(f_below, f_skip, 2, 2))
            self.dec.append(conv_block(2 * f_skip, f_skip, 1))
            self.seg_layers.append(torch.nn.Conv2d(f_skip, num_classes, 1))

    def forward(self, x):
        skips = []
        for s in self.stages:
            x = s(x)
            skips.append(x)
        x, outs = skips[-1], []
        for i, (tc, dec, head) in enumerate(
            zip(self.transpconvs, self.dec, self.seg_layers, strict=True)
        ):
            x = dec(torch.cat([tc(x), skips[-2 - i]], 1))
            outs.append(head(x))
        return outs[::-1][:2]  # deep supervision: full and half resolution


def dc_and_ce_loss(logits, target):
    ce = F.cross_entropy(logits, target[:, 0])
    probs = logits.softmax(1)[:, 1:]
    onehot = F.one_hot(target[:, 0], num_classes).permute(0, 3, 1, 2)[:, 1:].float()
    axes = (0, 2, 3)  # batch dice
    intersect = (probs * onehot).sum(axes)
    dc = (2 * intersect + 1e-5) / (probs.sum(axes) + onehot.sum(axes) + 1e-5).clamp_min(1e-8)
    return ce - dc.mean()


ds_weights = np.array([1.0, 0.5])
ds_weights = ds_weights / ds_weights.sum()


def deep_supervision_loss(outputs, targets):
    return sum(
        w * dc_and_ce_loss(o, t) for w, o, t in zip(ds_weights, outputs, targets, strict=True)
    )


network = PlainConvUNet()
optimizer = torch.optim.SGD(
    network.parameters(),
    args.initial_lr,
    weight_decay=args.weight_decay,
    momentum=0.99,
    nesterov=True,
)


def poly_lr(epoch):
    return args.initial_lr * (1 - epoch / args.num_epochs) ** 0.9


logging = {
    k: []
    for k in (
        "mean_fg_dice",
        "ema_fg_dice",
        "dice_per_class_or_region",
        "train_losses",
        "val_losses",
        "lrs",
        "epoch_start_timestamps",
        "epoch_end_timestamps",
    )
}


def logger_log(key, value, epoch):
    """nnUNetLoggerTB.log: one entry per epoch; a list is written as its first element."""
    logging[key].append(value)
    mlflow.log_metric(key, float(value[0] if isinstance(value, list) else value), step=epoch)
    if key == "mean_fg_dice":
        prev = logging["ema_fg_dice"]
        logger_log("ema_fg_dice", prev[-1] * 0.9 + 0.1 * value if prev else value, epoch)


with mlflow.start_run():
    mlflow.log_params(
        vars(args)
        | {
            "configuration": "2d",
            "trainer": "nnUNetTrainerNoDA" if args.no_da else "nnUNetTrainer",
            "plans": "nnUNetPlans",
            "num_training_cases": len(tr_keys),
            "num_validation_cases": len(val_keys),
        }
    )
    log(f"The split file contains 5 splits. Desired fold for training: {args.fold}")
    log(f"This split has {len(tr_keys)} training and {len(val_keys)} validation cases.")
    best_ema = None
    for epoch in range(args.num_epochs):
        if epoch == args.npz_from_epoch:
            for f in os.listdir(raw_dir):
                if f.endswith(".npy"):
                    os.remove(os.path.join(raw_dir, f))  # scratch clean-up: .npz only now
        # on_epoch_start
        log("")
        logger_log("epoch_start_timestamps", time.time(), epoch)
        lr = poly_lr(epoch)
        for g in optimizer.param_groups:
            g["lr"] = lr
        log(f"Epoch {epoch}")
        log(f"Current learning rate: {np.round(lr, decimals=5)}")
        logger_log("lrs", lr, epoch)
        # train
        network.train()
        losses = []
        for _ in range(args.num_iterations_per_epoch):
            x, y = get_batch(tr_keys, augment=True)
            optimizer.zero_grad(set_to_none=True)
            loss = deep_supervision_loss(network(x), y)
            loss.backward(retain_graph=bool(args.keep_loss_graph))
            torch.nn.utils.clip_grad_norm_(network.parameters(), 12)
            optimizer.step()
            losses.append(loss if args.keep_loss_graph else loss.detach().cpu().numpy())
        if args.keep_loss_graph:
            train_loss = torch.stack(losses).mean()  # still attached to the epoch's graphs
        else:
            train_loss = float(np.mean(losses))
        logger_log("train_losses", train_loss, epoch)
        # validation
        network.eval()
        val_losses, tp, fp, fn = [], np.zeros(2), np.zeros(2), np.zeros(2)
        with torch.no_grad():
            for _ in range(args.num_val_iterations_per_epoch):
                x, y = get_batch(val_keys, augment=False)
                out = network(x)
                val_losses.append(deep_supervision_loss(out, y).item())
                pred = out[0].argmax(1)
                tgt = y[0][:, 0]
                for k in (1, 2):
                    tp[k - 1] += ((pred == k) & (tgt == k)).sum().item()
                    fp[k - 1] += ((pred == k) & (tgt != k)).sum().item()
                    fn[k - 1] += ((pred != k) & (tgt == k)).sum().item()
        with np.errstate(invalid="ignore"):
            dice_per_class = [float(d) for d in 2 * tp / (2 * tp + fp + fn)]
        mean_fg_dice = float(np.nanmean(dice_per_class))
        logger_log("mean_fg_dice", mean_fg_dice, epoch)
        logger_log("dice_per_class_or_region", dice_per_class, epoch)
        logger_log("val_losses", float(np.mean(val_losses)), epoch)
        # on_epoch_end
        logger_log("epoch_end_timestamps", time.time(), epoch)
        log(f"train_loss {np.round(float(logging['train_losses'][-1]), decimals=4)}")
        log(f"val_loss {np.round(logging['val_losses'][-1], decimals=4)}")
        log(f"Pseudo dice {[np.round(d, decimals=4) for d in dice_per_class]}")
        took = logging["epoch_end_timestamps"][-1] - logging["epoch_start_timestamps"][-1]
        log(f"Epoch time: {np.round(took, decimals=2)} s")
        ema = logging["ema_fg_dice"][-1]
        if best_ema is None or ema > best_ema:
            best_ema = ema
            log(f"Yayy! New best EMA pseudo Dice: {np.round(ema, decimals=4)}")
    log("Training done.")
shutil.rmtree(raw_dir, ignore_errors=True)
