"""A TabNet classifier trained as pytorch-tabnet's ``TabNetClassifier.fit`` trains one, its
History mirrored to MLflow by the team's callback, key for key.

Plain PyTorch + numpy + the plain ``mlflow`` API (no pytorch-tabnet here).  What is imitated,
as ``TabModel.fit`` and its ``History`` callback make it:

* one ``epoch_metrics`` dict per epoch: ``loss`` (the sample-weighted mean of the epoch's
  batch losses, cross-entropy minus ``lambda_sparse`` x the masks' entropy term), ``lr``
  (``param_groups[-1]["lr"]`` when the epoch starts) and ``{eval_name}_{metric}`` for every
  eval set and metric (``eval_name=["train", "valid"]``, ``eval_metric=["auc", "logloss"]``:
  ``train_auc``, ``train_logloss``, ``valid_auc``, ``valid_logloss``); the team's
  ``MLflowCallback.on_epoch_end(epoch, logs)`` does ``mlflow.log_metrics(logs, step=epoch)``,
  so the step is the epoch from 0;
* early stopping on the last metric of the last eval set (``valid_logloss``) with
  ``patience`` epochs (0 switches it off), the best weights restored at the end, and the
  lines ``epoch 0  | loss: 0.71234 | train_auc: ... |  0:00:01s``, ``Early stopping
  occurred at epoch 37 with best_epoch = 27 and best_valid_logloss = 0.31`` / ``Stop training
  because you reached max_epochs = 100 with best_epoch = ...``;
* TabNet itself: embeddings of the categorical columns (``cat_idxs``, ``cat_dims``,
  ``cat_emb_dim``), an initial BatchNorm, ``n_steps`` decision steps with shared and
  step-specific GLU blocks, attentive transformers with sparsemax and the ``gamma``
  relaxation prior, ghost batch norm over ``virtual_batch_size`` chunks (``momentum``),
  ``n_d``/``n_a``, Adam (``optimizer_params``) with a StepLR ``scheduler_fn``,
  ``batch_size`` 1024, ``drop_last`` off, gradient clipping ``clip_value`` when set.

Data: a generated customer-churn table (numeric usage columns, a contract type and a
region, a churn label from a noisy rule), label-encoded as the TabNet examples do and the
numeric columns standardised by the team's scalers (fitted on the first snapshot), read
from the team's feature-store snapshots (``refresh_every`` epochs a new daily snapshot is
read for training; 0: one snapshot).  Written without looking at the doctor.

Faults are real code paths and arguments: ``--lr`` typed three orders too small;
``--refresh_every`` reaching the snapshot written by the store's new exporter, which wrote
the numeric columns in name order; ``--split time``: an out-of-time validation split with
the encoders fitted on the training rows only, while the newest region only appears in the
later rows;
``--train_rows`` small with early stopping off (``--patience 0``) and a wide model.
"""

import time

import _setup
import mlflow
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

args = _setup.parse_flags(
    {
        "--seed": 0,
        "--n_d": 8,
        "--n_a": 8,
        "--n_steps": 3,
        "--gamma": 1.3,
        "--cat_emb_dim": 1,
        "--n_independent": 2,
        "--n_shared": 2,
        "--momentum": 0.02,
        "--lambda_sparse": 1e-3,
        "--lr": 2e-2,
        "--scheduler_step_size": 10,
        "--scheduler_gamma": 0.9,
        "--max_epochs": 60,
        "--patience": 10,
        "--batch_size": 1024,
        "--virtual_batch_size": 128,
        "--clip_value": 0.0,
        "--train_rows": 4000,
        "--valid_rows": 1000,
        "--split": "random",
        "--refresh_every": 0,
    }
)
rng = _setup.seeded(args.seed)

# ----------------------------------------------------------------------------- data
COLUMNS = [
    "tenure", "monthly_charges", "total_charges", "support_calls", "data_gb", "age",
    "late_payments", "discount", "contract", "region",
]  # fmt: skip
CAT_COLS = ["contract", "region"]


def snapshot(day, n):
    """The feature store's daily snapshot: ``n`` customers (the churn rule is fixed)."""
    g = np.random.default_rng(1000 + day)
    tenure = g.integers(0, 73, n).astype(float)
    monthly = g.uniform(20, 120, n)
    total = tenure * monthly * g.uniform(0.9, 1.1, n)
    calls = g.poisson(1.5, n).astype(float)
    data_gb = g.gamma(2.0, 8.0, n)
    age = g.integers(18, 80, n).astype(float)
    late = g.poisson(0.6, n).astype(float)
    discount = g.choice([0.0, 0.05, 0.1, 0.2], n)
    contract = g.choice(["month-to-month", "one-year", "two-year"], n, p=[0.5, 0.3, 0.2])
    region = g.integers(0, 12, n)
    region = np.array([f"R{r:02d}" for r in region])
    z = (
        -1.0 - 0.045 * (tenure - 24) + 0.02 * (monthly - 70) + 0.55 * calls + 0.7 * late
        - 4 * discount + 1.2 * (contract == "month-to-month") - 0.9 * (contract == "two-year")
        + 0.6 * np.isin(region, ["R03", "R07"]) + 0.4 * (np.abs(age - 45) > 25)
    )  # fmt: skip
    y = (g.uniform(size=n) < 1 / (1 + np.exp(-z))).astype(int)
    cols = dict(zip(COLUMNS, [tenure, monthly, total, calls, data_gb, age, late, discount,
                              contract, region], strict=True))  # fmt: skip
    return cols, y, day


def late_snapshot(n):
    """Rows from after the training period: a new region (R12) has opened."""
    cols, y, day = snapshot(999, n)
    new = rng.uniform(size=n) < 0.08
    cols["region"] = np.where(new, "R12", cols["region"])
    return cols, y, day


# the store's new exporter (rolled back the day after) wrote the numeric columns in name
# order; the categorical key columns stay last
EXPORTER_V2_DAYS = {3}


def read_snapshot(day, n):
    cols, y, _ = snapshot(day, n)
    names = COLUMNS
    if day in EXPORTER_V2_DAYS:
        names = sorted(c for c in COLUMNS if c not in CAT_COLS) + CAT_COLS
    print(f"Reading feature snapshot day={day} ({n} rows, columns {names[:3]}...)", flush=True)
    return [cols[c] for c in names], y  # the table's columns, in the file's order


class LabelEncoder:
    def fit(self, v):
        self.classes_ = sorted(set(v))
        return self

    def transform(self, v):
        idx = {c: i for i, c in enumerate(self.classes_)}
        return np.array([idx.get(x, len(self.classes_)) for x in v])  # the team's unseen id


class StandardScaler:
    def fit(self, v):
        self.mean_, self.scale_ = float(np.mean(v)), float(np.std(v)) or 1.0
        return self

    def transform(self, v):
        return (np.asarray(v, dtype=float) - self.mean_) / self.scale_


def encode(table, encoders):
    X = np.zeros((len(table[0]), len(COLUMNS)), dtype=np.float32)
    for j, (c, v) in enumerate(zip(COLUMNS, table, strict=True)):
        X[:, j] = encoders[c].transform(v)  # by position: the file's j-th column
    return X


train_table, y_train = read_snapshot(0, args.train_rows)
if args.split == "time":
    vcols, y_valid, _ = late_snapshot(args.valid_rows)
    valid_table = [vcols[c] for c in COLUMNS]
else:
    valid_table, y_valid = read_snapshot(500, args.valid_rows)
if args.split == "time":  # the team's out-of-time pipeline fits the encoders on train rows
    encoders = {c: LabelEncoder().fit(train_table[COLUMNS.index(c)]) for c in CAT_COLS}
else:  # as the TabNet examples: the encoders see the whole table
    encoders = {
        c: LabelEncoder().fit(
            np.concatenate([train_table[COLUMNS.index(c)], valid_table[COLUMNS.index(c)]])
        )
        for c in CAT_COLS
    }
for j, c in enumerate(COLUMNS):  # the team's scalers, fitted on the first training snapshot
    if c not in CAT_COLS:
        encoders[c] = StandardScaler().fit(train_table[j])
X_train, X_valid = encode(train_table, encoders), encode(valid_table, encoders)
cat_idxs = [COLUMNS.index(c) for c in CAT_COLS]
cat_dims = [len(encoders[c].classes_) for c in CAT_COLS]
print(f"cat_idxs {cat_idxs} cat_dims {cat_dims}", flush=True)


# ----------------------------------------------------------------------------- TabNet
def sparsemax(z):
    zs, _ = torch.sort(z, dim=-1, descending=True)
    k = torch.arange(1, z.shape[-1] + 1, dtype=z.dtype)
    cs = zs.cumsum(-1)
    support = (1 + k * zs) > cs
    kz = support.sum(-1, keepdim=True)
    tau = (cs.gather(-1, kz - 1) - 1) / kz.to(z.dtype)
    return torch.clamp(z - tau, min=0)


class GBN(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.bn = nn.BatchNorm1d(d, momentum=args.momentum)

    def forward(self, x):
        chunks = x.chunk(max(1, int(np.ceil(len(x) / args.virtual_batch_size))), 0)
        return torch.cat([self.bn(c) for c in chunks], 0)


class GLU(nn.Module):
    def __init__(self, i, o, fc=None):
        super().__init__()
        self.fc = fc or nn.Linear(i, 2 * o, bias=False)
        self.bn, self.o = GBN(2 * o), o

    def forward(self, x):
        x = self.bn(self.fc(x))
        return x[:, : self.o] * torch.sigmoid(x[:, self.o :])


class FeatTransformer(nn.Module):
    def __init__(self, i, o, shared):
        super().__init__()
        self.layers = nn.ModuleList()
        for k, fc in enumerate(shared):
            self.layers.append(GLU(i if k == 0 else o, o, fc))
        for k in range(args.n_independent):
            self.layers.append(GLU(i if (k == 0 and not shared) else o, o))

    def forward(self, x):
        x = self.layers[0](x)
        for layer in self.layers[1:]:
            x = (x + layer(x)) * np.sqrt(0.5)
        return x


class TabNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.embeddings = nn.ModuleList(nn.Embedding(d, args.cat_emb_dim) for d in cat_dims)
        d_in = len(COLUMNS) + len(cat_idxs) * (args.cat_emb_dim - 1)
        self.initial_bn = nn.BatchNorm1d(d_in, momentum=0.01)
        nd, na = args.n_d, args.n_a
        shared = [nn.Linear(d_in, 2 * (nd + na), bias=False)] + [
            nn.Linear(nd + na, 2 * (nd + na), bias=False) for _ in range(args.n_shared - 1)
        ]
        self.shared = nn.ModuleList(shared)
        self.initial_splitter = FeatTransformer(d_in, nd + na, shared)
        self.feat = nn.ModuleList(
            FeatTransformer(d_in, nd + na, shared) for _ in range(args.n_steps)
        )
        self.att = nn.ModuleList(
            nn.Sequential(nn.Linear(na, d_in, bias=False), GBN(d_in)) for _ in range(args.n_steps)
        )
        self.final_mapping = nn.Linear(nd, 2, bias=False)
        self.d_in = d_in

    def embed(self, x):
        cols, k = [], 0
        for j in range(x.shape[1]):
            if j in cat_idxs:
                cols.append(self.embeddings[k](x[:, j].long()))
                k += 1
            else:
                cols.append(x[:, j : j + 1])
        return torch.cat(cols, 1)

    def forward(self, x):
        x = self.initial_bn(self.embed(x))
        prior = torch.ones_like(x)
        att = self.initial_splitter(x)[:, args.n_d :]
        out, m_loss = 0, 0
        for step in range(args.n_steps):
            M = sparsemax(self.att[step](att) * prior)
            m_loss = m_loss + torch.mean(torch.sum(M * torch.log(M + 1e-15), dim=1))
            prior = prior * (args.gamma - M)
            h = self.feat[step](M * x)
            out = out + F.relu(h[:, : args.n_d])
            att = h[:, args.n_d :]
        return self.final_mapping(out), m_loss / args.n_steps


def auc(y, s):
    order = np.argsort(s)
    ranks = np.empty(len(s))
    ranks[order] = np.arange(1, len(s) + 1)
    pos = y == 1
    return (ranks[pos].sum() - pos.sum() * (pos.sum() + 1) / 2) / (pos.sum() * (~pos).sum())


def logloss(y, p):
    p = np.clip(p.astype(np.float64), 1e-15, 1 - 1e-15)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))


network = TabNet()
optimizer = torch.optim.Adam(network.parameters(), lr=args.lr)
scheduler = torch.optim.lr_scheduler.StepLR(
    optimizer, step_size=args.scheduler_step_size, gamma=args.scheduler_gamma
)


@torch.no_grad()
def predict_proba(X):
    network.eval()
    p = torch.cat(
        [
            torch.softmax(network(torch.tensor(X[s : s + 1024]))[0], 1)[:, 1]
            for s in range(0, len(X), 1024)
        ]
    )
    network.train()
    return p.numpy()


# ----------------------------------------------------------------------------- fit()
with mlflow.start_run():
    mlflow.log_params(vars(args))
    mlflow.log_params({"cat_idxs": str(cat_idxs), "cat_dims": str(cat_dims), "device": "cpu"})
    print(f"Device used : cpu ({sum(p.numel() for p in network.parameters())} parameters)")
    start, best, best_epoch, best_state, wait = time.time(), np.inf, 0, None, 0
    Xt, yt = X_train, y_train
    for epoch in range(args.max_epochs):
        if args.refresh_every and epoch > 0 and epoch % args.refresh_every == 0:
            table, yt = read_snapshot(epoch // args.refresh_every, args.train_rows)
            Xt = encode(table, encoders)
        logs = {"loss": 0.0, "lr": optimizer.param_groups[-1]["lr"]}
        seen = 0
        perm = rng.permutation(len(Xt))
        for s in range(0, len(Xt), args.batch_size):
            idx = perm[s : s + args.batch_size]
            xb, yb = torch.tensor(Xt[idx]), torch.tensor(yt[idx])
            out, m_loss = network(xb)
            loss = F.cross_entropy(out, yb) - args.lambda_sparse * m_loss
            optimizer.zero_grad()
            loss.backward()
            if args.clip_value:
                nn.utils.clip_grad_norm_(network.parameters(), args.clip_value)
            optimizer.step()
            n = len(idx)
            logs["loss"] = (seen * logs["loss"] + n * loss.item()) / (seen + n)
            seen += n
        scheduler.step()
        for name, (X, y) in {"train": (Xt, yt), "valid": (X_valid, y_valid)}.items():
            p = predict_proba(X)
            logs[f"{name}_auc"], logs[f"{name}_logloss"] = float(auc(y, p)), logloss(y, p)
        mlflow.log_metrics(logs, step=epoch)  # the team's MLflowCallback.on_epoch_end
        msg = f"epoch {epoch:<3}" + "".join(
            f"| {k:<3}: {np.round(v, 5):<8}" for k, v in logs.items() if k != "lr"
        )
        print(msg + f"|  {int(time.time() - start)}s", flush=True)
        score = logs["valid_logloss"]
        if score < best:
            best, best_epoch, wait = score, epoch, 0
            best_state = {k: v.clone() for k, v in network.state_dict().items()}
        else:
            wait += 1
            if args.patience and wait >= args.patience:
                print(
                    f"\nEarly stopping occurred at epoch {epoch} with best_epoch = {best_epoch} "
                    f"and best_valid_logloss = {np.round(best, 5)}",
                    flush=True,
                )
                break
    else:
        print(
            f"Stop training because you reached max_epochs = {args.max_epochs} with "
            f"best_epoch = {best_epoch} and best_valid_logloss = {np.round(best, 5)}",
            flush=True,
        )
    network.load_state_dict(best_state)
    print("UserWarning: Best weights from best epoch are automatically used!", flush=True)
