"""An income classifier trained by TensorFlow's ``tf.estimator.train_and_evaluate`` with a
canned ``DNNClassifier`` (binary head), its TensorBoard event files mirrored into MLflow.

Plain torch + the plain ``mlflow`` API (no tensorflow here).  The data are generated, census
style: age, education_num, hours_per_week, log capital_gain and two categorical columns
(workclass, occupation; one-hot as ``indicator_column``), the label a noisy logistic function
of them with interactions (about a quarter positive).  The training rows are written as
``--num_shards`` gzip'd CSV shards that the input_fn reads in file order
(``list_files(shuffle=False)``, ``interleave(cycle_length=1)``) through a 1000-row shuffle
buffer, repeated; the eval input_fn reads the eval CSV.  The RunConfig and the classifier's
arguments are logged as params.

As the Estimator writes its summaries (and an event-file mirror copies them, tag for tag,
eval tags under ``eval/``): in ``model_dir`` every ``--save_summary_steps`` the batch ``loss``
(mean over the batch) and, from the StepCounterHook every ``--log_step_count_steps``,
``global_step/sec`` (over the last window); in ``model_dir/eval`` after every checkpoint
(``--save_checkpoints_steps``; EvalSpec throttle 0) ``eval/loss``, ``eval/average_loss``,
``eval/accuracy``, ``eval/accuracy_baseline``, ``eval/auc``, ``eval/precision``,
``eval/recall``, ``eval/label/mean``, ``eval/prediction/mean``; step = ``global_step``
throughout.  The console shows the LoggingTensorHook's ``loss = ..., step = ...`` lines,
``global_step/sec: ...`` and ``Saving dict for global step N: ...``.  Written without
looking at the doctor.

Faults are real settings: a learning rate far too high; one shard written with the label
column inverted (``--inverted_shard``); from some step on an input_fn that re-reads and
re-parses its CSV shard for every batch (``--reparse_from_step``); an eval CSV whose header
spells a column ``hours-per-week`` (``--eval_csv_dashed 1``: the feature columns look up
``hours_per_week`` at the first evaluation); a wide three-layer DNN on a few hundred rows.
"""

import gzip
import io
import os
import tempfile
import time

import _setup
import mlflow
import numpy as np
import torch
import torch.nn.functional as F

args = _setup.parse_flags(
    {
        "--seed": 0,
        "--hidden_units": "64,32",
        "--optimizer": "Adagrad",
        "--learning_rate": 0.05,
        "--dropout": 0.0,
        "--batch_size": 64,
        "--max_steps": 3000,
        "--save_summary_steps": 50,
        "--log_step_count_steps": 100,
        "--save_checkpoints_steps": 500,
        "--train_rows": 16000,
        "--eval_rows": 2000,
        "--num_shards": 4,
        "--inverted_shard": -1,
        "--reparse_from_step": 0,
        "--eval_csv_dashed": 0,
    }
)
rng = _setup.seeded(args.seed)

# ---------------------------------------------------------------- data
COLS = ["age", "education_num", "hours_per_week", "capital_gain", "workclass", "occupation"]
data_rng = np.random.default_rng(2024)  # the data are fixed; --seed moves the training
W_WORK = data_rng.normal(0, 0.6, 6)
W_OCC = data_rng.normal(0, 0.8, 10)


def make_rows(n):
    age = np.clip(data_rng.normal(39, 13, n), 17, 90).round()
    edu = np.clip(data_rng.normal(10, 2.6, n), 1, 16).round()
    hours = np.clip(data_rng.normal(40, 12, n), 1, 99).round()
    gain = np.where(data_rng.random(n) < 0.08, data_rng.lognormal(8, 1.2, n), 0.0).round()
    work = data_rng.integers(0, 6, n)
    occ = data_rng.integers(0, 10, n)
    z = (
        -2.6
        + 0.045 * (age - 39)
        - 0.0009 * (age - 45) ** 2
        + 0.33 * (edu - 10)
        + 0.03 * (hours - 40)
        + 0.35 * np.log1p(gain)
        + W_WORK[work]
        + W_OCC[occ]
        + 0.02 * (edu - 10) * (hours - 40) / 4
    )
    label = (data_rng.random(n) < 1 / (1 + np.exp(-z))).astype(float)
    return np.column_stack([age, edu, hours, gain, work, occ, label])


tmp = tempfile.mkdtemp(prefix="estimator-data-")
train = make_rows(args.train_rows)
shard_files = []
for i, part in enumerate(np.array_split(train, args.num_shards)):
    if i == args.inverted_shard:
        part = part.copy()
        part[:, -1] = 1.0 - part[:, -1]  # the shard was exported with the label inverted
    path = os.path.join(tmp, f"train-{i:05d}-of-{args.num_shards:05d}.csv.gz")
    with gzip.open(path, "wt") as f:
        f.write(",".join(COLS + ["income_bracket"]) + "\n")
        np.savetxt(f, part, fmt="%.0f", delimiter=",")
    shard_files.append(path)
eval_header = COLS + ["income_bracket"]
if args.eval_csv_dashed:
    eval_header = [c.replace("_", "-") if c == "hours_per_week" else c for c in eval_header]
eval_path = os.path.join(tmp, "eval.csv")
with open(eval_path, "w") as f:
    f.write(",".join(eval_header) + "\n")
    np.savetxt(f, make_rows(args.eval_rows), fmt="%.0f", delimiter=",")


def read_csv(path):
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rt") as f:
        text = f.read()
    header, body = text.split("\n", 1)
    arr = np.loadtxt(io.StringIO(body), delimiter=",", ndmin=2)
    return {name: arr[:, j] for j, name in enumerate(header.split(","))}


def input_layer(features):
    """The feature columns: numeric_column(...) with normalizer_fn, indicator_column(...)."""
    num = torch.tensor(
        np.column_stack(
            [
                (features["age"] - 39) / 13,
                (features["education_num"] - 10) / 2.6,
                (features["hours_per_week"] - 40) / 12,
                np.log1p(features["capital_gain"]) / 3,
            ]
        ),
        dtype=torch.float32,
    )
    work = F.one_hot(torch.tensor(features["workclass"]).long(), 6).float()
    occ = F.one_hot(torch.tensor(features["occupation"]).long(), 10).float()
    return torch.cat([num, work, occ], 1)


def train_input_fn():
    """Shards in file order, a 1000-row shuffle buffer, repeat, batch."""
    step = 0
    while True:
        for path in shard_files:
            cols = read_csv(path)
            n = len(cols["age"])
            buf = list(range(min(1000, n)))
            nxt = len(buf)
            batch = []
            while buf:
                k = rng.integers(len(buf))
                batch.append(buf[k])
                if nxt < n:
                    buf[k] = nxt
                    nxt += 1
                else:
                    buf.pop(k)
                if len(batch) == args.batch_size:
                    step += 1
                    if args.reparse_from_step and step >= args.reparse_from_step:
                        cols = read_csv(path)  # re-reads and re-parses the shard per batch
                    idx = np.array(batch)
                    yield {c: v[idx] for c, v in cols.items()}
                    batch = []


# ---------------------------------------------------------------- model
layers, width = [], 20
for h in [int(u) for u in args.hidden_units.split(",")]:
    layers += [torch.nn.Linear(width, h), torch.nn.ReLU()]
    if args.dropout:
        layers.append(torch.nn.Dropout(args.dropout))
    width = h
model = torch.nn.Sequential(*layers, torch.nn.Linear(width, 1))
opt = {
    "Adagrad": lambda p: torch.optim.Adagrad(
        p, lr=args.learning_rate, initial_accumulator_value=0.1
    ),
    "Adam": lambda p: torch.optim.Adam(p, lr=args.learning_rate),
    "SGD": lambda p: torch.optim.SGD(p, lr=args.learning_rate),
    "RMSProp": lambda p: torch.optim.RMSprop(p, lr=args.learning_rate, alpha=0.9),
}[args.optimizer](model.parameters())


def auc(score, y):
    order = np.argsort(score)
    ranks = np.empty(len(score))
    ranks[order] = np.arange(1, len(score) + 1)
    pos = y == 1
    return (ranks[pos].sum() - pos.sum() * (pos.sum() + 1) / 2) / (pos.sum() * (~pos).sum())


def evaluate(step):
    feats = read_csv(eval_path)
    x, y = input_layer(feats), torch.tensor(feats["income_bracket"], dtype=torch.float32)
    model.eval()
    with torch.no_grad():
        logits = model(x)[:, 0]
    model.train()
    per = F.binary_cross_entropy_with_logits(logits, y, reduction="none")
    batch_losses = [
        per[s : s + args.batch_size].mean().item() for s in range(0, len(y), args.batch_size)
    ]
    p = torch.sigmoid(logits).numpy()
    yn = y.numpy()
    pred = p > 0.5
    tp = float((pred & (yn == 1)).sum())
    res = {
        "loss": float(np.mean(batch_losses)),
        "average_loss": per.mean().item(),
        "accuracy": float((pred == (yn == 1)).mean()),
        "accuracy_baseline": float(max(yn.mean(), 1 - yn.mean())),
        "auc": float(auc(p, yn)),
        "precision": tp / max(pred.sum(), 1),
        "recall": tp / max((yn == 1).sum(), 1),
        "label/mean": float(yn.mean()),
        "prediction/mean": float(p.mean()),
    }
    mlflow.log_metrics({f"eval/{k}": v for k, v in res.items()}, step=step)
    print(
        f"INFO:tensorflow:Saving dict for global step {step}: "
        + ", ".join(f"{k} = {v:.6g}" for k, v in res.items())
        + f", global_step = {step}",
        flush=True,
    )


with mlflow.start_run():
    mlflow.log_params(
        vars(args)
        | {
            "model_dir": "/tmp/census_model",
            "keep_checkpoint_max": 5,
            "throttle_secs": 0,
            "n_classes": 2,
        }
    )
    data = train_input_fn()
    t_win, s_win, t_log = time.perf_counter(), 0, time.perf_counter()
    for step in range(1, args.max_steps + 1):
        feats = next(data)
        x = input_layer(feats)
        y = torch.tensor(feats["income_bracket"], dtype=torch.float32)
        loss = F.binary_cross_entropy_with_logits(model(x)[:, 0], y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step == 1 or step % args.save_summary_steps == 0:
            mlflow.log_metrics({"loss": loss.item()}, step=step)
        if step % args.log_step_count_steps == 0:
            now = time.perf_counter()
            gps = (step - s_win) / (now - t_win)
            t_win, s_win = now, step
            mlflow.log_metrics({"global_step/sec": gps}, step=step)
            print(f"INFO:tensorflow:global_step/sec: {gps:.4g}", flush=True)
            print(
                f"INFO:tensorflow:loss = {loss.item():.6g}, step = {step} ({now - t_log:.3f} sec)",
                flush=True,
            )
            t_log = now
        if step % args.save_checkpoints_steps == 0 or step == args.max_steps:
            print(
                f"INFO:tensorflow:Saving checkpoints for {step} into /tmp/census_model/model.ckpt.",
                flush=True,
            )
            print("INFO:tensorflow:Calling model_fn.", flush=True)
            evaluate(step)
    print(f"INFO:tensorflow:Loss for final step: {loss.item():.6g}.", flush=True)
