"""A text classifier trained by spaCy's ``spacy train`` loop (a ``textcat`` with a bag-of-words
model), logged through spacy-loggers' ``spacy.MLflowLogger``.

Plain torch + the plain ``mlflow`` API (no spaCy here).  The task: which standard-library
package a chunk of Python source comes from (exclusive classes).  The flattened config is logged
as params (``training.optimizer.learn_rate``, ``training.batcher.size.start``, ...).  As in
spaCy's loop, the model is evaluated every ``training.eval_frequency`` steps (and at step 0);
only then does the logger write: ``score`` (the weighted score), ``loss_textcat`` (the textcat's
losses *summed* over the steps since the last evaluation, then reset), and the scorer's numeric
results flattened with dots (``cats_score``, ``cats_micro_f``, ``cats_macro_f``,
``cats_macro_auc``, ``cats_f_per_type.<label>.f``, ``speed`` in words/s on the dev set).
``step`` is the loop's step (from 0).  The textcat loss is spaCy's mean squared error of the
softmax scores.  Written without looking at the doctor.

Faults are real settings: ``--training.optimizer.learn_rate`` far too high or too low; a train
corpus streamed in order (``--training.max_epochs -1``) with one shard whose labels were
exported shifted by one (``--corpora.train.bad_shard``); a hashed-feature table far too long
for memory (``--components.textcat.model.length``; the model is allocated by
``nlp.initialize()``, after the logger has logged the config).
"""

import os
import re
import time
import zlib

import _setup
import mlflow
import numpy as np
import torch

args = _setup.parse_flags(
    {
        "--training.seed": ("seed", 0),
        "--training.optimizer.learn_rate": ("learn_rate", 0.001),
        "--training.optimizer.L2": ("l2", 0.01),
        "--training.optimizer.grad_clip": ("grad_clip", 1.0),
        "--training.dropout": ("dropout", 0.1),
        "--training.max_steps": ("max_steps", 400),
        "--training.max_epochs": ("max_epochs", 0),
        "--training.eval_frequency": ("eval_frequency", 25),
        "--training.batcher.size.start": ("size_start", 8),
        "--training.batcher.size.stop": ("size_stop", 48),
        "--training.batcher.size.compound": ("size_compound", 1.01),
        "--components.textcat.model.length": ("length", 32768),
        "--components.textcat.model.ngram_size": ("ngram_size", 1),
        "--corpora.dev.limit": ("dev_limit", 400),
        "--corpora.train.limit": ("train_limit", 0),
        "--corpora.train.bad_shard": ("bad_shard", -1),
        "--corpora.train.shards": ("shards", 8),
    }
)
rng = _setup.seeded(args.seed)
LABELS = ["email", "asyncio", "unittest", "xml", "multiprocessing", "tkinter"]
STDLIB = os.path.dirname(os.__file__)
TOKEN = re.compile(r"[A-Za-z_]+|\d+|[^\sA-Za-z_\d]")


def read_docs():
    docs = []
    for li, label in enumerate(LABELS):
        for root, _dirs, files in sorted(os.walk(os.path.join(STDLIB, label))):
            for name in sorted(files):
                if not name.endswith(".py") or "test" in root:
                    continue
                lines = [
                    ln for ln in open(os.path.join(root, name), errors="replace") if ln.strip()
                ]
                for i in range(0, len(lines) - 11, 12):
                    docs.append(("".join(lines[i : i + 12]), li))
    return docs


def featurize(text):  # hashed n-grams of the tokens, as the BOW model's HashEmbed
    toks = TOKEN.findall(text)
    feats = []
    for n in range(1, args.ngram_size + 1):
        for i in range(len(toks) - n + 1):
            feats.append(zlib.crc32(" ".join(toks[i : i + n]).encode()) % args.length)
    return feats, len(toks)


docs = read_docs()
order = rng.permutation(len(docs))
dev_idx = order[: args.dev_limit]
train_idx = order[args.dev_limit :]
if args.train_limit:
    train_idx = train_idx[: args.train_limit]
train = [(*featurize(docs[i][0]), docs[i][1]) for i in train_idx]
dev = [(*featurize(docs[i][0]), docs[i][1]) for i in dev_idx]
K = len(LABELS)
shard_of = np.arange(len(train)) * args.shards // max(1, len(train))
if args.bad_shard >= 0:  # the export of this shard wrote every doc's cats shifted by one label
    train = [
        (f, n, (y + 1) % K if shard_of[i] == args.bad_shard else y)
        for i, (f, n, y) in enumerate(train)
    ]

emb = head = opt = params = None


def initialize():  # nlp.initialize(): the textcat's model is allocated here
    global emb, head, opt, params
    emb = torch.nn.EmbeddingBag(args.length, 64, mode="sum")  # TextCatBOW's hashed features
    head = torch.nn.Linear(64, K)
    torch.nn.init.normal_(emb.weight, std=0.02)
    params = [*emb.parameters(), *head.parameters()]
    opt = torch.optim.AdamW(params, lr=args.learn_rate, betas=(0.9, 0.999), weight_decay=args.l2)


def scores_of(batch, train_mode):
    flat = torch.tensor([f for d in batch for f in d[0]] or [0], dtype=torch.long)
    offsets = torch.tensor(np.cumsum([0] + [len(d[0]) for d in batch[:-1]]), dtype=torch.long)
    h = emb(flat, offsets) / torch.tensor([[max(1, len(d[0])) ** 0.5] for d in batch])
    if train_mode and args.dropout:
        h = torch.nn.functional.dropout(h, args.dropout)
    return torch.softmax(head(h), dim=1)


def evaluate():
    t0 = time.time()
    with torch.no_grad():
        probs = torch.cat([scores_of(dev[i : i + 64], False) for i in range(0, len(dev), 64)])
    words = sum(d[1] for d in dev)
    speed = words / max(1e-9, time.time() - t0)
    p = probs.numpy()
    gold = np.array([d[2] for d in dev])
    pred = p.argmax(1)
    per_type, aucs = {}, []
    for k, label in enumerate(LABELS):
        tp = int(((pred == k) & (gold == k)).sum())
        fp = int(((pred == k) & (gold != k)).sum())
        fn = int(((pred != k) & (gold == k)).sum())
        prec = tp / (tp + fp) if tp + fp else 0.0
        rec = tp / (tp + fn) if tp + fn else 0.0
        f = 2 * prec * rec / (prec + rec) if prec + rec else 0.0
        per_type[label] = {"p": prec, "r": rec, "f": f}
        pos, neg = p[gold == k, k], p[gold != k, k]
        if len(pos) and len(neg):  # ROC AUC by ranks
            ranks = np.argsort(np.argsort(np.concatenate([pos, neg]))) + 1
            aucs.append(
                (ranks[: len(pos)].sum() - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg))
            )
    micro = float((pred == gold).mean())
    macro_f = float(np.mean([v["f"] for v in per_type.values()]))
    scores = {
        "cats_score": macro_f,
        "cats_micro_p": micro,
        "cats_micro_r": micro,
        "cats_micro_f": micro,
        "cats_macro_p": float(np.mean([v["p"] for v in per_type.values()])),
        "cats_macro_r": float(np.mean([v["r"] for v in per_type.values()])),
        "cats_macro_f": macro_f,
        "cats_macro_auc": float(np.mean(aucs)) if aucs else 0.0,
        "speed": speed,
    }
    for label, v in per_type.items():
        for key, val in v.items():
            scores[f"cats_f_per_type.{label}.{key}"] = val
    return macro_f, scores


def batches():  # spacy.batch_by_sequence.v1 with a compounding size
    size = float(args.size_start)
    epoch = 0
    while True:
        idx = np.arange(len(train))
        if args.max_epochs != -1:  # streamed in order when max_epochs is -1
            idx = rng.permutation(len(train))
        i = 0
        while i < len(idx):
            n = int(size)
            yield epoch, [train[j] for j in idx[i : i + n]]
            i += n
            size = min(args.size_stop, size * args.size_compound)
        epoch += 1
        if args.max_epochs > 0 and epoch >= args.max_epochs:
            return


with mlflow.start_run():
    mlflow.log_params(
        {
            "nlp.lang": "en",
            "nlp.pipeline": "['textcat']",
            "components.textcat.factory": "textcat",
            "components.textcat.threshold": 0.0,
            "components.textcat.model.exclusive_classes": True,
            "components.textcat.model.ngram_size": args.ngram_size,
            "components.textcat.model.length": args.length,
            "components.textcat.model.no_output_layer": False,
            "corpora.dev.limit": args.dev_limit,
            "corpora.train.limit": args.train_limit,
            "training.seed": args.seed,
            "training.dropout": args.dropout,
            "training.accumulate_gradient": 1,
            "training.patience": 1600,
            "training.max_epochs": args.max_epochs,
            "training.max_steps": args.max_steps,
            "training.eval_frequency": args.eval_frequency,
            "training.optimizer.learn_rate": args.learn_rate,
            "training.optimizer.L2": args.l2,
            "training.optimizer.grad_clip": args.grad_clip,
            "training.optimizer.beta1": 0.9,
            "training.optimizer.beta2": 0.999,
            "training.batcher.size.start": args.size_start,
            "training.batcher.size.stop": args.size_stop,
            "training.batcher.size.compound": args.size_compound,
            "training.score_weights.cats_score": 1.0,
        }
    )
    print(f"ℹ Pipeline: ['textcat'], {len(train)} train docs, {len(dev)} dev docs", flush=True)
    initialize()
    print("E    #       LOSS TEXTCAT  CATS_SCORE  SCORE ", flush=True)
    losses = {"textcat": 0.0}
    for step, (epoch, batch) in enumerate(batches()):
        probs = scores_of(batch, True)
        truth = torch.nn.functional.one_hot(torch.tensor([d[2] for d in batch]), K).float()
        d_scores = probs - truth
        mean_square_error = (d_scores**2).mean()
        opt.zero_grad()
        (0.5 * (d_scores**2).sum()).backward()
        if args.grad_clip:
            torch.nn.utils.clip_grad_norm_(params, args.grad_clip)
        opt.step()
        losses["textcat"] += mean_square_error.item()
        if step % args.eval_frequency == 0:
            score, other = evaluate()
            mlflow.log_metric("score", score, step=step)
            mlflow.log_metrics({f"loss_{k}": v for k, v in losses.items()}, step=step)
            mlflow.log_metrics(other, step=step)
            print(
                f"{epoch:<4} {step:<6} {losses['textcat']:>12.2f}  {other['cats_score'] * 100:>9.2f}"
                f"  {score:>5.2f}",
                flush=True,
            )
            losses = {"textcat": 0.0}
        if step >= args.max_steps:
            break
