"""AutoGluon ``TabularPredictor(label='class').fit(train, hyperparameters={'NN_TORCH': {...}})``
on an income table, its ``TabularNeuralNetTorchModel`` epoch lines mirrored to MLflow by the
team.

Plain PyTorch + numpy + the plain ``mlflow`` API (no autogluon here).  What is imitated:

* the ``NN_TORCH`` defaults: numeric features standardised (``proc.impute_strategy``
  median), categoricals with at least ``embed_min_categories`` levels embedded
  (``min(100, 1.6 * n ** 0.56)`` dimensions), an ``EmbedNet`` of ``num_layers`` Linear +
  ReLU + Dropout(``dropout_prob``) layers of ``hidden_size``, Adam (``learning_rate`` 3e-4,
  ``weight_decay`` 1e-6), ``batch_size`` 512, ``num_epochs``; ``holdout_frac`` of the data
  held out for the stopping metric (accuracy, higher is better);
* the model's line at verbosity 3, ``Epoch 12 (Update 156).  Train loss: 0.3412, Val
  accuracy: 0.8433, Best Epoch: 11``, mirrored per epoch at ``step`` = epoch from 1:
  ``train_loss`` (the mean of the epoch's batch losses), ``val_metric`` (accuracy),
  ``best_epoch``, ``total_updates``; the team adds ``val_log_loss`` (log loss on the holdout)
  and ``time_per_epoch`` (seconds).

Data: a generated census-income table (``n_rows`` rows: age, education_num, hours_per_week,
capital_gain, capital_loss; workclass, occupation, marital_status, sex), the label ``class``
(``'<=50K'`` / ``'>50K'``) drawn from a logistic model.  Written without looking at the
doctor.

Team options (the faults are real settings, data and code paths):

* ``--learning_rate``, ``--batch_size``, ``--num_epochs``, ``--hidden_size``,
  ``--num_layers``, ``--dropout_prob``, ``--weight_decay``, ``--holdout_frac``, ``--n_rows``;
* ``--extra_file_epoch k``: the second office's export (``extra_rows`` rows) joins the
  training rows from epoch k through the team's loader (a ``LabelEncoder`` on each file's
  ``class`` column, categories through the project's code tables);
  ``--extra_file_variant``: ``clean``, or ``band_labels`` (that office names its classes
  ``'at_most_50K'`` / ``'above_50K'``), or ``new_codes`` (its occupations include codes the
  project's table does not list);
* ``--audit_predictions 1``: the team's prediction audit appends each epoch's training
  predictions (one JSON record a row) to ``audit.jsonl`` and re-reads the whole file to
  report drift.
"""

import json
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
        "--n_rows": 6000,
        "--holdout_frac": 0.1,
        "--learning_rate": 3e-4,
        "--weight_decay": 1e-6,
        "--batch_size": 256,
        "--num_epochs": 30,
        "--hidden_size": 128,
        "--num_layers": 4,
        "--dropout_prob": 0.1,
        "--extra_file_epoch": 0,
        "--extra_rows": 3000,
        "--extra_file_variant": "clean",
        "--audit_predictions": 0,
    }
)
rng = _setup.seeded(args.seed)

WORKCLASS = ["Private", "Self-emp", "Federal-gov", "Local-gov", "State-gov", "Without-pay"]
OCCUPATION = [
    "Tech-support", "Craft-repair", "Sales", "Exec-managerial", "Prof-specialty",
    "Handlers-cleaners", "Machine-op-inspct", "Adm-clerical", "Farming-fishing",
    "Transport-moving", "Protective-serv", "Other-service",
]  # fmt: skip
MARITAL = ["Married-civ-spouse", "Divorced", "Never-married", "Separated", "Widowed"]
SEX = ["Female", "Male"]
CODE_TABLES = {
    "workclass": {v: i for i, v in enumerate(WORKCLASS)},
    "occupation": {v: i for i, v in enumerate(OCCUPATION)},
    "marital_status": {v: i for i, v in enumerate(MARITAL)},
    "sex": {v: i for i, v in enumerate(SEX)},
}


# ----------------------------------------------------------------------------- data
def census(g, n, variant="clean"):
    age = g.integers(17, 80, n).astype(float)
    edu = g.integers(1, 17, n).astype(float)
    hours = np.clip(g.normal(40, 12, n), 1, 99)
    gain = np.where(g.random(n) < 0.08, g.lognormal(8.5, 1.0, n), 0.0)
    loss = np.where(g.random(n) < 0.05, g.lognormal(7.3, 0.4, n), 0.0)
    wc = g.integers(0, len(WORKCLASS), n)
    occ = g.integers(0, len(OCCUPATION), n)
    mar = g.choice(len(MARITAL), n, p=[0.45, 0.15, 0.3, 0.04, 0.06])
    sex = g.integers(0, 2, n)
    occ_eff = np.array([0.3, -0.1, 0.1, 0.9, 0.8, -0.8, -0.5, -0.3, -0.7, -0.4, 0.1, -0.9])
    z = (
        0.04 * (age - 40)
        - 0.0006 * (age - 45) ** 2
        + 0.3 * (edu - 10)
        + 0.03 * (hours - 40)
        + 0.8 * (gain > 0)
        + 0.4 * (loss > 0)
        + 1.2 * (mar == 0)
        + occ_eff[occ]
        + 0.3 * (sex == 1)
        - 1.2
    )
    y = g.random(n) < 1 / (1 + np.exp(-z))
    rows = []
    for i in range(n):
        o = OCCUPATION[occ[i]]
        if variant == "new_codes" and g.random() < 0.05:
            o = "Armed-Forces"
        label = ">50K" if y[i] else "<=50K"
        if variant == "band_labels":  # the second office's export names its income bands
            label = "above_50K" if y[i] else "at_most_50K"
        rows.append(
            {
                "age": age[i], "education_num": edu[i], "hours_per_week": hours[i],
                "capital_gain": gain[i], "capital_loss": loss[i],
                "workclass": WORKCLASS[wc[i]], "occupation": o,
                "marital_status": MARITAL[mar[i]], "sex": SEX[sex[i]], "class": label,
            }
        )  # fmt: skip
    return rows


NUMERIC = ["age", "education_num", "hours_per_week", "capital_gain", "capital_loss"]
CATEGORICAL = ["workclass", "occupation", "marital_status", "sex"]


def load(rows):
    """The team's loader: numeric columns (capital columns log1p), categoricals through the
    project's code tables, the label through a ``LabelEncoder`` fitted on the file's own
    ``class`` column (sorted class names -> 0, 1)."""
    num = np.array([[r[c] for c in NUMERIC] for r in rows], dtype=np.float64)
    num[:, 3:] = np.log1p(num[:, 3:])
    cat = np.array([[CODE_TABLES[c][r[c]] for c in CATEGORICAL] for r in rows], dtype=np.int64)
    classes = sorted({r["class"] for r in rows})  # LabelEncoder().fit_transform
    y = np.array([classes.index(r["class"]) for r in rows], dtype=np.int64)
    return num, cat, y


g = np.random.default_rng(300 + args.seed)
num, cat, y = load(census(g, args.n_rows))
order = g.permutation(args.n_rows)
n_hold = int(round(args.holdout_frac * args.n_rows))
va, tr = order[:n_hold], order[n_hold:]
mu, sd = num[tr].mean(0), num[tr].std(0) + 1e-8


def tensors(nm, ct, yy):
    return (
        torch.tensor((nm - mu) / sd, dtype=torch.float32),
        torch.tensor(ct),
        torch.tensor(yy),
    )


Xn, Xc, Y = tensors(num[tr], cat[tr], y[tr])
Vn, Vc, VY = tensors(num[va], cat[va], y[va])
extra_rows = (
    census(np.random.default_rng(800 + args.seed), args.extra_rows, args.extra_file_variant)
    if args.extra_file_epoch
    else None
)


# ----------------------------------------------------------------------------- model
class EmbedNet(nn.Module):
    def __init__(self):
        super().__init__()
        cards = [len(CODE_TABLES[c]) for c in CATEGORICAL]
        dims = [int(min(100, round(1.6 * n**0.56))) for n in cards]
        self.embed_blocks = nn.ModuleList(
            [nn.Embedding(n, d) for n, d in zip(cards, dims, strict=True)]
        )
        d_in, layers = len(NUMERIC) + sum(dims), []
        for _ in range(args.num_layers):
            layers += [nn.Linear(d_in, args.hidden_size), nn.ReLU(), nn.Dropout(args.dropout_prob)]
            d_in = args.hidden_size
        layers.append(nn.Linear(d_in, 2))
        self.main_block = nn.Sequential(*layers)

    def forward(self, xn, xc):
        emb = [e(xc[:, i]) for i, e in enumerate(self.embed_blocks)]
        return self.main_block(torch.cat([xn] + emb, 1))


net = EmbedNet()
opt = torch.optim.Adam(net.parameters(), lr=args.learning_rate, weight_decay=args.weight_decay)


def audit(epoch, probs, feats):
    with open("audit.jsonl", "a") as f:
        for i, p in enumerate(probs):
            f.write(json.dumps({"epoch": epoch, "row": i, "x": feats[i], "p": round(p, 6)}) + "\n")
    last = {}
    with open("audit.jsonl") as f:  # re-read the whole audit for the drift report
        for line in f:
            rec = json.loads(line)
            last.setdefault(rec["epoch"], []).append(rec["p"])
    prev = last.get(epoch - 1)
    return 0.0 if prev is None else float(np.mean(np.abs(np.array(prev) - np.array(last[epoch]))))


with mlflow.start_run():
    mlflow.log_params(vars(args))
    print(
        f"Fitting model: NeuralNetTorch ... Training data: {len(tr)} rows, tuning (holdout) "
        f"data: {n_hold} rows; stopping metric: accuracy",
        flush=True,
    )
    best_val, best_epoch, total_updates = -np.inf, 0, 0
    t_fit = time.time()
    for epoch in range(1, args.num_epochs + 1):
        t0 = time.time()
        if args.extra_file_epoch and epoch >= args.extra_file_epoch:
            if epoch == args.extra_file_epoch:
                en, ec, ey = load(extra_rows)
                En, Ec, EY = tensors(en, ec, ey)
                print(f"Second office's export joined: {len(EY)} rows", flush=True)
            Tn, Tc, TY = torch.cat([Xn, En]), torch.cat([Xc, Ec]), torch.cat([Y, EY])
        else:
            Tn, Tc, TY = Xn, Xc, Y
        net.train()
        perm = torch.tensor(rng.permutation(len(TY)))
        losses = []
        for i in range(0, len(TY), args.batch_size):
            b = perm[i : i + args.batch_size]
            loss = F.cross_entropy(net(Tn[b], Tc[b]), TY[b])
            opt.zero_grad()
            loss.backward()
            opt.step()
            total_updates += 1
            losses.append(loss.item())
        train_loss = float(np.mean(losses))
        net.eval()
        with torch.no_grad():
            vl = net(Vn, Vc)
            val_acc = (vl.argmax(1) == VY).float().mean().item()
            val_ll = F.cross_entropy(vl, VY).item()
            if args.audit_predictions:
                drift = audit(
                    epoch,
                    F.softmax(net(Tn, Tc), 1)[:, 1].tolist(),
                    [[round(v, 3) for v in r] for r in Tn[:, :3].tolist()],
                )
        if val_acc > best_val:
            best_val, best_epoch = val_acc, epoch
        dt = time.time() - t0
        mlflow.log_metrics(
            {
                "train_loss": train_loss,
                "val_metric": val_acc,
                "val_log_loss": val_ll,
                "best_epoch": float(best_epoch),
                "total_updates": float(total_updates),
                "time_per_epoch": dt,
            },
            step=epoch,
        )
        extra = f", audit drift {drift:.4f}" if args.audit_predictions else ""
        print(
            f"Epoch {epoch} (Update {total_updates}).\tTrain loss: {round(train_loss, 4)}, "
            f"Val accuracy: {round(val_acc, 4)}, Best Epoch: {best_epoch}{extra}",
            flush=True,
        )
    print(
        f"Best model found on Epoch {best_epoch} (Update {total_updates}). Val accuracy: "
        f"{round(best_val, 4)}\n\t{time.time() - t_fit:.2f}s\t = Training   runtime",
        flush=True,
    )
