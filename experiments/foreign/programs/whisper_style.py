"""A Whisper-style fine-tune with Hugging Face's ``Seq2SeqTrainer`` as the "Fine-Tune Whisper
For Multilingual ASR with Transformers" blog writes it, on a tiny encoder-decoder, the
Trainer's ``MLflowCallback`` rows re-created by the team.

Plain PyTorch + the plain ``mlflow`` API (no transformers import here).  What is imitated:

* the model: a convolutional stem over log-mel frames, a Transformer encoder, a Transformer
  decoder over the transcript's word tokens (``<|startoftranscript|>`` ... ``<|endoftext|>``),
  teacher forcing with the labels shifted right, padding positions set to -100;
* ``Seq2SeqTrainingArguments``: ``learning_rate``, ``warmup_steps`` then linear decay,
  ``max_steps``, ``per_device_train_batch_size``, ``logging_steps``, ``eval_steps``,
  ``predict_with_generate`` (greedy decoding), ``max_grad_norm`` 1.0, AdamW;
* ``compute_metrics``: ``wer`` = 100 x word edit distance / reference words;
* what the ``MLflowCallback`` logs at step = global_step: ``loss`` (the mean since the last
  log), ``grad_norm`` (the total norm before clipping at the logging step), ``learning_rate``,
  ``epoch`` (fractional) every ``logging_steps``; ``eval_loss``, ``eval_wer``, ``eval_runtime``,
  ``eval_samples_per_second``, ``eval_steps_per_second`` every ``eval_steps``;
  ``train_runtime``, ``train_samples_per_second``, ``train_steps_per_second``, ``train_loss``
  (the mean over all steps) at the end.

Data: generated clips of short "spoken" digit strings (3-5 digits): every digit word has its own
log-mel pattern (16 mel bins, 4-6 frames, a speaker-dependent gain and tilt, noise); the
transcripts are the digit words.  Written without looking at the doctor.

Team options (the faults are real settings, data and code paths):

* ``--learning_rate``, ``--per_device_train_batch_size``, ``--d_model``, ``--warmup_steps``,
  ``--max_steps``, ``--eval_size``, ``--lr_scheduler_type`` (linear, constant_with_warmup),
  ``--num_train_clips`` (the training set's size);
* ``--extra_split_step k``: a second recording session's clips (``train.other``) join the
  training set at step k; ``--extra_transcript_offset`` the row offset at which its transcript
  file is read against its clip list (0 = aligned);
* ``--metric_for_best_model`` (with ``load_best_model_at_end``): the metric the Trainer reads at
  every evaluation to track the best checkpoint.
"""

import math
import time

import _setup
import mlflow
import numpy as np
import torch
import torch.nn as nn
from torch.nn import functional as F

args = _setup.parse_flags(
    {
        "--seed": 0,
        "--learning_rate": 2e-3,
        "--per_device_train_batch_size": 32,
        "--d_model": 64,
        "--warmup_steps": 30,
        "--max_steps": 300,
        "--logging_steps": 10,
        "--eval_steps": 50,
        "--eval_size": 200,
        "--lr_scheduler_type": "linear",
        "--num_train_clips": 3000,
        "--extra_split_step": 0,
        "--extra_transcript_offset": 0,
        "--metric_for_best_model": "wer",
        "--max_grad_norm": 1.0,
    }
)
rng = _setup.seeded(args.seed)

PAD, SOT, EOT = 0, 1, 2
WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
N_MELS, MAX_FRAMES, MAX_TOK = 16, 30, 6
protos = np.random.default_rng(2024).normal(0, 1, (10, 6, N_MELS)).astype(np.float32)


def make_clips(n, seed):
    g = np.random.default_rng(seed)
    feats = np.zeros((n, MAX_FRAMES, N_MELS), np.float32)
    labels = np.full((n, MAX_TOK), -100, np.int64)
    for i in range(n):
        digits = g.integers(0, 10, g.integers(3, 6))
        gain, tilt = g.normal(1, 0.15), g.normal(0, 0.1)
        frames = []
        for dgt in digits:
            length = g.integers(4, 7)
            idx = np.linspace(0, 5, length).round().astype(int)
            frames.append(protos[dgt][idx] * gain + tilt * np.linspace(-1, 1, N_MELS))
        f = np.concatenate(frames)[:MAX_FRAMES]
        feats[i, : len(f)] = f + g.normal(0, 0.4, f.shape)
        toks = [d + 3 for d in digits] + [EOT]
        labels[i, : len(toks)] = toks
    return torch.tensor(feats), torch.tensor(labels)


def sinusoids(length, channels):
    inc = np.log(10000) / (channels // 2 - 1)
    inv = torch.exp(-inc * torch.arange(channels // 2))
    t = torch.arange(length)[:, None] * inv[None, :]
    return torch.cat([torch.sin(t), torch.cos(t)], dim=1)


class TinyWhisper(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.conv1 = nn.Conv1d(N_MELS, d, 3, padding=1)
        self.conv2 = nn.Conv1d(d, d, 3, padding=1)
        self.register_buffer("enc_pos", sinusoids(MAX_FRAMES, d))  # fixed, as Whisper's
        self.dec_pos = nn.Parameter(torch.randn(MAX_TOK + 1, d) * 0.02)
        self.embed = nn.Embedding(13, d)
        enc = nn.TransformerEncoderLayer(d, 4, 4 * d, 0.0, batch_first=True, norm_first=True)
        dec = nn.TransformerDecoderLayer(d, 4, 4 * d, 0.0, batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(enc, 2, enable_nested_tensor=False)
        self.decoder = nn.TransformerDecoder(dec, 2)
        self.ln = nn.LayerNorm(d)
        nn.init.normal_(self.embed.weight, std=0.1)  # tied with the output projection

    def encode(self, x):
        h = F.gelu(self.conv2(F.gelu(self.conv1(x.transpose(1, 2))))).transpose(1, 2)
        return self.encoder(h + self.enc_pos)

    def decode(self, mem, tok):
        n = tok.shape[1]
        mask = torch.triu(torch.full((n, n), float("-inf")), 1)
        h = self.decoder(self.embed(tok) + self.dec_pos[:n], mem, tgt_mask=mask)
        return self.ln(h) @ self.embed.weight.T

    def forward(self, x, labels):
        dec_in = torch.cat([torch.full((len(x), 1), SOT), labels[:, :-1].clamp(min=0)], 1)
        logits = self.decode(self.encode(x), dec_in)
        return F.cross_entropy(logits.reshape(-1, 13), labels.reshape(-1), ignore_index=-100)

    @torch.no_grad()
    def generate(self, x):
        mem = self.encode(x)
        tok = torch.full((len(x), 1), SOT)
        for _ in range(MAX_TOK):
            nxt = self.decode(mem, tok)[:, -1].argmax(-1, keepdim=True)
            tok = torch.cat([tok, nxt], 1)
        return tok[:, 1:]


def words(seq):
    out = []
    for t in seq:
        if t == EOT or t < 3:
            break
        out.append(int(t))
    return out


def edit_distance(a, b):
    dp = list(range(len(b) + 1))
    for i in range(1, len(a) + 1):
        prev, dp[0] = dp[0], i
        for j in range(1, len(b) + 1):
            cur = dp[j]
            dp[j] = min(dp[j] + 1, dp[j - 1] + 1, prev + (a[i - 1] != b[j - 1]))
            prev = cur
    return dp[-1]


def compute_metrics(pred, labels):
    errs = sum(
        edit_distance(words(p), words(r))
        for p, r in zip(pred.tolist(), labels.tolist(), strict=True)
    )
    total = sum(len(words(r)) for r in labels.tolist())
    return {"wer": 100.0 * errs / total}


Xtr, Ytr = make_clips(args.num_train_clips, 100 + args.seed)
Xev, Yev = make_clips(args.eval_size, 999)
model = TinyWhisper(args.d_model)
optimizer = torch.optim.AdamW(model.parameters(), lr=args.learning_rate, weight_decay=0.0)


def lr_lambda(step):
    if step < args.warmup_steps:
        return step / max(1, args.warmup_steps)
    if args.lr_scheduler_type == "constant_with_warmup":
        return 1.0
    return max(0.0, (args.max_steps - step) / max(1, args.max_steps - args.warmup_steps))


scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda)


def evaluate():
    t0 = time.time()
    model.eval()
    with torch.no_grad():
        loss = model(Xev, Yev).item()
    pred = model.generate(Xev)
    model.train()
    metrics = {"eval_loss": loss}
    metrics.update({f"eval_{k}": v for k, v in compute_metrics(pred, Yev).items()})
    rt = time.time() - t0
    bs = 8
    metrics.update(
        {
            "eval_runtime": round(rt, 4),
            "eval_samples_per_second": round(len(Xev) / rt, 3),
            "eval_steps_per_second": round(math.ceil(len(Xev) / bs) / rt, 3),
        }
    )
    return metrics


with mlflow.start_run():
    mlflow.log_params(vars(args))
    bs = args.per_device_train_batch_size
    X, Y = Xtr, Ytr
    order, pos, epoch_f = rng.permutation(len(X)), 0, 0.0
    print(f"***** Running training *****\n  Num examples = {len(X)}", flush=True)
    t_start = time.time()
    window, all_losses, best = [], [], None
    for step in range(1, args.max_steps + 1):
        if args.extra_split_step and step == args.extra_split_step:
            xo, yo = make_clips(1500, 7000 + args.seed)
            # the transcript file is read against the clip list at a row offset
            yo = torch.roll(yo, args.extra_transcript_offset, dims=0)
            X, Y = torch.cat([Xtr, xo]), torch.cat([Ytr, yo])
            order, pos = rng.permutation(len(X)), 0
            print(f"step {step}: train.other joined, {len(X)} examples", flush=True)
        if pos + bs > len(order):
            order, pos = rng.permutation(len(X)), 0
        idx = order[pos : pos + bs]
        pos += bs
        epoch_f += bs / len(X)
        loss = model(X[idx], Y[idx])
        optimizer.zero_grad()
        loss.backward()
        gn = nn.utils.clip_grad_norm_(model.parameters(), args.max_grad_norm).item()
        optimizer.step()
        lr_used = scheduler.get_last_lr()[0]
        scheduler.step()
        window.append(loss.item())
        all_losses.append(loss.item())
        if step % args.logging_steps == 0:
            row = {
                "loss": round(float(np.mean(window)), 4),
                "grad_norm": gn,
                "learning_rate": lr_used,
                "epoch": round(epoch_f, 4),
            }
            mlflow.log_metrics(row, step=step)
            print(row, flush=True)
            window = []
        if step % args.eval_steps == 0:
            metrics = evaluate()
            mlflow.log_metrics(metrics, step=step)
            print(metrics, flush=True)
            # load_best_model_at_end: the Trainer reads the metric it tracks by name
            key = args.metric_for_best_model
            if not key.startswith("eval_"):
                key = f"eval_{key}"
            value = metrics[key]
            if best is None or value < best:
                best = value
    rt = time.time() - t_start
    end = {
        "train_runtime": round(rt, 4),
        "train_samples_per_second": round(args.max_steps * bs / rt, 3),
        "train_steps_per_second": round(args.max_steps / rt, 3),
        "train_loss": float(np.mean(all_losses)),
        "epoch": round(epoch_f, 4),
    }
    mlflow.log_metrics(end, step=args.max_steps)
    print(end, flush=True)
