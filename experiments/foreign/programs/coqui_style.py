"""A small FastSpeech-like text-to-mel model trained as Coqui's 🐸 Trainer trains a ``ForwardTTS``,
its ``MLFlowLogger`` dashboard metrics written name for name.

Plain PyTorch + numpy + the plain ``mlflow`` API (no Coqui here).  What is imitated, as the
Trainer and ``trainer/logging/mlflow_logger.py`` log it:

* ``BaseDashboardLogger.train_step_stats`` -> ``add_scalars("TrainIterStats", ...)``, which the
  MLflow logger writes as ``"{scope_name}-{key}"``: ``TrainIterStats-loss``,
  ``TrainIterStats-loss_spec``, ``TrainIterStats-loss_dur`` (``ForwardTTSLoss``'s keys),
  ``TrainIterStats-grad_norm``, ``TrainIterStats-current_lr``, ``TrainIterStats-step_time``,
  ``TrainIterStats-loader_time``, every ``plot_step`` steps at step = ``total_steps_done``;
* after each epoch ``train_epoch_stats`` -> ``TrainEpochStats-epoch_time`` and the
  ``KeepAverage`` means ``TrainEpochStats-avg_loss``, ``-avg_loss_spec``, ``-avg_loss_dur``,
  ``-avg_grad_norm``, ``-avg_loader_time``, ``-avg_step_time``;
* after each epoch's evaluation ``eval_stats`` -> ``EvalStats-avg_loss``,
  ``EvalStats-avg_loss_spec``, ``EvalStats-avg_loss_dur``, ``EvalStats-avg_loader_time``,
  ``EvalStats-avg_step_time`` (all at step = ``total_steps_done``);
* the console logger's ``> EPOCH: 3/40``, ``--> STEP: 20/25 -- GLOBAL_STEP: 95`` blocks;
  Coqui's defaults: ``grad_clip`` 5.0, Adam (betas 0.9/0.998, weight decay 1e-6), ``NoamLR``
  warm-up, ``L1LossMasked`` (a masked *sum* divided by the mask's sum) for the spectrogram and
  an MSE on log durations.

Data: a generated speech-like corpus: phoneme sequences from a Markov chain over
``--num_chars`` symbols, each phoneme with its own mel template and duration (neighbour- and
speaker-dependent), frames blended across boundaries plus noise; the durations come from an
external aligner (as ``ForwardTTS`` with ``use_aligner: false``).  ``signal_norm`` maps the dB
mels to mean 0, unit range (Coqui's ``AudioProcessor`` normalisation); without it the targets
are dB values (about -100 to 0).  Written without looking at the doctor.

Faults are real code paths and data: ``--precision fp16`` (the model and its batches cast
to half, as a team did to halve memory) on dB targets, where the masked L1 *sum* of a batch
passes 65504; ``--extra_recordings``: newly recorded sessions added to the training set from an
export that skipped the normalisation (dB values among normalised ones); ``--audit_log``: the
team's dataset records every loaded item in a JSON file it reads and rewrites whole at each
item; ``--max_audio_len`` raised past the corpus's one unsegmented 1.6-hour recording, whose
batch is padded to its length.
"""

import json
import math
import os
import time

import _setup
import mlflow
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

args = _setup.parse_flags(
    {
        "--seed": 54321,
        "--num_chars": 40,
        "--num_speakers": 4,
        "--num_mels": 20,
        "--num_utts": 480,
        "--eval_split_size": 48,
        "--batch_size": 16,
        "--eval_batch_size": 16,
        "--epochs": 24,
        "--lr": 2e-3,
        "--warmup_steps": 100,
        "--lr_scheduler": "NoamLR",
        "--grad_clip": 5.0,
        "--hidden_channels": 64,
        "--num_conv_blocks": 3,
        "--plot_step": 5,
        "--print_step": 25,
        "--signal_norm": 1,
        "--precision": "fp32",
        "--audit_log": "",
        "--max_audio_len": 330750,
        "--extra_recordings": 0,
        "--hop_length": 256,
    }
)
rng = _setup.seeded(args.seed)
DTYPE = torch.float16 if args.precision == "fp16" else torch.float32

# ----------------------------------------------------------------------------- the corpus
C, M = args.num_chars, args.num_mels
trans = rng.dirichlet(np.full(C, 0.3), size=C)  # phoneme bigram chain
templates = rng.normal(0, 1, (C, M))
base_dur = rng.integers(2, 7, C)
speaker_bias = rng.normal(0, 0.3, (args.num_speakers, M))


def make_utt():
    n = int(rng.integers(8, 22))
    ph = [int(rng.integers(C))]
    for _ in range(n - 1):
        ph.append(int(rng.choice(C, p=trans[ph[-1]])))
    spk = int(rng.integers(args.num_speakers))
    dur = []
    for i, p in enumerate(ph):
        nxt = ph[i + 1] if i + 1 < n else p
        d = base_dur[p] + (1 if base_dur[nxt] > 4 else 0) + int(rng.integers(0, 2))
        dur.append(max(1, d))
    frames = []
    for i, (p, d) in enumerate(zip(ph, dur, strict=True)):
        nxt = templates[ph[i + 1]] if i + 1 < n else templates[p]
        for t in range(d):
            w = max(0.0, (t - d / 2) / d)  # blend toward the next phoneme in the second half
            frames.append((1 - w) * templates[p] + w * nxt + speaker_bias[spk])
    mel = np.array(frames) + rng.normal(0, 0.15, (len(frames), M))
    mel_db = mel * 20.0 - 50.0  # dB, about -100..0
    target = (mel_db + 50.0) / 20.0 if args.signal_norm else mel_db  # AudioProcessor.normalize
    return np.array(ph), np.array(dur), target.astype(np.float32), spk


utts = [make_utt() for _ in range(args.num_utts)]
# the corpus also holds one unsegmented recording (a whole chapter, about 1.6 h): the speaker's
# sentences read back to back, as the export left it
chapter = [u for u in utts[args.eval_split_size :] if u[3] == 0] * 60
utts.append(
    (
        np.concatenate([u[0] for u in chapter]),
        np.concatenate([u[1] for u in chapter]),
        np.concatenate([u[2] for u in chapter]),
        0,
    )
)
# --extra_recordings: the newest sessions, whose feature export skipped the normalisation
for _ in range(args.extra_recordings):
    ph, du, me, spk = make_utt()
    utts.append((ph, du, (me * 20.0 - 50.0 if args.signal_norm else me).astype(np.float32), spk))
eval_items, train_items = utts[: args.eval_split_size], utts[args.eval_split_size :]
n_before = len(train_items)
# TTSDataset's length filter: audio longer than max_audio_len samples is discarded
train_items = [u for u in train_items if len(u[2]) * args.hop_length <= args.max_audio_len]
print(
    f" > Training Samples: {len(train_items)}  (discarded {n_before - len(train_items)} "
    f"longer than max_audio_len {args.max_audio_len})\n > Evaluation Samples: {len(eval_items)}",
    flush=True,
)


class TTSDataset:
    def __init__(self, items):
        self.items, self.seen = items, 0

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        if args.audit_log:  # the team's record of every item the loader served
            log = json.load(open(args.audit_log)) if os.path.exists(args.audit_log) else []
            log.append({"item": int(i), "n": self.seen, "t": time.time()})
            with open(args.audit_log, "w") as f:
                json.dump(log, f)
        self.seen += 1
        return self.items[i]

    def collate(self, batch):
        B = len(batch)
        tl = max(len(b[0]) for b in batch)
        ml = max(len(b[2]) for b in batch)
        tokens = torch.zeros(B, tl, dtype=torch.long)
        durs = torch.zeros(B, tl, dtype=torch.long)
        mel = torch.zeros(B, ml, M)
        tmask = torch.zeros(B, tl)
        mmask = torch.zeros(B, ml)
        spk = torch.tensor([b[3] for b in batch])
        for j, (ph, du, me, _) in enumerate(batch):
            tokens[j, : len(ph)] = torch.from_numpy(ph) + 1  # 0 = pad
            durs[j, : len(du)] = torch.from_numpy(du)
            mel[j, : len(me)] = torch.from_numpy(me)
            tmask[j, : len(ph)] = 1
            mmask[j, : len(me)] = 1
        return tokens, spk, durs, mel.to(DTYPE), tmask.to(DTYPE), mmask.to(DTYPE)


def loader(ds, bs, shuffle):
    order = rng.permutation(len(ds)) if shuffle else np.arange(len(ds))
    for k in range(0, len(order), bs):
        t0 = time.time()
        batch = ds.collate([ds[int(i)] for i in order[k : k + bs]])
        yield batch, time.time() - t0


# ----------------------------------------------------------------------------- ForwardTTS
class ConvBlock(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.conv, self.norm = nn.Conv1d(d, d, 5, padding=2), nn.LayerNorm(d)

    def forward(self, x, mask):  # x: B, T, d
        y = F.relu(self.conv((x * mask.unsqueeze(-1)).transpose(1, 2))).transpose(1, 2)
        return self.norm(x + y)


class ForwardTTS(nn.Module):
    def __init__(self):
        super().__init__()
        d = args.hidden_channels
        self.emb = nn.Embedding(C + 1, d, padding_idx=0)
        self.emb_g = nn.Embedding(args.num_speakers, d)  # use_speaker_embedding
        self.encoder = nn.ModuleList(ConvBlock(d) for _ in range(args.num_conv_blocks))
        self.dp = nn.ModuleList(ConvBlock(d) for _ in range(2))
        self.dp_out = nn.Linear(d, 1)
        self.decoder = nn.ModuleList(ConvBlock(d) for _ in range(args.num_conv_blocks))
        self.out = nn.Linear(d, M)

    def forward(self, tokens, spk, durs, tmask, mmask):
        x = self.emb(tokens) + self.emb_g(spk).unsqueeze(1)
        for blk in self.encoder:
            x = blk(x, tmask)
        h = x.detach()
        for blk in self.dp:
            h = blk(h, tmask)
        log_dur = self.dp_out(h).squeeze(-1)
        # length regulator: expand each phoneme by its (ground-truth) duration
        T = mmask.shape[1]
        expanded = []
        for j in range(x.shape[0]):
            e = torch.repeat_interleave(x[j], durs[j], dim=0)
            expanded.append(F.pad(e, (0, 0, 0, T - e.shape[0])))
        y = torch.stack(expanded)
        for blk in self.decoder:
            y = blk(y, mmask)
        return self.out(y), log_dur


def forward_tts_loss(mel_out, mel, log_dur, durs, tmask, mmask):
    m = mmask.unsqueeze(-1).expand_as(mel)
    # L1LossMasked: sum over the unmasked elements, divided by their number
    loss_spec = F.l1_loss(mel_out * m, mel * m, reduction="sum") / m.sum()
    log_target = torch.log(durs.to(log_dur.dtype) + 1) * tmask
    loss_dur = F.mse_loss(log_dur * tmask, log_target, reduction="sum") / tmask.sum()
    return {"loss_spec": loss_spec, "loss_dur": loss_dur, "loss": loss_spec + loss_dur}


model = ForwardTTS().to(DTYPE)
optimizer = torch.optim.Adam(model.parameters(), lr=args.lr, betas=(0.9, 0.998), weight_decay=1e-6)


def noam(step):
    s = step + 1
    if args.lr_scheduler != "NoamLR":
        return 1.0
    w = args.warmup_steps
    return w**0.5 * min(s * w**-1.5, s**-0.5)


scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, noam)
n_params = sum(p.numel() for p in model.parameters())
print(f"\n > Model has {n_params} parameters", flush=True)


class KeepAverage:
    def __init__(self):
        self.sums, self.counts = {}, {}

    def update_values(self, d):
        for k, v in d.items():
            self.sums[k] = self.sums.get(k, 0.0) + float(v)
            self.counts[k] = self.counts.get(k, 0) + 1

    @property
    def avg_values(self):
        return {k: self.sums[k] / self.counts[k] for k in self.sums}


def add_scalars(scope_name, stats, step):  # MLFlowLogger.add_scalars
    mlflow.log_metrics({f"{scope_name}-{k}": float(v) for k, v in stats.items()}, step=step)


train_ds, eval_ds = TTSDataset(train_items), TTSDataset(eval_items)
batch_n_steps = math.ceil(len(train_ds) / args.batch_size)
with mlflow.start_run():
    mlflow.log_params(vars(args))
    mlflow.log_params({"model": "fast_speech", "run_name": "fast_speech-ljspeech-like"})
    total_steps_done = 0
    for epoch in range(args.epochs):
        print(f"\n > EPOCH: {epoch}/{args.epochs}\n --> out/fast_speech-run", flush=True)
        print("\n > TRAINING", flush=True)
        model.train()
        keep_avg_train = KeepAverage()
        epoch_start = time.time()
        for step, ((tokens, spk, durs, mel, tmask, mmask), loader_time) in enumerate(
            loader(train_ds, args.batch_size, True)
        ):
            t0 = time.time()
            mel_out, log_dur = model(tokens, spk, durs, tmask, mmask)
            loss_dict = forward_tts_loss(mel_out, mel, log_dur, durs, tmask, mmask)
            optimizer.zero_grad()
            loss_dict["loss"].backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(
                model.parameters(), args.grad_clip if args.grad_clip > 0 else float("inf")
            )
            optimizer.step()
            scheduler.step()
            step_time = time.time() - t0
            loss_dict = {k: v.item() for k, v in loss_dict.items()}
            loss_dict["grad_norm"] = grad_norm.item()
            keep_avg_train.update_values({"avg_" + k: v for k, v in loss_dict.items()})
            keep_avg_train.update_values(
                {"avg_loader_time": loader_time, "avg_step_time": step_time}
            )
            if total_steps_done % args.print_step == 0 or total_steps_done % args.plot_step == 0:
                loss_dict.update({"current_lr": optimizer.param_groups[0]["lr"]})
                loss_dict.update(
                    {"step_time": round(step_time, 4), "loader_time": round(loader_time, 4)}
                )
            if total_steps_done % args.print_step == 0:
                print(
                    f"\n   --> STEP: {step}/{batch_n_steps} -- GLOBAL_STEP: {total_steps_done}",
                    flush=True,
                )
                avg = keep_avg_train.avg_values
                for k, v in loss_dict.items():
                    a = avg.get("avg_" + k)
                    print(f"     | > {k}: {v}" + (f"  ({a:.5f})" if a is not None else ""))
            if total_steps_done % args.plot_step == 0:
                add_scalars("TrainIterStats", loss_dict, total_steps_done)
            total_steps_done += 1
        epoch_stats = {"epoch_time": time.time() - epoch_start}
        epoch_stats.update(keep_avg_train.avg_values)
        add_scalars("TrainEpochStats", epoch_stats, total_steps_done)
        # ------------------------------------------------------------- eval_epoch
        print("\n > EVALUATION\n", flush=True)
        model.eval()
        keep_avg_eval = KeepAverage()
        with torch.no_grad():
            for (tokens, spk, durs, mel, tmask, mmask), loader_time in loader(
                eval_ds, args.eval_batch_size, False
            ):
                t0 = time.time()
                mel_out, log_dur = model(tokens, spk, durs, tmask, mmask)
                ld = forward_tts_loss(mel_out, mel, log_dur, durs, tmask, mmask)
                keep_avg_eval.update_values({"avg_" + k: v.item() for k, v in ld.items()})
                keep_avg_eval.update_values(
                    {"avg_loader_time": loader_time, "avg_step_time": time.time() - t0}
                )
        print("  --> EVAL PERFORMANCE", flush=True)
        for k, v in keep_avg_eval.avg_values.items():
            print(f"     | > {k}: {v:.5f}", flush=True)
        add_scalars("EvalStats", keep_avg_eval.avg_values, total_steps_done)
    print(" > Training finished.", flush=True)
