"""A sentence-embedding model trained as sentence-transformers v3's ``SentenceTransformerTrainer``
trains one with ``MultipleNegativesRankingLoss`` and an ``EmbeddingSimilarityEvaluator``, its
logs going through transformers' ``MLflowCallback`` (``report_to=["mlflow"]``).

Plain PyTorch + numpy + the plain ``mlflow`` API (no sentence-transformers, no transformers
here).  What is imitated:

* the model: ``models.WordEmbeddings`` + ``models.Pooling(pooling_mode_mean_tokens=True)`` +
  optional ``models.Dense(activation=Tanh)`` + ``models.Normalize``;
  ``losses.MultipleNegativesRankingLoss(scale=20.0)`` (cross-entropy over the scaled cosine
  similarities of each anchor with every positive in the batch);
* ``SentenceTransformerTrainingArguments``: ``num_train_epochs``, ``per_device_train_batch_size``,
  ``learning_rate`` (AdamW, ``weight_decay``), ``warmup_ratio`` with the linear schedule,
  ``max_grad_norm``, ``logging_steps``, ``eval_strategy="steps"`` with ``eval_steps``,
  ``save_steps`` (``save_safetensors=True``), ``batch_sampler=NO_DUPLICATES``-free random batches;
* the Trainer's logs as the ``MLflowCallback`` writes them at ``step = state.global_step``:
  every ``logging_steps`` ``loss`` (the mean since the last log), ``grad_norm`` (before
  clipping), ``learning_rate``, ``epoch`` (fractional); every ``eval_steps`` ``eval_loss`` (the
  loss on the dev pairs), the evaluator's ``eval_sts-dev_pearson_cosine`` and
  ``eval_sts-dev_spearman_cosine``, ``eval_runtime``, ``eval_samples_per_second``,
  ``eval_steps_per_second``, ``epoch``; after training ``train_runtime``,
  ``train_samples_per_second``, ``train_steps_per_second``, ``total_flos``, ``train_loss``.

Data: a generated paraphrase corpus: ``n_topics`` topics over a 3,000-word vocabulary, each
sentence 8-16 words drawn from a sparse topic mixture; (anchor, positive) pairs share their
mixture; the STS dev set scores pairs 0-5 by their mixtures' cosine similarity.
Written without looking at the doctor.

Faults are real settings and data: ``--learning_rate``; ``--mined_pairs_epoch`` with
``--mined_offset`` (the team's mined pairs, appended to the training set at that epoch, their
positives joined to the anchors by row number after a filtering step that dropped rows);
``--train_size`` with ``--word_dim``; ``--asym_shared`` (the team's Asym query/document model
whose two heads share one embedding matrix, saved with ``save_safetensors``).
"""

import time

import _setup
import mlflow
import numpy as np
import torch

args = _setup.parse_flags(
    {
        "--seed": 42,
        "--train_size": 8000,
        "--dev_size": 1000,
        "--sts_size": 600,
        "--n_topics": 40,
        "--word_dim": 128,
        "--dense_dim": 0,  # 0: no Dense module
        "--num_train_epochs": 3,
        "--per_device_train_batch_size": 32,
        "--learning_rate": 5e-3,
        "--weight_decay": 0.01,
        "--warmup_ratio": 0.1,
        "--max_grad_norm": 1.0,
        "--scale": 20.0,
        "--logging_steps": 20,
        "--eval_steps": 100,
        "--save_steps": 500,
        "--mined_pairs_epoch": 0,  # 0: no mined pairs
        "--mined_pairs": 6000,
        "--mined_offset": 0,  # rows the join is shifted by
        "--asym_shared": 0,
    }
)
rng = _setup.seeded(args.seed)
VOCAB = 3000

# ----------------------------------------------------------------------------- data
drng = np.random.default_rng(7)  # the same language for every run
topic_words = [drng.choice(VOCAB, 120, replace=False) for _ in range(args.n_topics)]
topic_p = [drng.dirichlet(np.full(120, 0.3)) for _ in range(args.n_topics)]


def mixture(r):
    z = np.zeros(args.n_topics)
    k = r.choice(args.n_topics, r.integers(1, 3), replace=False)
    z[k] = r.dirichlet(np.ones(len(k)))
    return z


def sentence(z, r):
    n = r.integers(8, 17)
    ks = r.choice(args.n_topics, n, p=z)
    words = [
        r.choice(topic_words[k], p=topic_p[k]) if r.uniform() < 0.75 else r.integers(VOCAB)
        for k in ks
    ]
    return np.array(words, np.int64)


def pairs(n, r):
    zs = [mixture(r) for _ in range(n)]
    return [sentence(z, r) for z in zs], [sentence(z, r) for z in zs]


train_a, train_p = pairs(args.train_size, np.random.default_rng(args.seed + 1))
dev_a, dev_p = pairs(args.dev_size, np.random.default_rng(99))
sr = np.random.default_rng(100)
sts_1, sts_2, sts_score = [], [], []
for _ in range(args.sts_size):
    z1 = mixture(sr)
    z2 = z1 if sr.uniform() < 0.3 else (sr.uniform() * z1 + mixture(sr))
    z2 = z2 / z2.sum()
    sts_1.append(sentence(z1, sr))
    sts_2.append(sentence(z2, sr))
    sts_score.append(5 * float(z1 @ z2 / np.linalg.norm(z1) / np.linalg.norm(z2)))
sts_score = np.array(sts_score)


# ----------------------------------------------------------------------------- model
class SentenceTransformer(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.word_embeddings = torch.nn.EmbeddingBag(VOCAB, args.word_dim, mode="mean")
        torch.nn.init.normal_(self.word_embeddings.weight, 0, 0.5)
        self.dense = torch.nn.Linear(args.word_dim, args.dense_dim) if args.dense_dim else None
        if args.asym_shared:  # Asym({'query': [...], 'doc': [...]}) built from one module
            self.query_embeddings = self.word_embeddings

    def forward(self, sents):
        flat = torch.from_numpy(np.concatenate(sents))
        offsets = torch.from_numpy(np.cumsum([0] + [len(s) for s in sents[:-1]]))
        x = self.word_embeddings(flat, offsets)
        if self.dense is not None:
            x = torch.tanh(self.dense(x))
        return torch.nn.functional.normalize(x, dim=-1)


def mnrl(model, a, p):
    ea, ep = model(a), model(p)
    scores = ea @ ep.T * args.scale
    return torch.nn.functional.cross_entropy(scores, torch.arange(len(a)))


def rankdata(x):
    r = np.empty(len(x))
    r[np.argsort(x)] = np.arange(len(x))
    return r


def evaluate(model):
    t0 = time.time()
    model.eval()
    with torch.no_grad():
        bs, losses = args.per_device_train_batch_size, []
        for s in range(0, args.dev_size - bs + 1, bs):
            losses.append(mnrl(model, dev_a[s : s + bs], dev_p[s : s + bs]).item())
        cos = (model(sts_1) * model(sts_2)).sum(1).numpy()
    model.train()
    pear = float(np.corrcoef(cos, sts_score)[0, 1])
    spear = float(np.corrcoef(rankdata(cos), rankdata(sts_score))[0, 1])
    rt = time.time() - t0
    n_batches = max(1, len(losses))
    return {
        "eval_loss": float(np.mean(losses)),
        "eval_sts-dev_pearson_cosine": pear,
        "eval_sts-dev_spearman_cosine": spear,
        "eval_runtime": round(rt, 4),
        "eval_samples_per_second": round(args.dev_size / rt, 3),
        "eval_steps_per_second": round(n_batches / rt, 3),
    }


def save_checkpoint(model, step):
    from safetensors.torch import save_file

    save_file(model.state_dict(), f"checkpoint-{step}.safetensors")
    print(f"Saving model checkpoint to output/checkpoint-{step}", flush=True)


model = SentenceTransformer()
optim = torch.optim.AdamW(model.parameters(), lr=args.learning_rate, weight_decay=args.weight_decay)
bs = args.per_device_train_batch_size
steps_per_epoch = args.train_size // bs
if args.mined_pairs_epoch:
    steps_after = (args.train_size + args.mined_pairs) // bs
    max_steps = steps_per_epoch * (args.mined_pairs_epoch - 1) + steps_after * (
        args.num_train_epochs - args.mined_pairs_epoch + 1
    )
else:
    max_steps = steps_per_epoch * args.num_train_epochs
warmup = int(args.warmup_ratio * max_steps)


def lr_at(step):
    if step < warmup:
        return args.learning_rate * step / max(1, warmup)
    return args.learning_rate * max(0.0, (max_steps - step) / max(1, max_steps - warmup))


with mlflow.start_run():
    mlflow.log_params(vars(args))
    data_a, data_p = list(train_a), list(train_p)
    step, start, window, all_losses = 0, time.time(), [], []
    grad_norm = 0.0
    for epoch in range(args.num_train_epochs):
        if args.mined_pairs_epoch and epoch + 1 == args.mined_pairs_epoch:
            ma, mp = pairs(args.mined_pairs, np.random.default_rng(args.seed + 500))
            # the filter dropped rows from the positives' table; the join is by row number
            mp = mp[args.mined_offset :] + mp[: args.mined_offset]
            data_a, data_p = data_a + ma, data_p + mp
            print(f"Added {len(ma)} mined pairs: {len(data_a)} training pairs", flush=True)
        n = len(data_a)
        perm = rng.permutation(n)
        for s in range(0, n - bs + 1, bs):
            idx = perm[s : s + bs]
            for g in optim.param_groups:
                g["lr"] = lr_at(step)
            loss = mnrl(model, [data_a[i] for i in idx], [data_p[i] for i in idx])
            optim.zero_grad()
            loss.backward()
            grad_norm = float(
                torch.nn.utils.clip_grad_norm_(model.parameters(), args.max_grad_norm)
            )
            optim.step()
            step += 1
            window.append(loss.item())
            all_losses.append(loss.item())
            ep = round(epoch + (s + bs) / n, 4)
            if step % args.logging_steps == 0:
                logs = {
                    "loss": round(float(np.mean(window)), 4),
                    "grad_norm": grad_norm,
                    "learning_rate": lr_at(step),
                    "epoch": ep,
                }
                mlflow.log_metrics(logs, step=step)
                print(logs, flush=True)
                window = []
            if step % args.eval_steps == 0:
                ev = evaluate(model)
                ev["epoch"] = ep
                mlflow.log_metrics(ev, step=step)
                print(ev, flush=True)
            if step % args.save_steps == 0:
                save_checkpoint(model, step)
    rt = time.time() - start
    final = {
        "train_runtime": round(rt, 4),
        "train_samples_per_second": round(step * bs / rt, 3),
        "train_steps_per_second": round(step / rt, 3),
        "total_flos": 0.0,
        "train_loss": float(np.mean(all_losses)),
        "epoch": float(args.num_train_epochs),
    }
    mlflow.log_metrics(final, step=step)
    print(final, flush=True)
