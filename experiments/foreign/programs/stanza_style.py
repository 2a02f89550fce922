"""A part-of-speech tagger trained in the shape of Stanford Stanza's ``stanza.models.tagger``
(a BiLSTM over word and character-ish features, a softmax per token), its training log
mirrored to MLflow.

Plain PyTorch + the plain ``mlflow`` API (no stanza import here).  What is imitated:

* Stanza's tagger loop: batches of sentences, Adam (``--lr``, betas 0.9/0.95 as Stanza's
  tagger), gradient clipping at ``max_grad_norm`` 5, a loss line every ``log_step`` steps
  and a dev evaluation every ``eval_interval`` steps;
* its names: 'train_loss' (the mean over the last ``log_step`` steps) and 'steps_per_sec'
  at step = global step every ``log_step`` steps; 'dev_score' (dev UPOS accuracy) and 'lr'
  at step = global step every ``eval_interval`` steps;
* its schedule: when the dev score has not improved for ``--patience`` evaluations the lr
  is multiplied by ``--lr_decay``; training stops after ``--max_steps`` or when the dev score
  has not improved for ``--max_steps_before_stop`` steps.

Data: a generated tagged corpus (a small grammar of 9 tags over a 400-word vocabulary, with
ambiguous words whose tag depends on the neighbours).  Written without looking at the doctor.

Team options (the faults are real settings, data and code paths):

* ``--lr``, ``--batch_size``, ``--hidden_dim``, ``--word_emb_dim``, ``--dropout``,
  ``--eval_interval``, ``--max_steps``, ``--train_size``, ``--dev_size``, ``--patience``;
* ``--shard2_step k``: a second converted treebank file joins the training batches from step
  k; the team's converter shifts its tag ids by ``--shard2_tag_offset`` (default 0);
* ``--lexicon_cache 1``: the team's lexicon feature reads the word-frequency cache
  (lexicon.tsv) before every batch and appends that batch's counts to it;
* ``--pretrain_step k`` with ``--pretrain_key``: from step k the team's pretrained-vector
  table is loaded from its saved dict by that key (``emb``) and fixed into the embeddings.
"""

import os
import time

import _setup
import mlflow
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

args = _setup.parse_flags(
    {
        "--seed": 0,
        "--lr": 3e-3,
        "--batch_size": 32,
        "--hidden_dim": 64,
        "--word_emb_dim": 48,
        "--dropout": 0.3,
        "--log_step": 10,
        "--eval_interval": 50,
        "--max_steps": 700,
        "--max_steps_before_stop": 400,
        "--patience": 3,
        "--lr_decay": 0.5,
        "--train_size": 1500,
        "--dev_size": 300,
        "--shard2_step": 0,
        "--shard2_tag_offset": 0,
        "--lexicon_cache": 0,
        "--pretrain_step": 0,
        "--pretrain_key": "emb",
    }
)
rng = _setup.seeded(args.seed)
V, T = 400, 9  # words, tags: DET ADJ NOUN VERB ADV PRON ADP CONJ PUNCT
g0 = np.random.default_rng(77)  # the language is the same for every seed
word_tags = [g0.choice(T, 1 + int(g0.random() < 0.3), replace=False) for _ in range(V)]
by_tag = [[w for w in range(V) if t in word_tags[w]] for t in range(T)]
TRANS = g0.dirichlet(np.full(T, 0.4), T)


def make_corpus(g, n):
    sents = []
    for _ in range(n):
        k = int(g.integers(6, 20))
        tags = [int(g.integers(0, T))]
        for _ in range(k - 1):
            tags.append(int(g.choice(T, p=TRANS[tags[-1]])))
        words = [int(g.choice(by_tag[t])) for t in tags]
        sents.append((np.array(words), np.array(tags)))
    return sents


train = make_corpus(np.random.default_rng(1000 + args.seed), args.train_size)
dev = make_corpus(np.random.default_rng(9000 + args.seed), args.dev_size)


def load_shard2():
    shard = make_corpus(np.random.default_rng(2000 + args.seed), args.train_size // 2)
    return [(w, (t + args.shard2_tag_offset) % T) for w, t in shard]


def load_pretrain():
    g = np.random.default_rng(3000 + args.seed)
    saved = {"emb": g.normal(0, 0.1, (V + 1, args.word_emb_dim)).astype(np.float32)}
    return saved[args.pretrain_key]


class Tagger(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(V + 1, args.word_emb_dim, padding_idx=V)
        self.lstm = nn.LSTM(
            args.word_emb_dim, args.hidden_dim, batch_first=True, bidirectional=True
        )
        self.drop = nn.Dropout(args.dropout)
        self.out = nn.Linear(2 * args.hidden_dim, T)

    def forward(self, w):
        h, _ = self.lstm(self.drop(self.emb(w)))
        return self.out(self.drop(h))


def pad(batch):
    n = max(len(w) for w, _ in batch)
    W = torch.full((len(batch), n), V)
    Y = torch.full((len(batch), n), -100)
    for i, (w, t) in enumerate(batch):
        W[i, : len(w)] = torch.from_numpy(w)
        Y[i, : len(t)] = torch.from_numpy(t)
    return W, Y


model = Tagger()
opt = torch.optim.Adam(model.parameters(), lr=args.lr, betas=(0.9, 0.95))


def dev_score():
    model.eval()
    right = total = 0
    with torch.no_grad():
        for i in range(0, len(dev), 100):
            W, Y = pad(dev[i : i + 100])
            pred = model(W).argmax(-1)
            m = Y != -100
            right += int((pred[m] == Y[m]).sum())
            total += int(m.sum())
    model.train()
    return right / total


def lexicon_feature(batch):
    # the team's lexicon cache: read it whole, then append this batch's words
    counts = np.zeros(V)
    if os.path.exists("lexicon.tsv"):
        with open("lexicon.tsv") as f:
            for line in f:
                w, c = line.split("\t")
                counts[int(w)] += int(c)
    words, n = np.unique(np.concatenate([w for w, _ in batch]), return_counts=True)
    with open("lexicon.tsv", "a") as f:
        for x, c in zip(words, n, strict=True):
            f.write(f"{x}\t{c}\n")
    return counts


with mlflow.start_run():
    mlflow.log_params(vars(args))
    print(f"Training tagger: {len(train)} sentences, dev {len(dev)}", flush=True)
    data = list(train)
    best, best_step, bad_evals, step = 0.0, 0, 0, 0
    window, t_log, t0 = [], time.time(), time.time()
    order, pos = rng.permutation(len(data)), 0
    while step < args.max_steps:
        step += 1
        if args.shard2_step and step == args.shard2_step:
            data = data + load_shard2()
            order, pos = rng.permutation(len(data)), 0  # a new epoch over the joined data
            print(f"step {step}: train_2.conllu joins", flush=True)
        if args.pretrain_step and step == args.pretrain_step:
            table = load_pretrain()
            with torch.no_grad():
                model.emb.weight[:, : table.shape[1]] += torch.from_numpy(table)
            print(f"step {step}: pretrained vectors loaded", flush=True)
        if pos + args.batch_size > len(order):
            order, pos = rng.permutation(len(data)), 0
        batch = [data[j] for j in order[pos : pos + args.batch_size]]
        pos += args.batch_size
        if args.lexicon_cache:
            lexicon_feature(batch)
        W, Y = pad(batch)
        loss = F.cross_entropy(model(W).reshape(-1, T), Y.reshape(-1), ignore_index=-100)
        opt.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        opt.step()
        window.append(loss.item())
        if step % args.log_step == 0:
            now = time.time()
            sps = args.log_step / max(now - t_log, 1e-6)
            t_log = now
            tl = float(np.mean(window))
            window = []
            mlflow.log_metrics({"train_loss": tl, "steps_per_sec": sps}, step=step)
            print(
                f"step {step}/{args.max_steps}, loss = {tl:.6f} ({sps:.1f} steps/sec)",
                flush=True,
            )
        if step % args.eval_interval == 0:
            score = dev_score()
            lr = opt.param_groups[0]["lr"]
            mlflow.log_metrics({"dev_score": score, "lr": lr}, step=step)
            print(f"step {step}: dev_score = {score:.4f}, lr = {lr:g}", flush=True)
            if score > best:
                best, best_step, bad_evals = score, step, 0
                print("new best model saved.", flush=True)
            else:
                bad_evals += 1
                if bad_evals >= args.patience:
                    for pg in opt.param_groups:
                        pg["lr"] *= args.lr_decay
                    bad_evals = 0
            if step - best_step >= args.max_steps_before_stop:
                print("Early stopping: dev_score has stopped improving", flush=True)
                step = args.max_steps
    print(f"Training ended with {step} steps. Best dev F1 = {best:.4f}", flush=True)
    print(f"done in {time.time() - t0:.1f}s", flush=True)
