"""A small radiance field trained as nerfstudio's ``ns-train`` trains one, its writer's events
mirrored to MLflow by the team's writer.

Plain PyTorch + numpy + the plain ``mlflow`` API (no nerfstudio here).  What is imitated, as
``nerfstudio/engine/trainer.py`` and ``utils/writer.py`` log:

* every ``steps_per_log`` steps: ``Train Loss``, ``Train Loss Dict/rgb_loss``, ``Train Metrics
  Dict/psnr``, the scheduler's ``learning_rate/fields``, and the timers ``Train Iter (time)``
  (seconds a step) and ``Train Rays / Sec`` (``train_num_rays_per_batch / duration``), both
  averaged over the steps since the last write (``avg_over_steps=True``), and ``ETA (time)``;
  the team's MLflow writer drops the characters MLflow refuses in a name, so the timers arrive
  as ``Train Iter time`` and ``ETA time``;
* every ``steps_per_eval_batch`` steps ``Eval Loss``, ``Eval Loss Dict/rgb_loss`` and ``Eval
  Metrics Dict/psnr`` on one batch of rays from the eval cameras; every
  ``steps_per_eval_image`` steps a whole eval image is rendered in chunks of
  ``eval_num_rays_per_chunk`` rays: ``Eval Images Metrics/psnr``, ``Eval Images Metrics/ssim``
  (a global SSIM), ``Eval Images Metrics/num_rays_per_sec``; step = the trainer's step from 0;
* a vanilla-NeRF-like field: positional encoding of the sample's position, an MLP, a
  ``trunc_exp`` density and a sigmoid colour; stratified samples between ``near_plane`` and
  ``far_plane``; ``render_weights`` with a white background; MSE ``rgb_loss``; Adam with an
  ``ExponentialDecayScheduler`` (warm-up, then decay to ``lr_final``);
* the datamanager: ``VanillaDataManager`` (``num_processes 0``) loads every training image up
  front; ``ParallelDataManager`` (``num_processes`` > 0) has a worker that loads
  ``train_num_images_to_sample_from`` images and samples ray batches into a bounded queue,
  reloading a new subset every ``train_num_times_to_repeat_images`` batches; the trainer takes
  ``queue.get()``.

Data: a generated capture of a scene of coloured spheres on a floor, rendered analytically
(ray casting, Lambert shading) from cameras on a ring around it, 32 x 32 images saved as
``.npy`` files next to a ``transforms.json``; ``train_split_fraction`` of them, evenly spaced,
for training and the rest for eval.
Written without looking at the doctor.

Faults are real settings and data: ``--lr``; ``--num_images`` beyond the capture's complete
frames (the last frame of a 48-frame capture was still being written when the export copied
it); ``--reexported_frames`` (frames re-exported after a colour fix by the newer exporter,
which writes 8-bit values where the loader expects floats in [0, 1]);
``--eval_num_rays_per_chunk`` (the team's chunked renderer).
"""

import json
import math
import os
import queue
import re
import threading
import time

import _setup
import mlflow
import numpy as np
import torch

args = _setup.parse_flags(
    {
        "--seed": 42,
        "--max_num_iterations": 800,
        "--train_num_rays_per_batch": 384,
        "--num_samples": 24,
        "--hidden": 64,
        "--num_layers": 3,
        "--lr": 1e-2,
        "--lr_final": 1e-4,
        "--warmup_steps": 50,
        "--steps_per_log": 10,
        "--steps_per_eval_batch": 100,
        "--steps_per_eval_image": 200,
        "--eval_num_rays_per_chunk": 256,
        "--num_images": 40,
        "--train_split_fraction": 0.9,
        "--image_size": 32,
        "--reexported_frames": 0,
        "--num_processes": 0,
        "--train_num_images_to_sample_from": -1,
        "--train_num_times_to_repeat_images": -1,
    }
)
rng = _setup.seeded(args.seed)
torch_gen = torch.Generator().manual_seed(args.seed)

# ----------------------------------------------------------------------------- the capture
S = args.image_size
CAPTURE_FRAMES = 47  # complete frames; frame 47 was still being written when copied
centers = np.array([[0.0, 0.0, 0.1], [0.75, 0.35, -0.35], [-0.6, 0.55, -0.25]])
radii = np.array([0.6, 0.35, 0.45])
colors = np.array([[0.85, 0.25, 0.2], [0.2, 0.7, 0.3], [0.25, 0.35, 0.9]])
light = np.array([0.4, 0.5, 0.75]) / np.linalg.norm([0.4, 0.5, 0.75])
FOCAL = 0.9 * S
REEXPORTED = [13, 29, 5]  # frames re-exported after a colour fix


def camera(i, n):
    a = 2 * np.pi * i / n + 0.3
    eye = np.array([3.2 * np.cos(a), 3.2 * np.sin(a), 1.2 + 0.3 * np.sin(3 * a)])
    fwd = -eye / np.linalg.norm(eye)
    right = np.cross(fwd, [0, 0, 1.0])
    right /= np.linalg.norm(right)
    up = np.cross(right, fwd)
    return np.stack([right, up, -fwd, eye], 1)  # camera-to-world 3x4, OpenGL convention


def rays_of(c2w):
    j, i = np.meshgrid(np.arange(S), np.arange(S), indexing="ij")
    d = np.stack(
        [(i + 0.5 - S / 2) / FOCAL, -(j + 0.5 - S / 2) / FOCAL, -np.ones_like(i, float)], -1
    )
    d = d @ c2w[:, :3].T
    d /= np.linalg.norm(d, axis=-1, keepdims=True)
    return np.broadcast_to(c2w[:, 3], d.shape).reshape(-1, 3), d.reshape(-1, 3)


def render_gt(o, d):
    best_t = np.full(len(o), np.inf)
    rgb = np.ones((len(o), 3))
    for c, r, col in zip(centers, radii, colors, strict=True):
        oc = o - c
        b = (oc * d).sum(1)
        disc = b**2 - ((oc**2).sum(1) - r**2)
        t = -b - np.sqrt(np.maximum(disc, 0))
        hit = (disc > 0) & (t > 0) & (t < best_t)
        n = (o + t[:, None] * d - c) / r
        shade = 0.25 + 0.75 * np.clip(n @ light, 0, 1)
        rgb[hit] = col * shade[hit, None]
        best_t[hit] = t[hit]
    tf = (-0.6 - o[:, 2]) / np.where(np.abs(d[:, 2]) > 1e-6, d[:, 2], 1e-6)  # the floor
    p = o + tf[:, None] * d
    floor = (tf > 0) & (tf < best_t) & (np.abs(p[:, 0]) < 1.6) & (np.abs(p[:, 1]) < 1.6)
    checker = ((np.floor(p[:, 0] * 2) + np.floor(p[:, 1] * 2)) % 2)[:, None]
    rgb[floor] = (0.55 + 0.25 * checker[floor]) * np.ones(3)
    return rgb


os.makedirs("capture/images", exist_ok=True)
frames = []
n_cams = args.num_images
for i in range(n_cams):
    c2w = camera(i, n_cams)
    path = f"capture/images/frame_{i:05d}.npy"
    img = render_gt(*rays_of(c2w)).reshape(S, S, 3).astype(np.float32)
    img = np.clip(img + rng.normal(0, 0.01, img.shape), 0, 1).astype(np.float32)
    if i in REEXPORTED[: args.reexported_frames]:  # the newer exporter writes 8-bit frames
        img = np.round(img * 255).astype(np.uint8)
    np.save(path, img)
    if i >= CAPTURE_FRAMES:  # copied while the capture app was still writing it
        with open(path, "r+b") as f:
            f.truncate(os.path.getsize(path) // 3)
    frames.append({"file_path": path, "transform_matrix": c2w.tolist()})
with open("capture/transforms.json", "w") as f:
    json.dump({"fl_x": FOCAL, "w": S, "h": S, "frames": frames}, f)

meta = json.load(open("capture/transforms.json"))
n_train = math.ceil(len(meta["frames"]) * args.train_split_fraction)  # evenly spaced, as nerfstudio
i_train = set(np.linspace(0, len(meta["frames"]) - 1, n_train).round().astype(int).tolist())
train_frames = [f for i, f in enumerate(meta["frames"]) if i in i_train]
eval_frames = [f for i, f in enumerate(meta["frames"]) if i not in i_train]


def load_image(frame):
    return np.load(frame["file_path"]).astype(np.float32).reshape(S, S, 3)


def frame_rays(frame):
    o, d = rays_of(np.array(frame["transform_matrix"]))
    return torch.from_numpy(o.copy()).float(), torch.from_numpy(d.copy()).float()


# ----------------------------------------------------------------------------- field
L_FREQ = 6
NEAR, FAR = 1.5, 5.0


def encode(x):
    f = (2.0 ** torch.arange(L_FREQ)) * math.pi
    xf = (x[..., None] * f).flatten(-2)
    return torch.cat([x, torch.sin(xf), torch.cos(xf)], -1)


class TruncExp(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return torch.exp(x)

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return g * torch.exp(x.clamp(-15, 15))


class Field(torch.nn.Module):
    def __init__(self):
        super().__init__()
        layers, d = [], 3 + 6 * L_FREQ
        for _ in range(args.num_layers):
            layers += [torch.nn.Linear(d, args.hidden), torch.nn.ReLU()]
            d = args.hidden
        self.mlp = torch.nn.Sequential(*layers)
        self.head = torch.nn.Linear(d, 4)

    def forward(self, x):
        h = self.head(self.mlp(encode(x)))
        return TruncExp.apply(h[..., 0] - 1.0), torch.sigmoid(h[..., 1:])


def render(field, o, d, train=True):
    n = args.num_samples
    bins = torch.linspace(NEAR, FAR, n + 1)
    if train:
        t = bins[:-1] + (bins[1:] - bins[:-1]) * torch.rand(len(o), n, generator=torch_gen)
    else:
        t = (bins[:-1] + bins[1:]).expand(len(o), n) / 2
    pts = o[:, None] + t[..., None] * d[:, None]
    density, rgb = field(pts)
    delta = torch.cat([t[:, 1:] - t[:, :-1], torch.full((len(o), 1), 1e10)], 1)
    dd = density * delta
    trans = torch.exp(-torch.cat([torch.zeros(len(o), 1), torch.cumsum(dd[:, :-1], 1)], 1))
    weights = (1 - torch.exp(-dd)) * trans
    weights = torch.nan_to_num(weights)
    comp = (weights[..., None] * rgb).sum(1)
    comp = comp + (1 - weights.sum(1, keepdim=True))  # white background
    return comp


field = Field()
optimizer = torch.optim.Adam(field.parameters(), lr=args.lr, eps=1e-15)


def lr_at(step):  # ExponentialDecayScheduler
    if step < args.warmup_steps:
        return args.lr * (step + 1) / args.warmup_steps
    frac = (step - args.warmup_steps) / max(1, args.max_num_iterations - args.warmup_steps)
    return math.exp(math.log(args.lr) * (1 - frac) + math.log(args.lr_final) * frac)


# ----------------------------------------------------------------------------- datamanager
def batch_from(images, rays, gen=torch_gen):
    """PixelSampler: random rays from random images (images: N x S*S x 3, rays: (o, d))."""
    n = args.train_num_rays_per_batch
    ci = torch.randint(len(images), (n,), generator=gen)
    pi = torch.randint(S * S, (n,), generator=gen)
    return rays[0][ci, pi], rays[1][ci, pi], images[ci, pi]


def stack(frames):
    images = torch.stack([torch.from_numpy(load_image(f).reshape(-1, 3).copy()) for f in frames])
    rays = [frame_rays(f) for f in frames]
    return images, (torch.stack([r[0] for r in rays]), torch.stack([r[1] for r in rays]))


class VanillaDataManager:
    def __init__(self):
        self.images, self.rays = stack(train_frames)

    def next_train(self, step):
        return batch_from(self.images, self.rays)


class ParallelDataManager:
    def __init__(self):
        self.q = queue.Queue(maxsize=4)
        threading.Thread(target=self._worker, daemon=True).start()

    def _worker(self):
        wrng = np.random.default_rng(args.seed + 1)
        wgen = torch.Generator().manual_seed(args.seed + 2)  # the worker's own sampler seed
        while True:
            k = args.train_num_images_to_sample_from
            pick = wrng.permutation(len(train_frames))[: k if k > 0 else None]
            images, rays = stack([train_frames[i] for i in pick])
            repeats = args.train_num_times_to_repeat_images
            for _ in range(repeats if repeats > 0 else 10**9):
                self.q.put(batch_from(images, rays, wgen))

    def next_train(self, step):
        return self.q.get()


datamanager = ParallelDataManager() if args.num_processes > 0 else VanillaDataManager()
eval_images = [torch.from_numpy(load_image(f).copy()) for f in eval_frames]
eval_rays = [frame_rays(f) for f in eval_frames]
print(
    f"train images: {len(train_frames)}, eval images: {len(eval_frames)}, "
    f"{sum(p.numel() for p in field.parameters())} field parameters",
    flush=True,
)


def psnr(mse):
    return -10.0 * math.log10(max(mse, 1e-10))


def ssim(a, b):
    ma, mb = a.mean(), b.mean()
    va, vb = a.var(), b.var()
    cov = ((a - ma) * (b - mb)).mean()
    c1, c2 = 0.01**2, 0.03**2
    return float(((2 * ma * mb + c1) * (2 * cov + c2)) / ((ma**2 + mb**2 + c1) * (va + vb + c2)))


def render_image(k):
    o, d = eval_rays[k]
    chunk = args.eval_num_rays_per_chunk
    outs = []
    with torch.no_grad():
        for c in range(len(o) // chunk):  # the team's chunked renderer
            outs.append(
                render(field, o[c * chunk : (c + 1) * chunk], d[c * chunk : (c + 1) * chunk], False)
            )
    return torch.cat(outs).view(S, S, 3)


NAME_OK = re.compile(r"[^/\w.\- :]")


def write(scalars, step):  # the team's MLflow writer for nerfstudio's writer events
    mlflow.log_metrics({NAME_OK.sub("", k): float(v) for k, v in scalars.items()}, step=step)


with mlflow.start_run():
    mlflow.log_params(vars(args))
    iter_times, start = [], time.time()
    for step in range(args.max_num_iterations):
        for g in optimizer.param_groups:
            g["lr"] = lr_at(step)
        t0 = time.perf_counter()
        o, d, target = datamanager.next_train(step)
        comp = render(field, o, d)
        loss = ((comp - target) ** 2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        iter_times.append(time.perf_counter() - t0)
        if step % args.steps_per_log == 0:
            dur = float(np.mean(iter_times))
            iter_times = []
            eta = dur * (args.max_num_iterations - step)
            write(
                {
                    "Train Loss": loss.item(),
                    "Train Loss Dict/rgb_loss": loss.item(),
                    "Train Metrics Dict/psnr": psnr(loss.item()),
                    "learning_rate/fields": optimizer.param_groups[0]["lr"],
                    "Train Iter (time)": dur,
                    "Train Rays / Sec": args.train_num_rays_per_batch / dur,
                    "ETA (time)": eta,
                },
                step,
            )
            print(
                f"Step {step:>6d} ({100 * step / args.max_num_iterations:.1f}%)  "
                f"Train Iter (time) {1000 * dur:.1f} ms  Train Rays / Sec {args.train_num_rays_per_batch / dur:.0f}  "
                f"loss {loss.item():.5f}",
                flush=True,
            )
        if step % args.steps_per_eval_batch == 0:
            k = int(rng.integers(len(eval_frames)))
            idx = torch.from_numpy(rng.choice(S * S, args.train_num_rays_per_batch, replace=False))
            with torch.no_grad():
                comp = render(field, eval_rays[k][0][idx], eval_rays[k][1][idx], False)
                el = ((comp - eval_images[k].view(-1, 3)[idx]) ** 2).mean().item()
            write(
                {
                    "Eval Loss": el,
                    "Eval Loss Dict/rgb_loss": el,
                    "Eval Metrics Dict/psnr": psnr(el),
                },
                step,
            )
        if step % args.steps_per_eval_image == 0 and step > 0:
            k = int(rng.integers(len(eval_frames)))
            t1 = time.perf_counter()
            img = render_image(k)
            dt = time.perf_counter() - t1
            mse = ((img - eval_images[k]) ** 2).mean().item()
            write(
                {
                    "Eval Images Metrics/psnr": psnr(mse),
                    "Eval Images Metrics/ssim": ssim(img, eval_images[k]),
                    "Eval Images Metrics/num_rays_per_sec": S * S / dt,
                },
                step,
            )
            print(f"Eval image {k}: psnr {psnr(mse):.2f}", flush=True)
    print(f"Training finished in {time.time() - start:.1f}s", flush=True)
