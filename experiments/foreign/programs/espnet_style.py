"""A character RNN language model trained by ESPnet2's ``lm_train.py`` (``LMTask`` with a
``seq_rnn`` LM and the espnet2 ``Trainer``), its ``--use_wandb`` logs mirrored to MLflow.

Plain torch + the plain ``mlflow`` API (no ESPnet or W&B here).  Each line of Python's own
standard-library source (``email``, ``http``, ``logging``, ``json``; stripped, 4-80
characters) is an utterance; ``--token_type char``, the token list built from the training text
(``<blank>``, ``<unk>``, the characters seen, ``<sos/eos>``).  The validation set is the
``urllib`` package's lines.  Batches (``--batch_type folded``) hold ``--batch_size`` lines of
similar length and are shuffled every epoch.  The command-line options are logged as params.

As ESPnet's reporter writes them through ``wandb.log`` (mirrored with ``step`` = W&B's own
``_step``: the number of earlier ``wandb.log`` calls, so iteration and epoch logs share one
axis): every ``--log_interval`` iterations (default: max(iterations per epoch // 20, 10)) the
averages over those iterations of ``metrics/loss`` (token cross-entropy, nats, weighted by
tokens), ``metrics/grad_norm`` (total norm before clipping; a step whose norm is not finite is
skipped and not registered), ``metrics/clip`` (100 when the norm exceeded ``--grad_clip``, else
0), ``metrics/loss_scale`` (1.0 without AMP), ``metrics/optim0_lr0``, ``train/train_time``
(seconds per step), ``metrics/iter_time`` (the data loader's time), ``metrics/forward_time``,
``metrics/backward_time``, ``metrics/optim_step_time``, with ``iteration`` (the total iteration
count); after every epoch ``train/train_<key>_epoch`` for each of those keys (the epoch's
average), ``valid/valid_loss_epoch`` and ``epoch`` (from 1).  Written without looking at the
doctor.

Faults are real settings: ``--grad_clip inf`` (no clipping) for an ``rnn_relu`` LM under SGD
(learning rate 2.5 or 5.0); a validation set dumped as integer ids from another recipe's
5000-token BPE list (``--valid_data_path_and_name_and_type dump/raw/valid_bpe5000.txt,text,text_int``); a
training set read as a ``kaldi_ark``-style archive that is re-opened and scanned from its start
for every utterance from some epoch on (``--train_data_archive_from_epoch``).
"""

import glob
import gzip
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
        "--max_epoch": 4,
        "--batch_size": 32,
        "--log_interval": 0,  # 0 = ESPnet's default
        "--lm_conf.rnn_type": ("rnn_type", "lstm"),
        "--lm_conf.unit": ("unit", 96),
        "--lm_conf.nlayers": ("nlayers", 1),
        "--lm_conf.dropout_rate": ("dropout_rate", 0.0),
        "--optim": ("optim", "adam"),
        "--optim_conf.lr": ("lr", 0.002),
        "--scheduler": ("scheduler", "none"),
        "--scheduler_conf.warmup_steps": ("warmup_steps", 100),
        "--grad_clip": 5.0,
        "--train_limit": 10000,
        "--valid_data_path_and_name_and_type": ("valid_data", "dump/raw/valid.txt,text,text"),
        "--train_data_archive_from_epoch": ("archive_from_epoch", 0),
    }
)
rng = _setup.seeded(args.seed)
STDLIB = os.path.dirname(os.__file__)


def lines_of(pkgs):
    out = []
    for pkg in pkgs:
        for p in sorted(glob.glob(f"{STDLIB}/{pkg}/*.py")):
            for line in open(p, encoding="utf-8", errors="replace"):
                s = line.strip()
                if 4 <= len(s) <= 80:
                    out.append(s)
    return out


train_text = lines_of(["email", "http", "logging", "json"])
train_text = [train_text[i] for i in rng.permutation(len(train_text))[: args.train_limit]]
valid_text = lines_of(["urllib"])[:1500]
token_list = ["<blank>", "<unk>"] + sorted({c for s in train_text for c in s}) + ["<sos/eos>"]
tok = {c: i for i, c in enumerate(token_list)}
V, EOS = len(token_list), len(token_list) - 1


def encode(s):
    return [tok.get(c, 1) for c in s]


valid_type = args.valid_data.split(",")[-1]
if valid_type == "text_int":  # ids from another recipe's BPE token list (5000 entries)
    valid_ids = [[3 + (hash(w) % 4997) for w in s.split()] for s in valid_text]
else:
    valid_ids = [encode(s) for s in valid_text]
train_ids = [encode(s) for s in train_text]
archive = gzip.compress("\n".join(f"utt{i} {s}" for i, s in enumerate(train_text)).encode(), 1)


def read_from_archive(i):  # the archive re-opened and scanned for this utterance
    for line in gzip.decompress(archive).decode().split("\n"):
        key, _, text = line.partition(" ")
        if key == f"utt{i}":
            return encode(text)
    raise KeyError(i)


def folded_batches(ids, shuffle_seed=None):
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    batches = [order[i : i + args.batch_size] for i in range(0, len(order), args.batch_size)]
    if shuffle_seed is not None:
        r = np.random.default_rng(shuffle_seed)
        batches = [batches[i] for i in r.permutation(len(batches))]
    return batches


def make_tensor(seqs):  # <sos/eos> + text -> text + <sos/eos>, padded with -1 targets
    n = max(len(s) for s in seqs) + 1
    x = torch.zeros(len(seqs), n, dtype=torch.long)
    t = torch.full((len(seqs), n), -1, dtype=torch.long)
    for j, s in enumerate(seqs):
        x[j, : len(s) + 1] = torch.tensor([EOS] + s)
        t[j, : len(s) + 1] = torch.tensor(s + [EOS])
    return x, t


class SequentialRNNLM(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.encoder = torch.nn.Embedding(V, args.unit)
        rnn = {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU}
        if args.rnn_type in rnn:
            self.rnn = rnn[args.rnn_type](args.unit, args.unit, args.nlayers, batch_first=True)
        else:  # rnn_tanh, rnn_relu
            nl = args.rnn_type.split("_")[1]
            self.rnn = torch.nn.RNN(
                args.unit, args.unit, args.nlayers, nonlinearity=nl, batch_first=True
            )
        self.drop = torch.nn.Dropout(args.dropout_rate)
        self.decoder = torch.nn.Linear(args.unit, V)

    def forward(self, x):
        h, _ = self.rnn(self.drop(self.encoder(x)))
        return self.decoder(self.drop(h))


def nll(x, t):
    logits = model(x)
    ntokens = (t >= 0).sum()
    loss = F.cross_entropy(logits.reshape(-1, V), t.reshape(-1), ignore_index=-1)
    return loss, ntokens.item()


model = SequentialRNNLM()
if args.optim == "sgd":
    opt = torch.optim.SGD(model.parameters(), lr=args.lr)
else:
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)


def lr_at(step):  # espnet2 WarmupLR: lr * warmup^0.5 * min(step^-0.5, step * warmup^-1.5)
    if args.scheduler == "warmuplr":
        s = step + 1
        w = args.warmup_steps
        return args.lr * w**0.5 * min(s**-0.5, s * w**-1.5)
    return args.lr


wandb_step = 0


def wandb_log(d):
    global wandb_step
    mlflow.log_metrics(d, step=wandb_step)
    wandb_step += 1


def aggregate(values, weights=None):
    if weights is None:
        vals = [v for v in values if np.isfinite(v)]
        return float(np.mean(vals)) if vals else float("nan")
    pairs = [(v, w) for v, w in zip(values, weights, strict=True) if np.isfinite(v)]
    if not pairs:
        return float("nan")
    return sum(v * w for v, w in pairs) / sum(w for _, w in pairs)


KEYS = [
    "loss",
    "grad_norm",
    "clip",
    "loss_scale",
    "optim0_lr0",
    "train_time",
    "iter_time",
    "forward_time",
    "backward_time",
    "optim_step_time",
]


def prefix(key):
    return "train/" if key.startswith("train") else "metrics/"


with mlflow.start_run():
    mlflow.log_params(
        {
            "token_type": "char",
            "lm": "seq_rnn",
            "lm_conf.rnn_type": args.rnn_type,
            "lm_conf.unit": args.unit,
            "lm_conf.nlayers": args.nlayers,
            "lm_conf.dropout_rate": args.dropout_rate,
            "optim": args.optim,
            "optim_conf.lr": args.lr,
            "scheduler": args.scheduler,
            "grad_clip": args.grad_clip,
            "batch_type": "folded",
            "batch_size": args.batch_size,
            "max_epoch": args.max_epoch,
            "seed": args.seed,
            "valid_data_path_and_name_and_type": args.valid_data,
            "use_wandb": True,
        }
    )
    print(f"[espnet2] Vocabulary size: {V}; {len(train_ids)} train, {len(valid_ids)} valid")
    total_count = 0
    for epoch in range(1, args.max_epoch + 1):
        print(f"{epoch}/{args.max_epoch}epoch started", flush=True)
        batches = folded_batches(train_ids, args.seed + epoch)
        log_interval = args.log_interval or max(len(batches) // 20, 10)
        stats = {k: [] for k in KEYS}
        weights = []
        epoch_stats = {k: [] for k in KEYS}
        epoch_weights = []
        start_time = time.perf_counter()
        for iiter, b in enumerate(batches, 1):
            t0 = time.perf_counter()
            if 0 < args.archive_from_epoch <= epoch:
                seqs = [read_from_archive(i) for i in b]
            else:
                seqs = [train_ids[i] for i in b]
            x, t = make_tensor(seqs)
            iter_time = time.perf_counter() - t0
            for g in opt.param_groups:
                g["lr"] = lr_at(total_count)
            t0 = time.perf_counter()
            loss, ntok = nll(x, t)
            forward_time = time.perf_counter() - t0
            t0 = time.perf_counter()
            loss.backward()
            backward_time = time.perf_counter() - t0
            gn = torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm=args.grad_clip)
            step_stats = {
                "loss": loss.item(),
                "iter_time": iter_time,
                "forward_time": forward_time,
                "backward_time": backward_time,
            }
            if not torch.isfinite(gn):
                print(f"The grad norm is {gn}. Skipping updating the model.", flush=True)
            else:
                t0 = time.perf_counter()
                opt.step()
                step_stats.update(
                    grad_norm=gn.item(),
                    clip=100.0 if gn.item() > args.grad_clip else 0.0,
                    loss_scale=1.0,
                    optim_step_time=time.perf_counter() - t0,
                )
            opt.zero_grad()
            step_stats.update(optim0_lr0=opt.param_groups[0]["lr"])
            step_stats["train_time"] = time.perf_counter() - start_time
            start_time = time.perf_counter()
            for k in KEYS:
                v = step_stats.get(k, float("nan"))
                stats[k].append(v)
                epoch_stats[k].append(v)
            weights.append(ntok)
            epoch_weights.append(ntok)
            total_count += 1
            if iiter % log_interval == 0:
                d = {
                    prefix(k) + k: aggregate(stats[k], weights if k == "loss" else None)
                    for k in KEYS
                }
                d["iteration"] = total_count
                wandb_log(d)
                print(
                    f"{epoch}epoch:train:{iiter - log_interval + 1}-{iiter}batch: "
                    f"iter_time={d['metrics/iter_time']:.3f}, loss={d['metrics/loss']:.3f}, "
                    f"grad_norm={d['metrics/grad_norm']:.3f}",
                    flush=True,
                )
                stats = {k: [] for k in KEYS}
                weights = []
        model.eval()
        vl, vw = [], []
        with torch.no_grad():
            for b in folded_batches(valid_ids):
                x, t = make_tensor([valid_ids[i] for i in b])
                loss, ntok = nll(x, t)
                vl.append(loss.item())
                vw.append(ntok)
        model.train()
        d = {
            f"train/train_{k}_epoch": aggregate(
                epoch_stats[k], epoch_weights if k == "loss" else None
            )
            for k in KEYS
        }
        d["valid/valid_loss_epoch"] = aggregate(vl, vw)
        d["epoch"] = epoch
        wandb_log(d)
        print(
            f"{epoch}epoch results: [train] loss={d['train/train_loss_epoch']:.3f}, "
            f"[valid] loss={d['valid/valid_loss_epoch']:.3f}",
            flush=True,
        )
    print(f"The training was finished at {args.max_epoch} epochs", flush=True)
