"""A molecular-property regressor trained as DeepChem's ``TorchModel.fit`` trains a
``MultitaskRegressor``, with a ``ValidationCallback``, its ``WandbLogger`` data mirrored to MLflow
by the team's logger.

Plain PyTorch + numpy + the plain ``mlflow`` API (no DeepChem, no RDKit here).  What is imitated:

* ``dc.models.MultitaskRegressor(n_tasks, n_features, layer_sizes, dropouts,
  weight_init_stddevs, weight_decay_penalty, learning_rate, batch_size)``: dense ReLU layers with
  dropout, an L2 loss weighted by the dataset's ``w``, Adam, the learning rate a float or an
  ``ExponentialDecay(initial_rate, decay_rate, decay_steps, staircase)`` schedule of optimizer
  steps; ``weight_decay_penalty`` added as an L2 penalty;
* ``TorchModel.fit(dataset, nb_epoch, deterministic=False, callbacks=[...])``: the
  ``default_generator`` walks a ``DiskDataset``'s shards in a new random order each epoch and
  shuffles inside each shard; ``current_step`` counts optimizer steps from 1; every
  ``log_frequency`` steps the batch loss goes to the logger as ``train/loss`` at
  ``step = current_step`` (``wandb_logger.log_data({'train/loss': batch_loss}, step)``) and
  ``Ending global_step 100: Average loss 0.412`` is printed (the mean since the last print);
* ``dc.models.ValidationCallback(valid_dataset, interval, metrics, transformers)``: every
  ``interval`` steps ``model.evaluate`` with ``dc.metrics.Metric(rms_score, np.mean)``,
  ``Metric(mae_score, np.mean)`` and ``Metric(pearson_r2_score, np.mean)`` on the un-normalised
  targets, logged through the ``WandbLogger`` with its ``eval/`` prefix and dataset index suffix
  (``_(0)``, which the team's mirror writes ``_0``, MLflow refusing parentheses):
  ``eval/mean-rms_score_0``, ``eval/mean-mae_score_0``, ``eval/mean-pearson_r2_score_0``;
  the printed ``Step 200 validation: mean-rms_score=0.842 ...`` lines;
* ``dc.trans.NormalizationTransformer(transform_y=True)`` fitted on the training set (and
  ``transform_X=True`` for the descriptor columns); ``dc.splits.RandomSplitter`` train / valid.

Data: a generated solubility-like task: ``n_molecules`` "molecules" each a set of fragments
from a vocabulary of 1,024 (a ``CircularFingerprint(size=1024)``-like bit vector), the
property a sum of fragment contributions, a few fragment-pair interactions and noise; optional
``RDKitDescriptors``-like columns (``--descriptors basic``: heavy-atom count, a MolLogP-like
sum, ring count, TPSA-like sum; ``--descriptors all`` adds the information-content index
``Ipc``, which grows exponentially with the molecule's size, computed in float64 and stored as
float32 as DeepChem stores features).  The training set is written as ``num_shards`` shards
(one assay batch each); ``--assay_units`` gives each batch's units as the lab reported them
(``log`` = log10 mol/L, ``log_uM`` = log10 micromolar, converted by subtracting 6 when
``convert`` is given, left as reported otherwise).  Written without looking at the doctor.

The team's weekly assay batch (``--new_batch_epoch``): 300 more molecules, featurized by the
new pipeline with ``CircularFingerprint(size=new_batch_fp_size)``, merged into the training
``DiskDataset`` as one more shard (``DiskDataset.merge``) when that epoch starts.

Faults are real settings and data: ``--learning_rate`` / ``--decay_steps``; ``--descriptors``;
``--new_batch_fp_size``; ``--train_size`` with ``--layer_sizes`` and ``--dropouts``.
"""

import time

import _setup
import mlflow
import numpy as np
import torch

args = _setup.parse_flags(
    {
        "--seed": 123,
        "--n_molecules": 3000,
        "--valid_frac": 0.15,
        "--train_size": 0,  # 0: every molecule not in the validation set
        "--num_shards": 6,
        "--layer_sizes": "512",
        "--dropouts": 0.25,
        "--weight_decay_penalty": 1e-4,
        "--learning_rate": 1e-3,
        "--decay_rate": 1.0,  # 1: a constant rate; else ExponentialDecay
        "--decay_steps": 1000,
        "--batch_size": 64,
        "--nb_epoch": 40,
        "--log_frequency": 10,
        "--interval": 50,
        "--descriptors": "none",  # none | basic | all
        "--assay_units": "log",  # comma-separated, one a shard: log | log_uM
        "--convert": 0,
        "--new_batch_epoch": 0,  # 0: no new assay batch during training
        "--new_batch_fp_size": 1024,
    }
)
rng = _setup.seeded(args.seed)
N_BITS = 1024

# ----------------------------------------------------------------------------- data
drng = np.random.default_rng(2024)  # the same chemistry for every run
contrib = drng.normal(0, 0.35, N_BITS) * (drng.uniform(size=N_BITS) < 0.4)
pairs = drng.integers(0, 64, (40, 2))
pair_w = drng.normal(0, 0.6, 40)
logp_w = drng.normal(0, 0.3, N_BITS)
tpsa_w = np.abs(drng.normal(0, 5, N_BITS))
sizes = drng.integers(8, 60, args.n_molecules)
sizes[drng.choice(args.n_molecules, 6, replace=False)] = drng.integers(140, 200, 6)  # macrocycles
X_fp = np.zeros((args.n_molecules, N_BITS), np.float32)
for i, s in enumerate(sizes):
    n_frag = max(4, s // 2)
    X_fp[i, drng.zipf(1.3, n_frag) % N_BITS] = 1.0
y = (
    X_fp @ contrib
    + sum(pair_w[k] * X_fp[:, a] * X_fp[:, b] for k, (a, b) in enumerate(pairs))
    - 0.02 * sizes
    + drng.normal(0, 0.3, args.n_molecules)
).astype(np.float32) - 2.0  # log mol/L
feats = [X_fp]
if args.descriptors in ("basic", "all"):
    desc = [sizes, X_fp @ logp_w, (sizes // 6).astype(float), X_fp @ tpsa_w]
    if args.descriptors == "all":
        desc.append(np.exp(sizes.astype(np.float64) * 0.75))  # Ipc
    feats.append(np.stack(desc, 1).astype(np.float32))
X = np.concatenate(feats, 1)
n_feat = X.shape[1]

order = drng.permutation(args.n_molecules)  # RandomSplitter
n_valid = int(args.valid_frac * args.n_molecules)
valid_idx, train_idx = order[:n_valid], order[n_valid:]
if args.train_size:
    train_idx = train_idx[: args.train_size]
shards = np.array_split(train_idx, args.num_shards)
units = args.assay_units.split(",")
units += [units[-1]] * (args.num_shards - len(units))
shard_y = []
for idx, u in zip(shards, units, strict=True):
    yy = y[idx].copy()
    if u == "log_uM":  # the lab's report: log10 of micromolar
        yy = yy + 6.0
        if args.convert:
            yy = yy - 6.0
    shard_y.append(yy.astype(np.float32))
Xv, yv = X[valid_idx], y[valid_idx]
new_idx = drng.choice(order[n_valid:], 300, replace=False)  # stands in for next week's molecules
X_new, y_new = X[new_idx], (y[new_idx] + drng.normal(0, 0.1, 300)).astype(np.float32)

# NormalizationTransformer(transform_y=True[, transform_X=True]) fitted on the training set
y_all = np.concatenate(shard_y)
y_mean, y_std = float(y_all.mean()), float(y_all.std())
X_all = X[np.concatenate(shards)]
x_mean = X_all.mean(0)
x_std = X_all.std(0)
x_std[:N_BITS] = 1.0
x_mean[:N_BITS] = 0.0
x_std[x_std == 0] = 1.0


def tx(a):
    return ((a - x_mean) / x_std).astype(np.float32)


# ----------------------------------------------------------------------------- model
layers, d = [], n_feat
for h in [int(v) for v in args.layer_sizes.split(",")]:
    layers += [torch.nn.Linear(d, h), torch.nn.ReLU(), torch.nn.Dropout(args.dropouts)]
    d = h
model = torch.nn.Sequential(*layers, torch.nn.Linear(d, 1))
optim = torch.optim.Adam(model.parameters(), lr=args.learning_rate)


def lr_at(step):
    if args.decay_rate == 1.0:
        return args.learning_rate
    return args.learning_rate * args.decay_rate ** (step / args.decay_steps)


def evaluate():
    model.eval()
    with torch.no_grad():
        pred = model(torch.from_numpy(tx(Xv)))[:, 0].numpy() * y_std + y_mean  # untransform
    model.train()
    err = pred - yv
    rms = float(np.sqrt(np.mean(err**2)))
    mae = float(np.mean(np.abs(err)))
    r = np.corrcoef(pred, yv)[0, 1] if np.all(np.isfinite(pred)) and pred.std() > 0 else np.nan
    return {
        "mean-rms_score": rms,
        "mean-mae_score": mae,
        "mean-pearson_r2_score": float(r**2),
    }


def log_data(data, step, dataset_id=None):  # WandbLogger.log_data, mirrored
    if dataset_id is not None:
        # W&B's key is f"{k}_({dataset_id})"; MLflow refuses parentheses in a name
        data = {f"{k}_{dataset_id}": v for k, v in data.items()}
    mlflow.log_metrics(data, step=step)


with mlflow.start_run():
    mlflow.log_params(vars(args))
    print(
        f"DiskDataset(X.shape={(len(train_idx), n_feat)}, y.shape={(len(train_idx), 1)}, "
        f"shards={args.num_shards}, units={units})",
        flush=True,
    )
    start = time.time()
    step, avg_loss, averaged = 0, 0.0, 0
    batches = [(tx(X[idx]), (yy - y_mean) / y_std) for idx, yy in zip(shards, shard_y, strict=True)]
    for epoch in range(args.nb_epoch):
        if args.new_batch_epoch and epoch == args.new_batch_epoch:
            k = args.new_batch_fp_size
            Xn = np.zeros((300, k + n_feat - N_BITS), np.float32)
            Xn[:, : min(k, N_BITS)] = X_new[:, : min(k, N_BITS)]
            Xn[:, k:] = X_new[:, N_BITS:]
            batches.append((tx(Xn) if k == N_BITS else Xn, (y_new - y_mean) / y_std))
            print(f"merged the new assay batch: X.shape={Xn.shape}", flush=True)
        for s in rng.permutation(len(batches)):
            xs, ys = batches[s]
            perm = rng.permutation(len(xs))
            for b in range(0, len(xs), args.batch_size):
                i = perm[b : b + args.batch_size]
                for g in optim.param_groups:
                    g["lr"] = lr_at(step)
                out = model(torch.from_numpy(xs[i]))[:, 0]
                loss = ((out - torch.from_numpy(ys[i].astype(np.float32))) ** 2).mean()
                penalty = sum((p**2).sum() for n, p in model.named_parameters() if "weight" in n)
                total = loss + args.weight_decay_penalty * penalty
                optim.zero_grad()
                total.backward()
                optim.step()
                step += 1
                batch_loss = float(loss.item())
                avg_loss += batch_loss
                averaged += 1
                if step % args.log_frequency == 0:
                    log_data({"train/loss": batch_loss}, step)
                if step % 100 == 0:
                    print(
                        f"Ending global_step {step}: Average loss {avg_loss / averaged:g}",
                        flush=True,
                    )
                    avg_loss, averaged = 0.0, 0
                if step % args.interval == 0:  # ValidationCallback
                    scores = evaluate()
                    print(
                        f"Step {step} validation: "
                        + " ".join(f"{k}={v:g}" for k, v in scores.items()),
                        flush=True,
                    )
                    log_data({f"eval/{k}": v for k, v in scores.items()}, step, 0)
    if averaged:
        print(f"Ending global_step {step}: Average loss {avg_loss / averaged:g}", flush=True)
    print(f"TIMING: model fitting took {time.time() - start:.3f} s", flush=True)
