"""A small wav2vec2-like acoustic model fine-tuned with CTC, as the team's loop around
torchaudio's ``wav2vec2`` fine-tuning recipe does it, its scalars mirrored to MLflow.

Plain PyTorch + numpy + the plain ``mlflow`` API (no torchaudio here).  What is imitated:

* the model: a convolutional feature encoder over the waveform's frames (torchaudio's
  ``ConvFeatureExtractionModel``, here two strided 1-D convolutions over log-mel-like frames),
  a projection, a small transformer encoder and the CTC head (``aux`` linear layer over the
  character vocabulary plus blank 0);
* the recipe: ``torch.nn.CTCLoss(blank=0, zero_infinity=False)`` on the log-softmax outputs,
  AdamW, a tri-stage schedule (warm-up ``warmup_updates``, hold, exponential decay over the
  last half), gradient clipping at ``clip_norm`` (0 = none), batches of ``batch_size``
  utterances padded to the longest;
* the scalars the team's Lightning-free loop writes every ``log_interval`` updates at
  ``step = num_updates``: ``Losses/ctc_loss`` (the batch's CTC loss per utterance),
  ``Gradient Norm`` (before clipping), ``Learning Rate``, ``utts_per_sec``; every
  ``valid_interval`` updates ``Validation/ctc_loss`` and ``Validation/wer`` (greedy CTC decode,
  word error rate over the dev set) and ``Validation/cer``.

Data: generated "speech": words from a 40-word vocabulary over a 12-letter alphabet, each
letter a short tone chord with its own spectral pattern, random durations and noise, stored as
int16 PCM-like frames; features are the log of the frames' band energies, computed from the
int16 samples scaled to [-1, 1].  Written without looking at the doctor.

Team options (faults are real settings, data and code paths): ``--lr``; ``--clip_norm``;
``--feature_dtype float16`` (the new feature pipeline's half-precision band energies of the
unscaled int16 samples); ``--extra_shard_update k`` with ``--extra_shard_transcripts shifted``
(a newly delivered shard whose transcript list is off by one against its audio files;
``truncated_audio``: a shard whose export cut every file after 8 frames, transcripts whole).
"""

import time

import _setup
import mlflow
import numpy as np
import torch

args = _setup.parse_flags(
    {
        "--seed": 0,
        "--n_train": 1200,
        "--n_dev": 100,
        "--d_model": 48,
        "--n_layers": 1,
        "--batch_size": 16,
        "--lr": 3e-3,
        "--warmup_updates": 40,
        "--max_updates": 300,
        "--clip_norm": 5.0,
        "--log_interval": 5,
        "--valid_interval": 50,
        "--feature_dtype": "float32",
        "--extra_shard_update": 0,
        "--extra_shard_transcripts": "aligned",  # aligned | shifted | truncated_audio
    }
)
rng = _setup.seeded(args.seed)

ALPHA = "abdeiklmnorst"[:12]
N_BANDS = 24
drng = np.random.default_rng(3)
words = ["".join(drng.choice(list(ALPHA), drng.integers(2, 5))) for _ in range(40)]
patterns = drng.uniform(0.05, 1.0, (len(ALPHA), N_BANDS)) ** 2


def utterance(r, text=None):
    ws = text.split() if text else list(r.choice(words, r.integers(2, 5)))
    frames = []
    for wi, w in enumerate(ws):
        if wi:
            frames += [np.zeros(N_BANDS)] * int(r.integers(2, 4))
        for ch in w:
            frames += [patterns[ALPHA.index(ch)] * r.uniform(0.6, 1.0)] * int(r.integers(3, 6))
    amp = np.array(frames) * 20000 + np.abs(r.normal(0, 300, (len(frames), N_BANDS)))
    return np.minimum(amp, 32767).astype(np.int16), " ".join(ws)


def features(pcm):
    if args.feature_dtype == "float16":  # the new pipeline: band energy of the raw samples
        e = pcm.astype(np.float16) ** 2
    else:
        e = (pcm.astype(np.float32) / 32768.0) ** 2
    return np.log(e.astype(np.float32) + 1e-6)


def encode(text):
    return [1 + ALPHA.index(c) if c != " " else len(ALPHA) + 1 for c in text]


VOCAB = len(ALPHA) + 2  # blank, letters, space
dr = np.random.default_rng(100)
train = [utterance(dr) for _ in range(args.n_train)]
dev = [utterance(dr) for _ in range(args.n_dev)]
extra = [utterance(dr) for _ in range(300)]
if args.extra_shard_transcripts == "shifted":
    texts = [t for _, t in extra]
    extra = [(a, texts[(i + 1) % len(texts)]) for i, (a, _) in enumerate(extra)]
elif args.extra_shard_transcripts == "truncated_audio":  # the export cut the audio at 8 frames
    extra = [(a[:8], t) for a, t in extra]


class Model(torch.nn.Module):
    def __init__(self, d):
        super().__init__()
        self.conv = torch.nn.Sequential(
            torch.nn.Conv1d(N_BANDS, d, 3, padding=1),
            torch.nn.GELU(),
            torch.nn.Conv1d(d, d, 3, padding=1),
            torch.nn.GELU(),
        )
        self.norm = torch.nn.LayerNorm(d)
        self.enc = torch.nn.TransformerEncoder(
            torch.nn.TransformerEncoderLayer(d, 4, 2 * d, dropout=0.1, batch_first=True),
            args.n_layers,
        )
        self.aux = torch.nn.Linear(d, VOCAB)

    def forward(self, x):
        h = self.conv(x.transpose(1, 2)).transpose(1, 2)
        return self.aux(self.enc(self.norm(h))).log_softmax(-1)


def batchify(items):
    feats = [features(a) for a, _ in items]
    T = max(len(f) for f in feats)
    x = np.zeros((len(items), T, N_BANDS), np.float32)
    for i, f in enumerate(feats):
        x[i, : len(f)] = f
    tg = [encode(t) for _, t in items]
    return (
        torch.from_numpy(x),
        torch.tensor([len(f) for f in feats]),
        torch.tensor([c for t in tg for c in t]),
        torch.tensor([len(t) for t in tg]),
    )


def greedy(lp, n):
    out = []
    for seq, L in zip(lp.argmax(-1).numpy(), n.numpy(), strict=True):
        prev, s = 0, []
        for k in seq[:L]:
            if k != prev and k != 0:
                s.append(" " if k == len(ALPHA) + 1 else ALPHA[k - 1])
            prev = k
        out.append("".join(s))
    return out


def edit(a, b):
    d = list(range(len(b) + 1))
    for i in range(1, len(a) + 1):
        prev, d[0] = d[0], i
        for j in range(1, len(b) + 1):
            prev, d[j] = d[j], min(d[j] + 1, d[j - 1] + 1, prev + (a[i - 1] != b[j - 1]))
    return d[-1]


model = Model(args.d_model)
opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01)
ctc = torch.nn.CTCLoss(blank=0, reduction="mean")


def lr_at(u):
    if u <= args.warmup_updates:
        return args.lr * u / args.warmup_updates
    half = args.max_updates // 2
    if u <= half:
        return args.lr
    return args.lr * 0.05 ** ((u - half) / (args.max_updates - half))


def validate():
    model.eval()
    tot, we, wn, ce, cn = 0.0, 0, 0, 0, 0
    with torch.no_grad():
        for b in range(0, len(dev), 50):
            items = dev[b : b + 50]
            x, xl, y, yl = batchify(items)
            lp = model(x)
            tot += float(ctc(lp.transpose(0, 1), y, xl, yl)) * len(items)
            for hyp, (_, ref) in zip(greedy(lp, xl), items, strict=True):
                we += edit(hyp.split(), ref.split())
                wn += len(ref.split())
                ce += edit(hyp, ref)
                cn += len(ref)
    model.train()
    return tot / len(dev), we / wn, ce / cn


with mlflow.start_run():
    mlflow.log_params(vars(args))
    print(f"train {len(train)} utts, dev {len(dev)} utts, vocab {VOCAB}", flush=True)
    pool = list(train)
    t_last = time.time()
    for u in range(1, args.max_updates + 1):
        if args.extra_shard_update and u == args.extra_shard_update:
            pool = pool + extra
            print(f"update {u}: extra shard added, {len(pool)} utts", flush=True)
        items = [pool[i] for i in rng.choice(len(pool), args.batch_size, replace=False)]
        x, xl, y, yl = batchify(items)
        for g in opt.param_groups:
            g["lr"] = lr_at(u)
        lp = model(x)
        loss = ctc(lp.transpose(0, 1), y, xl, yl)
        opt.zero_grad()
        loss.backward()
        if args.clip_norm:
            gn = float(torch.nn.utils.clip_grad_norm_(model.parameters(), args.clip_norm))
        else:
            gn = float(torch.norm(torch.stack([p.grad.norm() for p in model.parameters()])))
        opt.step()
        if u % args.log_interval == 0:
            now = time.time()
            mlflow.log_metrics(
                {
                    "Losses/ctc_loss": loss.item(),
                    "Gradient Norm": gn,
                    "Learning Rate": lr_at(u),
                    "utts_per_sec": args.log_interval * args.batch_size / max(now - t_last, 1e-6),
                },
                step=u,
            )
            t_last = now
        if u % args.valid_interval == 0:
            vl, wer, cer = validate()
            mlflow.log_metrics(
                {"Validation/ctc_loss": vl, "Validation/wer": wer, "Validation/cer": cer}, step=u
            )
            print(
                f"num_updates {u}: ctc_loss {loss.item():.4f} | valid ctc_loss {vl:.4f} wer {wer:.3f} cer {cer:.3f}",
                flush=True,
            )
            t_last = time.time()
    print("training done", flush=True)
