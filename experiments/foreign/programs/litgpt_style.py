"""A tiny GPT pretrained as LitGPT's ``litgpt pretrain`` pretrains one, its metrics sent through
Lightning Fabric's ``MLFlowLogger`` (``--logger_name mlflow``).

Plain PyTorch + numpy + the plain ``mlflow`` API (no LitGPT, no Lightning here).  What is
imitated:

* ``litgpt/pretrain.py``'s ``fit()``: ``max_iters = train.max_tokens // tokens_per_iter``,
  gradient accumulation ``global_batch_size // micro_batch_size`` micro-batches an optimizer
  step, ``get_lr``: linear warm-up over ``train.lr_warmup_steps`` then cosine down to
  ``train.min_lr``; AdamW (betas 0.9/0.95, weight decay 0.1 on every parameter); gradients
  clipped at ``train.max_norm``;
* every ``log_iter_interval = train.log_interval * gradient_accumulation_iters`` iterations
  ``fabric.log_dict(metrics, step=iter_num - 1)`` with ``loss`` (a ``RunningMean`` over the
  accumulation window), ``iter``, ``step`` (optimizer steps), ``epoch``, ``iter_time``,
  ``remaining_time``, ``tokens``, ``total_tokens``, ``learning_rate`` and Lightning's
  ``ThroughputMonitor(window_size=5).compute()`` (``time``, ``batches``, ``samples``,
  ``lengths``; once its window is full ``device/batches_per_sec``, ``device/samples_per_sec``,
  ``device/items_per_sec`` = tokens a second, ``device/flops_per_sec`` from the measured flops
  of a batch; no ``device/mfu`` on a CPU, whose peak flops Lightning does not know), which the
  team's fork logs under ``throughput/`` (``throughput/device/items_per_sec``, ...);
* every ``eval.interval`` optimizer steps ``validate()`` over ``eval.max_iters`` validation
  batches and ``{'val_loss', 'val_ppl'}`` at ``step = iter_num - 1``, and once more after the
  last iteration at ``step = iter_num`` (``eval.final_validation``); after each validation the
  team's ``generate_example`` prints a short sample from a prompt with a KV cache
  (``model.set_kv_cache(batch_size=1, max_seq_length=config.block_size)``: LitGPT's
  ``build_mask_cache`` makes a ``block_size x block_size`` boolean mask);
* the printed lines ``Epoch 1 | iter 50 step 25 | loss train: 2.831, val: n/a | iter time:
  14.2 ms`` and ``Final evaluation | val loss: ...``.

Data: a generated corpus (sentences of a made-up language: a few hundred words, word bigrams
from a sparse random transition table), character-level tokenizer; the team's preparation step
writes it as ``data.num_shards`` shards and tokenizes them to ``.npy`` token files (as
``litdata.optimize`` would); the loader walks the shards in order (one epoch = every shard),
drawing ``max_seq_length + 1`` token windows at random inside the current shard.  A shard with
no token file is read as raw text and tokenized as it is read (the ``TextFiles`` fallback,
which tokenizes the file on every fetch).  The validation set is a separate generated text.
Written without looking at the doctor.

Faults are real settings: ``--train.learning_rate``; ``--train.lr_warmup_steps``;
``--data.tokenized_shards`` (only the first N shards were tokenized by the preparation job);
``--model.block_size`` (the context length a config names for the model, while training uses
``train.max_seq_length``).
"""

import math
import os
import time

import _setup
import mlflow
import numpy as np
import torch
import torch.nn.functional as F

args = _setup.parse_flags(
    {
        "--seed": 42,
        "--model.n_layer": ("n_layer", 2),
        "--model.n_embd": ("n_embd", 64),
        "--model.n_head": ("n_head", 4),
        "--model.block_size": ("block_size", 256),
        "--train.max_seq_length": ("max_seq_length", 64),
        "--train.micro_batch_size": ("micro_batch_size", 16),
        "--train.global_batch_size": ("global_batch_size", 16),
        "--train.max_tokens": ("max_tokens", 600_000),
        "--train.learning_rate": ("learning_rate", 3e-3),
        "--train.min_lr": ("min_lr", 3e-4),
        "--train.lr_warmup_steps": ("lr_warmup_steps", 40),
        "--train.max_norm": ("max_norm", 1.0),
        "--train.log_interval": ("log_interval", 5),
        "--eval.interval": ("eval_interval", 50),
        "--eval.max_iters": ("eval_max_iters", 8),
        "--eval.max_new_tokens": ("max_new_tokens", 40),
        "--data.num_shards": ("num_shards", 8),
        "--data.tokenized_shards": ("tokenized_shards", -1),  # -1: all
        "--data.corpus_chars": ("corpus_chars", 640_000),
        "--data.val_chars": ("val_chars", 40_000),
    }
)
rng = _setup.seeded(args.seed)


# ----------------------------------------------------------------------------- the corpus
def make_language(r):
    letters = "abcdefghijklmnopqrstuvwxyz"
    words = sorted({"".join(r.choice(list(letters), r.integers(2, 8))) for _ in range(400)})
    nxt = [r.choice(len(words), 6, replace=False) for _ in words]
    probs = [r.dirichlet(np.ones(6) * 0.5) for _ in words]
    return words, nxt, probs


def generate_text(r, n_chars, words, nxt, probs):
    out, n, w = [], 0, int(r.integers(len(words)))
    while n < n_chars:
        length = int(r.integers(5, 14))
        sent = []
        for _ in range(length):
            sent.append(words[w])
            w = int(nxt[w][r.choice(6, p=probs[w])])
        s = " ".join(sent).capitalize() + ". "
        out.append(s)
        n += len(s)
    return "".join(out)[:n_chars]


lang = make_language(np.random.default_rng(1234))  # the language is fixed; the text is seeded
train_text = generate_text(rng, args.corpus_chars, *lang)
val_text = generate_text(np.random.default_rng(99), args.val_chars, *lang)
chars = sorted(set(train_text) | set(val_text))
stoi = {c: i for i, c in enumerate(chars)}
lut = np.zeros(128, dtype=np.int64)
for c, i in stoi.items():
    lut[ord(c)] = i
V = len(chars)


def tokenize_fast(text):  # the preparation job's vectorised tokenizer
    return lut[np.frombuffer(text.encode("ascii"), dtype=np.uint8)]


def tokenize_text(text):  # the fallback: the tokenizer's encode() on the file's text
    return np.array([stoi[c] for c in text], dtype=np.int64)


os.makedirs("data/train", exist_ok=True)
n_tok = args.num_shards if args.tokenized_shards < 0 else args.tokenized_shards
shard_len = len(train_text) // args.num_shards
for k in range(args.num_shards):
    part = train_text[k * shard_len : (k + 1) * shard_len]
    with open(f"data/train/shard-{k:05d}.txt", "w") as f:
        f.write(part)
    if k < n_tok:
        np.save(f"data/train/shard-{k:05d}.npy", tokenize_fast(part))
    elif os.path.exists(f"data/train/shard-{k:05d}.npy"):  # a stale one from another corpus
        os.remove(f"data/train/shard-{k:05d}.npy")
val_tokens = tokenize_fast(val_text)
print(
    f"corpus: {len(train_text)} chars in {args.num_shards} shards ({n_tok} tokenized), "
    f"vocab {V}, validation {len(val_tokens)} tokens",
    flush=True,
)


class ShardedLoader:
    """Walks the shards in order; windows drawn at random inside the current shard."""

    def __init__(self, seq_len, batch):
        self.seq, self.batch = seq_len, batch
        self.windows_per_shard = shard_len // (seq_len + 1)
        self.shard, self.drawn, self.epoch = 0, 0, 1
        self.tokens = self._open(0)

    def _open(self, k):
        path = f"data/train/shard-{k:05d}"
        if os.path.exists(path + ".npy"):
            return np.load(path + ".npy")
        return None  # raw text: tokenized on every fetch

    def _fetch(self, start):
        if self.tokens is not None:
            return self.tokens[start : start + self.seq + 1]
        with open(f"data/train/shard-{self.shard:05d}.txt") as f:
            return tokenize_text(f.read())[start : start + self.seq + 1]

    def next_batch(self):
        if self.drawn >= self.windows_per_shard:
            self.shard += 1
            if self.shard == args.num_shards:
                self.shard, self.epoch = 0, self.epoch + 1
            self.tokens, self.drawn = self._open(self.shard), 0
        starts = rng.integers(0, shard_len - self.seq - 1, self.batch)
        self.drawn += self.batch
        x = torch.from_numpy(np.stack([self._fetch(int(s)) for s in starts]))
        return x[:, :-1], x[:, 1:]


# ----------------------------------------------------------------------------- the model
def build_rope_cache(seq_len, n_elem, base=10000):
    theta = 1.0 / (base ** (torch.arange(0, n_elem, 2).float() / n_elem))
    idx_theta = torch.outer(torch.arange(seq_len).float(), theta).repeat(1, 2)
    return torch.cos(idx_theta), torch.sin(idx_theta)


def apply_rope(x, cos, sin):
    h = x.size(-1) // 2
    rotated = torch.cat((-x[..., h:], x[..., :h]), dim=-1)
    return x * cos + rotated * sin


def build_mask_cache(max_seq_length):
    ones = torch.ones((max_seq_length, max_seq_length), dtype=torch.bool)
    return torch.tril(ones).unsqueeze(0).unsqueeze(0)


class Block(torch.nn.Module):
    def __init__(self, d, h):
        super().__init__()
        self.h = h
        self.norm_1 = torch.nn.LayerNorm(d)
        self.attn = torch.nn.Linear(d, 3 * d)
        self.proj = torch.nn.Linear(d, d)
        self.norm_2 = torch.nn.LayerNorm(d)
        self.mlp = torch.nn.Sequential(
            torch.nn.Linear(d, 4 * d), torch.nn.GELU(approximate="tanh"), torch.nn.Linear(4 * d, d)
        )
        self.kv = None

    def forward(self, x, cos, sin, input_pos=None, mask=None):
        B, T, C = x.shape
        q, k, v = self.attn(self.norm_1(x)).split(C, dim=2)
        q, k, v = (t.view(B, T, self.h, C // self.h).transpose(1, 2) for t in (q, k, v))
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if input_pos is None:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:  # KV cache
            kc, vc = self.kv
            kc[:, :, input_pos] = k
            vc[:, :, input_pos] = v
            n = int(input_pos[-1]) + 1
            y = F.scaled_dot_product_attention(q, kc[:, :, :n], vc[:, :, :n], attn_mask=mask)
        x = x + self.proj(y.transpose(1, 2).reshape(B, T, C))
        return x + self.mlp(self.norm_2(x))


class GPT(torch.nn.Module):
    def __init__(self):
        super().__init__()
        d = args.n_embd
        self.wte = torch.nn.Embedding(V, d)
        self.h = torch.nn.ModuleList(Block(d, args.n_head) for _ in range(args.n_layer))
        self.ln_f = torch.nn.LayerNorm(d)
        self.lm_head = torch.nn.Linear(d, V, bias=False)
        self.max_seq_length = args.max_seq_length
        self.cos, self.sin = build_rope_cache(self.max_seq_length, d // args.n_head)
        self.mask_cache = None
        for m in self.modules():
            if isinstance(m, torch.nn.Linear | torch.nn.Embedding):
                torch.nn.init.normal_(m.weight, 0.0, 0.02)

    def set_kv_cache(self, batch_size, max_seq_length):
        hs = args.n_embd // args.n_head
        self.cos, self.sin = build_rope_cache(max_seq_length, hs)
        self.mask_cache = build_mask_cache(max_seq_length)
        for b in self.h:
            shape = (batch_size, args.n_head, max_seq_length, hs)
            b.kv = (torch.zeros(shape), torch.zeros(shape))

    def clear_kv_cache(self):
        self.mask_cache = None
        self.cos, self.sin = build_rope_cache(self.max_seq_length, args.n_embd // args.n_head)
        for b in self.h:
            b.kv = None

    def forward(self, idx, input_pos=None):
        T = idx.size(1)
        x = self.wte(idx)
        if input_pos is None:
            cos, sin, mask = self.cos[:T], self.sin[:T], None
        else:
            cos, sin = self.cos[input_pos], self.sin[input_pos]
            n = int(input_pos[-1]) + 1
            mask = self.mask_cache[:, :, input_pos, :n]
        for b in self.h:
            x = b(x, cos, sin, input_pos, mask)
        return self.lm_head(self.ln_f(x))


def get_lr(learning_rate, it, warmup_iters, max_iters, min_lr):
    if it < warmup_iters:  # 1) linear warmup for warmup_iters steps
        return learning_rate * it / warmup_iters
    if it > max_iters:  # 2) if it > max_iters, return min learning rate
        return min_lr
    ratio = (it - warmup_iters) / max(1, max_iters - warmup_iters)  # 3) cosine decay
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (learning_rate - min_lr)


@torch.no_grad()
def validate(model, max_iters):
    model.eval()
    seq = args.max_seq_length
    n_win = (len(val_tokens) - 1) // (seq + 1)
    losses = []
    for k in range(min(max_iters, max(1, n_win // args.micro_batch_size))):
        xs = [
            val_tokens[(k * args.micro_batch_size + j) * (seq + 1) :][: seq + 1]
            for j in range(args.micro_batch_size)
        ]
        x = torch.from_numpy(np.stack(xs))
        logits = model(x[:, :-1])
        losses.append(F.cross_entropy(logits.reshape(-1, V), x[:, 1:].reshape(-1)).item())
    model.train()
    return float(np.mean(losses))


@torch.no_grad()
def generate_example(model, prompt="The "):
    model.eval()
    model.set_kv_cache(batch_size=1, max_seq_length=args.block_size)
    idx = torch.tensor([[stoi.get(c, 0) for c in prompt]])
    out = list(prompt)
    logits = model(idx, torch.arange(idx.size(1)))
    pos = idx.size(1)
    for _ in range(args.max_new_tokens):
        probs = torch.softmax(logits[0, -1] / 0.8, -1)
        t = int(torch.multinomial(probs, 1))
        out.append(chars[t])
        logits = model(torch.tensor([[t]]), torch.tensor([pos]))
        pos += 1
        if pos >= min(args.block_size, args.max_seq_length):
            break
    model.clear_kv_cache()
    model.train()
    print("".join(out), flush=True)


model = GPT()
n_params = sum(p.numel() for p in model.parameters())
print(f"Total parameters: {n_params:,}", flush=True)
opt = torch.optim.AdamW(
    model.parameters(), lr=args.learning_rate, weight_decay=0.1, betas=(0.9, 0.95)
)
accum = args.global_batch_size // args.micro_batch_size
tokens_per_iter = args.micro_batch_size * args.max_seq_length
max_iters = args.max_tokens // tokens_per_iter
log_iter_interval = args.log_interval * accum
flops_per_batch = 6 * n_params * tokens_per_iter  # fwd + bwd
loader = ShardedLoader(args.max_seq_length, args.micro_batch_size)


class ThroughputMonitor:
    """lightning.fabric.utilities.throughput.Throughput with window_size=5, world_size 1."""

    def __init__(self, window_size=5):
        self.w = window_size
        self.time, self.batches, self.samples, self.lengths, self.flops = [], [], [], [], []

    def update(self, time, batches, samples, lengths, flops):
        for lst, v in zip(
            (self.time, self.batches, self.samples, self.lengths, self.flops),
            (time, batches, samples, lengths, flops),
            strict=True,
        ):
            lst.append(v)
            del lst[: -self.w]

    def compute(self):
        m = {
            "time": self.time[-1],
            "batches": self.batches[-1],
            "samples": self.samples[-1],
            "lengths": self.lengths[-1],
        }
        if len(self.time) == self.w:
            dt = self.time[-1] - self.time[0]
            m["device/batches_per_sec"] = (self.batches[-1] - self.batches[0]) / dt
            m["device/samples_per_sec"] = (self.samples[-1] - self.samples[0]) / dt
            m["device/items_per_sec"] = (self.lengths[-1] - self.lengths[0]) / dt
            m["device/flops_per_sec"] = sum(self.flops[1:]) / dt
        return m


with mlflow.start_run():
    mlflow.log_params({k: v for k, v in vars(args).items()})
    throughput = ThroughputMonitor(window_size=5)
    running = []
    val_loss = "n/a"
    iter_num = step_count = 0
    validate(model, max_iters=2)  # sanity check
    total_t0 = time.perf_counter()
    while iter_num < max_iters:
        iter_t0 = time.perf_counter()
        lr = get_lr(args.learning_rate, iter_num, args.lr_warmup_steps, max_iters, args.min_lr)
        for g in opt.param_groups:
            g["lr"] = lr
        iter_num += 1
        x, y = loader.next_batch()
        logits = model(x)
        loss = F.cross_entropy(logits.reshape(-1, V), y.reshape(-1))
        (loss / accum).backward()
        running.append(loss.item())
        del running[:-accum]
        is_accumulating = iter_num % accum != 0
        if not is_accumulating:
            torch.nn.utils.clip_grad_norm_(model.parameters(), args.max_norm)
            opt.step()
            opt.zero_grad()
            step_count += 1
        if iter_num % log_iter_interval == 0:
            loss_v = float(np.mean(running))
            t1 = time.perf_counter()
            throughput.update(
                time=t1 - total_t0,
                batches=iter_num,
                samples=iter_num * args.micro_batch_size,
                lengths=iter_num * args.micro_batch_size * args.max_seq_length,
                flops=flops_per_batch * log_iter_interval,
            )
            metrics = {
                "loss": loss_v,
                "iter": iter_num,
                "step": step_count,
                "epoch": loader.epoch,
                "iter_time": t1 - iter_t0,
                "remaining_time": (t1 - total_t0) / iter_num * (max_iters - iter_num),
                "tokens": iter_num * tokens_per_iter,
                "total_tokens": iter_num * tokens_per_iter,
                "learning_rate": lr,
            }
            vl = val_loss if isinstance(val_loss, str) else f"{val_loss:.3f}"
            print(
                f"Epoch {loader.epoch} | iter {iter_num} step {step_count} |"
                f" loss train: {loss_v:.3f}, val: {vl} | iter time: {(t1 - iter_t0) * 1000:.2f} ms"
                f"{' (step)' if not is_accumulating else ''}"
                f" remaining time: {metrics['remaining_time']:.1f}s",
                flush=True,
            )
            metrics.update({f"throughput/{k}": v for k, v in throughput.compute().items()})
            mlflow.log_metrics(metrics, step=iter_num - 1)
        if not is_accumulating and step_count % args.eval_interval == 0:
            t0 = time.perf_counter()
            val_loss = validate(model, args.eval_max_iters)
            td = time.perf_counter() - t0
            print(
                f"iter {iter_num}: val loss {val_loss:.4f}, val time: {td * 1000:.2f} ms",
                flush=True,
            )
            mlflow.log_metrics(
                {"val_loss": val_loss, "val_ppl": math.exp(val_loss)}, step=iter_num - 1
            )
            generate_example(model)
    val_loss = validate(model, args.eval_max_iters)
    print(f"Final evaluation | val loss: {val_loss:.3f} | val ppl: {math.exp(val_loss):.3f}")
    mlflow.log_metrics({"val_loss": val_loss, "val_ppl": math.exp(val_loss)}, step=iter_num)
    print(f"Training time: {time.perf_counter() - total_t0:.2f}s", flush=True)
