"""A tiny Llama pre-trained as Hugging Face nanotron's ``run_train.py`` trains one
(``DistributedTrainer``), its ``train_step_logs`` log entries mirrored to MLflow by the team's
fork (nanotron writes them to W&B with ``wandb.log(..., step=iteration_step)``).

Plain PyTorch + numpy + the plain ``mlflow`` API (no nanotron here).  What is imitated:

* the YAML config's keys: ``model.model_config`` (``hidden_size``, ``num_hidden_layers``,
  ``num_attention_heads``, ``intermediate_size``, ``vocab_size``, ``tie_word_embeddings``),
  ``tokens`` (``sequence_length``, ``micro_batch_size``, ``batch_accumulation_per_replica``,
  ``train_steps``), ``optimizer`` (``learning_rate_scheduler``: ``learning_rate``,
  ``lr_warmup_steps``, ``lr_warmup_style: linear``, ``lr_decay_style: cosine``,
  ``min_decay_lr``; AdamW ``weight_decay``, ``clip_grad``), ``logging.iteration_step_info_interval``;
* a Llama block (RMSNorm, rotary attention, SwiGLU MLP), the loss the mean cross-entropy of
  the ``batch_accumulation_per_replica`` micro-batches (``loss_avg``);
* ``train_step_logs`` every ``iteration_step_info_interval`` steps: ``consumed_tokens``,
  ``elapsed_time_per_iteration_ms``, ``tokens_per_sec``, ``tokens_per_sec_per_gpu``,
  ``global_batch_size``, ``lm_loss``, ``lr``, ``model_tflops_per_gpu``,
  ``hardware_tflops_per_gpu``, ``grad_norm`` (unclipped, with ``clip_grad`` set) and
  ``iteration_step``, at ``step = iteration_step`` from 1, with the printed ``iteration:
  20 / 400 | consumed_tokens: 20.5K | elapsed_time_per_iteration_ms: 52.1 | ...`` line; no
  validation loop (nanotron's trainer has none).

Data: a generated corpus (sentences of a made-up language), byte-level tokens, preprocessed by
the team's ``datatrove`` job into ``num_shards`` Nanoset shards (``.ds`` files of uint16 tokens,
nanotron's dtype for a vocabulary under 65,536), read in order, each sample
``sequence_length + 1`` tokens.  ``--int32_shards`` lists shards that a re-run of the
preprocessing wrote as int32 (its tokenizer config had a 128K vocabulary), which the Nanoset
still reads as uint16.  The Nanoset's index covers one pass over the samples; a run whose
``train_steps`` asks for more samples reads past its end.  The team's ``--dedup_check``
(a guard against duplicated documents after a mixture change) keeps every sample's bytes seen
so far in a list and checks each new sample against it.  Written without looking at the doctor.

Faults are real settings and data: ``--learning_rate`` with ``--lr_warmup_steps``;
``--int32_shards``; ``--train_steps``; ``--dedup_check``.
"""

import time

import _setup
import mlflow
import numpy as np
import torch
import torch.nn.functional as F

args = _setup.parse_flags(
    {
        "--seed": 42,
        "--hidden_size": 64,
        "--num_hidden_layers": 2,
        "--num_attention_heads": 4,
        "--intermediate_size": 172,
        "--vocab_size": 256,
        "--sequence_length": 64,
        "--micro_batch_size": 16,
        "--batch_accumulation_per_replica": 1,
        "--train_steps": 400,
        "--learning_rate": 3e-3,
        "--lr_warmup_steps": 40,
        "--min_decay_lr": 3e-4,
        "--weight_decay": 0.01,
        "--clip_grad": 1.0,
        "--iteration_step_info_interval": 5,
        "--num_shards": 8,
        "--corpus_tokens": 480000,
        "--int32_shards": "",  # e.g. "5": shard indices written as int32
        "--dedup_check": 0,
    }
)
rng = _setup.seeded(args.seed)
torch.manual_seed(args.seed)

# ----------------------------------------------------------------------------- data
drng = np.random.default_rng(11)  # the same corpus for every run
syll = ["ka", "lo", "mi", "ne", "tu", "ra", "shi", "po", "el", "an", "vo", "qui", "d", "s"]
words = ["".join(drng.choice(syll, drng.integers(1, 4))) for _ in range(300)]
zipf = 1 / np.arange(1, 301) ** 1.1
zipf /= zipf.sum()
follow = drng.integers(0, 300, (300, 4))  # a little grammar: each word prefers four successors
text, w, length = [], 0, 0
while length < args.corpus_tokens:
    w = follow[w, drng.integers(4)] if drng.uniform() < 0.7 else drng.choice(300, p=zipf)
    text.append(words[w] + ("." if drng.uniform() < 0.1 else ""))
    length += len(text[-1]) + 1
tokens = np.frombuffer(" ".join(text).encode(), np.uint8)[: args.corpus_tokens].astype(np.uint16)
bad = {int(s) for s in args.int32_shards.split(",") if s}
shards = []
for k, part in enumerate(np.array_split(tokens, args.num_shards)):
    path = f"shard_{k:05d}.ds"
    part.astype(np.int32 if k in bad else np.uint16).tofile(path)
    shards.append(np.fromfile(path, np.uint16))  # the Nanoset reads every shard as uint16
S = args.sequence_length + 1
index = [(k, i) for k, sh in enumerate(shards) for i in range(0, len(sh) - S + 1, S)]
print(f"Nanoset: {len(index)} samples in {args.num_shards} shards", flush=True)


# ----------------------------------------------------------------------------- model
class RMSNorm(torch.nn.Module):
    def __init__(self, d):
        super().__init__()
        self.w = torch.nn.Parameter(torch.ones(d))

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-5) * self.w


def rotary(x):
    t, d = x.shape[-2], x.shape[-1]
    inv = 1.0 / (10000 ** (torch.arange(0, d, 2).float() / d))
    ang = torch.arange(t).float()[:, None] * inv[None]
    cos, sin = ang.cos(), ang.sin()
    x1, x2 = x[..., 0::2], x[..., 1::2]
    return torch.stack([x1 * cos - x2 * sin, x1 * sin + x2 * cos], -1).flatten(-2)


class Block(torch.nn.Module):
    def __init__(self):
        super().__init__()
        d = args.hidden_size
        self.n1, self.n2 = RMSNorm(d), RMSNorm(d)
        self.qkv = torch.nn.Linear(d, 3 * d, bias=False)
        self.o = torch.nn.Linear(d, d, bias=False)
        self.gate_up = torch.nn.Linear(d, 2 * args.intermediate_size, bias=False)
        self.down = torch.nn.Linear(args.intermediate_size, d, bias=False)

    def forward(self, x):
        b, t, d = x.shape
        h = args.num_attention_heads
        q, k, v = self.qkv(self.n1(x)).view(b, t, 3, h, d // h).permute(2, 0, 3, 1, 4)
        a = F.scaled_dot_product_attention(rotary(q), rotary(k), v, is_causal=True)
        x = x + self.o(a.transpose(1, 2).reshape(b, t, d))
        g, u = self.gate_up(self.n2(x)).chunk(2, -1)
        return x + self.down(F.silu(g) * u)


class Llama(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = torch.nn.Embedding(args.vocab_size, args.hidden_size)
        self.blocks = torch.nn.ModuleList(Block() for _ in range(args.num_hidden_layers))
        self.norm = RMSNorm(args.hidden_size)
        self.head = torch.nn.Linear(args.hidden_size, args.vocab_size, bias=False)

    def forward(self, x):
        x = self.emb(x)
        for blk in self.blocks:
            x = blk(x)
        return self.head(self.norm(x))


model = Llama()
n_params = sum(p.numel() for p in model.parameters())
optim = torch.optim.AdamW(
    model.parameters(), lr=args.learning_rate, betas=(0.9, 0.95), weight_decay=args.weight_decay
)


def lr_at(step):  # linear warm-up, cosine decay to min_decay_lr
    if step <= args.lr_warmup_steps:
        return args.learning_rate * step / max(1, args.lr_warmup_steps)
    p = (step - args.lr_warmup_steps) / max(1, args.train_steps - args.lr_warmup_steps)
    return args.min_decay_lr + (args.learning_rate - args.min_decay_lr) * 0.5 * (
        1 + np.cos(np.pi * p)
    )


seen = []  # the dedup guard's memory


def nanoset_get(i):
    k, off = index[i]  # IndexError past the index's one pass
    sample = shards[k][off : off + S]
    if args.dedup_check:
        if any(np.array_equal(sample, s) for s in seen):
            print(f"[dedup] sample {i} duplicates an earlier one", flush=True)
        seen.append(sample)
    return sample.astype(np.int64) % args.vocab_size


def fmt(v):
    for unit, scale in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(v) >= scale:
            return f"{v / scale:.3g}{unit}"
    return f"{v:.4g}"


with mlflow.start_run():
    mlflow.log_params(vars(args))
    gbs = args.micro_batch_size * args.batch_accumulation_per_replica
    consumed, cursor = 0, 0
    t_last = time.time()
    for step in range(1, args.train_steps + 1):
        lr = lr_at(step)
        for g in optim.param_groups:
            g["lr"] = lr
        losses = []
        optim.zero_grad()
        for _ in range(args.batch_accumulation_per_replica):
            batch = np.stack([nanoset_get(cursor + j) for j in range(args.micro_batch_size)])
            cursor += args.micro_batch_size
            x = torch.from_numpy(batch)
            logits = model(x[:, :-1])
            loss = F.cross_entropy(logits.reshape(-1, args.vocab_size), x[:, 1:].reshape(-1))
            (loss / args.batch_accumulation_per_replica).backward()
            losses.append(loss.item())
        gn = float(torch.nn.utils.clip_grad_norm_(model.parameters(), args.clip_grad))
        optim.step()
        consumed += gbs
        if step % args.iteration_step_info_interval == 0:
            now = time.time()
            ms = (now - t_last) * 1000 / args.iteration_step_info_interval
            t_last = now
            tps = gbs * args.sequence_length / (ms / 1000)
            tflops = 6 * n_params * tps / 1e12
            log = {
                "consumed_tokens": consumed * args.sequence_length,
                "elapsed_time_per_iteration_ms": ms,
                "tokens_per_sec": tps,
                "tokens_per_sec_per_gpu": tps,
                "global_batch_size": gbs,
                "lm_loss": float(np.mean(losses)),
                "lr": lr,
                "model_tflops_per_gpu": tflops,
                "hardware_tflops_per_gpu": tflops * 4 / 3,
                "grad_norm": gn,
            }
            mlflow.log_metrics({**log, "iteration_step": step}, step=step)
            print(
                f"iteration: {step} / {args.train_steps} | "
                + " | ".join(f"{k}: {fmt(v)}" for k, v in log.items()),
                flush=True,
            )
    print("Training done", flush=True)
