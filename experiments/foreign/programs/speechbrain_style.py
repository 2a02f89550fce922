"""A speaker-identification recipe trained the way SpeechBrain's ``templates/speaker_id``
trains one (a ``Brain`` subclass, ``fit()`` then ``evaluate()``), its ``TensorboardLogger``
scalars mirrored into MLflow.

Plain PyTorch + numpy + the plain ``mlflow`` API (no speechbrain here).  The hparams are logged
as params.  As ``TensorboardLogger.log_stats`` writes them, once per epoch after the validation
stage: the ``stats_meta`` keys ``epoch`` and ``lr`` (the learning rate the epoch trained with)
at the logger's meta step, and every stat as ``{stat}/{dataset}``: ``loss/train`` (the epoch's
running average of the batch losses, non-finite batches left out), ``loss/valid`` and
``error/valid`` (the classification error rate), each at its own counter; all counters start at
1 and move once per epoch, so MLflow's step is the epoch from 1.  After ``fit()`` the
checkpoint with the lowest ``error/valid`` is loaded and tested: ``Epoch loaded`` at the next
meta step and ``loss/test``, ``error/test`` at step 1.  The console shows the
``FileTrainLogger`` lines (``epoch: 3, lr: 1.00e-03 - train loss: 1.21 - valid loss: 1.05,
valid error: 3.12e-01``) and the ``Brain``'s warnings.  Written without looking at the doctor.

Data: generated speech at 8 kHz: ``--n_speakers`` speakers, each with a mean pitch, a vocal
tract length (formant scaling), a spectral tilt and a microphone (a short random FIR); an
utterance (``--min_dur`` to ``--max_dur`` seconds, about one in fifty a clipped recording of
0.25-0.35 s) is a random sequence of vowel-like phones (harmonics of a jittered pitch shaped by
the phone's formants) with additive noise at ``--snr_db``.  As ``compute_forward`` does, per
batch: optionally ``DropChunk`` augmentation on the training waveforms (``--drop_chunk 1``:
``--drop_count_low``-``--drop_count_high`` chunks of ``--drop_length_low``-
``--drop_length_high`` samples zeroed), ``Fbank`` (STFT, ``--n_mels`` mel filters, dB with
``top_db`` 80) and ``InputNormalization`` (sentence mean).  Models: ``--model xvector`` (TDNN
layers, statistics pooling, embedding, classifier), an RNN encoder (``--model rnn``, ``lstm``,
``gru``) or ``--model ligru`` (Light GRU cells), mean-pooled; ``nll_loss`` on log-softmax
outputs.  ``Brain.fit_batch``: backward, ``check_gradients`` (a non-finite loss skips the step,
up to ``--nonfinite_patience`` times, then ``ValueError``), gradient-norm clipping at
``--max_grad_norm`` (0 = off), optimizer step.  Learning-rate annealing per epoch:
``LinearScheduler``, ``NewBobScheduler`` (x``--annealing_factor`` when the valid loss improves
by less than 0.25 %) or none.

Faults are real settings: ``--lr`` far too high; ``--lr`` far too low; a handful of
``--train_utts_per_spk`` with a wide model, no dropout and a constant learning rate for many
epochs; ``DropChunk`` with ``--drop_length_high`` longer than the clipped recordings (the
augmentation's ``torch.randint`` for the chunk start gets an empty range when a clip shorter
than the drawn chunk comes up).
"""

import copy
import logging
import math

import _setup
import mlflow
import numpy as np
import torch
import torch.nn.functional as F

args = _setup.parse_flags(
    {
        "--seed": 1986,
        "--number_of_epochs": 15,
        "--batch_size": 16,
        "--lr": 0.001,
        "--lr_final": 0.0001,
        "--opt_class": "Adam",
        "--lr_annealing": "linear",
        "--annealing_factor": 0.8,
        "--model": "xvector",
        "--tdnn_channels": 64,
        "--rnn_neurons": 64,
        "--rnn_layers": 2,
        "--nonlinearity": "tanh",
        "--emb_dim": 64,
        "--dropout": 0.15,
        "--max_grad_norm": 5.0,
        "--nonfinite_patience": 3,
        "--n_mels": 24,
        "--n_speakers": 16,
        "--train_utts_per_spk": 20,
        "--valid_utts_per_spk": 5,
        "--test_utts_per_spk": 5,
        "--snr_db": 10.0,
        "--min_dur": 0.4,
        "--max_dur": 0.9,
        "--sorting": "random",
        "--drop_chunk": 0,
        "--drop_length_low": 100,
        "--drop_length_high": 800,
        "--drop_count_low": 1,
        "--drop_count_high": 2,
    }
)
rng = _setup.seeded(args.seed)
logging.basicConfig(format="%(name)s - %(message)s", level=logging.INFO)
logger = logging.getLogger("speechbrain.core")
train_logger_console = logging.getLogger("speechbrain.utils.train_logger")
SR = 8000

# ---------------------------------------------------------------- data (fixed; seed 7)
data_rng = np.random.default_rng(7)
VOWELS = np.array(
    [
        [730, 1090, 2440],
        [270, 2290, 3010],
        [300, 870, 2240],
        [530, 1840, 2480],
        [570, 840, 2410],
        [660, 1720, 2410],
        [440, 1020, 2240],
        [490, 1350, 1690],
    ],
    float,
)
speakers = [
    {
        "f0": data_rng.uniform(95, 230),
        "vtl": data_rng.uniform(0.86, 1.18),
        "tilt": data_rng.uniform(0.6, 1.4),
        "mic": data_rng.normal(0, 1, 6) * np.exp(-np.arange(6)),
    }
    for _ in range(args.n_speakers)
]


def synth(spk):
    dur = data_rng.uniform(args.min_dur, args.max_dur)
    if data_rng.random() < 0.02:  # a clipped recording now and then
        dur = data_rng.uniform(0.25, 0.35)
    n = int(dur * SR)
    wav = np.zeros(n, np.float32)
    pos = 0
    while pos < n:
        seg = min(int(data_rng.uniform(0.06, 0.16) * SR), n - pos)
        f0 = spk["f0"] * data_rng.uniform(0.88, 1.12)
        formants = VOWELS[data_rng.integers(len(VOWELS))] * spk["vtl"]
        t = np.arange(seg) / SR
        ks = np.arange(1, int(3800 // f0) + 1)
        amp = sum(np.exp(-((ks * f0 - F_) ** 2) / (2 * (80 + 0.06 * F_) ** 2)) for F_ in formants)
        amp = amp * ks ** (-spk["tilt"]) + 1e-3
        phase = data_rng.uniform(0, 2 * np.pi, len(ks))
        x = (amp[:, None] * np.sin(2 * np.pi * ks[:, None] * f0 * t + phase[:, None])).sum(0)
        env = np.minimum(1, np.minimum(np.arange(seg), seg - np.arange(seg)) / (0.01 * SR))
        wav[pos : pos + seg] = x * env
        pos += seg
    wav = np.convolve(wav, spk["mic"], mode="same")
    wav /= np.abs(wav).max() + 1e-8
    power = (wav**2).mean()
    wav += data_rng.normal(0, math.sqrt(power / 10 ** (args.snr_db / 10)), n)
    return wav.astype(np.float32)


def make_split(per_spk):
    return [(synth(speakers[s]), s) for s in range(args.n_speakers) for _ in range(per_spk)]


train_data = make_split(args.train_utts_per_spk)
valid_data = make_split(args.valid_utts_per_spk)
test_data = make_split(args.test_utts_per_spk)


def dataloader(data, shuffle):
    order = list(range(len(data)))
    if args.sorting == "ascending":
        order.sort(key=lambda i: len(data[i][0]))
    elif args.sorting == "descending":
        order.sort(key=lambda i: -len(data[i][0]))
    elif shuffle:
        order = list(rng.permutation(len(data)))
    for b in range(0, len(order), args.batch_size):
        idx = order[b : b + args.batch_size]
        lens = [len(data[i][0]) for i in idx]
        wavs = torch.zeros(len(idx), max(lens))
        for j, i in enumerate(idx):
            wavs[j, : lens[j]] = torch.from_numpy(data[i][0])
        yield wavs, torch.tensor(lens) / max(lens), torch.tensor([data[i][1] for i in idx])


# ---------------------------------------------------------------- features, model
N_FFT, HOP = 256, 80
mel_pts = 700 * (
    10 ** (np.linspace(0, 2595 * np.log10(1 + 4000 / 700), args.n_mels + 2) / 2595) - 1
)
bins = np.floor((N_FFT + 1) * mel_pts / SR).astype(int)
fb = np.zeros((args.n_mels, N_FFT // 2 + 1), np.float32)
for m in range(1, args.n_mels + 1):
    lo, c, hi = bins[m - 1], bins[m], bins[m + 1]
    fb[m - 1, lo:c] = (np.arange(lo, c) - lo) / max(c - lo, 1)
    fb[m - 1, c:hi] = (hi - np.arange(c, hi)) / max(hi - c, 1)
FB = torch.from_numpy(fb)


def drop_chunk(waveforms, lengths):
    """speechbrain.augment.time_domain.DropChunk (drop_prob 1, noise_factor 0)."""
    B = waveforms.shape[0]
    clean_lengths = (lengths * waveforms.shape[1]).long()
    dropped = waveforms.clone()
    drop_times = torch.randint(args.drop_count_low, args.drop_count_high + 1, (B,))
    for i in range(B):
        if drop_times[i] == 0:
            continue
        length = torch.randint(
            args.drop_length_low, args.drop_length_high + 1, (int(drop_times[i]),)
        )
        start_max = int(clean_lengths[i] - length.max())
        start = torch.randint(0, start_max + 1, (int(drop_times[i]),))
        for j in range(int(drop_times[i])):
            dropped[i, start[j] : start[j] + length[j]] = 0.0
    return dropped


def compute_features(wavs, wav_lens):
    """Fbank (log mel) + InputNormalization(norm_type="sentence")."""
    spec = torch.stft(wavs, N_FFT, HOP, window=torch.hamming_window(N_FFT), return_complex=True)
    feats = 10 * torch.log10(FB @ spec.abs().pow(2) + 1e-10).transpose(1, 2)  # B, T, n_mels
    top = feats.amax((1, 2), keepdim=True) - 80.0  # top_db
    feats = torch.maximum(feats, top)
    T = feats.shape[1]
    mask = (torch.arange(T)[None] < (wav_lens * T).round()[:, None]).float()[..., None]
    mean = (feats * mask).sum(1, keepdim=True) / mask.sum(1, keepdim=True)
    return (feats - mean) * mask, mask


class Xvector(torch.nn.Module):
    def __init__(self):
        super().__init__()
        c = args.tdnn_channels
        specs = [(args.n_mels, c, 5, 1), (c, c, 3, 2), (c, c, 3, 3), (c, c, 1, 1), (c, 2 * c, 1, 1)]
        self.blocks = torch.nn.ModuleList(
            torch.nn.Sequential(
                torch.nn.Conv1d(i, o, k, dilation=d, padding=d * (k - 1) // 2),
                torch.nn.LeakyReLU(),
                torch.nn.BatchNorm1d(o),
            )
            for i, o, k, d in specs
        )
        self.embedding = torch.nn.Linear(4 * c, args.emb_dim)

    def forward(self, x, mask):
        x = x.transpose(1, 2)
        for b in self.blocks:
            x = b(x)
        m = mask.transpose(1, 2)
        mean = (x * m).sum(2) / m.sum(2)
        std = (((x - mean[..., None]) ** 2 * m).sum(2) / m.sum(2) + 1e-5).sqrt()
        return self.embedding(torch.cat([mean, std], 1))


class RNNEncoder(torch.nn.Module):
    def __init__(self):
        super().__init__()
        cls = {"rnn": torch.nn.RNN, "lstm": torch.nn.LSTM, "gru": torch.nn.GRU}[args.model]
        kw = {"nonlinearity": args.nonlinearity} if args.model == "rnn" else {}
        self.rnn = cls(
            args.n_mels,
            args.rnn_neurons,
            args.rnn_layers,
            batch_first=True,
            dropout=args.dropout if args.rnn_layers > 1 else 0.0,
            **kw,
        )
        self.embedding = torch.nn.Linear(args.rnn_neurons, args.emb_dim)

    def forward(self, x, mask):
        h, _ = self.rnn(x)
        return self.embedding((h * mask).sum(1) / mask.sum(1))


class LiGRULayer(torch.nn.Module):
    """sb.nnet.RNN.LiGRU's cell: a gate z and a ReLU candidate, batch-normalized input
    projections, no reset gate (Ravanelli et al.)."""

    def __init__(self, n_in, n_hid):
        super().__init__()
        self.w = torch.nn.Linear(n_in, 2 * n_hid, bias=False)
        self.norm = torch.nn.BatchNorm1d(2 * n_hid, momentum=0.05)
        self.u = torch.nn.Linear(n_hid, 2 * n_hid, bias=False)
        torch.nn.init.orthogonal_(self.u.weight)
        self.n_hid = n_hid

    def forward(self, x):
        B, T, _ = x.shape
        wx = self.norm(self.w(x).reshape(B * T, -1)).reshape(B, T, -1)
        h, hs = x.new_zeros(B, self.n_hid), []
        for t in range(T):
            a, zt = (wx[:, t] + self.u(h)).chunk(2, 1)
            z = torch.sigmoid(zt)
            h = z * h + (1 - z) * F.relu(a)
            hs.append(h)
        return torch.stack(hs, 1)


class LiGRU(torch.nn.Module):
    def __init__(self):
        super().__init__()
        sizes = [args.n_mels] + [args.rnn_neurons] * args.rnn_layers
        self.layers = torch.nn.ModuleList(
            LiGRULayer(i, o) for i, o in zip(sizes[:-1], sizes[1:], strict=True)
        )
        self.embedding = torch.nn.Linear(args.rnn_neurons, args.emb_dim)

    def forward(self, x, mask):
        for layer in self.layers:
            x = F.dropout(layer(x), args.dropout, self.training)
        return self.embedding((x * mask).sum(1) / mask.sum(1))


class Classifier(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.norm = torch.nn.BatchNorm1d(args.emb_dim)
        self.drop = torch.nn.Dropout(args.dropout)
        self.out = torch.nn.Linear(args.emb_dim, args.n_speakers)

    def forward(self, emb):
        return F.log_softmax(self.out(self.drop(F.leaky_relu(self.norm(emb)))), -1)


modules = torch.nn.ModuleDict(
    {
        "embedding_model": {"xvector": Xvector, "ligru": LiGRU}.get(args.model, RNNEncoder)(),
        "classifier": Classifier(),
    }
)
opt_class = {
    "Adam": lambda p: torch.optim.Adam(p, lr=args.lr),
    "SGD": lambda p: torch.optim.SGD(p, lr=args.lr, momentum=0.9),
    "Adadelta": lambda p: torch.optim.Adadelta(p, lr=args.lr, rho=0.95, eps=1e-8),
}[args.opt_class]
optimizer = opt_class(modules.parameters())


class LinearScheduler:
    def __init__(self, initial, final, epochs):
        self.values = np.linspace(initial, final, epochs)

    def __call__(self, epoch, valid_loss):
        old = self.values[epoch - 1]
        return old, self.values[min(epoch, len(self.values) - 1)]


class NewBobScheduler:
    def __init__(self, initial, improvement_threshold=0.0025, annealing_factor=0.8):
        self.value, self.thr, self.factor = initial, improvement_threshold, annealing_factor
        self.prev = None

    def __call__(self, epoch, valid_loss):
        old = self.value
        if self.prev is not None and self.prev != 0:
            if (self.prev - valid_loss) / abs(self.prev) < self.thr:
                self.value *= self.factor
        self.prev = valid_loss
        return old, self.value


class Constant:
    def __call__(self, epoch, valid_loss):
        return args.lr, args.lr


lr_annealing = {
    "linear": lambda: LinearScheduler(args.lr, args.lr_final, args.number_of_epochs),
    "newbob": lambda: NewBobScheduler(args.lr, annealing_factor=args.annealing_factor),
    "none": Constant,
}[args.lr_annealing]()


class TensorboardLogger:
    """speechbrain.utils.train_logger.TensorboardLogger, writing to MLflow instead."""

    def __init__(self):
        self.global_step = {"train": {}, "valid": {}, "test": {}, "meta": 0}

    def log_stats(self, stats_meta, train_stats=None, valid_stats=None, test_stats=None):
        self.global_step["meta"] += 1
        out = {}
        for name, value in stats_meta.items():
            mlflow.log_metric(name, value, step=self.global_step["meta"])
        for dataset, stats in [
            ("train", train_stats),
            ("valid", valid_stats),
            ("test", test_stats),
        ]:
            if stats is None:
                continue
            for stat, value in stats.items():
                step = self.global_step[dataset].get(stat, 0) + 1
                self.global_step[dataset][stat] = step
                mlflow.log_metric(f"{stat}/{dataset}", value, step=step)
        # FileTrainLogger's console line
        summary = ", ".join(f"{k}: {_fmt(v)}" for k, v in stats_meta.items())
        for dataset, stats in [
            ("train", train_stats),
            ("valid", valid_stats),
            ("test", test_stats),
        ]:
            if stats is not None:
                summary += " - " + ", ".join(f"{dataset} {k}: {_fmt(v)}" for k, v in stats.items())
        train_logger_console.info(summary)
        return out


def _fmt(v):
    if isinstance(v, float) and 1.0 < v < 100.0:
        return f"{v:.2f}"
    if isinstance(v, float):
        return f"{v:.2e}"
    return f"{v}"


class SpkIdBrain:
    def __init__(self):
        self.nonfinite_count = 0
        self.step = 0
        self.avg_train_loss = 0.0
        self.train_logger = TensorboardLogger()
        self.best = None

    def compute_forward(self, wavs, wav_lens, stage="train"):
        if stage == "train" and args.drop_chunk:
            wavs = drop_chunk(wavs, wav_lens)
        feats, mask = compute_features(wavs, wav_lens)
        return modules["classifier"](modules["embedding_model"](feats, mask))

    def compute_objectives(self, predictions, spkid):
        return F.nll_loss(predictions, spkid)

    def check_gradients(self, loss):
        if not torch.isfinite(loss):
            self.nonfinite_count += 1
            logger.warning(f"Loss is {loss}.")
            for p in modules.parameters():
                if not torch.isfinite(p).all():
                    logger.warning("Parameter is not finite: " + str(p.shape))
            if self.nonfinite_count > args.nonfinite_patience:
                raise ValueError(
                    "Loss is not finite and patience is exhausted. "
                    "To debug, wrap `fit()` with "
                    "autograd's `detect_anomaly()`, e.g.\n\nwith "
                    "torch.autograd.detect_anomaly():\n\tbrain.fit(...)"
                )
            logger.warning("Patience not yet exhausted, ignoring this batch.")
            return False
        if args.max_grad_norm > 0.0:
            torch.nn.utils.clip_grad_norm_(modules.parameters(), args.max_grad_norm)
        return True

    def fit_batch(self, batch):
        wavs, lens, spk = batch
        loss = self.compute_objectives(self.compute_forward(wavs, lens), spk)
        loss.backward()
        if self.check_gradients(loss):
            optimizer.step()
        optimizer.zero_grad()
        return loss.detach()

    def update_average(self, loss, avg_loss):
        if torch.isfinite(loss):
            avg_loss -= avg_loss / self.step
            avg_loss += float(loss) / self.step
        return avg_loss

    def evaluate(self, data):
        modules.eval()
        losses, errors, n = 0.0, 0.0, 0
        with torch.no_grad():
            for wavs, lens, spk in dataloader(data, shuffle=False):
                pred = self.compute_forward(wavs, lens, stage="eval")
                losses += self.compute_objectives(pred, spk).item() * len(spk)
                errors += (pred.argmax(-1) != spk).float().sum().item()
                n += len(spk)
        modules.train()
        return losses / n, errors / n

    def fit(self):
        for epoch in range(1, args.number_of_epochs + 1):
            modules.train()
            self.step, self.avg_train_loss = 0, 0.0
            for batch in dataloader(train_data, shuffle=True):
                self.step += 1
                loss = self.fit_batch(batch)
                self.avg_train_loss = self.update_average(loss, self.avg_train_loss)
            valid_loss, valid_error = self.evaluate(valid_data)
            old_lr, new_lr = lr_annealing(epoch, valid_loss)
            for g in optimizer.param_groups:
                g["lr"] = new_lr
            self.train_logger.log_stats(
                stats_meta={"epoch": epoch, "lr": float(old_lr)},
                train_stats={"loss": self.avg_train_loss},
                valid_stats={"loss": valid_loss, "error": valid_error},
            )
            if self.best is None or valid_error < self.best[1]:
                self.best = (epoch, valid_error, copy.deepcopy(modules.state_dict()))
            logger.info(
                f"Saved an end-of-epoch checkpoint in results/speaker_id/{args.seed}/save/"
                f"CKPT+epoch_{epoch}"
            )


with mlflow.start_run():
    mlflow.log_params(vars(args) | {"sample_rate": SR, "n_train": len(train_data)})
    n_params = sum(p.numel() for p in modules.parameters())
    logger.info(f"SpkIdBrain Model Statistics:\n* Total Number of Trainable Parameters: {n_params}")
    brain = SpkIdBrain()
    brain.fit()
    epoch, _, state = brain.best
    modules.load_state_dict(state)
    logger.info(f"Loading a checkpoint from results/speaker_id/{args.seed}/save/CKPT+epoch_{epoch}")
    test_loss, test_error = brain.evaluate(test_data)
    brain.train_logger.log_stats(
        {"Epoch loaded": epoch}, test_stats={"loss": test_loss, "error": test_error}
    )
