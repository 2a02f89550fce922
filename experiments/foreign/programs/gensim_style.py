"""A tiny gensim-style Word2Vec (skip-gram, negative sampling) trained with an epoch-end
``CallbackAny2Vec`` that mirrors what gensim users log to MLflow.

Plain PyTorch + the plain ``mlflow`` API (no gensim import here).  What is imitated:

* ``Word2Vec(sg=1, negative=..., window=..., vector_size=..., alpha=..., min_alpha=...,
  sample=..., epochs=..., compute_loss=True)``: input and output embeddings, a dynamic window
  (a reduced window drawn per centre word), negatives drawn from the unigram distribution to
  the power 0.75, frequent-word down-sampling with ``sample``;
* plain SGD whose rate decays linearly from ``alpha`` to ``min_alpha`` over all the words of
  all epochs, as gensim's job producer does; the loss is the summed negative log-sigmoid;
* the callback at each epoch end: ``training_loss`` = ``model.get_latest_training_loss()``,
  which is CUMULATIVE within the ``train()`` call (as gensim reports it), ``epoch_loss`` = its
  difference to the previous epoch, ``alpha`` (the rate reached at the epoch's end),
  ``words_per_sec``, ``effective_words`` (words left after down-sampling) and
  ``similarity_spearman`` (Spearman's rho of cosine similarity against graded gold scores on
  a held-out word-pair set, as ``evaluate_word_pairs`` reports); step = epoch (from 1).

Data: generated topic-structured sentences (topics on a ring, so topic distance grades the
gold similarity).  Written without looking at the doctor.

Team options (the faults are real settings, data and code paths):

* ``--alpha``, ``--min_alpha``, ``--vector_size``, ``--window``, ``--negative``, ``--sample``,
  ``--epochs``, ``--batch_words``, ``--n_sentences``, ``--n_pairs``;
* ``--extra_corpus_epoch k``: a second corpus file (JSONL records) joins from epoch k; the
  team's reader takes each record's tokens from ``--extra_key`` (the file holds 'tokens');
* ``--track_neighbours 1``: the team's neighbour-drift callback keeps, after every job, the
  full vocabulary-by-vocabulary cosine matrix (float64) and its neighbour ranking for a plot
  at the end;
* ``--journal 1``: the team's corpus iterator appends every job's sentences to a journal file
  and re-reads the whole journal (sentences seen and their word counts) before each job to skip
  sentences it has seen.
"""

import json
import os
import tempfile
import time

import _setup
import mlflow
import numpy as np
import torch
import torch.nn.functional as F
from scipy.stats import spearmanr

args = _setup.parse_flags(
    {
        "--seed": 0,
        "--alpha": 0.025,
        "--min_alpha": 0.0001,
        "--vector_size": 32,
        "--window": 4,
        "--negative": 5,
        "--sample": 1e-3,
        "--epochs": 15,
        "--batch_words": 2000,
        "--n_sentences": 3000,
        "--n_pairs": 200,
        "--extra_corpus_epoch": 0,
        "--extra_key": "tokens",
        "--track_neighbours": 0,
        "--journal": 0,
    }
)
rng = _setup.seeded(args.seed)

N_TOPICS, PER_TOPIC, N_FUNC = 12, 60, 20
V = N_TOPICS * PER_TOPIC + N_FUNC


# ----------------------------------------------------------------------------- data
def make_sentences(g, n):
    out = []
    for _ in range(n):
        t = g.integers(0, N_TOPICS)
        length = g.integers(8, 14)
        sent = []
        for _ in range(length):
            r = g.random()
            if r < 0.25:
                sent.append(int(N_TOPICS * PER_TOPIC + g.zipf(1.6) % N_FUNC))
            elif r < 0.4:
                t2 = (t + g.choice([-1, 1])) % N_TOPICS
                sent.append(int(t2 * PER_TOPIC + g.integers(0, PER_TOPIC)))
            else:
                sent.append(int(t * PER_TOPIC + min(g.zipf(1.3) - 1, PER_TOPIC - 1)))
        out.append(sent)
    return out


corpus = make_sentences(np.random.default_rng(1000 + args.seed), args.n_sentences)
workdir = tempfile.mkdtemp(prefix="w2v-")
extra_path = os.path.join(workdir, "corpus2.jsonl")
with open(extra_path, "w") as f:
    for s in make_sentences(np.random.default_rng(2000 + args.seed), args.n_sentences // 2):
        f.write(json.dumps({"id": len(s), "tokens": [f"w{w}" for w in s]}) + "\n")


def load_extra(path):
    with open(path) as f:
        return [[int(w[1:]) for w in json.loads(line)[args.extra_key]] for line in f]


def gold_pairs(g, n):
    pairs, gold = [], []
    for _ in range(n):
        a, b = g.integers(0, N_TOPICS * PER_TOPIC, 2)
        ta, tb = a // PER_TOPIC, b // PER_TOPIC
        d = min(abs(ta - tb), N_TOPICS - abs(ta - tb))
        pairs.append((a, b))
        gold.append(10.0 - 2.0 * d + g.normal(0, 0.5))
    return torch.tensor(pairs), np.array(gold)


pairs, gold = gold_pairs(np.random.default_rng(7000 + args.seed), args.n_pairs)

# ----------------------------------------------------------------------------- model
d = args.vector_size
w_in = ((torch.rand(V, d) - 0.5) / d).requires_grad_()
w_out = torch.zeros(V, d, requires_grad=True)


def build_vocab(sents):
    counts = np.bincount(np.concatenate([np.array(s) for s in sents]), minlength=V).astype(float)
    total = counts.sum()
    thr = args.sample * total
    keep = (
        np.ones(V)
        if args.sample <= 0
        else np.minimum(1.0, (np.sqrt(counts / thr) + 1) * thr / np.maximum(counts, 1))
    )
    noise = counts**0.75
    return keep, torch.tensor(noise / noise.sum(), dtype=torch.float)


keep_prob, noise_dist = build_vocab(corpus)


def job_pairs(sents):
    cs, xs, n_eff = [], [], 0
    for s in sents:
        s = [w for w in s if rng.random() < keep_prob[w]]
        n_eff += len(s)
        for i, w in enumerate(s):
            b = rng.integers(0, args.window) if args.window > 1 else 0
            for j in range(max(0, i - args.window + b), min(len(s), i + args.window - b + 1)):
                if j != i:
                    cs.append(w)
                    xs.append(s[j])
    return torch.tensor(cs, dtype=torch.long), torch.tensor(xs, dtype=torch.long), n_eff


def train_job(c, x, lr):
    negs = torch.multinomial(noise_dist, len(c) * args.negative, replacement=True).view(len(c), -1)
    v = w_in[c]
    u = w_out[torch.cat([x[:, None], negs], 1)]
    s = torch.einsum("bd,bkd->bk", v, u)
    loss = -(F.logsigmoid(s[:, 0]).sum() + F.logsigmoid(-s[:, 1:]).sum())
    if w_in.grad is not None:
        w_in.grad = None
        w_out.grad = None
    loss.backward()
    with torch.no_grad():
        w_in.sub_(lr * w_in.grad)
        w_out.sub_(lr * w_out.grad)
    return loss.item()


def similarity_spearman():
    with torch.no_grad():
        e = F.normalize(w_in, dim=1)
        cos = (e[pairs[:, 0]] * e[pairs[:, 1]]).sum(1).numpy()
    return float(spearmanr(cos, gold).correlation)


def jobs_of(sents):
    job, n = [], 0
    for s in sents:
        job.append(s)
        n += len(s)
        if n >= args.batch_words:
            yield job
            job, n = [], 0
    if job:
        yield job


journal_path = os.path.join(workdir, "journal.txt")


def journal_skip(job):
    with open(journal_path, "a") as f:
        for s in job:
            f.write(" ".join(f"w{w}" for w in s) + "\n")
    seen, counts = set(), {}
    with open(journal_path) as f:
        for line in f:
            seen.add(line.strip())
            for w in line.split():
                counts[w] = counts.get(w, 0) + 1
    return seen, counts


neighbours = []
with mlflow.start_run():
    mlflow.log_params(vars(args))
    print(
        f"collected {V} word types from a corpus of {sum(map(len, corpus))} raw words and {len(corpus)} sentences",
        flush=True,
    )
    print(
        f"Word2Vec<vocab={V}, vector_size={d}, alpha={args.alpha}>: training on {args.epochs} epochs",
        flush=True,
    )
    sents = list(corpus)
    total_words = sum(map(len, sents)) * args.epochs
    done_words, cum_loss, prev_cum = 0, 0.0, 0.0
    for epoch in range(1, args.epochs + 1):
        if args.extra_corpus_epoch and epoch == args.extra_corpus_epoch:
            extra = load_extra(extra_path)
            print(f"epoch {epoch}: corpus2.jsonl joins with {len(extra)} sentences", flush=True)
            sents = sents + extra
            total_words = done_words + sum(map(len, sents)) * (args.epochs - epoch + 1)
        order = rng.permutation(len(sents))
        t0, eff = time.time(), 0
        lr = args.alpha
        for job in jobs_of([sents[i] for i in order]):
            if args.journal:
                journal_skip(job)
            lr = args.alpha - (args.alpha - args.min_alpha) * done_words / total_words
            c, x, n_eff = job_pairs(job)
            eff += n_eff
            done_words += sum(map(len, job))
            if len(c):
                cum_loss += train_job(c, x, lr)
            if args.track_neighbours:
                with torch.no_grad():
                    e = F.normalize(w_in, dim=1)
                    sims = (e @ e.t()).double()
                    neighbours.append((sims, sims.argsort(1, descending=True)))
        dt = time.time() - t0
        rho = similarity_spearman()
        m = {
            "training_loss": cum_loss,
            "epoch_loss": cum_loss - prev_cum,
            "alpha": lr,
            "words_per_sec": eff / dt,
            "effective_words": eff,
            "similarity_spearman": rho,
        }
        prev_cum = cum_loss
        mlflow.log_metrics(m, step=epoch)
        print(
            f"EPOCH {epoch}: training on {sum(map(len, sents))} raw words ({eff} effective words) took {dt:.1f}s, "
            f"{m['words_per_sec']:.0f} effective words/s; loss {m['epoch_loss']:.1f}; alpha {m['alpha']:.5f}; spearman {rho:.4f}",
            flush=True,
        )
    print(f"training on {done_words} raw words done", flush=True)
