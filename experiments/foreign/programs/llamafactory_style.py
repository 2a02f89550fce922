"""LLaMA-Factory's SFT stage (``llamafactory-cli train`` with ``stage: sft``) on a tiny causal
LM, its ``LogCallback`` rows (``trainer_log.jsonl``) and the HF Trainer's ``MLflowCallback``
mirrored to MLflow by the team.

Plain PyTorch + the plain ``mlflow`` API (no LLaMA-Factory or transformers import here).  What
is imitated:

* the data pipeline: alpaca-format records (``instruction``, ``input``, ``output``) read
  through ``dataset_info.json``'s ``columns`` mapping (``prompt``, ``query``, ``response``),
  rendered with a chat template (``<u>`` user turn, ``<a>`` assistant turn, ``<e>`` eos), the
  prompt tokens masked with ``IGNORE_INDEX`` (-100) so only the response is learned
  (``train_on_prompt`` false); ``val_size`` of the records held out for evaluation;
  ``max_samples`` caps the training records;
* the HF Trainer: AdamW, ``learning_rate``, ``lr_scheduler_type`` (cosine / linear /
  constant) with ``warmup_ratio``, ``max_grad_norm`` 1.0, ``per_device_train_batch_size``,
  ``num_train_epochs``; every ``logging_steps`` the MLflowCallback logs ``loss`` (mean since the
  last log), ``grad_norm`` (before clipping), ``learning_rate``, ``epoch`` (fractional) at
  ``step = global_step``; every ``eval_steps`` ``eval_loss``, ``eval_runtime``,
  ``eval_samples_per_second``, ``eval_steps_per_second``; at the end ``train_runtime``,
  ``train_samples_per_second``, ``train_steps_per_second``, ``train_loss``;
* LLaMA-Factory's LogCallback row at the same steps: ``current_steps``, ``total_steps``,
  ``percentage``, ``elapsed_time`` and ``remaining_time`` (seconds here; the jsonl keeps
  h:mm:ss), ``throughput`` (input tokens per second since the start, ``include_num_input_tokens_seen``)
  and ``total_tokens``; the row is also printed and appended to ``trainer_log.jsonl``.

Data: generated instruction/response pairs (reverse a word, sort digits, count letters, ...).
The model: a 2-layer pre-norm decoder (d_model ``hidden_size``).  Written without looking at
the doctor.

Team options (the faults are real settings, data and code paths):

* ``--learning_rate``, ``--per_device_train_batch_size``, ``--num_train_epochs``,
  ``--hidden_size``, ``--warmup_ratio``, ``--lr_scheduler_type``, ``--val_size``,
  ``--max_samples``, ``--logging_steps``, ``--eval_steps``;
* ``--extra_dataset_step k``: a second team's alpaca file (``ops_tasks``, the same three tasks written by another tool) is mixed in from
  optimizer step k (half of every batch), read through its own ``dataset_info.json`` entry
  whose columns are ``--extra_columns`` (``prompt,response`` names of the file's fields for the
  prompt and the response; the file stores them as ``question`` and ``answer``);
* ``--dedup_cache 1``: the team's collator appends every batch's tokenized examples (input_ids, attention_mask, labels) to
  ``tokenized_cache.jsonl`` and re-reads the whole file to count duplicates.
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
        "--n_records": 2400,
        "--max_samples": 0,
        "--val_size": 0.1,
        "--learning_rate": 1e-3,
        "--per_device_train_batch_size": 16,
        "--num_train_epochs": 2.0,
        "--hidden_size": 64,
        "--warmup_ratio": 0.05,
        "--lr_scheduler_type": "cosine",
        "--max_grad_norm": 1.0,
        "--logging_steps": 5,
        "--eval_steps": 30,
        "--extra_dataset_step": 0,
        "--extra_columns": "question,answer",
        "--dedup_cache": 0,
    }
)
rng = _setup.seeded(args.seed)
IGNORE_INDEX = -100
MAX_LEN = 40

# ----------------------------------------------------------------------------- data
WORDS = "pump valve motor tank fan relay sensor cable drill lathe press gear belt chain".split()


def make_records(g, n, kind):
    recs = []
    for _ in range(n):
        t = int(g.integers(0, 3))
        w = WORDS[int(g.integers(0, len(WORDS)))]
        if kind == "ops":  # the second team's records, the same tasks stored as question/answer
            if t == 0:
                recs.append({"question": f"reverse {w}", "answer": w[::-1]})
            elif t == 1:
                d = "".join(str(int(v)) for v in g.integers(0, 10, 5))
                recs.append({"question": f"sort {d}", "answer": "".join(sorted(d))})
            else:
                recs.append({"question": f"len {w}", "answer": str(len(w))})
            continue
        if t == 0:
            recs.append({"instruction": "reverse", "input": w, "output": w[::-1]})
        elif t == 1:
            d = "".join(str(int(v)) for v in g.integers(0, 10, 5))
            recs.append({"instruction": "sort", "input": d, "output": "".join(sorted(d))})
        else:
            recs.append({"instruction": "len", "input": w, "output": str(len(w))})
    return recs


g = _setup.np.random.default_rng(1000 + args.seed)
records = make_records(g, args.n_records, "main")
ops_records = make_records(_setup.np.random.default_rng(2000 + args.seed), 1200, "ops")
n_val = int(round(len(records) * args.val_size))
val_records, train_records = records[:n_val], records[n_val:]
if args.max_samples:
    train_records = train_records[: args.max_samples]

chars = sorted(set("".join("".join(r.values()) for r in records + ops_records) + " "))
specials = ["<pad>", "<u>", "<a>", "<e>"]
vocab = specials + chars
stoi = {c: i for i, c in enumerate(vocab)}
PAD, USER, ASST, EOS = 0, 1, 2, 3

dataset_info = {
    "main_tasks": {"columns": {"prompt": "instruction", "query": "input", "response": "output"}},
    "ops_tasks": {
        "columns": dict(zip(("prompt", "response"), args.extra_columns.split(","), strict=True))
    },
}


def convert(rec, name):
    cols = dataset_info[name]["columns"]
    prompt = rec[cols["prompt"]]
    if cols.get("query"):
        prompt = prompt + " " + rec[cols["query"]]
    return prompt, rec[cols["response"]]


def encode(prompt, response):
    p = [USER] + [stoi[c] for c in prompt] + [ASST]
    r = [stoi[c] for c in response] + [EOS]
    ids = (p + r)[:MAX_LEN]
    labels = ([IGNORE_INDEX] * len(p) + r)[:MAX_LEN]  # train_on_prompt: false
    return ids, labels


def collate(batch):
    x = torch.full((len(batch), MAX_LEN), PAD, dtype=torch.long)
    y = torch.full((len(batch), MAX_LEN), IGNORE_INDEX, dtype=torch.long)
    for i, (ids, labels) in enumerate(batch):
        x[i, : len(ids)] = torch.tensor(ids)
        y[i, : len(labels)] = torch.tensor(labels)
    return x, y


train_set = [encode(*convert(r, "main_tasks")) for r in train_records]
val_set = [encode(*convert(r, "main_tasks")) for r in val_records]


# ----------------------------------------------------------------------------- model
class Block(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.attn = nn.MultiheadAttention(d, 4, batch_first=True)
        self.mlp = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d))

    def forward(self, x, mask):
        h = self.ln1(x)
        x = x + self.attn(h, h, h, attn_mask=mask, need_weights=False)[0]
        return x + self.mlp(self.ln2(x))


class TinyCausalLM(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.tok = nn.Embedding(len(vocab), d)
        self.pos = nn.Embedding(MAX_LEN, d)
        self.blocks = nn.ModuleList([Block(d) for _ in range(2)])
        self.ln_f = nn.LayerNorm(d)
        self.lm_head = nn.Linear(d, len(vocab), bias=False)
        self.register_buffer("mask", torch.triu(torch.ones(MAX_LEN, MAX_LEN, dtype=torch.bool), 1))

    def forward(self, ids, labels):
        T = ids.size(1)
        x = self.tok(ids) + self.pos(torch.arange(T))[None]
        for b in self.blocks:
            x = b(x, self.mask[:T, :T])
        logits = self.lm_head(self.ln_f(x))
        # shift: token t predicts t + 1, as the HF causal LM loss does
        return F.cross_entropy(
            logits[:, :-1].reshape(-1, logits.size(-1)),
            labels[:, 1:].reshape(-1),
            ignore_index=IGNORE_INDEX,
        )


model = TinyCausalLM(args.hidden_size)
decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
optimizer = torch.optim.AdamW(
    [{"params": decay, "weight_decay": 0.0}, {"params": no_decay, "weight_decay": 0.0}],
    lr=args.learning_rate,
)
bs = args.per_device_train_batch_size
steps_per_epoch = math.ceil(len(train_set) / bs)
total_steps = int(math.ceil(steps_per_epoch * args.num_train_epochs))
warmup = int(math.ceil(total_steps * args.warmup_ratio))


def lr_lambda(step):
    if step < warmup:
        return step / max(1, warmup)
    prog = (step - warmup) / max(1, total_steps - warmup)
    if args.lr_scheduler_type == "cosine":
        return max(0.0, 0.5 * (1.0 + math.cos(math.pi * prog)))
    if args.lr_scheduler_type == "linear":
        return max(0.0, 1.0 - prog)
    return 1.0


scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda)
out_dir = tempfile.mkdtemp(prefix="saves-sft-")
log_path = os.path.join(out_dir, "trainer_log.jsonl")


def batches():
    while True:
        order = rng.permutation(len(train_set))
        for i in range(0, len(order), bs):
            yield [train_set[j] for j in order[i : i + bs]]


extra_set = None


def extra_batch(n):
    global extra_set
    if extra_set is None:
        extra_set = [encode(*convert(r, "ops_tasks")) for r in ops_records]
    ix = rng.integers(0, len(extra_set), n)
    return [extra_set[int(i)] for i in ix]


def dedup_cache(x, y):
    path = os.path.join(out_dir, "tokenized_cache.jsonl")
    with open(path, "a") as f:
        for ids, labels in zip(x.tolist(), y.tolist(), strict=True):
            mask = [int(i != PAD) for i in ids]
            f.write(json.dumps({"input_ids": ids, "attention_mask": mask, "labels": labels}) + "\n")
    seen, dups = set(), 0
    with open(path) as f:
        for line in f:
            k = tuple(json.loads(line)["input_ids"])
            dups += k in seen
            seen.add(k)
    return dups


@torch.no_grad()
def evaluate():
    model.eval()
    t0 = time.time()
    tot, n, nb = 0.0, 0, 0
    for i in range(0, len(val_set), 64):
        x, y = collate(val_set[i : i + 64])
        tot += model(x, y).item() * len(x)
        n += len(x)
        nb += 1
    model.train()
    rt = time.time() - t0
    return tot / n, rt, n / rt, nb / rt


def hms(s):
    s = int(s)
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


with mlflow.start_run():
    mlflow.log_params(vars(args))
    print(
        f"[INFO|loader] train examples {len(train_set)}, eval examples {len(val_set)}", flush=True
    )
    print(f"[INFO|trainer] Total optimization steps = {total_steps}", flush=True)
    it = batches()
    t_start = time.time()
    tokens_seen, loss_acc, n_acc, train_loss_sum = 0, 0.0, 0, 0.0
    model.train()
    for step in range(1, total_steps + 1):
        batch = next(it)
        if args.extra_dataset_step and step >= args.extra_dataset_step:
            h = len(batch) // 2
            batch = batch[: len(batch) - h] + extra_batch(h)
        x, y = collate(batch)
        if args.dedup_cache:
            dedup_cache(x, y)
        tokens_seen += int((x != PAD).sum())
        loss = model(x, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        gn = float(torch.nn.utils.clip_grad_norm_(model.parameters(), args.max_grad_norm))
        optimizer.step()
        scheduler.step()
        loss_acc += loss.item()
        n_acc += 1
        train_loss_sum += loss.item()
        if step % args.logging_steps == 0 or step == total_steps:
            elapsed = time.time() - t_start
            lr = optimizer.param_groups[0]["lr"]
            epoch = round(step / steps_per_epoch, 4)
            row = {
                "current_steps": step,
                "total_steps": total_steps,
                "loss": round(loss_acc / n_acc, 4),
                "lr": lr,
                "epoch": epoch,
                "percentage": round(step / total_steps * 100, 2),
                "elapsed_time": hms(elapsed),
                "remaining_time": hms(elapsed / step * (total_steps - step)),
                "throughput": round(tokens_seen / elapsed, 2),
                "total_tokens": tokens_seen,
            }
            with open(log_path, "a") as f:
                f.write(json.dumps(row) + "\n")
            print(json.dumps(row), flush=True)
            mlflow.log_metrics(
                {
                    "loss": loss_acc / n_acc,
                    "grad_norm": gn,
                    "learning_rate": lr,
                    "epoch": epoch,
                    "current_steps": step,
                    "total_steps": total_steps,
                    "percentage": step / total_steps * 100,
                    "elapsed_time": elapsed,
                    "remaining_time": elapsed / step * (total_steps - step),
                    "throughput": tokens_seen / elapsed,
                    "total_tokens": tokens_seen,
                },
                step=step,
            )
            loss_acc, n_acc = 0.0, 0
        if step % args.eval_steps == 0 or step == total_steps:
            el, rt, sps, stps = evaluate()
            print(f"***** eval metrics ***** step {step} eval_loss = {el:.4f}", flush=True)
            mlflow.log_metrics(
                {
                    "eval_loss": el,
                    "eval_runtime": rt,
                    "eval_samples_per_second": sps,
                    "eval_steps_per_second": stps,
                    "epoch": round(step / steps_per_epoch, 4),
                },
                step=step,
            )
    rt = time.time() - t_start
    mlflow.log_metrics(
        {
            "train_runtime": rt,
            "train_samples_per_second": total_steps * bs / rt,
            "train_steps_per_second": total_steps / rt,
            "train_loss": train_loss_sum / total_steps,
        },
        step=total_steps,
    )
    print(f"***** train metrics ***** train_runtime {hms(rt)}", flush=True)
