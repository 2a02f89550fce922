"""A tiny masked autoencoder pre-trained the way facebookresearch/mae ``main_pretrain.py``
does, its TensorBoard scalars and ``log.txt`` rows mirrored to MLflow by the team.

Plain PyTorch + scikit-learn's bundled digits + the plain ``mlflow`` API (no timm, no mae
import here).  What is imitated:

* ``models_mae.MaskedAutoencoderViT``: ``patchify`` (``patch_size`` 2 on 8 x 8 digits: 16
  patches of 4 pixels), fixed 2-D sin-cos position embeddings, a ``cls_token``,
  ``random_masking`` by argsort of uniform noise (``mask_ratio`` 0.75: 4 patches kept), an
  encoder of ``depth`` pre-LN blocks of ``embed_dim``, a decoder of ``decoder_depth`` blocks
  of ``decoder_embed_dim`` with a shared ``mask_token``, and ``forward_loss`` with
  ``norm_pix_loss``: the MSE of the predicted pixels against each target patch normalised
  by its own mean and variance (``(target - mean) / (var + 1e-6) ** .5``), averaged over
  the removed patches only;
* ``main_pretrain.py``: ``lr = blr * batch_size / 256``, AdamW (betas (0.9, 0.95),
  ``weight_decay`` 0.05, none on norms and biases), no gradient clipping, and
  ``lr_sched.adjust_learning_rate`` per iteration: linear warm-up for ``warmup_epochs`` then
  a half-cycle cosine to ``min_lr``; the training loop's ``if not math.isfinite(loss_value):
  print("Loss is {}, stopping training"); sys.exit(1)``;
* the logging: every iteration the ``log_writer`` scalars ``train_loss`` and ``lr`` at
  ``epoch_1000x = int((data_iter_step / len(data_loader) + epoch) * 1000)`` (the team's
  mirror keeps MAE's step), and after each epoch the ``log.txt`` row (``train_loss`` = the
  MetricLogger's epoch average, ``train_lr``, ``epoch``) mirrored as ``epoch_train_loss``,
  ``epoch_train_lr`` and ``epoch`` at ``step = epoch``; the team's linear probe (logistic
  regression on the encoder's pooled features of unmasked digits) every ``probe_every``
  epochs as ``probe_acc`` (percent, held-out digits) at ``step = epoch``.

Data: scikit-learn's 8 x 8 digits scaled to [0, 1]; ``n_val`` held out for the probe.
Written without looking at the doctor.

Team options (the faults are real settings, data and code paths):

* ``--blr``, ``--batch_size``, ``--epochs``, ``--warmup_epochs``, ``--min_lr``,
  ``--embed_dim``, ``--depth``, ``--decoder_embed_dim``, ``--mask_ratio``, ``--n_val``,
  ``--probe_every``, ``--probe_pool`` (``mean`` or ``cls``: which features the probe reads);
* ``--extra_epoch k``: the scanner team's re-scanned digits (``digits_scan2.npy``, the
  training digits re-scanned at a slightly lower lamp gain, 0.85-1.0 per sheet, with about
  1 % of pixels unread) join the training set at epoch k; ``--extra_unread``: how that
  export writes an unread pixel (``zero``, or ``nan``).
"""

import math
import sys
import time

import _setup
import mlflow
import numpy as np
import torch
import torch.nn as nn
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression

args = _setup.parse_flags(
    {
        "--seed": 0,
        "--blr": 1e-3,
        "--batch_size": 64,
        "--epochs": 20,
        "--warmup_epochs": 3,
        "--min_lr": 0.0,
        "--embed_dim": 64,
        "--depth": 2,
        "--decoder_embed_dim": 32,
        "--mask_ratio": 0.75,
        "--n_val": 400,
        "--probe_every": 4,
        "--probe_pool": "mean",
        "--extra_epoch": 0,
        "--extra_unread": "zero",
    }
)
rng = _setup.seeded(args.seed)
P = 2  # patch size
L = (8 // P) ** 2

X, y = load_digits(return_X_y=True)
X = (X / 16.0).astype(np.float32)
perm = np.random.default_rng(0).permutation(len(X))
val_idx, train_idx = perm[: args.n_val], perm[args.n_val :]
X_train, y_train, X_val, y_val = X[train_idx], y[train_idx], X[val_idx], y[val_idx]


def scan2_export():
    """The scanner team's re-scan of the training digits, as its exporter writes it."""
    g = np.random.default_rng(9000 + args.seed)
    gain = g.uniform(0.85, 1.0, (len(X_train), 1))  # the scanner's lamp, per sheet
    x = (X_train * gain).astype(np.float32)
    unread = g.random(x.shape) < 0.01
    x[unread] = np.nan if args.extra_unread == "nan" else 0.0
    return x


X_extra = scan2_export()


# ----------------------------------------------------------------------------- model
def sincos_2d(dim, grid):
    ys, xs = np.meshgrid(np.arange(grid), np.arange(grid), indexing="ij")
    omega = 1.0 / 10000 ** (np.arange(dim // 4) / (dim / 4))
    out = [f(p.reshape(-1)[:, None] * omega[None]) for p in (ys, xs) for f in (np.sin, np.cos)]
    emb = np.concatenate(out, axis=1)
    return torch.from_numpy(np.concatenate([np.zeros((1, dim)), emb], 0).astype(np.float32))


class Block(nn.Module):
    def __init__(self, dim, heads=4):
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))

    def forward(self, x):
        h = self.norm1(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        return x + self.mlp(self.norm2(x))


class MaskedAutoencoderViT(nn.Module):
    def __init__(self):
        super().__init__()
        d, dd = args.embed_dim, args.decoder_embed_dim
        self.patch_embed = nn.Linear(P * P, d)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, d))
        self.register_buffer("pos_embed", sincos_2d(d, 8 // P)[None])
        self.blocks = nn.ModuleList([Block(d) for _ in range(args.depth)])
        self.norm = nn.LayerNorm(d)
        self.decoder_embed = nn.Linear(d, dd)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dd))
        self.register_buffer("decoder_pos_embed", sincos_2d(dd, 8 // P)[None])
        self.decoder_blocks = nn.ModuleList([Block(dd) for _ in range(1)])
        self.decoder_norm = nn.LayerNorm(dd)
        self.decoder_pred = nn.Linear(dd, P * P)
        nn.init.normal_(self.cls_token, std=0.02)
        nn.init.normal_(self.mask_token, std=0.02)

    @staticmethod
    def patchify(imgs):
        x = imgs.view(-1, 8 // P, P, 8 // P, P).permute(0, 1, 3, 2, 4)
        return x.reshape(-1, L, P * P)

    def random_masking(self, x, mask_ratio):
        N, Ln, D = x.shape
        len_keep = int(Ln * (1 - mask_ratio))
        noise = torch.rand(N, Ln)
        ids_shuffle = torch.argsort(noise, dim=1)
        ids_restore = torch.argsort(ids_shuffle, dim=1)
        ids_keep = ids_shuffle[:, :len_keep]
        x_masked = torch.gather(x, 1, ids_keep.unsqueeze(-1).repeat(1, 1, D))
        mask = torch.ones(N, Ln)
        mask[:, :len_keep] = 0
        mask = torch.gather(mask, 1, ids_restore)
        return x_masked, mask, ids_restore

    def forward_encoder(self, imgs, mask_ratio):
        x = self.patch_embed(self.patchify(imgs)) + self.pos_embed[:, 1:]
        x, mask, ids_restore = self.random_masking(x, mask_ratio)
        cls = (self.cls_token + self.pos_embed[:, :1]).expand(x.shape[0], -1, -1)
        x = torch.cat([cls, x], dim=1)
        for blk in self.blocks:
            x = blk(x)
        return self.norm(x), mask, ids_restore

    def forward_decoder(self, x, ids_restore):
        x = self.decoder_embed(x)
        n_mask = ids_restore.shape[1] + 1 - x.shape[1]
        mask_tokens = self.mask_token.repeat(x.shape[0], n_mask, 1)
        x_ = torch.cat([x[:, 1:], mask_tokens], dim=1)
        x_ = torch.gather(x_, 1, ids_restore.unsqueeze(-1).repeat(1, 1, x.shape[2]))
        x = torch.cat([x[:, :1], x_], dim=1) + self.decoder_pos_embed
        for blk in self.decoder_blocks:
            x = blk(x)
        return self.decoder_pred(self.decoder_norm(x))[:, 1:]

    def forward_loss(self, imgs, pred, mask):
        target = self.patchify(imgs)
        mean = target.mean(dim=-1, keepdim=True)
        var = target.var(dim=-1, keepdim=True)
        target = (target - mean) / (var + 1.0e-6) ** 0.5
        loss = ((pred - target) ** 2).mean(dim=-1)
        return (loss * mask).sum() / mask.sum()

    def forward(self, imgs, mask_ratio=0.75):
        latent, mask, ids_restore = self.forward_encoder(imgs, mask_ratio)
        pred = self.forward_decoder(latent, ids_restore)
        return self.forward_loss(imgs, pred, mask), pred, mask


model = MaskedAutoencoderViT()
lr = args.blr * args.batch_size / 256
decay = [p for n, p in model.named_parameters() if p.ndim > 1 and "token" not in n]
no_decay = [p for n, p in model.named_parameters() if not (p.ndim > 1 and "token" not in n)]
optimizer = torch.optim.AdamW(
    [{"params": decay, "weight_decay": 0.05}, {"params": no_decay, "weight_decay": 0.0}],
    lr=lr,
    betas=(0.9, 0.95),
)


def adjust_learning_rate(epoch):
    """lr_sched.adjust_learning_rate: warm-up then half-cycle cosine (fractional epoch)."""
    if epoch < args.warmup_epochs:
        cur = lr * epoch / args.warmup_epochs
    else:
        t = (epoch - args.warmup_epochs) / (args.epochs - args.warmup_epochs)
        cur = args.min_lr + (lr - args.min_lr) * 0.5 * (1.0 + math.cos(math.pi * t))
    for g in optimizer.param_groups:
        g["lr"] = cur
    return cur


POOLS = {
    "mean": lambda z: z[:, 1:].mean(1),
    "cls": lambda z: z[:, 0],
}


@torch.no_grad()
def linear_probe():
    model.eval()
    pool = POOLS[args.probe_pool]
    feats = [
        pool(model.forward_encoder(torch.from_numpy(x), 0.0)[0]).numpy() for x in (X_train, X_val)
    ]
    model.train()
    clf = LogisticRegression(max_iter=300).fit(feats[0], y_train)
    return float(clf.score(feats[1], y_val) * 100)


with mlflow.start_run():
    mlflow.log_params(vars(args))
    print(
        f"base lr: {args.blr:.2e}  actual lr: {lr:.2e}  effective batch size: {args.batch_size}",
        flush=True,
    )
    pool = X_train
    for epoch in range(args.epochs):
        if args.extra_epoch and epoch == args.extra_epoch:
            pool = np.concatenate([X_train, X_extra])
            print(f"epoch {epoch}: digits_scan2.npy joins, {len(pool)} training images", flush=True)
        order = rng.permutation(len(pool))
        n_iter = len(pool) // args.batch_size
        losses, t_epoch = [], time.time()
        for it in range(n_iter):
            cur_lr = adjust_learning_rate(it / n_iter + epoch)
            imgs = torch.from_numpy(pool[order[it * args.batch_size : (it + 1) * args.batch_size]])
            loss, _, _ = model(imgs, mask_ratio=args.mask_ratio)
            loss_value = loss.item()
            if not math.isfinite(loss_value):
                print(f"Loss is {loss_value}, stopping training", flush=True)
                sys.exit(1)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss_value)
            epoch_1000x = int((it / n_iter + epoch) * 1000)
            mlflow.log_metrics({"train_loss": loss_value, "lr": cur_lr}, step=epoch_1000x)
            if it % 10 == 0:
                print(
                    f"Epoch: [{epoch}]  [{it:>2}/{n_iter}]  lr: {cur_lr:.6f}  loss: {loss_value:.4f}",
                    flush=True,
                )
        row = {"epoch_train_loss": float(np.mean(losses)), "epoch_train_lr": cur_lr, "epoch": epoch}
        if args.probe_every and (epoch + 1) % args.probe_every == 0:
            row["probe_acc"] = linear_probe()
        mlflow.log_metrics(row, step=epoch)
        print(
            f"Epoch: [{epoch}] Total time: {time.time() - t_epoch:.2f} s  Averaged stats: "
            + "  ".join(f"{k}: {v:.4f}" for k, v in row.items()),
            flush=True,
        )
    print("Training done", flush=True)
