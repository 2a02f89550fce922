"""A tiny byte-level GPT pretrained the way nanochat's ``base_train.py`` pretrains one, its
wandb log mirrored to MLflow.

Plain PyTorch + the plain ``mlflow`` API.  The user config (nanochat's ``user_config``) is
logged as params.  Every ``--log_every`` steps the mirror logs what ``base_train`` hands to
``wandb_run.log``: ``step``, ``total_training_flops``, ``total_training_time``, ``train/loss``
(the debiased EMA of the loss, beta 0.9), ``train/lrm`` (the LR multiplier), ``train/dt``,
``train/tok_per_sec`` and ``train/mfu``; every ``--eval_every`` steps and at the last step it
logs ``val/bpb`` (with ``step``, ``total_training_flops``, ``total_training_time``).  MLflow's
step is nanochat's ``step`` (from 0).  Written without looking at the doctor.

Model: token embedding, pre-norm blocks (RMSNorm, causal attention, relu^2 MLP), untied
``lm_head``; AdamW for the embedding and ``lm_head`` (lr scaled by (dim/768)^-0.5, betas 0.8,
0.95), Muon for the matrices; linear warm-down over the last ``--warmdown_ratio`` of steps.
Data: the Python standard library's own source, cut into ``shard_NNNNN`` files read in order by
a streaming loader.  Faults are real paths: ``--matrix_lr``/``--embedding_lr`` far too high;
``--data.raw_shard K`` – shard K holds gzip bytes that were never decompressed;
``--data.gz_from K`` – shards K on are still gzip and the loader decompresses the whole shard
for every batch; ``--data.fifo_from K`` – shards K on are named pipes a prefetch process was to
fill (it never started), so opening one blocks.
"""

import gzip
import math
import os
import sysconfig
import tempfile
import time

import _setup
import mlflow
import torch
import torch.nn.functional as F

args = _setup.parse_flags(
    {
        "--seed": 0,
        "--depth": 2,
        "--model_dim": 64,
        "--num_heads": 4,
        "--max_seq_len": 64,
        "--device_batch_size": 16,
        "--num_iterations": 300,
        "--embedding_lr": 0.2,
        "--unembedding_lr": 0.004,
        "--matrix_lr": 0.02,
        "--weight_decay": 0.0,
        "--warmup_ratio": 0.0,
        "--warmdown_ratio": 0.2,
        "--final_lr_frac": 0.0,
        "--eval_every": 50,
        "--eval_tokens": 16384,
        "--log_every": 5,
        "--data.shard_bytes": ("shard_bytes", 32768),
        "--data.raw_shard": ("raw_shard", -1),
        "--data.gz_from": ("gz_from", -1),
        "--data.fifo_from": ("fifo_from", -1),
    }
)
user_config = {k: v for k, v in vars(args).items()}
rng = _setup.seeded(args.seed)

# ---------------------------------------------------------------- data: shards of stdlib source
stdlib = sysconfig.get_paths()["stdlib"]
files = sorted(
    os.path.join(stdlib, f) for f in os.listdir(stdlib) if f.endswith(".py") and f[0] != "_"
)
texts = []
for path in files:
    with open(path, "rb") as f:
        texts.append(f.read())
val_text = b"".join(texts[-20:])[: args.eval_tokens + 1]  # the last modules are held out
corpus = b"".join(texts[i] for i in rng.permutation(len(texts) - 20))
tokens_per_step = args.device_batch_size * args.max_seq_len
n_shards = args.num_iterations * tokens_per_step // args.shard_bytes + 2
data_dir = tempfile.TemporaryDirectory(prefix="base_data_")
shard_paths = []
for i in range(n_shards):
    chunk = corpus[i * args.shard_bytes : (i + 1) * args.shard_bytes]
    path = os.path.join(data_dir.name, f"shard_{i:05d}.txt")
    if 0 <= args.fifo_from <= i:
        os.mkfifo(path)  # the prefetcher would stream it in; nobody ever writes
    elif i == args.raw_shard:
        with open(path, "wb") as f:
            f.write(gzip.compress(chunk * 6)[: len(chunk)])  # compressed bytes saved as text
    elif 0 <= args.gz_from <= i:
        path += ".gz"  # not split out yet: the raw dump's 64 shards from here on, compressed
        with open(path, "wb") as f:
            dump = corpus[i * args.shard_bytes : (i + 64) * args.shard_bytes]
            f.write(gzip.compress(dump, compresslevel=9))
    else:
        with open(path, "wb") as f:
            f.write(chunk)
    shard_paths.append(path)


def read_shard(path):
    """A shard's tokens (bytes); a raw dump is decompressed and tokenised whole, then cut."""
    with open(path, "rb") as f:
        raw = f.read()
    if path.endswith(".gz"):
        return torch.tensor(list(gzip.decompress(raw)), dtype=torch.long)[: args.shard_bytes]
    return torch.tensor(list(raw), dtype=torch.long)


def loader():
    """Streams (x, y) batches shard by shard, as nanochat's tokenizing distributed loader."""
    need = tokens_per_step + 1
    buf = torch.empty(0, dtype=torch.long)
    for path in shard_paths:
        print(f"reading {os.path.basename(path)}", flush=True)
        shard = read_shard(path)
        pos = 0
        while pos < len(shard):
            if path.endswith(".gz"):  # no cached token file for a raw dump: re-read per batch
                shard = read_shard(path)
            piece = shard[pos : pos + tokens_per_step]
            pos += tokens_per_step
            buf = torch.cat([buf, piece])
            while len(buf) >= need:
                chunk, buf = buf[:need], buf[need - 1 :]
                x = chunk[:-1].view(args.device_batch_size, args.max_seq_len)
                y = chunk[1:].view(args.device_batch_size, args.max_seq_len)
                yield x, y


# ---------------------------------------------------------------- model
class Block(torch.nn.Module):
    def __init__(self, d, h):
        super().__init__()
        self.h = h
        self.c_q = torch.nn.Linear(d, d, bias=False)
        self.c_k = torch.nn.Linear(d, d, bias=False)
        self.c_v = torch.nn.Linear(d, d, bias=False)
        self.c_proj = torch.nn.Linear(d, d, bias=False)
        self.c_fc = torch.nn.Linear(d, 4 * d, bias=False)
        self.mlp_proj = torch.nn.Linear(4 * d, d, bias=False)

    def forward(self, x):
        B, T, D = x.shape
        z = F.rms_norm(x, (D,))
        q, k, v = (
            m(z).view(B, T, self.h, D // self.h).transpose(1, 2)
            for m in (self.c_q, self.c_k, self.c_v)
        )
        q, k = F.rms_norm(q, (D // self.h,)), F.rms_norm(k, (D // self.h,))  # QK norm
        a = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.c_proj(a.transpose(1, 2).reshape(B, T, D))
        z = F.rms_norm(x, (D,))
        return x + self.mlp_proj(F.relu(self.c_fc(z)).square())


class GPT(torch.nn.Module):
    def __init__(self):
        super().__init__()
        d = args.model_dim
        self.wte = torch.nn.Embedding(256, d)
        self.pos = torch.nn.Parameter(torch.randn(args.max_seq_len, d) * 0.02)
        self.blocks = torch.nn.ModuleList(Block(d, args.num_heads) for _ in range(args.depth))
        self.lm_head = torch.nn.Linear(d, 256, bias=False)
        torch.nn.init.zeros_(self.lm_head.weight)
        for b in self.blocks:
            torch.nn.init.zeros_(b.c_proj.weight)
            torch.nn.init.zeros_(b.mlp_proj.weight)

    def forward(self, idx, targets, reduction="mean"):
        x = F.rms_norm(self.wte(idx) + self.pos[: idx.shape[1]], (args.model_dim,))
        for b in self.blocks:
            x = b(x)
        logits = self.lm_head(F.rms_norm(x, (args.model_dim,))).float()
        logits = 15 * torch.tanh(logits / 15)  # logit softcap
        return F.cross_entropy(logits.view(-1, 256), targets.view(-1), reduction=reduction)


def zeropower_via_newtonschulz5(G, steps=5):
    a, b, c = (3.4445, -4.7750, 2.0315)
    X = G / (G.norm() + 1e-7)
    tr = G.size(0) > G.size(1)
    if tr:
        X = X.T
    for _ in range(steps):
        A = X @ X.T
        X = a * X + (b * A + c * A @ A) @ X
    return X.T if tr else X


class Muon(torch.optim.Optimizer):
    def __init__(self, params, lr, momentum=0.95):
        super().__init__(params, {"lr": lr, "momentum": momentum})

    @torch.no_grad()
    def step(self):
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                buf = self.state[p].setdefault("momentum_buffer", torch.zeros_like(p))
                buf.lerp_(p.grad, 1 - group["momentum"])
                g = p.grad.lerp(buf, group["momentum"])  # nesterov
                g = zeropower_via_newtonschulz5(g)
                p.add_(g, alpha=-group["lr"] * max(1, p.size(0) / p.size(1)) ** 0.5)


model = GPT()
num_params = sum(p.numel() for p in model.parameters())
scale = (args.model_dim / 768) ** -0.5
adamw = torch.optim.AdamW(
    [
        {"params": [model.wte.weight, model.pos], "lr": args.embedding_lr * scale},
        {"params": [model.lm_head.weight], "lr": args.unembedding_lr * scale},
    ],
    betas=(0.8, 0.95),
    eps=1e-10,
    weight_decay=args.weight_decay,
)
muon = Muon([p for b in model.blocks for p in b.parameters()], lr=args.matrix_lr)
optimizers = [adamw, muon]
for opt in optimizers:
    for g in opt.param_groups:
        g["initial_lr"] = g["lr"]
flops_per_token = 6 * num_params + 12 * args.depth * args.model_dim * args.max_seq_len
promised_flops_per_sec = 989e12  # bf16 H100, as nanochat's MFU uses


def get_lr_multiplier(it):
    warmup = round(args.warmup_ratio * args.num_iterations)
    warmdown = round(args.warmdown_ratio * args.num_iterations)
    if it < warmup:
        return (it + 1) / warmup
    if it <= args.num_iterations - warmdown:
        return 1.0
    progress = (args.num_iterations - it) / warmdown
    return progress + (1 - progress) * args.final_lr_frac


def get_muon_momentum(it):
    frac = min(it / 300, 1)
    return (1 - frac) * 0.85 + frac * 0.95


val = torch.tensor(list(val_text), dtype=torch.long)


def evaluate_bpb():
    model.eval()
    n = (len(val) - 1) // tokens_per_step * tokens_per_step
    nats = 0.0
    with torch.no_grad():
        for i in range(0, n, tokens_per_step):
            x = val[i : i + tokens_per_step].view(args.device_batch_size, -1)
            y = val[i + 1 : i + 1 + tokens_per_step].view(args.device_batch_size, -1)
            nats += model(x, y, reduction="sum").item()
    model.train()
    return nats / (math.log(2) * n)  # one token is one byte


with mlflow.start_run():
    mlflow.log_params(user_config)
    print(f"Number of parameters: {num_params:,}", flush=True)
    print(f"Tokens / micro-batch: {tokens_per_step:,}", flush=True)
    batches = loader()
    smooth_train_loss, ema_beta, total_training_time = 0.0, 0.9, 0.0
    flops_so_far = 0.0
    for step in range(args.num_iterations + 1):
        last = step == args.num_iterations
        flops_so_far = flops_per_token * tokens_per_step * step
        if last or step % args.eval_every == 0:
            bpb = evaluate_bpb()
            print(f"Step {step:05d} | Validation bpb: {bpb:.4f}", flush=True)
            mlflow.log_metrics(
                {
                    "step": step,
                    "total_training_flops": flops_so_far,
                    "total_training_time": total_training_time,
                    "val/bpb": bpb,
                },
                step=step,
            )
        if last:
            break
        t0 = time.time()
        x, y = next(batches)
        loss = model(x, y)
        loss.backward()
        lrm = get_lr_multiplier(step)
        for opt in optimizers:
            for g in opt.param_groups:
                g["lr"] = g["initial_lr"] * lrm
        for g in muon.param_groups:
            g["momentum"] = get_muon_momentum(step)
        for opt in optimizers:
            opt.step()
        model.zero_grad(set_to_none=True)
        dt = time.time() - t0
        smooth_train_loss = ema_beta * smooth_train_loss + (1 - ema_beta) * loss.item()
        debiased = smooth_train_loss / (1 - ema_beta ** (step + 1))
        tok_per_sec = int(tokens_per_step / dt)
        mfu = 100 * flops_per_token * tok_per_sec / promised_flops_per_sec
        if step > 10:
            total_training_time += dt
        print(
            f"step {step:05d}/{args.num_iterations:05d} | loss: {debiased:.6f} | lrm: {lrm:.2f} "
            f"| dt: {dt * 1000:.2f}ms | tok/sec: {tok_per_sec:,} | mfu: {mfu:.4f}",
            flush=True,
        )
        if step % args.log_every == 0:
            mlflow.log_metrics(
                {
                    "step": step,
                    "total_training_flops": flops_so_far,
                    "total_training_time": total_training_time,
                    "train/loss": debiased,
                    "train/lrm": lrm,
                    "train/dt": dt,
                    "train/tok_per_sec": tok_per_sec,
                    "train/mfu": mfu,
                },
                step=step,
            )
    print(f"Total training time: {total_training_time / 60:.2f}m", flush=True)
data_dir.cleanup()
