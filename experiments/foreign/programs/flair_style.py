"""A topic classifier trained by flair's ``ModelTrainer.train`` (a ``TextClassifier`` over
``DocumentRNNEmbeddings`` of stacked word embeddings), its ``use_tensorboard=True`` scalars
mirrored into MLflow.

Plain torch + the plain ``mlflow`` API (no flair here).  The corpus is generated: six topics,
a 3000-word vocabulary with a Zipf background and 40 boosted words per topic, sentences of
6-30 tokens, 4 % of the labels flipped (annotation noise); 3000 train, 400 dev and 400 test
sentences (``--downsample`` keeps that fraction of each, or of the training split only with
``--downsample_dev 0``, as ``corpus.downsample(..., downsample_dev=False, downsample_test=False)``).
``glove`` is a fixed 100-d word embedding (flair does not fine-tune ``WordEmbeddings``); ``news-forward`` / ``news-backward`` stand for
flair's contextual string embeddings: fixed (not fine-tuned) 2048-d vectors per token.  With
``embeddings_storage_mode`` ``cpu`` (flair's default) every token's stacked embedding is kept
on its sentence after the batch, ``none`` drops it.  Gradients are clipped at 5.0, as flair
does.  The train() arguments are logged as params.

As flair writes them: one log line every tenth of an epoch (``epoch N - iter i/n - loss L``,
the running average of the epoch so far, ``samples/sec``, ``lr``); after every epoch ``EPOCH N
done: loss ... - lr ...``, then the dev evaluation, ``BAD EPOCHS (no improvement): k``; and the
TensorBoard scalars ``train_loss`` (the epoch's average loss), ``learning_rate`` and, after the
dev evaluation, ``dev_loss`` and ``dev_score`` (the ``main_evaluation_metric``, micro-avg F1
= accuracy here), all with step = epoch (from 1).  ``AnnealOnPlateau`` (mode max on the dev
score) halves the learning rate after more than ``patience`` bad epochs and training ends
when it falls below ``min_learning_rate`` ("learning rate too small - quitting training!") or
at ``max_epochs``; with ``--scheduler LinearSchedulerWithWarmup`` the rate is set per batch
and the value at the epoch's end is logged.  Written without looking at the doctor.

Faults are real settings: a learning rate far too high or too low; ``corpus.downsample`` to a
few dozen sentences with a wide RNN and no dropout; flair's contextual embeddings stacked in
with ``embeddings_storage_mode cpu`` (every sentence keeps its 4196-d token vectors: the memory
runs out); a ``main_evaluation_metric`` with a misspelt class-average key.
"""

import time
from datetime import datetime

import _setup
import mlflow
import numpy as np
import torch
import torch.nn.functional as F

args = _setup.parse_flags(
    {
        "--seed": 1,
        "--learning_rate": 0.1,
        "--mini_batch_size": 32,
        "--max_epochs": 20,
        "--optimizer": "SGD",
        "--scheduler": "AnnealOnPlateau",
        "--warmup_fraction": 0.1,
        "--anneal_factor": 0.5,
        "--patience": 3,
        "--min_learning_rate": 0.0001,
        "--embeddings": "glove",
        "--embeddings_storage_mode": "cpu",
        "--rnn_type": "GRU",
        "--hidden_size": 128,
        "--dropout": 0.5,
        "--downsample": 1.0,
        "--downsample_dev": 1,
        "--main_evaluation_metric": "micro avg,f1-score",
    }
)
rng = _setup.seeded(args.seed)
log_t0 = time.time()


def log(msg):
    stamp = datetime.now().strftime("%Y-%m-%d %H:%M:%S,%f")[:-3]
    print(f"{stamp} {msg}", flush=True)


# ---------------------------------------------------------------- corpus
V, N_TOPICS = 3000, 6
data_rng = np.random.default_rng(1234)  # the corpus is fixed; --seed moves the training
background = 1.0 / np.arange(1, V + 1) ** 1.05
topic_p = []
for _ in range(N_TOPICS):
    p = background.copy()
    p[data_rng.choice(np.arange(50, V), 40, replace=False)] += 0.06
    topic_p.append(p / p.sum())


def make_split(n):
    sents, labels = [], []
    for _ in range(n):
        t = int(data_rng.integers(N_TOPICS))
        sents.append(data_rng.choice(V, size=int(data_rng.integers(6, 31)), p=topic_p[t]))
        labels.append(int(data_rng.integers(N_TOPICS)) if data_rng.random() < 0.04 else t)
    return sents, labels


corpus = {"train": make_split(3000), "dev": make_split(400), "test": make_split(400)}
if args.downsample < 1.0:
    for k, (s, y) in list(corpus.items()):
        if k != "train" and not args.downsample_dev:
            continue
        keep = rng.permutation(len(s))[: max(1, int(len(s) * args.downsample))]
        corpus[k] = ([s[i] for i in keep], [y[i] for i in keep])
label_dict = [f"topic_{t}" for t in range(N_TOPICS)]


# ---------------------------------------------------------------- model
EMB_DIMS = {"glove": 100, "news-forward": 2048, "news-backward": 2048}
embedding_names = args.embeddings.split(",")


class TextClassifier(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.glove = torch.nn.Embedding(V, 100)
        self.glove.weight.requires_grad_(False)  # WordEmbeddings(fine_tune=False)
        self.fixed = {}
        for name in embedding_names:
            if name != "glove":  # a fixed contextual vector per token id
                g = torch.Generator().manual_seed(sum(map(ord, name)))
                self.fixed[name] = torch.randn(V, EMB_DIMS[name], generator=g) * 0.1
        d = sum(EMB_DIMS[n] for n in embedding_names)
        self.reproject = torch.nn.Linear(d, d if d <= 256 else 256)
        rnn = {"GRU": torch.nn.GRU, "LSTM": torch.nn.LSTM}[args.rnn_type]
        self.rnn = rnn(self.reproject.out_features, args.hidden_size, batch_first=True)
        self.dropout = torch.nn.Dropout(args.dropout)
        self.decoder = torch.nn.Linear(args.hidden_size, N_TOPICS)

    def embed(self, sents):
        """Token embeddings of every sentence, padded (B, T, D), and the lengths."""
        lengths = torch.tensor([len(s) for s in sents])
        ids = torch.zeros(len(sents), int(lengths.max()), dtype=torch.long)
        for i, s in enumerate(sents):
            ids[i, : len(s)] = torch.as_tensor(s)
        parts = [self.glove(ids) if n == "glove" else self.fixed[n][ids] for n in embedding_names]
        return torch.cat(parts, -1), lengths

    def forward(self, sents):
        x, lengths = self.embed(sents)
        out, _ = self.rnn(self.dropout(self.reproject(x)))
        last = out[torch.arange(len(sents)), lengths - 1]
        return self.decoder(self.dropout(last)), x, lengths


model = TextClassifier()
params = [p for p in model.parameters() if p.requires_grad]
if args.optimizer == "SGD":
    optimizer = torch.optim.SGD(params, lr=args.learning_rate)
else:
    optimizer = torch.optim.AdamW(params, lr=args.learning_rate, weight_decay=0.01)
stored = {}  # sentence id -> its token embeddings (embeddings_storage_mode cpu)


def store_embeddings(ids, x, lengths):
    if args.embeddings_storage_mode == "none":
        return
    for i, e, n in zip(ids, x.detach(), lengths.tolist(), strict=True):
        stored[i] = e[:n].clone()  # the sentence keeps its tokens' embeddings


def evaluate(split):
    sents, labels = corpus[split]
    model.eval()
    losses, preds = [], []
    with torch.no_grad():
        for s in range(0, len(sents), args.mini_batch_size):
            logits, x, lengths = model(sents[s : s + args.mini_batch_size])
            y = torch.tensor(labels[s : s + args.mini_batch_size])
            losses.append(F.cross_entropy(logits, y, reduction="sum").item())
            preds += logits.argmax(-1).tolist()
            store_embeddings([(split, s + i) for i in range(len(x))], x, lengths)
    model.train()
    y = np.array(labels)
    preds = np.array(preds)
    report = {"micro avg": {}, "macro avg": {}}
    report["micro avg"]["f1-score"] = float((preds == y).mean())
    f1s = []
    for c in range(N_TOPICS):
        tp = np.sum((preds == c) & (y == c))
        prec = tp / max(np.sum(preds == c), 1)
        rec = tp / max(np.sum(y == c), 1)
        f1s.append(0.0 if tp == 0 else 2 * prec * rec / (prec + rec))
    report["macro avg"]["f1-score"] = float(np.mean(f1s))
    report["accuracy"] = float((preds == y).mean())
    avg_type, metric = args.main_evaluation_metric.split(",")
    main_score = report[avg_type][metric]
    return sum(losses) / len(sents), main_score, report


DASH = "-" * 100
with mlflow.start_run():
    mlflow.log_params(
        {
            "learning_rate": args.learning_rate,
            "mini_batch_size": args.mini_batch_size,
            "max_epochs": args.max_epochs,
            "optimizer": args.optimizer,
            "scheduler": args.scheduler,
            "anneal_factor": args.anneal_factor,
            "patience": args.patience,
            "min_learning_rate": args.min_learning_rate,
            "embeddings_storage_mode": args.embeddings_storage_mode,
            "embeddings": args.embeddings,
            "main_evaluation_metric": args.main_evaluation_metric,
            "seed": args.seed,
        }
    )
    n_train = len(corpus["train"][0])
    log(DASH)
    log(
        f'Model: "TextClassifier(embeddings={args.embeddings}, rnn={args.rnn_type}, hidden_size={args.hidden_size})"'
    )
    log(DASH)
    log(
        f'Corpus: "Corpus: {n_train} train + {len(corpus["dev"][0])} dev + {len(corpus["test"][0])} test sentences"'
    )
    log(DASH)
    log("Parameters:")
    log(f' - learning_rate: "{args.learning_rate}"')
    log(f' - mini_batch_size: "{args.mini_batch_size}"')
    log(f' - patience: "{args.patience}"')
    log(f' - anneal_factor: "{args.anneal_factor}"')
    log(f' - max_epochs: "{args.max_epochs}"')
    log(' - shuffle: "True"')
    log(' - train_with_dev: "False"')
    log(DASH)
    log(f"Embeddings storage mode: {args.embeddings_storage_mode}")
    log(DASH)
    lr = args.learning_rate
    best, bad_epochs = -1.0, 0
    n_batches = -(-n_train // args.mini_batch_size)
    total_steps = n_batches * args.max_epochs
    step = 0
    for epoch in range(1, args.max_epochs + 1):
        log(DASH)
        if args.scheduler == "AnnealOnPlateau" and lr < args.min_learning_rate:
            log(DASH)
            log("learning rate too small - quitting training!")
            log(DASH)
            break
        perm = rng.permutation(n_train)
        sents, labels = corpus["train"]
        seen, loss_sum, t0 = 0, 0.0, time.time()
        modulo = max(1, n_batches // 10)
        for b in range(n_batches):
            if args.scheduler == "LinearSchedulerWithWarmup":
                warm = max(1, int(args.warmup_fraction * total_steps))
                f = (
                    step / warm
                    if step < warm
                    else max(0.0, (total_steps - step) / (total_steps - warm))
                )
                lr = args.learning_rate * f
            for g in optimizer.param_groups:
                g["lr"] = lr
            idx = perm[b * args.mini_batch_size : (b + 1) * args.mini_batch_size]
            logits, x, lengths = model([sents[i] for i in idx])
            y = torch.tensor([labels[i] for i in idx])
            loss = F.cross_entropy(logits, y, reduction="sum")
            optimizer.zero_grad()
            (loss / len(idx)).backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
            optimizer.step()
            store_embeddings([("train", int(i)) for i in idx], x, lengths)
            loss_sum += loss.item()
            seen += len(idx)
            step += 1
            if (b + 1) % modulo == 0:
                dt = time.time() - t0
                log(
                    f"epoch {epoch} - iter {b + 1}/{n_batches} - loss {loss_sum / seen:.8f} - "
                    f"time (sec): {dt:.2f} - samples/sec: {seen / dt:.2f} - lr: {lr:.6f}"
                )
        train_loss = loss_sum / seen
        log(DASH)
        log(f"EPOCH {epoch} done: loss {train_loss:.4f} - lr {lr:.6f}")
        mlflow.log_metric("train_loss", train_loss, step=epoch)
        mlflow.log_metric("learning_rate", lr, step=epoch)
        dev_loss, dev_score, _ = evaluate("dev")
        log(
            f"DEV : loss {dev_loss:.8f} - f1-score ({args.main_evaluation_metric.split(',')[0]})  {dev_score:.4f}"
        )
        mlflow.log_metric("dev_loss", dev_loss, step=epoch)
        mlflow.log_metric("dev_score", dev_score, step=epoch)
        if dev_score > best:
            best, bad_epochs = dev_score, 0
            log(f"BAD EPOCHS (no improvement): {bad_epochs}")
            log("saving best model")
        else:
            bad_epochs += 1
            if args.scheduler == "AnnealOnPlateau" and bad_epochs > args.patience:
                lr *= args.anneal_factor
                bad_epochs = 0
            log(f"BAD EPOCHS (no improvement): {bad_epochs}")
    log(DASH)
    log("Testing using best model ...")
    test_loss, test_score, report = evaluate("test")
    log("Results:")
    log(f"- F-score (micro) {report['micro avg']['f1-score']:.4f}")
    log(f"- F-score (macro) {report['macro avg']['f1-score']:.4f}")
    log(f"- Accuracy {report['accuracy']:.4f}")
    log(DASH)
