"""A digit embedding trained with pytorch-metric-learning's ``trainers.MetricLossOnly``
(``TripletMarginLoss`` with a ``MeanReducer`` over every triplet in the batch, no miner), its record-keeper hooks
(``logging_presets.get_hook_container(record_keeper)``) mirrored to MLflow by the team.

Plain PyTorch + numpy + scikit-learn + the plain ``mlflow`` API (no pytorch_metric_learning,
no record_keeper here).  What is imitated:

* ``trunk`` (an MLP, 64 -> ``trunk_size`` -> ``trunk_size``) and ``embedder``
  (-> ``embedding_size``), L2-normalised embeddings; ``MPerClassSampler(labels, m=4)``;
  ``TripletMarginLoss(margin, reducer=reducers.MeanReducer())`` on all the batch's
  triplets (``miner=None``); Adam on trunk and
  embedder (``lr``), optionally ``StepLR`` (``lr_step``, ``lr_gamma``) as the
  ``lr_schedulers`` dict ``{'trunk_scheduler_by_epoch': ...}``;
* the record-keeper records, per iteration at ``step`` = the trainer's
  ``get_iteration()`` from 1: ``loss_histories/metric_loss``, ``loss_histories/total_loss``,
  ``TripletMarginLoss/num_triplets``, ``TripletMarginLoss/num_non_zero_triplets``,
  ``TripletMarginLoss/pos_pair_dist``, ``TripletMarginLoss/neg_pair_dist`` (batch means),
  ``optimizer_trunk/lr``; per epoch (``end_of_epoch_hook``, ``GlobalEmbeddingSpaceTester``
  with ``AccuracyCalculator(k='max_bin_count')`` on the ``val`` split) at ``step`` = epoch
  from 1: ``accuracies_normalized_GlobalEmbeddingSpaceTester_level_0/precision_at_1_level0``,
  ``.../mean_average_precision_at_r_level0``, ``.../r_precision_level0``, and the hook's
  ``best_epoch``/``best_accuracy`` print.

Data: scikit-learn's 8 x 8 digits (1,797 images) split by the seed into train and val.
Written without looking at the doctor.

Team options (the faults are real settings, data and code paths):

* ``--lr``, ``--batch_size``, ``--num_epochs``, ``--embedding_size``, ``--trunk_size``,
  ``--margin``, ``--lr_step``, ``--lr_gamma``, ``--lr_step_unit`` (the team's wrapper steps
  the scheduler once an ``epoch`` or once an ``iteration``);
* ``--extra_file_epoch k``: the second scanner's digits (re-scanned training images with
  scanner noise) join the training set at epoch k; ``--extra_file_missing``: how that
  scanner's export writes unread pixels (``zero`` or ``nan``, an empty cell);
* ``--extra_metrics_epoch k`` with ``--extra_metrics``: from epoch k the tester's
  ``AccuracyCalculator(include=...)`` also computes the listed metrics (comma separated).
"""

import time

import _setup
import mlflow
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from sklearn.datasets import load_digits

args = _setup.parse_flags(
    {
        "--seed": 0,
        "--lr": 1e-3,
        "--batch_size": 64,
        "--num_epochs": 20,
        "--embedding_size": 32,
        "--trunk_size": 128,
        "--margin": 0.1,
        "--lr_step": 0,
        "--lr_gamma": 0.5,
        "--lr_step_unit": "epoch",
        "--val_frac": 0.33,
        "--extra_file_epoch": 0,
        "--extra_file_missing": "zero",
        "--extra_metrics_epoch": 0,
        "--extra_metrics": "mean_reciprocal_rank",
    }
)
rng = _setup.seeded(args.seed)

# ----------------------------------------------------------------------------- data
digits = load_digits()
X_all = digits.data.astype(np.float32) / 16.0
y_all = digits.target.astype(np.int64)
g = np.random.default_rng(400 + args.seed)
order = g.permutation(len(y_all))
n_val = int(round(args.val_frac * len(y_all)))
va, tr = order[:n_val], order[n_val:]
Xtr, ytr = torch.tensor(X_all[tr]), torch.tensor(y_all[tr])
Xva, yva = torch.tensor(X_all[va]), torch.tensor(y_all[va])

g2 = np.random.default_rng(600 + args.seed)
X2 = np.clip(X_all[tr] + g2.normal(0, 0.08, X_all[tr].shape), 0, 1).astype(np.float32)
unread = g2.random(X2.shape) < 0.01
X2[unread] = np.nan if args.extra_file_missing == "nan" else 0.0
X2, y2 = torch.tensor(X2), ytr.clone()


def m_per_class_batches(labels, m, batch_size, gen):
    """``MPerClassSampler``: ``m`` images of each of ``batch_size // m`` classes a batch."""
    labels = labels.numpy()
    by_class = {c: np.flatnonzero(labels == c) for c in np.unique(labels)}
    n_batches = len(labels) // batch_size
    for _ in range(n_batches):
        classes = gen.choice(list(by_class), min(len(by_class), batch_size // m), replace=False)
        idx = np.concatenate([gen.choice(by_class[c], m, replace=False) for c in classes])
        yield torch.tensor(idx)


# ----------------------------------------------------------------------------- models
trunk = nn.Sequential(
    nn.Linear(64, args.trunk_size),
    nn.ReLU(),
    nn.Linear(args.trunk_size, args.trunk_size),
    nn.ReLU(),
)
embedder = nn.Linear(args.trunk_size, args.embedding_size)
params = list(trunk.parameters()) + list(embedder.parameters())
opt = torch.optim.Adam(params, lr=args.lr, weight_decay=1e-4)
sched = torch.optim.lr_scheduler.StepLR(opt, args.lr_step, args.lr_gamma) if args.lr_step else None


def embed(x):
    return F.normalize(embedder(trunk(x)), dim=1)


def all_triplets(emb, labels):
    """``miner=None``: every (anchor, positive, negative) of the batch."""
    d = torch.cdist(emb, emb)
    same = labels[:, None] == labels[None, :]
    eye = torch.eye(len(labels), dtype=torch.bool)
    a, p, n = torch.nonzero((same & ~eye)[:, :, None] & (~same)[:, None, :], as_tuple=True)
    return (a, p, n), d[same & ~eye].mean().item(), d[~same].mean().item()


def triplet_margin_loss(emb, triplets, margin):
    a, p, n = triplets
    losses = F.relu((emb[a] - emb[p]).norm(dim=1) - (emb[a] - emb[n]).norm(dim=1) + margin)
    return losses.mean(), int((losses > 0).sum())  # MeanReducer


KNOWN_METRICS = {
    "precision_at_1",
    "r_precision",
    "mean_average_precision_at_r",
    "mean_reciprocal_rank",
    "mean_average_precision",
}


def accuracy_calculator(emb, labels, include):
    """``AccuracyCalculator(include=..., k='max_bin_count')`` on query = reference (self
    excluded)."""
    for name in include:
        if name not in KNOWN_METRICS:
            raise ValueError(
                f"'{name}' is not a valid metric. Valid metrics are {sorted(KNOWN_METRICS)}"
            )
    sims = emb @ emb.T
    sims.fill_diagonal_(-np.inf)
    k = int(torch.bincount(labels).max().item()) - 1
    knn = sims.topk(k, dim=1).indices
    match = (labels[knn] == labels[:, None]).float()
    r = (torch.bincount(labels)[labels] - 1).float()
    out = {"precision_at_1": match[:, 0].mean().item()}
    mask = torch.arange(k)[None, :] < r[:, None]
    mr = match * mask
    out["r_precision"] = (mr.sum(1) / r).mean().item()
    prec = torch.cumsum(mr, 1) / torch.arange(1, k + 1)[None, :]
    out["mean_average_precision_at_r"] = ((prec * mr).sum(1) / r).mean().item()
    if "mean_reciprocal_rank" in include:
        first = torch.where(match.any(1), match.argmax(1).float() + 1, torch.tensor(float("inf")))
        out["mean_reciprocal_rank"] = (1.0 / first).mean().item()
    return out


GROUP = "accuracies_normalized_GlobalEmbeddingSpaceTester_level_0"

with mlflow.start_run():
    mlflow.log_params(vars(args))
    print(
        f"MetricLossOnly: {len(ytr)} train / {len(yva)} val digits, TripletMarginLoss(margin="
        f"{args.margin}, reducer=MeanReducer()), miner=None",
        flush=True,
    )
    it, best_acc, best_epoch = 0, -1.0, 0
    t0 = time.time()
    for epoch in range(1, args.num_epochs + 1):
        if args.extra_file_epoch and epoch >= args.extra_file_epoch:
            X, Y = torch.cat([Xtr, X2]), torch.cat([ytr, y2])
            if epoch == args.extra_file_epoch:
                print(f"second scanner's digits joined: {len(Y)} training images", flush=True)
        else:
            X, Y = Xtr, ytr
        trunk.train()
        embedder.train()
        for idx in m_per_class_batches(Y, 4, args.batch_size, rng):
            it += 1
            emb = embed(X[idx])
            labels = Y[idx]
            with torch.no_grad():
                triplets, pos_d, neg_d = all_triplets(emb.detach(), labels)
            loss, n_past = triplet_margin_loss(emb, triplets, args.margin)
            opt.zero_grad()
            loss.backward()
            opt.step()
            if sched is not None and args.lr_step_unit == "iteration":
                sched.step()
            mlflow.log_metrics(
                {
                    "loss_histories/metric_loss": loss.item(),
                    "loss_histories/total_loss": loss.item(),
                    "TripletMarginLoss/num_triplets": float(len(triplets[0])),
                    "TripletMarginLoss/num_non_zero_triplets": float(n_past),
                    "TripletMarginLoss/pos_pair_dist": pos_d,
                    "TripletMarginLoss/neg_pair_dist": neg_d,
                    "optimizer_trunk/lr": opt.param_groups[0]["lr"],
                },
                step=it,
            )
            if it % 20 == 0:
                print(
                    f"INFO:root:Iteration {it}: total_loss={loss.item():.5f}, "
                    f"num_non_zero_triplets={n_past}",
                    flush=True,
                )
        if sched is not None and args.lr_step_unit == "epoch":
            sched.step()
        # end_of_epoch_hook: the tester on the val split
        trunk.eval()
        embedder.eval()
        include = ["precision_at_1", "r_precision", "mean_average_precision_at_r"]
        if args.extra_metrics_epoch and epoch >= args.extra_metrics_epoch:
            include += [m.strip() for m in args.extra_metrics.split(",")]
        with torch.no_grad():
            acc = accuracy_calculator(embed(Xva), yva, include)
        mlflow.log_metrics({f"{GROUP}/{k}_level0": v for k, v in acc.items()}, step=epoch)
        if acc["mean_average_precision_at_r"] > best_acc:
            best_acc, best_epoch = acc["mean_average_precision_at_r"], epoch
        print(
            f"INFO:root:VAL set accuracy for epoch {epoch}: "
            + ", ".join(f"{k}={v:.4f}" for k, v in acc.items())
            + f"\nINFO:root:New best accuracy! {best_acc:.4f} (epoch {best_epoch})"
            if best_epoch == epoch
            else f"INFO:root:VAL set accuracy for epoch {epoch}: "
            + ", ".join(f"{k}={v:.4f}" for k, v in acc.items()),
            flush=True,
        )
    print(f"training finished after {it} iterations, {time.time() - t0:.1f} s", flush=True)
