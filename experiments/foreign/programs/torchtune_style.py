"""A small causal LM fine-tuned the way torchtune's ``full_finetune_single_device`` recipe
trains, logged the way torchtune's ``MLFlowLogger`` (``torchtune.training.metric_logging``)
logs it.

Plain PyTorch + the plain ``mlflow`` API.  The recipe's config is flattened into params with
dotted keys (``optimizer.lr``, ``lr_scheduler.num_warmup_steps``, ``dataset.shuffle``, ...), as
``log_config`` does; the flags carry the same dotted names.  Every ``log_every_n_steps``
optimizer steps the recipe logs ``loss`` (the summed token loss over the steps since the last
log divided by their number of target tokens), ``lr``, ``tokens_per_second_per_gpu`` (tokens
since the last log over the wall time since then) and, only when ``clip_grad_norm`` is set,
``grad_norm``, all with ``step=global_step`` (from 1).  No peak-memory stats: the device is
the CPU.  Written without looking at the doctor.

The data are generated "chat" samples from a sparse Markov source over a 64-token vocabulary
(variable length), written as JSON-lines shard files and read through a map-style dataset
(``ConcatDataset`` over the shards, ``dataset.shuffle`` as the sampler's shuffle).  Faults are
real paths in the data and config:
``--dataset.bad_shard K`` – shard K was tokenised with another tokenizer (its ids permuted);
``--dataset.unindexed_from K`` – shards from K on have no offset index, so every sample is
found by parsing its whole shard file;
``--tokenizer.max_seq_len`` larger than ``--model.max_seq_len`` – the first sample longer than
the model's position table raises in the embedding lookup.
"""

import json
import math
import os
import tempfile
import time

import _setup
import mlflow
import numpy as np
import torch
import torch.nn.functional as F

args = _setup.parse_flags(
    {
        "--seed": ("seed", 0),
        "--epochs": ("epochs", 2),
        "--max_steps_per_epoch": ("max_steps_per_epoch", 0),
        "--batch_size": ("batch_size", 8),
        "--gradient_accumulation_steps": ("gradient_accumulation_steps", 1),
        "--optimizer.lr": ("lr", 2e-3),
        "--optimizer.weight_decay": ("weight_decay", 0.01),
        "--lr_scheduler.num_warmup_steps": ("warmup", 20),
        "--lr_scheduler.name": ("sched", "cosine"),
        "--clip_grad_norm": ("clip_grad_norm", "1.0"),
        "--log_every_n_steps": ("log_every_n_steps", 1),
        "--dataset.shuffle": ("shuffle", 1),
        "--dataset.num_shards": ("num_shards", 8),
        "--dataset.samples_per_shard": ("samples_per_shard", 160),
        "--dataset.bad_shard": ("bad_shard", -1),
        "--dataset.unindexed_from": ("unindexed_from", -1),
        "--tokenizer.max_seq_len": ("tok_max_seq_len", 64),
        "--model.max_seq_len": ("model_max_seq_len", 64),
        "--model.embed_dim": ("embed_dim", 64),
        "--model.num_layers": ("num_layers", 2),
        "--dtype": ("dtype", "fp32"),
    }
)

rng = _setup.seeded(args.seed)
V, PAD, IGNORE = 64, 0, -100

# the source: every token has a few likely successors
succ = np.stack([rng.choice(np.arange(1, V), 4, replace=False) for _ in range(V)])
probs = np.array([0.55, 0.25, 0.12, 0.08])
data_rng = np.random.default_rng(1000 + args.seed)


def sample_text(n):
    toks = [int(data_rng.integers(1, V))]
    for _ in range(n - 1):
        toks.append(int(succ[toks[-1], data_rng.choice(4, p=probs)]))
    return toks


tmp = tempfile.TemporaryDirectory(prefix="tt_data_")
other_tokenizer = np.concatenate([[0], 1 + data_rng.permutation(V - 1)])
shards = []
for s in range(args.num_shards):
    path = os.path.join(tmp.name, f"shard_{s:03d}.jsonl")
    with open(path, "w") as f:
        for i in range(args.samples_per_shard):
            n = int(min(24 + data_rng.geometric(1 / 18), 160))
            toks = sample_text(n)
            if s == args.bad_shard:
                toks = [int(other_tokenizer[t]) for t in toks]
            f.write(json.dumps({"id": i, "tokens": toks, "source": f"chat_{s}"}) + "\n")
    shards.append(path)


class JsonlShard:
    """One shard file; with an index it seeks to the sample, without it parses the whole file."""

    def __init__(self, path, indexed):
        self.path, self.offsets = path, None
        if indexed:
            self.offsets = []
            with open(path, "rb") as f:
                pos = 0
                for line in f:
                    self.offsets.append(pos)
                    pos += len(line)
        with open(path) as f:
            self.n = sum(1 for _ in f)

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        with open(self.path) as f:
            if self.offsets is not None:
                f.seek(self.offsets[i])
                return json.loads(f.readline())
            records = {rec["id"]: rec for rec in map(json.loads, f)}
        return records[i]


datasets = [
    JsonlShard(p, args.unindexed_from < 0 or s < args.unindexed_from) for s, p in enumerate(shards)
]
bounds = np.cumsum([0] + [len(d) for d in datasets])


def get_sample(k):
    s = int(np.searchsorted(bounds, k, side="right") - 1)
    toks = datasets[s][int(k - bounds[s])]["tokens"][: args.tok_max_seq_len]
    return toks


def padded_collate(samples):
    L = max(len(t) for t in samples)
    tokens = torch.full((len(samples), L), PAD, dtype=torch.long)
    labels = torch.full((len(samples), L), IGNORE, dtype=torch.long)
    for r, t in enumerate(samples):
        tokens[r, : len(t)] = torch.tensor(t)
        labels[r, : len(t) - 1] = torch.tensor(t[1:])
    return tokens, labels


class Block(torch.nn.Module):
    def __init__(self, d):
        super().__init__()
        self.norm1, self.norm2 = torch.nn.RMSNorm(d), torch.nn.RMSNorm(d)
        self.conv = torch.nn.Conv1d(d, d, 4, groups=d)
        self.mlp = torch.nn.Sequential(
            torch.nn.Linear(d, 4 * d), torch.nn.SiLU(), torch.nn.Linear(4 * d, d)
        )

    def forward(self, x):
        h = self.norm1(x).transpose(1, 2)
        x = x + self.conv(F.pad(h, (3, 0))).transpose(1, 2)
        return x + self.mlp(self.norm2(x))


class TransformerDecoder(torch.nn.Module):
    def __init__(self, d, n_layers, max_seq_len):
        super().__init__()
        self.tok_embeddings = torch.nn.Embedding(V, d)
        self.pos_embeddings = torch.nn.Embedding(max_seq_len, d)
        self.layers = torch.nn.ModuleList(Block(d) for _ in range(n_layers))
        self.norm = torch.nn.RMSNorm(d)
        self.output = torch.nn.Linear(d, V, bias=False)

    def forward(self, tokens):
        pos = torch.arange(tokens.shape[1])
        x = self.tok_embeddings(tokens) + self.pos_embeddings(pos)[None]
        for layer in self.layers:
            x = layer(x)
        return self.output(self.norm(x))


model = TransformerDecoder(args.embed_dim, args.num_layers, args.model_max_seq_len)
optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
n_samples = int(bounds[-1])
steps_per_epoch = n_samples // (args.batch_size * args.gradient_accumulation_steps)
if args.max_steps_per_epoch:
    steps_per_epoch = min(steps_per_epoch, args.max_steps_per_epoch)
total_steps = args.epochs * steps_per_epoch


def lr_lambda(step):  # get_cosine_schedule_with_warmup (num_cycles 0.5)
    if step < args.warmup:
        return step / max(1, args.warmup)
    if args.sched == "constant":
        return 1.0
    progress = (step - args.warmup) / max(1, total_steps - args.warmup)
    return max(0.0, 0.5 * (1.0 + math.cos(math.pi * progress)))


lr_scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda)
clip = None if args.clip_grad_norm in ("None", "null", "") else float(args.clip_grad_norm)

config = {
    "seed": args.seed,
    "epochs": args.epochs,
    "max_steps_per_epoch": args.max_steps_per_epoch or None,
    "batch_size": args.batch_size,
    "gradient_accumulation_steps": args.gradient_accumulation_steps,
    "optimizer._component_": "torch.optim.AdamW",
    "optimizer.lr": args.lr,
    "optimizer.weight_decay": args.weight_decay,
    "lr_scheduler._component_": "torchtune.training.lr_schedulers."
    + ("get_cosine_schedule_with_warmup" if args.sched == "cosine" else "get_constant_schedule"),
    "lr_scheduler.num_warmup_steps": args.warmup,
    "loss._component_": "torchtune.modules.loss.CEWithChunkedOutputLoss",
    "clip_grad_norm": clip,
    "log_every_n_steps": args.log_every_n_steps,
    "dataset._component_": "torchtune.datasets.chat_dataset",
    "dataset.shuffle": bool(args.shuffle),
    "dataset.packed": False,
    "tokenizer.max_seq_len": args.tok_max_seq_len,
    "model.max_seq_len": args.model_max_seq_len,
    "model.embed_dim": args.embed_dim,
    "model.num_layers": args.num_layers,
    "metric_logger._component_": "torchtune.training.metric_logging.MLFlowLogger",
    "dtype": args.dtype,
    "device": "cpu",
    "compile": False,
    "enable_activation_checkpointing": False,
}

with mlflow.start_run():
    mlflow.log_params({k: str(v) for k, v in config.items()})
    print(f"Model is initialized; {sum(p.numel() for p in model.parameters())} params", flush=True)
    print(f"Dataset and Sampler are initialized; {n_samples} samples", flush=True)
    global_step, running_loss, num_tokens = 0, 0.0, 0
    t0 = time.perf_counter()
    for epoch in range(args.epochs):
        order = rng.permutation(n_samples) if args.shuffle else np.arange(n_samples)
        per_step = args.batch_size * args.gradient_accumulation_steps
        for step in range(steps_per_epoch):
            optimizer.zero_grad()
            for a in range(args.gradient_accumulation_steps):
                k0 = step * per_step + a * args.batch_size
                batch = [get_sample(int(k)) for k in order[k0 : k0 + args.batch_size]]
                tokens, labels = padded_collate(batch)
                logits = model(tokens)
                current = int((labels != IGNORE).sum())
                loss_sum = F.cross_entropy(
                    logits.reshape(-1, V), labels.reshape(-1), ignore_index=IGNORE, reduction="sum"
                )
                running_loss += loss_sum.item()
                num_tokens += current
                (loss_sum / current / args.gradient_accumulation_steps).backward()
            grad_norm = None
            if clip is not None:
                grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm=clip)
            optimizer.step()
            lr_scheduler.step()
            global_step += 1
            if global_step % args.log_every_n_steps == 0:
                time_per_step = time.perf_counter() - t0
                loss_to_log = running_loss / num_tokens
                log_dict = {
                    "loss": loss_to_log,
                    "lr": optimizer.param_groups[0]["lr"],
                    "tokens_per_second_per_gpu": num_tokens / time_per_step,
                }
                if grad_norm is not None:
                    log_dict["grad_norm"] = float(grad_norm)
                mlflow.log_metrics(log_dict, step=global_step)
                if global_step % 10 == 0:
                    print(
                        f"{epoch + 1}|{global_step}|Loss: {loss_to_log:.4f} "
                        f"tokens/s {log_dict['tokens_per_second_per_gpu']:.0f}",
                        flush=True,
                    )
                running_loss, num_tokens = 0.0, 0
                t0 = time.perf_counter()
    print("Training finished", flush=True)
tmp.cleanup()
