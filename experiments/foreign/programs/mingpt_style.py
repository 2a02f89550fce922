"""A character-level GPT trained with minGPT's ``Trainer`` (``projects/chargpt``), its
``on_batch_end`` callback mirrored to MLflow by the team.

Plain PyTorch + the plain ``mlflow`` API (no minGPT import here).  What is imitated:

* ``GPT`` (``model_type`` None: ``n_layer``, ``n_head``, ``n_embd`` given), causal
  self-attention, GELU MLP, ``block_size`` characters of context, dropout 0.1;
* ``CharDataset``: ``stoi`` / ``itos`` from the corpus' sorted characters, an item is
  ``block_size + 1`` characters at a random offset, ``x = chunk[:-1]``, ``y = chunk[1:]``;
* ``Trainer``: ``AdamW`` (``betas`` (0.9, 0.95), ``weight_decay`` 0.1 on the weights of the
  Linear layers only), a constant ``learning_rate``, ``grad_norm_clip`` 1.0, ``max_iters``
  iterations of ``batch_size``; no validation (chargpt has none);
* the callback: ``trainer.iter_num`` from 0, ``trainer.iter_dt`` (seconds per iteration) and
  ``trainer.loss``; the team logs ``loss`` and ``iter_dt`` every iteration at
  ``step = iter_num`` and prints chargpt's line every 10 iterations
  ``iter_dt 12.34ms; iter 10: train loss 2.34567``; every ``sample_iters`` iterations the
  callback samples from the model, prompted with ``sample_context`` as in chargpt.

Data: a generated corpus of plant-sensor log lines (``n_chars`` characters).  Written without
looking at the doctor.

Team options (the faults are real settings, data and code paths):

* ``--learning_rate``, ``--batch_size``, ``--max_iters``, ``--n_layer``, ``--n_head``,
  ``--n_embd``, ``--block_size``, ``--n_chars``;
* ``--sample_iters``, ``--sample_context``: chargpt's sampling callback and its prompt;
* ``--shard2_iter k``: the second plant's logs join the dataset at iteration k (half of the
  offsets), through the team's ``ShardDataset`` whose ``target_offset`` (default 1) is the
  shift between ``x`` and ``y``; ``--shard2_target_offset``;
* ``--dedup_log 1``: the team's duplicate check appends every batch's sequences to
  ``seen_batches.jsonl`` and reads the whole file back to look for repeats.
"""

import json
import math
import os
import tempfile
import time

import _setup
import mlflow
import torch
import torch.nn as nn
from torch.nn import functional as F

args = _setup.parse_flags(
    {
        "--seed": 0,
        "--n_chars": 60000,
        "--learning_rate": 5e-4,
        "--batch_size": 32,
        "--max_iters": 500,
        "--n_layer": 2,
        "--n_head": 4,
        "--n_embd": 64,
        "--block_size": 32,
        "--sample_iters": 0,
        "--sample_context": "O God, O God!",
        "--shard2_iter": 0,
        "--shard2_target_offset": 1,
        "--dedup_log": 0,
    }
)
rng = _setup.seeded(args.seed)


# ----------------------------------------------------------------------------- data
def plant_log(seed, n_chars, plant):
    g = torch.Generator().manual_seed(seed)
    units = ["pump", "valve", "motor", "tank", "fan"]
    states = ["ok", "warn", "idle", "run", "stop"]
    lines, n, t = [], 0, 0
    while n < n_chars:
        r = torch.randint(0, 1000, (4,), generator=g).tolist()
        t += 1 + r[0] % 7
        u = units[r[1] % 5]
        s = states[(r[1] // 5 + r[2] % 3) % 5]
        line = f"{plant} t={t} {u}{r[2] % 9} {s} temp={40 + r[3] % 35} load={r[3] % 100}\n"
        lines.append(line)
        n += len(line)
    return "".join(lines)[:n_chars]


text = plant_log(1000 + args.seed, args.n_chars, "plant-a")
text2 = plant_log(2000 + args.seed, args.n_chars // 2, "plant-b")
chars = sorted(set(text) | set(text2))
stoi = {ch: i for i, ch in enumerate(chars)}
itos = {i: ch for i, ch in enumerate(chars)}
vocab_size = len(chars)
data = torch.tensor([stoi[c] for c in text], dtype=torch.long)
data2 = torch.tensor([stoi[c] for c in text2], dtype=torch.long)


class ShardDataset:
    """The team's dataset of one shard: ``x`` and ``y`` are ``target_offset`` apart."""

    def __init__(self, d, target_offset=1):
        self.d, self.off = d, target_offset

    def sample(self, n):
        ix = rng.integers(0, len(self.d) - args.block_size - self.off, n)
        x = torch.stack([self.d[i : i + args.block_size] for i in ix])
        y = torch.stack([self.d[i + self.off : i + self.off + args.block_size] for i in ix])
        return x, y


shard1 = ShardDataset(data)
shard2 = ShardDataset(data2, args.shard2_target_offset)


# ----------------------------------------------------------------------------- model
class CausalSelfAttention(nn.Module):
    def __init__(self):
        super().__init__()
        self.c_attn = nn.Linear(args.n_embd, 3 * args.n_embd)
        self.c_proj = nn.Linear(args.n_embd, args.n_embd)
        self.attn_dropout = nn.Dropout(0.1)
        self.resid_dropout = nn.Dropout(0.1)
        bs = args.block_size
        self.register_buffer("bias", torch.tril(torch.ones(bs, bs)).view(1, 1, bs, bs))

    def forward(self, x):
        B, T, C = x.size()
        q, k, v = self.c_attn(x).split(args.n_embd, dim=2)
        h = args.n_head
        k = k.view(B, T, h, C // h).transpose(1, 2)
        q = q.view(B, T, h, C // h).transpose(1, 2)
        v = v.view(B, T, h, C // h).transpose(1, 2)
        att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(k.size(-1)))
        att = att.masked_fill(self.bias[:, :, :T, :T] == 0, float("-inf"))
        att = self.attn_dropout(F.softmax(att, dim=-1))
        y = (att @ v).transpose(1, 2).contiguous().view(B, T, C)
        return self.resid_dropout(self.c_proj(y))


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.ln_1 = nn.LayerNorm(args.n_embd)
        self.attn = CausalSelfAttention()
        self.ln_2 = nn.LayerNorm(args.n_embd)
        self.mlp = nn.Sequential(
            nn.Linear(args.n_embd, 4 * args.n_embd),
            nn.GELU(),
            nn.Linear(4 * args.n_embd, args.n_embd),
            nn.Dropout(0.1),
        )

    def forward(self, x):
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    def __init__(self):
        super().__init__()
        self.wte = nn.Embedding(vocab_size, args.n_embd)
        self.wpe = nn.Embedding(args.block_size, args.n_embd)
        self.drop = nn.Dropout(0.1)
        self.h = nn.ModuleList([Block() for _ in range(args.n_layer)])
        self.ln_f = nn.LayerNorm(args.n_embd)
        self.lm_head = nn.Linear(args.n_embd, vocab_size, bias=False)
        self.apply(self._init_weights)
        for pn, p in self.named_parameters():
            if pn.endswith("c_proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * args.n_layer))
        n_params = sum(p.numel() for p in self.h.parameters()) + self.lm_head.weight.numel()
        print(f"number of parameters: {n_params / 1e6:.2f}M", flush=True)

    @staticmethod
    def _init_weights(m):
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, mean=0.0, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Embedding):
            nn.init.normal_(m.weight, mean=0.0, std=0.02)
        elif isinstance(m, nn.LayerNorm):
            nn.init.zeros_(m.bias)
            nn.init.ones_(m.weight)

    def forward(self, idx, targets=None):
        pos = torch.arange(0, idx.size(1), dtype=torch.long).unsqueeze(0)
        x = self.drop(self.wte(idx) + self.wpe(pos))
        for block in self.h:
            x = block(x)
        logits = self.lm_head(self.ln_f(x))
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1))
        return logits, loss

    @torch.no_grad()
    def generate(self, idx, max_new_tokens):
        for _ in range(max_new_tokens):
            logits, _ = self(idx[:, -args.block_size :])
            idx = torch.cat([idx, logits[:, -1, :].argmax(-1, keepdim=True)], dim=1)
        return idx

    def configure_optimizers(self):
        decay, no_decay = [], []
        for _mn, m in self.named_modules():
            for pn, p in m.named_parameters(recurse=False):
                (decay if pn.endswith("weight") and isinstance(m, nn.Linear) else no_decay).append(
                    p
                )
        groups = [
            {"params": decay, "weight_decay": 0.1},
            {"params": no_decay, "weight_decay": 0.0},
        ]
        return torch.optim.AdamW(groups, lr=args.learning_rate, betas=(0.9, 0.95))


model = GPT()
optimizer = model.configure_optimizers()
workdir = tempfile.mkdtemp(prefix="chargpt-")


def get_batch(iter_num):
    if args.shard2_iter and iter_num >= args.shard2_iter:
        h = args.batch_size // 2
        x1, y1 = shard1.sample(args.batch_size - h)
        x2, y2 = shard2.sample(h)
        return torch.cat([x1, x2]), torch.cat([y1, y2])
    return shard1.sample(args.batch_size)


def dedup_check(x):
    """The team's duplicate check: append the batch, read the whole log back."""
    path = os.path.join(workdir, "seen_batches.jsonl")
    with open(path, "a") as f:
        for row in x.tolist():
            f.write(json.dumps(row) + "\n")
    seen, dups = set(), 0
    with open(path) as f:
        for line in f:
            key = tuple(json.loads(line))
            dups += key in seen
            seen.add(key)
    return dups


def on_batch_end(iter_num, iter_dt, loss):
    mlflow.log_metrics({"loss": loss, "iter_dt": iter_dt}, step=iter_num)
    if iter_num % 10 == 0:
        print(
            f"iter_dt {iter_dt * 1000:.2f}ms; iter {iter_num}: train loss {loss:.5f}",
            flush=True,
        )
    if args.sample_iters and iter_num > 0 and iter_num % args.sample_iters == 0:
        model.eval()
        context = args.sample_context
        x = torch.tensor([stoi[s] for s in context], dtype=torch.long)[None, ...]
        y = model.generate(x, 60)[0]
        print("".join(itos[int(i)] for i in y), flush=True)
        model.train()


with mlflow.start_run():
    mlflow.log_params(vars(args))
    print(f"data has {len(text)} characters, {vocab_size} unique.", flush=True)
    print(f"running on device cpu; workdir {workdir}", flush=True)
    model.train()
    iter_time = time.time()
    for iter_num in range(args.max_iters):
        x, y = get_batch(iter_num)
        if args.dedup_log:
            dedup_check(x)
        _, loss = model(x, y)
        model.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        tnow = time.time()
        iter_dt = tnow - iter_time
        iter_time = tnow
        on_batch_end(iter_num, iter_dt, loss.item())
