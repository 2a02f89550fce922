"""A small ByT5-style encoder-decoder pre-trained with T5X's ``train.py`` on a SeqIO
span-corruption task, its train and ``training_eval`` summaries mirrored to MLflow.

Plain torch + the plain ``mlflow`` API (no T5X, JAX or SeqIO here).  The task is
``stdlib_span_corruption``: Python's own standard-library source, read as bytes (the byte
vocabulary: pad 0, EOS 1, UNK 2, bytes 3-258, 125 sentinel ids counted down from 383), cut into
64-byte chunks, with 15% of each chunk's bytes in 3 noise spans replaced by sentinels
(``inputs``) and the spans as ``targets``.  The train split is read from the task's SeqIO cache
(preprocessed once); a split's ``validation`` examples are the last files.  The gin bindings
are logged as params (``TRAIN_STEPS``, ``BATCH_SIZE``, ``utils.create_learning_rate_scheduler
.base_learning_rate``, ``z_loss``, ...).  As T5X writes them, every ``train.eval_period``
steps the train metrics averaged over the period, with ``step`` = the step at its end:
``loss`` (cross-entropy plus z-loss, per target token), ``cross_ent_loss``, ``z_loss``,
``accuracy``, ``learning_rate``, ``nonpadding_fraction``, ``timing/seconds``,
``timing/seqs``, ``timing/seqs_per_second``, ``timing/steps_per_second`` and
``timing/target_tokens_per_second``; then, on ``train.eval_steps`` validation batches,
``training_eval/stdlib_span_corruption/loss``, ``.../cross_ent_loss``, ``.../z_loss`` and
``.../accuracy``.  Written without looking at the doctor.

Faults are real settings: ``--utils.create_learning_rate_scheduler.base_learning_rate`` far
too high; part of the mixture not in the SeqIO cache (``--mixture.uncached_from``: from that
step on every batch re-reads, decompresses and re-tokenises its gzip source shard); an
evaluation task built with another vocabulary (``--eval_vocabulary t5_spm``: SentencePiece ids
past the model's embedding table); an asynchronous checkpointer given one worker thread
(``--checkpoint.async_workers 1``: its save waits on a commit queued behind itself, and the
next save waits on it for ever).
"""

import concurrent.futures
import glob
import gzip
import math
import os
import tempfile
import time
import zlib

import _setup
import mlflow
import numpy as np
import torch
import torch.nn.functional as F

args = _setup.parse_flags(
    {
        "--seed": 0,
        "--TRAIN_STEPS": ("train_steps", 200),
        "--BATCH_SIZE": ("batch_size", 32),
        "--utils.create_learning_rate_scheduler.base_learning_rate": ("base_lr", 0.05),
        "--utils.create_learning_rate_scheduler.warmup_steps": ("warmup_steps", 100),
        "--utils.create_learning_rate_scheduler.factors": (
            "factors",
            "constant*linear_warmup*rsqrt_decay",
        ),
        "--z_loss": ("z_loss", 1e-4),
        "--dropout_rate": ("dropout_rate", 0.0),
        "--network.emb_dim": ("emb_dim", 64),
        "--network.num_layers": ("num_layers", 2),
        "--network.vocab_size": ("vocab_size", 384),
        "--train.eval_period": ("eval_period", 20),
        "--train.eval_steps": ("eval_steps", 4),
        "--mixture.uncached_from": ("uncached_from", -1),
        "--eval_vocabulary": ("eval_vocabulary", "byt5"),
        "--checkpoint.period": ("checkpoint_period", 0),
        "--checkpoint.async_workers": ("async_workers", 0),  # 0 = synchronous
    }
)
rng = _setup.seeded(args.seed)
STDLIB = os.path.dirname(os.__file__)
PAD, EOS, N_SENTINELS, VOCAB = 0, 1, 125, 384
CHUNK, NOISE, SPANS = 64, 10, 3  # 15% noise density, mean span length ~3
IN_LEN, TGT_LEN = 64, 16


def byt5_encode(data):
    return np.frombuffer(data, dtype=np.uint8).astype(np.int64) + 3


def spm_encode(data):  # the T5 SentencePiece vocabulary (32100 ids), pieces hashed to ids
    pieces = data.decode("utf-8", "replace").replace("\n", " ").split(" ")
    ids = [3 + zlib.crc32(p.encode()) % 32000 for p in pieces if p]
    return np.array(ids * (1 + CHUNK // max(1, len(ids))), dtype=np.int64)[: len(data)]


def span_corrupt(ids, r):  # T5's random_spans_noise_mask + sentinel replacement
    cuts = np.sort(r.choice(np.arange(1, NOISE), SPANS - 1, replace=False))
    noise_lens = np.diff(np.concatenate([[0], cuts, [NOISE]]))
    cuts = np.sort(r.choice(np.arange(1, CHUNK - NOISE), SPANS - 1, replace=False))
    keep_lens = np.diff(np.concatenate([[0], cuts, [CHUNK - NOISE]]))
    inp, tgt, pos = [], [], 0
    for s in range(SPANS):
        inp += list(ids[pos : pos + keep_lens[s]])
        pos += keep_lens[s]
        sentinel = VOCAB - 1 - s
        inp.append(sentinel)
        tgt += [sentinel] + list(ids[pos : pos + noise_lens[s]])
        pos += noise_lens[s]
    inp, tgt = inp + [EOS], tgt + [EOS]
    return inp + [PAD] * (IN_LEN - len(inp)), tgt + [PAD] * (TGT_LEN - len(tgt))


def examples_of(data, encode, r):
    n = len(data) // CHUNK
    out = [span_corrupt(encode(data[i * CHUNK : (i + 1) * CHUNK]), r) for i in range(n)]
    return np.array([a for a, _ in out]), np.array([b for _, b in out])


files = sorted(glob.glob(f"{STDLIB}/email/*.py") + glob.glob(f"{STDLIB}/http/*.py"))
files += sorted(glob.glob(f"{STDLIB}/logging/*.py"))
text = b"".join(open(p, "rb").read() for p in files)
valid_text = b"".join(open(p, "rb").read() for p in sorted(glob.glob(f"{STDLIB}/json/*.py")))
cache_x, cache_y = examples_of(text, byt5_encode, rng)  # the SeqIO cache of the train split
order = rng.permutation(len(cache_x))
encode_eval = spm_encode if args.eval_vocabulary == "t5_spm" else byt5_encode
val_x, val_y = examples_of(valid_text, encode_eval, np.random.default_rng(1234))
# The uncached part of the mixture: gzip TFRecord-like shards of the same sources.
SHARD = 150_000
raw_shards = [gzip.compress(text[i : i + SHARD], 6) for i in range(0, len(text) - SHARD, SHARD)]


def uncached_batch(step):  # the task's preprocessors, run for this batch on its whole shard
    shard = raw_shards[step % len(raw_shards)]
    r = np.random.default_rng(step)
    xs, ys = examples_of(gzip.decompress(shard), byt5_encode, r)  # the whole shard, again
    pick = r.choice(len(xs), args.batch_size, replace=False)
    return xs[pick], ys[pick]


def batch_at(step):
    if 0 <= args.uncached_from <= step:
        return uncached_batch(step)
    n = args.batch_size
    idx = order[(step * n) % len(order) :][:n]
    if len(idx) < n:
        idx = np.concatenate([idx, order[: n - len(idx)]])
    return cache_x[idx], cache_y[idx]


class Transformer(torch.nn.Module):  # encoder-decoder, shared embedding, untied logits
    def __init__(self):
        super().__init__()
        d = args.emb_dim
        self.token_embedder = torch.nn.Embedding(args.vocab_size, d)
        self.pos = torch.nn.Embedding(IN_LEN, d)
        layers = args.num_layers
        self.t = torch.nn.Transformer(
            d, 4, layers, layers, 4 * d, args.dropout_rate, batch_first=True, norm_first=True
        )
        self.logits_dense = torch.nn.Linear(d, args.vocab_size)
        self.mask = torch.nn.Transformer.generate_square_subsequent_mask(TGT_LEN)

    def forward(self, inputs, decoder_input_tokens):
        e = self.token_embedder(inputs) + self.pos.weight[: inputs.shape[1]]
        dt = decoder_input_tokens
        dec = self.token_embedder(dt) + self.pos.weight[: dt.shape[1]]
        h = self.t(
            e,
            dec,
            tgt_mask=self.mask,
            src_key_padding_mask=inputs == PAD,
            memory_key_padding_mask=inputs == PAD,
            tgt_is_causal=True,
        )
        return self.logits_dense(h)


model = Transformer()
opt = torch.optim.AdamW(model.parameters(), lr=1.0, betas=(0.9, 0.98), weight_decay=0.0)


def lr_at(step):  # utils.create_learning_rate_scheduler, step from 1
    lr = 1.0
    for f in args.factors.split("*"):
        if f == "constant":
            lr *= args.base_lr
        elif f == "linear_warmup":
            lr *= min(1.0, step / args.warmup_steps)
        elif f == "rsqrt_decay":
            lr /= math.sqrt(max(step, args.warmup_steps))
    return lr


def losses(x, y):
    x, y = torch.from_numpy(x), torch.from_numpy(y)
    dec_in = torch.cat([torch.zeros_like(y[:, :1]), y[:, :-1]], 1)  # shifted right
    logits = model(x, dec_in)
    w = (y != PAD).float()
    ce = F.cross_entropy(logits.reshape(-1, args.vocab_size), y.reshape(-1), reduction="none")
    log_z = torch.logsumexp(logits, -1).reshape(-1)
    n = w.sum()
    ce = (ce * w.reshape(-1)).sum() / n
    zl = args.z_loss * (log_z**2 * w.reshape(-1)).sum() / n
    acc = ((logits.argmax(-1) == y).float() * w).sum() / n
    return ce + zl, ce.item(), zl.item(), acc.item(), n.item(), w.numel()


class Checkpointer:  # a save writes the state; its commit (rename) is queued on the same pool
    def __init__(self, workers):
        self.dir = tempfile.mkdtemp(prefix="t5x_model_dir_")
        self.pool = concurrent.futures.ThreadPoolExecutor(workers) if workers else None
        self.pending = None

    def _save(self, step, state):
        tmp = os.path.join(self.dir, f"checkpoint_{step}.orbax-checkpoint-tmp")
        torch.save(state, tmp)
        commit = self.pool.submit(os.replace, tmp, os.path.join(self.dir, f"checkpoint_{step}"))
        commit.result()

    def save(self, step):
        state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        if self.pool is None:
            torch.save(state, os.path.join(self.dir, f"checkpoint_{step}"))
            return
        if self.pending is not None:
            self.pending.result()  # wait for the previous save before starting another
        self.pending = self.pool.submit(self._save, step, state)


def evaluate():
    model.eval()
    tot = {"loss": 0.0, "cross_ent_loss": 0.0, "z_loss": 0.0, "accuracy": 0.0}
    with torch.no_grad():
        for b in range(args.eval_steps):
            sl = slice(b * args.batch_size, (b + 1) * args.batch_size)
            loss, ce, zl, acc, _, _ = losses(val_x[sl], val_y[sl])
            for k, v in zip(tot, (loss.item(), ce, zl, acc), strict=True):
                tot[k] += v / args.eval_steps
    model.train()
    return {f"training_eval/stdlib_span_corruption/{k}": v for k, v in tot.items()}


with mlflow.start_run():
    mlflow.log_params(
        {
            "MIXTURE_OR_TASK_NAME": "stdlib_span_corruption",
            "TASK_FEATURE_LENGTHS": f"{{'inputs': {IN_LEN}, 'targets': {TGT_LEN}}}",
            "TRAIN_STEPS": args.train_steps,
            "BATCH_SIZE": args.batch_size,
            "DROPOUT_RATE": args.dropout_rate,
            "USE_CACHED_TASKS": args.uncached_from < 0,
            "network.T5Config.emb_dim": args.emb_dim,
            "network.T5Config.num_encoder_layers": args.num_layers,
            "network.T5Config.num_decoder_layers": args.num_layers,
            "network.T5Config.vocab_size": args.vocab_size,
            "models.EncoderDecoderModel.z_loss": args.z_loss,
            "OPTIMIZER": "adamw",
            "utils.create_learning_rate_scheduler.base_learning_rate": args.base_lr,
            "utils.create_learning_rate_scheduler.warmup_steps": args.warmup_steps,
            "utils.create_learning_rate_scheduler.factors": args.factors,
            "train.eval_period": args.eval_period,
            "train.eval_steps": args.eval_steps,
            "utils.SaveCheckpointConfig.period": args.checkpoint_period,
            "seed": args.seed,
        }
    )
    print(f"I absl: {len(cache_x)} cached train examples; eval on {len(val_x)}", flush=True)
    ckpt = Checkpointer(args.async_workers)
    acc_m = {"loss": 0.0, "cross_ent_loss": 0.0, "z_loss": 0.0, "accuracy": 0.0}
    nonpad, tokens, seqs_total = 0.0, 0, 0
    t_period = time.time()
    for step in range(1, args.train_steps + 1):
        x, y = batch_at(step - 1)
        for g in opt.param_groups:
            g["lr"] = lr_at(step)
        loss, ce, zl, acc, n, numel = losses(x, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        for k, v in zip(acc_m, (loss.item(), ce, zl, acc), strict=True):
            acc_m[k] += v
        nonpad += n / numel
        tokens += n
        seqs_total += len(x)
        if step % args.eval_period == 0:
            secs = time.time() - t_period
            p = args.eval_period
            summary = {k: v / p for k, v in acc_m.items()}
            summary.update(
                {
                    "learning_rate": lr_at(step),
                    "nonpadding_fraction": nonpad / p,
                    "timing/seconds": secs,
                    "timing/seqs": seqs_total,
                    "timing/seqs_per_second": p * args.batch_size / secs,
                    "timing/steps_per_second": p / secs,
                    "timing/target_tokens_per_second": tokens / secs,
                }
            )
            mlflow.log_metrics(summary, step=step)
            print(
                f"I absl: [{step}] loss={summary['loss']:.4f} accuracy={summary['accuracy']:.4f} "
                f"seqs/s={summary['timing/seqs_per_second']:.1f}",
                flush=True,
            )
            ev = evaluate()
            mlflow.log_metrics(ev, step=step)
            print(f"I absl: [{step}] training_eval {ev}", flush=True)
            acc_m = dict.fromkeys(acc_m, 0.0)
            nonpad, tokens = 0.0, 0
            t_period = time.time()
        if args.checkpoint_period and step % args.checkpoint_period == 0:
            print(f"I absl: Saving checkpoint for step {step}", flush=True)
            ckpt.save(step)
    if ckpt.pending is not None:
        ckpt.pending.result()
    print("I absl: Finished training.", flush=True)
