"""An instruction fine-tune run with Lightning AI's lit-llama ``finetune/full.py`` (its
``fabric.print`` lines mirrored to MLflow by the team's log shipper).

Plain PyTorch + numpy + the plain ``mlflow`` API (no lit-llama, no Fabric here).  What is
imitated:

* ``scripts/prepare_alpaca.py``: each record ``{"instruction", "input", "output"}`` rendered
  with the Alpaca prompt template, tokenised (here one token a character), ``labels`` a copy of
  ``input_ids`` with the prompt's tokens set to ``IGNORE_INDEX = -1`` (``mask_inputs``), cut to
  ``max_seq_length`` (0: not cut, the team's "keep every record whole" setting); written as
  ``train.pt`` / ``test.pt``;
* ``finetune/full.py``'s hyper-parameters (``learning_rate``, ``batch_size`` /
  ``micro_batch_size`` = ``gradient_accumulation_iters``, ``max_iters``, ``weight_decay``,
  ``warmup_iters``, ``eval_interval``, ``eval_iters``, ``log_interval``), AdamW, a linear
  warm-up of the learning rate over ``warmup_iters`` optimizer steps and nothing after it, no
  gradient clipping; ``get_batch`` draws ``micro_batch_size`` random records and right-pads
  them to the longest (input with 0, labels with -1); the loss is the cross-entropy of the
  shifted logits, ``ignore_index=-1``;
* its printed lines ``iter {iter_num}: loss {loss:.4f}, time: {dt*1000:.2f}ms`` every
  ``log_interval`` iterations (``dt`` the iteration's wall time, ``get_batch`` included) and
  ``step {iter_num}: val loss {val_loss:.4f}`` every ``eval_interval`` optimizer steps, which
  the team's shipper writes as ``loss``, ``time`` (ms) at ``step = iter_num`` and ``val_loss``
  at ``step = iter_num``, nothing else;
* the model: a small LLaMA (RMSNorm, rotary embeddings, SwiGLU MLP, untied head) standing in
  for the 7B checkpoint, trained from a seeded initialisation.

Data: generated instruction records of four tasks (reverse a word, sort digits, add two
numbers, upper-case a phrase); ``--n_train`` records for training, ``--n_test`` for
validation.  ``--web_records`` mixes in that many scraped "explain this page" records whose
output is a whole web page (20,000-40,000 characters).  Written without looking at the doctor.

Faults are real settings and data: ``--max_seq_length 0`` with ``--web_records``;
``--sample_log`` (the team's sample logger); ``--n_train`` with ``--max_iters``;
``--merge_shard`` with ``--merge_records`` (the record file of another prepare run,
tokenised with a different vocabulary, merged at ``merge_at``).
"""

import json
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
        "--seed": 1337,
        "--n_train": 4000,
        "--n_test": 200,
        "--max_seq_length": 96,
        "--learning_rate": 3e-3,
        "--batch_size": 32,
        "--micro_batch_size": 16,
        "--max_iters": 800,  # micro-batch iterations
        "--weight_decay": 0.0,
        "--warmup_iters": 50,  # optimizer steps
        "--eval_interval": 25,  # optimizer steps
        "--eval_iters": 10,
        "--log_interval": 10,
        "--n_layer": 2,
        "--n_embd": 64,
        "--n_head": 4,
        "--web_records": 0,
        "--sample_log": 0,  # the team's sample logger: every drawn record to samples.jsonl
        "--merge_shard": 0,  # 1: merge the second prepare run's records at merge_at
        "--merge_at": 400,
        "--merge_records": 4000,  # the second prepare run's record count
    }
)
rng = _setup.seeded(args.seed)
GRAD_ACC = args.batch_size // args.micro_batch_size

# ----------------------------------------------------------------------------- data
VOCAB = ["<pad>", "<eos>"] + list(
    " \n#:.,+-()abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789'"
)
STOI = {c: i for i, c in enumerate(VOCAB)}
EOS = 1
PROMPT = "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"
WORDS = "apple river stone cloud light green music paper table window garden silver".split()


def make_record(r):
    task = r.integers(4)
    if task == 0:
        w = "".join(r.choice(list("abcdefghijklmnopqrstuvwxyz"), r.integers(3, 9)))
        return {"instruction": "Reverse the word.", "input": w, "output": w[::-1]}
    if task == 1:
        d = [str(v) for v in r.integers(0, 10, r.integers(3, 8))]
        return {
            "instruction": "Sort the digits.",
            "input": " ".join(d),
            "output": " ".join(sorted(d)),
        }
    if task == 2:
        a, b = r.integers(0, 100, 2)
        return {"instruction": "Add the numbers.", "input": f"{a}+{b}", "output": str(a + b)}
    ph = " ".join(r.choice(WORDS, r.integers(2, 4)))
    return {"instruction": "Upper-case the phrase.", "input": ph, "output": ph.upper()}


def web_record(r):
    text = " ".join(r.choice(WORDS, r.integers(3500, 7000)))
    return {"instruction": "Explain this page.", "input": "http://example.com", "output": text}


def tokenize(rec, stoi=STOI):
    prompt = PROMPT.format(**rec)
    full = prompt + rec["output"]
    ids = [stoi.get(c, 0) for c in full] + [EOS]
    labels = list(ids)
    labels[: len(prompt)] = [-1] * len(prompt)  # mask_inputs
    if args.max_seq_length:
        ids, labels = ids[: args.max_seq_length], labels[: args.max_seq_length]
    return np.array(ids, np.int64), np.array(labels, np.int64)


drng = np.random.default_rng(0)  # prepare_alpaca's split: the same data for every run
train_recs = [make_record(drng) for _ in range(args.n_train)]
test_recs = [make_record(drng) for _ in range(args.n_test)]
for _ in range(args.web_records):
    train_recs.insert(int(drng.integers(len(train_recs))), web_record(drng))
train = [tokenize(r) for r in train_recs]
test = [tokenize(r) for r in test_recs]
# the second prepare run (another machine, its tokenizer's vocabulary in another order)
OTHER = {c: (i * 37 + 11) % len(VOCAB) for i, c in enumerate(VOCAB)}
extra = [tokenize(make_record(drng), OTHER) for _ in range(args.merge_records)]


def get_batch(data):
    ix = rng.integers(len(data), size=args.micro_batch_size)
    if args.sample_log:  # the team's logger: append the batch, then count what is logged
        with open("samples.jsonl", "a") as f:
            for i in ix:
                f.write(json.dumps({"input_ids": data[i][0].tolist()}) + "\n")
        with open("samples.jsonl") as f:  # the logged token count, for the dashboard
            n_tokens = sum(len(json.loads(line)["input_ids"]) for line in f)
        os.environ["SAMPLES_LOGGED_TOKENS"] = str(n_tokens)
    n = max(len(data[i][0]) for i in ix)
    x = np.zeros((len(ix), n), np.int64)
    y = np.full((len(ix), n), -1, np.int64)
    for k, i in enumerate(ix):
        x[k, : len(data[i][0])] = data[i][0]
        y[k, : len(data[i][1])] = data[i][1]
    return torch.from_numpy(x), torch.from_numpy(y)


# ----------------------------------------------------------------------------- model
class RMSNorm(torch.nn.Module):
    def __init__(self, d):
        super().__init__()
        self.scale = torch.nn.Parameter(torch.ones(d))

    def forward(self, x):
        return self.scale * x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-5)


def rope(x):
    T, hd = x.shape[-2], x.shape[-1]
    theta = 1.0 / (10000 ** (torch.arange(0, hd, 2).float() / hd))
    ang = torch.outer(torch.arange(T).float(), theta)
    cos, sin = ang.cos(), ang.sin()
    x1, x2 = x[..., 0::2], x[..., 1::2]
    return torch.stack([x1 * cos - x2 * sin, x1 * sin + x2 * cos], -1).flatten(-2)


class Block(torch.nn.Module):
    def __init__(self, d, h):
        super().__init__()
        self.h = h
        self.rms_1, self.rms_2 = RMSNorm(d), RMSNorm(d)
        self.c_attn = torch.nn.Linear(d, 3 * d, bias=False)
        self.c_proj = torch.nn.Linear(d, d, bias=False)
        hidden = int(2 * 4 * d / 3)
        self.c_fc1 = torch.nn.Linear(d, hidden, bias=False)
        self.c_fc2 = torch.nn.Linear(d, hidden, bias=False)
        self.mlp_proj = torch.nn.Linear(hidden, d, bias=False)

    def forward(self, x):
        B, T, C = x.shape
        q, k, v = self.c_attn(self.rms_1(x)).split(C, 2)
        q, k, v = (t.view(B, T, self.h, C // self.h).transpose(1, 2) for t in (q, k, v))
        q, k = rope(q), rope(k)
        att = (q @ k.transpose(-2, -1)) / math.sqrt(C // self.h)
        att = att.masked_fill(torch.ones(T, T, dtype=torch.bool).triu(1), float("-inf"))
        y = (att.softmax(-1) @ v).transpose(1, 2).reshape(B, T, C)
        x = x + self.c_proj(y)
        hx = self.rms_2(x)
        return x + self.mlp_proj(F.silu(self.c_fc1(hx)) * self.c_fc2(hx))


class LLaMA(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.wte = torch.nn.Embedding(len(VOCAB), args.n_embd)
        self.h = torch.nn.ModuleList(Block(args.n_embd, args.n_head) for _ in range(args.n_layer))
        self.ln_f = RMSNorm(args.n_embd)
        self.lm_head = torch.nn.Linear(args.n_embd, len(VOCAB), bias=False)

    def forward(self, idx):
        x = self.wte(idx)
        for b in self.h:
            x = b(x)
        return self.lm_head(self.ln_f(x))


def loss_fn(logits, targets):
    logits = logits[..., :-1, :].contiguous()
    targets = targets[..., 1:].contiguous()
    return F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1), ignore_index=-1)


model = LLaMA()
optimizer = torch.optim.AdamW(
    model.parameters(), lr=args.learning_rate, weight_decay=args.weight_decay
)


@torch.no_grad()
def validate():
    model.eval()
    losses = torch.zeros(args.eval_iters)
    for k in range(args.eval_iters):
        x, y = get_batch(test)
        losses[k] = loss_fn(model(x), y)
    model.train()
    return losses.mean().item()


with mlflow.start_run():
    mlflow.log_params(vars(args))
    print(f"train has {len(train):,} samples, val has {len(test):,} samples", flush=True)
    step_count = 0
    for iter_num in range(args.max_iters):
        if args.merge_shard and iter_num == args.merge_at:
            train = train + extra
            print(f"merged the second prepare run: train has {len(train):,} samples", flush=True)
        if step_count <= args.warmup_iters:
            lr = args.learning_rate * step_count / args.warmup_iters
            for g in optimizer.param_groups:
                g["lr"] = lr
        t0 = time.time()
        x, y = get_batch(train)
        loss = loss_fn(model(x), y)
        (loss / GRAD_ACC).backward()
        if (iter_num + 1) % GRAD_ACC == 0:
            optimizer.step()
            optimizer.zero_grad()
            step_count += 1
            if step_count % args.eval_interval == 0:
                val_loss = validate()
                print(f"step {iter_num}: val loss {val_loss:.4f}", flush=True)
                mlflow.log_metric("val_loss", val_loss, step=iter_num)
        dt = time.time() - t0
        if iter_num % args.log_interval == 0:
            print(f"iter {iter_num}: loss {loss.item():.4f}, time: {dt * 1000:.2f}ms", flush=True)
            mlflow.log_metrics({"loss": loss.item(), "time": dt * 1000}, step=iter_num)
