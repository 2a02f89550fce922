"""A knowledge-graph embedding model trained as PyKEEN's ``pipeline()`` trains one, with
``result_tracker='mlflow'`` (``MLFlowResultTracker``).

Plain PyTorch + numpy + the plain ``mlflow`` API (no PyKEEN here).  What is imitated:

* ``pipeline(model='TransE', training_loop='sLCWA', negative_sampler='basic', stopper='early',
  result_tracker='mlflow', ...)``: TransE scores ``-||h + r - t||_1`` with the entity
  embeddings L2-normalised at every forward pass (its ``entity_constrainer``), the sLCWA loop
  draws ``num_negs_per_pos`` corrupted triples per positive (head or tail replaced uniformly),
  ``MarginRankingLoss(margin=1.0)``; Adam;
* the training loop logs ``{'loss': epoch_loss}`` once an epoch with ``prefix='training'``,
  which the tracker flattens with ``.`` to ``training.loss`` at ``step=epoch`` (from 1);
  ``epoch_loss`` is the mean of the epoch's batch losses;
* the ``EarlyStopper`` (``frequency`` epochs, ``patience`` checks, ``relative_delta``, metric
  ``hits_at_10``) evaluates the validation triples with a filtered ``RankBasedEvaluator`` and
  logs ``metric_results.to_flat_dict()`` with ``prefix='validation'`` at ``step=epoch``:
  ``validation.both.realistic.hits_at_10``, ``...inverse_harmonic_mean_rank`` (the MRR),
  ``...arithmetic_mean_rank``, ``...hits_at_1``, ``...hits_at_3``, and the ``head``/``tail``
  sides' ``hits_at_10``; when it stops it restores the best epoch's weights;
* after training the pipeline evaluates the test triples and logs the same keys with
  ``prefix='testing'`` at ``step = the last epoch``.

Data: a generated graph: entities with a hidden position in a small space, relations as hidden
translations, each triple's tail one of the few entities nearest to ``head + relation``; the
team exports labelled triples (``e0042``, ``r3``) as ``train/valid/test`` TSV files and reads
them back with its ``load_triples`` helper.  Written without looking at the doctor.

Faults are real code paths: ``--lr``; ``--splits presplit``: the team reads the three
exported files itself, each through ``load_triples``, which builds an entity-to-id map from the
file it reads unless it is handed one; ``--num_entities`` (the team's fast filter for the
filtered evaluation is a dense float ``entities x relations x entities`` mask, built at the
first evaluation).
"""

import os
import time

import _setup
import mlflow
import numpy as np
import torch

args = _setup.parse_flags(
    {
        "--seed": 0,
        "--num_entities": 500,
        "--num_relations": 10,
        "--num_triples": 8000,
        "--embedding_dim": 48,
        "--num_epochs": 100,
        "--batch_size": 256,
        "--lr": 0.02,
        "--num_negs_per_pos": 4,
        "--margin": 1.0,
        "--frequency": 5,
        "--patience": 2,
        "--relative_delta": 0.01,
        "--eval_batch_size": 256,
        "--splits": "ratio",
    }
)
rng = _setup.seeded(args.seed)

# ----------------------------------------------------------------------------- data export
E, R = args.num_entities, args.num_relations
pos = rng.normal(0, 1, (E, 6))
trans = rng.normal(0, 1.2, (R, 6))
rows = set()
while len(rows) < args.num_triples:
    h, r = int(rng.integers(E)), int(rng.integers(R))
    d = np.abs(pos - (pos[h] + trans[r])).sum(1)
    d[h] = np.inf
    near = np.argpartition(d, 3)[:3]
    t = int(near[np.argsort(d[near])][int(rng.integers(3))])
    rows.add((h, r, t))
rows = sorted(rows)
rows = [rows[i] for i in rng.permutation(len(rows))]
n_va = n_te = max(50, len(rows) // 20)
parts = {"test": rows[:n_te], "valid": rows[n_te : n_te + n_va], "train": rows[n_te + n_va :]}
os.makedirs("export", exist_ok=True)
for name, part in parts.items():
    with open(f"export/{name}.tsv", "w") as f:
        f.writelines(f"e{h:04d}\tr{r}\te{t:04d}\n" for h, r, t in part)


def load_triples(path, entity_to_id=None, relation_to_id=None):
    """TriplesFactory.from_path: labels -> ids, a new sorted map unless one is given."""
    with open(path) as f:
        lab = [line.rstrip("\n").split("\t") for line in f]
    if entity_to_id is None:
        entity_to_id = {e: i for i, e in enumerate(sorted({x for h, _, t in lab for x in (h, t)}))}
    if relation_to_id is None:
        relation_to_id = {r: i for i, r in enumerate(sorted({r for _, r, _ in lab}))}
    keep = [(h, r, t) for h, r, t in lab if h in entity_to_id and t in entity_to_id]
    ids = [(entity_to_id[h], relation_to_id[r], entity_to_id[t]) for h, r, t in keep]
    return torch.tensor(ids, dtype=torch.long), entity_to_id, relation_to_id


if args.splits == "ratio":  # one factory from everything, then .split([.9, .05, .05])
    with open("export/all.tsv", "w") as f:
        for name in ("test", "valid", "train"):
            with open(f"export/{name}.tsv") as g:
                f.write(g.read())
    every, e2id, r2id = load_triples("export/all.tsv")
    training = every[n_te + n_va :]
    validation, testing = every[n_te : n_te + n_va], every[:n_te]
else:  # "presplit": the exported files, each read by the team's helper
    training, e2id, r2id = load_triples("export/train.tsv")
    validation, _, _ = load_triples("export/valid.tsv")
    testing, _, _ = load_triples("export/test.tsv", e2id, r2id)
num_entities, num_relations = len(e2id), len(r2id)
print(
    f"training: {len(training)} triples, {num_entities} entities, {num_relations} relations; "
    f"validation: {len(validation)}; testing: {len(testing)}",
    flush=True,
)


# ----------------------------------------------------------------------------- model
class TransE(torch.nn.Module):
    def __init__(self):
        super().__init__()
        bound = 6 / np.sqrt(args.embedding_dim)  # xavier_uniform_, as PyKEEN's TransE
        self.entity = torch.nn.Parameter(torch.empty(num_entities, args.embedding_dim))
        self.relation = torch.nn.Parameter(torch.empty(num_relations, args.embedding_dim))
        torch.nn.init.uniform_(self.entity, -bound, bound)
        torch.nn.init.uniform_(self.relation, -bound, bound)
        with torch.no_grad():
            self.relation.div_(self.relation.norm(dim=1, keepdim=True))

    def ent(self):
        return torch.nn.functional.normalize(self.entity, dim=1)

    def score_hrt(self, hrt):
        e = self.ent()
        return -(e[hrt[:, 0]] + self.relation[hrt[:, 1]] - e[hrt[:, 2]]).abs().sum(-1)

    def score_t(self, hr):  # (batch, entities): every entity as the tail
        e = self.ent()
        q = e[hr[:, 0]] + self.relation[hr[:, 1]]
        return -(q[:, None, :] - e[None, :, :]).abs().sum(-1)

    def score_h(self, rt):  # every entity as the head
        e = self.ent()
        q = self.relation[rt[:, 0]] - e[rt[:, 1]]
        return -(e[None, :, :] + q[:, None, :]).abs().sum(-1)


model = TransE()
optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
known = torch.cat([training, validation, testing])
filter_mask = None  # the team's fast filter: a dense (head, relation, tail) mask, built once


def evaluate(triples):
    """RankBasedEvaluator(filtered=True): realistic ranks on both sides."""
    global filter_mask
    if filter_mask is None:
        filter_mask = torch.zeros(num_entities, num_relations, num_entities)
        filter_mask[known[:, 0], known[:, 1], known[:, 2]] = 1.0
    model.eval()
    ranks = {"head": [], "tail": []}
    with torch.no_grad():
        for k in range(0, len(triples), args.eval_batch_size):
            b = triples[k : k + args.eval_batch_size]
            h, r, t = b[:, 0], b[:, 1], b[:, 2]
            for side, scores, true, others in (
                ("tail", model.score_t(b[:, :2]), t, filter_mask[h, r, :]),
                ("head", model.score_h(b[:, 1:]), h, filter_mask[:, r, t].T),
            ):
                true_s = scores.gather(1, true[:, None])
                scores = scores.masked_fill(others > 0, -np.inf)  # the true one included
                opt = (scores > true_s).sum(1) + 1
                pes = (scores >= true_s).sum(1) + 1
                ranks[side] += ((opt + pes) / 2).tolist()
    model.train()
    out = {}
    both = np.array(ranks["head"] + ranks["tail"])
    for side, rk in (
        ("both", both),
        ("head", np.array(ranks["head"])),
        ("tail", np.array(ranks["tail"])),
    ):
        out[f"{side}.realistic.hits_at_10"] = float((rk <= 10).mean())
        if side == "both":
            out[f"{side}.realistic.hits_at_1"] = float((rk <= 1).mean())
            out[f"{side}.realistic.hits_at_3"] = float((rk <= 3).mean())
            out[f"{side}.realistic.inverse_harmonic_mean_rank"] = float((1 / rk).mean())
            out[f"{side}.realistic.arithmetic_mean_rank"] = float(rk.mean())
    return out


def log_metrics(metrics, step, prefix):  # MLFlowResultTracker: flatten_dictionary(sep='.')
    mlflow.log_metrics({f"{prefix}.{k}": v for k, v in metrics.items()}, step=step)


with mlflow.start_run():
    mlflow.log_params(vars(args))
    best, best_epoch, bad_checks, best_state = -1.0, 0, 0, None
    t0 = time.time()
    for epoch in range(1, args.num_epochs + 1):
        perm = torch.from_numpy(rng.permutation(len(training)))
        losses = []
        for k in range(0, len(training), args.batch_size):
            pos_b = training[perm[k : k + args.batch_size]]
            neg = pos_b.repeat_interleave(args.num_negs_per_pos, 0)
            corrupt_head = torch.rand(len(neg)) < 0.5
            rand_e = torch.randint(num_entities, (len(neg),))
            neg[:, 0] = torch.where(corrupt_head, rand_e, neg[:, 0])
            neg[:, 2] = torch.where(~corrupt_head, rand_e, neg[:, 2])
            ps = model.score_hrt(pos_b).repeat_interleave(args.num_negs_per_pos)
            ns = model.score_hrt(neg)
            loss = torch.relu(args.margin - ps + ns).mean()  # MarginRankingLoss
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
        epoch_loss = float(np.mean(losses))
        log_metrics({"loss": epoch_loss}, epoch, "training")
        print(f"Training epochs on cpu: epoch {epoch}, loss={epoch_loss:.5f}", flush=True)
        if epoch % args.frequency == 0:
            res = evaluate(validation)
            log_metrics(res, epoch, "validation")
            h10 = res["both.realistic.hits_at_10"]
            print(
                f"Evaluating on cpu: epoch {epoch}, hits_at_10={h10:.4f}, "
                f"mrr={res['both.realistic.inverse_harmonic_mean_rank']:.4f}",
                flush=True,
            )
            if h10 > best * (1 + args.relative_delta):
                best, best_epoch, bad_checks = h10, epoch, 0
                best_state = {k: v.clone() for k, v in model.state_dict().items()}
            else:
                bad_checks += 1
                if bad_checks >= args.patience:
                    print(
                        f"Stopping early at epoch {epoch}. The best result hits_at_10={best:.4f} "
                        f"occurred at epoch {best_epoch}.",
                        flush=True,
                    )
                    model.load_state_dict(best_state)
                    break
    res = evaluate(testing)
    log_metrics(res, epoch, "testing")
    print(f"testing: {res} ({time.time() - t0:.1f}s)", flush=True)
