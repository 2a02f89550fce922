"""A digit classifier trained the way a MosaicML Composer ``Trainer`` runs, on a streaming
dataset, logged under the names Composer's ``MLFlowLogger`` receives.

Plain PyTorch + the plain ``mlflow`` API.  Composer's names, logged every batch with
``step=`` the batch count: ``loss/train/total``; ``lr-DecoupledAdamW/group0`` (LRMonitor);
``time/epoch``, ``time/batch``, ``time/sample``, ``time/batch_in_epoch``,
``time/sample_in_epoch``, ``trainer/device_train_microbatch_size``; once its window is full,
SpeedMonitor's ``throughput/batches_per_sec``, ``throughput/samples_per_sec``,
``throughput/device/batches_per_sec``, ``throughput/device/samples_per_sec`` and
``wall_clock/train``, ``wall_clock/val``, ``wall_clock/total``; at every ``eval_interval``
``metrics/eval/MulticlassAccuracy`` and ``metrics/eval/CrossEntropy`` (a ComposerClassifier's
default eval metrics).  Hyperparameters flattened as Composer logs a YAML config
(``optimizers/lr``, ``scheduler/t_warmup``, ``dataset/cache_limit`` ...).  Metrics are sent
asynchronously (``synchronous=False``), as the MLFlowLogger does by default.  Written without
looking at the doctor.

Data: ``load_digits`` split into train/eval originals; each training image is jittered into
``--dataset.copies`` copies (one-pixel shifts and noise) and written into shards the way a
streaming dataset is, one pass in shard order with the samples shuffled inside each shard.
Shards ``0 .. local_shards-1`` are already in the local cache directory (plain arrays, as a
previous job left them); the rest live only at the "remote" as zlib-compressed files and are
fetched and decompressed into the cache on first use.  ``--dataset.cache_limit`` (bytes, 0 =
none) bounds the cache: a fetched shard that does not fit is evicted again right after the
sample is read, so every sample of it fetches and decompresses the whole shard again.
``--dataset.raw_shard K`` writes shard K without the ``/16`` pixel scaling the other shards
get (a shard written by an older preprocessing script).
"""

import collections
import math
import os
import tempfile
import time
import zlib

import _setup
import mlflow
import numpy as np
import torch
from sklearn.datasets import load_digits

args = _setup.parse_flags(
    {
        "--seed": ("seed", 17),
        "--max_duration": ("max_duration", "400ba"),
        "--eval_interval": ("eval_interval", "50ba"),
        "--train_batch_size": ("bs", 32),
        "--optimizers/lr": ("lr", 1e-3),
        "--optimizers/weight_decay": ("wd", 1e-5),
        "--scheduler/name": ("sched", "cosine_with_warmup"),
        "--scheduler/t_warmup": ("t_warmup", "20ba"),
        "--scheduler/alpha_f": ("alpha_f", 0.0),
        "--model/hidden": ("hidden", 256),
        "--dataset/copies": ("copies", 10),
        "--dataset/num_shards": ("num_shards", 8),
        "--dataset/local_shards": ("local_shards", 8),
        "--dataset/cache_limit": ("cache_limit", 0),
        "--dataset/raw_shard": ("raw_shard", -1),
        "--callbacks/speed_monitor/window_size": ("window", 20),
    }
)

rng = _setup.seeded(args.seed)
X, y = load_digits(return_X_y=True)
idx = rng.permutation(len(X))
ev, tr = idx[:297], idx[297:]
Xev = torch.from_numpy((X[ev] / 16.0).astype(np.float32))
yev = torch.from_numpy(y[ev])


def jitter(img):
    """One augmented copy of an 8x8 digit: a shift of up to one pixel and a little noise."""
    im = np.roll(img.reshape(8, 8), (rng.integers(-1, 2), rng.integers(-1, 2)), (0, 1))
    return np.clip(im + rng.normal(0, 0.5, im.shape), 0, 16).reshape(64)


samples = np.stack([jitter(X[i]) for i in tr for _ in range(args.copies)]).astype(np.float32)
labels = np.repeat(y[tr], args.copies)
perm = rng.permutation(len(samples))  # shards hold a shuffled mix of all classes
samples, labels = samples[perm], labels[perm]

remote = tempfile.mkdtemp(prefix="composer-remote-")
local = tempfile.mkdtemp(prefix="composer-local-")
bounds = np.linspace(0, len(samples), args.num_shards + 1).astype(int)
for k in range(args.num_shards):
    xs = samples[bounds[k] : bounds[k + 1]]
    xs = xs if k == args.raw_shard else xs / 16.0
    payload = np.concatenate([xs.astype(np.float32).ravel(), labels[bounds[k] : bounds[k + 1]]])
    if k < args.local_shards:
        np.save(os.path.join(local, f"shard.{k:05d}.npy"), payload.astype(np.float32))
    else:
        with open(os.path.join(remote, f"shard.{k:05d}.zlib"), "wb") as f:
            f.write(zlib.compress(payload.astype(np.float32).tobytes(), 6))


class StreamingShards:
    """Shard reader with a local cache bounded by ``cache_limit`` bytes (LRU eviction)."""

    def __init__(self):
        self.cache = collections.OrderedDict()  # shard → decompressed array

    def _fetch(self, k):
        path = os.path.join(local, f"shard.{k:05d}.npy")
        if os.path.exists(path):
            return np.load(path)
        with open(os.path.join(remote, f"shard.{k:05d}.zlib"), "rb") as f:
            return np.frombuffer(zlib.decompress(f.read()), np.float32)

    def get(self, k, i):
        if k in self.cache:
            self.cache.move_to_end(k)
            arr = self.cache[k]
        else:
            arr = self._fetch(k)
            self.cache[k] = arr
            limit = args.cache_limit or math.inf
            while self.cache and sum(a.nbytes for a in self.cache.values()) > limit:
                self.cache.popitem(last=False)  # evict least recently used (maybe this one)
        n = bounds[k + 1] - bounds[k]
        return arr[i * 64 : (i + 1) * 64], int(arr[n * 64 + i])


def stream():
    """Samples in shard order, shuffled within each shard, for as many passes as needed."""
    reader = StreamingShards()
    epoch = 0
    while True:
        for k in range(args.num_shards):
            for i in rng.permutation(bounds[k + 1] - bounds[k]):
                yield epoch, reader.get(k, i)
        epoch += 1


def batches_of(duration):
    if duration.endswith("ep"):
        return int(duration[:-2]) * math.ceil(len(samples) / args.bs)
    return int(duration[:-2])


max_batches = batches_of(args.max_duration)
eval_every = batches_of(args.eval_interval)
warmup = batches_of(args.t_warmup)

model = torch.nn.Sequential(
    torch.nn.Linear(64, args.hidden),
    torch.nn.ReLU(),
    torch.nn.Linear(args.hidden, args.hidden),
    torch.nn.ReLU(),
    torch.nn.Linear(args.hidden, 10),
)
# Composer's DecoupledAdamW: the decay is scaled by lr / initial lr, not by lr
opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.wd / args.lr)


def lr_at(b):
    """Composer's CosineAnnealingWithWarmupScheduler / LinearWithWarmupScheduler /
    ConstantScheduler, as a multiple of the initial lr, at batch ``b``."""
    if args.sched == "constant":
        return args.lr
    if b < warmup:
        return args.lr * b / warmup
    frac = (b - warmup) / max(1, max_batches - warmup)
    if args.sched == "linear_with_warmup":
        return args.lr * (1 + (args.alpha_f - 1) * frac)
    return args.lr * (args.alpha_f + (1 - args.alpha_f) * 0.5 * (1 + math.cos(math.pi * frac)))


hparams = {
    "seed": args.seed,
    "rank_zero_seed": args.seed,
    "num_nodes": 1,
    "run_name": f"digits-mlp-{args.seed}",
    "max_duration": args.max_duration,
    "eval_interval": args.eval_interval,
    "train_batch_size": args.bs,
    "device_train_microbatch_size": args.bs,
    "optimizers/name": "decoupled_adamw",
    "optimizers/lr": args.lr,
    "optimizers/weight_decay": args.wd,
    "optimizers/betas": [0.9, 0.999],
    "scheduler/name": args.sched,
    "scheduler/t_warmup": args.t_warmup,
    "scheduler/alpha_f": args.alpha_f,
    "model/name": "mlp",
    "model/hidden": args.hidden,
    "dataset/copies": args.copies,
    "dataset/num_shards": args.num_shards,
    "dataset/local_shards": args.local_shards,
    "dataset/cache_limit": args.cache_limit,
    "dataset/shuffle_algo": "py1s",
    "callbacks/speed_monitor/window_size": args.window,
}

with mlflow.start_run():
    mlflow.log_params(hparams)
    data = stream()
    hist = collections.deque(maxlen=args.window + 1)  # (wall time, samples) at batch ends
    t_start = time.perf_counter()
    hist.append((t_start, 0))
    wall_val, samples_seen, epoch_prev, batch_in_epoch = 0.0, 0, 0, 0
    for b in range(max_batches):
        items = [next(data) for _ in range(args.bs)]
        epoch = items[-1][0]
        if epoch != epoch_prev:
            epoch_prev, batch_in_epoch = epoch, 0
        xb = torch.from_numpy(np.stack([x for _, (x, _) in items]))
        yb = torch.tensor([t for _, (_, t) in items])
        for g in opt.param_groups:
            g["lr"] = lr_at(b)
        loss = torch.nn.functional.cross_entropy(model(xb), yb)
        opt.zero_grad()
        loss.backward()
        opt.step()
        samples_seen += args.bs
        batch_in_epoch += 1
        now = time.perf_counter()
        hist.append((now, samples_seen))
        m = {
            "loss/train/total": loss.item(),
            "lr-DecoupledAdamW/group0": lr_at(b),
            "time/epoch": epoch,
            "time/batch": b + 1,
            "time/sample": samples_seen,
            "time/batch_in_epoch": batch_in_epoch,
            "time/sample_in_epoch": batch_in_epoch * args.bs,
            "trainer/device_train_microbatch_size": args.bs,
        }
        if len(hist) == hist.maxlen:  # SpeedMonitor: throughput over its window
            dt = hist[-1][0] - hist[0][0]
            m |= {
                "throughput/batches_per_sec": args.window / dt,
                "throughput/samples_per_sec": (hist[-1][1] - hist[0][1]) / dt,
                "throughput/device/batches_per_sec": args.window / dt,
                "throughput/device/samples_per_sec": (hist[-1][1] - hist[0][1]) / dt,
            }
        m |= {
            "wall_clock/train": now - t_start - wall_val,
            "wall_clock/val": wall_val,
            "wall_clock/total": now - t_start,
        }
        if (b + 1) % eval_every == 0 or b + 1 == max_batches:
            t_eval = time.perf_counter()
            model.eval()
            with torch.no_grad():
                out = model(Xev)
                m["metrics/eval/CrossEntropy"] = torch.nn.functional.cross_entropy(out, yev).item()
                m["metrics/eval/MulticlassAccuracy"] = (out.argmax(1) == yev).float().mean().item()
            model.train()
            wall_val += time.perf_counter() - t_eval
            print(
                f"[batch={b + 1}/{max_batches}]: loss/train/total: {loss.item():.4f},"
                f" metrics/eval/MulticlassAccuracy: {m['metrics/eval/MulticlassAccuracy']:.4f}",
                flush=True,
            )
        mlflow.log_metrics(m, step=b + 1, synchronous=False)
    print(f"done: {max_batches} batches, {time.perf_counter() - t_start:.1f}s")
