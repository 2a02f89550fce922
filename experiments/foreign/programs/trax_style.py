"""A tiny transformer text classifier trained with a Google Trax-style ``training.Loop``, its
summaries mirrored to MLflow by the team.

Plain PyTorch + the plain ``mlflow`` API (no trax or jax import here).  What is imitated:

* ``trax.models.TransformerEncoder``: token + position embeddings, ``n_layers`` encoder
  blocks (pre-LayerNorm attention and feed-forward, ``d_model``, ``d_ff``, 4 heads), mean
  pooling, a dense head; ``tl.CrossEntropyLoss`` and ``tl.Accuracy``;
* ``training.TrainTask(labeled_data, loss_layer, optimizer=Adam, lr_schedule=
  warmup_and_rsqrt_decay(n_warmup_steps, max_value))`` and an ``EvalTask`` on held-out
  batches, ``Loop(..., eval_at=lambda step: step % eval_every == 0)``;
* the summaries the loop writes at every eval step: 'metrics/CrossEntropyLoss' and
  'metrics/Accuracy' (eval), 'training/loss' (the mean since the last summary),
  'training/learning_rate', 'training/steps per second', 'training/gradients_l2',
  'training/weights_l2'; step = the loop's step.

Data: generated "review" sequences of 4 classes (words of a class's lexicon, neutral words,
negators that flip the next word's class to its pair).  Written without looking at the doctor.

Team options (the faults are real settings, data and code paths):

* ``--max_value`` (peak learning rate), ``--n_warmup_steps``, ``--batch_size``, ``--d_model``,
  ``--n_layers``, ``--n_steps``, ``--eval_every``, ``--n_eval``, ``--train_size``;
* ``--shard2_step k``: a second labelled file joins the stream at step k (half of every
  batch); the team's export wrote its labels with ``--shard2_label_offset`` (default 0);
* ``--bucket_stats 1``: the team's length-bucketing input pipeline appends every batch's
  examples to ``buckets.jsonl`` and recomputes the bucket boundaries from the whole file before
  each batch.
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
import torch.nn.functional as F

args = _setup.parse_flags(
    {
        "--seed": 0,
        "--max_value": 1e-3,
        "--n_warmup_steps": 50,
        "--batch_size": 32,
        "--d_model": 32,
        "--n_layers": 2,
        "--n_steps": 400,
        "--eval_every": 20,
        "--n_eval": 256,
        "--train_size": 6000,
        "--dropout": 0.1,
        "--shard2_step": 0,
        "--shard2_label_offset": 0,
        "--bucket_stats": 0,
    }
)
rng = _setup.seeded(args.seed)

N_CLS, LEX, NEUTRAL = 4, 8, 16
NEG = N_CLS * LEX + NEUTRAL
V = NEG + 2
PAD = V - 1
L = 24


def make_reviews(g, n):
    x = torch.full((n, L), PAD)
    y = torch.randint(0, N_CLS, (n,), generator=g)
    for i in range(n):
        length = int(torch.randint(12, L + 1, (1,), generator=g))
        toks = []
        while len(toks) < length:
            r = float(torch.rand(1, generator=g))
            c = int(y[i])
            if r < 0.35:
                toks.append(c * LEX + int(torch.randint(0, LEX, (1,), generator=g)))
            elif r < 0.45 and len(toks) < length - 1:
                toks += [NEG, (c ^ 1) * LEX + int(torch.randint(0, LEX, (1,), generator=g))]
            else:
                toks.append(N_CLS * LEX + int(torch.randint(0, NEUTRAL, (1,), generator=g)))
        x[i, :length] = torch.tensor(toks[:length])
    return x, y


train_x, train_y = make_reviews(torch.Generator().manual_seed(1000 + args.seed), args.train_size)
eval_x, eval_y = make_reviews(torch.Generator().manual_seed(9000 + args.seed), args.n_eval)
shard2_x, shard2_y = make_reviews(torch.Generator().manual_seed(2000 + args.seed), 3000)
shard2_y = (shard2_y + args.shard2_label_offset) % N_CLS


class Block(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.attn = nn.MultiheadAttention(d, 4, dropout=args.dropout, batch_first=True)
        self.ff = nn.Sequential(nn.Linear(d, 4 * d), nn.ReLU(), nn.Linear(4 * d, d))
        self.drop = nn.Dropout(args.dropout)

    def forward(self, x, pad):
        h = self.ln1(x)
        x = x + self.drop(self.attn(h, h, h, key_padding_mask=pad, need_weights=False)[0])
        return x + self.drop(self.ff(self.ln2(x)))


class TransformerEncoder(nn.Module):
    def __init__(self):
        super().__init__()
        d = args.d_model
        self.emb = nn.Embedding(V, d)
        self.pos = nn.Parameter(torch.randn(L, d) * 0.02)
        self.blocks = nn.ModuleList([Block(d) for _ in range(args.n_layers)])
        self.ln = nn.LayerNorm(d)
        self.head = nn.Linear(d, N_CLS)

    def forward(self, x):
        pad = x == PAD
        h = self.emb(x) + self.pos
        for b in self.blocks:
            h = b(h, pad)
        h = self.ln(h).masked_fill(pad[..., None], 0.0)
        return self.head(h.sum(1) / (~pad).sum(1, keepdim=True))


model = TransformerEncoder()
opt = torch.optim.Adam(model.parameters(), lr=args.max_value, betas=(0.9, 0.999), eps=1e-5)


def lr_at(step):
    """trax.lr.warmup_and_rsqrt_decay(n_warmup_steps, max_value)."""
    return args.max_value * min(step / args.n_warmup_steps, math.sqrt(args.n_warmup_steps / step))


workdir = tempfile.mkdtemp(prefix="trax-")
bucket_path = os.path.join(workdir, "buckets.jsonl")


def bucket_boundaries(x):
    with open(bucket_path, "a") as f:
        for row in x.tolist():
            f.write(json.dumps({"tokens": row, "length": sum(t != PAD for t in row)}) + "\n")
    lengths = []
    with open(bucket_path) as f:
        for line in f:
            lengths.append(json.loads(line)["length"])
    lengths.sort()
    return [lengths[len(lengths) * q // 4] for q in (1, 2, 3)]


def l2(tensors):
    return math.sqrt(sum(float((t.detach() ** 2).sum()) for t in tensors))


with mlflow.start_run():
    mlflow.log_params(vars(args))
    n_params = sum(p.numel() for p in model.parameters())
    print(f"Step      0: Total number of trainable weights: {n_params}", flush=True)
    acc_loss, acc_n, t_last = 0.0, 0, time.time()
    for step in range(1, args.n_steps + 1):
        model.train()
        lr = lr_at(step)
        for grp in opt.param_groups:
            grp["lr"] = lr
        idx = torch.from_numpy(rng.integers(0, len(train_x), args.batch_size))
        x, y = train_x[idx], train_y[idx]
        if args.shard2_step and step >= args.shard2_step:
            h = args.batch_size // 2
            j = torch.from_numpy(rng.integers(0, len(shard2_x), h))
            x, y = torch.cat([x[h:], shard2_x[j]]), torch.cat([y[h:], shard2_y[j]])
        if args.bucket_stats:
            bucket_boundaries(x)
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        gl2 = l2(p.grad for p in model.parameters())
        opt.step()
        acc_loss += loss.item()
        acc_n += 1
        if step % args.eval_every == 0:
            sps = acc_n / (time.time() - t_last)
            model.eval()
            with torch.no_grad():
                logits = model(eval_x)
                ce = F.cross_entropy(logits, eval_y).item()
                accuracy = (logits.argmax(-1) == eval_y).float().mean().item()
            m = {
                "metrics/CrossEntropyLoss": ce,
                "metrics/Accuracy": accuracy,
                "training/loss": acc_loss / acc_n,
                "training/learning_rate": lr,
                "training/steps per second": sps,
                "training/gradients_l2": gl2,
                "training/weights_l2": l2(model.parameters()),
            }
            mlflow.log_metrics(m, step=step)
            print(
                f"Step {step:6d}: Ran {acc_n} train steps in {acc_n / sps:.2f} secs\n"
                f"Step {step:6d}: train CrossEntropyLoss |  {m['training/loss']:.8f}\n"
                f"Step {step:6d}: eval  CrossEntropyLoss |  {ce:.8f}\n"
                f"Step {step:6d}: eval          Accuracy |  {accuracy:.8f}",
                flush=True,
            )
            acc_loss, acc_n, t_last = 0.0, 0, time.time()
