"""A tiny molecular property predictor trained with a TorchDrug-style ``core.Engine``
(``tasks.PropertyPrediction`` around a message-passing GNN), its logger mirrored to MLflow.

Plain PyTorch + the plain ``mlflow`` API (no torchdrug import here).  What is imitated:

* ``models.GIN``-like message passing: ``num_layer`` layers of sum aggregation over bonds,
  an MLP per layer, a sum readout over atoms; ``tasks.PropertyPrediction(task=("active",),
  criterion="bce", metric=("auroc", "acc"))`` with a 2-layer MLP head;
* ``core.Engine(task, train_set, valid_set, test_set, optimizer, batch_size=...,
  log_interval=...)``: ``engine.train(num_epoch=1)`` then ``engine.evaluate("valid")`` per
  epoch, an Adam optimizer and an optional ``ExponentialLR`` scheduler;
* the Engine's logger names: every ``log_interval`` batches 'binary cross entropy' (the mean
  over those batches) at step = batch id (counted over the whole run), per epoch on valid
  'accuracy [active]' and 'auroc [active]' (mirrored as 'accuracy active' and 'auroc active': MLflow
  refuses brackets in a metric name) at step = epoch (from 1), and 'learning rate' at
  step = epoch.

Data: generated molecule-like graphs (atoms of 6 types on a random tree plus a few ring
bonds; the label is a substructure rule: an N next to an O, or a ring with an S).  Written
without looking at the doctor.

Team options (the faults are real settings, data and code paths):

* ``--lr``, ``--batch_size``, ``--hidden_dim``, ``--num_layer``, ``--num_epoch``,
  ``--gamma`` (ExponentialLR, 1 = none), ``--train_size``, ``--valid_size``,
  ``--log_interval``;
* ``--extra_epoch k``: a second assay file (its molecules and node features) joins the
  training set from epoch k; the team's converter leaves ``--extra_nan_rows`` of its node
  feature rows as NaN (missing descriptors, default 0);
* ``--adj_cache 1``: the team's collate caches each packed batch's dense adjacency under a
  (epoch, batch) key, with its powers up to ``num_layer`` hops (float64), for a later
  visualisation of the receptive field.
"""

import time

import _setup
import mlflow
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

args = _setup.parse_flags(
    {
        "--seed": 0,
        "--lr": 1e-3,
        "--batch_size": 32,
        "--hidden_dim": 64,
        "--num_layer": 3,
        "--num_epoch": 12,
        "--gamma": 1.0,
        "--train_size": 1200,
        "--valid_size": 300,
        "--log_interval": 5,
        "--extra_epoch": 0,
        "--extra_nan_rows": 0,
        "--adj_cache": 0,
    }
)
rng = _setup.seeded(args.seed)
N_ATOM = 6  # C N O S F Cl
FEAT = N_ATOM + 3


def make_mols(g, n):
    mols = []
    for _ in range(n):
        k = int(g.integers(8, 20))
        atoms = g.choice(N_ATOM, k, p=[0.55, 0.13, 0.13, 0.07, 0.07, 0.05])
        edges = [(i, int(g.integers(0, i))) for i in range(1, k)]
        ring = g.random() < 0.4
        if ring:
            a = int(g.integers(2, k))
            edges.append((a, a - 2))
        nb = {i: set() for i in range(k)}
        for a, b in edges:
            nb[a].add(b)
            nb[b].add(a)
        no = any(atoms[a] == 1 and any(atoms[b] == 2 for b in nb[a]) for a in range(k))
        rs = ring and any(atoms[a] == 3 for a in range(k))
        x = np.zeros((k, FEAT), np.float32)
        x[np.arange(k), atoms] = 1
        x[:, N_ATOM] = [len(nb[i]) / 4 for i in range(k)]
        x[:, N_ATOM + 1] = g.normal(0, 0.1, k)
        x[:, N_ATOM + 2] = 1.0
        mols.append((torch.from_numpy(x), torch.tensor(edges).t(), float(no or rs)))
    return mols


train_set = make_mols(np.random.default_rng(1000 + args.seed), args.train_size)
valid_set = make_mols(np.random.default_rng(9000 + args.seed), args.valid_size)


def load_extra():
    extra = make_mols(np.random.default_rng(2000 + args.seed), args.train_size // 2)
    g = np.random.default_rng(3000 + args.seed)
    for j in g.choice(len(extra), min(args.extra_nan_rows, len(extra)), replace=False):
        x = extra[j][0]
        x[int(g.integers(0, len(x))), N_ATOM + 1] = float("nan")
    return extra


def pack(mols):
    xs, es, ys, batch, off = [], [], [], [], 0
    for i, (x, e, y) in enumerate(mols):
        xs.append(x)
        es.append(e + off)
        ys.append(y)
        batch.append(torch.full((len(x),), i))
        off += len(x)
    e = torch.cat(es, 1)
    return torch.cat(xs), torch.cat([e, e.flip(0)], 1), torch.tensor(ys), torch.cat(batch)


class GIN(nn.Module):
    def __init__(self):
        super().__init__()
        h = args.hidden_dim
        self.inp = nn.Linear(FEAT, h)
        self.layers = nn.ModuleList(
            [
                nn.Sequential(nn.Linear(h, h), nn.ReLU(), nn.Linear(h, h))
                for _ in range(args.num_layer)
            ]
        )
        self.mlp = nn.Sequential(nn.Linear(h, h), nn.ReLU(), nn.Linear(h, 1))

    def forward(self, x, e, batch, n):
        h = self.inp(x)
        for layer in self.layers:
            agg = torch.zeros_like(h).index_add_(0, e[1], h[e[0]])
            h = F.relu(layer(h + agg)) + h
        g = torch.zeros(n, h.size(1)).index_add_(0, batch, h)
        return self.mlp(g).squeeze(-1)


model = GIN()
opt = torch.optim.Adam(model.parameters(), lr=args.lr)
sched = torch.optim.lr_scheduler.ExponentialLR(opt, args.gamma)
adj_cache = {}


def evaluate(mols):
    model.eval()
    preds, ys = [], []
    with torch.no_grad():
        for i in range(0, len(mols), 128):
            x, e, y, b = pack(mols[i : i + 128])
            preds.append(torch.sigmoid(model(x, e, b, len(y))))
            ys.append(y)
    p, y = torch.cat(preds), torch.cat(ys)
    acc = float(((p > 0.5) == (y > 0.5)).float().mean())
    return acc, area_under_roc(p, y)


def area_under_roc(pred, target):
    """torchdrug.metrics.area_under_roc."""
    target = target[pred.argsort(descending=True)]
    hit = target.cumsum(0)
    total = (target == 0).sum() * (target == 1).sum()
    return float(hit[target == 0].sum() / total)


with mlflow.start_run():
    mlflow.log_params(vars(args))
    pos = sum(m[2] for m in train_set) / len(train_set)
    print(
        f"train: {len(train_set)} molecules ({pos:.1%} active); valid: {len(valid_set)}", flush=True
    )
    batch_id, t0 = 0, time.time()
    data = list(train_set)
    for epoch in range(1, args.num_epoch + 1):
        if args.extra_epoch and epoch == args.extra_epoch:
            extra = load_extra()
            data = data + extra
            print(f"epoch {epoch}: assay2 joins with {len(extra)} molecules", flush=True)
        print(">" * 30, flush=True)
        print(f"Epoch {epoch - 1} begin", flush=True)
        model.train()
        order = rng.permutation(len(data))
        window = []
        for k, i in enumerate(range(0, len(order) - args.batch_size + 1, args.batch_size)):
            x, e, y, b = pack([data[j] for j in order[i : i + args.batch_size]])
            if args.adj_cache:
                adj = torch.zeros(len(x), len(x))
                adj[e[0], e[1]] = 1.0
                hops = [adj.double()]
                for _ in range(args.num_layer):
                    hops.append(hops[-1] @ hops[0])
                adj_cache[(epoch, k)] = torch.stack(hops)  # the receptive field, hop by hop
            loss = F.binary_cross_entropy_with_logits(model(x, e, b, len(y)), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            window.append(loss.item())
            batch_id += 1
            if batch_id % args.log_interval == 0:
                bce = float(np.mean(window))
                mlflow.log_metric("binary cross entropy", bce, step=batch_id)
                print(f"binary cross entropy: {bce:g}", flush=True)
                window = []
        lr = opt.param_groups[0]["lr"]
        sched.step()
        acc, auroc = evaluate(valid_set)
        mlflow.log_metrics(
            {"accuracy active": acc, "auroc active": auroc, "learning rate": lr}, step=epoch
        )
        print(
            f"Evaluate on valid\naccuracy [active]: {acc:g}\nauroc [active]: {auroc:g}", flush=True
        )
    print(f"done in {time.time() - t0:.1f}s", flush=True)
