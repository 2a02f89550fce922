"""A class-conditional latent diffusion model fine-tuned by a copy of diffusers'
``examples/text_to_image/train_text_to_image.py``, whose ``accelerator.log`` calls go to
MLflow (``log_with="mlflow"``).

Plain torch + the plain ``mlflow`` API (no diffusers or accelerate here).  The images are
scikit-learn's 8x8 digits (``Normalize([0.5], [0.5])`` to [-1, 1]), the "caption" is the
digit's name, read by a frozen text encoder (an embedding table); a frozen VAE encoder (a
fixed "pretrained" conv stack) turns each batch into 4x4x4 latents (``latent_dist.sample() *
scaling_factor``), and a small denoiser (the "UNet": an MLP with a sinusoidal timestep
embedding and the caption's hidden state) learns to predict the noise a ``DDPMScheduler``
(1000 steps, ``scaled_linear`` betas) added; the loss is the MSE of that noise prediction, so
it depends on the sampled timesteps and stays noisy.  The train split is streamed in order
from ``--dataset_shards`` shards (a shuffle buffer within each shard, as a webdataset does).
The script's arguments are logged as params (``learning_rate``, ``lr_scheduler``,
``train_batch_size``, ...).  Per optimizer step (``step`` = ``global_step``, from 1):
``train_loss`` (the loss averaged over ``gradient_accumulation_steps`` micro-batches) and, as
the progress bar's postfix, after every micro-batch, ``step_loss`` (that micro-batch's loss)
and ``lr``.  No
validation loss is logged (the script only logs validation images).  Written without looking
at the doctor.

Faults are real settings: ``--learning_rate`` far too high; a shard exported before the
transform (``--bad_shard``: raw 0-16 pixel values, not [-1, 1]); ``--mixed_precision fp16``,
which casts the frozen VAE to float16 as the script does (this VAE's activations pass
float16's range); ``--resolution`` far too large (the resize of a batch cannot be allocated).
"""

import math
import time

import _setup
import mlflow
import numpy as np
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits

args = _setup.parse_flags(
    {
        "--seed": 0,
        "--resolution": 8,
        "--train_batch_size": 32,
        "--gradient_accumulation_steps": 1,
        "--max_train_steps": 400,
        "--learning_rate": 5e-4,
        "--lr_scheduler": "constant",  # constant, constant_with_warmup, cosine, linear
        "--lr_warmup_steps": 0,
        "--adam_beta1": 0.9,
        "--adam_beta2": 0.999,
        "--adam_weight_decay": 1e-2,
        "--max_grad_norm": 1.0,
        "--snr_gamma": 0.0,
        "--noise_offset": 0.0,
        "--use_ema": 0,
        "--mixed_precision": "no",  # no, fp16
        "--dataset_shards": 8,
        "--bad_shard": -1,
        "--unet_width": 256,
    }
)
rng = _setup.seeded(args.seed)
X, y = load_digits(return_X_y=True)
images = (X.reshape(-1, 1, 8, 8) / 16.0 * 2 - 1).astype(np.float32)  # Normalize([0.5], [0.5])
order = rng.permutation(len(images))
shards = np.array_split(order, args.dataset_shards)
CAPTIONS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]

# --- the frozen models: fixed "pretrained" weights, never the run's seed
g = torch.Generator().manual_seed(20221017)
CONV_IN_STD, DOWN_STD, OUT_STD = 10.0, 80.0, 1.2e-5


class VAEEncoder(torch.nn.Module):  # AutoencoderKL.encode: conv_in, a down block, conv_out
    scaling_factor = 1.0

    def __init__(self):
        super().__init__()
        self.conv_in = torch.nn.Conv2d(1, 32, 3, padding=1)
        self.down = torch.nn.Conv2d(32, 32, 3, stride=2, padding=1)
        self.conv_out = torch.nn.Conv2d(32, 8, 1)  # mean and logvar, 4 channels each
        with torch.no_grad():  # large inner activations, small output weights
            for m, std in (
                (self.conv_in, CONV_IN_STD),
                (self.down, DOWN_STD),
                (self.conv_out, OUT_STD),
            ):
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) * std)
                m.bias.zero_()
            self.conv_out.weight[4:] = 0.0
            self.conv_out.bias[4:] = -6.0  # a narrow posterior

    def forward(self, x):
        h = F.silu(self.down(F.silu(self.conv_in(x))))
        mean, logvar = self.conv_out(h).chunk(2, dim=1)
        return mean, logvar.clamp(-30.0, 20.0)


vae = VAEEncoder().requires_grad_(False)
text_encoder = torch.nn.Embedding(len(CAPTIONS), 32).requires_grad_(False)
with torch.no_grad():
    text_encoder.weight.copy_(torch.randn(len(CAPTIONS), 32, generator=g))
weight_dtype = torch.float16 if args.mixed_precision == "fp16" else torch.float32
vae.to(weight_dtype)  # "cast all non-trainable weights to half-precision"
text_encoder.to(weight_dtype)


class Denoiser(torch.nn.Module):  # the "UNet2DConditionModel"
    def __init__(self, width, latent_dim=64):
        super().__init__()
        self.time_embedding = torch.nn.Sequential(
            torch.nn.Linear(64, width), torch.nn.SiLU(), torch.nn.Linear(width, width)
        )
        self.cond = torch.nn.Linear(32, width)
        self.inp = torch.nn.Linear(latent_dim, width)
        self.blocks = torch.nn.ModuleList([torch.nn.Linear(width, width) for _ in range(3)])
        self.norms = torch.nn.ModuleList([torch.nn.LayerNorm(width) for _ in range(3)])
        self.out = torch.nn.Linear(width, latent_dim)

    def forward(self, z, t, enc):
        half = 32
        freqs = torch.exp(-math.log(10000) * torch.arange(half) / half)
        a = t.float()[:, None] * freqs[None]
        temb = self.time_embedding(torch.cat([a.sin(), a.cos()], 1))
        h = self.inp(z.flatten(1)) + temb + self.cond(enc)
        for blk, norm in zip(self.blocks, self.norms, strict=True):
            h = h + blk(F.silu(norm(h)))
        return self.out(F.silu(h)).view_as(z)


unet = Denoiser(args.unet_width)
ema = [p.detach().clone() for p in unet.parameters()] if args.use_ema else None
opt = torch.optim.AdamW(
    unet.parameters(),
    lr=args.learning_rate,
    betas=(args.adam_beta1, args.adam_beta2),
    weight_decay=args.adam_weight_decay,
)
T = 1000  # DDPMScheduler(beta_schedule="scaled_linear")
betas = torch.linspace(0.00085**0.5, 0.012**0.5, T) ** 2
alphas_cumprod = torch.cumprod(1 - betas, 0)


def lr_at(step):  # diffusers.optimization.get_scheduler, step from 0
    warm = min(1.0, step / args.lr_warmup_steps) if args.lr_warmup_steps else 1.0
    if args.lr_scheduler in ("constant", "constant_with_warmup"):
        return args.learning_rate * warm
    p = max(
        0.0, (step - args.lr_warmup_steps) / max(1, args.max_train_steps - args.lr_warmup_steps)
    )
    if args.lr_scheduler == "cosine":
        return args.learning_rate * warm * 0.5 * (1 + math.cos(math.pi * p))
    return args.learning_rate * warm * (1 - p)  # linear


def train_dataloader():  # in shard order; a shuffle buffer within each shard
    while True:
        for k, shard in enumerate(shards):
            idx = shard[rng.permutation(len(shard))]
            for i in range(0, len(idx) - args.train_batch_size + 1, args.train_batch_size):
                b = idx[i : i + args.train_batch_size]
                px = images[b]
                if k == args.bad_shard:  # exported before the transform: raw 0-16 pixels
                    px = X[b].reshape(-1, 1, 8, 8).astype(np.float32)
                yield k, torch.from_numpy(px), torch.from_numpy(y[b])


def compute_snr(t):
    a = alphas_cumprod[t]
    return a / (1 - a)


with mlflow.start_run():
    mlflow.log_params(
        {
            "pretrained_model_name_or_path": "digits/ldm-tiny",
            "dataset_name": "sklearn/digits",
            "caption_column": "text",
            "seed": args.seed,
            "resolution": args.resolution,
            "train_batch_size": args.train_batch_size,
            "gradient_accumulation_steps": args.gradient_accumulation_steps,
            "max_train_steps": args.max_train_steps,
            "learning_rate": args.learning_rate,
            "scale_lr": False,
            "lr_scheduler": args.lr_scheduler,
            "lr_warmup_steps": args.lr_warmup_steps,
            "adam_beta1": args.adam_beta1,
            "adam_beta2": args.adam_beta2,
            "adam_weight_decay": args.adam_weight_decay,
            "max_grad_norm": args.max_grad_norm,
            "snr_gamma": args.snr_gamma or None,
            "noise_offset": args.noise_offset,
            "use_ema": bool(args.use_ema),
            "mixed_precision": args.mixed_precision,
            "prediction_type": "epsilon",
        }
    )
    total = args.train_batch_size * args.gradient_accumulation_steps
    print("***** Running training *****", flush=True)
    print(f"  Num examples = {len(images)}", flush=True)
    print(f"  Total train batch size (w. parallel, distributed & accumulation) = {total}")
    print(f"  Total optimization steps = {args.max_train_steps}", flush=True)
    data = train_dataloader()
    global_step, train_loss, micro = 0, 0.0, 0
    t0 = time.time()
    while global_step < args.max_train_steps:
        shard, pixel_values, labels = next(data)
        if args.resolution != 8:  # transforms.Resize(resolution)
            pixel_values = F.interpolate(pixel_values, size=(args.resolution, args.resolution))
            pixel_values = F.adaptive_avg_pool2d(pixel_values, 8)
        with torch.no_grad():
            mean, logvar = vae(pixel_values.to(weight_dtype))
            latents = mean + torch.exp(0.5 * logvar) * torch.randn_like(mean)
            latents = (latents * vae.scaling_factor).float()
            encoder_hidden_states = text_encoder(labels).float()
        noise = torch.randn_like(latents)
        if args.noise_offset:
            noise += args.noise_offset * torch.randn(latents.shape[0], latents.shape[1], 1, 1)
        timesteps = torch.randint(0, T, (latents.shape[0],))
        a = alphas_cumprod[timesteps].view(-1, 1, 1, 1)
        noisy_latents = a.sqrt() * latents + (1 - a).sqrt() * noise
        model_pred = unet(noisy_latents, timesteps, encoder_hidden_states)
        if args.snr_gamma:
            snr = compute_snr(timesteps)
            w = torch.clamp(snr, max=args.snr_gamma) / snr
            loss = (F.mse_loss(model_pred, noise, reduction="none").mean([1, 2, 3]) * w).mean()
        else:
            loss = F.mse_loss(model_pred.float(), noise.float(), reduction="mean")
        train_loss += loss.item() / args.gradient_accumulation_steps
        (loss / args.gradient_accumulation_steps).backward()
        micro += 1
        if micro % args.gradient_accumulation_steps == 0:  # accelerator.sync_gradients
            if args.max_grad_norm:
                torch.nn.utils.clip_grad_norm_(unet.parameters(), args.max_grad_norm)
            for gr in opt.param_groups:
                gr["lr"] = lr_at(global_step)
            opt.step()
            opt.zero_grad()
            if ema is not None:
                decay = min(0.9999, (1 + global_step) / (10 + global_step))
                with torch.no_grad():
                    for e, p in zip(ema, unet.parameters(), strict=True):
                        e.mul_(decay).add_(p.detach(), alpha=1 - decay)
            global_step += 1
            mlflow.log_metrics({"train_loss": train_loss}, step=global_step)
            train_loss = 0.0
        logs = {"step_loss": loss.item(), "lr": lr_at(global_step)}
        mlflow.log_metrics(logs, step=global_step)
        if global_step % 100 == 0 and micro % args.gradient_accumulation_steps == 0:
            print(
                f"Steps: {global_step}/{args.max_train_steps} shard={shard} "
                f"step_loss={logs['step_loss']:.4f} lr={logs['lr']:.3g} "
                f"({time.time() - t0:.0f}s)",
                flush=True,
            )
    print("Saving pipeline; training done", flush=True)
