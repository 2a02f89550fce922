"""A sensor-signal (activity recognition) classifier trained as pytorch-pfn-extras' examples
train one, with an ``ExtensionsManager`` whose ``LogReport`` entries are mirrored to MLflow
name for name.

Plain PyTorch + numpy + the plain ``mlflow`` API (no pytorch-pfn-extras here).  What is
imitated, as ``example/mnist.py`` sets the manager up:

* the training loop reports ``ppe.reporting.report({'train/loss': loss.item()})`` every
  iteration inside ``manager.run_iteration()``; the ``Evaluator`` extension reports
  ``val/loss`` and ``val/acc`` (means over the validation batches) once an epoch;
  ``observe_lr`` reports ``lr``; ``ParameterStatistics(model, prefix='model')`` reports
  ``model/<param name>/{data,grad}/{mean,std,min,max,zeros}`` (e.g. ``model/fc2.bias/grad/min``)
  once an epoch;
* ``LogReport`` (trigger ``(1, 'epoch')``) averages what was reported since its last entry and
  adds ``epoch``, ``iteration`` and ``elapsed_time`` (seconds since training began); the
  team's ``MLflowWriter`` extension logs each new entry with ``mlflow.log_metrics(entry,
  step=entry['iteration'])``; ``PrintReport``'s table on stdout;
* ``extensions.snapshot(n_retains=...)`` written through a ``ThreadQueueWriter`` (a writer
  thread fed by a bounded queue), one snapshot an epoch.

Data: generated 3-axis accelerometer windows (128 samples) of 6 activities from 30 subjects:
each activity a mix of its own frequencies and amplitudes, each subject its own cadence and
gain, plus noise; a subject-wise split (``--val_subjects``).  Models: the example's small CNN
(``conv1``, ``conv2``, ``fc1``, ``fc2``).  Written
without looking at the doctor.

Faults are real code paths: ``--train_size`` small with a wide ``fc1``, no weight decay and
many epochs; ``--snapshot_n_retains``: the team's pruning in the writer thread builds the old
snapshot's name without its ``.pt`` suffix, so the writer thread dies at the first prune and
the bounded queue then blocks the training loop; ``--iteration_log``: a second
``LogReport(filename=..., trigger=(1, 'iteration'))``, which (as Chainer's and ppe's
``LogReport`` do) rewrites its whole log as indented JSON at every trigger, so each iteration
costs more than the last; ``--sort_by_subject``: the loader reorders the windows by subject
for caching but keeps the label array in file order.
"""

import json
import os
import queue
import threading
import time

import _setup
import mlflow
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

args = _setup.parse_flags(
    {
        "--seed": 1,
        "--batch_size": 32,
        "--test_batch_size": 100,
        "--epochs": 20,
        "--lr": 0.02,
        "--momentum": 0.9,
        "--hidden": 32,
        "--grad_clip": 1.0,
        "--weight_decay": 1e-3,
        "--windows_per_subject": 90,
        "--val_subjects": 6,
        "--train_size": 0,
        "--snapshot_n_retains": 0,
        "--sort_by_subject": 0,
        "--out": "result",
        "--iteration_log": "",
    }
)
rng = _setup.seeded(args.seed)

# ----------------------------------------------------------------------------- data
N_CLS, N_SUBJ, L = 6, 30, 128
cls_freq = rng.uniform(0.8, 3.0, (N_CLS, 3, 2))  # two frequencies per axis, cycles per window/10
cls_amp = rng.uniform(0.3, 1.5, (N_CLS, 3, 2))
cls_off = rng.normal(0, 0.2, (N_CLS, 3))
subj_cadence = rng.uniform(0.75, 1.3, N_SUBJ)
subj_gain = rng.uniform(0.8, 1.25, N_SUBJ)
t = np.arange(L) / L * 10


def window(c, s):
    ph = rng.uniform(0, 2 * np.pi, (3, 2))
    f = cls_freq[c] * subj_cadence[s]
    x = (cls_amp[c, :, :, None] * np.sin(2 * np.pi * f[:, :, None] * t + ph[:, :, None])).sum(1)
    x = subj_gain[s] * (x + cls_off[c][:, None]) + rng.normal(0, 1.2, (3, L))
    return x.astype(np.float32)


X, Y, S = [], [], []
for s in range(N_SUBJ):
    for _ in range(args.windows_per_subject):
        c = int(rng.integers(N_CLS))
        X.append(window(c, s))
        Y.append(c)
        S.append(s)
file_order = rng.permutation(len(X))  # the recordings' order in the export
X, Y, S = np.stack(X)[file_order], np.array(Y)[file_order], np.array(S)[file_order]
val_subj = rng.permutation(N_SUBJ)[: args.val_subjects]
is_val = np.isin(S, val_subj)
Xtr, Ytr, Str = X[~is_val], Y[~is_val], S[~is_val]
Xva, Yva = X[is_val], Y[is_val]
if args.train_size:
    keep = rng.permutation(len(Xtr))[: args.train_size]
    Xtr, Ytr, Str = Xtr[keep], Ytr[keep], Str[keep]
if args.sort_by_subject:  # the team's cache wants the windows grouped by subject
    order = np.argsort(Str, kind="stable")
    Xtr = Xtr[order]  # ... and the labels stay in file order
mean, std = Xtr.mean((0, 2), keepdims=True), Xtr.std((0, 2), keepdims=True)
Xtr, Xva = (Xtr - mean) / std, (Xva - mean) / std
Xtr, Ytr = torch.from_numpy(Xtr), torch.from_numpy(Ytr)
Xva, Yva = torch.from_numpy(Xva), torch.from_numpy(Yva)
print(f"train windows: {len(Xtr)}, val windows: {len(Xva)}", flush=True)


# ----------------------------------------------------------------------------- models
class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv1d(3, 16, 7, 1)
        self.conv2 = nn.Conv1d(16, 32, 5, 1)
        self.fc1 = nn.Linear(32 * 28, args.hidden)
        self.fc2 = nn.Linear(args.hidden, N_CLS)

    def forward(self, x):
        x = F.max_pool1d(F.relu(self.conv1(x)), 2)
        x = F.max_pool1d(F.relu(self.conv2(x)), 2)
        x = F.relu(self.fc1(x.flatten(start_dim=1)))
        return F.log_softmax(self.fc2(x), dim=1)


model = Net()
optimizer = torch.optim.SGD(
    model.parameters(), lr=args.lr, momentum=args.momentum, weight_decay=args.weight_decay
)
iters_per_epoch = (len(Xtr) + args.batch_size - 1) // args.batch_size


# ----------------------------------------------------------------------------- extensions
class Reporter:
    def __init__(self):
        self.sums, self.counts = {}, {}

    def report(self, d):
        for k, v in d.items():
            self.sums[k] = self.sums.get(k, 0.0) + float(v)
            self.counts[k] = self.counts.get(k, 0) + 1

    def summary(self):
        out = {k: self.sums[k] / self.counts[k] for k in self.sums}
        self.sums, self.counts = {}, {}
        return out


reporter = Reporter()


def evaluator():
    model.eval()
    with torch.no_grad():
        for k in range(0, len(Xva), args.test_batch_size):
            data, target = Xva[k : k + args.test_batch_size], Yva[k : k + args.test_batch_size]
            output = model(data)
            reporter.report({"val/loss": F.nll_loss(output, target).item()})
            correct = output.argmax(1).eq(target).sum().item()
            reporter.report({"val/acc": correct / len(data)})
    model.train()


STATS = {
    "mean": torch.mean,
    "std": torch.std,
    "min": torch.min,
    "max": torch.max,
    "zeros": lambda x: (x == 0).sum(),
}


def parameter_statistics():
    for name, p in model.named_parameters():
        for attr in ("data", "grad"):
            v = getattr(p, attr)
            if v is None:
                continue
            for fn_name, fn in STATS.items():
                reporter.report({f"model/{name}/{attr}/{fn_name}": fn(v.detach()).item()})


class ThreadQueueWriter:
    """ppe.writing.ThreadQueueWriter: a writer thread fed through a bounded queue."""

    def __init__(self, out_dir, n_retains):
        self.out_dir, self.n_retains, self.saved = out_dir, n_retains, []
        self.q = queue.Queue(maxsize=2)
        threading.Thread(target=self._worker, daemon=True).start()

    def _worker(self):
        while True:
            filename, state = self.q.get()
            torch.save(state, os.path.join(self.out_dir, filename))
            self.saved.append(filename)
            if self.n_retains and len(self.saved) > self.n_retains:
                old = self.saved.pop(0)
                # the team's pruning: the old snapshot's name without its suffix
                os.remove(os.path.join(self.out_dir, old.rsplit(".", 1)[0]))

    def __call__(self, filename, state):
        self.q.put((filename, state))


os.makedirs(args.out, exist_ok=True)
writer = ThreadQueueWriter(args.out, args.snapshot_n_retains)
PRINT_KEYS = ["epoch", "iteration", "train/loss", "lr", "val/loss", "val/acc", "elapsed_time"]
with mlflow.start_run():
    mlflow.log_params(vars(args))
    print("  ".join(f"{k:<12}" for k in PRINT_KEYS), flush=True)
    start, iteration, iter_log = time.time(), 0, []
    for epoch in range(1, args.epochs + 1):
        perm = torch.from_numpy(rng.permutation(len(Xtr)))
        for k in range(iters_per_epoch):
            idx = perm[k * args.batch_size : (k + 1) * args.batch_size]
            data, target = Xtr[idx], Ytr[idx]
            optimizer.zero_grad()  # manager.run_iteration(step_optimizers=['main'])
            output = model(data)
            loss = F.nll_loss(output, target)
            reporter.report({"train/loss": loss.item()})
            loss.backward()
            if args.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), args.grad_clip)
            optimizer.step()
            iteration += 1
            # LogReport(filename=args.iteration_log, trigger=(1, 'iteration'))
            if args.iteration_log:
                iter_log.append(
                    {
                        "train/loss": loss.item(),
                        "epoch": epoch - 1 + (k + 1) / iters_per_epoch,
                        "iteration": iteration,
                        "elapsed_time": time.time() - start,
                    }
                )
                with open(os.path.join(args.out, args.iteration_log), "w") as f:
                    json.dump(iter_log, f, indent=4)
        # extensions triggered at (1, 'epoch'), in priority order
        evaluator()
        reporter.report({"lr": optimizer.param_groups[0]["lr"]})  # observe_lr
        parameter_statistics()
        entry = reporter.summary()  # LogReport
        entry.update({"epoch": epoch, "iteration": iteration, "elapsed_time": time.time() - start})
        mlflow.log_metrics(entry, step=iteration)  # the team's MLflowWriter
        print("  ".join(f"{entry.get(key, float('nan')):<12.6g}" for key in PRINT_KEYS), flush=True)
        writer(
            f"snapshot_iter_{iteration}.pt",
            {"model": model.state_dict(), "optimizer": optimizer.state_dict()},
        )
