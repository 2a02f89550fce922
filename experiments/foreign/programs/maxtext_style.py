"""A tiny decoder-only LM pretrained the way MaxText's ``train.py`` trains one, its
TensorBoard scalars mirrored into MLflow tag for tag.

Plain PyTorch + the plain ``mlflow`` API (no JAX here).  The config (MaxText's ``base.yml``
keys, overridden by ``--key value``) is logged as params.  As MaxText's ``MetricLogger`` writes
them, every training step ``N`` (from 0) gets the step's ``learning/loss`` (summed token
cross-entropy over ``learning/total_weights``, the number of non-padding target tokens of the
packed batch), ``learning/moe_lb_loss`` (0 for a dense model), ``learning/grad_norm`` (after
clipping by global norm at ``--gradient_clipping_threshold``), ``learning/raw_grad_norm``
(before), ``learning/param_norm``, ``learning/current_learning_rate``,
``perf/step_time_seconds`` (wall time since the previous step ended: data loading and, after an
evaluation, the evaluation included),
``perf/per_device_tflops`` (the model's estimate per step), ``perf/per_device_tflops_per_sec``,
``perf/per_device_tokens`` and ``perf/per_device_tokens_per_sec``.  Every ``--eval_interval``
steps (after steps ``eval_interval - 1``, ``2 * eval_interval - 1``, ...) the eval loop runs
``--eval_steps`` batches and logs ``eval/total_loss`` (the *sum* of token losses over those
batches), ``eval/total_weights``, ``eval/avg_loss``, ``eval/moe_lb_loss`` and
``eval/avg_moe_lb_loss`` at that step.  The console shows ``completed step: N, seconds: ...,
TFLOP/s/device: ..., Tokens/s/device: ..., total_weights: ..., loss: ...`` and ``eval metrics
after step: N, loss=..., total_weights=...``.  Written without looking at the doctor.

Model: byte tokens (+1; 0 is padding), learned position embedding of ``--max_target_length``
positions, pre-RMSNorm decoder layers (causal attention, SiLU-gated MLP), untied logits;
AdamW (b1 0.9, b2 0.95, weight decay 0.1), linear warm-up over ``--warmup_steps_fraction`` of
the schedule then cosine decay to ``--cosine_learning_rate_final_fraction`` of the peak.
Data: docstrings of scikit-learn's own source (read with ``ast``, nothing imported or
downloaded) as documents, written as ``--num_shards`` record files read in file order (a
per-shard shuffle buffer, as TFDS with ``shuffle_files=False``) and packed first-fit into
sequences of ``max_target_length + 1`` tokens, the rest padded; the last documents are the
eval split.

Faults are real paths: ``--learning_rate`` far too low (MaxText's 3e-5-scale default kept for
a tiny model, or lower); ``--blob_shard K`` - shard K was built from the wrong column and holds
base64 blobs (image thumbnails) among its records; ``--jsonl_from_step N`` - from step N the
converted shards are gone and the pipeline falls back to the raw gzip'd JSONL export
(``input_ids``, ``attention_mask``, ``offset_mapping`` per record), re-opening and loading the
whole file for every record it needs; ``--eval_max_target_length`` longer than the model's
position table (eval batches packed for a longer context than the model was built with).
"""

import ast
import base64
import glob
import gzip
import json
import math
import os
import struct
import tempfile
import time

import _setup
import mlflow
import sklearn
import torch
import torch.nn.functional as F

args = _setup.parse_flags(
    {
        "--seed": 0,
        "--run_name": "maxtext_tiny",
        "--base_emb_dim": 64,
        "--base_num_query_heads": 4,
        "--base_mlp_dim": 192,
        "--base_num_decoder_layers": 2,
        "--max_target_length": 64,
        "--eval_max_target_length": 0,  # 0: same as max_target_length
        "--per_device_batch_size": 16,
        "--eval_per_device_batch_size": 16,
        "--steps": 250,
        "--learning_rate": 3e-3,
        "--warmup_steps_fraction": 0.1,
        "--learning_rate_schedule_steps": -1,
        "--cosine_learning_rate_final_fraction": 0.1,
        "--adam_b1": 0.9,
        "--adam_b2": 0.95,
        "--adam_weight_decay": 0.1,
        "--gradient_clipping_threshold": 1.0,
        "--dropout_rate": 0.0,
        "--eval_interval": 25,
        "--eval_steps": 8,
        "--num_shards": 8,
        "--corpus_kb": 128,
        "--train_docs": 0,  # 0: all
        "--shuffle_buffer": 64,
        "--blob_shard": -1,
        "--jsonl_from_step": -1,
    }
)
rng = _setup.seeded(args.seed)
schedule_steps = (
    args.steps if args.learning_rate_schedule_steps < 0 else (args.learning_rate_schedule_steps)
)
eval_len = args.eval_max_target_length or args.max_target_length

# ---------------------------------------------------------------- data
root = os.path.dirname(sklearn.__file__)
paths = sorted(
    p
    for p in glob.glob(os.path.join(root, "**", "*.py"), recursive=True)
    if "/tests/" not in p and "/externals/" not in p
)
docs, total = [], 0
for p in paths:
    with open(p, encoding="utf-8") as f:
        tree = ast.parse(f.read())
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef)):
            d = ast.get_docstring(node)
            if d and len(d) > 120:
                docs.append(d.encode("utf-8", "replace"))
                total += len(d)
    if total > args.corpus_kb * 1024:
        break
n_eval = max(len(docs) // 12, 8)
eval_docs, train_docs = docs[-n_eval:], docs[:-n_eval]
if args.train_docs:
    train_docs = train_docs[: args.train_docs]

data_tmp = tempfile.TemporaryDirectory(prefix="maxtext_data_")
data_dir = data_tmp.name
shard_paths, shard_records = [], []
blob_rng = torch.Generator().manual_seed(1234)
for i in range(args.num_shards):
    records = train_docs[i :: args.num_shards]
    if i == args.blob_shard:  # the wrong column: base64 thumbnails among the text records
        blobs = []
        for _ in range(len(records) // 2):
            raw = torch.randint(0, 256, (900,), generator=blob_rng, dtype=torch.uint8)
            blobs.append(base64.b64encode(bytes(raw.tolist())))
        records = records[: len(records) // 2] + blobs + records[len(records) // 2 :]
    path = os.path.join(
        data_dir, f"sklearn_docs-train.array_record-{i:05d}-of-{args.num_shards:05d}"
    )
    with open(path, "wb") as f:
        for r in records:
            f.write(struct.pack("<I", len(r)) + r)
    shard_paths.append(path)
    shard_records.append(records)
# the raw export the shards were converted from: one gzip'd JSONL file, HF datasets style
export_path = os.path.join(data_dir, "train.jsonl.gz")
export_index = {}
with gzip.open(export_path, "wt", compresslevel=6) as f:
    line = 0
    for i, records in enumerate(shard_records):
        for j, r in enumerate(records):
            ids = [b + 1 for b in r]
            row = {
                "text": r.decode("utf-8", "replace"),
                "input_ids": ids,
                "attention_mask": [1] * len(ids),
                "offset_mapping": [[k, k + 1] for k in range(len(ids))],
            }
            f.write(json.dumps(row) + "\n")
            export_index[i, j] = line
            line += 1


def read_records(path):
    with open(path, "rb") as f:
        raw = f.read()
    out, pos = [], 0
    while pos < len(raw):
        (n,) = struct.unpack_from("<I", raw, pos)
        out.append(raw[pos + 4 : pos + 4 + n])
        pos += 4 + n
    return out


def read_export(line_no):
    """The fallback reader: re-opens the export and loads it whole for every record it needs
    (what ``datasets.load_dataset("json", ...)`` without a cache does)."""
    with gzip.open(export_path, "rt") as f:
        rows = [json.loads(line) for line in f]
    return bytes(t - 1 for t in rows[line_no]["input_ids"])


class Pipeline:
    """Records shard by shard (file order, a small shuffle buffer), tokenized (byte + 1) and
    packed first-fit into rows of ``length + 1`` tokens; 0 pads the rest of a row."""

    def __init__(self, shards, length, batch, repeat=True, fallback=False, shuffle=True):
        self.shards, self.length, self.batch, self.repeat = shards, length, batch, repeat
        self.buffer = args.shuffle_buffer if shuffle else 1
        self.fallback = fallback
        self.step = 0

    def records(self):
        while True:
            for k, path in enumerate(self.shards):
                recs = read_records(path) if isinstance(path, str) else path
                order = list(range(len(recs)))
                buf, out = [], []
                for j in order:
                    buf.append(j)
                    if len(buf) >= self.buffer:
                        out.append(buf.pop(int(rng.integers(len(buf)))))
                while buf:
                    out.append(buf.pop(int(rng.integers(len(buf)))))
                for j in out:
                    if self.fallback and 0 <= args.jsonl_from_step <= self.step:
                        yield read_export(export_index[k, j])  # the shard cache is gone
                    else:
                        yield recs[j]
            if not self.repeat:
                return

    def batches(self):
        row_len = self.length + 1
        rows, open_rows = [], []
        for rec in self.records():
            toks = [b + 1 for b in rec]
            for s in range(0, len(toks), row_len):
                piece = toks[s : s + row_len]
                for r in open_rows:  # first fit
                    if len(r) + len(piece) <= row_len:
                        r.extend(piece)
                        break
                else:
                    open_rows.append(list(piece))
                if len(open_rows) > 4:
                    rows.append(open_rows.pop(0))
                while len(rows) >= self.batch:
                    out = torch.zeros(self.batch, row_len, dtype=torch.long)
                    for i, r in enumerate(rows[: self.batch]):
                        out[i, : len(r)] = torch.tensor(r)
                    rows = rows[self.batch :]
                    yield out
        if rows:
            out = torch.zeros(len(rows), row_len, dtype=torch.long)
            for i, r in enumerate(rows):
                out[i, : len(r)] = torch.tensor(r)
            yield out


# ---------------------------------------------------------------- model
class DecoderLayer(torch.nn.Module):
    def __init__(self, d, h, mlp):
        super().__init__()
        self.h = h
        self.pre_self_attention_norm = torch.nn.RMSNorm(d)
        self.query = torch.nn.Linear(d, d, bias=False)
        self.key = torch.nn.Linear(d, d, bias=False)
        self.value = torch.nn.Linear(d, d, bias=False)
        self.out = torch.nn.Linear(d, d, bias=False)
        self.post_self_attention_norm = torch.nn.RMSNorm(d)
        self.wi_0 = torch.nn.Linear(d, mlp, bias=False)
        self.wi_1 = torch.nn.Linear(d, mlp, bias=False)
        self.wo = torch.nn.Linear(mlp, d, bias=False)

    def forward(self, x):
        B, T, D = x.shape
        z = self.pre_self_attention_norm(x)
        q, k, v = (
            m(z).view(B, T, self.h, D // self.h).transpose(1, 2)
            for m in (self.query, self.key, self.value)
        )
        a = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + F.dropout(self.out(a.transpose(1, 2).reshape(B, T, D)), args.dropout_rate)
        z = self.post_self_attention_norm(x)
        return x + F.dropout(self.wo(F.silu(self.wi_0(z)) * self.wi_1(z)), args.dropout_rate)


class Transformer(torch.nn.Module):
    def __init__(self):
        super().__init__()
        d = args.base_emb_dim
        self.token_embedder = torch.nn.Embedding(257, d)
        self.position_embedder = torch.nn.Embedding(args.max_target_length, d)
        self.layers = torch.nn.ModuleList(
            DecoderLayer(d, args.base_num_query_heads, args.base_mlp_dim)
            for _ in range(args.base_num_decoder_layers)
        )
        self.decoder_norm = torch.nn.RMSNorm(d)
        self.logits_dense = torch.nn.Linear(d, 257, bias=False)
        for p in self.parameters():
            if p.dim() == 2:
                torch.nn.init.normal_(p, std=d**-0.5)

    def forward(self, ids):
        pos = torch.arange(ids.shape[1])
        x = self.token_embedder(ids) + self.position_embedder(pos)
        for layer in self.layers:
            x = layer(x)
        return self.logits_dense(self.decoder_norm(x))


def loss_fn(model, batch):
    inputs, targets = batch[:, :-1], batch[:, 1:]
    logits = model(inputs)
    xent = F.cross_entropy(logits.reshape(-1, 257), targets.reshape(-1), reduction="none")
    weights = (targets.reshape(-1) != 0).float()
    return (xent * weights).sum(), weights.sum()


model = Transformer()
num_params = sum(p.numel() for p in model.parameters())
decay = [p for n, p in model.named_parameters() if p.dim() == 2]
no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
opt = torch.optim.AdamW(
    [{"params": decay}, {"params": no_decay, "weight_decay": 0.0}],
    lr=args.learning_rate,
    betas=(args.adam_b1, args.adam_b2),
    eps=1e-8,
    weight_decay=args.adam_weight_decay,
)
warmup = int(args.warmup_steps_fraction * schedule_steps)


def learning_rate_schedule(step):
    if step < warmup:
        return args.learning_rate * step / max(warmup, 1)
    frac = min((step - warmup) / max(schedule_steps - warmup, 1), 1.0)
    final = args.cosine_learning_rate_final_fraction
    return args.learning_rate * (final + (1 - final) * 0.5 * (1 + math.cos(math.pi * frac)))


T, D, L = args.max_target_length, args.base_emb_dim, args.base_num_decoder_layers
tokens_per_device = args.per_device_batch_size * T
dense_params = num_params - model.token_embedder.weight.numel() - T * D
weight_tflops = 6 * tokens_per_device * dense_params / 1e12
attention_tflops = 12 * L * args.per_device_batch_size * T * T * D / 2 / 1e12
per_device_tflops = weight_tflops + attention_tflops


def l2norm(tensors):
    return math.sqrt(sum(float(t.detach().pow(2).sum()) for t in tensors))


def run_eval(step):
    pipe = Pipeline(
        [eval_docs], eval_len, args.eval_per_device_batch_size, repeat=False, shuffle=False
    )
    total_loss, total_weights = 0.0, 0.0
    model.eval()
    with torch.no_grad():
        for i, batch in enumerate(pipe.batches()):
            if i >= args.eval_steps:
                break
            s, w = loss_fn(model, batch)
            total_loss += s.item()
            total_weights += w.item()
    model.train()
    scal = {
        "eval/total_loss": total_loss,
        "eval/total_weights": total_weights,
        "eval/moe_lb_loss": 0.0,
        "eval/avg_loss": total_loss / (total_weights + 1e-8),
        "eval/avg_moe_lb_loss": 0.0,
    }
    mlflow.log_metrics(scal, step=step)
    print(
        f"eval metrics after step: {step}, loss={scal['eval/avg_loss']:.3f},"
        f" total_weights={total_weights}",
        flush=True,
    )


with mlflow.start_run():
    mlflow.log_params(vars(args) | {"dataset_type": "tfds", "opt_type": "adamw"})
    print(f"number parameters: {num_params / 1e9:.6f} billion", flush=True)
    print(
        f"Per train step:\n Total TFLOPs: {per_device_tflops:.6f} \n split as "
        f"{100 * weight_tflops / per_device_tflops:.2f}% learnable weight flops and "
        f"{100 * attention_tflops / per_device_tflops:.2f}% attention flops",
        flush=True,
    )
    pipe = Pipeline(shard_paths, T, args.per_device_batch_size, fallback=True)
    batches = pipe.batches()
    last_end = time.perf_counter()
    for step in range(args.steps):
        pipe.step = step
        batch = next(batches)
        lr = learning_rate_schedule(step)
        for g in opt.param_groups:
            g["lr"] = lr
        total_loss, total_weights = loss_fn(model, batch)
        loss = total_loss / total_weights
        opt.zero_grad(set_to_none=True)
        loss.backward()
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        raw_grad_norm = l2norm(grads)
        if args.gradient_clipping_threshold > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), args.gradient_clipping_threshold)
        grad_norm = l2norm(grads)
        opt.step()
        now = time.perf_counter()
        step_time, last_end = now - last_end, now
        scal = {
            "learning/loss": loss.item(),
            "learning/moe_lb_loss": 0.0,
            "learning/total_weights": total_weights.item(),
            "learning/grad_norm": grad_norm,
            "learning/raw_grad_norm": raw_grad_norm,
            "learning/param_norm": l2norm(model.parameters()),
            "perf/step_time_seconds": step_time,
            "perf/per_device_tflops": per_device_tflops,
            "perf/per_device_tflops_per_sec": per_device_tflops / step_time,
            "perf/per_device_tokens": float(tokens_per_device),
            "perf/per_device_tokens_per_sec": tokens_per_device / step_time,
            "learning/current_learning_rate": lr,
        }
        mlflow.log_metrics(scal, step=step)
        print(
            f"completed step: {step}, seconds: {step_time:.3f}, "
            f"TFLOP/s/device: {scal['perf/per_device_tflops_per_sec']:.3f}, "
            f"Tokens/s/device: {scal['perf/per_device_tokens_per_sec']:.3f}, "
            f"total_weights: {int(total_weights.item())}, loss: {loss.item():.3f}",
            flush=True,
        )
        if args.eval_interval > 0 and step > 0 and (step + 1) % args.eval_interval == 0:
            run_eval(step)  # as MaxText: the eval's time falls into the next step's time
    print("Finished training.", flush=True)
data_tmp.cleanup()
