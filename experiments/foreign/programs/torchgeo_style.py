"""Land-cover segmentation as torchgeo's ``SemanticSegmentationTask`` trains it under a
Lightning ``Trainer`` with its ``MLFlowLogger`` and a ``ThroughputMonitor`` callback.

Plain PyTorch + numpy + the plain ``mlflow`` API (no torchgeo, no Lightning here).  What is
imitated:

* ``SemanticSegmentationTask(model="unet", in_channels, num_classes, loss="ce", lr, patience)``:
  cross-entropy over pixels, AdamW at ``lr``, ``ReduceLROnPlateau(patience=patience)`` on
  ``val_loss`` (torchgeo's default monitor), stepped every epoch;
* torchgeo's ``MetricCollection`` with ``prefix="train_"`` / ``"val_"``:
  ``MulticlassAccuracy`` (micro), ``MulticlassJaccardIndex`` (macro), logged per epoch as
  ``train_MulticlassAccuracy``, ``train_MulticlassJaccardIndex``, ``val_MulticlassAccuracy``,
  ``val_MulticlassJaccardIndex``; ``self.log("train_loss", loss)`` per step (Lightning's
  ``log_every_n_steps``), ``val_loss`` per epoch; Lightning's ``epoch`` metric; every value at
  ``step = global_step`` as Lightning's MLFlowLogger writes it;
* ``ThroughputMonitor`` (``train|batches_per_sec``, ``train|samples_per_sec``, written by the
  team's mirror with ``/`` because MLflow refuses ``|``) every ``log_every_n_steps``;
* a ``RandomGeoSampler`` over generated 4-band "Sentinel-2" scenes (digital numbers 0-10,000
  scaled by ``/ 10000`` as ``K.Normalize(mean=0, std=10000)`` does) with their land-cover
  masks, 32 x 32 chips; 6 land-cover classes.

Team code paths given by flags: ``--chip_log`` (every sampled chip's bounds appended to a CSV
that the sampler re-reads to avoid repeats); ``--new_scene_epoch`` (a newly labelled scene
joining the sampler, with ``--new_scene_nodata`` the mask value of its unlabelled pixels).
Faults are real settings and data: ``--lr``, ``--patience``, ``--chip_log``,
``--new_scene_nodata``.  Written without looking at the doctor.
"""

import os
import time

import _setup
import mlflow
import numpy as np
import torch
import torch.nn.functional as F

args = _setup.parse_flags(
    {
        "--seed": 0,
        "--lr": 1e-3,
        "--patience": 6,
        "--batch_size": 16,
        "--max_epochs": 14,
        "--steps_per_epoch": 40,
        "--val_chips": 96,
        "--width": 24,
        "--log_every_n_steps": 10,
        "--n_scenes": 3,
        "--chip_log": 0,
        "--new_scene_epoch": 0,
        "--new_scene_nodata": 0,  # 0: the scene has no unlabelled pixels
    }
)
rng = _setup.seeded(args.seed)
C, K, S, CHIP = 4, 6, 256, 32

# ----------------------------------------------------------------------------- scenes
srng = np.random.default_rng(5)  # the same land cover for every run
proto = srng.uniform(500, 6000, (K, C))  # each class's reflectance (DN)


def scene(r, nodata=0):
    # blobs of land cover: smooth random fields, argmax over classes
    f = r.normal(0, 1, (K, S // 16, S // 16))
    f = np.kron(f, np.ones((16, 16)))
    for _ in range(2):
        f = (f + np.roll(f, 3, 1) + np.roll(f, 3, 2) + np.roll(f, -3, 1) + np.roll(f, -3, 2)) / 5
    mask = f.argmax(0)
    img = proto[mask].transpose(2, 0, 1) * r.uniform(0.8, 1.2, (C, S, S))
    img = np.clip(img + r.normal(0, 350, img.shape), 0, 10000).astype(np.float32)
    if nodata:  # clouds: unlabelled pixels
        cloud = f[0] > np.quantile(f[0], 0.85)
        mask = np.where(cloud, nodata, mask)
    return img, mask.astype(np.int64)


scenes = [scene(np.random.default_rng(100 + i)) for i in range(args.n_scenes)]
val_scene = scene(np.random.default_rng(999))
vr = np.random.default_rng(1)
val_xy = vr.integers(0, S - CHIP, (args.val_chips, 2))


def chip(sc, x, y):
    img, mask = sc
    return img[:, y : y + CHIP, x : x + CHIP] / 10000.0, mask[y : y + CHIP, x : x + CHIP]


Xv = torch.tensor(np.stack([chip(val_scene, x, y)[0] for x, y in val_xy]), dtype=torch.float32)
Yv = torch.tensor(np.stack([chip(val_scene, x, y)[1] for x, y in val_xy]))


def sample_batch():
    xs, ys = [], []
    for _ in range(args.batch_size):
        while True:
            s = int(rng.integers(len(scenes)))
            x, y = (int(v) for v in rng.integers(0, S - CHIP, 2))
            if not args.chip_log:
                break
            with open("chips.csv") as f:  # the team's "no repeated chip" check
                seen = {tuple(int(v) for v in line.split(",")) for line in f}
            if (s, x, y) not in seen:
                with open("chips.csv", "a") as f:
                    f.write(f"{s},{x},{y}\n")
                break
        a, b = chip(scenes[s], x, y)
        xs.append(a)
        ys.append(b)
    return torch.tensor(np.stack(xs), dtype=torch.float32), torch.tensor(np.stack(ys))


# ----------------------------------------------------------------------------- model
def block(i, o):
    return torch.nn.Sequential(
        torch.nn.Conv2d(i, o, 3, padding=1), torch.nn.BatchNorm2d(o), torch.nn.ReLU()
    )


class UNet(torch.nn.Module):
    def __init__(self, w):
        super().__init__()
        self.e1, self.e2 = block(C, w), block(w, 2 * w)
        self.d1 = block(3 * w, w)
        self.head = torch.nn.Conv2d(w, K, 1)

    def forward(self, x):
        a = self.e1(x)
        b = self.e2(F.max_pool2d(a, 2))
        u = F.interpolate(b, scale_factor=2)
        return self.head(self.d1(torch.cat([a, u], 1)))


model = UNet(args.width)
opt = torch.optim.AdamW(model.parameters(), lr=args.lr)
sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, patience=args.patience)


def scores(pred, target):
    acc = float((pred == target).float().mean())
    ious = []
    for k in range(K):
        inter = ((pred == k) & (target == k)).sum()
        union = ((pred == k) | (target == k)).sum()
        if union > 0:
            ious.append(float(inter) / float(union))
    return acc, float(np.mean(ious))


with mlflow.start_run():
    mlflow.log_params(vars(args))
    if args.chip_log:
        open("chips.csv", "w").close()
    print(f"SemanticSegmentationTask(model='unet', in_channels={C}, num_classes={K})", flush=True)
    step = 0
    t_last, n_last = time.time(), 0
    for epoch in range(args.max_epochs):
        if args.new_scene_epoch and epoch == args.new_scene_epoch:
            scenes.append(scene(np.random.default_rng(555), args.new_scene_nodata))
            print(f"epoch {epoch}: new labelled scene joined the sampler", flush=True)
        model.train()
        tp, tt = [], []
        for _ in range(args.steps_per_epoch):
            xb, yb = sample_batch()
            out = model(xb)
            loss = F.cross_entropy(out, yb)
            opt.zero_grad()
            loss.backward()
            opt.step()
            step += 1
            n_last += 1
            tp.append(out.argmax(1).detach())
            tt.append(yb)
            if step % args.log_every_n_steps == 0:
                dt = time.time() - t_last
                mlflow.log_metrics(
                    {
                        "train_loss": float(loss),
                        "epoch": epoch,
                        "train/batches_per_sec": n_last / dt,
                        "train/samples_per_sec": n_last * args.batch_size / dt,
                    },
                    step=step - 1,
                )
                t_last, n_last = time.time(), 0
        model.eval()
        with torch.no_grad():
            outv = model(Xv)
            val_loss = float(F.cross_entropy(outv, Yv))
        va, vj = scores(outv.argmax(1), Yv)
        ta, tj = scores(torch.cat(tp), torch.cat(tt))
        sched.step(val_loss)
        mlflow.log_metrics(
            {
                "val_loss": val_loss,
                "val_MulticlassAccuracy": va,
                "val_MulticlassJaccardIndex": vj,
                "train_MulticlassAccuracy": ta,
                "train_MulticlassJaccardIndex": tj,
                "lr-AdamW": opt.param_groups[0]["lr"],
                "epoch": epoch,
            },
            step=step - 1,
        )
        print(
            f"Epoch {epoch}: val_loss={val_loss:.4f} val_MulticlassAccuracy={va:.4f} "
            f"val_MulticlassJaccardIndex={vj:.4f} lr={opt.param_groups[0]['lr']:.2e}",
            flush=True,
        )
    if os.path.exists("chips.csv"):
        print("chip log kept: chips.csv", flush=True)
