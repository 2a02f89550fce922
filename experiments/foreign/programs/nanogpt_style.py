"""A character-level GPT trained as Karpathy's nanoGPT ``train.py`` trains one, its W&B log
mirrored to MLflow name for name.

Plain PyTorch + numpy + the plain ``mlflow`` API (no nanoGPT, no W&B here).  What is imitated,
as ``train.py`` logs it:

* only at ``iter_num % eval_interval == 0`` (from iter 0, and once more at ``max_iters``):
  ``estimate_loss()`` averages ``eval_iters`` random batches of each split, then
  ``wandb.log({"iter": iter_num, "train/loss": ..., "val/loss": ..., "lr": lr,
  "mfu": running_mfu * 100})``, mirrored here with ``mlflow.log_metrics(..., step=iter_num)``;
  ``running_mfu`` starts at -1.0 (so the first evaluations log ``mfu`` -100) and is an EMA
  (0.9) of ``estimate_mfu`` updated every ``log_interval`` iterations once
  ``local_iter_num >= 5``; ``estimate_mfu`` compares the FLOPs of the iteration with an A100's
  312 TFLOPS, so on this CPU ``mfu`` is a tiny percentage;
* the per-iteration loss is only printed (``iter 120: loss 2.0312, time 14.21ms, mfu 0.00%``);
  ``step 250: train loss ..., val loss ...``, ``saving checkpoint to out``;
* ``get_lr``: linear warm-up over ``warmup_iters``, cosine decay to ``min_lr`` at
  ``lr_decay_iters``, ``min_lr`` after; AdamW (betas 0.9/``beta2``, weight decay on 2-D
  weights only), gradient clipping at ``grad_clip``, ``gradient_accumulation_steps``,
  ``get_batch`` re-opening the ``np.memmap`` of ``train.bin`` / ``val.bin`` (uint16) every batch.

Data: ``data/<dataset>/prepare.py``'s way, character level: here the text of some of this
Python's own standard-library modules (nothing is downloaded), 90 % train / 10 % val, written
as ``train.bin``, ``val.bin`` and ``meta.pkl`` in a scratch folder.  Model: nanoGPT's GPT
(pre-norm blocks, ``scaled_dot_product_attention``, tied embeddings), ``--n_layer``,
``--n_head``, ``--n_embd``, ``--block_size``.  Written without looking at the doctor.

Faults are real code paths: ``--learning_rate`` far too high; ``--lr_decay_iters`` /
``--min_lr`` that end the schedule early at zero; ``--upload_interval``: the team's
checkpoint-upload thread, started at the first upload, waits for the next checkpoint in a
busy loop and competes with training for the interpreter; ``--sample_interval`` with
``--top_k`` larger than the vocabulary, in the team's sampling hook that dropped nanoGPT's
``min(top_k, logits.size(-1))``.
"""

import math
import os
import pickle
import tempfile
import threading
import time

import _setup
import mlflow
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

args = _setup.parse_flags(
    {
        "--seed": 1337,
        "--dataset": "stdlib_char",
        "--out_dir": "out-stdlib-char",
        "--eval_interval": 25,
        "--log_interval": 10,
        "--eval_iters": 20,
        "--always_save_checkpoint": 0,
        "--gradient_accumulation_steps": 1,
        "--batch_size": 16,
        "--block_size": 64,
        "--n_layer": 2,
        "--n_head": 4,
        "--n_embd": 64,
        "--dropout": 0.0,
        "--learning_rate": 1e-3,
        "--max_iters": 600,
        "--weight_decay": 1e-1,
        "--beta1": 0.9,
        "--beta2": 0.99,
        "--grad_clip": 1.0,
        "--decay_lr": 1,
        "--warmup_iters": 50,
        "--lr_decay_iters": 600,
        "--min_lr": 1e-4,
        "--upload_interval": 0,
        "--sample_interval": 0,
        "--top_k": 40,
        "--max_new_tokens": 64,
    }
)
rng = _setup.seeded(args.seed)
torch.manual_seed(1337 + args.seed)

# ----------------------------------------------------------------------------- prepare.py
STDLIB = os.path.dirname(os.__file__)
FILES = [
    "argparse.py", "textwrap.py", "string.py", "shlex.py", "fractions.py", "heapq.py",
    "bisect.py", "calendar.py", "csv.py", "difflib.py", "fnmatch.py", "glob.py", "shutil.py",
    "statistics.py", "tempfile.py", "functools.py",
]  # fmt: skip
text = "".join(open(os.path.join(STDLIB, f), encoding="utf-8").read() for f in FILES)
chars = sorted(set(text))
vocab_size = len(chars)
stoi = {ch: i for i, ch in enumerate(chars)}
itos = dict(enumerate(chars))
n = len(text)
data_dir = os.path.join(tempfile.mkdtemp(prefix="nanogpt-"), "data", args.dataset)
os.makedirs(data_dir)
ids = np.array([stoi[c] for c in text], dtype=np.uint16)
ids[: int(n * 0.9)].tofile(os.path.join(data_dir, "train.bin"))
ids[int(n * 0.9) :].tofile(os.path.join(data_dir, "val.bin"))
with open(os.path.join(data_dir, "meta.pkl"), "wb") as f:
    pickle.dump({"vocab_size": vocab_size, "itos": itos, "stoi": stoi}, f)
print(f"length of dataset in characters: {n:,}\nvocab size: {vocab_size}", flush=True)

block_size, batch_size = args.block_size, args.batch_size


def get_batch(split):
    # We recreate np.memmap every batch to avoid a memory leak, as per
    # https://stackoverflow.com/questions/45132940/numpy-memmap-memory-usage-want-to-iterate-once/61472122#61472122
    name = "train.bin" if split == "train" else "val.bin"
    data = np.memmap(os.path.join(data_dir, name), dtype=np.uint16, mode="r")
    ix = torch.tensor(rng.integers(0, len(data) - block_size, batch_size))
    x = torch.stack([torch.from_numpy(data[i : i + block_size].astype(np.int64)) for i in ix])
    y = torch.stack(
        [torch.from_numpy(data[i + 1 : i + 1 + block_size].astype(np.int64)) for i in ix]
    )
    return x, y


# ----------------------------------------------------------------------------- model.py
class CausalSelfAttention(nn.Module):
    def __init__(self, d, h):
        super().__init__()
        self.c_attn, self.c_proj, self.n_head = nn.Linear(d, 3 * d), nn.Linear(d, d), h

    def forward(self, x):
        B, T, C = x.size()
        q, k, v = self.c_attn(x).split(C, dim=2)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, dropout_p=args.dropout, is_causal=True)
        return self.c_proj(y.transpose(1, 2).contiguous().view(B, T, C))


class Block(nn.Module):
    def __init__(self, d, h):
        super().__init__()
        self.ln_1, self.ln_2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.attn = CausalSelfAttention(d, h)
        self.mlp = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d))

    def forward(self, x):
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    def __init__(self):
        super().__init__()
        d = args.n_embd
        self.wte, self.wpe = nn.Embedding(vocab_size, d), nn.Embedding(block_size, d)
        self.h = nn.ModuleList(Block(d, args.n_head) for _ in range(args.n_layer))
        self.ln_f = nn.LayerNorm(d)
        self.lm_head = nn.Linear(d, vocab_size, bias=False)
        self.wte.weight = self.lm_head.weight  # weight tying
        self.apply(self._init_weights)
        for pn, p in self.named_parameters():
            if pn.endswith("c_proj.weight"):
                torch.nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * args.n_layer))

    def _init_weights(self, module):
        if isinstance(module, nn.Linear):
            torch.nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                torch.nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            torch.nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def forward(self, idx, targets=None):
        t = idx.size(1)
        x = self.wte(idx) + self.wpe(torch.arange(t))
        for block in self.h:
            x = block(x)
        x = self.ln_f(x)
        if targets is None:
            return self.lm_head(x[:, [-1], :]), None
        logits = self.lm_head(x)
        return logits, F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1))

    def get_num_params(self):
        return sum(p.numel() for p in self.parameters()) - self.wpe.weight.numel()

    def estimate_mfu(self, fwdbwd_per_iter, dt):
        N = self.get_num_params()
        L, H, Q, T = args.n_layer, args.n_head, args.n_embd // args.n_head, block_size
        flops_per_token = 6 * N + 12 * L * H * Q * T
        flops_per_iter = flops_per_token * T * fwdbwd_per_iter
        return (flops_per_iter * (1.0 / dt)) / 312e12  # A100 bfloat16 peak flops

    @torch.no_grad()
    def generate(self, idx, max_new_tokens, temperature=1.0, top_k=None):
        for _ in range(max_new_tokens):
            idx_cond = idx if idx.size(1) <= block_size else idx[:, -block_size:]
            logits, _ = self(idx_cond)
            logits = logits[:, -1, :] / temperature
            if top_k is not None:
                # the team's hook: nanoGPT has min(top_k, logits.size(-1)) here
                v, _ = torch.topk(logits, top_k)
                logits[logits < v[:, [-1]]] = -float("Inf")
            probs = F.softmax(logits, dim=-1)
            idx = torch.cat((idx, torch.multinomial(probs, num_samples=1)), dim=1)
        return idx


model = GPT()
print(f"number of parameters: {model.get_num_params() / 1e6:.2f}M", flush=True)
decay = [p for p in model.parameters() if p.dim() >= 2]
no_decay = [p for p in model.parameters() if p.dim() < 2]
optimizer = torch.optim.AdamW(
    [
        {"params": decay, "weight_decay": args.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ],
    lr=args.learning_rate,
    betas=(args.beta1, args.beta2),
)
print(
    f"num decayed parameter tensors: {len(decay)}, num non-decayed parameter tensors: "
    f"{len(no_decay)}\nusing fused AdamW: False",
    flush=True,
)


@torch.no_grad()
def estimate_loss():
    out = {}
    model.eval()
    for split in ["train", "val"]:
        losses = torch.zeros(args.eval_iters)
        for k in range(args.eval_iters):
            X, Y = get_batch(split)
            _, loss = model(X, Y)
            losses[k] = loss.item()
        out[split] = losses.mean().item()
    model.train()
    return out


def get_lr(it):
    if it < args.warmup_iters:
        return args.learning_rate * (it + 1) / (args.warmup_iters + 1)
    if it > args.lr_decay_iters:
        return args.min_lr
    decay_ratio = (it - args.warmup_iters) / (args.lr_decay_iters - args.warmup_iters)
    coeff = 0.5 * (1.0 + math.cos(math.pi * decay_ratio))
    return args.min_lr + coeff * (args.learning_rate - args.min_lr)


class Uploader:
    """The team's checkpoint uploader: a thread that copies each new ckpt.pt to the bucket."""

    def __init__(self):
        self.pending, self.uploaded = None, 0
        threading.Thread(target=self._loop, daemon=True).start()

    def _loop(self):
        while True:
            while self.pending is None:  # waits for the next checkpoint
                pass
            state, self.pending = self.pending, None
            pickle.dumps(state)  # "upload"
            self.uploaded += 1

    def submit(self, state):
        self.pending = state


# ----------------------------------------------------------------------------- train.py
os.makedirs(args.out_dir, exist_ok=True)
uploader = None
with mlflow.start_run():
    mlflow.log_params(vars(args))
    mlflow.log_params({"vocab_size": vocab_size, "device": "cpu", "dtype": "float32"})
    iter_num, best_val_loss = 0, 1e9
    X, Y = get_batch("train")
    t0 = time.time()
    local_iter_num, running_mfu = 0, -1.0
    while True:
        lr = get_lr(iter_num) if args.decay_lr else args.learning_rate
        for param_group in optimizer.param_groups:
            param_group["lr"] = lr
        if iter_num % args.eval_interval == 0:
            losses = estimate_loss()
            print(
                f"step {iter_num}: train loss {losses['train']:.4f}, val loss {losses['val']:.4f}",
                flush=True,
            )
            mlflow.log_metrics(
                {
                    "iter": iter_num,
                    "train/loss": losses["train"],
                    "val/loss": losses["val"],
                    "lr": lr,
                    "mfu": running_mfu * 100,
                },
                step=iter_num,
            )
            if losses["val"] < best_val_loss or args.always_save_checkpoint:
                best_val_loss = losses["val"]
                if iter_num > 0:
                    checkpoint = {
                        "model": model.state_dict(),
                        "optimizer": optimizer.state_dict(),
                        "model_args": vars(args),
                        "iter_num": iter_num,
                        "best_val_loss": best_val_loss,
                    }
                    print(f"saving checkpoint to {args.out_dir}", flush=True)
                    torch.save(checkpoint, os.path.join(args.out_dir, "ckpt.pt"))
        if args.upload_interval and iter_num > 0 and iter_num % args.upload_interval == 0:
            if uploader is None:
                uploader = Uploader()
            uploader.submit({"model": model.state_dict(), "iter_num": iter_num})
            print(f"uploading checkpoint of iter {iter_num}", flush=True)
        if args.sample_interval and iter_num > 0 and iter_num % args.sample_interval == 0:
            start = torch.tensor([[stoi["\n"]]])
            y = model.generate(start, args.max_new_tokens, top_k=args.top_k)
            print("".join(itos[i] for i in y[0].tolist()), flush=True)
            model.train()
        for _micro_step in range(args.gradient_accumulation_steps):
            _, loss = model(X, Y)
            loss = loss / args.gradient_accumulation_steps
            X, Y = get_batch("train")
            loss.backward()
        if args.grad_clip != 0.0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), args.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        t1 = time.time()
        dt, t0 = t1 - t0, t1
        if iter_num % args.log_interval == 0:
            lossf = loss.item() * args.gradient_accumulation_steps
            if local_iter_num >= 5:
                mfu = model.estimate_mfu(batch_size * args.gradient_accumulation_steps, dt)
                running_mfu = mfu if running_mfu == -1.0 else 0.9 * running_mfu + 0.1 * mfu
            print(
                f"iter {iter_num}: loss {lossf:.4f}, time {dt * 1000:.2f}ms, "
                f"mfu {running_mfu * 100:.2f}%",
                flush=True,
            )
        iter_num += 1
        local_iter_num += 1
        if iter_num > args.max_iters:
            break
