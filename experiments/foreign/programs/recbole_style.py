"""A BPR matrix-factorisation recommender trained as RecBole's ``Trainer.fit`` trains one
(``run_recbole(model="BPR", ...)``), its W&B logger's metrics mirrored to MLflow name for name.

Plain PyTorch + numpy + the plain ``mlflow`` API (no RecBole, no W&B here).  What is imitated,
as RecBole's ``Trainer`` and ``WandbLogger`` log it:

* after every training epoch: ``wandblogger.log_metrics({"epoch": epoch_idx, "train_loss":
  train_loss, "train_step": epoch_idx}, head="train")``, i.e. ``train/epoch``,
  ``train/train_loss``, ``train/train_step``; ``train_loss`` is RecBole's *sum* of the epoch's
  batch losses (``total_loss + loss.item()``), not their mean;
* every ``eval_step`` epochs, after the full-sort evaluation on the validation split:
  ``log_metrics({**valid_result, "valid_step": valid_step}, head="valid")``, i.e.
  ``valid/recall@10``, ``valid/mrr@10``, ``valid/ndcg@10``, ``valid/hit@10``,
  ``valid/precision@10`` (rounded to ``metric_decimal_place`` 4; the team's W&B-to-MLflow
  mirror writes ``@`` as ``_at_``, which MLflow names need: ``valid/recall_at_10``, ...) and
  ``valid/valid_step``
  (0, 1, 2, ... one per evaluation); the logger's ``define_metric`` puts ``train/*`` on
  ``train_step`` and ``valid/*`` on ``valid_step``, and those are the MLflow steps here;
* early stopping on ``valid_metric`` (MRR@10, bigger is better) after ``stopping_step``
  evaluations without improvement; the best model is saved (``saved``) and reloaded for the
  test split, whose result goes to the W&B summary (here ``test/recall@10``, ... once);
* RecBole's defaults for BPR: ``embedding_size`` 64, ``train_batch_size`` 2048, Adam at
  ``learning_rate`` 0.001 (``learner``), ``weight_decay`` 0, ``epochs`` 300, one uniformly
  sampled negative per positive (never an item of the user's history), random 8:1:1 split per
  user, full ranking over all items with the user's known items masked; RecBole's raise on a
  NaN loss (``ValueError: Training loss is nan``) and its log lines.

Data: a generated implicit-feedback ``.inter`` file (``--n_users`` users, ``--n_items`` items,
user and item taste vectors plus item popularity, ``--inter_per_user`` interactions each,
with timestamps).  Written without looking at the doctor.

Faults are real code paths and data: ``--learner sgd`` with a learning rate meant for
another model; ``--inter_shift``: the export joined the user column to the item column one
row off (rows in timestamp order), so each interaction's user is another user;
``--embedding_size`` large with early stopping switched off (``--stopping_step`` large) on
few interactions per user; ``--saved 0`` in a script that still reloads the best model from
the checkpoint file before testing.
"""

import math
import os
import time

import _setup
import mlflow
import numpy as np
import torch
from torch import nn

args = _setup.parse_flags(
    {
        "--seed": 2020,
        "--n_users": 1000,
        "--n_items": 500,
        "--inter_per_user": 30,
        "--embedding_size": 64,
        "--train_batch_size": 2048,
        "--learner": "adam",
        "--learning_rate": 1e-3,
        "--weight_decay": 0.0,
        "--epochs": 300,
        "--eval_step": 1,
        "--stopping_step": 10,
        "--topk": 10,
        "--split_valid": 0.1,
        "--inter_shift": 0,
        "--saved": 1,
        "--data_seed": 7,
    }
)
rng = _setup.seeded(args.seed)

# ----------------------------------------------------------------------------- dataset
gen = np.random.default_rng(args.data_seed)  # the dataset is the team's export: fixed
U, I, K = args.n_users, args.n_items, 8
ufac, ifac = gen.normal(size=(U, K)), gen.normal(size=(I, K))
pop = gen.normal(0, 1.0, I)
rows = []
for u in range(U):
    logit = ufac[u] @ ifac.T / math.sqrt(K) * 2.0 + pop
    p = np.exp(logit - logit.max())
    items = gen.choice(I, args.inter_per_user, replace=False, p=p / p.sum())
    ts = np.sort(gen.uniform(8.8e8, 8.9e8, args.inter_per_user))
    rows += [(u, it, t) for it, t in zip(items, ts, strict=True)]
inter = np.array(rows, dtype=np.float64)
inter = inter[np.argsort(inter[:, 2], kind="stable")]  # the .inter file is in timestamp order
if args.inter_shift:  # the export's join put the user column one row off
    inter[:, 0] = np.roll(inter[:, 0], args.inter_shift)
user_col, item_col = inter[:, 0].astype(np.int64), inter[:, 1].astype(np.int64)
print(
    f"ml-synthetic\nThe number of users: {U + 1}\nAverage actions of users: "
    f"{len(inter) / U:.4f}\nThe number of items: {I + 1}\nThe number of inters: {len(inter)}",
    flush=True,
)

# RS 8:1:1 per user (group_by user), order RO
train, valid, test = [], [], []
for u in range(U):
    idx = np.flatnonzero(user_col == u)
    idx = idx[rng.permutation(len(idx))]
    n_v = max(1, round(len(idx) * args.split_valid))
    n_t = max(1, round(len(idx) * 0.1))
    test += list(idx[:n_t])
    valid += list(idx[n_t : n_t + n_v])
    train += list(idx[n_t + n_v :])
train, valid, test = (np.array(s) for s in (train, valid, test))
tr_u, tr_i = user_col[train], item_col[train]
history = np.zeros((U, I), dtype=bool)
history[tr_u, tr_i] = True


def sample_neg(users):
    neg = rng.integers(0, I, len(users))
    bad = history[users, neg]
    while bad.any():  # resample the negatives that are in the user's history
        neg[bad] = rng.integers(0, I, int(bad.sum()))
        bad = history[users, neg]
    return neg


# ----------------------------------------------------------------------------- model
class BPR(nn.Module):
    def __init__(self):
        super().__init__()
        self.user_embedding = nn.Embedding(U, args.embedding_size)
        self.item_embedding = nn.Embedding(I, args.embedding_size)
        nn.init.xavier_normal_(self.user_embedding.weight)
        nn.init.xavier_normal_(self.item_embedding.weight)

    def calculate_loss(self, user, pos, neg):
        u = self.user_embedding(user)
        pos_score = (u * self.item_embedding(pos)).sum(-1)
        neg_score = (u * self.item_embedding(neg)).sum(-1)
        return -torch.log(1e-10 + torch.sigmoid(pos_score - neg_score)).mean()  # BPRLoss

    def full_sort_predict(self, user):
        return self.user_embedding(user) @ self.item_embedding.weight.T


model = BPR()
opt_cls = {"adam": torch.optim.Adam, "sgd": torch.optim.SGD, "adagrad": torch.optim.Adagrad}
optimizer = opt_cls[args.learner](
    model.parameters(), lr=args.learning_rate, weight_decay=args.weight_decay
)


def evaluate(split):
    """Full ranking of every item for each user of the split, known items masked."""
    k = args.topk
    users = user_col[split]
    items = item_col[split]
    truth = np.zeros((U, I), dtype=bool)
    truth[users, items] = True
    eval_users = np.unique(users)
    known = history.copy()
    if split is test:  # for the test split the validation items are known too
        known[user_col[valid], item_col[valid]] = True
    mask = known[eval_users]
    with torch.no_grad():
        scores = model.full_sort_predict(torch.tensor(eval_users)).numpy()
    scores[mask] = -np.inf
    top = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    hits = truth[eval_users[:, None], top]
    n_pos = truth[eval_users].sum(1)
    ranks = np.arange(1, k + 1)
    first = np.where(hits.any(1), hits.argmax(1) + 1, 0)
    idcg = np.array([(1 / np.log2(ranks[: min(n, k)] + 1)).sum() for n in n_pos])
    res = {
        "recall@10": (hits.sum(1) / n_pos).mean(),
        "mrr@10": np.where(first > 0, 1.0 / np.maximum(first, 1), 0.0).mean(),
        "ndcg@10": ((hits / np.log2(ranks + 1)).sum(1) / idcg).mean(),
        "hit@10": hits.any(1).mean(),
        "precision@10": (hits.sum(1) / k).mean(),
    }
    return {key.replace("10", str(k)): round(float(v), 4) for key, v in res.items()}


# ----------------------------------------------------------------------------- Trainer.fit
def mf(key):  # the W&B-to-MLflow mirror: MLflow names allow no '@'
    return key.replace("@", "_at_")


stamp = time.strftime("%b-%d-%Y_%H-%M-%S")
saved_model_file = os.path.join("saved", f"BPR-{stamp}.pth")
with mlflow.start_run():
    mlflow.log_params(vars(args))
    print(f"BPR(\n  (user_embedding): Embedding({U}, {args.embedding_size})", flush=True)
    print(f"  (item_embedding): Embedding({I}, {args.embedding_size})\n  (loss): BPRLoss()\n)")
    print(f"Trainable parameters: {sum(p.numel() for p in model.parameters())}", flush=True)
    best_valid_score, cur_step, valid_step, best_epoch = -np.inf, 0, 0, 0
    tr_users, tr_items = torch.tensor(tr_u), torch.tensor(tr_i)
    for epoch_idx in range(args.epochs):
        t0 = time.time()
        model.train()
        perm = rng.permutation(len(tr_u))
        total_loss = None
        for s in range(0, len(perm), args.train_batch_size):
            b = perm[s : s + args.train_batch_size]
            neg = torch.tensor(sample_neg(tr_u[b]))
            loss = model.calculate_loss(tr_users[b], tr_items[b], neg)
            if torch.isnan(loss):
                raise ValueError("Training loss is nan")
            total_loss = loss.item() if total_loss is None else total_loss + loss.item()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        t1 = time.time()
        print(
            f"epoch {epoch_idx} training [time: {t1 - t0:.2f}s, train loss: {total_loss:.4f}]",
            flush=True,
        )
        mlflow.log_metrics(
            {
                "train/epoch": epoch_idx,
                "train/train_loss": total_loss,
                "train/train_step": epoch_idx,
            },
            step=epoch_idx,
        )
        if (epoch_idx + 1) % args.eval_step:
            continue
        model.eval()
        valid_result = evaluate(valid)
        valid_score = valid_result[f"mrr@{args.topk}"]
        if valid_score >= best_valid_score:
            best_valid_score, cur_step, update = valid_score, 0, True
        else:
            cur_step, update = cur_step + 1, False
        print(
            f"epoch {epoch_idx} evaluating [time: {time.time() - t1:.2f}s, "
            f"valid_score: {valid_score:.6f}]\nvalid result: \n"
            + "    ".join(f"{k} : {v}" for k, v in valid_result.items()),
            flush=True,
        )
        mlflow.log_metrics(
            {
                **{f"valid/{mf(k)}": v for k, v in valid_result.items()},
                "valid/valid_step": valid_step,
            },
            step=valid_step,
        )
        valid_step += 1
        if update:
            best_epoch = epoch_idx
            if args.saved:
                os.makedirs("saved", exist_ok=True)
                torch.save({"state_dict": model.state_dict(), "epoch": epoch_idx}, saved_model_file)
                print(f"Saving current: {saved_model_file}", flush=True)
        if cur_step > args.stopping_step:
            print(f"Finished training, best eval result in epoch {best_epoch}", flush=True)
            break
    # run_recbole: test_result = trainer.evaluate(test_data, load_best_model=True)
    checkpoint = torch.load(saved_model_file, weights_only=True)
    model.load_state_dict(checkpoint["state_dict"])
    print(f"Loading model structure and parameters from {saved_model_file}", flush=True)
    test_result = evaluate(test)
    mlflow.log_metrics({f"test/{mf(k)}": v for k, v in test_result.items()}, step=0)
    print(f"best valid : {best_valid_score}\ntest result: {test_result}", flush=True)
