"""A small causal language model trained as Levanter's ``train_lm`` trains one, its tracker
metrics logged to MLflow name for name.

Plain PyTorch + numpy + the plain ``mlflow`` API (no Levanter, no JAX here).  What is imitated,
as Levanter's trainer hooks log them through its tracker (``levanter.tracker.log``):

* every step, at ``step = step`` (the step just taken, from 0): ``train/loss``,
  ``global_step``, ``run_progress`` (step / num_train_steps), ``optim/learning_rate``, and the
  performance hook's ``throughput/duration`` (seconds of the step), ``throughput/examples_per_second``,
  ``throughput/tokens_per_second``, ``throughput/total_tokens``;
* every ``--trainer.steps_per_eval`` steps and at the end: ``eval/loss`` (mean token loss on
  the validation set), ``eval/loading_time``, ``eval/total_time``;
* Levanter's optimiser config: AdamW (``--optimizer.learning_rate``, ``--optimizer.weight_decay``,
  betas 0.9/0.95), ``--optimizer.warmup`` as a fraction of the steps, then ``cosine`` (or
  ``linear``, ``constant``) decay to ``min_lr_ratio`` x lr, global gradient-norm clipping at
  ``--optimizer.max_grad_norm``; draccus-style dotted flags (``--trainer.train_batch_size``).

Data: a tokenised corpus generated from a fixed random Markov "language" (each token allows four next tokens, weighted by the parity of the token before) over
``--model.vocab_size`` tokens, cached as shards the way Levanter's cache is; the training
loader reads ``--data.cached_shards`` shards from the local cache and the rest through the
store's reader (``--data.remote_latency`` seconds a batch).  Model: a pre-norm GPT
(``--model.num_layers``, ``--model.hidden_dim``, ``--model.num_heads``, ``--model.seq_len``).
Written without looking at the doctor.

Faults are real code paths and data: ``--optimizer.learning_rate`` far too high or far too
low; a cache that holds only part of the shards, so the rest stream through a slow reader;
``--data.validation_split`` naming a split too short for one evaluation batch, which raises
at the first evaluation.
"""

import math
import time

import _setup
import mlflow
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

args = _setup.parse_flags(
    {
        "--trainer.seed": ("seed", 0),
        "--trainer.num_train_steps": ("num_train_steps", 400),
        "--trainer.train_batch_size": ("train_batch_size", 16),
        "--trainer.steps_per_eval": ("steps_per_eval", 50),
        "--optimizer.learning_rate": ("learning_rate", 3e-3),
        "--optimizer.weight_decay": ("weight_decay", 0.1),
        "--optimizer.warmup": ("warmup", 0.05),
        "--optimizer.lr_schedule": ("lr_schedule", "cosine"),
        "--optimizer.min_lr_ratio": ("min_lr_ratio", 0.1),
        "--optimizer.max_grad_norm": ("max_grad_norm", 1.0),
        "--model.vocab_size": ("vocab_size", 96),
        "--model.seq_len": ("seq_len", 64),
        "--model.hidden_dim": ("hidden_dim", 64),
        "--model.num_layers": ("num_layers", 2),
        "--model.num_heads": ("num_heads", 4),
        "--data.num_shards": ("num_shards", 8),
        "--data.cached_shards": ("cached_shards", 8),
        "--data.remote_latency": ("remote_latency", 0.1),
        "--data.validation_split": ("validation_split", "validation"),
    }
)
rng = _setup.seeded(args.seed)
V, T = args.vocab_size, args.seq_len

# ----------------------------------------------------------------------------- data
lang = np.random.default_rng(1234)  # the "language" is fixed; the seed moves the sampling only
# each token allows 4 next tokens, with probabilities that depend on the token before it
nexts = lang.integers(0, V, size=(V, 4))
probs = lang.dirichlet([0.5] * 4, size=(2, V))


def generate(n_tokens, g):
    out = np.empty(n_tokens, dtype=np.int64)
    out[:2] = g.integers(0, V, 2)
    u = g.random(n_tokens)
    for i in range(2, n_tokens):
        p = np.cumsum(probs[out[i - 2] % 2, out[i - 1]])
        k = min(int((u[i] > p).sum()), 3)
        out[i] = nexts[out[i - 1], k]
    return out


tokens_needed = args.num_train_steps * args.train_batch_size * (T + 1)
shard_len = math.ceil(tokens_needed / args.num_shards)
shards = [generate(shard_len, rng) for _ in range(args.num_shards)]
splits = {"validation": generate(16 * (T + 1) * 4, np.random.default_rng(99))}
splits["validation_small"] = splits["validation"][: 8 * (T + 1)]  # a smoke-test split
steps_per_shard = max(1, shard_len // (args.train_batch_size * (T + 1)))


def train_batch(step):
    shard = min(step // steps_per_shard, args.num_shards - 1)
    if shard >= args.cached_shards:  # not in the local cache: streamed through the store reader
        time.sleep(args.remote_latency)
    data = shards[shard]
    starts = rng.integers(0, len(data) - T - 1, args.train_batch_size)
    return torch.tensor(np.stack([data[s : s + T + 1] for s in starts]))


def eval_batches(split, batch_size=16):
    data = splits[split]
    n = len(data) // (T + 1)
    if n < batch_size:
        raise ValueError(
            f"Validation split {split!r} has {n} sequences of length {T + 1}, fewer than one "
            f"eval batch of {batch_size}"
        )
    seqs = torch.tensor(data[: n * (T + 1)].reshape(n, T + 1))
    return [seqs[i : i + batch_size] for i in range(0, n - batch_size + 1, batch_size)]


# ----------------------------------------------------------------------------- model
class Block(nn.Module):
    def __init__(self, d, h):
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.attn = nn.MultiheadAttention(d, h, batch_first=True)
        self.mlp = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d))
        self.register_buffer("mask", torch.triu(torch.ones(T, T, dtype=torch.bool), 1))

    def forward(self, x):
        h = self.ln1(x)
        x = x + self.attn(h, h, h, attn_mask=self.mask, need_weights=False)[0]
        return x + self.mlp(self.ln2(x))


class Gpt(nn.Module):
    def __init__(self):
        super().__init__()
        d = args.hidden_dim
        self.wte, self.wpe = nn.Embedding(V, d), nn.Embedding(T, d)
        self.blocks = nn.ModuleList(Block(d, args.num_heads) for _ in range(args.num_layers))
        self.ln_f, self.head = nn.LayerNorm(d), nn.Linear(d, V, bias=False)

    def forward(self, idx):  # (B, T) -> mean next-token loss
        x = self.wte(idx[:, :-1]) + self.wpe(torch.arange(T))
        for b in self.blocks:
            x = b(x)
        logits = self.head(self.ln_f(x))
        return F.cross_entropy(logits.reshape(-1, V), idx[:, 1:].reshape(-1))


model = Gpt()
opt = torch.optim.AdamW(
    model.parameters(), lr=args.learning_rate, betas=(0.9, 0.95), weight_decay=args.weight_decay
)
warm = int(args.warmup * args.num_train_steps)


def lr_at(step):
    if step < warm:
        return args.learning_rate * (step + 1) / warm
    frac = (step - warm) / max(1, args.num_train_steps - warm)
    lo = args.min_lr_ratio
    if args.lr_schedule == "cosine":
        f = lo + (1 - lo) * 0.5 * (1 + math.cos(math.pi * frac))
    elif args.lr_schedule == "linear":
        f = 1 - (1 - lo) * frac
    else:
        f = 1.0
    return args.learning_rate * f


def evaluate():
    t0 = time.perf_counter()
    batches = eval_batches(args.validation_split)
    t1 = time.perf_counter()
    model.eval()
    with torch.no_grad():
        loss = float(np.mean([model(b).item() for b in batches]))
    model.train()
    return loss, t1 - t0, time.perf_counter() - t0


# ----------------------------------------------------------------------------- train
with mlflow.start_run():
    mlflow.log_params(vars(args))
    n_params = sum(p.numel() for p in model.parameters())
    print(f"Levanter train_lm: {n_params} parameters, {args.num_train_steps} steps", flush=True)
    total_tokens = 0
    for step in range(args.num_train_steps):
        t0 = time.perf_counter()
        batch = train_batch(step)
        lr = lr_at(step)
        for g in opt.param_groups:
            g["lr"] = lr
        loss = model(batch)
        opt.zero_grad()
        loss.backward()
        if args.max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), args.max_grad_norm)
        opt.step()
        dt = time.perf_counter() - t0
        total_tokens += batch.numel() - len(batch)
        mlflow.log_metrics(
            {
                "train/loss": loss.item(),
                "global_step": step,
                "run_progress": step / args.num_train_steps,
                "optim/learning_rate": lr,
                "throughput/duration": dt,
                "throughput/examples_per_second": len(batch) / dt,
                "throughput/tokens_per_second": (batch.numel() - len(batch)) / dt,
                "throughput/total_tokens": total_tokens,
            },
            step=step,
        )
        if step % 25 == 0:
            print(
                f"Training: {step}/{args.num_train_steps} loss={loss.item():.3f} {dt:.3f}s/it",
                flush=True,
            )
        last = step == args.num_train_steps - 1
        if (step > 0 and step % args.steps_per_eval == 0) or last:
            ev, load_t, total_t = evaluate()
            mlflow.log_metrics(
                {"eval/loss": ev, "eval/loading_time": load_t, "eval/total_time": total_t},
                step=step,
            )
            print(f"eval loss: {ev:.3f}", flush=True)
    print("Training complete", flush=True)
