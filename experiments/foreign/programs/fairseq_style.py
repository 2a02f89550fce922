"""A character language model trained by ``fairseq-train --task language_modeling``, its
progress-bar stats mirrored to MLflow the way fairseq's tensorboard/wandb progress bars name
them.

Plain torch + the plain ``mlflow`` API.  The argparse namespace is logged as params with
fairseq's flag names (``lr``, ``max_tokens``, ``clip_norm``, ``fp16``, ...).  Every
``--log-interval`` updates it logs ``train_inner/loss`` (base 2), ``train_inner/ppl``,
``train_inner/wps``, ``train_inner/ups``, ``train_inner/wpb``, ``train_inner/bsz``,
``train_inner/lr``, ``train_inner/gnorm``, ``train_inner/clip``, ``train_inner/train_wall``
(and ``train_inner/loss_scale`` with ``--fp16``) with ``step = num_updates``; at each epoch's
end ``train/loss``, ``train/ppl``, ``train/wps`` and ``valid/loss``, ``valid/ppl``,
``valid/best_loss``, also with ``step = num_updates``.  Written without looking at the doctor.

The corpus is the Python standard library's own source files, split into shards like
``data-bin`` splits.  Faults are real settings: ``--lr`` far too high or too low; one shard
that holds binary bytes instead of text (``--bad-shard``); ``--clip-norm 0`` with a large
``--lr``; ``--fp16`` with a ``--min-loss-scale`` the scaler runs into (fairseq's
``FloatingPointError``).
"""

import math
import os
import sysconfig
import time

import _setup
import mlflow
import numpy as np
import torch
import torch.nn.functional as F

args = _setup.parse_flags(
    {
        "--seed": 1,
        "--lr": 0.003,
        "--warmup-updates": ("warmup_updates", 50),
        "--lr-scheduler": ("lr_scheduler", "inverse_sqrt"),
        "--clip-norm": ("clip_norm", 1.0),
        "--max-tokens": ("max_tokens", 1024),
        "--tokens-per-sample": ("tokens_per_sample", 64),
        "--max-epoch": ("max_epoch", 5),
        "--num-shards": ("num_shards", 8),
        "--bad-shard": ("bad_shard", -1),
        "--decoder-embed-dim": ("embed_dim", 64),
        "--dropout": 0.1,
        "--fp16": ("fp16", 0),
        "--fp16-init-scale": ("init_scale", 128.0),
        "--min-loss-scale": ("min_loss_scale", 1e-4),
        "--log-interval": ("log_interval", 10),
        "--corpus-bytes": ("corpus_bytes", 120_000),
        "--valid-bytes": ("valid_bytes", 12_000),
    }
)
rng = _setup.seeded(args.seed)

# ---- data-bin: stdlib sources as bytes, in shards
lib = sysconfig.get_paths()["stdlib"]
files = sorted(f for f in os.listdir(lib) if f.endswith(".py"))
files = [files[i] for i in rng.permutation(len(files))]
text = b""
for f in files:
    with open(os.path.join(lib, f), "rb") as fh:
        text += fh.read()
    if len(text) > args.corpus_bytes + args.valid_bytes:
        break
data = np.frombuffer(text, np.uint8).astype(np.int64)
valid, train = (
    data[: args.valid_bytes],
    data[args.valid_bytes : args.valid_bytes + args.corpus_bytes],
)
shards = np.array_split(train, args.num_shards)
if 0 <= args.bad_shard < args.num_shards:  # a shard written from a binary file
    shards[args.bad_shard] = rng.integers(0, 256, len(shards[args.bad_shard]))
T = args.tokens_per_sample
bsz = max(1, args.max_tokens // T)


class LM(torch.nn.Module):
    def __init__(self, d):
        super().__init__()
        self.emb = torch.nn.Embedding(256, d)
        self.rnn = torch.nn.GRU(d, 2 * d, batch_first=True)
        self.drop = torch.nn.Dropout(args.dropout)
        self.out = torch.nn.Linear(2 * d, 256)

    def forward(self, x):
        h, _ = self.rnn(self.drop(self.emb(x)))
        return self.out(self.drop(h))


model = LM(args.embed_dim)
opt = torch.optim.Adam(model.parameters(), lr=args.lr, betas=(0.9, 0.98))


def lr_at(n):
    if args.lr_scheduler == "fixed":
        return args.lr
    if n < args.warmup_updates:
        return args.lr * (n + 1) / args.warmup_updates
    return args.lr * math.sqrt(args.warmup_updates / (n + 1))


def batches(arr, shuffle):
    n = (len(arr) - 1) // T
    starts = np.arange(n) * T
    if shuffle:
        starts = starts[rng.permutation(n)]
    for i in range(0, n - bsz + 1, bsz):
        s = starts[i : i + bsz]
        idx = s[:, None] + np.arange(T + 1)
        yield torch.from_numpy(arr[idx])


def evaluate():
    model.eval()
    tot, ntok = 0.0, 0
    with torch.no_grad():
        for b in batches(valid, False):
            tot += F.cross_entropy(
                model(b[:, :-1]).reshape(-1, 256), b[:, 1:].reshape(-1), reduction="sum"
            ).item()
            ntok += b[:, 1:].numel()
    model.train()
    return tot / ntok / math.log(2)


with mlflow.start_run():
    mlflow.log_params(
        {
            "task": "language_modeling",
            "arch": "lstm_lm",
            "optimizer": "adam",
            "adam_betas": "(0.9, 0.98)",
            "lr": args.lr,
            "lr_scheduler": args.lr_scheduler,
            "warmup_updates": args.warmup_updates,
            "clip_norm": args.clip_norm,
            "max_tokens": args.max_tokens,
            "tokens_per_sample": T,
            "max_epoch": args.max_epoch,
            "decoder_embed_dim": args.embed_dim,
            "dropout": args.dropout,
            "fp16": bool(args.fp16),
            "fp16_init_scale": args.init_scale,
            "min_loss_scale": args.min_loss_scale,
            "log_interval": args.log_interval,
            "seed": args.seed,
        }
    )
    scale = args.init_scale
    since_overflow = 0
    num_updates = 0
    best = math.inf
    start = time.perf_counter()
    for epoch in range(1, args.max_epoch + 1):
        ep = {"loss": 0.0, "tok": 0, "t": 0.0}
        win = {"loss": 0.0, "tok": 0, "gnorm": [], "clip": 0, "t": 0.0, "n": 0, "bsz": 0}
        for s in rng.permutation(args.num_shards):  # one shard at a time, like data-bin splits
            for b in batches(shards[s], True):
                t0 = time.perf_counter()
                for g in opt.param_groups:
                    g["lr"] = lr_at(num_updates)
                logits = model(b[:, :-1])
                if args.fp16:
                    logits = logits.half().float()
                loss = F.cross_entropy(
                    logits.reshape(-1, 256), b[:, 1:].reshape(-1), reduction="sum"
                )
                opt.zero_grad()
                (loss * scale if args.fp16 else loss).backward()
                ntok = b[:, 1:].numel()
                for p in model.parameters():  # fairseq divides by sample size (and the scale)
                    p.grad.div_(ntok * (scale if args.fp16 else 1.0))
                if args.fp16:
                    overflow = any(
                        not torch.isfinite(p.grad.half()).all() for p in model.parameters()
                    )
                    if overflow:
                        scale /= 2.0
                        since_overflow = 0
                        if scale < args.min_loss_scale:
                            raise FloatingPointError(
                                f"Minimum loss scale reached ({args.min_loss_scale}). Your "
                                "loss is probably exploding. Try lowering the learning rate, "
                                "using gradient clipping or increasing the batch size."
                            )
                        print(
                            f"| WARNING: overflow detected, setting loss scale to: {scale}",
                            flush=True,
                        )
                        continue
                    since_overflow += 1
                    if since_overflow % 128 == 0:
                        scale *= 2.0
                gn = torch.nn.utils.clip_grad_norm_(
                    model.parameters(), args.clip_norm if args.clip_norm > 0 else float("inf")
                ).item()
                opt.step()
                num_updates += 1
                dt = time.perf_counter() - t0
                lb2 = loss.item() / ntok / math.log(2)
                win["loss"] += lb2 * ntok
                win["tok"] += ntok
                win["gnorm"].append(gn)
                win["clip"] += int(args.clip_norm > 0 and gn > args.clip_norm)
                win["t"] += dt
                win["n"] += 1
                win["bsz"] += b.shape[0]
                ep["loss"] += lb2 * ntok
                ep["tok"] += ntok
                ep["t"] += dt
                if num_updates % args.log_interval == 0:
                    wl = win["loss"] / win["tok"]
                    stats = {
                        "train_inner/loss": wl,
                        "train_inner/ppl": 2.0 ** min(wl, 100.0),
                        "train_inner/wps": win["tok"] / win["t"],
                        "train_inner/ups": win["n"] / win["t"],
                        "train_inner/wpb": win["tok"] / win["n"],
                        "train_inner/bsz": win["bsz"] / win["n"],
                        "train_inner/num_updates": float(num_updates),
                        "train_inner/lr": lr_at(num_updates - 1),
                        "train_inner/gnorm": float(np.mean(win["gnorm"])),
                        "train_inner/clip": 100.0 * win["clip"] / win["n"],
                        "train_inner/train_wall": win["t"],
                        "train_inner/wall": time.perf_counter() - start,
                    }
                    if args.fp16:
                        stats["train_inner/loss_scale"] = scale
                    mlflow.log_metrics(stats, step=num_updates)
                    print(
                        f"epoch {epoch:03d}: | loss {wl:.3f} | ppl {stats['train_inner/ppl']:.2f} "
                        f"| wps {stats['train_inner/wps']:.0f} | gnorm {stats['train_inner/gnorm']:.3f} "
                        f"| num_updates {num_updates}",
                        flush=True,
                    )
                    win = {
                        "loss": 0.0,
                        "tok": 0,
                        "gnorm": [],
                        "clip": 0,
                        "t": 0.0,
                        "n": 0,
                        "bsz": 0,
                    }
        tl = ep["loss"] / max(1, ep["tok"])
        vl = evaluate()
        best = min(best, vl)
        mlflow.log_metrics(
            {
                "train/loss": tl,
                "train/ppl": 2.0 ** min(tl, 100.0),
                "train/wps": ep["tok"] / max(ep["t"], 1e-9),
                "valid/loss": vl,
                "valid/ppl": 2.0 ** min(vl, 100.0),
                "valid/best_loss": best,
            },
            step=num_updates,
        )
        print(
            f"epoch {epoch:03d} | valid on 'valid' subset | loss {vl:.3f} | best_loss {best:.3f}",
            flush=True,
        )
