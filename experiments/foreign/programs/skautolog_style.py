"""A digit classifier trained incrementally with scikit-learn's ``MLPClassifier.partial_fit``
under ``mlflow.sklearn.autolog()``, its metrics named as autolog names them.

scikit-learn + numpy + the plain ``mlflow`` API (no autolog patching here).  What is imitated:

* the team's streaming loop: the labelled data arrive as chunks (one a labelling batch); every
  epoch ``clf.partial_fit(chunk_X, chunk_y, classes=...)`` is called once per chunk in a shuffled
  order (one pass of the solver over the chunk in mini-batches of ``batch_size``);
* after each epoch the training metrics autolog logs for a classifier, with its own names and
  ``step = epoch`` (from 0): ``training_accuracy_score``, ``training_precision_score``,
  ``training_recall_score``, ``training_f1_score`` (weighted), ``training_log_loss``,
  ``training_roc_auc`` (ovr), ``training_score``; the estimator's ``loss_`` attribute (the last
  ``partial_fit``'s mean loss with the L2 term) as ``training_loss``;
* autolog's post-training metrics for the team's evaluation calls on the validation arrays
  (``X_val``, ``y_val``): ``clf.score(X_val, y_val)`` logged as ``MLPClassifier_score_X_val``,
  ``sklearn.metrics.accuracy_score(y_val, ...)`` as ``accuracy_score_X_val`` and
  ``log_loss(y_val, ...)`` as ``log_loss_X_val`` (``{metric}_{dataset variable name}``).

Data: scikit-learn's bundled 8 x 8 digits (1,797 images), pixels scaled to [0, 1] as the
team's ``FunctionTransformer`` does; a ``val_size`` split; the rest cut into ``n_chunks``
chunks.  ``--vendor_chunk_epoch``: a chunk labelled by the new vendor (``vendor_chunk`` images
re-labelled, with the vendor's class ids ``vendor_label_base``-based) joins from that epoch on.
Written without looking at the doctor.

Faults are real settings and data: ``--learning_rate_init``, ``--solver`` / ``--momentum``;
``--vendor_label_base``; ``--train_size`` with ``--hidden_layer_sizes`` and ``--alpha``.
"""

import time
import warnings

import _setup
import mlflow
import numpy as np
from sklearn.datasets import load_digits
from sklearn.exceptions import ConvergenceWarning
from sklearn.metrics import (
    accuracy_score,
    f1_score,
    log_loss,
    precision_score,
    recall_score,
    roc_auc_score,
)
from sklearn.neural_network import MLPClassifier

warnings.filterwarnings("ignore", category=ConvergenceWarning)

args = _setup.parse_flags(
    {
        "--seed": 0,
        "--hidden_layer_sizes": "64",
        "--solver": "adam",
        "--learning_rate_init": 1e-3,
        "--momentum": 0.9,
        "--alpha": 1e-4,
        "--batch_size": 32,
        "--epochs": 60,
        "--val_size": 360,
        "--train_size": 0,  # 0: every image not in validation
        "--n_chunks": 6,
        "--vendor_chunk": 0,  # images the new labelling vendor labelled (0: none)
        "--vendor_chunk_epoch": 20,
        "--vendor_label_base": 0,  # the vendor's first class id
    }
)
rng = _setup.seeded(args.seed, torch=False)

X, y = load_digits(return_X_y=True)
X = X / 16.0
order = np.random.default_rng(99).permutation(len(X))
val_idx = order[: args.val_size]
pool = order[args.val_size :]
X_val, y_val = X[val_idx], y[val_idx]
vendor_idx = pool[len(pool) - args.vendor_chunk :] if args.vendor_chunk else pool[:0]
train_idx = pool[: len(pool) - args.vendor_chunk]
if args.train_size:
    train_idx = train_idx[: args.train_size]
chunks = [(X[i], y[i]) for i in np.array_split(train_idx, args.n_chunks)]
classes = np.arange(10)

clf = MLPClassifier(
    hidden_layer_sizes=tuple(int(h) for h in args.hidden_layer_sizes.split(",")),
    solver=args.solver,
    learning_rate_init=args.learning_rate_init,
    momentum=args.momentum,
    alpha=args.alpha,
    batch_size=args.batch_size,
    random_state=args.seed,
    shuffle=True,
)


def training_metrics(Xt, yt):
    proba = clf.predict_proba(Xt)
    pred = classes[np.argmax(proba, 1)]
    out = {
        "training_accuracy_score": accuracy_score(yt, pred),
        "training_precision_score": precision_score(yt, pred, average="weighted", zero_division=0),
        "training_recall_score": recall_score(yt, pred, average="weighted", zero_division=0),
        "training_f1_score": f1_score(yt, pred, average="weighted", zero_division=0),
        "training_log_loss": log_loss(yt, proba, labels=classes),
        "training_score": clf.score(Xt, yt),
    }
    try:
        out["training_roc_auc"] = roc_auc_score(yt, proba, multi_class="ovr", labels=classes)
    except ValueError:
        pass
    return out


with mlflow.start_run():
    mlflow.log_params(vars(args))
    mlflow.log_params({f"MLPClassifier__{k}": v for k, v in clf.get_params().items()})
    print(f"train {len(train_idx)} in {args.n_chunks} chunks, val {len(val_idx)}", flush=True)
    start = time.time()
    for epoch in range(args.epochs):
        if args.vendor_chunk and epoch == args.vendor_chunk_epoch:
            yv = y[vendor_idx] + args.vendor_label_base  # the vendor's class ids
            yv = np.where(yv > 9, yv - 10, yv)  # the team's "wrap ids into 0-9" fix
            chunks.append((X[vendor_idx], yv))
            print(f"epoch {epoch}: vendor chunk of {len(vendor_idx)} joined", flush=True)
        for c in rng.permutation(len(chunks)):
            clf.partial_fit(chunks[c][0], chunks[c][1], classes=classes)
        Xt = np.concatenate([c[0] for c in chunks])
        yt = np.concatenate([c[1] for c in chunks])
        metrics = training_metrics(Xt, yt)
        metrics["training_loss"] = float(clf.loss_)
        proba_val = clf.predict_proba(X_val)
        metrics["MLPClassifier_score_X_val"] = clf.score(X_val, y_val)
        metrics["accuracy_score_X_val"] = accuracy_score(y_val, classes[np.argmax(proba_val, 1)])
        metrics["log_loss_X_val"] = log_loss(y_val, proba_val, labels=classes)
        mlflow.log_metrics(metrics, step=epoch)
        if epoch % 5 == 0 or epoch == args.epochs - 1:
            print(
                f"epoch {epoch}: loss_={clf.loss_:.4f} "
                f"train acc {metrics['training_accuracy_score']:.4f} "
                f"val acc {metrics['accuracy_score_X_val']:.4f} "
                f"val log_loss {metrics['log_loss_X_val']:.4f}",
                flush=True,
            )
    print(f"fit in {time.time() - start:.1f} s", flush=True)
