"""A denoiser trained as Katherine Crowson's k-diffusion ``train.py`` trains one (Karras et al.
preconditioning, EDM sigma sampling, an EMA model, FID/KID evaluation), its ``wandb.log``
dictionaries mirrored to MLflow by the team's logger.

Plain PyTorch + numpy + the plain ``mlflow`` API (no k-diffusion, no accelerate here).  What is
imitated:

* the model config (``sigma_data``, ``sigma_min``, ``sigma_max``, ``sigma_sample_density``
  ``{type: lognormal, mean, std}``) and ``K.layers.Denoiser``: ``c_skip``, ``c_out``, ``c_in``
  and ``c_noise = log(sigma) / 4``, the loss ``(model(c_in * noised, c_noise) - target) ** 2``
  with ``target = (x - c_skip * noised) / c_out``, the mean over pixels;
* the optimizer (``AdamW``, ``lr``, ``betas``, ``eps``, ``weight_decay``), ``lr_sched``
  ``{type: inverse, inv_gamma, power, warmup}`` and ``ema_sched`` ``{type: inverse, power,
  max_value}`` (``K.utils.EMAWarmup``);
* the log dictionary every step at ``step`` (from 0): ``epoch``, ``loss`` (the batch's),
  ``lr``, ``ema_decay``; every ``--evaluate-every`` steps ``FID`` and ``KID`` of
  ``--evaluate-n`` samples of the EMA model (``sample_dpmpp_2m`` on Karras sigmas, the
  reference statistics from the training set), the team's extractor being a fixed random
  projection of the 8 x 8 images (the team's stand-in for Inception features); the console
  line ``Epoch: 3, step: 600, loss: 0.1403`` (the EMA of the loss) every 25 steps.

Data: scikit-learn's bundled 8 x 8 digits scaled to [-1, 1], ``--train_size`` of them; the
team's second shard (``--extra_shard``, the digits written by the scanner team's exporter)
joins when ``--extra_shard_epoch`` starts; ``--extra_shard_format`` is how the exporter stored
the pixels (``float`` in [-1, 1], or ``uint8`` 0-255 written as the scanner gave them).
Written without looking at the doctor.

Faults are real settings and data: ``--lr``; ``--inv_gamma``; ``--extra_shard_format``;
``--evaluate_n``.
"""

import time

import _setup
import mlflow
import numpy as np
import torch
from sklearn.datasets import load_digits

args = _setup.parse_flags(
    {
        "--seed": 0,
        "--train_size": 1400,
        "--batch_size": 64,
        "--max_steps": 2000,
        "--lr": 2e-3,
        "--betas": "0.95,0.999",
        "--eps": 1e-6,
        "--weight_decay": 1e-3,
        "--inv_gamma": 20000.0,
        "--power": 1.0,
        "--warmup": 0.99,
        "--ema_power": 0.6667,
        "--ema_max_value": 0.999,
        "--width": 256,
        "--depth": 3,
        "--sigma_data": 0.5,
        "--sigma_min": 0.01,
        "--sigma_max": 80.0,
        "--density_mean": -1.2,
        "--density_std": 1.2,
        "--evaluate_every": 400,
        "--evaluate_n": 1000,
        "--sample_steps": 20,
        "--extra_shard": 0,
        "--extra_shard_epoch": 0,
        "--extra_shard_format": "float",
    }
)
rng = _setup.seeded(args.seed)
SD = args.sigma_data

digits = load_digits()
X = (digits.images.reshape(-1, 64) / 16.0 * 2 - 1).astype(np.float32)
order = rng.permutation(len(X))
train = X[order[: args.train_size]]
extra = X[order[args.train_size : args.train_size + args.extra_shard]]
if args.extra_shard_format == "uint8":
    extra = np.round((extra + 1) / 2 * 255).astype(np.float32)  # as the scanner gave them
FEAT = np.random.default_rng(1234).normal(0, 1 / 8, (64, 32)).astype(np.float32)


class FourierFeatures(torch.nn.Module):
    def __init__(self, n, std=16.0):
        super().__init__()
        self.register_buffer("w", torch.randn(1, n // 2) * std)

    def forward(self, c):
        f = 2 * np.pi * c[:, None] * self.w
        return torch.cat([f.cos(), f.sin()], 1)


class InnerModel(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = FourierFeatures(32)
        layers, d = [], 64 + 32
        for _ in range(args.depth):
            layers += [torch.nn.Linear(d, args.width), torch.nn.GELU()]
            d = args.width
        self.net = torch.nn.Sequential(*layers, torch.nn.Linear(d, 64))

    def forward(self, x, c_noise):
        return self.net(torch.cat([x, self.emb(c_noise)], 1))


def scalings(sigma):
    c_skip = SD**2 / (sigma**2 + SD**2)
    c_out = sigma * SD / (sigma**2 + SD**2) ** 0.5
    c_in = 1 / (sigma**2 + SD**2) ** 0.5
    return c_skip[:, None], c_out[:, None], c_in[:, None]


def denoise(model, x, sigma):
    c_skip, c_out, c_in = scalings(sigma)
    return model(x * c_in, sigma.log() / 4) * c_out + x * c_skip


def loss_fn(model, x, noise, sigma):
    c_skip, c_out, c_in = scalings(sigma)
    noised = x + noise * sigma[:, None]
    out = model(noised * c_in, sigma.log() / 4)
    target = (x - c_skip * noised) / c_out
    return ((out - target) ** 2).mean(1)


def karras_sigmas(n, rho=7.0):
    ramp = torch.linspace(0, 1, n)
    lo, hi = args.sigma_min ** (1 / rho), args.sigma_max ** (1 / rho)
    return torch.cat([(hi + ramp * (lo - hi)) ** rho, torch.zeros(1)])


@torch.no_grad()
def sample_dpmpp_2m(model, n, gen):
    sigmas = karras_sigmas(args.sample_steps)
    x = torch.randn(n, 64, generator=gen) * sigmas[0]
    old = None
    for i in range(len(sigmas) - 1):
        s = sigmas[i] * torch.ones(n)
        den = denoise(model, x, s)
        t, t_next = -sigmas[i].log(), -sigmas[i + 1].log()
        h = t_next - t
        if old is None or sigmas[i + 1] == 0:
            x = (sigmas[i + 1] / sigmas[i]) * x - (-h).expm1() * den
        else:
            h_last = t - (-sigmas[i - 1].log())
            r = h_last / h
            den_d = (1 + 1 / (2 * r)) * den - (1 / (2 * r)) * old
            x = (sigmas[i + 1] / sigmas[i]) * x - (-h).expm1() * den_d
        old = den
    return x


def features(x):
    return np.tanh(np.asarray(x, np.float64) @ FEAT)


def fid(a, b):
    mu1, mu2 = a.mean(0), b.mean(0)
    c1, c2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    ev = np.linalg.eigvals(c1 @ c2)
    return float(
        ((mu1 - mu2) ** 2).sum() + np.trace(c1) + np.trace(c2) - 2 * np.sqrt(ev).real.sum()
    )


def kid(a, b):
    d = a.shape[1]
    kxx = (a @ a.T / d + 1) ** 3
    kyy = (b @ b.T / d + 1) ** 3
    kxy = (a @ b.T / d + 1) ** 3
    m, n = len(a), len(b)
    return float(
        (kxx.sum() - np.trace(kxx)) / (m * (m - 1))
        + (kyy.sum() - np.trace(kyy)) / (n * (n - 1))
        - 2 * kxy.mean()
    )


model = InnerModel()
ema = InnerModel()
ema.load_state_dict(model.state_dict())
betas = tuple(float(b) for b in args.betas.split(","))
opt = torch.optim.AdamW(
    model.parameters(), lr=args.lr, betas=betas, eps=args.eps, weight_decay=args.weight_decay
)
ref_feats = features(X[order[: args.train_size]])


def inverse_lr(step):
    warm = 1 - args.warmup ** (step + 1)
    return warm * (1 + step / args.inv_gamma) ** -args.power


sched = torch.optim.lr_scheduler.LambdaLR(opt, inverse_lr)


def ema_decay(step):
    value = 1 - (1 + step) ** -args.ema_power
    return 0.0 if step < 0 else min(args.ema_max_value, max(0.0, value))


with mlflow.start_run():
    mlflow.log_params(vars(args))
    data = train
    step, epoch, ema_loss = 0, 0, None
    gen = torch.Generator().manual_seed(args.seed)
    while step < args.max_steps:
        if args.extra_shard and epoch == args.extra_shard_epoch:
            data = np.concatenate([train, extra])
            print(f"epoch {epoch}: the extra shard joins ({len(extra)} images)", flush=True)
        perm = rng.permutation(len(data))
        for s in range(0, len(data) - args.batch_size + 1, args.batch_size):
            x = torch.from_numpy(data[perm[s : s + args.batch_size]])
            noise = torch.randn(x.shape, generator=gen)
            sigma = (
                torch.randn(len(x), generator=gen) * args.density_std + args.density_mean
            ).exp()
            loss = loss_fn(model, x, noise, sigma).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            decay = ema_decay(step)
            with torch.no_grad():
                for pe, pm in zip(ema.parameters(), model.parameters(), strict=True):
                    pe.mul_(decay).add_(pm, alpha=1 - decay)
            ema_loss = loss.item() if ema_loss is None else 0.95 * ema_loss + 0.05 * loss.item()
            mlflow.log_metrics(
                {
                    "epoch": epoch,
                    "loss": loss.item(),
                    "lr": sched.get_last_lr()[0],
                    "ema_decay": decay,
                },
                step=step,
            )
            if step % 25 == 0:
                print(f"Epoch: {epoch}, step: {step}, loss: {ema_loss:g}", flush=True)
            step += 1
            if step % args.evaluate_every == 0:
                t0 = time.time()
                samples = sample_dpmpp_2m(ema, args.evaluate_n, torch.Generator().manual_seed(7))
                fake = features(samples.numpy())
                f, k = fid(fake, ref_feats), kid(fake, ref_feats)
                print(f"FID: {f:g}, KID: {k:g} ({time.time() - t0:.1f} s)", flush=True)
                mlflow.log_metrics({"FID": f, "KID": k}, step=step)
            if step >= args.max_steps:
                break
        epoch += 1
