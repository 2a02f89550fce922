"""A digit classifier trained by Ludwig (``LudwigModel.train`` on a tabular config: 64
``number`` input features, one ``category`` output feature, a ``concat`` combiner), its metrics
written by Ludwig's ``MlflowCallback``.

Plain torch + the plain ``mlflow`` API (no Ludwig here).  The data is scikit-learn's bundled
``digits`` table (1797 rows, columns ``pixel_0`` ... ``pixel_63`` and ``label``), split at
random by ``preprocessing.split.probabilities`` (train, validation, test); number features
are z-score normalised (``normalization: zscore``, a constant column left at 0).  The trainer
config is logged flattened as params (``trainer.learning_rate``, ``trainer.batch_size``, ...).

As the callback writes them: at every checkpoint (once per epoch unless
``trainer.steps_per_checkpoint``), after evaluating the whole training, validation and test
sets, ``ProgressTracker.log_metrics()`` with ``step`` = the number of training steps so far:
``batch_size``, ``epoch`` (from 0: the epoch being trained), ``steps``,
``tune_checkpoint_num``, ``checkpoint_number``, ``last_improvement_steps``,
``best_eval_metric_steps``, ``best_eval_metric_epoch``, ``best_eval_metric_checkpoint_number``,
``learning_rate``, ``best_valid_metric`` (the best ``validation_metrics.combined.loss`` so far),
``num_reductions_lr``, ``num_increases_bs``, and for each of ``train_metrics``,
``validation_metrics`` and ``test_metrics``: ``<set>.label.loss`` (softmax cross-entropy),
``<set>.label.accuracy``, ``<set>.label.hits_at_k`` (top 3), ``<set>.label.roc_auc`` and
``<set>.combined.loss``.  When training ends the same dict is logged once more at the same
step.  Training stops early after ``trainer.early_stop`` checkpoints without a better
validation loss (``-1``: never).  Written without looking at the doctor.

Faults are real settings: ``--trainer.learning_rate`` far too high or too low; an exponential
decay that drives the learning rate to nothing within a few epochs
(``--trainer.learning_rate_scheduler.decay exponential`` with a tiny ``decay_rate``); a small
training split, a wide combiner without dropout or regularisation and early stopping off.
"""

import time

import _setup
import mlflow
import numpy as np
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from sklearn.metrics import roc_auc_score

args = _setup.parse_flags(
    {
        "--random_seed": ("seed", 42),
        "--preprocessing.split.probabilities": ("split", "0.7,0.1,0.2"),
        "--combiner.num_fc_layers": ("num_fc_layers", 1),
        "--combiner.output_size": ("output_size", 128),
        "--combiner.dropout": ("dropout", 0.1),
        "--trainer.epochs": ("epochs", 30),
        "--trainer.batch_size": ("batch_size", 128),
        "--trainer.learning_rate": ("lr", 0.001),
        "--trainer.optimizer.type": ("optimizer", "adam"),
        "--trainer.regularization_lambda": ("reg_lambda", 0.0),
        "--trainer.early_stop": ("early_stop", 5),
        "--trainer.steps_per_checkpoint": ("steps_per_checkpoint", 0),
        "--trainer.learning_rate_scheduler.decay": ("decay", "null"),
        "--trainer.learning_rate_scheduler.decay_rate": ("decay_rate", 0.96),
        "--trainer.learning_rate_scheduler.decay_steps": ("decay_steps", 10000),
        "--trainer.learning_rate_scheduler.warmup_evaluations": ("warmup_evaluations", 0),
    }
)
rng = _setup.seeded(args.seed)
X, y = load_digits(return_X_y=True)
probs = [float(p) for p in args.split.split(",")]
which = rng.choice(3, size=len(y), p=probs)  # Ludwig's random split
mu, sigma = X[which == 0].mean(0), X[which == 0].std(0)
X = (X - mu) / np.where(sigma > 0, sigma, 1.0)  # zscore, from the training split
sets = {
    name: (torch.tensor(X[which == i], dtype=torch.float32), torch.tensor(y[which == i]))
    for i, name in enumerate(("train", "validation", "test"))
}
N_CLASSES, TOP_K = 10, 3


class ECD(torch.nn.Module):  # number encoders (passthrough) -> concat combiner -> decoder
    def __init__(self):
        super().__init__()
        layers, d = [], X.shape[1]
        for _ in range(args.num_fc_layers):
            layers += [torch.nn.Linear(d, args.output_size), torch.nn.ReLU()]
            layers.append(torch.nn.Dropout(args.dropout))
            d = args.output_size
        self.combiner = torch.nn.Sequential(*layers)
        self.label_decoder = torch.nn.Linear(d, N_CLASSES)

    def forward(self, x):
        return self.label_decoder(self.combiner(x))


model = ECD()
opt_cls = {"adam": torch.optim.Adam, "sgd": torch.optim.SGD}[args.optimizer]
opt = opt_cls(model.parameters(), lr=args.lr)
n_train = len(sets["train"][1])
steps_per_epoch = -(-n_train // args.batch_size)
steps_per_checkpoint = args.steps_per_checkpoint or steps_per_epoch


def lr_at(step, checkpoint):
    lr = args.lr
    if args.warmup_evaluations and checkpoint < args.warmup_evaluations:
        lr *= (checkpoint + 1) / args.warmup_evaluations
    if args.decay == "exponential":
        lr *= args.decay_rate ** (step / args.decay_steps)
    elif args.decay == "linear":
        lr *= max(0.0, 1 - step / (args.epochs * steps_per_epoch))
    elif args.decay == "cosine":
        lr *= 0.5 * (1 + np.cos(np.pi * step / (args.epochs * steps_per_epoch)))
    return lr


def evaluate(name):
    x, t = sets[name]
    model.eval()
    with torch.no_grad():
        logits = model(x)
    model.train()
    loss = F.cross_entropy(logits, t).item()
    prob = torch.softmax(logits, -1).numpy()
    top = logits.topk(TOP_K, -1).indices
    out = {
        "loss": loss,
        "accuracy": (logits.argmax(-1) == t).float().mean().item(),
        "hits_at_k": (top == t[:, None]).any(-1).float().mean().item(),
    }
    try:
        out["roc_auc"] = roc_auc_score(
            t.numpy(), prob, multi_class="ovr", labels=list(range(N_CLASSES))
        )
    except ValueError:
        pass  # a metric that raises is left out, as Ludwig does
    return out


tracker = {
    "batch_size": args.batch_size,
    "epoch": 0,
    "steps": 0,
    "tune_checkpoint_num": 0,
    "checkpoint_number": 0,
    "last_improvement_steps": 0,
    "best_eval_metric_steps": 0,
    "best_eval_metric_epoch": 0,
    "best_eval_metric_checkpoint_number": 0,
    "learning_rate": args.lr,
    "best_valid_metric": float("inf"),
    "num_reductions_lr": 0,
    "num_increases_bs": 0,
}


def log_metrics(results):
    out = dict(tracker)
    for set_name, res in results.items():
        for metric, value in res.items():
            out[f"{set_name}_metrics.label.{metric}"] = value
        out[f"{set_name}_metrics.combined.loss"] = res["loss"]
    return out


with mlflow.start_run():
    mlflow.log_params(
        {
            "trainer.type": "trainer",
            "trainer.epochs": args.epochs,
            "trainer.batch_size": args.batch_size,
            "trainer.learning_rate": args.lr,
            "trainer.optimizer.type": args.optimizer,
            "trainer.regularization_lambda": args.reg_lambda,
            "trainer.early_stop": args.early_stop,
            "trainer.steps_per_checkpoint": args.steps_per_checkpoint,
            "trainer.validation_field": "combined",
            "trainer.validation_metric": "loss",
            "trainer.learning_rate_scheduler.decay": args.decay,
            "trainer.learning_rate_scheduler.decay_rate": args.decay_rate,
            "trainer.learning_rate_scheduler.decay_steps": args.decay_steps,
            "trainer.learning_rate_scheduler.warmup_evaluations": args.warmup_evaluations,
            "combiner.type": "concat",
            "combiner.num_fc_layers": args.num_fc_layers,
            "combiner.output_size": args.output_size,
            "combiner.dropout": args.dropout,
            "preprocessing.split.probabilities": args.split,
        }
    )
    print(
        f"Training set: {n_train}  Validation set: {len(sets['validation'][1])}  "
        f"Test set: {len(sets['test'][1])}",
        flush=True,
    )
    last = None
    stop = False
    x_train, y_train = sets["train"]
    for epoch in range(args.epochs):
        tracker["epoch"] = epoch
        t0 = time.time()
        perm = torch.from_numpy(rng.permutation(n_train))
        for b in range(steps_per_epoch):
            idx = perm[b * args.batch_size : (b + 1) * args.batch_size]
            lr = lr_at(tracker["steps"], tracker["checkpoint_number"])
            for g in opt.param_groups:
                g["lr"] = lr
            logits = model(x_train[idx])
            loss = F.cross_entropy(logits, y_train[idx])
            if args.reg_lambda:
                loss = loss + args.reg_lambda * sum(p.pow(2).sum() for p in model.parameters())
            opt.zero_grad()
            loss.backward()
            opt.step()
            tracker["steps"] += 1
            tracker["learning_rate"] = lr
            if tracker["steps"] % steps_per_checkpoint == 0:
                tracker["checkpoint_number"] += 1
                results = {s: evaluate(s) for s in ("train", "validation", "test")}
                v = results["validation"]["loss"]
                if v < tracker["best_valid_metric"]:
                    tracker["best_valid_metric"] = v
                    tracker["best_eval_metric_steps"] = tracker["steps"]
                    tracker["best_eval_metric_epoch"] = epoch
                    tracker["best_eval_metric_checkpoint_number"] = tracker["checkpoint_number"]
                tracker["last_improvement_steps"] = (
                    tracker["steps"] - tracker["best_eval_metric_steps"]
                )
                last = log_metrics(results)
                mlflow.log_metrics(last, step=tracker["steps"])
                print(
                    f"Epoch {epoch + 1}: train loss {results['train']['loss']:.4f} "
                    f"validation loss {v:.4f} accuracy "
                    f"{results['validation']['accuracy']:.4f} ({time.time() - t0:.2f}s)",
                    flush=True,
                )
                bad = tracker["last_improvement_steps"] // steps_per_checkpoint
                if args.early_stop >= 0 and bad >= args.early_stop:
                    print(
                        f"Last improvement of combined validation loss happened {bad} "
                        "checkpoint(s) ago. EARLY STOPPING due to lack of validation "
                        "improvement.",
                        flush=True,
                    )
                    stop = True
                    break
        if stop:
            break
    if last is not None:
        mlflow.log_metrics(last, step=tracker["steps"])  # on_trainer_train_teardown
    print("Finished: training", flush=True)
