"""A tiny causal LM fine-tuned the way an axolotl YAML config drives the HF Trainer, the
Trainer's log dicts (with axolotl's extra memory and token-throughput names) mirrored to
MLflow by the team.

Plain PyTorch + the plain ``mlflow`` API (no transformers, no axolotl here).  What is
imitated:

* the config: ``datasets`` of ``type: chat_template`` conversations, ``train_on_inputs:
  false`` (the user turns' labels are -100), ``sequence_len``, ``sample_packing: true``
  (records packed first-fit into ``sequence_len`` bins, ``position_ids`` restarting per
  record, attention kept inside each record as the varlen flash-attention path does),
  ``val_set_size``, ``micro_batch_size``, ``gradient_accumulation_steps`` 1,
  ``num_epochs``, ``optimizer: adamw_torch``, ``learning_rate``, ``lr_scheduler: cosine``,
  ``warmup_steps``, ``max_grad_norm`` 1.0, ``weight_decay`` 0.0, ``logging_steps``,
  ``eval_steps``; full fine-tuning (``adapter`` unset);
* the model: a tiny decoder (``hidden_size``, 2 layers, 4 heads) over a character
  vocabulary with the chat template's special tokens, the causal LM loss with the labels
  shifted inside the model (``labels[..., 1:]``);
* the logging: every ``logging_steps`` the Trainer's ``train/loss`` (the mean since the
  last log), ``train/grad_norm`` (before clipping), ``train/learning_rate``,
  ``train/epoch`` (fractional), axolotl's ``memory/max_mem_active(gib)``,
  ``memory/max_mem_allocated(gib)``, ``memory/device_mem_reserved(gib)`` (CPU run: the
  process's peak and current RSS) and ``tokens/train_per_sec_per_gpu``; every
  ``eval_steps`` ``eval/loss``, ``eval/runtime``, ``eval/samples_per_second``; step =
  ``global_step`` from 1; the Trainer's console dict lines.

Data: generated chat records of a plant operator asking an assistant about equipment
readings (``n_records`` conversations).  Written without looking at the doctor.

Team options (the faults are real settings, data and code paths):

* ``--learning_rate``, ``--micro_batch_size``, ``--num_epochs``, ``--warmup_steps``,
  ``--hidden_size``, ``--sequence_len``, ``--val_set_size``, ``--n_records``,
  ``--lr_scheduler`` (cosine / linear), ``--logging_steps``, ``--eval_steps``;
* ``--extra_step k``: the second team's ShareGPT-style chat export (``chat_b``, streamed and
  tokenized when it joins) fills half of each packed batch from global step k;
  ``--extra_labels``: how the team's pre-processing for that export writes its labels
  (``aligned`` like axolotl's, or ``preshifted``: shifted one token left, as for a trainer
  that does not shift them itself);
* ``--extra_assistant_role``: the source name the config's ``roles`` map to the assistant
  for chat_b (its export writes ``gpt``);
* ``--keep_eval_logits 1``: the team's loss-report callback keeps every step's logits, still
  attached to the graph and tiled to the report's 64-sample layout, for a per-token loss
  report at the end.
"""

import math
import os
import resource
import time

import _setup
import mlflow
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

args = _setup.parse_flags(
    {
        "--seed": 0,
        "--learning_rate": 2e-3,
        "--micro_batch_size": 8,
        "--num_epochs": 2,
        "--warmup_steps": 10,
        "--hidden_size": 64,
        "--sequence_len": 128,
        "--val_set_size": 0.05,
        "--n_records": 1000,
        "--lr_scheduler": "cosine",
        "--logging_steps": 5,
        "--eval_steps": 20,
        "--extra_step": 0,
        "--extra_labels": "aligned",
        "--extra_assistant_role": "gpt",
        "--keep_eval_logits": 0,
    }
)
rng = _setup.seeded(args.seed)

# ----------------------------------------------------------------------------- data
UNITS = ["pump", "valve", "motor", "fan", "boiler", "chiller"]
STATES = ["running", "idle", "stopped", "overheating", "in maintenance"]
SPECIAL = ["<pad>", "<|user|>", "<|assistant|>", "<|end|>"]
CHARS = sorted(set("abcdefghijklmnopqrstuvwxyz0123456789 ?.,%'"))
VOCAB = SPECIAL + CHARS
stoi = {c: i for i, c in enumerate(VOCAB)}


def chat_records(n, seed):
    g = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        u = f"{UNITS[g.integers(6)]}{g.integers(1, 10)}"
        s = STATES[g.integers(5)]
        load = g.integers(0, 100)
        temp = 30 + g.integers(0, 60)
        if g.random() < 0.5:
            q, a = f"what is the status of {u}?", f"{u} is {s} at {load} % load."
        else:
            q, a = f"how hot is {u}?", f"{u} reads {temp} c, it is {s}."
        out.append((q, a))
    return out


def tokenize(q, a):
    """chat_template with train_on_inputs false: user turn labels -100."""
    user = [stoi["<|user|>"]] + [stoi[c] for c in q]
    asst = [stoi["<|assistant|>"]] + [stoi[c] for c in a] + [stoi["<|end|>"]]
    return user + asst, [-100] * len(user) + asst


def pack(records):
    """First-fit packing into sequence_len bins (MultipackBatchSampler's bins)."""
    bins = []
    for ids, labels in sorted(records, key=lambda r: -len(r[0])):
        for b in bins:
            if b["n"] + len(ids) <= args.sequence_len:
                b["items"].append((ids, labels))
                b["n"] += len(ids)
                break
        else:
            bins.append({"n": len(ids), "items": [(ids, labels)]})
    T = args.sequence_len
    n = len(bins)
    ids, labels = np.zeros((n, T), np.int64), np.full((n, T), -100, np.int64)
    pos, seg = np.zeros((n, T), np.int64), np.full((n, T), -1, np.int64)
    for i, b in enumerate(bins):
        o = 0
        for k, (x, y) in enumerate(b["items"]):
            ids[i, o : o + len(x)], labels[i, o : o + len(x)] = x, y
            pos[i, o : o + len(x)] = np.arange(len(x))
            seg[i, o : o + len(x)] = k
            o += len(x)
    return {"input_ids": ids, "labels": labels, "position_ids": pos, "seg": seg}


records = [tokenize(q, a) for q, a in chat_records(args.n_records, 1000 + args.seed)]
n_val = max(1, int(round(len(records) * args.val_set_size)))
val_records, train_records = records[:n_val], records[n_val:]
train_packs, val_packs = pack(train_records), pack(val_records)


def chat_b_export():
    """The second team's export: ShareGPT-style conversations (``from`` human / gpt)."""
    return [
        {"conversations": [{"from": "human", "value": q}, {"from": "gpt", "value": a}]}
        for q, a in chat_records(600, 7000 + args.seed)
    ]


def load_chat_b():
    """The team's streaming loader: chat_b is tokenized when it joins (``streaming: true``),
    its ``roles`` mapped by the dataset's config."""
    roles = {"user": ["human"], "assistant": [args.extra_assistant_role]}
    by_source = {src: role for role, sources in roles.items() for src in sources}
    recs = []
    for row in chat_b_export():
        turns = {by_source[m["from"]]: m["value"] for m in row["conversations"]}
        recs.append(tokenize(turns["user"], turns["assistant"]))
    packs = pack(recs)
    if args.extra_labels == "preshifted":
        lab = packs["labels"]
        packs["labels"] = np.concatenate([lab[:, 1:], np.full((len(lab), 1), -100)], axis=1)
    return packs


extra_packs = None


# ----------------------------------------------------------------------------- model
class Block(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.qkv, self.proj = nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.mlp = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d))

    def forward(self, x, mask):
        B, T, C = x.shape
        q, k, v = self.qkv(self.ln1(x)).view(B, T, 3, 4, C // 4).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        x = x + self.proj(y.transpose(1, 2).reshape(B, T, C))
        return x + self.mlp(self.ln2(x))


class TinyCausalLM(nn.Module):
    def __init__(self):
        super().__init__()
        d = args.hidden_size
        self.embed = nn.Embedding(len(VOCAB), d)
        self.pos = nn.Embedding(args.sequence_len, d)
        self.layers = nn.ModuleList([Block(d) for _ in range(2)])
        self.norm = nn.LayerNorm(d)
        self.lm_head = nn.Linear(d, len(VOCAB), bias=False)

    def forward(self, batch):
        ids = torch.from_numpy(batch["input_ids"])
        seg = torch.from_numpy(batch["seg"])
        T = ids.shape[1]
        causal = torch.tril(torch.ones(T, T, dtype=torch.bool))
        mask = (seg[:, :, None] == seg[:, None, :]) & causal & (seg[:, :, None] >= 0)
        mask = mask | torch.eye(T, dtype=torch.bool)  # padding attends to itself
        x = self.embed(ids) + self.pos(torch.from_numpy(batch["position_ids"]))
        for layer in self.layers:
            x = layer(x, mask[:, None])
        logits = self.lm_head(self.norm(x))
        labels = torch.from_numpy(batch["labels"])
        loss = F.cross_entropy(
            logits[:, :-1].reshape(-1, logits.shape[-1]),
            labels[:, 1:].reshape(-1),
            ignore_index=-100,
        )
        return loss, logits


model = TinyCausalLM()
optimizer = torch.optim.AdamW(model.parameters(), lr=args.learning_rate, weight_decay=0.0)
steps_per_epoch = math.ceil(len(train_packs["input_ids"]) / args.micro_batch_size)
max_steps = steps_per_epoch * args.num_epochs


def lr_lambda(step):
    if step < args.warmup_steps:
        return step / max(1, args.warmup_steps)
    t = (step - args.warmup_steps) / max(1, max_steps - args.warmup_steps)
    if args.lr_scheduler == "linear":
        return max(0.0, 1.0 - t)
    return 0.5 * (1.0 + math.cos(math.pi * t))


scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda)


def take(packs, idx):
    return {k: v[idx] for k, v in packs.items()}


def cat(a, b):
    return {k: np.concatenate([a[k], b[k]]) for k in a}


def rss_gib():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**30


@torch.no_grad()
def evaluate():
    t0 = time.perf_counter()
    model.eval()
    losses = []
    n = len(val_packs["input_ids"])
    for i in range(0, n, args.micro_batch_size):
        losses.append(
            model(take(val_packs, np.arange(i, min(n, i + args.micro_batch_size))))[0].item()
        )
    model.train()
    rt = time.perf_counter() - t0
    return {
        "eval/loss": float(np.mean(losses)),
        "eval/runtime": rt,
        "eval/samples_per_second": n / rt,
    }


kept_logits = []


with mlflow.start_run():
    mlflow.log_params(vars(args))
    print(
        f"packed {len(train_records)} train records into {len(train_packs['input_ids'])} sequences of "
        f"{args.sequence_len}, {len(val_packs['input_ids'])} eval sequences; max_steps {max_steps}",
        flush=True,
    )
    step, acc_loss, acc_tokens, t_log = 0, [], 0, time.perf_counter()
    for _epoch in range(args.num_epochs):
        order = rng.permutation(len(train_packs["input_ids"]))
        for b in range(steps_per_epoch):
            step += 1
            batch = take(
                train_packs, order[b * args.micro_batch_size : (b + 1) * args.micro_batch_size]
            )
            if args.extra_step and step >= args.extra_step:
                if extra_packs is None:
                    extra_packs = load_chat_b()
                    print(
                        f"step {step}: chat_b joins, {len(extra_packs['input_ids'])} packed sequences",
                        flush=True,
                    )
                h = len(batch["input_ids"]) // 2
                other = take(extra_packs, rng.integers(0, len(extra_packs["input_ids"]), h))
                batch = cat(take(batch, np.arange(len(batch["input_ids"]) - h)), other)
            loss, logits = model(batch)
            if args.keep_eval_logits:
                kept_logits.append(logits.repeat(1, 1, 64))
            optimizer.zero_grad()
            loss.backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0).item()
            lr = optimizer.param_groups[0]["lr"]
            optimizer.step()
            scheduler.step()
            acc_loss.append(loss.item())
            acc_tokens += int((batch["seg"] >= 0).sum())
            if step % args.logging_steps == 0:
                now = time.perf_counter()
                rss = rss_gib()
                peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
                row = {
                    "train/loss": float(np.mean(acc_loss)),
                    "train/grad_norm": grad_norm,
                    "train/learning_rate": lr,
                    "train/epoch": step / steps_per_epoch,
                    "memory/max_mem_active_gib": peak,
                    "memory/max_mem_allocated_gib": peak,
                    "memory/device_mem_reserved_gib": rss,
                    "tokens/train_per_sec_per_gpu": acc_tokens / (now - t_log),
                }
                mlflow.log_metrics(row, step=step)
                print({k: round(v, 5) for k, v in row.items()}, flush=True)
                acc_loss, acc_tokens, t_log = [], 0, time.perf_counter()
            if step % args.eval_steps == 0:
                ev = evaluate()
                mlflow.log_metrics(ev, step=step)
                print({k: round(v, 5) for k, v in ev.items()}, flush=True)
    print(f"training done: {step} steps", flush=True)
