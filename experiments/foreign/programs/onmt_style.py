"""A character language model trained by OpenNMT-py (``model_task: lm``, a small
``transformer_lm`` decoder), its ``ReportMgr`` statistics mirrored to MLflow.

Plain torch + the plain ``mlflow`` API (no OpenNMT here).  The corpus is Python's own source
(standard-library files, read as bytes), split into shards; ``valid`` is the last files.  The
options are logged as params (``learning_rate``, ``decay_method``, ``warmup_steps``,
``batch_size``, ...).  As ``Statistics.log_tensorboard`` writes them: every ``report_every``
steps the training statistics gathered since the last report, ``progress/xent``,
``progress/ppl``, ``progress/accuracy`` (percent), ``progress/tgtper`` (target tokens/s) and
``progress/lr``; every ``valid_steps`` steps ``valid/xent``, ``valid/ppl``, ``valid/accuracy``,
``valid/tgtper`` and ``valid/lr``.  ``step`` is the optimizer step (from 1).  Examples are read
in corpus order and shuffled within buckets of ``bucket_size`` examples, as the dynamic
iterator does.  Written without looking at the doctor.

Faults are real settings: ``--learning_rate`` far too high (noam, no ``max_grad_norm``) or too
low; a tiny corpus (``--corpus_bytes``) with no dropout and many steps; a shard list that
includes a compiled extension module (``--bad_shard``: that shard holds its binary bytes).
"""

import glob
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
        "--seed": 0,
        "--learning_rate": 0.5,
        "--decay_method": "noam",
        "--warmup_steps": 100,
        "--train_steps": 400,
        "--valid_steps": 50,
        "--report_every": 10,
        "--batch_size": 16,
        "--seq_length": 48,
        "--hidden_size": 64,
        "--layers": 2,
        "--heads": 4,
        "--dropout": 0.1,
        "--max_grad_norm": 0.0,
        "--adam_beta2": 0.998,
        "--label_smoothing": 0.0,
        "--bucket_size": 256,
        "--shards": 8,
        "--bad_shard": -1,
        "--corpus_bytes": 600000,
        "--valid_bytes": 20000,
    }
)
rng = _setup.seeded(args.seed)
STDLIB = os.path.dirname(os.__file__)
V = 128  # ASCII; anything else is <unk> (0)


def read(paths, limit):
    out = b""
    for p in paths:
        out += open(p, "rb").read()
        if len(out) >= limit:
            break
    return out[:limit]


def ids(data):
    a = np.frombuffer(data, dtype=np.uint8).astype(np.int64)
    a[a >= V] = 0
    return a


train_files = sorted(glob.glob(f"{STDLIB}/email/*.py") + glob.glob(f"{STDLIB}/json/*.py"))
train_files += sorted(glob.glob(f"{STDLIB}/http/*.py") + glob.glob(f"{STDLIB}/logging/*.py"))
train_files += sorted(glob.glob(f"{STDLIB}/xml/**/*.py", recursive=True))
full = read(train_files, 1 << 30)
corpus = full[: args.corpus_bytes]
shard_len = len(corpus) // args.shards
shards = [corpus[i * shard_len : (i + 1) * shard_len] for i in range(args.shards)]
if args.bad_shard >= 0:  # the shard list picked up a compiled extension module
    so = sorted(glob.glob(f"{STDLIB}/lib-dynload/_decimal*.so"))[0]
    shards[args.bad_shard] = open(so, "rb").read()[:shard_len]
L = args.seq_length + 1
examples = np.concatenate([ids(s)[: len(s) // L * L].reshape(-1, L) for s in shards if len(s) >= L])
valid = ids(full[-args.valid_bytes :])  # the last files, never in the corpus
valid = valid[: len(valid) // L * L].reshape(-1, L)


class TransformerLM(torch.nn.Module):
    def __init__(self):
        super().__init__()
        d = args.hidden_size
        self.emb = torch.nn.Embedding(V, d)
        self.pos = torch.nn.Embedding(args.seq_length, d)
        layer = torch.nn.TransformerEncoderLayer(
            d, args.heads, 4 * d, args.dropout, batch_first=True, norm_first=True
        )
        self.dec = torch.nn.TransformerEncoder(layer, args.layers, enable_nested_tensor=False)
        self.norm = torch.nn.LayerNorm(d)
        self.gen = torch.nn.Linear(d, V)
        self.mask = torch.nn.Transformer.generate_square_subsequent_mask(args.seq_length)

    def forward(self, x):
        h = self.emb(x) * math.sqrt(args.hidden_size) + self.pos.weight[: x.shape[1]]
        return self.gen(self.norm(self.dec(h, mask=self.mask, is_causal=True)))


model = TransformerLM()
opt = torch.optim.Adam(model.parameters(), lr=1.0, betas=(0.9, args.adam_beta2), eps=1e-9)


def lr_at(step):
    if args.decay_method == "noam":
        return (
            args.learning_rate
            * args.hidden_size**-0.5
            * min(step**-0.5, step * args.warmup_steps**-1.5)
        )
    return args.learning_rate  # decay_method none


def batches():  # corpus order, shuffled within buckets
    while True:
        for b0 in range(0, len(examples), args.bucket_size):
            bucket = examples[b0 : b0 + args.bucket_size]
            bucket = bucket[rng.permutation(len(bucket))]
            for i in range(0, len(bucket) - args.batch_size + 1, args.batch_size):
                yield torch.from_numpy(bucket[i : i + args.batch_size])


def stats_of(logits, tgt):
    loss = F.cross_entropy(logits.reshape(-1, V), tgt.reshape(-1), reduction="sum")
    correct = (logits.argmax(-1) == tgt).sum().item()
    return loss, correct, tgt.numel()


def report(prefix, st, step):
    xent = st["loss"] / st["n"]
    t = max(1e-9, time.time() - st["start"])
    out = {
        f"{prefix}/xent": xent,
        f"{prefix}/ppl": math.exp(min(xent, 100)),
        f"{prefix}/accuracy": 100.0 * st["correct"] / st["n"],
        f"{prefix}/tgtper": st["n"] / t,
        f"{prefix}/lr": lr_at(step),
    }
    mlflow.log_metrics(out, step=step)
    return out


def new_stats():
    return {"loss": 0.0, "correct": 0, "n": 0, "start": time.time()}


with mlflow.start_run():
    mlflow.log_params(
        {
            "model_task": "lm",
            "decoder_type": "transformer_lm",
            "seed": args.seed,
            "layers": args.layers,
            "hidden_size": args.hidden_size,
            "heads": args.heads,
            "transformer_ff": 4 * args.hidden_size,
            "dropout": args.dropout,
            "optim": "adam",
            "adam_beta2": args.adam_beta2,
            "learning_rate": args.learning_rate,
            "decay_method": args.decay_method,
            "warmup_steps": args.warmup_steps,
            "max_grad_norm": args.max_grad_norm,
            "label_smoothing": args.label_smoothing,
            "batch_type": "sents",
            "batch_size": args.batch_size,
            "train_steps": args.train_steps,
            "valid_steps": args.valid_steps,
            "report_every": args.report_every,
            "bucket_size": args.bucket_size,
        }
    )
    print(f"[onmt] corpus_1: {len(examples)} examples, valid: {len(valid)} examples", flush=True)
    st = new_stats()
    t_start = time.time()
    it = batches()
    for step in range(1, args.train_steps + 1):
        batch = next(it)
        src, tgt = batch[:, :-1], batch[:, 1:]
        for g in opt.param_groups:
            g["lr"] = lr_at(step)
        logits = model(src)
        loss, correct, n = stats_of(logits, tgt)
        if args.label_smoothing:
            loss_bw = F.cross_entropy(
                logits.reshape(-1, V), tgt.reshape(-1), label_smoothing=args.label_smoothing
            )
        else:
            loss_bw = loss / n
        opt.zero_grad()
        loss_bw.backward()
        if args.max_grad_norm:
            torch.nn.utils.clip_grad_norm_(model.parameters(), args.max_grad_norm)
        opt.step()
        st["loss"] += loss.item()
        st["correct"] += correct
        st["n"] += n
        if step % args.report_every == 0:
            r = report("progress", st, step)
            print(
                f"[onmt.utils.statistics] Step {step:>4}/{args.train_steps}; "
                f"acc: {r['progress/accuracy']:5.1f}; ppl: {r['progress/ppl']:7.2f}; "
                f"xent: {r['progress/xent']:4.2f}; lr: {lr_at(step):.5f}; "
                f"{r['progress/tgtper']:6.0f} tok/s; {time.time() - t_start:4.0f} sec",
                flush=True,
            )
            st = new_stats()
        if step % args.valid_steps == 0:
            model.eval()
            vs = new_stats()
            with torch.no_grad():
                for i in range(0, len(valid), 64):
                    vb = torch.from_numpy(valid[i : i + 64])
                    loss, correct, n = stats_of(model(vb[:, :-1]), vb[:, 1:])
                    vs["loss"] += loss.item()
                    vs["correct"] += correct
                    vs["n"] += n
            model.train()
            r = report("valid", vs, step)
            print(f"[onmt.trainer] Validation perplexity: {r['valid/ppl']:.4f}", flush=True)
            print(f"[onmt.trainer] Validation accuracy: {r['valid/accuracy']:.4f}", flush=True)
