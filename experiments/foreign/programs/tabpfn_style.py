"""A small prior-fitted tabular transformer fine-tuned in context, as the team's loop around a
TabPFN-style ``TabPFNClassifier`` fine-tunes one, its scalars mirrored to MLflow.

Plain PyTorch + numpy + the plain ``mlflow`` API (no TabPFN here).  What is imitated:

* the TabPFN model's in-context set-up: each training row is an item (a linear feature encoder
  plus a label embedding), test rows are items without labels, a transformer encoder lets every
  item attend to the training items only (the train/test attention mask), and the test items'
  outputs are the class logits;
* the fine-tuning recipe: every step a random ``context_size`` rows of the training split as
  context and ``query_size`` other rows as queries, the queries' cross entropy, AdamW with
  linear warm-up for ``warmup_steps`` then cosine decay, gradient clipping at 1.0;
* the scalars the team writes every ``log_every`` steps at ``step = optimizer step`` from 1:
  ``finetune/loss`` (the step's batch loss), ``finetune/lr``, ``finetune/grad_norm`` (before
  clipping); every ``eval_every`` steps ``eval/log_loss``, ``eval/roc_auc`` and ``eval/accuracy``
  of the held-out rows predicted with the whole training split as context (TabPFN's
  ``predict_proba``, ensembles of one), and ``eval/best_log_loss``.

Data: a generated tabular binary task (``make_classification``-like: informative, redundant and
noise columns, a few categorical-like integer columns), ``n_rows`` rows, a ``val_frac``
held-out split.  Written without looking at the doctor.

Team options (faults are real settings): ``--lr``; ``--n_train`` with ``--d_model`` /
``--n_layers`` (a small customer table fine-tuned long on a big model); ``--keep_attn 1`` (the
team's explainability hook keeps every step's attention maps and activations for the report).
"""

import math

import _setup
import mlflow
import numpy as np
import torch
from sklearn.datasets import make_classification

args = _setup.parse_flags(
    {
        "--seed": 0,
        "--n_rows": 3000,
        "--val_frac": 0.2,
        "--n_train": 0,  # 0: every non-held-out row
        "--d_model": 32,
        "--n_layers": 2,
        "--n_heads": 4,
        "--context_size": 192,
        "--query_size": 64,
        "--lr": 1e-3,
        "--weight_decay": 0.01,
        "--warmup_steps": 30,
        "--steps": 400,
        "--log_every": 5,
        "--eval_every": 25,
        "--keep_attn": 0,
    }
)
rng = _setup.seeded(args.seed)

X, y = make_classification(
    n_samples=args.n_rows,
    n_features=12,
    n_informative=6,
    n_redundant=3,
    flip_y=0.03,
    class_sep=1.0,
    random_state=11,
)
X[:, -2:] = np.round(X[:, -2:] * 2)  # categorical-like columns
X = ((X - X.mean(0)) / X.std(0)).astype(np.float32)
y = y.astype(np.int64)
perm = np.random.default_rng(5).permutation(len(y))
n_val = int(args.val_frac * len(y))
vi, ti = perm[:n_val], perm[n_val:]
if args.n_train:
    ti = ti[: args.n_train]
Xt, yt, Xv, yv = torch.from_numpy(X[ti]), torch.from_numpy(y[ti]), torch.from_numpy(X[vi]), y[vi]


class PFN(torch.nn.Module):
    def __init__(self, d, layers, heads):
        super().__init__()
        self.enc = torch.nn.Linear(X.shape[1], d)
        self.lab = torch.nn.Embedding(2, d)
        self.layers = torch.nn.ModuleList(
            torch.nn.TransformerEncoderLayer(d, heads, 2 * d, dropout=0.0, batch_first=True)
            for _ in range(layers)
        )
        self.head = torch.nn.Linear(d, 2)
        self.kept = []

    def forward(self, xc, yc, xq):
        h = torch.cat([self.enc(xc) + self.lab(yc), self.enc(xq)])[None]
        n_c, n = len(xc), len(xc) + len(xq)
        mask = torch.ones(n, n, dtype=torch.bool)
        mask[:, :n_c] = False  # attend to the training items only
        for layer in self.layers:
            h = layer(h, src_mask=mask)
            if args.keep_attn and self.training:
                # the explainability hook: the step's pairwise item-interaction tensor
                # (items x items x features), kept for the report at the end
                self.kept.append((h[0, :, None, :] * h[0, None, :, :]).detach().clone())
        return self.head(h[0, n_c:])


model = PFN(args.d_model, args.n_layers, args.n_heads)
opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)


def lr_at(step):
    if step <= args.warmup_steps:
        return args.lr * step / args.warmup_steps
    p = (step - args.warmup_steps) / max(1, args.steps - args.warmup_steps)
    return args.lr * 0.5 * (1 + math.cos(math.pi * p))


def roc_auc(score, lab):
    order = np.argsort(score)
    ranks = np.empty(len(score))
    ranks[order] = np.arange(1, len(score) + 1)
    pos = lab == 1
    return float((ranks[pos].sum() - pos.sum() * (pos.sum() + 1) / 2) / (pos.sum() * (~pos).sum()))


def evaluate():
    model.eval()
    with torch.no_grad():
        ctx = torch.from_numpy(np.random.default_rng(0).permutation(len(yt))[:512])
        logits = model(Xt[ctx], yt[ctx], torch.from_numpy(X[vi]))
        p = torch.softmax(logits.double(), -1)[:, 1].numpy()
    model.train()
    pc = np.clip(p, 1e-7, 1 - 1e-7)
    ll = float(-np.mean(yv * np.log(pc) + (1 - yv) * np.log(1 - pc)))
    auc = roc_auc(p, yv) if np.all(np.isfinite(p)) else float("nan")
    return ll, auc, float(np.mean((p > 0.5) == (yv == 1)))


with mlflow.start_run():
    mlflow.log_params(vars(args))
    n_params = sum(p.numel() for p in model.parameters())
    print(
        f"TabPFN-style classifier: {n_params} parameters, train rows {len(yt)}, held-out {len(yv)}",
        flush=True,
    )
    best = float("inf")
    for step in range(1, args.steps + 1):
        idx = torch.from_numpy(rng.permutation(len(yt))[: args.context_size + args.query_size])
        c, q = idx[: args.context_size], idx[args.context_size :]
        for g in opt.param_groups:
            g["lr"] = lr_at(step)
        logits = model(Xt[c], yt[c], Xt[q])
        loss = torch.nn.functional.cross_entropy(logits, yt[q])
        opt.zero_grad()
        loss.backward()
        gn = float(torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0))
        opt.step()
        if step % args.log_every == 0:
            mlflow.log_metrics(
                {
                    "finetune/loss": float(loss),
                    "finetune/lr": lr_at(step),
                    "finetune/grad_norm": gn,
                },
                step=step,
            )
        if step % args.eval_every == 0:
            ll, auc, acc = evaluate()
            best = min(best, ll)
            mlflow.log_metrics(
                {
                    "eval/log_loss": ll,
                    "eval/roc_auc": auc,
                    "eval/accuracy": acc,
                    "eval/best_log_loss": best,
                },
                step=step,
            )
            print(
                f"step {step}: loss {float(loss):.4f} eval log_loss {ll:.4f} roc_auc {auc:.4f} acc {acc:.4f}",
                flush=True,
            )
    print("fine-tuning done", flush=True)
