"""A small byte-level GPT pre-trained with NVIDIA NeMo's ``megatron_gpt_pretraining.py``
(``MegatronGPTModel`` under a Lightning ``Trainer``), its scalars written by Lightning's
``MLFlowLogger`` as NeMo's ``exp_manager`` sets it up.

Plain torch + the plain ``mlflow`` API (no NeMo, Megatron-core or Lightning here).  The data is
a blend of pre-processed shards (``model.data.data_prefix``: ``weight,shard,weight,shard,...``),
each Python's own standard-library source of one package read as bytes (NeMo's
``byte-level`` tokenizer, vocabulary padded to a multiple of
``model.make_vocab_size_divisible_by``).  Samples are ``model.encoder_seq_length`` + 1 bytes;
the index is built without shuffling (``model.data.shuffle_documents False`` and the
``single`` sampler), so the shards are read in order, a shard's share of each pass given by its
weight.  The validation split is the last 10% of every shard.  The Hydra config is logged as
params (``model.optim.lr``, ``trainer.max_steps``, ...).

As Lightning logs them (``on_step``, every ``trainer.log_every_n_steps`` steps, ``step`` = the
number of optimizer steps taken before the logged batch, i.e. 9, 19, 29, ... for
``log_every_n_steps`` 10): ``reduced_train_loss`` (that batch's mean token cross-entropy, nats),
``lr``, ``global_step`` (same as the step), ``consumed_samples``, ``grad_norm`` (the total
norm before clipping; only logged when ``trainer.gradient_clip_val`` > 0, as NeMo's
``configure_gradient_clipping`` does), ``train_step_timing in s`` (NeMo's ``TimingCallback``:
that step's wall time) and ``epoch`` (Lightning adds it to every logged dict, 0 here).  Every
``trainer.val_check_interval`` steps, on ``trainer.limit_val_batches`` batches: ``val_loss``
(mean over the batches) and ``validation_step_timing in s``, with ``step`` = the number of
optimizer steps so far (100, 200, ...), and ``epoch`` again.  Written without looking at the
doctor.

Faults are real settings: ``--model.optim.lr`` far too high; a shard pre-processed from
gzip-compressed files (``--model.data.data_prefix`` naming ``email_gz``: random-looking bytes);
shards read from their raw gzip archives from some step on (``--model.data.raw_from_step``:
each sample decompresses its whole source archive again); an ``exp_manager`` callback that keeps
every step's loss tensor for a plot (``--exp_manager.loss_history 1``: each tensor keeps its
autograd graph alive, so memory grows until the harness's limit is hit).
"""

import glob
import gzip
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
        "--model.seed": ("seed", 1234),
        "--trainer.max_steps": ("max_steps", 600),
        "--trainer.log_every_n_steps": ("log_every", 10),
        "--trainer.val_check_interval": ("val_check_interval", 100),
        "--trainer.limit_val_batches": ("limit_val_batches", 8),
        "--trainer.gradient_clip_val": ("clip", 1.0),
        "--model.micro_batch_size": ("micro_batch_size", 16),
        "--model.global_batch_size": ("global_batch_size", 16),
        "--model.encoder_seq_length": ("seq_len", 64),
        "--model.num_layers": ("num_layers", 2),
        "--model.hidden_size": ("hidden_size", 64),
        "--model.num_attention_heads": ("heads", 4),
        "--model.hidden_dropout": ("dropout", 0.0),
        "--model.make_vocab_size_divisible_by": ("vocab_div", 128),
        "--model.optim.lr": ("lr", 3e-3),
        "--model.optim.weight_decay": ("weight_decay", 0.01),
        "--model.optim.sched.name": ("sched", "CosineAnnealing"),
        "--model.optim.sched.warmup_steps": ("warmup_steps", 50),
        "--model.optim.sched.min_lr": ("min_lr", 3e-4),
        "--model.data.data_prefix": ("data_prefix", "0.4,email,0.3,http,0.3,logging"),
        "--model.data.raw_from_step": ("raw_from_step", -1),
        "--exp_manager.loss_history": ("loss_history", 0),
    }
)
rng = _setup.seeded(args.seed)
STDLIB = os.path.dirname(os.__file__)
SEQ = args.seq_len
VOCAB = 256 + 4  # bytes + <pad>, <bos>, <eos>, <mask> specials of the byte-level tokenizer
DOC, BLOCK = 4096, 16  # characters in one raw jsonl document, documents in a read block
PADDED_VOCAB = math.ceil(VOCAB / args.vocab_div) * args.vocab_div


def shard_bytes(name):
    """A shard's ``.bin``: the package's sources, concatenated (``_gz``: the files as archived)."""
    pkg = name.removesuffix("_gz")
    files = sorted(glob.glob(f"{STDLIB}/{pkg}/*.py"))
    if name.endswith("_gz"):
        return b"".join(gzip.compress(open(p, "rb").read(), 6) for p in files)
    return b"".join(open(p, "rb").read() for p in files)


parts = args.data_prefix.split(",")
blend = [(float(w), name) for w, name in zip(parts[0::2], parts[1::2], strict=True)]
train_ids, valid_ids, archives = {}, {}, {}
for _, name in blend:
    data = np.frombuffer(shard_bytes(name), dtype=np.uint8).astype(np.int64)
    cut = int(0.9 * len(data))
    train_ids[name], valid_ids[name] = data[:cut], data[cut:]
    raw = data[:cut].astype(np.uint8).tobytes().decode("latin-1")
    docs = [json.dumps({"text": raw[i : i + DOC]}) for i in range(0, cut, DOC)]
    archives[name] = gzip.compress("\n".join(docs).encode(), 6)  # the raw jsonl.gz shard
# One pass over the blend: each shard's block of samples, its size given by its weight.
PASS = 1600  # samples in one pass of the blend
schedule = []
for w, name in blend:
    schedule += [name] * round(w / sum(w for w, _ in blend) * PASS)
cursor = dict.fromkeys(train_ids, 0)


def read_sample(name, step):
    ids = train_ids[name]
    pos = cursor[name]
    if pos + SEQ + 1 > len(ids):
        pos = 0
    cursor[name] = pos + SEQ + 1
    if 0 <= args.raw_from_step <= step:  # not pre-processed: read the raw archive again
        docs = [json.loads(line)["text"] for line in gzip.decompress(archives[name]).split(b"\n")]
        first = (pos // DOC) // BLOCK * BLOCK  # the reader tokenizes a block of documents
        text = "".join(docs[first : (pos + SEQ + 1) // DOC + BLOCK])
        tokens = [ord(c) for c in text]  # the byte-level tokenizer
        start = pos - first * DOC
        return np.array(tokens[start : start + SEQ + 1], dtype=np.int64)
    return ids[pos : pos + SEQ + 1]


sample_no = 0


def train_batch(step):
    global sample_no
    rows = []
    for _ in range(args.micro_batch_size):
        rows.append(read_sample(schedule[sample_no % len(schedule)], step))
        sample_no += 1
    return torch.from_numpy(np.stack(rows))


def valid_batches():
    rows = []
    for _, name in blend:
        ids = valid_ids[name]
        rows += [ids[i : i + SEQ + 1] for i in range(0, len(ids) - SEQ - 1, SEQ + 1)]
    r = np.random.default_rng(0)
    rows = [rows[i] for i in r.permutation(len(rows))]
    n = args.micro_batch_size
    for b in range(args.limit_val_batches):
        yield torch.from_numpy(np.stack(rows[b * n : (b + 1) * n]))


class Block(torch.nn.Module):
    def __init__(self, d, heads, p):
        super().__init__()
        self.input_layernorm = torch.nn.LayerNorm(d)
        self.self_attention = torch.nn.MultiheadAttention(d, heads, dropout=p, batch_first=True)
        self.post_attention_layernorm = torch.nn.LayerNorm(d)
        self.mlp = torch.nn.Sequential(
            torch.nn.Linear(d, 4 * d), torch.nn.GELU(), torch.nn.Linear(4 * d, d)
        )
        self.drop = torch.nn.Dropout(p)

    def forward(self, x, mask):
        h = self.input_layernorm(x)
        a, _ = self.self_attention(h, h, h, attn_mask=mask, need_weights=False)
        x = x + self.drop(a)
        return x + self.drop(self.mlp(self.post_attention_layernorm(x)))


class GPT(torch.nn.Module):
    def __init__(self):
        super().__init__()
        d = args.hidden_size
        self.word_embeddings = torch.nn.Embedding(PADDED_VOCAB, d)
        self.position_embeddings = torch.nn.Embedding(SEQ, d)
        torch.nn.init.normal_(self.word_embeddings.weight, std=0.02)
        torch.nn.init.normal_(self.position_embeddings.weight, std=0.02)
        self.layers = torch.nn.ModuleList(
            Block(d, args.heads, args.dropout) for _ in range(args.num_layers)
        )
        self.final_layernorm = torch.nn.LayerNorm(d)
        self.register_buffer("mask", torch.triu(torch.full((SEQ, SEQ), float("-inf")), 1))

    def forward(self, tokens):
        x = self.word_embeddings(tokens) + self.position_embeddings.weight[: tokens.shape[1]]
        for layer in self.layers:
            x = layer(x, self.mask)
        return self.final_layernorm(x) @ self.word_embeddings.weight.t()  # tied output layer


def loss_of(batch):
    logits = model(batch[:, :-1])
    return F.cross_entropy(logits.reshape(-1, PADDED_VOCAB), batch[:, 1:].reshape(-1))


def lr_at(step):  # NeMo's CosineAnnealing with linear warm-up, step from 0
    if step < args.warmup_steps:
        return args.lr * (step + 1) / args.warmup_steps
    if args.sched == "constant":
        return args.lr
    frac = (step - args.warmup_steps) / max(1, args.max_steps - args.warmup_steps)
    return args.min_lr + 0.5 * (args.lr - args.min_lr) * (1 + math.cos(math.pi * min(1.0, frac)))


model = GPT()
opt = torch.optim.AdamW(
    model.parameters(), lr=args.lr, betas=(0.9, 0.95), weight_decay=args.weight_decay
)


def validate(step):
    model.eval()
    t0 = time.perf_counter()
    with torch.no_grad():
        losses = [loss_of(b).item() for b in valid_batches()]
    model.train()
    dt = (time.perf_counter() - t0) / max(1, len(losses))
    val_loss = sum(losses) / len(losses)
    mlflow.log_metrics(
        {"val_loss": val_loss, "validation_step_timing in s": dt, "epoch": 0}, step=step
    )
    print(f"Epoch 0, global step {step}: 'val_loss' reached {val_loss:.5f}", flush=True)


with mlflow.start_run():
    mlflow.log_params(
        {
            "trainer.max_steps": args.max_steps,
            "trainer.log_every_n_steps": args.log_every,
            "trainer.val_check_interval": args.val_check_interval,
            "trainer.limit_val_batches": args.limit_val_batches,
            "trainer.gradient_clip_val": args.clip,
            "trainer.precision": "32",
            "model.micro_batch_size": args.micro_batch_size,
            "model.global_batch_size": args.global_batch_size,
            "model.encoder_seq_length": SEQ,
            "model.num_layers": args.num_layers,
            "model.hidden_size": args.hidden_size,
            "model.num_attention_heads": args.heads,
            "model.hidden_dropout": args.dropout,
            "model.tokenizer.library": "byte-level",
            "model.optim.name": "fused_adam",
            "model.optim.lr": args.lr,
            "model.optim.weight_decay": args.weight_decay,
            "model.optim.sched.name": args.sched,
            "model.optim.sched.warmup_steps": args.warmup_steps,
            "model.optim.sched.min_lr": args.min_lr,
            "model.data.data_prefix": args.data_prefix,
            "model.seed": args.seed,
        }
    )
    n_params = sum(p.numel() for p in model.parameters())
    print(f"[NeMo I] Number of model parameters: {n_params}", flush=True)
    loss_history = []  # exp_manager.loss_history: the step losses, kept for a plot
    for step in range(args.max_steps):
        t0 = time.perf_counter()
        batch = train_batch(step)
        for g in opt.param_groups:
            g["lr"] = lr_at(step)
        loss = loss_of(batch)
        opt.zero_grad()
        loss.backward()
        grad_norm = None
        if args.clip > 0:
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), args.clip).item()
        opt.step()
        if args.loss_history:
            loss_history.append(loss)  # the tensor, graph and all
        timing = time.perf_counter() - t0
        if (step + 1) % args.log_every == 0:
            metrics = {
                "reduced_train_loss": loss.item(),
                "lr": lr_at(step),
                "global_step": float(step),
                "consumed_samples": float((step + 1) * args.global_batch_size),
                "train_step_timing in s": timing,
                "epoch": 0,
            }
            if grad_norm is not None:
                metrics["grad_norm"] = grad_norm
            mlflow.log_metrics(metrics, step=step)
            print(
                f"Epoch 0: {step + 1}/{args.max_steps} reduced_train_loss={loss.item():.3f} "
                f"lr={lr_at(step):.3g} train_step_timing in s={timing:.4f}",
                flush=True,
            )
        if (step + 1) % args.val_check_interval == 0:
            validate(step + 1)
    print("`Trainer.fit` stopped: `max_steps` reached.", flush=True)
