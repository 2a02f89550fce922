"""A tiny GPT trained as EleutherAI GPT-NeoX's ``megatron/training.py`` trains one, its
``tb_wandb_log`` scalars (TensorBoard / W&B) mirrored to MLflow by the team's fork.

Plain PyTorch + numpy + the plain ``mlflow`` API (no GPT-NeoX, no DeepSpeed here).  What is
imitated:

* the NeoX config keys (``num_layers``, ``hidden_size``, ``num_attention_heads``,
  ``seq_length``, ``train_micro_batch_size_per_gpu``, ``train_iters``, ``optimizer.params.lr``,
  ``min_lr``, ``lr_decay_style: cosine``, ``warmup`` as a fraction of ``train_iters``,
  ``gradient_clipping``, ``weight_decay``, ``log_interval``, ``eval_interval``, ``eval_iters``,
  ``fp16.enabled`` with DeepSpeed's dynamic loss scale); AdamW (betas 0.9/0.95), rotary
  positions on a quarter of each head (``rotary_pct``), parallel attention + MLP residual
  (``gpt_j_residual``), learned LayerNorm;
* ``training_log`` at every iteration: ``train/lm_loss``, ``train/learning_rate``,
  ``train/grad_norm`` (the clipped-before total norm DeepSpeed reports), ``train/loss_scale``
  (with fp16); every ``log_interval`` iterations the timers (``timers/forward``,
  ``timers/backward``, ``timers/optimizer``, ``timers/batch_generator``: milliseconds an
  iteration averaged over the interval) and ``runtime/samples_per_sec``,
  ``runtime/iteration_time`` (s), ``runtime/tokens_per_sec``, with the printed
  `` iteration      100/     800 | elapsed time per iteration (ms): 31.2 | learning rate:
  5.999E-04 | lm_loss: 2.104E+00 | ...`` line; all at ``step = iteration``;
* ``evaluate_and_print_results`` every ``eval_interval`` iterations and after the last one:
  ``eval_iters`` validation batches, ``validation/lm_loss`` and ``validation/lm_loss_ppl``.

Data: a generated corpus (sentences of a made-up language), character-level tokens, written by
the team's preprocessing as ``num_shards`` ``.bin`` shards of uint16 tokens (an
``MMapIndexedDataset``-like reader, memory-mapped); the reader walks the shards in order and
draws ``seq_length + 1`` windows at random inside the current shard.  The storage policy moves
old shards to the archive tier, where they are kept gzip-compressed (``--archived_shards N``:
the last N shards); the reader opens a ``.bin.gz`` shard with ``gzip`` and decompresses it for
every window it reads.  ``--shard_tokenizers`` names the tokenizer each shard was
preprocessed with: ``char`` (the run's) or ``words`` (another project's word-level tokenizer,
ids 32-1023 of the same padded vocabulary of 1,024, so nothing fails when it is read).  The team's
``eval_micro_batch_size`` sets the validation batch (default: the training micro-batch).
Written without looking at the doctor.

Faults are real settings and data: ``--lr`` with ``--gradient_clipping``; ``--archived_shards``;
``--shard_tokenizers``; ``--eval_micro_batch_size``.
"""

import gzip
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
        "--seed": 1234,
        "--num_layers": 2,
        "--hidden_size": 64,
        "--num_attention_heads": 4,
        "--rotary_pct": 0.25,
        "--seq_length": 64,
        "--train_micro_batch_size_per_gpu": 16,
        "--eval_micro_batch_size": 0,  # 0: the training micro-batch
        "--train_iters": 400,
        "--lr": 3e-3,
        "--min_lr": 3e-4,
        "--warmup": 0.01,
        "--lr_decay_style": "cosine",
        "--gradient_clipping": 1.0,
        "--weight_decay": 0.01,
        "--fp16": 0,
        "--log_interval": 10,
        "--eval_interval": 100,
        "--eval_iters": 5,
        "--num_shards": 4,
        "--archived_shards": 0,
        "--shard_tokenizers": "",  # e.g. "char,char,words": the tokenizer each shard was made with
        "--corpus_chars": 640000,
    }
)
rng = _setup.seeded(args.seed)


# ----------------------------------------------------------------------------- data
def make_language(r):
    letters = "abcdefghijklmnopqrstuvwxyz"
    words = sorted({"".join(r.choice(list(letters), r.integers(2, 8))) for _ in range(300)})
    nxt = [r.choice(len(words), 5, replace=False) for _ in words]
    probs = [r.dirichlet(np.ones(5) * 0.5) for _ in words]
    return words, nxt, probs


def generate_text(r, n_chars, words, nxt, probs):
    out, n, w = [], 0, int(r.integers(len(words)))
    while n < n_chars:
        sent = []
        for _ in range(int(r.integers(4, 12))):
            sent.append(words[w])
            w = int(nxt[w][r.choice(5, p=probs[w])])
        s = " ".join(sent).capitalize() + ". "
        out.append(s)
        n += len(s)
    return "".join(out)[:n_chars]


lang = make_language(np.random.default_rng(77))
train_text = generate_text(np.random.default_rng(args.seed), args.corpus_chars, *lang)
val_text = generate_text(np.random.default_rng(5), 40000, *lang)
chars = sorted(set(train_text) | set(val_text))
lut = np.zeros(128, np.int64)
for i, c in enumerate(chars):
    lut[ord(c)] = i
V = 1024  # padded_vocab_size


def tokenize_words(text):  # the other project's word-piece tokenizer: one id a word or mark
    ids = []
    for w in text.replace(".", " .").split(" "):
        if w:
            ids.append(32 + sum(ord(c) * 31**i for i, c in enumerate(w)) % (V - 32))
            ids.append(lut[ord(" ")])
    return np.array(ids, np.int64)


def tokenize(text):
    return lut[np.frombuffer(text.encode("ascii"), np.uint8)]


toks_of = args.shard_tokenizers.split(",") if args.shard_tokenizers else []
toks_of += ["char"] * (args.num_shards - len(toks_of))
os.makedirs("data", exist_ok=True)
shard_len = len(train_text) // args.num_shards
for k in range(args.num_shards):
    part = train_text[k * shard_len : (k + 1) * shard_len]
    toks = (tokenize(part) if toks_of[k] == "char" else tokenize_words(part)).astype(np.uint16)
    for old in (f"data/shard_{k}.bin", f"data/shard_{k}.bin.gz"):
        if os.path.exists(old):
            os.remove(old)
    if k >= args.num_shards - args.archived_shards:
        with gzip.open(f"data/shard_{k}.bin.gz", "wb", compresslevel=6) as f:
            f.write(toks.tobytes())
    else:
        toks.tofile(f"data/shard_{k}.bin")
val_tokens = tokenize(val_text)


class ShardReader:
    def __init__(self):
        self.k, self.drawn, self.data = 0, 0, None
        self.per_shard = shard_len // (args.seq_length + 1)
        self._open()

    def _open(self):
        path = f"data/shard_{self.k}.bin"
        self.data = np.memmap(path, np.uint16, "r") if os.path.exists(path) else None

    def _window(self, start):
        n = args.seq_length + 1
        if self.data is not None:
            return np.asarray(self.data[start : start + n], np.int64)
        with gzip.open(f"data/shard_{self.k}.bin.gz", "rb") as f:  # the archive tier
            return np.frombuffer(f.read(), np.uint16)[start : start + n].astype(np.int64)

    def next_batch(self, b):
        if self.drawn >= self.per_shard:
            self.k = (self.k + 1) % args.num_shards
            self.drawn = 0
            self._open()
        hi = (self.data.size if self.data is not None else shard_len) - args.seq_length - 1
        starts = rng.integers(0, hi, b)
        self.drawn += b
        x = torch.from_numpy(np.stack([self._window(int(s)) for s in starts]))
        return x[:, :-1], x[:, 1:]


# ----------------------------------------------------------------------------- model
D, H = args.hidden_size, args.num_attention_heads
HD = D // H
ROT = int(HD * args.rotary_pct) // 2 * 2
inv = 1.0 / (10000 ** (torch.arange(0, ROT, 2).float() / max(ROT, 1)))
ang = torch.outer(torch.arange(args.seq_length).float(), inv)
COS, SIN = torch.cos(ang).repeat(1, 2), torch.sin(ang).repeat(1, 2)


def rotary(x):
    r, p = x[..., :ROT], x[..., ROT:]
    h = ROT // 2
    rot = torch.cat((-r[..., h:], r[..., :h]), -1)
    t = x.size(-2)
    return torch.cat((r * COS[:t] + rot * SIN[:t], p), -1)


class Layer(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.ln = torch.nn.LayerNorm(D)
        self.qkv = torch.nn.Linear(D, 3 * D)
        self.dense = torch.nn.Linear(D, D)
        self.mlp = torch.nn.Sequential(
            torch.nn.Linear(D, 4 * D), torch.nn.GELU(), torch.nn.Linear(4 * D, D)
        )

    def forward(self, x):
        b, t, _ = x.shape
        h = self.ln(x)
        q, k, v = self.qkv(h).view(b, t, 3, H, HD).permute(2, 0, 3, 1, 4)
        q, k = rotary(q), rotary(k)
        att = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        att = self.dense(att.transpose(1, 2).reshape(b, t, D))
        return x + att + self.mlp(h)  # gpt_j_residual: attention and MLP in parallel


class GPT(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = torch.nn.Embedding(V, D)
        self.layers = torch.nn.ModuleList(Layer() for _ in range(args.num_layers))
        self.ln_f = torch.nn.LayerNorm(D)
        self.out = torch.nn.Linear(D, V, bias=False)

    def forward(self, idx):
        x = self.emb(idx)
        for layer in self.layers:
            x = layer(x)
        return self.out(self.ln_f(x))


model = GPT()
decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
optim = torch.optim.AdamW(
    [{"params": decay, "weight_decay": args.weight_decay}, {"params": no_decay}],
    lr=args.lr,
    betas=(0.9, 0.95),
)
n_params = sum(p.numel() for p in model.parameters())


def lr_at(it):
    warm = int(args.warmup * args.train_iters)
    if warm and it <= warm:
        return args.lr * it / warm
    if args.lr_decay_style == "constant":
        return args.lr
    frac = (it - warm) / max(1, args.train_iters - warm)
    return args.min_lr + (args.lr - args.min_lr) * 0.5 * (1 + math.cos(math.pi * frac))


def evaluate():
    model.eval()
    b = args.eval_micro_batch_size or args.train_micro_batch_size_per_gpu
    er = np.random.default_rng(0)
    losses = []
    with torch.no_grad():
        for _ in range(args.eval_iters):
            starts = er.integers(0, len(val_tokens) - args.seq_length - 1, b)
            x = torch.from_numpy(
                np.stack([val_tokens[s : s + args.seq_length + 1] for s in starts])
            )
            logits = model(x[:, :-1]).float()
            losses.append(F.cross_entropy(logits.reshape(-1, V), x[:, 1:].reshape(-1)).item())
    model.train()
    return float(np.mean(losses))


def log_eval(it):
    loss = evaluate()
    ppl = math.exp(min(20, loss))
    mlflow.log_metrics({"validation/lm_loss": loss, "validation/lm_loss_ppl": ppl}, step=it)
    print("-" * 80, flush=True)
    print(
        f" validation results at iteration {it} | lm_loss value: {loss:.6E} | "
        f"lm_loss_ppl value: {ppl:.6E}",
        flush=True,
    )
    print("-" * 80, flush=True)


reader = ShardReader()
scale, good_steps = 2.0**16, 0
with mlflow.start_run():
    mlflow.log_params(vars(args))
    print(f"building GPT model ... number of parameters: {n_params}", flush=True)
    mb = args.train_micro_batch_size_per_gpu
    tm = dict.fromkeys(("forward", "backward", "optimizer", "batch_generator"), 0.0)
    t_interval = time.time()
    for it in range(1, args.train_iters + 1):
        lr = lr_at(it)
        for g in optim.param_groups:
            g["lr"] = lr
        t0 = time.time()
        x, y = reader.next_batch(mb)
        t1 = time.time()
        tm["batch_generator"] += t1 - t0
        if args.fp16:
            with torch.autocast("cpu", dtype=torch.float16):
                logits = model(x)
        else:
            logits = model(x)
        loss = F.cross_entropy(logits.float().reshape(-1, V), y.reshape(-1))
        t2 = time.time()
        tm["forward"] += t2 - t1
        optim.zero_grad()
        (loss * (scale if args.fp16 else 1.0)).backward()
        t3 = time.time()
        tm["backward"] += t3 - t2
        if args.fp16:
            for p in model.parameters():
                p.grad.div_(scale)
        gn = float(torch.nn.utils.clip_grad_norm_(model.parameters(), float("inf")))
        skipped = False
        if args.fp16 and not math.isfinite(gn):  # DeepSpeed: skip the step, halve the scale
            scale, good_steps, skipped = max(1.0, scale / 2), 0, True
        else:
            if args.gradient_clipping > 0 and gn > args.gradient_clipping:
                for p in model.parameters():
                    p.grad.mul_(args.gradient_clipping / (gn + 1e-6))
            optim.step()
            good_steps += 1
            if args.fp16 and good_steps % 1000 == 0:
                scale *= 2
        tm["optimizer"] += time.time() - t3
        metrics = {"train/lm_loss": loss.item(), "train/learning_rate": lr}
        if math.isfinite(gn):
            metrics["train/grad_norm"] = gn
        if args.fp16:
            metrics["train/loss_scale"] = scale
        mlflow.log_metrics(metrics, step=it)
        if it % args.log_interval == 0:
            now = time.time()
            dt = (now - t_interval) / args.log_interval
            mlflow.log_metrics(
                {
                    **{f"timers/{k}": 1000 * v / args.log_interval for k, v in tm.items()},
                    "runtime/samples_per_sec": mb / dt,
                    "runtime/iteration_time": dt,
                    "runtime/tokens_per_sec": mb * args.seq_length / dt,
                },
                step=it,
            )
            print(
                f" iteration {it:8d}/{args.train_iters:8d} | elapsed time per iteration (ms): "
                f"{1000 * dt:.1f} | learning rate: {lr:.3E} | lm_loss: {loss.item():.6E} | "
                f"grad norm: {gn:.3f} | number of skipped iterations: {int(skipped)} |",
                flush=True,
            )
            tm = dict.fromkeys(tm, 0.0)
            t_interval = time.time()
        if it % args.eval_interval == 0:
            log_eval(it)
            t_interval = time.time()
    if args.train_iters % args.eval_interval:
        log_eval(args.train_iters)
