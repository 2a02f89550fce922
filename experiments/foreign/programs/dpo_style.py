"""Preference tuning as Hugging Face TRL's ``DPOTrainer`` runs it (TRL >= 0.12), with the
Trainer's ``MLflowCallback`` reporting: a small causal LM, first supervised-fine-tuned (the
reference), then trained with the DPO sigmoid loss on (prompt, chosen, rejected) pairs.

Plain PyTorch + numpy + the plain ``mlflow`` API (no transformers or trl here).  The
``DPOConfig`` fields are logged as params.  As the ``MLflowCallback`` logs them, at step =
``state.global_step`` (optimizer steps): every ``--logging_steps`` steps ``loss`` (the mean DPO
loss since the last log), ``grad_norm`` (the last step's total norm before clipping),
``learning_rate``, ``rewards/chosen``, ``rewards/rejected`` (beta times the policy/reference
log-ratio of each response), ``rewards/accuracies`` (share of pairs whose chosen reward is the
higher), ``rewards/margins``, ``logps/chosen``, ``logps/rejected`` (summed response
log-probabilities), ``logits/chosen``, ``logits/rejected`` (mean logit over response tokens) -
TRL's stored metrics averaged over the steps since the last log - and ``epoch`` (fractional);
every ``--eval_steps`` the same names prefixed ``eval_`` (``eval_loss``,
``eval_rewards/accuracies``, ...) with ``eval_runtime``, ``eval_samples_per_second``,
``eval_steps_per_second``; at the end ``train_runtime``, ``train_samples_per_second``,
``train_steps_per_second``, ``total_flos``, ``train_loss``.  The console shows the Trainer's
dict lines (``{'loss': 0.6931, 'grad_norm': 1.52, ...}``).  Written without looking at the
doctor.

Task: prompts are lists of digits (``<s> 3 9 1 4 =``); the chosen answer is the list sorted,
the rejected one the same answer with two neighbours swapped (a near miss).  The SFT model
(the reference, trained here first for ``--sft_steps`` steps on both kinds of answer, so it
cannot yet tell them apart) has ``--n_positions`` positions.  DPO: sigmoid loss with
``--beta``, AdamW, linear decay after ``--warmup_ratio`` warm-up, gradients clipped to
``--max_grad_norm``, the train set shuffled each epoch.

Faults are real settings or data: ``--learning_rate`` typed far too high; ``--train_pairs``
cut to a few dozen pairs trained for many epochs (DPO memorises the pairs); ``--vendor_b_share``
- the share of pairs bought from a second annotation vendor whose export names its columns the
other way round (their "chosen" is the near miss), merged without a check; ``--new_mix_share``
- a newer data mix adds a few long lists (10-12 items) while ``--max_length`` was raised past
the model's ``--n_positions`` (no truncation takes place).
"""

import math
import time

import _setup
import mlflow
import numpy as np
import torch
import torch.nn.functional as F

args = _setup.parse_flags(
    {
        "--learning_rate": 5e-4,
        "--beta": 0.1,
        "--per_device_train_batch_size": 8,
        "--per_device_eval_batch_size": 32,
        "--num_train_epochs": 3,
        "--lr_scheduler_type": "linear",
        "--warmup_ratio": 0.0,
        "--max_grad_norm": 1.0,
        "--weight_decay": 0.0,
        "--logging_steps": 10,
        "--eval_steps": 50,
        "--max_length": 24,
        "--train_pairs": 1500,
        "--eval_pairs": 200,
        "--n_positions": 24,
        "--n_embd": 64,
        "--n_layer": 2,
        "--sft_steps": 400,
        "--vendor_b_share": 0.0,
        "--new_mix_share": 0.0,
        "--torch_dtype": "float32",
        "--seed": 42,
    }
)
rng = _setup.seeded(args.seed)

# ---------------------------------------------------------------- data (fixed; seed 3)
BOS, SEP, EOS, PAD = 10, 11, 12, 13
VOCAB = 14
data_rng = np.random.default_rng(3)


def make_pair(r, new_mix):
    n = int(r.integers(10, 13)) if new_mix else int(r.integers(3, 9))
    items = r.integers(0, 10, n)
    good = np.sort(items)
    while True:  # a near miss: two neighbours swapped (and actually different)
        k = int(r.integers(0, n - 1))
        if good[k] != good[k + 1]:
            break
        items = r.integers(0, 10, n)
        good = np.sort(items)
    bad = good.copy()
    bad[k], bad[k + 1] = bad[k + 1], bad[k]
    prompt = [BOS, *items.tolist(), SEP]
    return prompt, [*good.tolist(), EOS], [*bad.tolist(), EOS]


def make_split(n, r, vendor_b_share=0.0, new_mix_share=0.0):
    pairs = []
    for _ in range(n):
        p, c, j = make_pair(r, r.random() < new_mix_share)
        if r.random() < vendor_b_share:  # vendor B: columns the other way round
            c, j = j, c
        pairs.append((p, c, j))
    return pairs


train_ds = make_split(args.train_pairs, data_rng, args.vendor_b_share, args.new_mix_share)
eval_ds = make_split(args.eval_pairs, np.random.default_rng(4), args.vendor_b_share)
print(f"train_dataset: {len(train_ds)} rows, eval_dataset: {len(eval_ds)} rows", flush=True)


def collate(pairs, which):
    """Prompt + response (``which`` 1 chosen, 2 rejected) as padded ids, with a mask of the
    response tokens; longer than max_length, the prompt loses its start (keep_end)."""
    rows = []
    for pair in pairs:
        p, r = pair[0], pair[which]
        cut = max(0, len(p) + len(r) - args.max_length)
        rows.append((p[cut:] + r, len(p) - cut))
    T = max(len(s) for s, _ in rows)
    ids = torch.full((len(rows), T), PAD)
    mask = torch.zeros(len(rows), T)
    for i, (s, start) in enumerate(rows):
        ids[i, : len(s)] = torch.tensor(s)
        mask[i, start : len(s)] = 1.0
    return ids, mask


# ---------------------------------------------------------------- model (the "checkpoint")


class Block(torch.nn.Module):
    def __init__(self, d, h):
        super().__init__()
        self.ln_1, self.ln_2 = torch.nn.LayerNorm(d), torch.nn.LayerNorm(d)
        self.c_attn, self.c_proj = torch.nn.Linear(d, 3 * d), torch.nn.Linear(d, d)
        self.mlp = torch.nn.Sequential(
            torch.nn.Linear(d, 4 * d), torch.nn.GELU(), torch.nn.Linear(4 * d, d)
        )
        self.h = h

    def forward(self, x):
        B, T, D = x.shape
        q, k, v = self.c_attn(self.ln_1(x)).split(D, -1)
        q, k, v = (t.view(B, T, self.h, D // self.h).transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # (B, H, T, Dh)
        x = x + self.c_proj(y.transpose(1, 2).reshape(B, T, D))
        return x + self.mlp(self.ln_2(x))


class TinyLM(torch.nn.Module):
    def __init__(self):
        super().__init__()
        d = args.n_embd
        self.wte = torch.nn.Embedding(VOCAB, d)
        self.wpe = torch.nn.Embedding(args.n_positions, d)
        self.h = torch.nn.ModuleList(Block(d, 4) for _ in range(args.n_layer))
        self.ln_f = torch.nn.LayerNorm(d)
        self.lm_head = torch.nn.Linear(d, VOCAB, bias=False)

    def forward(self, ids):
        pos = torch.arange(ids.shape[1])
        x = self.wte(ids) + self.wpe(pos)
        for blk in self.h:
            x = blk(x)
        return self.lm_head(self.ln_f(x))  # (B, T, V)


def response_logps(model, ids, mask):
    """Summed log-probabilities of the response tokens, and their mean logit."""
    logits = model(ids)[:, :-1]
    lp = torch.log_softmax(logits, -1).gather(-1, ids[:, 1:, None])[..., 0]
    m = mask[:, 1:].to(lp.dtype)
    mean_logit = (logits.mean(-1) * m).sum() / m.sum()
    return (lp * m).sum(-1), mean_logit


# SFT: the reference model, trained on the old mix with correct and near-miss answers alike
policy = TinyLM()
sft_opt = torch.optim.AdamW(policy.parameters(), lr=3e-3)
sft_ds = make_split(3000, np.random.default_rng(5))
for _ in range(args.sft_steps):
    batch = [sft_ds[i] for i in rng.integers(0, len(sft_ds), 32)]
    ids, mask = collate(batch, 1 + int(rng.integers(0, 2)))
    logits = policy(ids)[:, :-1]
    tok = F.cross_entropy(logits.reshape(-1, VOCAB), ids[:, 1:].reshape(-1), reduction="none")
    loss = (tok * mask[:, 1:].reshape(-1)).sum() / mask[:, 1:].sum()
    sft_opt.zero_grad()
    loss.backward()
    sft_opt.step()
print(f"SFT checkpoint loaded (sft loss {loss.item():.3f})", flush=True)
ref_model = TinyLM()
ref_model.load_state_dict(policy.state_dict())
ref_model.requires_grad_(False).eval()
if args.torch_dtype != "float32":  # model_init_kwargs torch_dtype: both models loaded in it
    policy.to(getattr(torch, args.torch_dtype))
    ref_model.to(getattr(torch, args.torch_dtype))

# ---------------------------------------------------------------- DPO


def dpo_batch(batch):
    cids, cm = collate(batch, 1)
    rids, rm = collate(batch, 2)
    pc, lc = response_logps(policy, cids, cm)
    pr, lr_ = response_logps(policy, rids, rm)
    with torch.no_grad():
        rc, _ = response_logps(ref_model, cids, cm)
        rr, _ = response_logps(ref_model, rids, rm)
    logits = (pc - pr) - (rc - rr)
    losses = -F.logsigmoid(args.beta * logits)
    ch, rj = args.beta * (pc - rc).detach(), args.beta * (pr - rr).detach()
    metrics = {
        "rewards/chosen": ch.mean().item(),
        "rewards/rejected": rj.mean().item(),
        "rewards/accuracies": (ch > rj).float().mean().item(),
        "rewards/margins": (ch - rj).mean().item(),
        "logps/chosen": pc.detach().mean().item(),
        "logps/rejected": pr.detach().mean().item(),
        "logits/chosen": lc.item(),
        "logits/rejected": lr_.item(),
    }
    return losses.mean(), metrics


def mean_of(stored):
    return {k: float(np.mean([m[k] for m in stored])) for k in stored[0]}


def evaluate():
    policy.eval()
    t0 = time.time()
    stored, losses = [], []
    with torch.no_grad():
        for b in range(0, len(eval_ds), args.per_device_eval_batch_size):
            loss, m = dpo_batch(eval_ds[b : b + args.per_device_eval_batch_size])
            losses.append(loss.item())
            stored.append(m)
    policy.train()
    dt = time.time() - t0
    nb = len(losses)
    out = {"eval_loss": float(np.mean(losses))}
    out |= {"eval_runtime": round(dt, 4), "eval_samples_per_second": round(len(eval_ds) / dt, 3)}
    out |= {"eval_steps_per_second": round(nb / dt, 3)}
    return out | {f"eval_{k}": v for k, v in mean_of(stored).items()}


def log(logs, step):
    """Trainer.log -> MLflowCallback.on_log: numbers only, at the global step."""
    print({k: (round(v, 4) if isinstance(v, float) else v) for k, v in logs.items()}, flush=True)
    mlflow.log_metrics({k: float(v) for k, v in logs.items()}, step=step)


steps_per_epoch = math.ceil(len(train_ds) / args.per_device_train_batch_size)
max_steps = steps_per_epoch * args.num_train_epochs
warmup = math.ceil(args.warmup_ratio * max_steps)


def lr_lambda(s):
    if s < warmup:
        return s / max(1, warmup)
    if args.lr_scheduler_type == "constant":
        return 1.0
    frac = (s - warmup) / max(1, max_steps - warmup)
    if args.lr_scheduler_type == "cosine":
        return 0.5 * (1 + math.cos(math.pi * frac))
    return max(0.0, 1.0 - frac)


optimizer = torch.optim.AdamW(
    policy.parameters(), lr=args.learning_rate, weight_decay=args.weight_decay
)
scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda)

with mlflow.start_run():
    mlflow.log_params(vars(args) | {"max_steps": max_steps, "model": "TinyLM-sft"})
    print(
        f"***** Running training *****\n  Num examples = {len(train_ds)}\n"
        f"  Num Epochs = {args.num_train_epochs}\n  Total optimization steps = {max_steps}",
        flush=True,
    )
    t_start = time.time()
    global_step, tr_loss, all_loss, stored = 0, 0.0, 0.0, []
    for _epoch in range(args.num_train_epochs):
        order = rng.permutation(len(train_ds))
        for b in range(steps_per_epoch):
            idx = order[
                b * args.per_device_train_batch_size : (b + 1) * args.per_device_train_batch_size
            ]
            loss, m = dpo_batch([train_ds[i] for i in idx])
            optimizer.zero_grad()
            loss.backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(
                policy.parameters(), args.max_grad_norm if args.max_grad_norm > 0 else 1e30
            ).item()
            optimizer.step()
            scheduler.step()
            global_step += 1
            tr_loss += loss.item()
            all_loss += loss.item()
            stored.append(m)
            if global_step % args.logging_steps == 0:
                logs = {"loss": tr_loss / len(stored), "grad_norm": grad_norm}
                logs |= {"learning_rate": scheduler.get_last_lr()[0]} | mean_of(stored)
                log(logs | {"epoch": round(global_step / steps_per_epoch, 4)}, global_step)
                tr_loss, stored = 0.0, []
            if global_step % args.eval_steps == 0:
                ev = evaluate()
                log(ev | {"epoch": round(global_step / steps_per_epoch, 4)}, global_step)
    runtime = time.time() - t_start
    n_params = sum(p.numel() for p in policy.parameters())
    log(
        {
            "train_runtime": round(runtime, 4),
            "train_samples_per_second": round(len(train_ds) * args.num_train_epochs / runtime, 3),
            "train_steps_per_second": round(max_steps / runtime, 3),
            "total_flos": float(6 * n_params * args.max_length * 2 * len(train_ds)),
            "train_loss": all_loss / max_steps,
            "epoch": float(args.num_train_epochs),
        },
        global_step,
    )
