"""A LoRA trained on a tiny class-conditioned denoising diffusion model the way kohya-ss
sd-scripts ``train_network.py`` does, its accelerate tracker scalars mirrored to MLflow by the
team.

Plain PyTorch + scikit-learn's bundled digits + the plain ``mlflow`` API (no diffusers, no
sd-scripts import here).  What is imitated:

* the base model: a small noise-prediction MLP "U-Net" (x_t, a sinusoidal timestep
  embedding and a class embedding from the "text encoder", a linear layer over the one-hot
  class) pre-trained on upright digits (the base checkpoint; 600 steps at a fixed seed when
  the run starts, not logged), then frozen;
* ``networks.lora``: ``LoRAModule`` on every ``nn.Linear`` of the U-Net (``lora_unet_*``)
  and of the text encoder (``lora_te_*``): ``down`` (kaiming-uniform) and ``up`` (zeros) of
  rank ``network_dim``, multiplier ``network_alpha / network_dim``; ``--scale_weight_norms``
  (kohya's max-norm regulariser: every key's ``up @ down`` norm above the limit is scaled
  down after each step, with ``keys_scaled`` and ``average_key_norm`` logged);
* the training set: the digits transposed (the new "style"), ``dataset_repeats`` 2 (the
  folder's ``2_`` prefix), ``train_batch_size``,
  DDPM noise schedule (1,000 steps, linear betas), noise-prediction MSE;
* ``train_network.py``: AdamW with two parameter groups (``unet_lr``, ``text_encoder_lr``),
  ``lr_scheduler`` (``constant``, ``constant_with_warmup``, ``cosine``) with
  ``lr_warmup_steps``, ``max_train_epochs``; every step the accelerate ``log`` of
  ``loss/current``, ``loss/average`` (the ``LossRecorder``'s moving average over the last
  epoch's steps), ``lr/unet``, ``lr/textencoder`` (and ``max_norm/keys_scaled``,
  ``max_norm/average_key_norm`` when the regulariser is on) at ``step = global_step``; after
  each epoch ``loss/epoch`` at ``step = epoch + 1``.

Written without looking at the doctor.

Team options (the faults are real settings, data and code paths):

* ``--unet_lr``, ``--text_encoder_lr``, ``--train_batch_size``, ``--network_dim``,
  ``--network_alpha``, ``--lr_scheduler``, ``--dataset_repeats``, ``--lr_warmup_steps``,
  ``--max_train_epochs``, ``--scale_weight_norms``;
* ``--extra_epoch k``: a second image folder (the team's new scans, ``10_extra``) joins the
  training set at epoch k; ``--extra_format``: how those images were exported (``float``,
  in [0, 1] as the first folder, or ``uint8``, 0-255, which the team's loader does not
  rescale);
* ``--sample_cache 1``: the team's callback keeps every step's predicted noise (still attached
  to the graph, upsampled to 128 x 128 RGB previews) for a sample grid at the end of training.
"""

import math
import time

import _setup
import mlflow
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from sklearn.datasets import load_digits

args = _setup.parse_flags(
    {
        "--seed": 0,
        "--unet_lr": 5e-4,
        "--text_encoder_lr": 5e-4,
        "--train_batch_size": 32,
        "--network_dim": 4,
        "--network_alpha": 1.0,
        "--lr_scheduler": "cosine",
        "--lr_warmup_steps": 0,
        "--max_train_epochs": 6,
        "--dataset_repeats": 2,
        "--scale_weight_norms": 0.0,
        "--extra_epoch": 0,
        "--extra_format": "float",
        "--sample_cache": 0,
    }
)
T_STEPS = 1000
betas = torch.linspace(1e-4, 0.02, T_STEPS)
alphas_cumprod = torch.cumprod(1 - betas, 0)

X, y = load_digits(return_X_y=True)
X = (X / 16.0).astype(np.float32)


def to_model(x):  # images in [0, 1] -> the model's [-1, 1]
    return x * 2.0 - 1.0


def t_embed(t, dim=16):
    freqs = torch.exp(-math.log(10000) * torch.arange(dim // 2) / (dim // 2))
    a = t.float()[:, None] * freqs[None]
    return torch.cat([a.sin(), a.cos()], 1)


class TextEncoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(10, 32)

    def forward(self, labels):
        return self.proj(F.one_hot(labels, 10).float())


class UNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.in_proj = nn.Linear(64 + 16 + 32, 128)
        self.mid = nn.Linear(128, 128)
        self.out_proj = nn.Linear(128, 64)

    def forward(self, x, t, c):
        h = F.silu(self.in_proj(torch.cat([x, t_embed(t), c], 1)))
        h = F.silu(self.mid(h)) + h
        return self.out_proj(h)


def diffusion_loss(unet, te, x0, labels, g):
    t = torch.randint(0, T_STEPS, (len(x0),), generator=g)
    noise = torch.randn(x0.shape, generator=g)
    a = alphas_cumprod[t][:, None]
    xt = a.sqrt() * x0 + (1 - a).sqrt() * noise
    pred = unet(xt, t, te(labels))
    return F.mse_loss(pred, noise), pred


# ----------------------------------------------------------------------------- the base model
torch.manual_seed(1234)
unet, te = UNet(), TextEncoder()
base_g = torch.Generator().manual_seed(1234)
base_opt = torch.optim.AdamW(list(unet.parameters()) + list(te.parameters()), lr=2e-3)
Xb, yb = torch.from_numpy(to_model(X)), torch.from_numpy(y)
for _ in range(600):
    idx = torch.randint(0, len(Xb), (64,), generator=base_g)
    loss, _ = diffusion_loss(unet, te, Xb[idx], yb[idx], base_g)
    base_opt.zero_grad()
    loss.backward()
    base_opt.step()
for p in list(unet.parameters()) + list(te.parameters()):
    p.requires_grad_(False)

rng = _setup.seeded(args.seed)
g = torch.Generator().manual_seed(args.seed)


# ----------------------------------------------------------------------------- networks.lora
class LoRAModule(nn.Module):
    def __init__(self, name, org):
        super().__init__()
        self.lora_name = name
        self.org_forward = org.forward
        self.lora_down = nn.Linear(org.in_features, args.network_dim, bias=False)
        self.lora_up = nn.Linear(args.network_dim, org.out_features, bias=False)
        nn.init.kaiming_uniform_(self.lora_down.weight, a=math.sqrt(5))
        nn.init.zeros_(self.lora_up.weight)
        self.scale = args.network_alpha / args.network_dim
        org.forward = self.forward

    def forward(self, x):
        return self.org_forward(x) + self.lora_up(self.lora_down(x)) * self.scale


def create_network(prefix, module):
    return [
        LoRAModule(f"{prefix}_{n}", m)
        for n, m in module.named_modules()
        if isinstance(m, nn.Linear)
    ]


unet_loras, te_loras = create_network("lora_unet", unet), create_network("lora_te", te)
params_unet = [p for m in unet_loras for p in m.parameters()]
params_te = [p for m in te_loras for p in m.parameters()]
optimizer = torch.optim.AdamW(
    [
        {"params": params_unet, "lr": args.unet_lr},
        {"params": params_te, "lr": args.text_encoder_lr},
    ],
    weight_decay=0.01,
)


@torch.no_grad()
def apply_max_norm(max_norm):
    scaled, norms = 0, []
    for m in unet_loras + te_loras:
        up, down = m.lora_up.weight, m.lora_down.weight
        norm = (up @ down).norm() * m.scale
        desired = torch.clamp(norm, max=max_norm)
        ratio = desired / (norm + 1e-12)
        if ratio < 1:
            scaled += 1
            up.mul_(ratio.sqrt())
            down.mul_(ratio.sqrt())
        norms.append(float(norm * ratio))
    return scaled, float(np.mean(norms))


def export_extra():
    """The team's new scans (10_extra): the same digits re-scanned, transposed like the set."""
    e = np.random.default_rng(3000 + args.seed)
    x = np.clip(X * e.uniform(0.9, 1.0, (len(X), 1)), 0, 1).reshape(-1, 8, 8)
    x = x.transpose(0, 2, 1).reshape(-1, 64).astype(np.float32)
    if args.extra_format == "uint8":
        x = np.round(x * 255).astype(np.float32)
    return np.tile(x, (args.dataset_repeats, 1)), np.tile(y, args.dataset_repeats)


train_x = np.tile(X.reshape(-1, 8, 8).transpose(0, 2, 1).reshape(-1, 64), (args.dataset_repeats, 1))
train_y = np.tile(y, args.dataset_repeats)
steps_per_epoch = len(train_x) // args.train_batch_size
max_steps = steps_per_epoch * args.max_train_epochs


def lr_lambda(step):
    if args.lr_scheduler == "constant":
        return 1.0
    if step < args.lr_warmup_steps:
        return (step + 1) / args.lr_warmup_steps
    if args.lr_scheduler == "constant_with_warmup":
        return 1.0
    prog = (step - args.lr_warmup_steps) / max(1, max_steps - args.lr_warmup_steps)
    return 0.5 * (1 + math.cos(math.pi * prog))


sched = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda)
previews = []

with mlflow.start_run():
    mlflow.log_params(vars(args))
    print(
        f"number of trainable parameters: {sum(p.numel() for p in params_unet + params_te)}",
        flush=True,
    )
    print(f"num train images * repeats: {len(train_x)}  num epochs: {args.max_train_epochs}")
    pool_x, pool_y = train_x, train_y
    loss_list, loss_total = [], 0.0
    global_step = 0
    t0 = time.time()
    for epoch in range(args.max_train_epochs):
        if args.extra_epoch and epoch == args.extra_epoch:
            ex, ey = export_extra()
            pool_x, pool_y = np.concatenate([train_x, ex]), np.concatenate([train_y, ey])
            print(f"epoch {epoch + 1}: 10_extra joins, {len(pool_x)} images", flush=True)
        print(f"\nepoch {epoch + 1}/{args.max_train_epochs}", flush=True)
        order = rng.permutation(len(pool_x))
        n_steps = len(pool_x) // args.train_batch_size
        epoch_losses = []
        for step in range(n_steps):
            idx = order[step * args.train_batch_size : (step + 1) * args.train_batch_size]
            x0 = torch.from_numpy(to_model(pool_x[idx]))
            labels = torch.from_numpy(pool_y[idx])
            loss, pred = diffusion_loss(unet, te, x0, labels, g)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            sched.step()
            if args.sample_cache:
                previews.append(
                    F.interpolate(pred.view(-1, 1, 8, 8), size=(128, 128)).repeat(1, 3, 1, 1)
                )
            logs = {}
            if args.scale_weight_norms:
                keys_scaled, mean_norm = apply_max_norm(args.scale_weight_norms)
                logs["max_norm/keys_scaled"] = keys_scaled
                logs["max_norm/average_key_norm"] = mean_norm
            global_step += 1
            current = float(loss)
            # LossRecorder.add: a moving average over the last epoch's steps
            if epoch == 0 or step >= len(loss_list):
                loss_list.append(current)
            else:
                loss_total -= loss_list[step]
                loss_list[step] = current
            loss_total += current
            avr = loss_total / len(loss_list)
            epoch_losses.append(current)
            lrs = sched.get_last_lr()
            logs.update({"loss/current": current, "loss/average": avr})
            logs.update({"lr/unet": lrs[0], "lr/textencoder": lrs[1]})
            mlflow.log_metrics(logs, step=global_step)
            if global_step % 25 == 0:
                print(f"steps {global_step}/{max_steps}  avr_loss={avr:.4f}", flush=True)
        mlflow.log_metrics({"loss/epoch": float(np.mean(epoch_losses))}, step=epoch + 1)
    print(f"model saved. {time.time() - t0:.1f} s", flush=True)
