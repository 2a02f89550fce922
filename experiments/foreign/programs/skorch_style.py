"""A classifier trained the way a skorch ``NeuralNetClassifier`` trains, logged the way skorch's
``MlflowLogger`` callback logs its ``History``.

Plain PyTorch + the plain ``mlflow`` API.  The net is skorch's tutorial ``ClassifierModule``
(dense0, nonlin, dropout, dense1, softmax output) under skorch's defaults: the ``NLLLoss`` on
the log of the softmax, ``ValidSplit`` holding out a stratified fraction, the train iterator
shuffled.  Every epoch's history row has ``train_loss`` (the batch losses weighted by batch
size), ``valid_loss``, ``valid_acc``, ``dur`` and the ``*_best`` flags; the ``MlflowLogger``
logs every key but ``epoch``, ``batches``, ``*_best`` and ``event_*``, with
``step=len(net.history)`` (epochs from 1).  With ``--callbacks__mlflow__log_on_batch_end 1``
it also logs every batch row (``train_loss``, ``train_batch_size``, ``valid_loss``,
``valid_batch_size``) with the suffix ``_batch`` against a batch counter that runs through
training and validation batches alike, and the epoch keys get the suffix ``_epoch``.  Params
as a user logs ``net.get_params()``: the flag names.  Written without looking at the doctor.

``--callbacks__freezer__epochs K`` trains with ``dense0`` frozen for K epochs (a transfer
set-up) and then unfreezes it: ``--callbacks__unfreezer__how reinit`` re-initialises the
optimizer over all parameters, ``add_group`` adds dense0's parameters to the optimizer as a
new parameter group.  ``--max_train N`` keeps only N training rows.
"""

import time

import _setup
import mlflow
import numpy as np
import torch
from sklearn.datasets import load_breast_cancer, load_digits, load_wine, make_classification
from sklearn.model_selection import train_test_split

args = _setup.parse_flags(
    {
        "--seed": 0,
        "--dataset": "make_classification",
        "--n_samples": 2000,
        "--max_epochs": 20,
        "--lr": 0.1,
        "--batch_size": 128,
        "--optimizer": "SGD",
        "--optimizer__momentum": 0.9,
        "--optimizer__weight_decay": 0.0,
        "--module__num_units": 64,
        "--module__dropout": 0.5,
        "--module__nonlin": "relu",
        "--train_split__cv": 0.2,
        "--max_train": 0,
        "--callbacks__lr_scheduler__policy": "none",
        "--callbacks__freezer__epochs": 0,
        "--callbacks__unfreezer__how": "reinit",
        "--callbacks__mlflow__log_on_batch_end": 0,
    }
)
A = vars(args)

rng = _setup.seeded(args.seed)
if args.dataset == "make_classification":
    X, y = make_classification(
        args.n_samples, 20, n_informative=10, n_classes=2, flip_y=0.03, random_state=args.seed
    )
else:
    X, y = {"breast_cancer": load_breast_cancer, "wine": load_wine, "digits": load_digits}[
        args.dataset
    ](return_X_y=True)
X = ((X - X.mean(0)) / (X.std(0) + 1e-6)).astype(np.float32)  # a StandardScaler in the pipe
y = y.astype(np.int64)
n_cls = int(y.max()) + 1
# ValidSplit(cv, stratified=True)
Xtr, Xva, ytr, yva = train_test_split(
    X, y, test_size=args.train_split__cv, stratify=y, random_state=args.seed
)
if args.max_train:
    Xtr, ytr = Xtr[: args.max_train], ytr[: args.max_train]
Xtr, ytr, Xva, yva = map(torch.from_numpy, (Xtr, ytr, Xva, yva))


class ClassifierModule(torch.nn.Module):
    def __init__(self, num_units, nonlin, dropout):
        super().__init__()
        self.dense0 = torch.nn.Linear(X.shape[1], num_units)
        self.nonlin = {"relu": torch.nn.ReLU(), "tanh": torch.nn.Tanh()}[nonlin]
        self.dropout = torch.nn.Dropout(dropout)
        self.dense1 = torch.nn.Linear(num_units, num_units // 2 or 1)
        self.output = torch.nn.Linear(num_units // 2 or 1, n_cls)

    def forward(self, x):
        x = self.nonlin(self.dense0(x))
        x = self.dropout(x)
        x = self.nonlin(self.dense1(x))
        return torch.softmax(self.output(x), dim=-1)


module = ClassifierModule(args.module__num_units, args.module__nonlin, args.module__dropout)
opt_cls = getattr(torch.optim, args.optimizer)
opt_kw = {"weight_decay": args.optimizer__weight_decay}
if args.optimizer == "SGD":
    opt_kw["momentum"] = args.optimizer__momentum


def initialize_optimizer(params):
    return opt_cls(params, lr=args.lr, **opt_kw)


frozen = args.callbacks__freezer__epochs > 0
if frozen:  # Freezer('dense0*'): requires_grad off, the optimizer still gets every parameter
    for p in module.dense0.parameters():
        p.requires_grad_(False)
optimizer = initialize_optimizer(module.parameters())
policy = args.callbacks__lr_scheduler__policy
if policy == "StepLR":
    sched = torch.optim.lr_scheduler.StepLR(optimizer, step_size=max(1, args.max_epochs // 3))
elif policy == "CosineAnnealingLR":
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=args.max_epochs)
elif policy == "ReduceLROnPlateau":
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, patience=3, factor=0.5)
else:
    sched = None


def get_loss(y_proba, yb):
    """NeuralNetClassifier.get_loss with NLLLoss: log of the probabilities plus eps."""
    eps = torch.finfo(y_proba.dtype).eps
    return torch.nn.functional.nll_loss(torch.log(y_proba + eps), yb)


batch_suffix = "_batch" if args.callbacks__mlflow__log_on_batch_end else ""
epoch_suffix = "_epoch" if args.callbacks__mlflow__log_on_batch_end else ""
IGNORED = {"epoch", "batches"}


def mlflow_log(row, suffix, step):
    """MlflowLogger._iteration_log: every key but the ignored, *_best and event_* ones."""
    keep = {
        k + suffix: float(v)
        for k, v in row.items()
        if k not in IGNORED and not k.endswith("_best") and not k.startswith("event_")
    }
    mlflow.log_metrics(keep, step=step)


with mlflow.start_run():
    mlflow.log_params({k.replace("--", ""): v for k, v in A.items()})
    mlflow.log_params({"criterion": "NLLLoss", "iterator_train__shuffle": True})
    history, best, batch_count = [], {}, 0
    print("  epoch    train_loss    valid_acc    valid_loss     dur")
    print("-------  ------------  -----------  ------------  ------")
    for epoch in range(1, args.max_epochs + 1):
        t0 = time.time()
        if frozen and epoch == args.callbacks__freezer__epochs + 1:  # the Unfreezer
            for p in module.dense0.parameters():
                p.requires_grad_(True)
            if args.callbacks__unfreezer__how == "add_group":
                optimizer.add_param_group({"params": list(module.dense0.parameters())})
            else:
                optimizer = initialize_optimizer(module.parameters())
                if sched is not None:
                    sched.optimizer = optimizer
            frozen = False
        row = {"epoch": epoch, "batches": []}
        module.train()
        order = torch.from_numpy(rng.permutation(len(Xtr)))
        tl, n = 0.0, 0
        for b in range(0, len(Xtr), args.batch_size):
            bi = order[b : b + args.batch_size]
            optimizer.zero_grad()
            loss = get_loss(module(Xtr[bi]), ytr[bi])
            loss.backward()
            optimizer.step()
            tl, n = tl + loss.item() * len(bi), n + len(bi)
            brow = {"train_loss": loss.item(), "train_batch_size": len(bi)}
            row["batches"].append(brow)
            if args.callbacks__mlflow__log_on_batch_end:
                batch_count += 1
                mlflow_log(brow, batch_suffix, batch_count)
        module.eval()
        vl, correct = 0.0, 0
        with torch.no_grad():
            for b in range(0, len(Xva), args.batch_size):
                xb, yb = Xva[b : b + args.batch_size], yva[b : b + args.batch_size]
                proba = module(xb)
                lb = get_loss(proba, yb).item()
                vl += lb * len(yb)
                correct += (proba.argmax(1) == yb).sum().item()
                brow = {"valid_loss": lb, "valid_batch_size": len(yb)}
                row["batches"].append(brow)
                if args.callbacks__mlflow__log_on_batch_end:
                    batch_count += 1
                    mlflow_log(brow, batch_suffix, batch_count)
        row["train_loss"], row["valid_loss"] = tl / n, vl / len(Xva)
        row["valid_acc"] = correct / len(Xva)
        for k, better in (("train_loss", min), ("valid_loss", min), ("valid_acc", max)):
            row[f"{k}_best"] = k not in best or better(best[k], row[k]) == row[k]
            best[k] = row[k] if row[f"{k}_best"] else best[k]
        if sched is not None:
            if policy == "ReduceLROnPlateau":
                sched.step(row["valid_loss"])
            else:
                sched.step()
            row["event_lr"] = optimizer.param_groups[0]["lr"]
        row["dur"] = time.time() - t0
        history.append(row)
        mlflow_log(row, epoch_suffix, len(history))
        star = {True: "+", False: " "}
        print(
            f"{epoch:>7d}  {row['train_loss']:>10.4f}{star[row['train_loss_best']]}  "
            f"{row['valid_acc']:>10.4f}{star[row['valid_acc_best']]}  "
            f"{row['valid_loss']:>10.4f}{star[row['valid_loss_best']]}  {row['dur']:.4f}",
            flush=True,
        )
