"""A click-through-rate model trained the way Facebook's DLRM ``dlrm_s_pytorch.py`` trains one
on day-split Criteo-style data, its TensorBoard scalars mirrored into MLflow tag for tag.

Plain PyTorch + numpy + the plain ``mlflow`` API (no dlrm here).  The argparse namespace is
logged as params.  As ``dlrm_s_pytorch.py`` writes them (with ``--mlperf_logging``): every
``--print_freq`` iterations ``Train/Loss`` and ``Train/Accuracy`` (the binary cross-entropy and
the accuracy at 0.5, averaged over the samples *since the last print*, accuracy as a fraction)
and every ``--test_freq`` iterations (and at each epoch's end) ``Test/Loss`` and
``Test/Accuracy`` over the test day, all at step ``log_iter = nbatches * k + j + 1`` (k the
epoch from 0, j the iteration in it).  The console shows ``Finished training it 200/942 of
epoch 0, 3.12 ms/it, loss 0.512345, accuracy 75.123 %`` and ``Testing at - 400/942 of epoch 0,
loss 0.501, recall ..., precision ..., f1 ..., ap ..., auc 0.7512, best auc 0.7512, accuracy
75.412 %, best accuracy 75.412 %``.  Written without looking at the doctor.

Data: a synthetic ad-click log in Criteo's layout (13 integer counts, ``--num_sparse`` hashed
categorical columns with Zipf-like popularity, one of them an item id whose catalogue grows day
by day), preprocessed as DLRM's ``getCriteoAdData`` does into ``day_{d}_processed.npz`` files
(``X_int`` log(1 + x), ``X_cat`` indices, ``y``); days ``0..num_days-2`` are the training set,
read in day order by a reader thread that loads the next day file into a queue, the last day is
the test set.  Clicks come from a hidden per-id effect per column, a dense linear term and one
pairwise interaction.  Model: bottom MLP on the dense features, an ``EmbeddingBag`` per column
(``--arch_embedding_size`` rows, or the data's own counts when empty; ``--max_ind_range`` > 0
hashes ids into that many rows), dot interactions, top MLP, sigmoid, BCE; SGD (``--optimizer
sgd``) or Adagrad, DLRM's ``LRPolicyScheduler`` (warm-up, then polynomial decay).

Faults are real settings or data: ``--corrupt_day D`` - 3200 rows of day D were written by a broken
impression/click join that marked every impression clicked; ``--nepochs``
3 on the same days (CTR models with large embedding tables over-fit from the second pass on);
``--arch_embedding_size`` copied from an older, smaller catalogue with ``--max_ind_range`` off
(item ids past the table appear once the later days are read); ``--truncated_day D`` - day D's
file was cut short by a failed copy: the reader thread dies on it and the training loop waits
on the queue for ever.
"""

import os
import queue
import tempfile
import threading
import time

import _setup
import mlflow
import numpy as np
import torch

args = _setup.parse_flags(
    {
        "--arch_sparse_feature_size": 16,
        "--arch_embedding_size": "",
        "--arch_mlp_bot": "13-64-16",
        "--arch_mlp_top": "64-32-1",
        "--arch_interaction_op": "dot",
        "--max_ind_range": -1,
        "--loss_function": "bce",
        "--data_generation": "dataset",
        "--num_days": 7,
        "--rows_per_day": 20000,
        "--num_sparse": 8,
        "--mini_batch_size": 128,
        "--test_mini_batch_size": 1024,
        "--nepochs": 1,
        "--learning_rate": 0.1,
        "--optimizer": "sgd",
        "--lr_num_warmup_steps": 0,
        "--lr_decay_start_step": 0,
        "--lr_num_decay_steps": 0,
        "--print_freq": 20,
        "--test_freq": 200,
        "--numpy_rand_seed": 123,
        "--mlperf_logging": 1,
        "--corrupt_day": -1,
        "--truncated_day": -1,
    }
)
rng = _setup.seeded(args.numpy_rand_seed)

# ---------------------------------------------------------------- data (fixed; seed 99)
data_rng = np.random.default_rng(99)
CARD = [1460, 580, 30000, 4000, 300, 24, 12000, 600, 3, 9000][: args.num_sparse]
ITEM = 2  # the item-id column: its catalogue grows by a share every day
SCALE = [0.8, 0.4, 1.0, 0.6, 0.4, 0.3, 0.7, 0.5, 0.2, 0.6][: args.num_sparse]
effects = [data_rng.normal(0, s, c) for s, c in zip(SCALE, CARD, strict=True)]
w_dense = data_rng.normal(0, 0.35, 13)
inter = data_rng.normal(0, 0.6, (CARD[0], 3))


def zipf_ids(n, card, a=3.0):
    """Popularity skewed to the low ids (a > 1) or, for fresh items, to the high ones."""
    ids = np.floor(card * data_rng.random(n) ** a).astype(np.int64)
    return np.minimum(ids, card - 1)


def make_day(d, n):
    X_int = data_rng.lognormal(1.0, 1.3, (n, 13)).round() * (data_rng.random((n, 13)) > 0.2)
    X_cat = np.stack([zipf_ids(n, c) for c in CARD], 1)
    live = int(CARD[ITEM] * (0.35 + 0.65 * d / max(args.num_days - 1, 1)))  # catalogue so far
    X_cat[:, ITEM] = np.minimum(zipf_ids(n, live, a=0.6), live - 1)
    dense = np.log1p(X_int)
    z = -1.3 + (dense - 1.2) @ w_dense * 0.5
    z += sum(effects[f][X_cat[:, f]] for f in range(len(CARD)))
    z += inter[X_cat[:, 0], X_cat[:, 5] % 3]
    y = (data_rng.random(n) < 1 / (1 + np.exp(-z))).astype(np.float32)
    return X_int.astype(np.int32), X_cat, y


root = tempfile.mkdtemp(prefix="criteo_")
for d in range(args.num_days):
    X_int, X_cat, y = make_day(d, args.rows_per_day)
    if d == args.corrupt_day:  # a block written by the broken join: every row a click
        a = args.rows_per_day // 3
        y[a : a + 3200] = 1.0
    path = os.path.join(root, f"day_{d}_processed.npz")
    np.savez(path, X_int=np.log1p(X_int).astype(np.float32), X_cat=X_cat, y=y)
    if d == args.truncated_day:
        with open(path, "r+b") as f:
            f.truncate(os.path.getsize(path) * 3 // 5)
print(f"Loaded {args.num_days} days from {root}", flush=True)

ln_emb = (
    [int(v) for v in args.arch_embedding_size.split("-")]
    if args.arch_embedding_size
    else list(CARD)
)
if args.max_ind_range > 0:
    ln_emb = [min(n, args.max_ind_range) for n in ln_emb]
n_train_days = args.num_days - 1
nbatches = n_train_days * (args.rows_per_day // args.mini_batch_size)
per_day = args.rows_per_day // args.mini_batch_size


def day_reader(q, epoch):
    """The reader thread: loads each training day file, in day order, into the queue."""
    for d in range(n_train_days):
        with np.load(os.path.join(root, f"day_{d}_processed.npz")) as f:
            q.put((d, f["X_int"], f["X_cat"], f["y"]))


def batches(epoch):
    q = queue.Queue(maxsize=2)
    threading.Thread(target=day_reader, args=(q, epoch), daemon=True).start()
    for _ in range(n_train_days):
        d, X_int, X_cat, y = q.get()
        order = np.arange(len(y))  # the day file's own order (shuffled when preprocessed)
        for b in range(per_day):
            idx = order[b * args.mini_batch_size : (b + 1) * args.mini_batch_size]
            yield X_int[idx], X_cat[idx], y[idx]


with np.load(os.path.join(root, f"day_{args.num_days - 1}_processed.npz")) as f:
    test_data = (f["X_int"], f["X_cat"], f["y"])


# ---------------------------------------------------------------- model


def mlp(spec, sigmoid_last=False):
    sizes = [int(v) for v in spec.split("-")]
    layers = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        lin = torch.nn.Linear(a, b)
        torch.nn.init.normal_(lin.weight, 0.0, np.sqrt(2 / (a + b)))
        torch.nn.init.normal_(lin.bias, 0.0, np.sqrt(1 / b))
        layers += [
            lin,
            torch.nn.Sigmoid() if (sigmoid_last and i == len(sizes) - 2) else torch.nn.ReLU(),
        ]
    return torch.nn.Sequential(*layers)


class DLRM_Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        m = args.arch_sparse_feature_size
        self.emb_l = torch.nn.ModuleList()
        for n in ln_emb:
            e = torch.nn.EmbeddingBag(n, m, mode="sum")
            bound = np.sqrt(1 / n)
            torch.nn.init.uniform_(e.weight, -bound, bound)
            self.emb_l.append(e)
        self.bot_l = mlp(args.arch_mlp_bot)
        n_f = len(ln_emb) + 1
        top_in = m + n_f * (n_f - 1) // 2
        self.top_l = mlp(f"{top_in}-{args.arch_mlp_top}", sigmoid_last=True)

    def forward(self, dense_x, lS_i):
        x = self.bot_l(dense_x)
        offsets = torch.arange(len(dense_x))
        ly = [emb(lS_i[:, k], offsets) for k, emb in enumerate(self.emb_l)]
        T = torch.cat([x] + ly, dim=1).view(len(x), -1, x.shape[1])
        Z = torch.bmm(T, T.transpose(1, 2))
        li, lj = torch.tril_indices(T.shape[1], T.shape[1], offset=-1)
        R = torch.cat([x, Z[:, li, lj]], dim=1)
        return self.top_l(R)


def to_tensors(X_int, X_cat, y):
    cat = torch.from_numpy(X_cat)
    if args.max_ind_range > 0:
        cat = cat % args.max_ind_range
    return torch.from_numpy(X_int), cat, torch.from_numpy(y)[:, None]


class LRPolicyScheduler(torch.optim.lr_scheduler._LRScheduler):
    def __init__(self, optimizer, num_warmup_steps, decay_start_step, num_decay_steps):
        self.num_warmup_steps = num_warmup_steps
        self.decay_start_step = decay_start_step
        self.decay_end_step = decay_start_step + num_decay_steps
        self.num_decay_steps = num_decay_steps
        super().__init__(optimizer)

    def get_lr(self):
        step_count = self._step_count
        if step_count < self.num_warmup_steps:
            scale = 1.0 - (self.num_warmup_steps - step_count) / self.num_warmup_steps
            return [base_lr * scale for base_lr in self.base_lrs]
        if self.decay_start_step <= step_count < self.decay_end_step:
            decayed_steps = step_count - self.decay_start_step
            scale = ((self.num_decay_steps - decayed_steps) / self.num_decay_steps) ** 2
            return [base_lr * max(scale, 0.0) for base_lr in self.base_lrs]
        if self.num_decay_steps > 0 and step_count >= self.decay_end_step:
            return [0.0 for _ in self.base_lrs]
        return list(self.base_lrs)


def inference(dlrm, loss_fn):
    X_int, X_cat, y = test_data
    scores, total_loss = [], 0.0
    with torch.no_grad():
        for b in range(0, len(y), args.test_mini_batch_size):
            xi, xc, yt = to_tensors(
                *(a[b : b + args.test_mini_batch_size] for a in (X_int, X_cat, y))
            )
            z = dlrm(xi, xc)
            total_loss += loss_fn(z, yt).item() * len(yt)
            scores.append(z[:, 0].numpy())
    s = np.concatenate(scores)
    pred = s > 0.5
    tp = float((pred & (y > 0.5)).sum())
    recall = tp / max(float((y > 0.5).sum()), 1)
    precision = tp / max(float(pred.sum()), 1)
    f1 = 2 * precision * recall / max(precision + recall, 1e-12)
    ranks = np.argsort(np.argsort(s)) + 1
    npos = float((y > 0.5).sum())
    auc = (ranks[y > 0.5].sum() - npos * (npos + 1) / 2) / (npos * (len(y) - npos))
    return total_loss / len(y), float((pred == (y > 0.5)).mean()), recall, precision, f1, auc


with mlflow.start_run():
    mlflow.log_params(vars(args) | {"ln_emb": "-".join(map(str, ln_emb)), "nbatches": nbatches})
    dlrm = DLRM_Net()
    loss_fn = torch.nn.BCELoss(reduction="mean")
    if args.optimizer == "adagrad":
        optimizer = torch.optim.Adagrad(dlrm.parameters(), lr=args.learning_rate)
    else:
        optimizer = torch.optim.SGD(dlrm.parameters(), lr=args.learning_rate)
    lr_scheduler = LRPolicyScheduler(
        optimizer, args.lr_num_warmup_steps, args.lr_decay_start_step, args.lr_num_decay_steps
    )
    print("time/loss/accuracy (if enabled):", flush=True)
    best_auc = best_acc = 0.0
    for k in range(args.nepochs):
        total_time = total_loss = total_accu = 0.0
        total_iter = total_samp = 0
        for j, batch in enumerate(batches(k)):
            t1 = time.time()
            X, lS_i, T = to_tensors(*batch)
            Z = dlrm(X, lS_i)
            E = loss_fn(Z, T)
            optimizer.zero_grad()
            E.backward()
            optimizer.step()
            lr_scheduler.step()
            mbs = T.shape[0]
            total_loss += E.item() * mbs
            total_accu += float(((Z.detach() > 0.5).float() == T).sum())
            total_iter += 1
            total_samp += mbs
            total_time += time.time() - t1
            should_print = ((j + 1) % args.print_freq == 0) or (j + 1 == nbatches)
            should_test = args.test_freq > 0 and (
                ((j + 1) % args.test_freq == 0) or (j + 1 == nbatches)
            )
            log_iter = nbatches * k + j + 1
            if should_print:
                gT = 1000.0 * total_time / total_iter
                train_loss = total_loss / total_samp
                train_accuracy = total_accu / total_samp
                print(
                    f"Finished training it {j + 1}/{nbatches} of epoch {k}, {gT:.2f} ms/it, "
                    f"loss {train_loss:.6f}, accuracy {100 * train_accuracy:3.3f} %",
                    flush=True,
                )
                mlflow.log_metric("Train/Loss", train_loss, step=log_iter)
                if args.mlperf_logging:
                    mlflow.log_metric("Train/Accuracy", train_accuracy, step=log_iter)
                total_time = total_loss = total_accu = 0.0
                total_iter = total_samp = 0
            if should_test:
                loss_t, acc_t, recall, precision, f1, auc = inference(dlrm, loss_fn)
                best_auc, best_acc = max(best_auc, auc), max(best_acc, acc_t)
                print(
                    f"Testing at - {j + 1}/{nbatches} of epoch {k}, loss {loss_t:.6f}, "
                    f"recall {recall:.4f}, precision {precision:.4f}, f1 {f1:.4f}, "
                    f"auc {auc:.4f}, best auc {best_auc:.4f}, accuracy {100 * acc_t:3.3f} %, "
                    f"best accuracy {100 * best_acc:3.3f} %",
                    flush=True,
                )
                mlflow.log_metric("Test/Loss", loss_t, step=log_iter)
                mlflow.log_metric("Test/Accuracy", acc_t, step=log_iter)
