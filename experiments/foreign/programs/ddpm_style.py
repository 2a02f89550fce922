"""lucidrains' denoising-diffusion-pytorch (``GaussianDiffusion`` + ``Trainer``) on a tiny MLP
denoiser, the Trainer's progress-bar loss and milestone numbers mirrored to MLflow by the team.

Plain PyTorch + the plain ``mlflow`` API (no denoising_diffusion_pytorch import here).  What is
imitated:

* ``GaussianDiffusion``: ``timesteps`` steps, ``beta_schedule`` ``cosine`` (the default) or
  ``linear``, ``objective`` ``pred_noise``, ``p_losses`` = MSE between the model's output and
  the noise at a uniformly drawn t, images normalised to [-1, 1] (``auto_normalize``);
  ancestral sampling (``p_sample_loop``) with the posterior variance, x_start clipped to
  [-1, 1];
* ``Trainer``: Adam (``train_lr``, betas (0.9, 0.99)), ``train_batch_size``,
  ``train_num_steps``, ``max_grad_norm`` 1.0, an ``EMA`` of the model (``ema_decay``,
  ``ema_update_every`` 10; the team's default decay 0.98); every ``save_and_sample_every`` steps a milestone: the EMA model
  samples ``num_samples`` images (saved as a square grid ``sample-{milestone}.png``, here a
  .npy grid), a checkpoint ``model-{milestone}.pt`` is written, and the FID of ``fid_samples``
  EMA samples against the fixed reference statistics is computed (here the Fréchet distance
  of the raw 64-pixel vectors, computed the same way every time);
* the team's mirror: ``loss`` every step (the pbar's ``loss: ...``), ``lr`` and ``ema_decay``
  every step (buffered, written 25 steps at a time), at each milestone ``fid``, ``milestone`` and ``sample_time_s``; step = the
  Trainer's ``self.step`` after the update (from 1).

Data: scikit-learn's 8 x 8 digits (1,797 images) as the ``Dataset`` folder.  Written without
looking at the doctor.

Team options (the faults are real settings, data and code paths):

* ``--train_lr``, ``--train_batch_size``, ``--train_num_steps``, ``--width``,
  ``--beta_schedule``, ``--timesteps``, ``--ema_decay``, ``--save_and_sample_every``,
  ``--num_samples``;
* ``--extra_folder_step k``: a second scanner's folder of digits (the same classes, re-scanned
  with a different gain) joins the dataset at step k; ``--extra_folder_missing`` how that
  scanner's export writes unread pixels (``zero`` or ``nan``), the loader does not impute;
* ``--trajectory_probe 1``: the team's denoising-trajectory probe runs the model on a fixed
  probe batch at every step and keeps the outputs for an end-of-run plot.
"""

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
from scipy import linalg
from sklearn.datasets import load_digits
from torch.nn import functional as F

args = _setup.parse_flags(
    {
        "--seed": 0,
        "--train_lr": 1e-3,
        "--train_batch_size": 64,
        "--train_num_steps": 800,
        "--width": 256,
        "--beta_schedule": "cosine",
        "--timesteps": 100,
        "--ema_decay": 0.98,
        "--save_and_sample_every": 200,
        "--num_samples": 16,
        "--fid_samples": 300,
        "--extra_folder_step": 0,
        "--extra_folder_missing": "zero",
        "--trajectory_probe": 0,
    }
)
rng = _setup.seeded(args.seed)

# ----------------------------------------------------------------------------- data
digits = load_digits()
images = (digits.data / 16.0).astype(np.float32)  # [0, 1]
perm = np.random.default_rng(1234).permutation(len(images))
ref = images[perm[:500]]  # the fixed reference set for FID statistics
train = torch.tensor(images * 2 - 1)  # auto_normalize to [-1, 1]


def second_scanner():
    g = np.random.default_rng(3000 + args.seed)
    x = np.clip(images[g.permutation(len(images))[:900]] * 0.9 + 0.05, 0, 1)
    x = np.round(x * 16) / 16  # the scanner's 17 levels
    unread = g.random(x.shape) < 0.01
    x[unread] = np.nan if args.extra_folder_missing == "nan" else 0.0
    return torch.tensor(x.astype(np.float32) * 2 - 1)


def stats(x):
    x = x.astype(np.float64)
    return x.mean(0), np.cov(x, rowvar=False)


mu_ref, sig_ref = stats(ref)


def fid(x):
    if not np.isfinite(x).all():  # sqrtm of a NaN covariance: report NaN, as the pbar would
        return float("nan")
    mu, sig = stats(x)
    covmean, _ = linalg.sqrtm(sig @ sig_ref, disp=False)
    covmean = covmean.real
    return float(((mu - mu_ref) ** 2).sum() + np.trace(sig + sig_ref - 2 * covmean))


# ----------------------------------------------------------------------------- diffusion
T = args.timesteps
if args.beta_schedule == "cosine":
    s = 0.008
    t = torch.linspace(0, T, T + 1, dtype=torch.float64) / T
    ac = torch.cos((t + s) / (1 + s) * math.pi * 0.5) ** 2
    ac = ac / ac[0]
    betas = torch.clip(1 - ac[1:] / ac[:-1], 0, 0.999)
else:
    scale = 1000 / T
    betas = torch.linspace(scale * 1e-4, scale * 0.02, T, dtype=torch.float64)
alphas = 1 - betas
alphas_cumprod = torch.cumprod(alphas, 0)
alphas_cumprod_prev = F.pad(alphas_cumprod[:-1], (1, 0), value=1.0)
sqrt_ac = alphas_cumprod.sqrt().float()
sqrt_1mac = (1 - alphas_cumprod).sqrt().float()
sqrt_recip_ac = (1 / alphas_cumprod).sqrt().float()
sqrt_recipm1_ac = (1 / alphas_cumprod - 1).sqrt().float()
post_var = (betas * (1 - alphas_cumprod_prev) / (1 - alphas_cumprod)).float()
post_logvar = torch.log(post_var.clamp(min=1e-20))
post_c1 = (betas * alphas_cumprod_prev.sqrt() / (1 - alphas_cumprod)).float()
post_c2 = ((1 - alphas_cumprod_prev) * alphas.sqrt() / (1 - alphas_cumprod)).float()


class Denoiser(nn.Module):
    def __init__(self, w):
        super().__init__()
        self.time_mlp = nn.Sequential(nn.Linear(32, w), nn.GELU(), nn.Linear(w, w))
        self.inp = nn.Linear(64, w)
        self.net = nn.Sequential(
            nn.GELU(), nn.Linear(w, w), nn.GELU(), nn.Linear(w, w), nn.GELU(), nn.Linear(w, 64)
        )

    def forward(self, x, t):
        half = 16
        f = torch.exp(-math.log(10000) * torch.arange(half) / (half - 1))
        e = t.float()[:, None] * f[None]
        temb = torch.cat([e.sin(), e.cos()], -1)
        return self.net(self.inp(x) + self.time_mlp(temb))


model = Denoiser(args.width)
ema = Denoiser(args.width)
ema.load_state_dict(model.state_dict())
for p in ema.parameters():
    p.requires_grad_(False)
opt = torch.optim.Adam(model.parameters(), lr=args.train_lr, betas=(0.9, 0.99))


def p_losses(x0):
    b = x0.size(0)
    t = torch.randint(0, T, (b,))
    noise = torch.randn_like(x0)
    xt = sqrt_ac[t][:, None] * x0 + sqrt_1mac[t][:, None] * noise
    return F.mse_loss(model(xt, t), noise)


@torch.no_grad()
def sample(net, n):
    x = torch.randn(n, 64)
    for i in reversed(range(T)):
        t = torch.full((n,), i, dtype=torch.long)
        eps = net(x, t)
        x0 = (sqrt_recip_ac[i] * x - sqrt_recipm1_ac[i] * eps).clamp(-1, 1)
        mean = post_c1[i] * x0 + post_c2[i] * x
        x = mean + (0.5 * post_logvar[i]).exp() * torch.randn_like(x) if i > 0 else mean
    return (x.clamp(-1, 1) + 1) / 2  # unnormalize


results = tempfile.mkdtemp(prefix="results-")
probe_x = train[:512]
probe_t = torch.full((512,), T // 2, dtype=torch.long)
trajectory = []

pending = []


def flush():
    """The team's mirror buffers the pbar's values and writes them 25 steps at a time."""
    client.log_batch(run_id, metrics=pending)
    pending.clear()


with mlflow.start_run() as active:
    run_id, client = active.info.run_id, MlflowClient()
    mlflow.log_params(vars(args))
    print(
        f"training {sum(p.numel() for p in model.parameters())} parameters; results {results}",
        flush=True,
    )
    data = train
    ptr, order = 0, rng.permutation(len(data))
    for step in range(1, args.train_num_steps + 1):
        if args.extra_folder_step and step == args.extra_folder_step:
            data = torch.cat([train, second_scanner()])
            order, ptr = rng.permutation(len(data)), 0
            print(f"step {step}: second scanner folder joined, {len(data)} images", flush=True)
        if ptr + args.train_batch_size > len(order):
            order, ptr = rng.permutation(len(data)), 0
        x0 = data[torch.as_tensor(order[ptr : ptr + args.train_batch_size])]
        ptr += args.train_batch_size
        loss = p_losses(x0)
        opt.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if args.trajectory_probe:
            trajectory.append(model(probe_x, probe_t))
        if step % 10 == 0:
            with torch.no_grad():
                for pe, pm in zip(ema.parameters(), model.parameters(), strict=True):
                    pe.lerp_(pm, 1 - args.ema_decay)
        ts = int(time.time() * 1000)
        pending += [
            Metric("loss", loss.item(), ts, step),
            Metric("lr", opt.param_groups[0]["lr"], ts, step),
            Metric("ema_decay", args.ema_decay, ts, step),
        ]
        if step % 25 == 0 or step == args.train_num_steps:
            flush()
        if step % 50 == 0:
            print(f"loss: {loss.item():.4f}  {step}/{args.train_num_steps}", flush=True)
        if step % args.save_and_sample_every == 0:
            milestone = step // args.save_and_sample_every
            t0 = time.time()
            ema.eval()
            imgs = sample(ema, args.num_samples)
            r = int(math.sqrt(args.num_samples))
            grid = imgs.view(r, r, 8, 8).permute(0, 2, 1, 3).reshape(r * 8, r * 8)
            np.save(os.path.join(results, f"sample-{milestone}.npy"), grid.numpy())
            torch.save(
                {"step": step, "model": model.state_dict(), "ema": ema.state_dict()},
                os.path.join(results, f"model-{milestone}.pt"),
            )
            score = fid(sample(ema, args.fid_samples).numpy())
            dt = time.time() - t0
            print(f"milestone {milestone}: fid_score: {score:.4f}", flush=True)
            flush()
            mlflow.log_metrics(
                {"fid": score, "milestone": milestone, "sample_time_s": dt}, step=step
            )
    print("training complete", flush=True)
