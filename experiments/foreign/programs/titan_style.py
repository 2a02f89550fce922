"""A character-level RNN language model logged the way torchtitan's MetricsProcessor does.

Plain PyTorch + the plain ``mlflow`` API.  torchtitan's names: ``loss_metrics/global_avg_loss``,
``loss_metrics/global_max_loss``, ``grad_norm``, ``lr``, ``tps`` (tokens per second),
``time_metrics/end_to_end_s``, ``time_metrics/data_loading_s``,
``memory/max_active_GiB`` (torchtitan's ``(s)``/``(GiB)`` suffixes spelled the way MLflow
accepts names); params are the job TOML flattened with dots
(``optimizer.lr``, ``training.max_norm``, ``training.steps``, ``lr_scheduler.warmup_steps``).
Written without looking at the doctor.

Data: the text of a few standard-library modules, written once into shard files.
``--data.compressed_from K`` stores shards K… gzip-compressed as JSON lines, and the
map-style reader decompresses and re-tokenises the shard for every sample it serves (no
cache): from shard K on, each batch reads its shard ``local_batch_size`` times.
"""

import argparse
import gzip
import inspect
import json
import math
import os
import tempfile
import time

import _setup
import mlflow
import numpy as np
import torch

args = _setup.parse_flags(
    {
        "--optimizer.name": ("opt", "AdamW"),
        "--optimizer.lr": ("lr", 3e-3),
        "--lr_scheduler.warmup_steps": ("warmup", 20),
        "--training.steps": ("steps", 400),
        "--training.max_norm": ("max_norm", 1.0),
        "--training.local_batch_size": ("bs", 16),
        "--training.seq_len": ("seq", 32),
        "--training.seed": ("seed", 0),
        "--model.dim": ("dim", 64),
        "--model.nonlinearity": ("act", "tanh"),
        "--model.rnn_init": ("rnn_init", "default"),
        "--data.compressed_from": ("compressed_from", -1),
        "--metrics.log_freq": ("log_freq", 4),
    }
)

rng = _setup.seeded(args.seed)

import collections  # noqa: E402
import email.message  # noqa: E402
import json.decoder  # noqa: E402

text = "".join(inspect.getsource(m) for m in (collections, email.message, json.decoder, argparse))
vocab = sorted(set(text))
stoi = {c: i for i, c in enumerate(vocab)}
shard_dir = tempfile.mkdtemp(prefix="titan-shards-")
n_shards = 8
bounds = np.linspace(0, len(text), n_shards + 1).astype(int)
for k in range(n_shards):
    piece = text[bounds[k] : bounds[k + 1]]
    if 0 <= args.compressed_from <= k:
        with gzip.open(os.path.join(shard_dir, f"{k}.jsonl.gz"), "wt", compresslevel=9) as f:
            for line in piece.splitlines(keepends=True):
                f.write(json.dumps({"text": line}) + "\n")
    else:
        np.save(os.path.join(shard_dir, f"{k}.npy"), np.array([stoi[c] for c in piece], np.int64))


def read_shard(k):
    path = os.path.join(shard_dir, f"{k}.npy")
    if os.path.exists(path):
        return np.load(path)
    with gzip.open(os.path.join(shard_dir, f"{k}.jsonl.gz"), "rt") as f:
        chars = "".join(json.loads(line)["text"] for line in f)
    return np.array([stoi[c] for c in chars], np.int64)


def sample(k, data, start):
    """One training window, map-style: a compressed shard is re-opened for every sample
    (the dataset's ``__getitem__`` reads its file each time, nothing is cached)."""
    if 0 <= args.compressed_from <= k:
        data = read_shard(k)
    return data[start : start + args.seq + 1]


def batches():
    """The shards in order, ``steps / n_shards`` batches from each."""
    per_shard = math.ceil(args.steps / n_shards)
    for k in range(n_shards):
        data = read_shard(k)
        for _ in range(per_shard):
            starts = rng.integers(0, len(data) - args.seq - 1, args.bs)
            yield np.stack([sample(k, data, s) for s in starts])


class RNNLM(torch.nn.Module):
    def __init__(self, v, d):
        super().__init__()
        self.emb = torch.nn.Embedding(v, d)
        self.rnn = torch.nn.RNN(d, d, batch_first=True, nonlinearity=args.act)
        if args.rnn_init == "identity":  # IRNN (Le et al., 2015): recurrent weights start at I
            torch.nn.init.eye_(self.rnn.weight_hh_l0)
            torch.nn.init.zeros_(self.rnn.bias_hh_l0)
        self.out = torch.nn.Linear(d, v)

    def forward(self, x):
        h, _ = self.rnn(self.emb(x))
        return self.out(h)


model = RNNLM(len(vocab), args.dim)
opt = (
    torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9)
    if args.opt == "SGD"
    else torch.optim.AdamW(model.parameters(), lr=args.lr)
)


def lr_at(step):
    if step < args.warmup:
        return args.lr * (step + 1) / args.warmup
    return (
        args.lr
        * 0.5
        * (1 + math.cos(math.pi * (step - args.warmup) / max(1, args.steps - args.warmup)))
    )


with mlflow.start_run():
    mlflow.log_params(
        {
            "optimizer.name": args.opt,
            "optimizer.lr": args.lr,
            "lr_scheduler.warmup_steps": args.warmup,
            "training.steps": args.steps,
            "training.max_norm": args.max_norm,
            "training.local_batch_size": args.bs,
            "training.seq_len": args.seq,
            "training.seed": args.seed,
            "model.name": "rnnlm",
            "model.dim": args.dim,
            "model.nonlinearity": args.act,
            "model.rnn_init": args.rnn_init,
            "training.mixed_precision_param": "float32",
        }
    )
    it = batches()
    t_prev = time.perf_counter()
    for step in range(1, args.steps + 1):
        t0 = time.perf_counter()
        b = torch.from_numpy(next(it))
        t_data = time.perf_counter() - t0
        for g in opt.param_groups:
            g["lr"] = lr_at(step)
        logits = model(b[:, :-1])
        per_tok = torch.nn.functional.cross_entropy(
            logits.reshape(-1, len(vocab)), b[:, 1:].reshape(-1), reduction="none"
        )
        loss = per_tok.mean()
        opt.zero_grad()
        loss.backward()
        gn = torch.nn.utils.clip_grad_norm_(
            model.parameters(), args.max_norm if args.max_norm > 0 else float("inf")
        )
        opt.step()
        if step % args.log_freq == 0:
            now = time.perf_counter()
            dt, t_prev = (now - t_prev) / args.log_freq, now
            mlflow.log_metrics(
                {
                    "loss_metrics/global_avg_loss": loss.item(),
                    "loss_metrics/global_max_loss": per_tok.view(args.bs, -1).mean(1).max().item(),
                    "grad_norm": gn.item(),
                    "lr": lr_at(step),
                    "tps": args.bs * args.seq / dt,
                    "time_metrics/end_to_end_s": dt,
                    "time_metrics/data_loading_s": t_data,
                    "memory/max_active_GiB": 0.01,
                },
                step=step,
            )
    print(f"done: {args.steps} steps, loss {loss.item():.3f}")
