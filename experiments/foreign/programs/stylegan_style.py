"""An unconditional GAN trained as NVlabs' StyleGAN2-ADA / StyleGAN3 ``training_loop.py`` trains
one, its ``training_stats`` written per tick as the loop writes them to ``stats.jsonl`` and
TensorBoard (``stats_tfevents.add_scalar(name, value.mean, global_step=int(cur_nimg / 1e3))``),
mirrored into MLflow.

Plain PyTorch + numpy + the plain ``mlflow`` API.  What is imitated:

* the CLI's knobs (``--glr``, ``--dlr``, ``--gamma``, ``--batch``, ``--kimg``, ``--tick``,
  ``--snap``, ``--map``, ``--mbstd_group``, ``--aug``, ``--target``, ``--mirror``, ``--cbase``),
  logged as params;
* StyleGAN2Loss: non-saturating logistic loss, lazy R1 regularisation every 16 minibatches
  (``gamma / 2 * |grad D(x)|^2``, scaled by the interval), Adam with ``betas=(0.0, 0.99)`` and the
  lazy-regularisation correction of lr and betas; an EMA copy of G (``ema_kimg = batch * 10 /
  32``, ramp-up 0.05) used for the metric;
* the stats of each tick (means over the tick), at ``step = int(cur_nimg / 1e3)`` (kimg):
  ``Loss/scores/fake``, ``Loss/scores/real``, ``Loss/signs/fake``, ``Loss/signs/real``,
  ``Loss/G/loss``, ``Loss/D/loss``, ``Loss/r1_penalty``, ``Loss/D/reg``, ``Progress/tick``,
  ``Progress/kimg``, ``Progress/augment`` (ADA's p), ``Timing/total_sec``,
  ``Timing/sec_per_tick``, ``Timing/sec_per_kimg``, ``Timing/maintenance_sec``,
  ``Resources/cpu_mem_gb`` (resident set size), and every ``--snap`` ticks
  ``Metrics/fid50k_full`` at the same step; the loop's tick line on stdout
  (``tick 3  kimg 12.0  time 5s  sec/tick 1.6  sec/kimg 0.41 ...``);
* ADA (``--aug ada``): p adjusted every 4 minibatches towards ``--target`` on the sign of
  D's real scores, ``ada_kimg`` 100 here (500 in the paper, scaled to this run's length).

Data: scikit-learn's 8x8 digits (1797 images; ``--max_size`` keeps only the first N, as
``dataset_tool``'s ``--max-images``), scaled to [-1, 1], ``--mirror`` doubles them by x-flips.
G: a mapping network (``--map`` layers, z and w of 32) and an MLP synthesis network of
``--cbase`` units to 64 pixels; D: an MLP with a minibatch-standard-deviation layer
(``--mbstd_group``).  The metric: there is no Inception network here, so "fid50k_full" is the
Frechet distance between 2000 images of G_ema and the full dataset in pixel space (the same
formula; the name kept as the loop logs it).  A team's addition: ``--video_res R`` renders an
8x8 grid of G_ema samples at R x R RGB (float64) each tick and keeps the frames for a progress
video written at the end.  Written without looking at the doctor.

Faults are real settings: learning rates typed far too high; a small dataset (``--max_size``)
with no augmentation, so D memorises the training images; R1 turned off
(``--gamma 0``) with a higher D learning rate; the progress video at a print resolution
(the frames are kept in memory until the end).
"""

import copy
import os
import resource
import time

import _setup
import mlflow
import numpy as np
import torch
import torch.nn.functional as F
from scipy import linalg
from sklearn.datasets import load_digits
from torch import nn

args = _setup.parse_flags(
    {
        "--glr": 0.0025,
        "--dlr": 0.0025,
        "--gamma": 0.05,
        "--batch": 64,
        "--kimg": 160,
        "--tick": 4,
        "--snap": 5,
        "--map": 2,
        "--mbstd_group": 4,
        "--aug": "noaug",
        "--target": 0.6,
        "--mirror": 0,
        "--cbase": 128,
        "--max_size": 0,
        "--video_res": 0,
        "--seed": 0,
    }
)
rng = _setup.seeded(args.seed)
Z_DIM = 32
R1_INTERVAL = 16
ADA_INTERVAL, ADA_KIMG = 4, 100

# ----------------------------------------------------------------------------- data
full = load_digits().data.astype(np.float32) / 8.0 - 1.0  # [-1, 1]
data = full[: args.max_size] if args.max_size else full
if args.mirror:
    data = np.concatenate([data, data.reshape(-1, 8, 8)[:, :, ::-1].reshape(-1, 64)])
data = torch.tensor(data)
print(f"Dataset: {len(data)} images, 8x8, 1 channel", flush=True)


# ----------------------------------------------------------------------------- networks
class Generator(nn.Module):
    def __init__(self):
        super().__init__()
        m = []
        for _ in range(args.map):
            m += [nn.Linear(Z_DIM, Z_DIM), nn.LeakyReLU(0.2)]
        self.mapping = nn.Sequential(*m)
        c = args.cbase
        self.synthesis = nn.Sequential(
            nn.Linear(Z_DIM, c), nn.LeakyReLU(0.2), nn.Linear(c, c), nn.LeakyReLU(0.2),
            nn.Linear(c, 64),
        )  # fmt: skip

    def forward(self, z):
        z = z * (z.square().mean(1, keepdim=True) + 1e-8).rsqrt()  # normalize_2nd_moment
        return self.synthesis(self.mapping(z))


class Discriminator(nn.Module):
    def __init__(self):
        super().__init__()
        c = args.cbase
        self.b = nn.Sequential(nn.Linear(64, c), nn.LeakyReLU(0.2), nn.Linear(c, c), nn.LeakyReLU(0.2))  # fmt: skip
        self.out = nn.Sequential(nn.Linear(c + 1, c), nn.LeakyReLU(0.2), nn.Linear(c, 1))

    def forward(self, x):
        h = self.b(x)
        g = min(args.mbstd_group, len(h)) if args.mbstd_group else 1
        y = h.reshape(g, -1, h.shape[1])
        y = (y - y.mean(0)).square().mean(0).add(1e-8).sqrt().mean(1)  # per group column
        y = y.repeat(g)[:, None]
        return self.out(torch.cat([h, y], 1))[:, 0]


G, D = Generator(), Discriminator()
G_ema = copy.deepcopy(G).eval().requires_grad_(False)
mb = R1_INTERVAL / (R1_INTERVAL + 1)
opt_G = torch.optim.Adam(G.parameters(), lr=args.glr, betas=(0.0, 0.99), eps=1e-8)
opt_D = torch.optim.Adam(D.parameters(), lr=args.dlr * mb, betas=(0.0, 0.99**mb), eps=1e-8)


# ----------------------------------------------------------------------------- ADA
def augment(x, p):
    if p <= 0:
        return x
    n = len(x)
    img = x.reshape(n, 8, 8)
    flip = torch.rand(n) < p
    img = torch.where(flip[:, None, None], img.flip(2), img)
    sh = (torch.rand(n) < p) * torch.randint(-1, 2, (n,))
    sv = (torch.rand(n) < p) * torch.randint(-1, 2, (n,))
    rows = (torch.arange(8)[None, :] - sv[:, None]).clamp(0, 7)
    cols = (torch.arange(8)[None, :] - sh[:, None]).clamp(0, 7)
    img = img[torch.arange(n)[:, None, None], rows[:, :, None], cols[:, None, :]]
    bright = (torch.rand(n) < p) * torch.randn(n) * 0.2
    return img.reshape(n, 64) + bright[:, None]


# ----------------------------------------------------------------------------- metric
real_mu, real_cov = full.mean(0), np.cov(full, rowvar=False)


def fid():
    with torch.no_grad():
        fake = G_ema(torch.randn(2000, Z_DIM)).numpy().astype(np.float64)
    if not np.isfinite(fake).all():
        return float("nan")
    mu, cov = fake.mean(0), np.cov(fake, rowvar=False)
    s, _ = linalg.sqrtm(cov @ real_cov, disp=False)
    return float(np.square(mu - real_mu).sum() + np.trace(cov + real_cov - 2 * s.real))


def render_frame(res):
    with torch.no_grad():
        g = G_ema(torch.randn(64, Z_DIM)).numpy().reshape(8, 8, 8, 8)
    grid = g.transpose(0, 2, 1, 3).reshape(64, 64).astype(np.float64)
    k = max(1, res // 64)
    img = np.kron(grid, np.ones((k, k)))
    return np.repeat(((img + 1) * 127.5)[:, :, None], 3, axis=2)


# ----------------------------------------------------------------------------- loop
with mlflow.start_run():
    mlflow.log_params(vars(args))
    stats: dict[str, list[float]] = {}

    def report(name, v):
        stats.setdefault(name, []).append(float(v))

    p, ada_acc = 0.0, []
    frames = []
    cur_nimg, cur_tick, batch_idx = 0, 0, 0
    tick_start_nimg = 0
    start = tick_start = time.time()
    maintenance = 0.0
    total_nimg = args.kimg * 1000
    print(f"Training for {args.kimg} kimg...", flush=True)
    while True:
        aug_p = p if args.aug != "noaug" else 0.0
        # ---- G main
        z = torch.randn(args.batch, Z_DIM)
        gen_logits = D(augment(G(z), aug_p))
        loss_G = F.softplus(-gen_logits)
        report("Loss/scores/fake", gen_logits.mean())
        report("Loss/signs/fake", gen_logits.sign().mean())
        report("Loss/G/loss", loss_G.mean())
        opt_G.zero_grad(set_to_none=True)
        loss_G.mean().backward()
        opt_G.step()
        # ---- D main
        real = data[torch.randint(len(data), (args.batch,))]
        with torch.no_grad():
            fake = G(torch.randn(args.batch, Z_DIM))
        fake_logits = D(augment(fake, aug_p))
        real_logits = D(augment(real, aug_p))
        loss_D = F.softplus(fake_logits) + F.softplus(-real_logits)
        report("Loss/scores/real", real_logits.mean())
        report("Loss/signs/real", real_logits.sign().mean())
        report("Loss/D/loss", loss_D.mean())
        ada_acc.append(float(real_logits.sign().mean()))
        opt_D.zero_grad(set_to_none=True)
        loss_D.mean().backward()
        opt_D.step()
        # ---- D reg (lazy R1)
        if batch_idx % R1_INTERVAL == 0 and args.gamma > 0:
            x = augment(real, aug_p).detach().requires_grad_(True)
            (grad,) = torch.autograd.grad(D(x).sum(), x, create_graph=True)
            pen = grad.square().sum(1)
            loss_r1 = pen * (args.gamma / 2)
            report("Loss/r1_penalty", pen.mean())
            report("Loss/D/reg", loss_r1.mean())
            opt_D.zero_grad(set_to_none=True)
            (loss_r1.mean() * R1_INTERVAL).backward()
            opt_D.step()
        # ---- G_ema
        ema_nimg = min(args.batch * 10 / 32 * 1000, cur_nimg * 0.05)
        beta = 0.5 ** (args.batch / max(ema_nimg, 1e-8))
        with torch.no_grad():
            for pe, pg in zip(G_ema.parameters(), G.parameters(), strict=True):
                pe.copy_(pg.lerp(pe, beta))
        cur_nimg += args.batch
        batch_idx += 1
        # ---- ADA
        if args.aug == "ada" and batch_idx % ADA_INTERVAL == 0:
            rt = float(np.mean(ada_acc))
            ada_acc = []
            adjust = np.sign(rt - args.target) * (args.batch * ADA_INTERVAL) / (ADA_KIMG * 1000)
            p = float(min(max(p + adjust, 0.0), 1.0))
        # ---- tick
        done = cur_nimg >= total_nimg
        if not done and cur_tick != 0 and cur_nimg < tick_start_nimg + args.tick * 1000:
            continue
        tick_end = time.time()
        m0 = time.time()
        if args.video_res:
            frames.append(render_frame(args.video_res))
        metric = None
        if cur_tick % args.snap == 0 or done:
            metric = fid()
        maintenance_now = time.time() - m0
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
        out = {k: float(np.mean(v)) for k, v in stats.items()}
        sec_tick = tick_end - tick_start
        kimg_tick = (cur_nimg - tick_start_nimg) / 1000
        out.update(
            {
                "Progress/tick": cur_tick,
                "Progress/kimg": cur_nimg / 1000,
                "Progress/augment": aug_p,
                "Timing/total_sec": tick_end - start,
                "Timing/sec_per_tick": sec_tick,
                "Timing/sec_per_kimg": sec_tick / max(kimg_tick, 1e-8),
                "Timing/maintenance_sec": maintenance,
                "Resources/cpu_mem_gb": rss,
            }
        )
        if metric is not None:
            out["Metrics/fid50k_full"] = metric
        step = int(cur_nimg / 1e3)
        mlflow.log_metrics(out, step=step)
        print(
            f"tick {cur_tick:<5d} kimg {cur_nimg / 1000:<8.1f} time {tick_end - start:<6.0f}s "
            f"sec/tick {sec_tick:<7.2f} sec/kimg {sec_tick / max(kimg_tick, 1e-8):<7.3f} "
            f"maintenance {maintenance:<6.2f} cpumem {rss:<6.2f} augment {aug_p:.3f}"
            + (f"\n{{'results': {{'fid50k_full': {metric:.4f}}}, 'metric': 'fid50k_full'}}" if metric is not None else ""),
            flush=True,
        )  # fmt: skip
        stats = {}
        maintenance = maintenance_now
        cur_tick += 1
        tick_start_nimg = cur_nimg
        tick_start = time.time()
        if done:
            break
    if frames:
        path = os.path.join(os.environ.get("TMPDIR", "/tmp"), f"progress-{os.getpid()}.npy")
        np.save(path, np.stack(frames[-4:]).astype(np.uint8))
        mlflow.log_artifact(path, "video")
        os.remove(path)
    print("Exiting...", flush=True)
