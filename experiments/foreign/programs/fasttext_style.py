"""A supervised text classifier trained the way fastText's ``fasttext supervised`` trains one,
its progress line mirrored to MLflow by the team's job runner.

Plain numpy + the plain ``mlflow`` API (no fastText here): the team's numpy port of the
trainer (``FastText::train`` / ``trainThread`` / ``supervised``, one thread), run as they run
the CLI.  What is imitated:

* the input file format (one example a line, ``__label__<name>`` words then the text), the
  dictionary (``minCount``, word n-grams up to ``wordNgrams`` hashed into ``bucket`` rows with
  fastText's FNV-1a hash), ``Read 0M words`` / ``Number of words:`` / ``Number of labels:``;
* the model: the input matrix (``nwords + bucket`` x ``dim``, uniform in +-1/dim), a zero
  output matrix, the hidden vector the mean of the input rows, ``-loss softmax`` (``hs`` not
  ported) with fastText's ``std_log(p + 1e-5)``, the gradient divided by the number of inputs
  (``model == sup``), Hogwild SGD example by example in file order (fastText does not shuffle);
* the learning rate ``lr * (1 - progress)`` updated every ``lrUpdateRate`` tokens, with
  progress ``tokenCount / (epoch * ntokens)``;
* ``printInfo``'s line ``Progress: 45.3% words/sec/thread:  512345 lr:  0.054123 avg.loss:
  0.452311 ETA:   0h 0m`` where ``avg.loss`` is the thread's ``State::getLoss()`` (the mean loss
  of all examples since training began, never reset) and ``words/sec/thread`` is tokens since
  the start / seconds since the start / threads; the team's runner mirrors each line as
  ``mlflow.log_metrics({'progress', 'words_per_sec_per_thread', 'lr', 'avg_loss',
  'eta_seconds'}, step=tokenCount)`` (here every ``--log_every`` lr updates rather than every
  100 ms, so the steps repeat from run to run);
* ``DenseMatrix::dotRow``'s NaN check: ``Encountered NaN.`` ends training with an error;
* after training, ``fasttext test model.bin valid.txt 1``: ``N``, ``P@1``, ``R@1``, logged as
  ``test_N``, ``test_precision_at_1``, ``test_recall_at_1`` (step 0).

Data: a generated news-topic corpus (8 topics, a Zipf vocabulary of shared and topic words,
8-30 words a headline), written to ``train.txt`` / ``valid.txt`` in the run's folder by the
team's export and read back.  Written without looking at the doctor.

Faults are real code paths and arguments: ``--lr`` typed without its decimal point (6 for
0.6), or a hundred times too small; ``--export_sort_by_length``: the export sorts the texts by length
for its dedup pass but writes the label column in the original order; ``--resume_file``: the
runner's resumability hook reads the whole list of consumed line numbers, appends the new
ones and rewrites the file every ``--resume_every`` lr updates.
"""

import json
import os
import time

import _setup
import mlflow
import numpy as np

args = _setup.parse_flags(
    {
        "--seed": 0,
        "--lr": 0.5,
        "--dim": 30,
        "--epoch": 10,
        "--wordNgrams": ("word_ngrams", 2),
        "--bucket": 200000,
        "--minCount": ("min_count", 1),
        "--lrUpdateRate": ("lr_update_rate", 100),
        "--log_every": 50,
        "--train_docs": 8000,
        "--valid_docs": 1500,
        "--export_sort_by_length": 0,
        "--resume_file": "",
        "--resume_every": 25,
    }
)
rng = _setup.seeded(args.seed, torch=False)

# ----------------------------------------------------------------------------- the export
TOPICS = ["business", "sports", "science", "politics", "health", "travel", "music", "tech"]
K, V_SHARED, V_TOPIC = len(TOPICS), 1500, 250
shared = [f"w{i}" for i in range(V_SHARED)]
topic_words = [[f"{t[:3]}{i}" for i in range(V_TOPIC)] for t in TOPICS]
p_shared = 1 / np.arange(1, V_SHARED + 1) ** 1.05
p_shared /= p_shared.sum()
p_topic = 1 / np.arange(1, V_TOPIC + 1) ** 0.9
p_topic /= p_topic.sum()


def headline(g):
    y = int(g.integers(K))
    n = int(g.integers(8, 31))
    is_topic = g.uniform(size=n) < 0.28
    words = []
    for t in is_topic:
        if t:
            yy = y if g.uniform() < 0.8 else int(g.integers(K))  # words shared with a neighbour
            words.append(topic_words[yy][g.choice(V_TOPIC, p=p_topic)])
        else:
            words.append(shared[g.choice(V_SHARED, p=p_shared)])
    return TOPICS[y], " ".join(words)


def export(path, n, seed):
    g = np.random.default_rng(seed)
    rows = [headline(g) for _ in range(n)]
    labels = [r[0] for r in rows]
    texts = [r[1] for r in rows]
    if args.export_sort_by_length:  # the dedup pass works on texts sorted by length ...
        texts = sorted(texts, key=lambda s: (len(s), s))  # ... labels keep the file order
    lines = [f"__label__{lab} {txt}\n" for lab, txt in zip(labels, texts, strict=True)]
    with open(path, "w") as f:
        f.writelines(lines)


export("train.txt", args.train_docs, 10_000 + args.seed)
export("valid.txt", args.valid_docs, 20_000 + args.seed)


# ----------------------------------------------------------------------------- dictionary
def fnv1a(s):
    h = 2166136261
    for b in s.encode():
        h = ((h ^ b) * 16777619) & 0xFFFFFFFF
    return h


def read(path):
    out = []
    with open(path) as f:
        for line in f:
            toks = line.split()
            labels = [t[len("__label__") :] for t in toks if t.startswith("__label__")]
            words = [t for t in toks if not t.startswith("__label__")]
            out.append((labels, words))
    return out


train = read("train.txt")
counts, label_counts = {}, {}
for labels, words in train:
    for w in words:
        counts[w] = counts.get(w, 0) + 1
    for lab in labels:
        label_counts[lab] = label_counts.get(lab, 0) + 1
vocab = sorted((w for w, c in counts.items() if c >= args.min_count), key=lambda w: -counts[w])
word_id = {w: i for i, w in enumerate(vocab)}
label_names = sorted(label_counts, key=lambda w: -label_counts[w])
label_id = {w: i for i, w in enumerate(label_names)}
nwords, nlabels = len(vocab), len(label_names)
ntokens = sum(len(w) + len(lab) + 1 for lab, w in train)  # words + labels + EOS, as fastText
print(f"Read {ntokens / 1e6:.0f}M words", flush=True)
print(f"Number of words:  {nwords}", flush=True)
print(f"Number of labels: {nlabels}", flush=True)
word_hash = {w: fnv1a(w) for w in vocab}


def line_ids(words):
    ids = [word_id[w] for w in words if w in word_id]
    hashes = [word_hash[w] if w in word_hash else fnv1a(w) for w in words]
    if args.bucket:
        for i in range(len(hashes)):  # Dictionary::addWordNgrams
            h = hashes[i]
            for j in range(i + 1, min(len(hashes), i + args.word_ngrams)):
                h = (h * 116049371 + hashes[j]) & 0xFFFFFFFFFFFFFFFF
                ids.append(nwords + h % args.bucket)
    return np.array(ids, dtype=np.int64)


examples = [(line_ids(w), [label_id[lab] for lab in labs], len(w) + len(labs) + 1)
            for labs, w in train]  # fmt: skip

# ----------------------------------------------------------------------------- model
wi = rng.uniform(-1 / args.dim, 1 / args.dim, (nwords + args.bucket, args.dim)).astype(np.float32)
wo = np.zeros((nlabels, args.dim), dtype=np.float32)
resume_consumed = []


def forward(ids):
    hidden = wi[ids].mean(0)
    out = wo @ hidden
    if np.isnan(out).any():  # DenseMatrix::dotRow
        raise RuntimeError("Encountered NaN.")
    out = out - out.max()
    p = np.exp(out)
    return hidden, p / p.sum()


def resume_hook(line_numbers):
    """The runner's resumability hook: the consumed line numbers, rewritten in full."""
    if os.path.exists(args.resume_file):
        with open(args.resume_file) as f:
            done = json.load(f)
    else:
        done = []
    done.extend(line_numbers)
    with open(args.resume_file, "w") as f:
        json.dump(done, f)


def print_info(progress, loss, t, token_count):
    wst = token_count / t if t > 0 else 0.0
    eta = t * (1 - progress) / progress if progress > 0 else 2592000
    lr = args.lr * (1.0 - progress)
    print(
        f"\rProgress: {100 * progress:5.1f}% words/sec/thread: {int(wst):7d} lr: {lr:9.6f} "
        f"avg.loss: {loss:9.6f} ETA: {int(eta) // 3600:3d}h{(int(eta) % 3600) // 60:2d}m",
        end="",
        flush=True,
    )
    mlflow.log_metrics(
        {
            "progress": round(100 * progress, 1),
            "words_per_sec_per_thread": float(int(wst)),
            "lr": lr,
            "avg_loss": loss,
            "eta_seconds": float(int(eta)),
        },
        step=token_count,
    )


with mlflow.start_run():
    mlflow.log_params(vars(args))
    mlflow.log_params({"loss": "softmax", "thread": 1, "model": "supervised"})
    start = time.time()
    token_count, local_tokens, loss_sum, n_ex, updates = 0, 0, 0.0, 0, 0
    lr, pending = args.lr, []
    total = args.epoch * ntokens
    line = 0
    while token_count < total:
        ids, labels, nt = examples[line]
        progress = token_count / total
        if len(labels) and len(ids):
            hidden, p = forward(ids)
            target = labels[int(rng.integers(len(labels)))] if len(labels) > 1 else labels[0]
            loss_sum += -np.log(p[target] + 1e-5)
            n_ex += 1
            alpha = -lr * p
            alpha[target] += lr
            grad = alpha @ wo
            wo += np.outer(alpha, hidden).astype(np.float32)
            np.add.at(wi, ids, (grad / len(ids)).astype(np.float32))
        local_tokens += nt
        if args.resume_file:
            pending.append(line)
        line = (line + 1) % len(examples)
        if local_tokens > args.lr_update_rate:
            token_count += local_tokens
            local_tokens = 0
            lr = args.lr * (1.0 - token_count / total)
            updates += 1
            if args.resume_file and updates % args.resume_every == 0:
                resume_hook(pending)
                pending = []
            if updates % args.log_every == 0:
                print_info(token_count / total, loss_sum / max(n_ex, 1), time.time() - start,
                           token_count)  # fmt: skip
    print_info(1.0, loss_sum / max(n_ex, 1), time.time() - start, total)
    print(flush=True)

    # ------------------------------------------------------------------------- fasttext test
    valid = read("valid.txt")
    n, correct, gold = 0, 0, 0
    for labs, words in valid:
        ids = line_ids(words)
        gold += len(labs)
        if not len(ids):
            continue
        _, p = forward(ids)
        n += 1
        if label_names[int(np.argmax(p))] in labs:
            correct += 1
    print(f"N\t{n}\nP@1\t{correct / n:.3f}\nR@1\t{correct / gold:.3f}", flush=True)
    mlflow.log_metrics(
        {"test_N": n, "test_precision_at_1": correct / n, "test_recall_at_1": correct / gold},
        step=0,
    )
