"""A molecular-property regressor trained as Chemprop v1's ``chemprop_train`` trains its
directed message-passing network, its ``SummaryWriter`` scalars mirrored to MLflow by the team.

Plain PyTorch + numpy + the plain ``mlflow`` API (no Chemprop, no RDKit here).  What is
imitated:

* ``TrainArgs``: ``hidden_size``, ``depth``, ``dropout``, ``ffn_num_layers``,
  ``ffn_hidden_size``, ``batch_size``, ``epochs``, ``warmup_epochs``, ``init_lr``, ``max_lr``,
  ``final_lr``, ``log_frequency``, ``metric rmse``; the ``NoamLR`` scheduler stepped every
  batch (linear warm-up from ``init_lr`` to ``max_lr`` over ``warmup_epochs``, then exponential
  decay to ``final_lr``); Adam; the regression targets scaled by a ``StandardScaler`` fitted
  on the training split; the ``MoleculeModel`` (a bond-based message-passing encoder of
  ``depth`` steps, sum aggregation, then the FFN);
* ``train()``'s counters and writer: ``n_iter`` counts molecules (``n_iter += len(batch)``);
  every ``log_frequency`` batches ``train_loss`` (the mean loss since the last log),
  ``param_norm``, ``gradient_norm`` and ``learning_rate_0`` at ``step = n_iter``, and the
  ``Loss = 1.2345e-01, PNorm = 31.4, GNorm = 0.51, lr_0 = 9.8e-04`` debug line; after each
  epoch ``validation_rmse`` at ``step = n_iter`` and ``Validation rmse = 0.712``.

Data: generated molecules (6-24 heavy atoms of six elements, a spanning tree plus a few ring
closures, bond orders 1-3); the property a sum of atom and bonded-pair contributions, a ring
term and noise; ``split_sizes 0.8 0.1 0.1`` (random).  The team's weekly assay batch
(``--merge_epoch``): ``merge_size`` more molecules appended to the training data when that
epoch starts, read from the lab's CSV with ``merge_csv`` ``aligned`` or ``shifted`` (an extra
header line: every target belongs to the molecule before it).  The team's FFN variant
(``--ffn_batchnorm``) puts a ``BatchNorm1d`` after each hidden FFN layer; the data loader
keeps the last, smaller batch (Chemprop's ``MoleculeDataLoader`` does not drop it).  Written
without looking at the doctor.

Faults are real settings and data: ``--max_lr`` / ``--init_lr`` / ``--final_lr``;
``--merge_csv``; ``--ffn_batchnorm`` with the merged batch.
"""

import time

import _setup
import mlflow
import numpy as np
import torch

args = _setup.parse_flags(
    {
        "--seed": 0,
        "--data_size": 2500,  # molecules used from the generated set (before the split)
        "--hidden_size": 128,
        "--depth": 3,
        "--dropout": 0.0,
        "--ffn_num_layers": 2,
        "--ffn_hidden_size": 128,
        "--ffn_batchnorm": 0,
        "--batch_size": 50,
        "--epochs": 20,
        "--warmup_epochs": 2.0,
        "--init_lr": 1e-4,
        "--max_lr": 1e-3,
        "--final_lr": 1e-4,
        "--log_frequency": 10,
        "--merge_epoch": 0,  # 0: no weekly batch
        "--merge_size": 400,
        "--merge_csv": "aligned",  # aligned | shifted
    }
)
rng = _setup.seeded(args.seed)
MAX_ATOMS, N_ELEM = 24, 6

# ----------------------------------------------------------------------------- data
drng = np.random.default_rng(11)  # the same chemistry for every run
atom_w = drng.normal(0, 0.6, N_ELEM)
pair_w = drng.normal(0, 0.4, (N_ELEM, N_ELEM))
pair_w = (pair_w + pair_w.T) / 2
elem_p = np.array([0.55, 0.15, 0.15, 0.07, 0.05, 0.03])


def molecule(g):
    n = int(g.integers(6, MAX_ATOMS + 1))
    elems = g.choice(N_ELEM, n, p=elem_p)
    bonds = [(i, int(g.integers(0, i))) for i in range(1, n)]
    for _ in range(int(g.integers(0, 3))):
        a, b = g.choice(n, 2, replace=False)
        if (a, b) not in bonds and (b, a) not in bonds:
            bonds.append((int(a), int(b)))
    order = g.choice(3, len(bonds), p=[0.75, 0.2, 0.05]) + 1
    y = atom_w[elems].sum() + sum(
        pair_w[elems[a], elems[b]] * o for (a, b), o in zip(bonds, order, strict=True)
    )
    y += 0.4 * (len(bonds) - n + 1) + g.normal(0, 0.15)
    return elems, bonds, order, float(y) / 3.0


N_GEN = 6000
mols = [molecule(drng) for _ in range(N_GEN)]


def featurize(ms):
    """Dense atom features (B, A, F), bond adjacency by order (B, A, A, 3), atom mask."""
    B = len(ms)
    X = np.zeros((B, MAX_ATOMS, N_ELEM + 4), np.float32)
    A = np.zeros((B, MAX_ATOMS, MAX_ATOMS, 3), np.float32)
    M = np.zeros((B, MAX_ATOMS), np.float32)
    for k, (elems, bonds, order, _) in enumerate(ms):
        n = len(elems)
        X[k, np.arange(n), elems] = 1.0
        deg = np.zeros(n, int)
        for (a, b), o in zip(bonds, order, strict=True):
            A[k, a, b, o - 1] = A[k, b, a, o - 1] = 1.0
            deg[a] += 1
            deg[b] += 1
        X[k, np.arange(n), N_ELEM + np.minimum(deg, 4) - 1] = 1.0
        M[k, :n] = 1.0
    return X, A, M


order_all = drng.permutation(N_GEN)
use = order_all[: args.data_size]
n_tr, n_va = int(0.8 * len(use)), int(0.1 * len(use))
tr_idx, va_idx = list(use[:n_tr]), list(use[n_tr : n_tr + n_va])
merge_idx = list(order_all[args.data_size : args.data_size + args.merge_size])
y_all = np.array([m[3] for m in mols], np.float32)
y_merge = y_all[merge_idx].copy()
if args.merge_csv == "shifted":  # an extra header line in the lab's CSV
    y_merge = np.roll(y_merge, 1)
scaler_mean, scaler_std = float(y_all[tr_idx].mean()), float(y_all[tr_idx].std())


# ----------------------------------------------------------------------------- model
class MoleculeModel(torch.nn.Module):
    def __init__(self):
        super().__init__()
        h = args.hidden_size
        self.W_i = torch.nn.Linear(N_ELEM + 4, h, bias=False)
        self.W_b = torch.nn.Linear(3, h, bias=False)
        self.W_h = torch.nn.Linear(h, h, bias=False)
        self.W_o = torch.nn.Linear(N_ELEM + 4 + h, h)
        self.drop = torch.nn.Dropout(args.dropout)
        ffn, d = [], h
        for _ in range(args.ffn_num_layers - 1):
            ffn += [self.drop, torch.nn.Linear(d, args.ffn_hidden_size)]
            if args.ffn_batchnorm:
                ffn.append(torch.nn.BatchNorm1d(args.ffn_hidden_size))
            ffn.append(torch.nn.ReLU())
            d = args.ffn_hidden_size
        ffn += [self.drop, torch.nn.Linear(d, 1)]
        self.ffn = torch.nn.Sequential(*ffn)

    def forward(self, X, A, M):
        adj = A.sum(-1)  # (B, A, A)
        inp = self.W_i(X)
        msg = torch.relu(inp)
        bond = torch.einsum("bijo,oh->bijh", A, self.W_b.weight.T).sum(2)
        for _ in range(args.depth - 1):
            agg = torch.bmm(adj, msg) + bond
            msg = self.drop(torch.relu(inp + self.W_h(agg)))
        atom = torch.relu(self.W_o(torch.cat([X, torch.bmm(adj, msg)], -1)))
        atom = self.drop(atom) * M[..., None]
        return self.ffn(atom.sum(1))[:, 0]


model = MoleculeModel()
optim = torch.optim.Adam(model.parameters(), lr=args.init_lr)


def noam(step, steps_per_epoch):
    warm = int(args.warmup_epochs * steps_per_epoch)
    total = args.epochs * steps_per_epoch
    if step < warm:
        return args.init_lr + step * (args.max_lr - args.init_lr) / max(1, warm)
    gamma = (args.final_lr / args.max_lr) ** (1 / max(1, total - warm))
    return args.max_lr * gamma ** (step - warm)


def batches(idx, targets, shuffle):
    order = rng.permutation(len(idx)) if shuffle else np.arange(len(idx))
    for s in range(0, len(idx), args.batch_size):
        k = order[s : s + args.batch_size]
        X, A, M = featurize([mols[idx[j]] for j in k])
        yield torch.from_numpy(X), torch.from_numpy(A), torch.from_numpy(M), targets[k]


def evaluate():
    model.eval()
    preds = []
    with torch.no_grad():
        for X, A, M, _ in batches(va_idx, y_all[va_idx], False):
            preds.append(model(X, A, M).numpy() * scaler_std + scaler_mean)
    model.train()
    p = np.concatenate(preds)
    return float(np.sqrt(np.mean((p - y_all[va_idx]) ** 2)))


with mlflow.start_run():
    mlflow.log_params(vars(args))
    print(f"Total size = {len(use):,} | train size = {n_tr:,} | val size = {n_va:,}", flush=True)
    print(f"Number of parameters = {sum(p.numel() for p in model.parameters()):,}", flush=True)
    train_idx, train_y = list(tr_idx), y_all[tr_idx].copy()
    steps_per_epoch = -(-len(train_idx) // args.batch_size)
    n_iter, step, loss_sum, iter_count = 0, 0, 0.0, 0
    t_start = time.time()
    for epoch in range(args.epochs):
        print(f"Epoch {epoch}", flush=True)
        if args.merge_epoch and epoch == args.merge_epoch:
            train_idx = train_idx + merge_idx
            train_y = np.concatenate([train_y, y_merge])
            print(f"merged the weekly batch: train size = {len(train_idx):,}", flush=True)
        for X, A, M, yb in batches(train_idx, (train_y - scaler_mean) / scaler_std, True):
            for g in optim.param_groups:
                g["lr"] = noam(step, steps_per_epoch)
            pred = model(X, A, M)
            loss = ((pred - torch.from_numpy(yb.astype(np.float32))) ** 2).sum() / len(yb)
            optim.zero_grad()
            loss.backward()
            optim.step()
            step += 1
            n_iter += len(yb)
            loss_sum += loss.item()
            iter_count += 1
            if step % args.log_frequency == 0:
                pnorm = float(sum((p.detach() ** 2).sum() for p in model.parameters()) ** 0.5)
                gnorm = float(
                    sum((p.grad**2).sum() for p in model.parameters() if p.grad is not None) ** 0.5
                )
                lr = optim.param_groups[0]["lr"]
                loss_avg = loss_sum / iter_count
                print(
                    f"Loss = {loss_avg:.4e}, PNorm = {pnorm:.4f}, GNorm = {gnorm:.4f}, "
                    f"lr_0 = {lr:.4e}",
                    flush=True,
                )
                mlflow.log_metrics(
                    {
                        "train_loss": loss_avg,
                        "param_norm": pnorm,
                        "gradient_norm": gnorm,
                        "learning_rate_0": lr,
                    },
                    step=n_iter,
                )
                loss_sum, iter_count = 0.0, 0
        val = evaluate()
        print(f"Validation rmse = {val:.6f}", flush=True)
        mlflow.log_metric("validation_rmse", val, step=n_iter)
    print(f"Elapsed time = {time.time() - t_start:.1f} s", flush=True)
