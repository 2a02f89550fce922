"""A CTC acoustic model trained as a k2/icefall recipe's ``train.py`` trains one on Lhotse cuts,
its ``tb_writer`` scalars mirrored to MLflow by the team's writer.

Plain PyTorch + numpy + the plain ``mlflow`` API (no k2, no icefall, no Lhotse here).  What is
imitated:

* the recipe's ``params``: ``base_lr`` with the ``Eden`` scheduler (``lr_batches``,
  ``lr_epochs``, warm-up from 0.5x over ``warmup_batches``), ``num_epochs``, ``max_duration``
  (seconds of audio a batch, 100 frames a second, as Lhotse's ``DynamicBucketingSampler``
  packs cuts), ``log_interval``, ``valid_interval``, ``reset_interval``, ``clip_grad_norm``;
  a ``Conv2dSubsampling``-like front end (x2 in time here) + a small Transformer encoder +
  a CTC output layer over the BPE tokens (blank = 0), ``torch.nn.CTCLoss(reduction="sum")``;
* ``MetricsTracker``: ``loss_info["frames"]`` (frames after subsampling), ``loss_info["loss"]``,
  ``loss_info["ctc_loss"]``; ``tot_loss = tot_loss * (1 - 1 / reset_interval) + loss_info``;
  ``write_summary`` writes each summed item divided by the frames: at every ``log_interval``-th
  batch of an epoch ``train/learning_rate``, ``train/current_loss``, ``train/current_ctc_loss``,
  ``train/tot_loss``, ``train/tot_ctc_loss``; at every ``valid_interval``-th
  ``train/valid_loss`` and ``train/valid_ctc_loss``; all at ``step = params.batch_idx_train``
  (from 1); the team's writer adds ``train/frames_per_sec`` (input frames a second since the
  last write), which icefall only prints;
* the console's ``Epoch 1, batch 50, loss[loss=0.412, ctc_loss=0.412, over 2400.00 frames. ],
  tot_loss[...], batch size: 24, lr: 2.1e-03`` lines.

Data: generated utterances (a 40-token BPE vocabulary, each token a 40-bin log-mel prototype
held 3-7 frames, with noise and speaker gain); features are written by the team's extraction
job as mel power (``exp`` of the log-mel) in ``storage_dtype`` and log-compressed on load, as
its ``PowerFbank`` + ``log1p`` front end does; a few recordings are loud (clipped gain).
Written without looking at the doctor.

Faults are real settings, data and code paths: ``--base_lr``; ``--storage_dtype`` (float16 to
halve the feature archive); ``--resumable_sampler`` (the team's sampler that records every
consumed cut for resumption and writes its state every batch).
"""

import json
import time

import _setup
import mlflow
import numpy as np
import torch

args = _setup.parse_flags(
    {
        "--seed": 42,
        "--num_cuts": 2000,
        "--num_valid": 200,
        "--num_epochs": 4,
        "--max_duration": 12.0,  # seconds a batch
        "--base_lr": 2e-3,
        "--lr_batches": 500.0,
        "--lr_epochs": 4.0,
        "--warmup_batches": 100,
        "--d_model": 96,
        "--num_layers": 2,
        "--clip_grad_norm": 5.0,
        "--log_interval": 10,
        "--valid_interval": 50,
        "--reset_interval": 200,
        "--noise": 2.0,
        "--loud_frac": 0.0015,
        "--storage_dtype": "float32",
        "--resumable_sampler": 0,
    }
)
rng = _setup.seeded(args.seed)
N_TOK, N_MEL = 40, 40

# ----------------------------------------------------------------------------- data
drng = np.random.default_rng(11)  # the same language for every run
protos = drng.normal(0, 1.5, (N_TOK, N_MEL))


def make_cuts(n, r):
    cuts = []
    for i in range(n):
        toks = r.integers(1, N_TOK, r.integers(5, 16))
        durs = r.integers(3, 8, len(toks))
        feats = np.repeat(protos[toks], durs, axis=0)
        feats = feats + r.normal(0, args.noise, feats.shape)
        gain = r.uniform(-1, 1) + (10.5 if r.uniform() < args.loud_frac else 0.0)
        logmel = feats + gain - 3.0  # about -12 .. 6 (loud: up to 17)
        power = np.exp(logmel).astype(args.storage_dtype)  # the archive's PowerFbank
        align = np.repeat(toks, durs).tolist()
        cuts.append({"id": f"cut-{i:05d}", "feats": power, "tokens": toks, "align": align})
    return cuts


train_cuts = make_cuts(args.num_cuts, np.random.default_rng(args.seed + 1))
valid_cuts = make_cuts(args.num_valid, np.random.default_rng(999))


def load_feats(cut):
    return np.log1p(cut["feats"].astype(np.float32))


class DynamicBucketingSampler:
    def __init__(self, cuts, r):
        self.cuts, self.r, self.epoch, self.consumed = cuts, r, 0, []

    def entry(self, i):  # the cut as the state records it: id, duration, supervision
        c = self.cuts[i]
        return {
            "epoch": self.epoch,
            "id": c["id"],
            "duration": len(c["feats"]) / 100,
            "supervision": {"tokens": c["tokens"].tolist(), "alignment": c["align"]},
        }

    def set_epoch(self, e):
        self.epoch = e

    def __iter__(self):
        order = self.r.permutation(len(self.cuts))
        order = sorted(order, key=lambda i: len(self.cuts[i]["feats"]) // 10 + self.r.uniform())
        batches, cur, dur = [], [], 0.0
        for i in order:
            d = len(self.cuts[i]["feats"]) / 100
            if dur + d > args.max_duration and cur:
                batches.append(cur)
                cur, dur = [], 0.0
            cur.append(i)
            dur += d
        if cur:
            batches.append(cur)
        for b in self.r.permutation(len(batches)):
            batch = batches[b]
            if args.resumable_sampler:
                entries = [self.entry(i) for i in batch]
                batch = [i for i, e in zip(batch, entries, strict=True) if e not in self.consumed]
                self.consumed += entries
                with open("sampler_state.json", "w") as f:
                    json.dump({"epoch": self.epoch, "consumed": self.consumed}, f, indent=2)
            yield [self.cuts[i] for i in batch]


def collate(cuts):
    feats = [torch.from_numpy(load_feats(c)) for c in cuts]
    lens = torch.tensor([len(f) for f in feats])
    x = torch.nn.utils.rnn.pad_sequence(feats, batch_first=True)
    ys = torch.from_numpy(np.concatenate([c["tokens"] for c in cuts]))
    ylens = torch.tensor([len(c["tokens"]) for c in cuts])
    return x, lens, ys, ylens


# ----------------------------------------------------------------------------- model
class CtcModel(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.norm = torch.nn.LayerNorm(N_MEL)
        self.subsample = torch.nn.Conv1d(N_MEL, args.d_model, 3, stride=2, padding=1)
        layer = torch.nn.TransformerEncoderLayer(
            args.d_model, 4, 2 * args.d_model, dropout=0.1, batch_first=True
        )
        self.encoder = torch.nn.TransformerEncoder(layer, args.num_layers)
        self.out = torch.nn.Linear(args.d_model, N_TOK)

    def forward(self, x, lens):
        x = self.subsample(self.norm(x).transpose(1, 2)).transpose(1, 2).relu()
        olens = (lens + 1) // 2
        mask = torch.arange(x.shape[1])[None] >= olens[:, None]
        x = self.encoder(x, src_key_padding_mask=mask)
        return self.out(x).log_softmax(-1), olens


model = CtcModel()
ctc = torch.nn.CTCLoss(blank=0, reduction="sum", zero_infinity=False)
optim = torch.optim.Adam(model.parameters(), lr=args.base_lr, betas=(0.9, 0.98), eps=1e-8)


def eden(batch, epoch):
    f_b = ((batch**2 + args.lr_batches**2) / args.lr_batches**2) ** -0.25
    f_e = ((epoch**2 + args.lr_epochs**2) / args.lr_epochs**2) ** -0.25
    warm = 1.0 if batch >= args.warmup_batches else 0.5 + 0.5 * batch / args.warmup_batches
    return args.base_lr * f_b * f_e * warm


def compute_loss(batch, train):
    x, lens, ys, ylens = collate(batch)
    logp, olens = model(x, lens)
    loss = ctc(logp.transpose(0, 1), ys, olens, ylens)
    frames = float(olens.sum())
    return loss, {"frames": frames, "loss": loss.item(), "ctc_loss": loss.item()}


def summary(info):
    return {k: v / info["frames"] for k, v in info.items() if k != "frames"}


def fmt(info):
    s = summary(info)
    return f"loss={s['loss']:.4g}, ctc_loss={s['ctc_loss']:.4g}, over {info['frames']:.2f} frames. "


def validate():
    model.eval()
    tot = {"frames": 0.0, "loss": 0.0, "ctc_loss": 0.0}
    with torch.no_grad():
        for s in range(0, len(valid_cuts), 25):
            _, info = compute_loss(valid_cuts[s : s + 25], False)
            for k in tot:
                tot[k] += info[k]
    model.train()
    return tot


with mlflow.start_run():
    mlflow.log_params(vars(args))
    sampler = DynamicBucketingSampler(train_cuts, rng)
    batch_idx_train, t_last, frames_since = 0, time.time(), 0
    for epoch in range(1, args.num_epochs + 1):
        sampler.set_epoch(epoch)
        tot_loss = {"frames": 0.0, "loss": 0.0, "ctc_loss": 0.0}
        for batch_idx, batch in enumerate(sampler):
            batch_idx_train += 1
            lr = eden(batch_idx_train, epoch - 1)
            for g in optim.param_groups:
                g["lr"] = lr
            loss, info = compute_loss(batch, True)
            optim.zero_grad()
            loss.backward()
            if args.clip_grad_norm > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), args.clip_grad_norm)
            optim.step()
            frames_since += sum(len(c["feats"]) for c in batch)
            tot_loss = {k: v * (1 - 1 / args.reset_interval) + info[k] for k, v in tot_loss.items()}
            if batch_idx % args.log_interval == 0:
                now = time.time()
                m = {"train/learning_rate": lr}
                m.update({f"train/current_{k}": v for k, v in summary(info).items()})
                m.update({f"train/tot_{k}": v for k, v in summary(tot_loss).items()})
                m["train/frames_per_sec"] = frames_since / max(1e-9, now - t_last)
                mlflow.log_metrics(m, step=batch_idx_train)
                t_last, frames_since = now, 0
                print(
                    f"Epoch {epoch}, batch {batch_idx}, loss[{fmt(info)}], "
                    f"tot_loss[{fmt(tot_loss)}], batch size: {len(batch)}, lr: {lr:.2e}",
                    flush=True,
                )
            if batch_idx % args.valid_interval == 0:
                v = validate()
                mlflow.log_metrics(
                    {f"train/valid_{k}": x for k, x in summary(v).items()}, step=batch_idx_train
                )
                print(f"Epoch {epoch}, validation: {fmt(v)}", flush=True)
        print(f"Epoch {epoch} done: {batch_idx + 1} batches", flush=True)
    print("Done!", flush=True)
