"""A tiny Llama-style LM trained the way Meta's lingua ``apps/main/train.py`` trains, its metrics
logger's rows mirrored to MLflow by the team.

Plain PyTorch + the plain ``mlflow`` API (no lingua import here).  What is imitated:

* ``LMTransformer``: token embedding, ``n_layers`` blocks of RMSNorm + causal attention with
  rotary position embeddings + RMSNorm + SwiGLU feed-forward, final RMSNorm, untied output;
* the data: lingua's JSONL chunk iterator over generated text (``data/shard_00.chunk.jsonl``),
  character tokens, ``seq_len`` + 1 tokens a row, ``batch_size`` rows a step;
* the optimizer: AdamW (betas 0.9, 0.95, weight decay 0.1), ``warmup`` linear steps then
  ``scheduler`` (cosine to ``lr_min_ratio`` or linear), gradient clipping at ``clip`` 1.0;
* the metrics logger every ``log_freq`` steps at ``step = global_step``: ``global_step``,
  ``acc_step``, ``loss/out`` (the step's loss), ``grad_norm`` (before clipping),
  ``optim/lr``, ``speed/wps`` (tokens a second since the last log), ``speed/FLOPS`` (6 N
  tokens a second), ``speed/curr_iter_time``, ``speed/data_load_time`` (seconds of the last
  step), ``memory/rss_gib`` (the process's RSS); every ``eval_freq`` steps ``eval/loss`` and
  ``eval/ppl`` on ``eval_rows`` held-out rows.

Written without looking at the doctor.

Team options (the faults are real settings, data and code paths):

* ``--lr``, ``--batch_size``, ``--dim``, ``--n_layers``, ``--warmup``, ``--scheduler``,
  ``--steps``, ``--eval_rows``, ``--train_chars``;
* ``--shard2_step k``: a second shard (``shard_01``) joins at step k, half of each batch;
  ``--shard2_tokenizer``: ``v1`` or ``v2`` (the other team's tokenizer version, whose offsets
  differ);
* ``--resume_by_scan 1``: the team's reader finds its position in the chunk file by reading
  it from the start and re-tokenizing every line before it for each new line (lingua keeps the file position in its state).
"""

import json
import math
import os
import resource
import time

import _setup
import mlflow
import torch
import torch.nn as nn
import torch.nn.functional as F

args = _setup.parse_flags(
    {
        "--seed": 0,
        "--lr": 3e-3,
        "--batch_size": 16,
        "--seq_len": 32,
        "--dim": 64,
        "--n_layers": 2,
        "--n_heads": 4,
        "--warmup": 40,
        "--scheduler": "cosine",
        "--lr_min_ratio": 0.1,
        "--steps": 400,
        "--log_freq": 10,
        "--eval_freq": 50,
        "--eval_rows": 64,
        "--train_chars": 200000,
        "--shard2_step": 0,
        "--shard2_tokenizer": "v1",
        "--resume_by_scan": 0,
    }
)
rng = _setup.seeded(args.seed)


# ----------------------------------------------------------------------------- data
def gen_text(seed, n):
    g = torch.Generator().manual_seed(seed)
    subj = ["the cat", "a dog", "my aunt", "the pilot", "our robot", "the baker"]
    verb = ["sees", "likes", "paints", "finds", "builds", "follows"]
    obj = ["a boat", "the moon", "two owls", "red apples", "the river", "old maps"]
    out, k = [], 0
    while k < n:
        r = torch.randint(0, 6, (4,), generator=g).tolist()
        s = f"{subj[r[0]]} {verb[r[1]]} {obj[r[2]]}{'.' if r[3] < 4 else ' today.'} "
        out.append(s)
        k += len(s)
    return "".join(out)[:n]


os.makedirs("data", exist_ok=True)


def write_chunks(path, text, size=128):
    with open(path, "w") as f:
        for i in range(0, len(text), size):
            f.write(json.dumps({"text": text[i : i + size]}) + "\n")


text1 = gen_text(10 + args.seed, args.train_chars)
text2 = gen_text(500 + args.seed, 100000)
evtext = gen_text(77, 40000)
write_chunks("data/shard_00.chunk.jsonl", text1)
write_chunks("data/shard_01.chunk.jsonl", text2)
chars = sorted(set(text1 + text2 + evtext))
stoi = {c: i for i, c in enumerate(chars)}
V = len(chars)


def tokenize(s, version="v1"):
    ids = [stoi[c] for c in s]
    if version == "v2":  # the other team's tokenizer reserves two ids at the front
        ids = [(i + 2) % V for i in ids]
    return ids


class ChunkIterator:
    """lingua's JSONL iterator: rows of seq_len + 1 tokens, the file position in its state."""

    def __init__(self, path, version="v1"):
        self.path, self.version = path, version
        self.f = open(path)
        self.pos, self.buf = 0, []

    def _next_line(self):
        if args.resume_by_scan:
            # the team's reader: reopen and read up to the saved line count every time
            # (re-tokenizing every line before it to recompute the token offset)
            with open(self.path) as f:
                lines = f.readlines()
            if self.pos >= len(lines):
                self.pos = 0
            self.offset = sum(
                len(tokenize(json.loads(x)["text"], self.version)) for x in lines[: self.pos]
            )
            line = lines[self.pos]
        else:
            line = self.f.readline()
            if not line:
                self.f.seek(0)
                line = self.f.readline()
        self.pos += 1
        return json.loads(line)["text"]

    def rows(self, n):
        out = []
        while len(out) < n:
            while len(self.buf) < args.seq_len + 1:
                self.buf += tokenize(self._next_line(), self.version)
            out.append(self.buf[: args.seq_len + 1])
            self.buf = self.buf[args.seq_len + 1 :]
        return torch.tensor(out)


it1 = ChunkIterator("data/shard_00.chunk.jsonl")
it2 = ChunkIterator("data/shard_01.chunk.jsonl", args.shard2_tokenizer)
ev = torch.tensor(tokenize(evtext))
ev_rows = ev[: args.eval_rows * (args.seq_len + 1)].view(args.eval_rows, args.seq_len + 1)


# ----------------------------------------------------------------------------- model
class RMSNorm(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.w = nn.Parameter(torch.ones(d))

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-5) * self.w


def rope(x, cos, sin):
    x1, x2 = x[..., ::2], x[..., 1::2]
    return torch.stack([x1 * cos - x2 * sin, x1 * sin + x2 * cos], -1).flatten(-2)


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        d = args.dim
        self.an, self.fn = RMSNorm(d), RMSNorm(d)
        self.wq, self.wk, self.wv, self.wo = (nn.Linear(d, d, bias=False) for _ in range(4))
        h = int(8 * d / 3)
        self.w1, self.w3 = nn.Linear(d, h, bias=False), nn.Linear(d, h, bias=False)
        self.w2 = nn.Linear(h, d, bias=False)

    def forward(self, x, cos, sin):
        B, T, D = x.shape
        H = args.n_heads
        y = self.an(x)
        q = self.wq(y).view(B, T, H, D // H).transpose(1, 2)
        k = self.wk(y).view(B, T, H, D // H).transpose(1, 2)
        v = self.wv(y).view(B, T, H, D // H).transpose(1, 2)
        q, k = rope(q, cos, sin), rope(k, cos, sin)
        a = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.wo(a.transpose(1, 2).reshape(B, T, D))
        y = self.fn(x)
        return x + self.w2(F.silu(self.w1(y)) * self.w3(y))


class LMTransformer(nn.Module):
    def __init__(self):
        super().__init__()
        self.tok = nn.Embedding(V, args.dim)
        self.layers = nn.ModuleList([Block() for _ in range(args.n_layers)])
        self.norm = RMSNorm(args.dim)
        self.out = nn.Linear(args.dim, V, bias=False)
        hd = args.dim // args.n_heads
        inv = 1.0 / (10000 ** (torch.arange(0, hd, 2).float() / hd))
        ang = torch.outer(torch.arange(args.seq_len).float(), inv)
        self.register_buffer("cos", ang.cos())
        self.register_buffer("sin", ang.sin())
        for p in self.parameters():
            if p.dim() == 2:
                nn.init.trunc_normal_(
                    p, std=args.dim**-0.5, a=-3 * args.dim**-0.5, b=3 * args.dim**-0.5
                )

    def forward(self, x, y):
        h = self.tok(x)
        for layer in self.layers:
            h = layer(h, self.cos, self.sin)
        logits = self.out(self.norm(h))
        return F.cross_entropy(logits.reshape(-1, V), y.reshape(-1))


model = LMTransformer()
n_params = sum(p.numel() for p in model.parameters())
opt = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.95), weight_decay=0.1)


def lr_at(step):
    if step < args.warmup:
        return args.lr * (step + 1) / args.warmup
    frac = min(1.0, (step - args.warmup) / max(1, args.steps - args.warmup))
    if args.scheduler == "linear":
        return args.lr * (1 - frac * (1 - args.lr_min_ratio))
    return args.lr * (
        args.lr_min_ratio + (1 - args.lr_min_ratio) * 0.5 * (1 + math.cos(math.pi * frac))
    )


def rss_gib():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**30


with mlflow.start_run():
    mlflow.log_params(vars(args))
    print(f"Model size: {n_params:,} total parameters", flush=True)
    last_log, tokens_since = time.perf_counter(), 0
    for step in range(1, args.steps + 1):
        t0 = time.perf_counter()
        if args.shard2_step and step >= args.shard2_step:
            h = args.batch_size // 2
            batch = torch.cat([it1.rows(args.batch_size - h), it2.rows(h)])
        else:
            batch = it1.rows(args.batch_size)
        data_load_time = time.perf_counter() - t0
        for g in opt.param_groups:
            g["lr"] = lr_at(step - 1)
        loss = model(batch[:, :-1], batch[:, 1:])
        opt.zero_grad()
        loss.backward()
        gn = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0).item()
        opt.step()
        curr_iter_time = time.perf_counter() - t0
        tokens_since += batch.numel() - batch.shape[0]
        if step % args.log_freq == 0:
            now = time.perf_counter()
            wps = tokens_since / (now - last_log)
            m = {
                "global_step": step,
                "acc_step": 0,
                "loss/out": loss.item(),
                "grad_norm": gn,
                "optim/lr": opt.param_groups[0]["lr"],
                "speed/wps": wps,
                "speed/FLOPS": 6 * n_params * wps,
                "speed/curr_iter_time": curr_iter_time,
                "speed/data_load_time": data_load_time,
                "memory/rss_gib": rss_gib(),
            }
            mlflow.log_metrics(m, step=step)
            print(
                f"step: {step}  acc: 0  loss: {loss.item():>7.4f}  grad: {gn:.2e}  "
                f"flops: {6 * n_params * wps:.2e}  wps: {wps:.2e}  "
                f"iter: {curr_iter_time:>7.4f}  data: {data_load_time:>5.4f}  "
                f"lr: {opt.param_groups[0]['lr']:.2e}",
                flush=True,
            )
            last_log, tokens_since = time.perf_counter(), 0
        if step % args.eval_freq == 0:
            model.eval()
            with torch.no_grad():
                el = model(ev_rows[:, :-1], ev_rows[:, 1:]).item()
            model.train()
            mlflow.log_metrics({"eval/loss": el, "eval/ppl": math.exp(el)}, step=step)
            print(f"eval step {step}: loss {el:.4f} ppl {math.exp(el):.3f}", flush=True)
            last_log = time.perf_counter()
