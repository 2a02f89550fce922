"""A text classifier trained by AllenNLP's ``GradientDescentTrainer`` (a ``basic_classifier``
over a ``text_field_embedder`` and a ``seq2vec`` encoder), its per-batch and per-epoch metrics
mirrored to MLflow by a ``TrainerCallback``.

Plain torch + the plain ``mlflow`` API (no AllenNLP here).  Each instance is a window of
``dataset_reader.window`` tokens of Python's own standard-library source; its label is the
package the window was read from (``email``, ``http``, ``logging``, ``unittest``, ``asyncio``,
``xml``).  The vocabulary is built from the training instances (``min_count`` 2; the rest is
``@@UNKNOWN@@``).  The experiment config is logged flattened as params (``trainer.optimizer.lr``,
``model.encoder.type``, ``data_loader.batch_size``, ...).  As the callback writes them: every
``trainer.callbacks.summary_interval`` batches ``batch_loss``, ``gradient_norm`` (the total
norm before clipping) and ``learning_rate_0`` (param group 0) with ``step`` = the batch count
(from 1); after every epoch the trainer's metrics dict with ``step`` = the epoch (from 0):
``training_loss``, ``training_accuracy``, ``validation_loss``, ``validation_accuracy``,
``best_validation_loss``, ``best_validation_accuracy``, ``best_epoch``,
``training_worker_0_memory_MB`` and ``peak_worker_0_memory_MB``.  Written without looking at
the doctor.

Faults are real settings: ``--trainer.optimizer.lr`` far too high or too low; an ``rnn``
encoder with ReLU and identity-initialised recurrence under SGD with ``--trainer.grad_norm 0``
(no clipping); a tiny training set (``--train_limit``) with no dropout for many epochs; an
embedding whose ``--model.embedder.num_embeddings`` is smaller than the vocabulary (a batch
with one of the rarest tokens indexes past the table).
"""

import glob
import math
import os
import re
import resource
import time

import _setup
import mlflow
import torch
import torch.nn.functional as F

args = _setup.parse_flags(
    {
        "--random_seed": ("seed", 0),
        "--dataset_reader.window": ("window", 32),
        "--train_limit": ("train_limit", 800),  # instances per label
        "--validation_limit": ("validation_limit", 80),  # instances per label
        "--vocabulary.min_count": ("min_count", 2),
        "--model.embedder.embedding_dim": ("embedding_dim", 48),
        "--model.embedder.num_embeddings": ("num_embeddings", 0),  # 0 = the vocabulary's size
        "--model.encoder.type": ("encoder", "lstm"),  # lstm, gru, rnn, boe
        "--model.encoder.hidden_size": ("hidden_size", 48),
        "--model.encoder.nonlinearity": ("nonlinearity", "tanh"),
        "--model.initializer.weight_hh": ("init_hh", "default"),  # default or eye
        "--model.dropout": ("dropout", 0.2),
        "--data_loader.batch_size": ("batch_size", 32),
        "--trainer.optimizer.type": ("optimizer", "adam"),
        "--trainer.optimizer.lr": ("lr", 0.002),
        "--trainer.optimizer.weight_decay": ("weight_decay", 0.0),
        "--trainer.learning_rate_scheduler.type": ("scheduler", "none"),
        "--trainer.learning_rate_scheduler.warmup_steps": ("warmup_steps", 0),
        "--trainer.num_epochs": ("num_epochs", 8),
        "--trainer.grad_norm": ("grad_norm", 5.0),
        "--trainer.patience": ("patience", 0),
        "--trainer.callbacks.summary_interval": ("summary_interval", 10),
    }
)
rng = _setup.seeded(args.seed)
STDLIB = os.path.dirname(os.__file__)
LABELS = ["email", "http", "logging", "unittest", "asyncio", "xml"]
TOKEN = re.compile(r"\w+|[^\w\s]")


def read_package(name):  # the dataset reader: token windows, in file order
    toks = []
    for path in sorted(glob.glob(f"{STDLIB}/{name}/**/*.py", recursive=True)):
        toks += TOKEN.findall(open(path, encoding="utf-8", errors="replace").read())
    w = args.window
    return [toks[i : i + w] for i in range(0, len(toks) - w + 1, w)]


train, validation = [], []
for k, name in enumerate(LABELS):
    windows = read_package(name)
    order = rng.permutation(len(windows))
    va = order[: args.validation_limit]
    tr = order[args.validation_limit : args.validation_limit + args.train_limit]
    validation += [(windows[i], k) for i in va]
    train += [(windows[i], k) for i in tr]

counts = {}
for toks, _ in train:
    for t in toks:
        counts[t] = counts.get(t, 0) + 1
vocab = ["@@PADDING@@", "@@UNKNOWN@@"]  # then by count, as Vocabulary does
vocab += sorted((t for t, c in counts.items() if c >= args.min_count), key=lambda t: -counts[t])
index = {t: i for i, t in enumerate(vocab)}


def tensorize(instances):
    x = torch.tensor([[index.get(t, 1) for t in toks] for toks, _ in instances])
    return x, torch.tensor([k for _, k in instances])


Xtr, ytr = tensorize(train)
Xva, yva = tensorize(validation)


class BasicClassifier(torch.nn.Module):
    def __init__(self):
        super().__init__()
        n = args.num_embeddings or len(vocab)
        self.embedder = torch.nn.Embedding(n, args.embedding_dim, padding_idx=0)
        d, h = args.embedding_dim, args.hidden_size
        if args.encoder == "lstm":
            self.encoder = torch.nn.LSTM(d, h, batch_first=True)
        elif args.encoder == "gru":
            self.encoder = torch.nn.GRU(d, h, batch_first=True)
        elif args.encoder == "rnn":
            self.encoder = torch.nn.RNN(d, h, nonlinearity=args.nonlinearity, batch_first=True)
        else:  # boe: bag of embeddings, averaged
            self.encoder, h = None, d
        self.dropout = torch.nn.Dropout(args.dropout)
        self.classification_layer = torch.nn.Linear(h, len(LABELS))

    def forward(self, tokens):
        e = self.embedder(tokens)
        if self.encoder is None:
            v = e.mean(1)
        else:
            out, _ = self.encoder(e)
            v = out[:, -1]
        return self.classification_layer(self.dropout(v))


model = BasicClassifier()
if args.init_hh == "eye":  # InitializerApplicator: [["encoder.weight_hh.*", {"type": "eye"}]]
    for name, p in model.named_parameters():
        if name.startswith("encoder.weight_hh"):
            torch.nn.init.eye_(p.data)
        if name.startswith("encoder.bias_hh"):
            torch.nn.init.zeros_(p.data)
if args.optimizer == "sgd":
    opt = torch.optim.SGD(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
else:
    opt = torch.optim.Adam(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
batches_per_epoch = math.ceil(len(train) / args.batch_size)
total_steps = batches_per_epoch * args.num_epochs


def lr_at(step):  # step from 1
    if args.scheduler == "linear_with_warmup":
        if step <= args.warmup_steps:
            return args.lr * step / max(1, args.warmup_steps)
        return args.lr * max(0.0, total_steps - step) / max(1, total_steps - args.warmup_steps)
    if args.scheduler == "constant_with_warmup":
        return args.lr * min(1.0, step / max(1, args.warmup_steps))
    if args.scheduler == "slanted_triangular":  # cut_frac 0.1, ratio 32
        cut = max(1, int(0.1 * total_steps))
        p = step / cut if step < cut else 1 - (step - cut) / max(1, total_steps - cut)
        return args.lr * (1 + p * 31) / 32
    if args.scheduler == "polynomial_decay":
        return args.lr * (1 - (step - 1) / total_steps) ** 2
    return args.lr


def memory_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def validate():
    model.eval()
    with torch.no_grad():
        logits = model(Xva)
        loss = F.cross_entropy(logits, yva).item()
        acc = (logits.argmax(1) == yva).float().mean().item()
    model.train()
    return loss, acc


with mlflow.start_run():
    mlflow.log_params(
        {
            "random_seed": args.seed,
            "numpy_seed": args.seed,
            "pytorch_seed": args.seed,
            "dataset_reader.type": "stdlib_package_windows",
            "dataset_reader.window": args.window,
            "vocabulary.min_count.tokens": args.min_count,
            "model.type": "basic_classifier",
            "model.text_field_embedder.token_embedders.tokens.type": "embedding",
            "model.text_field_embedder.token_embedders.tokens.embedding_dim": args.embedding_dim,
            "model.seq2vec_encoder.type": args.encoder,
            "model.seq2vec_encoder.hidden_size": args.hidden_size,
            "model.dropout": args.dropout,
            "data_loader.batch_size": args.batch_size,
            "data_loader.shuffle": True,
            "trainer.optimizer.type": args.optimizer,
            "trainer.optimizer.lr": args.lr,
            "trainer.optimizer.weight_decay": args.weight_decay,
            "trainer.learning_rate_scheduler.type": args.scheduler,
            "trainer.num_epochs": args.num_epochs,
            "trainer.grad_norm": args.grad_norm or "null",
            "trainer.patience": args.patience or "null",
            "trainer.validation_metric": "-loss",
        }
    )
    print(
        f"allennlp.data.vocabulary - {len(vocab)} tokens; {len(train)} train and "
        f"{len(validation)} validation instances",
        flush=True,
    )
    step, best, best_acc, best_epoch, bad_epochs = 0, math.inf, 0.0, 0, 0
    start = time.time()
    for epoch in range(args.num_epochs):
        print(f"allennlp.training.gradient_descent_trainer - Epoch {epoch}/{args.num_epochs - 1}")
        perm = torch.from_numpy(rng.permutation(len(train)))
        loss_sum, correct, seen = 0.0, 0, 0
        for b in range(batches_per_epoch):
            idx = perm[b * args.batch_size : (b + 1) * args.batch_size]
            step += 1
            for g in opt.param_groups:
                g["lr"] = lr_at(step)
            logits = model(Xtr[idx])
            loss = F.cross_entropy(logits, ytr[idx])
            opt.zero_grad()
            loss.backward()
            norm = torch.norm(
                torch.stack(
                    [p.grad.detach().norm() for p in model.parameters() if p.grad is not None]
                )
            ).item()
            if args.grad_norm:
                torch.nn.utils.clip_grad_norm_(model.parameters(), args.grad_norm)
            opt.step()
            loss_sum += loss.item()
            correct += (logits.argmax(1) == ytr[idx]).sum().item()
            seen += len(idx)
            if step % args.summary_interval == 0:
                mlflow.log_metrics(
                    {
                        "batch_loss": loss.item(),
                        "gradient_norm": norm,
                        "learning_rate_0": lr_at(step),
                    },
                    step=step,
                )
        val_loss, val_acc = validate()
        if val_loss < best:
            best, best_acc, best_epoch, bad_epochs = val_loss, val_acc, epoch, 0
        else:
            bad_epochs += 1
        metrics = {
            "training_loss": loss_sum / batches_per_epoch,
            "training_accuracy": correct / seen,
            "training_worker_0_memory_MB": memory_mb(),
            "validation_loss": val_loss,
            "validation_accuracy": val_acc,
            "best_epoch": best_epoch,
            "best_validation_loss": best,
            "best_validation_accuracy": best_acc,
            "peak_worker_0_memory_MB": memory_mb(),
        }
        mlflow.log_metrics(metrics, step=epoch)
        print(
            "allennlp.training.callbacks.console_logger - "
            + "  ".join(f"{k}: {v:.4f}" for k, v in metrics.items()),
            flush=True,
        )
        if args.patience and bad_epochs >= args.patience:
            print("allennlp.training.gradient_descent_trainer - Ran out of patience. Stopping.")
            break
    print(f"allennlp.commands.train - training took {time.time() - start:.1f}s", flush=True)
