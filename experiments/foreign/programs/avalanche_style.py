"""A classifier trained continually over a stream of experiences as Avalanche's strategies
train one, its metrics sent to MLflow by the team's logger (a ``BaseLogger`` that mirrors
``WandBLogger.log_single_metric``).

Plain PyTorch + numpy + scikit-learn's bundled digits + the plain ``mlflow`` API (no
Avalanche here).  What is imitated:

* ``ni_benchmark(train, test, n_experiences, shuffle=True, seed=...)``: a New Instances
  scenario, every experience a disjoint share of the training images of all ten classes; the
  test stream split the same way;
* ``SimpleMLP(num_classes=10, input_size=64, hidden_size, hidden_layers, drop_rate)``, SGD with
  momentum 0.9, ``CrossEntropyLoss``; strategies ``Naive``, ``Replay`` (``ReplayPlugin``,
  ``mem_size``: a reservoir of past images mixed into each minibatch's data) and ``EWC``
  (``ewc_lambda``, ``mode='separate'``, the squared gradients after each experience as the
  Fisher diagonal); ``train_epochs`` epochs on each experience; ``eval_every``: ``1`` = the
  periodic evaluation on the test stream after every epoch (``PeriodicEval``), ``-1`` = only
  ``strategy.eval(test_stream)`` after each experience;
* ``EvaluationPlugin(accuracy_metrics(minibatch=True, epoch=True, experience=True,
  stream=True), loss_metrics(...same...), timing_metrics(epoch=True),
  forgetting_metrics(experience=True, stream=True))``: the names
  ``Top1_Acc_MB/train_phase/train_stream/Task000``, ``Loss_MB/...`` every minibatch,
  ``Top1_Acc_Epoch/train_phase/train_stream/Task000``, ``Loss_Epoch/...``,
  ``Time_Epoch/train_phase/train_stream/Task000`` (seconds) every epoch;
  ``Top1_Acc_Exp/eval_phase/test_stream/Task000/Exp003``, ``Loss_Exp/...`` for every test
  experience, ``Top1_Acc_Stream/eval_phase/test_stream/Task000``, ``Loss_Stream/...``,
  ``ExperienceForgetting/eval_phase/test_stream/Task000/Exp000`` (accuracy when last trained
  minus now, experiences already trained) and ``StreamForgetting/eval_phase/test_stream`` at
  each evaluation; every value at ``step = strategy.clock.train_iterations`` (the metric's
  ``x_plot_position``: minibatches trained so far);
* the ``TextLogger``/``InteractiveLogger`` lines ``-- >> Start of training phase << --``,
  ``Top1_Acc_Epoch/train_phase/train_stream/Task000 = 0.9312``, ...

Data: scikit-learn's digits (1,797 8 x 8 images, ten classes) as the team's scanning project
exports them: pixel values 0-16 and a label column; ``test_share`` held out as the test set;
``standardize``: ``global`` (divide by 16) or ``per_image`` (each image to zero mean and unit
standard deviation, for scans of uneven contrast).  Written without looking at the doctor.

Faults are real settings and data: ``--lr``; ``--labels v2`` (the re-annotated label export:
the annotators' sheet for one collection batch was pasted one row down, so that batch's
labels belong to its neighbours); ``--include_calibration 1`` (the export keeps the scanner's
blank calibration frames, all-zero images, filed with the third collection batch);
``--train_share`` small with a wide ``--hidden_size``, no dropout and many epochs.
"""

import time

import _setup
import mlflow
import numpy as np
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits

args = _setup.parse_flags(
    {
        "--seed": 0,
        "--n_experiences": 5,
        "--train_epochs": 10,
        "--train_mb_size": 32,
        "--eval_mb_size": 128,
        "--lr": 0.02,
        "--momentum": 0.9,
        "--hidden_size": 256,
        "--hidden_layers": 1,
        "--drop_rate": 0.3,
        "--strategy": "naive",
        "--mem_size": 200,
        "--ewc_lambda": 0.4,
        "--eval_every": 1,
        "--test_share": 0.25,
        "--train_share": 1.0,
        "--standardize": "global",
        "--labels": "v1",
        "--include_calibration": 0,
    }
)
rng = _setup.seeded(args.seed)

# ----------------------------------------------------------------------------- the export
digits = load_digits()
X_all, y_all = digits.data.astype(np.float32), digits.target.astype(np.int64)
order = np.random.default_rng(2024).permutation(len(y_all))  # the project's collection order
X_all, y_all = X_all[order], y_all[order]
n_test = int(len(y_all) * args.test_share)
X_te, y_te = X_all[:n_test], y_all[:n_test]
X_tr, y_tr = X_all[n_test:], y_all[n_test:]
if args.train_share < 1.0:
    keep = rng.permutation(len(y_tr))[: int(len(y_tr) * args.train_share)]
    X_tr, y_tr = X_tr[np.sort(keep)], y_tr[np.sort(keep)]
batch_of = np.arange(len(y_tr)) * args.n_experiences // len(y_tr)  # collection batch per row
if args.labels == "v2":  # batch 2's sheet pasted one row down
    rows = np.flatnonzero(batch_of == 2)
    y_tr = y_tr.copy()
    y_tr[rows[1:]] = y_tr[rows[:-1]].copy()
    y_tr[rows[0]] = 0
if args.include_calibration:
    n_cal = 24
    at = np.flatnonzero(batch_of == 2)[0]
    X_tr = np.concatenate([X_tr[:at], np.zeros((n_cal, 64), np.float32), X_tr[at:]])
    y_tr = np.concatenate([y_tr[:at], np.zeros(n_cal, np.int64), y_tr[at:]])
    batch_of = np.concatenate([batch_of[:at], np.full(n_cal, 2), batch_of[at:]])


def standardize(X):
    if args.standardize == "per_image":
        with np.errstate(invalid="ignore", divide="ignore"):
            return (X - X.mean(1, keepdims=True)) / X.std(1, keepdims=True)
    return X / 16.0


X_tr, X_te = standardize(X_tr), standardize(X_te)


def ni_benchmark(batch_ids, n_exp, seed):
    """Experiences = the collection batches, in a seeded order."""
    exp_order = np.random.default_rng(seed).permutation(n_exp)
    return [np.flatnonzero(batch_ids == b) for b in exp_order], exp_order


train_stream, exp_order = ni_benchmark(batch_of, args.n_experiences, args.seed)
test_batch = np.arange(len(y_te)) * args.n_experiences // len(y_te)
test_stream = [np.flatnonzero(test_batch == b) for b in exp_order]
print(
    f"ni_benchmark: {args.n_experiences} experiences, train {len(y_tr)} images "
    f"({', '.join(str(len(e)) for e in train_stream)}), test {len(y_te)}; order {[int(b) for b in exp_order]}",
    flush=True,
)


# ----------------------------------------------------------------------------- model, strategy
class SimpleMLP(torch.nn.Module):
    def __init__(self):
        super().__init__()
        layers, d = [], 64
        for _ in range(args.hidden_layers):
            layers += [
                torch.nn.Linear(d, args.hidden_size),
                torch.nn.ReLU(inplace=True),
                torch.nn.Dropout(p=args.drop_rate),
            ]
            d = args.hidden_size
        self.features = torch.nn.Sequential(*layers)
        self.classifier = torch.nn.Linear(d, 10)

    def forward(self, x):
        return self.classifier(self.features(x))


model = SimpleMLP()
optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=args.momentum)
Xt_tr, yt_tr = torch.from_numpy(X_tr), torch.from_numpy(y_tr)
Xt_te, yt_te = torch.from_numpy(X_te), torch.from_numpy(y_te)
memory = np.zeros(0, dtype=np.int64)  # the ReplayPlugin's reservoir (row indices)
seen_for_memory = 0
ewc = []  # (params, fisher) per trained experience
train_iterations = 0
last_trained_acc = {}  # experience -> its accuracy at the end of its training

T = "Task000"


def log(metrics):
    mlflow.log_metrics(metrics, step=train_iterations)


@torch.no_grad()
def evaluate(idx):
    model.eval()
    losses, correct = 0.0, 0
    for s in range(0, len(idx), args.eval_mb_size):
        b = idx[s : s + args.eval_mb_size]
        out = model(Xt_te[b])
        losses += F.cross_entropy(out, yt_te[b], reduction="sum").item()
        correct += int((out.argmax(1) == yt_te[b]).sum())
    model.train()
    return losses / len(idx), correct / len(idx)


def eval_stream(trained):
    """strategy.eval(test_stream): every test experience, the stream, forgetting."""
    print("-- >> Start of eval phase << --", flush=True)
    m, tot_loss, tot_acc, n = {}, 0.0, 0.0, 0
    accs = {}
    for k, idx in enumerate(test_stream):
        loss, acc = evaluate(idx)
        accs[k] = acc
        m[f"Top1_Acc_Exp/eval_phase/test_stream/{T}/Exp{k:03d}"] = acc
        m[f"Loss_Exp/eval_phase/test_stream/{T}/Exp{k:03d}"] = loss
        tot_loss += loss * len(idx)
        tot_acc += acc * len(idx)
        n += len(idx)
    m[f"Top1_Acc_Stream/eval_phase/test_stream/{T}"] = tot_acc / n
    m[f"Loss_Stream/eval_phase/test_stream/{T}"] = tot_loss / n
    forg = []
    for k in trained:
        if k in last_trained_acc:
            f = last_trained_acc[k] - accs[k]
            m[f"ExperienceForgetting/eval_phase/test_stream/{T}/Exp{k:03d}"] = f
            forg.append(f)
    if forg:
        m["StreamForgetting/eval_phase/test_stream"] = float(np.mean(forg))
    log(m)
    print(
        f"\tTop1_Acc_Stream/eval_phase/test_stream/{T} = {tot_acc / n:.4f}\n"
        f"\tLoss_Stream/eval_phase/test_stream/{T} = {tot_loss / n:.4f}",
        flush=True,
    )
    return accs


def penalty():
    loss = 0.0
    for params, fisher in ewc:
        for p, p0, f in zip(model.parameters(), params, fisher, strict=True):
            loss = loss + (f * (p - p0) ** 2).sum()
    return args.ewc_lambda / 2 * loss


with mlflow.start_run():
    mlflow.log_params(vars(args))
    trained = []
    for k, exp_idx in enumerate(train_stream):
        print(f"-- >> Start of training phase << --\nStart of experience: {k}", flush=True)
        data_idx = exp_idx
        for epoch in range(args.train_epochs):
            t0 = time.time()
            ep_loss, ep_correct, ep_n = 0.0, 0, 0
            perm = data_idx[rng.permutation(len(data_idx))]
            for s in range(0, len(perm), args.train_mb_size):
                b = perm[s : s + args.train_mb_size]
                if args.strategy == "replay" and len(memory):  # the ReplayPlugin's buffer
                    b = np.concatenate([b, rng.choice(memory, min(len(b), len(memory)))])
                xb, yb = Xt_tr[b], yt_tr[b]
                out = model(xb)
                loss = F.cross_entropy(out, yb)
                if args.strategy == "ewc" and ewc:
                    loss = loss + penalty()
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                train_iterations += 1
                acc_mb = float((out.argmax(1) == yb).float().mean())
                ep_loss += loss.item() * len(b)
                ep_correct += int((out.argmax(1) == yb).sum())
                ep_n += len(b)
                log(
                    {
                        f"Top1_Acc_MB/train_phase/train_stream/{T}": acc_mb,
                        f"Loss_MB/train_phase/train_stream/{T}": loss.item(),
                    }
                )
            log(
                {
                    f"Top1_Acc_Epoch/train_phase/train_stream/{T}": ep_correct / ep_n,
                    f"Loss_Epoch/train_phase/train_stream/{T}": ep_loss / ep_n,
                    f"Time_Epoch/train_phase/train_stream/{T}": time.time() - t0,
                }
            )
            print(
                f"Epoch {epoch} ended.\n"
                f"\tLoss_Epoch/train_phase/train_stream/{T} = {ep_loss / ep_n:.4f}\n"
                f"\tTop1_Acc_Epoch/train_phase/train_stream/{T} = {ep_correct / ep_n:.4f}",
                flush=True,
            )
            if args.eval_every == 1 and epoch < args.train_epochs - 1:
                eval_stream(trained)  # PeriodicEval: the stream, mid-experience
        trained.append(k)
        print("-- >> End of training phase << --", flush=True)
        accs = eval_stream(trained)
        last_trained_acc[k] = accs[k]
        if args.strategy == "replay":  # reservoir sampling over every image seen
            for i in exp_idx:
                seen_for_memory += 1
                if len(memory) < args.mem_size:
                    memory = np.append(memory, i)
                else:
                    j = int(rng.integers(seen_for_memory))
                    if j < args.mem_size:
                        memory[j] = i
        if args.strategy == "ewc":  # Fisher diagonal on this experience
            fisher = [torch.zeros_like(p) for p in model.parameters()]
            for s in range(0, len(exp_idx), args.train_mb_size):
                b = exp_idx[s : s + args.train_mb_size]
                optimizer.zero_grad()
                F.cross_entropy(model(Xt_tr[b]), yt_tr[b]).backward()
                for f, p in zip(fisher, model.parameters(), strict=True):
                    f += p.grad.detach() ** 2 / (len(exp_idx) / args.train_mb_size)
            ewc.append(([p.detach().clone() for p in model.parameters()], fisher))
    print("Training completed", flush=True)
