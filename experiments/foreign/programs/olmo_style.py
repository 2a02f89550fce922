"""Language-model pre-training as AI2's OLMo trainer (``olmo/train.py``, OLMo 1/1.7) runs it:
token memmap shards, a fixed global instance order, a speed monitor, and its W&B metrics
mirrored into MLflow.

Plain PyTorch + numpy + the plain ``mlflow`` API (no olmo here).  The config is logged as
params.  As ``Trainer.fit`` logs them, at step = ``global_step`` (optimizer steps from 1),
every ``--log_interval`` steps: ``train/CrossEntropyLoss`` and ``train/Perplexity`` (that
step's batch, not an average), ``optim/total_grad_norm`` (before clipping),
``optim/learning_rate_group0`` and ``optim/learning_rate_group1`` (the decayed and the
no-decay group), ``throughput/total_tokens``, ``throughput/device/tokens_per_second`` and
``throughput/device/batches_per_second`` (the speed monitor's window of the last
``--speed_window`` batches, data loading included); every ``--eval_interval`` steps
``eval/c4_en-validation/CrossEntropyLoss`` and ``eval/c4_en-validation/Perplexity``.  The
console shows ``[step=20/300,epoch=0]`` followed by one ``    name=value`` line a metric,
every ``--console_log_interval`` steps.  A checkpoint is saved to ``--save_folder`` every
``--save_interval`` steps under the folder's lock file, as a multi-node job does.  Written
without looking at the doctor.

Data: a synthetic corpus (documents from a small Markov "language" over a ``--vocab_size``
vocabulary, EOS-separated) tokenized into ``.npy`` shards of ``--memmap_dtype`` and read
through ``np.memmap`` as fixed ``--max_sequence_length`` instances in a global order shuffled
with ``--data_seed``, from a local cache of the shards.  Model: an OLMo-style decoder
(non-parametric layer norm, fused attention projection, rotary embeddings, SwiGLU, no biases,
weight tying), AdamW (no weight decay on norms and embeddings), linear warm-up then cosine,
gradient clipping at ``--max_grad_norm`` (0 = off).

Faults are real settings or data: ``--num_shards 1 --tokens_per_shard 12000`` - the data
paths left pointing at the one-shard debug sample, so the run repeats it for dozens of epochs
(when the data is exhausted the loader starts the next epoch, reshuffled with data_seed +
epoch); ``--cache_evicted_at S`` - the node's local shard cache is reclaimed at step S and every
instance is then fetched from the remote archive (one gzip of all shards, decompressed for each
read); ``--stale_lock 1`` - the save folder holds the lock file of an earlier job that was
killed while saving, and the first save waits for it; ``--new_shard 1`` - the last shard was
re-tokenized with a newer tokenizer, three rare words now carrying ids past the model's
embedding table.
"""

import gzip
import math
import os
import tempfile
import time
from collections import deque

import _setup
import mlflow
import numpy as np
import torch
import torch.nn.functional as F

args = _setup.parse_flags(
    {
        "--run_name": "OLMo-tiny",
        "--d_model": 64,
        "--n_layers": 2,
        "--n_heads": 4,
        "--vocab_size": 256,
        "--max_sequence_length": 64,
        "--global_train_batch_size": 16,
        "--max_duration": 300,
        "--learning_rate": 3e-3,
        "--weight_decay": 0.1,
        "--t_warmup": 40,
        "--alpha_f": 0.1,
        "--max_grad_norm": 1.0,
        "--log_interval": 5,
        "--console_log_interval": 20,
        "--eval_interval": 50,
        "--save_interval": 100,
        "--speed_window": 20,
        "--memmap_dtype": "uint16",
        "--num_shards": 8,
        "--tokens_per_shard": 60000,
        "--save_folder": "",
        "--cache_evicted_at": -1,
        "--stale_lock": 0,
        "--new_shard": 0,
        "--seed": 6198,
        "--data_seed": 0,
    }
)
rng = _setup.seeded(args.seed)

# ---------------------------------------------------------------- data (fixed corpus; seed 11)
V, L = args.vocab_size, args.max_sequence_length
EOS = 0
corpus_rng = np.random.default_rng(11)
# a Markov "language": each token has a few likely successors, some topics per document
succ = corpus_rng.integers(1, V, (V, 4))
succ_p = corpus_rng.dirichlet(np.full(4, 0.6), V)


succ_l, cum_l = succ.tolist(), np.cumsum(succ_p, 1).tolist()


def document(r, n):
    u, w, rnd = r.random(n).tolist(), r.random(n).tolist(), r.integers(1, V, n).tolist()
    toks = [rnd[0]]
    for t in range(1, n):
        if u[t] < 0.12:  # an unpredictable word
            toks.append(rnd[t])
        else:
            c = cum_l[toks[-1]]
            toks.append(
                succ_l[toks[-1]][
                    0 if w[t] < c[0] else 1 if w[t] < c[1] else 2 if w[t] < c[2] else 3
                ]
            )
    return toks + [EOS]


root = tempfile.mkdtemp(prefix="olmo_data_")
cache = os.path.join(root, "cache")
remote = os.path.join(root, "remote")
os.makedirs(cache)
os.makedirs(remote)
shard_paths, blobs = [], []
for s in range(args.num_shards):
    toks = []
    while len(toks) < args.tokens_per_shard:
        toks += document(corpus_rng, int(corpus_rng.integers(20, 200)))
    arr = np.array(toks[: args.tokens_per_shard], dtype=np.int64)
    if args.new_shard and s == args.num_shards - 1:  # re-tokenized: 3 rare words got new ids
        arr[corpus_rng.choice(len(arr), 3, replace=False)] = V + np.arange(3)
    arr = arr.astype(args.memmap_dtype)
    path = os.path.join(cache, f"part-{s:05d}-00000.npy")
    arr.tofile(path)
    shard_paths.append(path)
    blobs.append(arr.tobytes())
with gzip.open(os.path.join(remote, "shards.npy.gz"), "wb") as f:  # the remote archive
    f.write(b"".join(blobs))
per_shard = args.tokens_per_shard // L
n_instances = per_shard * args.num_shards


def epoch_indices(epoch):
    """The global instance order of an epoch: a permutation seeded with data_seed + epoch."""
    return np.random.default_rng(args.data_seed + epoch).permutation(n_instances)


# the validation set: held-out documents of the same language
val_rng = np.random.default_rng(12)
val_toks = []
while len(val_toks) < 32 * L:
    val_toks += document(val_rng, int(val_rng.integers(20, 200)))
val = torch.tensor(val_toks[: 32 * L], dtype=torch.long).view(32, L)
print(f"Loaded {args.num_shards} shards, {n_instances:,d} instances of {L} tokens", flush=True)
cache_ok = True


def get_instance(i):
    """MemMapDataset.__getitem__: instance i of the concatenated shards."""
    s, k = divmod(int(i), per_shard)
    if cache_ok:
        mm = np.memmap(shard_paths[s], dtype=args.memmap_dtype, mode="r")
        return np.asarray(mm[k * L : (k + 1) * L], dtype=np.int64)
    with gzip.open(os.path.join(remote, "shards.npy.gz"), "rb") as f:
        buf = f.read()  # the whole archive comes down for one instance
    arr = np.frombuffer(buf, dtype=args.memmap_dtype)
    start = s * args.tokens_per_shard + k * L
    return np.asarray(arr[start : start + L], dtype=np.int64)


# ---------------------------------------------------------------- model


def rotate_half(x):
    x1, x2 = x.chunk(2, -1)
    return torch.cat((-x2, x1), -1)


class OLMoBlock(torch.nn.Module):
    def __init__(self, d, h):
        super().__init__()
        self.h = h
        self.att_proj = torch.nn.Linear(d, 3 * d, bias=False)
        self.attn_out = torch.nn.Linear(d, d, bias=False)
        self.ff_proj = torch.nn.Linear(d, 2 * 4 * d, bias=False)  # SwiGLU: x, gate
        self.ff_out = torch.nn.Linear(4 * d, d, bias=False)
        hd = d // h
        inv = 1.0 / (10000 ** (torch.arange(0, hd, 2).float() / hd))
        f = torch.outer(torch.arange(L).float(), inv)
        self.register_buffer("cos", torch.cat([f, f], -1).cos(), persistent=False)
        self.register_buffer("sin", torch.cat([f, f], -1).sin(), persistent=False)

    def forward(self, x):
        B, T, D = x.shape
        q, k, v = self.att_proj(F.layer_norm(x, (D,))).split(D, -1)
        q, k, v = (t.view(B, T, self.h, -1).transpose(1, 2) for t in (q, k, v))  # (B, H, T, hd)
        cos, sin = self.cos[:T], self.sin[:T]
        q, k = q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.attn_out(y.transpose(1, 2).reshape(B, T, D))
        a, gate = self.ff_proj(F.layer_norm(x, (D,))).chunk(2, -1)
        return x + self.ff_out(F.silu(gate) * a)


class OLMo(torch.nn.Module):
    def __init__(self):
        super().__init__()
        d = args.d_model
        self.wte = torch.nn.Embedding(V, d)
        torch.nn.init.normal_(self.wte.weight, 0.0, 0.02)
        self.blocks = torch.nn.ModuleList(OLMoBlock(d, args.n_heads) for _ in range(args.n_layers))
        for blk in self.blocks:
            for lin in (blk.att_proj, blk.attn_out, blk.ff_proj, blk.ff_out):
                torch.nn.init.normal_(lin.weight, 0.0, 0.02)

    def forward(self, ids):
        x = self.wte(ids)
        for blk in self.blocks:
            x = blk(x)
        x = F.layer_norm(x, (x.shape[-1],))
        return x @ self.wte.weight.T  # weight tying


model = OLMo()
decay = [p for n, p in model.named_parameters() if p.dim() >= 2 and "wte" not in n]
no_decay = [p for n, p in model.named_parameters() if not (p.dim() >= 2 and "wte" not in n)]
optim = torch.optim.AdamW(
    [
        {"params": decay, "weight_decay": args.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ],
    lr=args.learning_rate,
    betas=(0.9, 0.95),
    eps=1e-5,
)


def scheduled_lr(step):
    """CosWithWarmup: linear warm-up, then cosine down to alpha_f * lr at max_duration."""
    if step < args.t_warmup:
        return args.learning_rate * (0.1 + 0.9 * step / args.t_warmup)
    frac = (step - args.t_warmup) / max(1, args.max_duration - args.t_warmup)
    eta_min = args.learning_rate * args.alpha_f
    return eta_min + (args.learning_rate - eta_min) * (1 + math.cos(math.pi * frac)) / 2


def cross_entropy(logits, ids):
    return F.cross_entropy(logits[:, :-1].reshape(-1, V), ids[:, 1:].reshape(-1))


def save_checkpoint(step):
    """Save under the folder's lock, as the sharded checkpointer does across ranks."""
    lock = os.path.join(args.save_folder, ".lock")
    while os.path.exists(lock):  # another writer: wait for it to finish
        time.sleep(1.0)
    open(lock, "w").close()
    path = os.path.join(args.save_folder, f"step{step}-unsharded")
    os.makedirs(path, exist_ok=True)
    torch.save({"model": model.state_dict(), "optim": optim.state_dict()}, f"{path}/model.pt")
    os.remove(lock)
    print(f"Checkpoint saved to {path}", flush=True)


if not args.save_folder:
    args.save_folder = os.path.join(root, "checkpoints", args.run_name)
os.makedirs(args.save_folder, exist_ok=True)
if args.stale_lock:  # left by an earlier job killed while it was saving
    open(os.path.join(args.save_folder, ".lock"), "w").close()

with mlflow.start_run():
    mlflow.log_params(vars(args))
    B = args.global_train_batch_size
    batch_times = deque(maxlen=args.speed_window)
    total_tokens = 0
    epoch, cursor = 0, 0
    global_indices = epoch_indices(epoch)
    t_batch = time.monotonic()
    for global_step in range(1, args.max_duration + 1):
        if global_step == args.cache_evicted_at:  # the node's local cache is reclaimed
            cache_ok = False
            print("WARNING: local shard cache missing, reading from remote", flush=True)
        if cursor + B > n_instances:  # the data is exhausted: next epoch, reshuffled
            epoch, cursor = epoch + 1, 0
            global_indices = epoch_indices(epoch)
            print(f"Starting epoch {epoch}", flush=True)
        idx = global_indices[cursor : cursor + B]
        cursor += B
        ids = torch.from_numpy(np.stack([get_instance(i) for i in idx]))
        lr = scheduled_lr(global_step)
        for group in optim.param_groups:
            group["lr"] = lr
        loss = cross_entropy(model(ids), ids)
        optim.zero_grad(set_to_none=True)
        loss.backward()
        clip = args.max_grad_norm if args.max_grad_norm > 0 else float("inf")
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), clip).item()
        optim.step()
        total_tokens += B * L
        now = time.monotonic()
        batch_times.append(now - t_batch)
        t_batch = now
        metrics = {
            "train/CrossEntropyLoss": loss.item(),
            "train/Perplexity": math.exp(min(loss.item(), 80.0)),
            "optim/total_grad_norm": grad_norm,
            "optim/learning_rate_group0": lr,
            "optim/learning_rate_group1": lr,
            "throughput/total_tokens": total_tokens,
            "throughput/device/tokens_per_second": B * L * len(batch_times) / sum(batch_times),
            "throughput/device/batches_per_second": len(batch_times) / sum(batch_times),
        }
        if global_step % args.eval_interval == 0:
            model.eval()
            with torch.no_grad():
                vl = cross_entropy(model(val), val).item()
            model.train()
            metrics["eval/c4_en-validation/CrossEntropyLoss"] = vl
            metrics["eval/c4_en-validation/Perplexity"] = math.exp(min(vl, 80.0))
        if global_step % args.log_interval == 0 or "eval/c4_en-validation/Perplexity" in metrics:
            mlflow.log_metrics(metrics, step=global_step)
        if global_step % args.console_log_interval == 0:
            lines = "\n".join(f"    {k}={v:.4f}" for k, v in metrics.items())
            print(f"[step={global_step}/{args.max_duration},epoch={epoch}]\n{lines}", flush=True)
        if global_step % args.save_interval == 0:
            save_checkpoint(global_step)
        t_batch = time.monotonic()  # the speed monitor times the batch, not logging or saving
