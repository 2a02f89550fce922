"""An EnCodec-style compression model trained with AudioCraft's ``CompressionSolver``
(``audiocraft/solvers/compression.py``), its metrics mirrored to MLflow by the team.

Plain PyTorch + the plain ``mlflow`` API (no audiocraft import here).  What is imitated:

* ``EncodecModel``: a SEANet-like convolutional encoder (strides 4 x 4), a residual vector
  quantiser (``n_q`` codebooks of ``bins`` entries, straight-through, commitment loss,
  codebooks initialised from the first batch's vectors as ``kmeans_init`` does) and a
  mirrored decoder on 1-D signals of ``segment`` samples at ``sample_rate`` 8 kHz;
* the losses of the compression solver: ``l1``, ``l2``, ``msspec`` (multi-scale STFT
  magnitudes), ``mel`` (a fixed triangular filterbank on the STFT), the adversarial
  ``adv_msstftd`` (hinge) and feature-matching ``feat_msstftd`` against a small multi-scale
  STFT discriminator, whose own loss is ``d_msstftd``; ``commit`` from the quantiser;
  ``bandwidth`` = n_q * log2(bins) * frame_rate / 1000 kbps; the team's ``ratio1`` = the
  gradient norm of all generator losses over that of the reconstruction losses alone;
  ``grad_norm`` before clipping; Adam (betas 0.5, 0.9), ``lr`` with optional warm-up and
  cosine schedule;
* the train stage logs every ``log_updates`` updates at step = update; the valid stage runs
  after every epoch and logs ``valid_l1``, ``valid_mel``, ``valid_msspec`` and ``sisnr`` (dB)
  at step = epoch from 1.

Data: generated audio-like clips (sums of 1-3 sines with attack/decay envelopes and noise).
Written without looking at the doctor.

Team options (the faults are real settings, data and code paths):

* ``--lr``, ``--batch_size``, ``--epochs``, ``--updates_per_epoch``, ``--channels``,
  ``--n_q``, ``--bins``, ``--warmup``, ``--schedule`` (constant|cosine), ``--valid_size``;
* ``--extra_epoch k``: the second recording session (``session2/``, its manifest a dict of
  clip -> {"path", "sample_rate", "duration"}) joins the training set at epoch k; the team's
  loader reads each entry with ``--extra_rate_key`` (default ``sample_rate``);
  ``--extra_dropouts n``: n clips of the session hold recorder drop-outs, written as NaN by
  the export;
* ``--debug_spectro 1``: the team's debugging hook keeps every update's decoded batch, still
  attached to the graph, with its 16x-upsampled spectrogram, for a report at the end.
"""

import math
import time

import _setup
import mlflow
import torch
import torch.nn as nn
import torch.nn.functional as F

args = _setup.parse_flags(
    {
        "--seed": 0,
        "--lr": 1e-3,
        "--batch_size": 16,
        "--epochs": 8,
        "--updates_per_epoch": 15,
        "--log_updates": 5,
        "--channels": 16,
        "--n_q": 4,
        "--bins": 64,
        "--warmup": 0,
        "--schedule": "constant",
        "--valid_size": 64,
        "--segment": 512,
        "--extra_epoch": 0,
        "--extra_rate_key": "sample_rate",
        "--extra_dropouts": 0,
        "--debug_spectro": 0,
    }
)
rng = _setup.seeded(args.seed)
SR = 8000


# ----------------------------------------------------------------------------- data
def make_clips(g, n, length):
    t = torch.arange(length) / SR
    out = torch.zeros(n, length)
    for i in range(n):
        k = 1 + int(torch.randint(0, 3, (1,), generator=g))
        for _ in range(k):
            f = 80 + 1500 * float(torch.rand(1, generator=g))
            a = 0.2 + 0.5 * float(torch.rand(1, generator=g))
            on = int(torch.randint(0, length // 2, (1,), generator=g))
            env = torch.zeros(length)
            dec = torch.exp(
                -torch.arange(length - on) / (200 + 800 * float(torch.rand(1, generator=g)))
            )
            env[on:] = dec
            out[i] += (
                a * env * torch.sin(2 * math.pi * f * t + 6.28 * float(torch.rand(1, generator=g)))
            )
        out[i] += 0.02 * torch.randn(length, generator=g)
    return out.clamp(-1, 1)


g = torch.Generator().manual_seed(1000 + args.seed)
train_set = make_clips(g, 512, args.segment)
valid_set = make_clips(
    torch.Generator().manual_seed(5000 + args.seed), args.valid_size, args.segment
)


def load_session2():
    """The second session: a manifest of clips, read through the team's loader."""
    g2 = torch.Generator().manual_seed(2000 + args.seed)
    clips = make_clips(g2, 256, args.segment)
    manifest = {
        f"session2/clip_{i:04d}.wav": {
            "path": f"clip_{i:04d}.wav",
            "sample_rate": SR,
            "duration": args.segment / SR,
        }
        for i in range(len(clips))
    }
    for i in range(args.extra_dropouts):
        j = (37 * i + 11) % len(clips)
        clips[j, 200:260] = float("nan")
    rows = []
    for i, (_name, meta) in enumerate(manifest.items()):
        if meta[args.extra_rate_key] != SR:
            continue
        rows.append(clips[i])
    return torch.stack(rows)


# ----------------------------------------------------------------------------- model
class SEANet(nn.Module):
    def __init__(self, c, decoder=False):
        super().__init__()
        if not decoder:
            self.net = nn.Sequential(
                nn.Conv1d(1, c, 7, padding=3),
                nn.ELU(),
                nn.Conv1d(c, 2 * c, 8, stride=4, padding=2),
                nn.ELU(),
                nn.Conv1d(2 * c, 4 * c, 8, stride=4, padding=2),
                nn.ELU(),
                nn.Conv1d(4 * c, 32, 3, padding=1),
            )
        else:
            self.net = nn.Sequential(
                nn.Conv1d(32, 4 * c, 3, padding=1),
                nn.ELU(),
                nn.ConvTranspose1d(4 * c, 2 * c, 8, stride=4, padding=2),
                nn.ELU(),
                nn.ConvTranspose1d(2 * c, c, 8, stride=4, padding=2),
                nn.ELU(),
                nn.Conv1d(c, 1, 7, padding=3),
            )

    def forward(self, x):
        return self.net(x)


class RVQ(nn.Module):
    def __init__(self, n_q, bins, dim=32):
        super().__init__()
        self.codebooks = nn.ParameterList(
            [nn.Parameter(torch.randn(bins, dim) * 0.5) for _ in range(n_q)]
        )
        self.inited = False

    def forward(self, z):
        x = z.transpose(1, 2)
        residual, quant, commit = x, torch.zeros_like(x), 0.0
        init = self.training and not self.inited
        self.inited = True
        for cb in self.codebooks:
            if init:  # as AudioCraft's kmeans_init: codebooks from the first batch's vectors
                flat = residual.detach().reshape(-1, residual.size(-1))
                pick = torch.randperm(len(flat), generator=torch.Generator().manual_seed(args.seed))
                cb.data.copy_(flat[pick[: cb.size(0)]])
            d = (residual.unsqueeze(-2) - cb).pow(2).sum(-1)
            q = cb[d.argmin(-1)]
            commit = commit + F.mse_loss(residual, q.detach()) + F.mse_loss(q, residual.detach())
            q_st = residual + (q - residual).detach()
            quant = quant + q_st
            residual = residual - q.detach()
        return quant.transpose(1, 2), commit / len(self.codebooks)


class Encodec(nn.Module):
    def __init__(self):
        super().__init__()
        self.encoder = SEANet(args.channels)
        self.quantizer = RVQ(args.n_q, args.bins)
        self.decoder = SEANet(args.channels, decoder=True)

    def forward(self, x):
        q, commit = self.quantizer(self.encoder(x))
        return self.decoder(q), commit


def stft_mag(x, n_fft):
    w = torch.hann_window(n_fft)
    return torch.stft(x.squeeze(1), n_fft, n_fft // 4, window=w, return_complex=True).abs()


MEL = None


def mel_fb(n_fft, n_mels=16):
    n = n_fft // 2 + 1
    centers = torch.linspace(0, n - 1, n_mels + 2)
    fb = torch.zeros(n_mels, n)
    idx = torch.arange(n).float()
    for m in range(n_mels):
        lo, c, hi = centers[m], centers[m + 1], centers[m + 2]
        fb[m] = torch.clamp(torch.minimum((idx - lo) / (c - lo), (hi - idx) / (hi - c)), min=0)
    return fb


def msspec_loss(y, x):
    loss = 0.0
    for n in (64, 128, 256):
        sy, sx = stft_mag(y, n), stft_mag(x, n)
        loss = (
            loss
            + F.l1_loss(sy, sx) / n * 8
            + F.l1_loss(torch.log(sy + 1e-2), torch.log(sx + 1e-2)) * 0.1
        )
    return loss / 3


def mel_loss(y, x):
    global MEL
    if MEL is None:
        MEL = mel_fb(256)
    my = torch.log(MEL @ stft_mag(y, 256) + 1e-2)
    mx = torch.log(MEL @ stft_mag(x, 256) + 1e-2)
    return F.l1_loss(my, mx)


class STFTDisc(nn.Module):
    def __init__(self, n_fft):
        super().__init__()
        self.n_fft = n_fft
        self.convs = nn.ModuleList(
            [
                nn.Conv2d(2, 8, 3, padding=1),
                nn.Conv2d(8, 8, 3, stride=(1, 2), padding=1),
                nn.Conv2d(8, 1, 3, padding=1),
            ]
        )

    def forward(self, x):
        w = torch.hann_window(self.n_fft)
        s = torch.stft(x.squeeze(1), self.n_fft, self.n_fft // 4, window=w, return_complex=True)
        h = torch.stack([s.real, s.imag], 1)
        feats = []
        for i, c in enumerate(self.convs):
            h = c(h)
            if i < len(self.convs) - 1:
                h = F.leaky_relu(h, 0.2)
            feats.append(h)
        return h, feats


class MSSTFTD(nn.Module):
    def __init__(self):
        super().__init__()
        self.discs = nn.ModuleList([STFTDisc(n) for n in (64, 128)])

    def forward(self, x):
        return [d(x) for d in self.discs]


model = Encodec()
disc = MSSTFTD()
opt = torch.optim.Adam(model.parameters(), lr=args.lr, betas=(0.5, 0.9))
opt_d = torch.optim.Adam(disc.parameters(), lr=args.lr, betas=(0.5, 0.9))
total_updates = args.epochs * args.updates_per_epoch
frame_rate = SR / 16
bandwidth = args.n_q * math.log2(args.bins) * frame_rate / 1000


def lr_at(u):
    s = 1.0
    if args.warmup and u < args.warmup:
        s = (u + 1) / args.warmup
    elif args.schedule == "cosine":
        p = (u - args.warmup) / max(1, total_updates - args.warmup)
        s = 0.5 * (1 + math.cos(math.pi * p))
    return args.lr * s


def grads_norm(params):
    return math.sqrt(sum(float(p.grad.pow(2).sum()) for p in params if p.grad is not None))


def sisnr(est, ref):
    est, ref = est - est.mean(-1, keepdim=True), ref - ref.mean(-1, keepdim=True)
    s = (est * ref).sum(-1, keepdim=True) / (ref.pow(2).sum(-1, keepdim=True) + 1e-8) * ref
    n = est - s
    return (10 * torch.log10(s.pow(2).sum(-1) / (n.pow(2).sum(-1) + 1e-8) + 1e-8)).mean()


debug_keep = []
pool = train_set
with mlflow.start_run():
    mlflow.log_params(vars(args))
    print(
        f"Model: Encodec n_q={args.n_q} bins={args.bins} bandwidth={bandwidth:.2f} kbps", flush=True
    )
    u = 0
    for epoch in range(1, args.epochs + 1):
        if args.extra_epoch and epoch == args.extra_epoch:
            extra = load_session2()
            pool = torch.cat([train_set, extra])
            print(
                f"Epoch {epoch}: session2 joined, {len(extra)} clips, {len(pool)} in all",
                flush=True,
            )
        model.train()
        acc, t0 = {}, time.time()
        for _ in range(args.updates_per_epoch):
            for grp in list(opt.param_groups) + list(opt_d.param_groups):
                grp["lr"] = lr_at(u)
            idx = torch.from_numpy(rng.integers(0, len(pool), args.batch_size))
            x = pool[idx].unsqueeze(1)
            y, commit = model(x)
            # discriminator
            d_loss = 0.0
            for (lr_, _), (lf, _) in zip(disc(x), disc(y.detach()), strict=True):
                d_loss = d_loss + F.relu(1 - lr_).mean() + F.relu(1 + lf).mean()
            d_loss = d_loss / 2
            opt_d.zero_grad()
            d_loss.backward()
            opt_d.step()
            # generator
            l1 = F.l1_loss(y, x)
            l2 = F.mse_loss(y, x)
            ms = msspec_loss(y, x)
            mel = mel_loss(y, x)
            adv, feat = 0.0, 0.0
            for (_, fr), (lf, ff) in zip(disc(x), disc(y), strict=True):
                adv = adv + F.relu(1 - lf).mean()
                feat = feat + sum(
                    F.l1_loss(b, a.detach()) / (a.detach().abs().mean() + 1e-5)
                    for a, b in zip(fr, ff, strict=True)
                ) / len(fr)
            adv, feat = adv / 2, feat / 2
            opt.zero_grad()
            recon = 1.0 * l1 + 2.0 * ms + 1.0 * mel + commit
            recon.backward(retain_graph=True)
            n_recon = grads_norm(model.parameters())
            (0.5 * adv + 1.0 * feat).backward()
            gn = grads_norm(model.parameters())
            torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
            opt.step()
            disc.zero_grad()
            if args.debug_spectro:
                spec = F.interpolate(stft_mag(y, 256).unsqueeze(1), scale_factor=16.0)
                debug_keep.append((y, spec))
            u += 1
            m = {
                "l1": l1.item(),
                "l2": l2.item(),
                "msspec": ms.item(),
                "mel": mel.item(),
                "adv_msstftd": adv.item(),
                "feat_msstftd": feat.item(),
                "d_msstftd": d_loss.item(),
                "commit": commit.item(),
                "bandwidth": bandwidth,
                "ratio1": gn / (n_recon + 1e-12),
                "grad_norm": gn,
                "lr": lr_at(u - 1),
            }
            for k, v in m.items():
                acc[k] = acc.get(k, 0.0) + v
            if u % args.log_updates == 0:
                mlflow.log_metrics(m, step=u)
        line = " | ".join(f"{k}={v / args.updates_per_epoch:.4f}" for k, v in acc.items())
        print(f"Train Summary | Epoch {epoch} | {line} | {time.time() - t0:.1f}s", flush=True)
        model.eval()
        with torch.no_grad():
            xv = valid_set.unsqueeze(1)
            yv, _ = model(xv)
            v = {
                "valid_l1": F.l1_loss(yv, xv).item(),
                "valid_msspec": msspec_loss(yv, xv).item(),
                "valid_mel": mel_loss(yv, xv).item(),
                "sisnr": sisnr(yv.squeeze(1), xv.squeeze(1)).item(),
            }
        mlflow.log_metrics(v, step=epoch)
        print(
            f"Valid Summary | Epoch {epoch} | " + " | ".join(f"{k}={x:.4f}" for k, x in v.items()),
            flush=True,
        )
    if debug_keep:
        print(f"debug report: {len(debug_keep)} decoded batches kept", flush=True)
