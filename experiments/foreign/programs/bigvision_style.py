"""A small ViT classifier trained the big_vision way (``big_vision.train`` with a
``configs/*.py`` config), its metric writer mirrored to MLflow by the team.

Plain PyTorch + scikit-learn's bundled digits + the plain ``mlflow`` API (no JAX, no
big_vision here).  What is imitated:

* ``vit.Model``: patch embedding (``patch_size`` 2 on 8 x 8 images: 16 tokens), learned
  ``posemb``, ``depth`` pre-LN encoder blocks of ``width`` with ``num_heads``, ``mlp_dim`` =
  2 x width, ``pool_type`` "gap", a zero-initialised head (``head_zeroinit``);
* the config: ``pp_train`` = ``value_range(-1, 1)`` and one-hot labels, ``loss``
  "softmax_xent", ``optax_name`` "scale_by_adam" with decoupled ``wd`` scaled by the
  schedule, ``schedule`` = linear ``warmup_steps`` then ``decay_type`` "cosine" to 0 at
  ``total_steps``, ``grad_clip_norm`` 1.0, ``input.batch_size``;
* the metrics: every ``log_training_steps`` the train step's ``training_loss``,
  ``l2_grads``, ``l2_params``, ``l2_updates``, ``global_schedule`` (the schedule's
  multiplier), ``img/sec/core``, ``examples_seen``, ``epoch``; every ``eval_steps`` the
  classification evaluator's ``val/prec@1`` (MLflow refuses ``@`` in a name: the team's
  mirror writes ``val/prec_1``) and ``val/loss``; ``step`` = the step from 1, and big_vision's
  console line ``[step] training_loss = ..., l2_grads = ...``;
* checkpoints every ``checkpoint_steps`` written asynchronously (``ckpt_writer`` in a
  background thread), as big_vision does.

Data: scikit-learn's 8 x 8 digits (1,797 images), ``n_val`` held out.  Written without
looking at the doctor.

Team options (the faults are real settings, data and code paths):

* ``--lr``, ``--wd``, ``--batch_size``, ``--total_steps``, ``--warmup_steps``, ``--width``,
  ``--depth``, ``--n_val``, ``--checkpoint_steps``;
* ``--relabel_step k``: from step k half of every batch comes from the vendor's re-annotated
  copy of the training images (the team's "relabel" split); ``--relabel_map``: how the
  vendor's class indices are read ("identity", or "vendor": the vendor counts its classes
  from 1, so its label i is read as class i mod 10);
* ``--drift_monitor 1``: the team's feature-drift monitor embeds the whole training set every
  step and keeps the embeddings for an end-of-run comparison;
* ``--ckpt_with_metrics 1``: the team's checkpoint writer holds the checkpoint lock while it
  waits for the step's pending metrics to be written, so the checkpoint carries them.
"""

import io
import math
import queue
import threading
import time

import _setup
import mlflow
import numpy as np
import torch
import torch.nn as nn
from sklearn.datasets import load_digits

args = _setup.parse_flags(
    {
        "--seed": 0,
        "--lr": 1e-3,
        "--wd": 1e-4,
        "--batch_size": 64,
        "--total_steps": 600,
        "--warmup_steps": 50,
        "--width": 48,
        "--depth": 2,
        "--n_val": 297,
        "--log_training_steps": 10,
        "--eval_steps": 50,
        "--checkpoint_steps": 0,
        "--relabel_step": 0,
        "--relabel_map": "identity",
        "--drift_monitor": 0,
        "--ckpt_with_metrics": 0,
    }
)
rng = _setup.seeded(args.seed)

# ----------------------------------------------------------------------------- data
X, y = load_digits(return_X_y=True)
perm = np.random.default_rng(100 + args.seed).permutation(len(X))
X = (X[perm] / 16.0 * 2.0 - 1.0).astype(np.float32).reshape(-1, 1, 8, 8)  # value_range(-1, 1)
y = y[perm]
Xva, yva = torch.tensor(X[: args.n_val]), torch.tensor(y[: args.n_val])
Xtr, ytr = torch.tensor(X[args.n_val :]), torch.tensor(y[args.n_val :])
n_train = len(Xtr)


# ----------------------------------------------------------------------------- model
class Encoder1DBlock(nn.Module):
    def __init__(self, width, heads):
        super().__init__()
        self.ln1 = nn.LayerNorm(width)
        self.attn = nn.MultiheadAttention(width, heads, batch_first=True)
        self.ln2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(
            nn.Linear(width, 2 * width), nn.GELU(), nn.Linear(2 * width, width)
        )

    def forward(self, x):
        h = self.ln1(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        return x + self.mlp(self.ln2(x))


class ViT(nn.Module):
    def __init__(self):
        super().__init__()
        w = args.width
        self.embedding = nn.Conv2d(1, w, kernel_size=2, stride=2)
        self.pos_embedding = nn.Parameter(torch.randn(1, 16, w) * 0.02)
        self.blocks = nn.ModuleList([Encoder1DBlock(w, 4) for _ in range(args.depth)])
        self.encoder_norm = nn.LayerNorm(w)
        self.head = nn.Linear(w, 10)
        nn.init.zeros_(self.head.weight)  # head_zeroinit
        nn.init.zeros_(self.head.bias)

    def embed(self, x):
        return self.embedding(x).flatten(2).transpose(1, 2) + self.pos_embedding

    def forward(self, x):
        h = self.embed(x)
        for b in self.blocks:
            h = b(h)
        pre_logits = self.encoder_norm(h).mean(1)  # pool_type gap
        return self.head(pre_logits)


def softmax_xent(logits, labels):
    onehot = nn.functional.one_hot(labels, 10).float()
    return -(onehot * torch.log_softmax(logits, -1)).sum(-1).mean()


model = ViT()
opt = torch.optim.Adam(model.parameters(), lr=args.lr, betas=(0.9, 0.999))


def sched(step):
    if step < args.warmup_steps:
        return step / args.warmup_steps
    frac = (step - args.warmup_steps) / max(1, args.total_steps - args.warmup_steps)
    return 0.5 * (1 + math.cos(math.pi * min(1.0, frac)))


def l2(ts):
    return float(torch.sqrt(sum((t.float() ** 2).sum() for t in ts)))


# ----------------------------------------------------------------------------- checkpoints
ckpt_lock = threading.Lock()
pending = queue.Queue()
saved = {}


def write_ckpt(step, state):
    with ckpt_lock:
        if args.ckpt_with_metrics:
            pending.join()  # the checkpoint waits for its step's metrics to be written
        buf = io.BytesIO()
        torch.save(state, buf)
        saved[step] = len(buf.getvalue())


def evaluate():
    model.eval()
    with torch.no_grad():
        logits = model(Xva)
        loss = softmax_xent(logits, yva).item()
        prec = (logits.float().argmax(-1) == yva).float().mean().item()
    model.train()
    return {"val/prec_1": prec, "val/loss": loss}


with mlflow.start_run():
    mlflow.log_params(vars(args))
    n_params = sum(p.numel() for p in model.parameters())
    print(f"NOTE: Initializing model... {n_params:,} parameters", flush=True)
    print(
        f"NOTE: Running for {args.total_steps} steps, that means {args.total_steps * args.batch_size / n_train:.1f} epochs",
        flush=True,
    )
    drift_embeddings = []
    ckpt_writer = None
    t0 = time.time()
    for step in range(1, args.total_steps + 1):
        idx = torch.tensor(rng.integers(0, n_train, args.batch_size))
        xb, yb = Xtr[idx], ytr[idx]
        if args.relabel_step and step >= args.relabel_step:
            h = args.batch_size // 2
            vendor = ytr[idx[:h]] + (1 if args.relabel_map == "vendor" else 0)
            yb = torch.cat([vendor % 10, yb[h:]])
        if args.drift_monitor:
            drift_embeddings.append(model.embed(Xtr))
        mult = sched(step)
        for g in opt.param_groups:
            g["lr"] = args.lr * mult
        before = [p.detach().clone() for p in model.parameters()]
        loss = softmax_xent(model(xb), yb)
        opt.zero_grad()
        loss.backward()
        grads = [p.grad for p in model.parameters()]
        l2_grads = l2(grads)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        with torch.no_grad():
            for p in model.parameters():
                p.mul_(1 - args.wd * mult)  # decoupled wd, scaled by the schedule
        if step % args.log_training_steps == 0 or step == 1:
            with torch.no_grad():
                upd = [p - b for p, b in zip(model.parameters(), before, strict=True)]
                dt = time.time() - t0
                nsteps = 1 if step == 1 else args.log_training_steps
                row = {
                    "training_loss": loss.item(),
                    "l2_grads": l2_grads,
                    "l2_params": l2(model.parameters()),
                    "l2_updates": l2(upd),
                    "global_schedule": mult,
                    "img/sec/core": nsteps * args.batch_size / dt,
                    "examples_seen": step * args.batch_size,
                    "epoch": step * args.batch_size / n_train,
                }
            if step % args.eval_steps == 0:
                row.update(evaluate())
            pending.put((row, step))
            if args.checkpoint_steps and step % args.checkpoint_steps == 0:
                if ckpt_writer is not None:
                    ckpt_writer.join()
                state = {"params": model.state_dict(), "opt": opt.state_dict(), "step": step}
                ckpt_writer = threading.Thread(target=write_ckpt, args=(step, state), daemon=True)
                ckpt_writer.start()
            with ckpt_lock:
                n_ckpts = len(saved)
            while not pending.empty():
                r, s = pending.get()
                mlflow.log_metrics(r, step=s)
                print(
                    f"[{s}] "
                    + ", ".join(f"{k} = {v:.6g}" for k, v in r.items())
                    + f" (checkpoints {n_ckpts})",
                    flush=True,
                )
                pending.task_done()
            t0 = time.time()
    if ckpt_writer is not None:
        ckpt_writer.join()
    print("NOTE: Done!", flush=True)
