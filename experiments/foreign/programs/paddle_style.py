"""An image classifier trained with PaddlePaddle's high-level API (``paddle.Model.fit`` with a
``paddle.callbacks.VisualDL`` callback, the hapi LeNet tutorial), its VisualDL scalars mirrored
to MLflow tag for tag.

Plain PyTorch + numpy + the plain ``mlflow`` API (no Paddle, no VisualDL here).  What is
imitated, as hapi's ``VisualDL`` callback writes it:

* ``on_train_batch_end`` increments ``train_step`` (from 1) and writes every entry of the
  batch's logs as ``train/<name>`` at ``step = train_step``: ``train/loss`` is the batch's loss,
  ``train/acc`` is ``paddle.metric.Accuracy().accumulate()``, the running accuracy since the
  epoch began (the metric is reset each epoch);
* ``on_eval_end`` writes ``eval/loss`` and ``eval/acc`` at ``step = epoch`` (hapi counts epochs
  from 0); evaluation runs after every ``--eval_freq`` epochs;
* nothing else: no learning rate, no timing (the ProgBarLogger prints ``batch_cost``,
  ``reader_cost`` and ``ips`` to the console only, every ``--log_freq`` steps);
* the optimiser as the tutorial builds it: ``paddle.optimizer.Adam(learning_rate=0.001)``, or
  ``Momentum`` (``--optimizer momentum``), with an optional ``CosineAnnealingDecay``
  (``--lr_scheduler cosine``) stepped per epoch; ``paddle.nn.CrossEntropyLoss``, or
  ``--loss custom``: the team's hand-written softmax cross-entropy (with
  ``--label_smoothing``); ``--amp_level O2``
  runs the forward under ``paddle.amp.auto_cast`` in float16 (the loss included, as O2 does
  for a custom loss made of plain ops).

Data: scikit-learn's 8x8 digits (1797 images, 10 classes) as a ``paddle.io.Dataset``,
``--eval_size`` images for evaluation and at most ``--train_size`` of the rest for training;
normalised with mean 0.5, std 0.5 (``paddle.vision.transforms.Normalize``).  Model: a LeNet
(two 3x3 convolutions with max-pooling, three linear layers).  Written without looking at the
doctor.

Faults are real code paths and data: ``--learning_rate`` far too high; ``--amp_level O2`` with
``--loss custom`` (the hand-written softmax exponentiates float16 logits without subtracting
their maximum); ``--label_file shuffled``: the label file of another ordering of the images;
``--train_size`` far too small for the model and epochs.
"""

import time

import _setup
import mlflow
import numpy as np
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from torch import nn

args = _setup.parse_flags(
    {
        "--seed": 2024,
        "--epochs": 20,
        "--batch_size": 64,
        "--learning_rate": 0.001,
        "--optimizer": "adam",
        "--lr_scheduler": "none",
        "--eval_size": 300,
        "--train_size": 100000,
        "--eval_freq": 1,
        "--log_freq": 10,
        "--loss": "ce",
        "--label_smoothing": 0.0,
        "--amp_level": "O0",
        "--label_file": "labels",
    }
)
rng = _setup.seeded(args.seed)

# ----------------------------------------------------------------------------- data
digits = load_digits()
images = (digits.images.astype(np.float32) / 16.0 - 0.5) / 0.5
labels = digits.target.astype(np.int64)
order = rng.permutation(len(images))
images, labels = images[order], labels[order]
if args.label_file == "shuffled":
    # labels exported for another ordering of the same images
    labels = labels[rng.permutation(len(labels))]
x = torch.tensor(images)[:, None]
y = torch.tensor(labels)
x_eval, y_eval = x[: args.eval_size], y[: args.eval_size]
x_train, y_train = x[args.eval_size :][: args.train_size], y[args.eval_size :][: args.train_size]


# ----------------------------------------------------------------------------- model
class LeNet(nn.Module):
    def __init__(self, num_classes=10):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 6, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(6, 16, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.fc = nn.Sequential(
            nn.Linear(64, 120), nn.ReLU(), nn.Linear(120, 84), nn.ReLU(), nn.Linear(84, num_classes)
        )

    def forward(self, inputs):
        return self.fc(self.features(inputs).flatten(1))


def custom_loss(logits, label):
    """The team's softmax cross-entropy with optional label smoothing, written with plain ops."""
    e = torch.exp(logits)
    prob = e / e.sum(-1, keepdim=True)
    target = F.one_hot(label, logits.shape[-1]).to(logits.dtype)
    target = target * (1 - args.label_smoothing) + args.label_smoothing / logits.shape[-1]
    return -(target * torch.log(prob)).sum(-1).mean()


def loss_fn(logits, label):
    if args.amp_level == "O2":  # auto_cast O2: the ops of a custom loss run in float16 too
        logits = logits.half()
    loss = custom_loss(logits, label) if args.loss == "custom" else F.cross_entropy(logits, label)
    return loss.float()


model = LeNet()
if args.optimizer == "momentum":
    opt = torch.optim.SGD(model.parameters(), lr=args.learning_rate, momentum=0.9)
else:
    opt = torch.optim.Adam(model.parameters(), lr=args.learning_rate)
sched = (
    torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=args.epochs)
    if args.lr_scheduler == "cosine"
    else None
)

# ----------------------------------------------------------------------------- fit
with mlflow.start_run():
    mlflow.log_params(vars(args))
    steps = (len(x_train) + args.batch_size - 1) // args.batch_size
    print(
        "The loss value printed in the log is the current step, and the metric is the average value of previous steps.",
        flush=True,
    )
    train_step = 0
    for epoch in range(args.epochs):
        print(f"Epoch {epoch + 1}/{args.epochs}", flush=True)
        model.train()
        perm = torch.randperm(len(x_train))
        correct = total = 0
        t_batch = time.perf_counter()
        for i in range(steps):
            idx = perm[i * args.batch_size : (i + 1) * args.batch_size]
            logits = model(x_train[idx])
            loss = loss_fn(logits, y_train[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            correct += (logits.argmax(-1) == y_train[idx]).sum().item()
            total += len(idx)
            train_step += 1
            acc = correct / total
            mlflow.log_metrics({"train/loss": loss.item(), "train/acc": acc}, step=train_step)
            if (i + 1) % args.log_freq == 0 or i + 1 == steps:
                cost = (time.perf_counter() - t_batch) / (i + 1)
                print(
                    f"step {i + 1:3d}/{steps} - loss: {loss.item():.4f} - acc: {acc:.4f} - "
                    f"batch_cost: {cost:.4f} - reader_cost: 0.0001 - ips: {args.batch_size / cost:.2f} samples/sec",
                    flush=True,
                )
        if sched is not None:
            sched.step()
        if (epoch + 1) % args.eval_freq == 0 or epoch + 1 == args.epochs:
            print("Eval begin...", flush=True)
            model.eval()
            with torch.no_grad():
                losses, correct = [], 0
                for i in range(0, len(x_eval), args.batch_size):
                    logits = model(x_eval[i : i + args.batch_size])
                    losses.append(loss_fn(logits, y_eval[i : i + args.batch_size]).item())
                    correct += (logits.argmax(-1) == y_eval[i : i + args.batch_size]).sum().item()
            ev_loss, ev_acc = float(np.mean(losses)), correct / len(x_eval)
            mlflow.log_metrics({"eval/loss": ev_loss, "eval/acc": ev_acc}, step=epoch)
            print(
                f"step {len(losses)}/{len(losses)} - loss: {ev_loss:.4f} - acc: {ev_acc:.4f}",
                flush=True,
            )
            print(f"Eval samples: {len(x_eval)}", flush=True)
