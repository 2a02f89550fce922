"""A churn classifier trained the PyTorch Tabular way (``TabularModel(data_config,
model_config, optimizer_config, trainer_config).fit(train, validation)``) with a
``CategoryEmbeddingModelConfig``, logged through Lightning's ``MLFlowLogger``.

Plain PyTorch + numpy + the plain ``mlflow`` API (no pytorch_tabular, no Lightning here).
What is imitated:

* ``DataConfig``: ``target`` ["churned"], six ``continuous_cols`` normalised with the
  training split's mean and std (``normalize_continuous_features``), three
  ``categorical_cols`` ordinal-encoded into embeddings of ``min(50, (cardinality + 1) // 2)``;
* ``CategoryEmbeddingModelConfig``: ``task`` "classification", ``layers`` (a "64-32"
  string), ``activation`` "ReLU", ``dropout``, ``use_batch_norm``, ``initialization``
  "kaiming", a linear head; ``OptimizerConfig``: Adam, ``learning_rate``, no scheduler;
  ``TrainerConfig``: ``batch_size``, ``max_epochs``, ``progress_bar`` "simple";
* the metrics the model ``self.log``s and the ``MLFlowLogger`` writes at ``step`` =
  ``global_step``: ``train_loss`` on step (every ``log_every_n_steps``), ``valid_loss`` and
  ``valid_accuracy`` after each validation, ``train_accuracy`` on epoch, Lightning's
  ``epoch``; the progress line ``Epoch 3: 100%|...| 38/38 [train_loss=..., valid_loss=...]``.

Data: a generated customer table (``n_rows`` rows: tenure, monthly charges, support calls,
usage, age, discount; region, plan, store), the label drawn from a logistic model with
interactions; ``validation_split`` held out.  Written without looking at the doctor.

Team options (the faults are real settings, data and code paths):

* ``--learning_rate``, ``--batch_size``, ``--max_epochs``, ``--layers``, ``--dropout``,
  ``--use_batch_norm``, ``--n_rows``, ``--validation_split``;
* ``--new_file_epoch k``: the second region's export (``new_file_rows`` rows) is appended to
  the training data from epoch k, read by the team's loader; ``--new_file_missing``: how that
  export writes an unknown usage ("zero" as the first region's, or "nan" for an empty cell);
  ``--new_file_store_codes``: "project" (mapped through the project's store table) or
  "native" (the new region's own store numbers, 20 onwards, passed through as they are).
"""

import time

import _setup
import mlflow
import numpy as np
import torch
import torch.nn as nn

args = _setup.parse_flags(
    {
        "--seed": 0,
        "--n_rows": 12000,
        "--validation_split": 0.2,
        "--learning_rate": 1e-3,
        "--batch_size": 128,
        "--max_epochs": 20,
        "--layers": "64-32",
        "--dropout": 0.1,
        "--use_batch_norm": 0,
        "--log_every_n_steps": 10,
        "--new_file_epoch": 0,
        "--new_file_rows": 2000,
        "--new_file_missing": "zero",
        "--new_file_store_codes": "project",
    }
)
rng = _setup.seeded(args.seed)
N_STORES = 20


# ----------------------------------------------------------------------------- data
def customers(g, n, region_offset=0, store_base=0):
    tenure = g.gamma(2.0, 12.0, n)
    monthly = g.normal(70, 25, n).clip(10, None)
    calls = g.poisson(1.5, n).astype(float)
    usage = g.lognormal(2.5, 0.8, n)
    age = g.integers(18, 80, n).astype(float)
    discount = g.choice([0.0, 5.0, 10.0, 20.0], n)
    region = (g.integers(0, 4, n) + region_offset) % 5
    plan = g.integers(0, 4, n)
    store = g.integers(0, N_STORES, n)
    store_eff = np.sin(np.arange(N_STORES) * 1.7) * 0.6
    z = (
        -0.05 * tenure
        + 0.02 * (monthly - 70)
        + 0.45 * calls
        - 0.25 * np.log(usage)
        + 0.03 * (discount == 0) * monthly / 10
        + 0.4 * (plan == 3)
        - 0.3 * (region == 1)
        + store_eff[store]
        + 0.02 * calls * (monthly - 70) / 5
    )
    churned = (g.random(n) < 1 / (1 + np.exp(-2.0 * (z + 0.6)))).astype(np.float32)
    cont = np.stack([tenure, monthly, calls, usage, age, discount], 1)
    cat = np.stack([region, plan, store + store_base], 1)
    return cont, cat, churned


g = np.random.default_rng(700 + args.seed)
cont, cat, target = customers(g, args.n_rows)
n_val = int(round(args.validation_split * args.n_rows))
order = g.permutation(args.n_rows)
va, tr = order[:n_val], order[n_val:]
mu, sd = cont[tr].mean(0), cont[tr].std(0) + 1e-6

g2 = np.random.default_rng(900 + args.seed)
cont2, cat2, target2 = customers(
    g2,
    args.new_file_rows,
    region_offset=1,
    store_base=N_STORES * (args.new_file_store_codes == "native"),
)
unknown = g2.random(args.new_file_rows) < 0.06
cont2[unknown, 3] = np.nan if args.new_file_missing == "nan" else 0.0


def tensors(c, k, t):
    return (
        torch.tensor((c - mu) / sd, dtype=torch.float32),
        torch.tensor(k, dtype=torch.long),
        torch.tensor(t),
    )


Ctr, Ktr, Ytr = tensors(cont[tr], cat[tr], target[tr])
Cva, Kva, Yva = tensors(cont[va], cat[va], target[va])
C2, K2, Y2 = tensors(cont2, cat2, target2)
cardinality = [5, 4, N_STORES]


# ----------------------------------------------------------------------------- model
class CategoryEmbeddingModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.embedding_layers = nn.ModuleList(
            [nn.Embedding(c, min(50, (c + 1) // 2)) for c in cardinality]
        )
        d = sum(min(50, (c + 1) // 2) for c in cardinality) + Ctr.shape[1]
        layers = []
        for w in [int(w) for w in args.layers.split("-")]:
            lin = nn.Linear(d, w)
            nn.init.kaiming_normal_(lin.weight, nonlinearity="relu")
            layers += [lin, nn.ReLU()]
            if args.use_batch_norm:
                layers.append(nn.BatchNorm1d(w))
            if args.dropout:
                layers.append(nn.Dropout(args.dropout))
            d = w
        self.backbone = nn.Sequential(*layers)
        self.head = nn.Linear(d, 1)

    def forward(self, c, k):
        emb = [e(k[:, i]) for i, e in enumerate(self.embedding_layers)]
        return self.head(self.backbone(torch.cat(emb + [c], 1)))[:, 0]


model = CategoryEmbeddingModel()
opt = torch.optim.Adam(model.parameters(), lr=args.learning_rate)
loss_fn = nn.BCEWithLogitsLoss()


with mlflow.start_run():
    mlflow.log_params(vars(args))
    n_params = sum(p.numel() for p in model.parameters())
    print(
        f"INFO - Preparing the DataLoaders ({len(tr)} train, {n_val} validation rows)", flush=True
    )
    print(
        f"INFO - Preparing the Model: CategoryEmbeddingModel ({n_params} trainable params)",
        flush=True,
    )
    print("INFO - Training Started", flush=True)
    global_step = 0
    t0 = time.time()
    for epoch in range(args.max_epochs):
        if args.new_file_epoch and epoch >= args.new_file_epoch:
            C, K, Y = torch.cat([Ctr, C2]), torch.cat([Ktr, K2]), torch.cat([Ytr, Y2])
            if epoch == args.new_file_epoch:
                print(f"INFO - region-2 export appended: {len(Y)} training rows", flush=True)
        else:
            C, K, Y = Ctr, Ktr, Ytr
        model.train()
        perm = torch.tensor(rng.permutation(len(Y)))
        correct, seen, n_batches = 0.0, 0, 0
        for i in range(0, len(Y), args.batch_size):
            b = perm[i : i + args.batch_size]
            if len(b) < 2:
                continue
            logits = model(C[b], K[b])
            loss = loss_fn(logits, Y[b])
            opt.zero_grad()
            loss.backward()
            opt.step()
            global_step += 1
            n_batches += 1
            correct += ((logits.detach() > 0).float() == Y[b]).sum().item()
            seen += len(b)
            if global_step % args.log_every_n_steps == 0:
                mlflow.log_metric("train_loss", loss.item(), step=global_step)
        model.eval()
        with torch.no_grad():
            lv = model(Cva, Kva)
            valid_loss = loss_fn(lv, Yva).item()
            valid_acc = ((lv > 0).float() == Yva).float().mean().item()
        mlflow.log_metrics(
            {
                "valid_loss": valid_loss,
                "valid_accuracy": valid_acc,
                "train_accuracy": correct / max(seen, 1),
                "epoch": float(epoch),
            },
            step=global_step,
        )
        print(
            f"Epoch {epoch}: 100%|##########| {n_batches}/{n_batches} "
            f"[{time.time() - t0:.0f}s, train_loss={loss.item():.3f}, "
            f"valid_loss={valid_loss:.3f}, valid_accuracy={valid_acc:.3f}]",
            flush=True,
        )
    print(f"INFO - Training the model completed ({time.time() - t0:.1f} s)", flush=True)
