"""A GraphSAGE node classifier trained with neighbour sampling the way DGL's
``examples/pytorch/graphsage/train_sampling.py`` trains one, its printed statistics mirrored
to MLflow by the team.

Plain PyTorch + numpy + the plain ``mlflow`` API (no DGL here).  What is imitated:

* ``MultiLayerNeighborSampler(fan_out)`` (``--fan_out '10,25'``: up to that many neighbours
  per node and layer, without replacement, sampled from the output layer down to the
  input), ``NodeDataLoader`` over ``train_nid`` with ``batch_size``, ``shuffle``,
  ``drop_last=False``; ``SAGEConv(..., 'mean')`` layers (``fc_self`` + ``fc_neigh``), ReLU and
  dropout between them, Adam (``--lr``, no weight decay), cross-entropy;
* the loop's statistics: ``iter_tput.append(len(seeds) / (time.time() - tic_step))`` with
  ``tic_step`` taken after the batch has been sampled (the sampler's time is not in it) and
  never reset, every ``log_every`` steps ``Epoch 00003 | Step 00010 | Loss 0.5123 | Train Acc
  0.8320 | Speed (samples/sec) 14523.1234 | GPU 0.0 MB`` with ``np.mean(iter_tput[3:])``; at
  the end of each epoch ``Epoch Time(s): 0.8123``; every ``eval_every`` epochs (not epoch 0)
  the layer-wise full-neighbour ``inference`` and ``Eval Acc`` / ``Test Acc``;
* the team mirrors every printed value: ``loss``, ``train_acc``, ``speed_samples_per_sec`` at
  step = the global step; ``epoch_time_s`` at step = the epoch (from 0); ``eval_acc``,
  ``test_acc`` at step = the epoch.  There is no validation loss.

Data: a generated citation graph (``--num_nodes`` papers in 8 fields, a stochastic block
model with preferential attachment inside each field, 32 word-count-like features drawn
per field, log-scaled and standardised by the team's ingest).  Written
without looking at the doctor.

Faults are real code paths and arguments: ``--lr`` typed a hundred times too large;
``--audit_log``: the team's collate function appends each batch's sampled node
ids to a JSON audit file by reading and rewriting it whole; ``--refresh_epoch``: the graph
is refreshed from the graph service's edge file, which names new papers whose feature rows
come with the next node-table export, alone or with ``--prefetch_thread``, the team's
feature prefetch thread (a bounded queue, no error passed on).
"""

import json
import os
import queue
import threading
import time

import _setup
import mlflow
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

args = _setup.parse_flags(
    {
        "--seed": 0,
        "--num_nodes": 6000,
        "--num_epochs": 20,
        "--num_hidden": 32,
        "--num_layers": 2,
        "--fan_out": "10,25",
        "--batch_size": 256,
        "--log_every": 5,
        "--eval_every": 2,
        "--lr": 0.003,
        "--dropout": 0.5,
        "--train_size": 2400,
        "--val_size": 800,
        "--audit_log": "",
        "--prefetch_thread": 0,
        "--refresh_epoch": 0,
    }
)
rng = _setup.seeded(args.seed)

# ----------------------------------------------------------------------------- the graph
N, C, D = args.num_nodes, 8, 32
g = np.random.default_rng(7 + args.seed)
labels = g.integers(0, C, N)
field_words = g.gamma(0.6, 1.0, (C, D))
feats = g.poisson(field_words[labels] * 0.5 + 0.3).astype(np.float32)  # word counts
feats = np.log1p(feats)
feats = (feats - feats.mean(0)) / (feats.std(0) + 1e-6)  # the ingest's normalisation
src, dst = [], []
deg_w = g.pareto(2.0, N) + 1
for v in range(N):
    k = int(g.integers(2, 9))
    same = g.uniform(size=k) < 0.75
    cand_same = np.flatnonzero(labels == labels[v])
    w_same = deg_w[cand_same] / deg_w[cand_same].sum()
    nb = np.where(same, g.choice(cand_same, k, p=w_same), g.integers(0, N, k))
    src += list(nb)
    dst += [v] * k
src, dst = np.array(src + dst), np.array(dst + src)  # undirected
order = np.argsort(dst, kind="stable")
src, dst = src[order], dst[order]
indptr = np.searchsorted(dst, np.arange(N + 1))
unlabeled = g.uniform(size=N) < 0.002  # papers no annotator has labelled yet
labels[unlabeled] = -1
perm_nodes = g.permutation(N)
labelled = perm_nodes[labels[perm_nodes] >= 0]
val_nid = labelled[: args.val_size]
test_nid = labelled[args.val_size : 2 * args.val_size]
train_nid = labelled[2 * args.val_size : 2 * args.val_size + args.train_size]
print(
    f"Graph(num_nodes={N}, num_edges={len(src)}) train {len(train_nid)} val {len(val_nid)} "
    f"test {len(test_nid)}",
    flush=True,
)
fan_out = [int(f) for f in args.fan_out.split(",")]
feats_t = torch.tensor(feats)
labels_t = torch.tensor(labels)


# ----------------------------------------------------------------------------- sampling
def sample_neighbors(nodes, fanout, indptr, src):
    """Up to ``fanout`` in-neighbours per node, without replacement (DGL's sample_neighbors)."""
    deg = indptr[nodes + 1] - indptr[nodes]
    seg = np.repeat(np.arange(len(nodes)), deg)
    pos = np.arange(deg.sum()) - np.repeat(np.cumsum(deg) - deg, deg)
    eid = np.repeat(indptr[nodes], deg) + pos
    key = rng.uniform(size=len(eid))
    o = np.lexsort((key, seg))
    rank = np.empty(len(o), dtype=np.int64)
    rank[o] = np.arange(len(o)) - np.repeat(np.cumsum(deg) - deg, deg)
    k = rank < fanout
    return seg[k], src[eid[k]]


def sample_blocks(seeds, indptr, src):
    """Blocks from the output layer down: (dst nodes, src nodes, edge dst idx, edge src idx)."""
    blocks, nodes = [], seeds
    for fanout in reversed(fan_out):
        e_dst, nb = sample_neighbors(nodes, fanout, indptr, src)
        uniq, inv = np.unique(np.concatenate([nodes, nb]), return_inverse=True)
        # DGL puts the dst nodes first among the src nodes
        src_nodes = np.concatenate([nodes, np.setdiff1d(uniq, nodes)])
        lookup = {int(v): i for i, v in enumerate(src_nodes)}
        e_src = np.array([lookup[int(v)] for v in nb], dtype=np.int64)
        blocks.insert(0, (len(nodes), torch.tensor(e_dst), torch.tensor(e_src)))
        nodes = src_nodes
    return nodes, seeds, blocks


def audit(input_nodes):
    """The team's collate hook: every batch's sampled nodes, appended to a JSON audit file."""
    log = []
    if os.path.exists(args.audit_log):
        with open(args.audit_log) as f:
            log = json.load(f)
    log.append([int(v) for v in input_nodes])
    with open(args.audit_log, "w") as f:
        json.dump(log, f)


# ----------------------------------------------------------------------------- model
class SAGEConv(nn.Module):
    def __init__(self, i, o):
        super().__init__()
        self.fc_self, self.fc_neigh = nn.Linear(i, o), nn.Linear(i, o, bias=False)

    def forward(self, h_src, n_dst, e_dst, e_src):
        agg = torch.zeros(n_dst, h_src.shape[1]).index_add_(0, e_dst, h_src[e_src])
        cnt = torch.zeros(n_dst).index_add_(0, e_dst, torch.ones(len(e_dst))).clamp(min=1)
        return self.fc_self(h_src[:n_dst]) + self.fc_neigh(agg / cnt[:, None])


class SAGE(nn.Module):
    def __init__(self):
        super().__init__()
        dims = [D] + [args.num_hidden] * (args.num_layers - 1) + [C]
        self.layers = nn.ModuleList(
            SAGEConv(a, b) for a, b in zip(dims[:-1], dims[1:], strict=True)
        )
        self.dropout = nn.Dropout(args.dropout)

    def forward(self, blocks, h):
        for i, (layer, (n_dst, e_dst, e_src)) in enumerate(zip(self.layers, blocks, strict=True)):
            h = layer(h, n_dst, e_dst, e_src)
            if i != len(self.layers) - 1:
                h = self.dropout(F.relu(h))
        return h

    @torch.no_grad()
    def inference(self):
        """Layer-wise inference over the full neighbourhood of every node."""
        e_dst, e_src = torch.tensor(dst), torch.tensor(src)
        h = feats_t
        for i, layer in enumerate(self.layers):
            h = layer(h, N, e_dst, e_src)
            if i != len(self.layers) - 1:
                h = F.relu(h)
        return h


model = SAGE()
optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)


def batches(epoch_perm, indptr_, src_):
    for s in range(0, len(epoch_perm), args.batch_size):
        input_nodes, seeds, blocks = sample_blocks(
            epoch_perm[s : s + args.batch_size], indptr_, src_
        )
        if args.audit_log:
            audit(input_nodes)
        yield input_nodes, seeds, blocks


def prefetching(gen):
    """The team's feature prefetch thread: batches (and their features) through a queue."""
    q = queue.Queue(maxsize=2)

    def work():
        for input_nodes, seeds, blocks in gen:
            q.put((input_nodes, seeds, blocks, feats_t[torch.tensor(input_nodes)]))
        q.put(None)

    threading.Thread(target=work, daemon=True).start()
    while (item := q.get()) is not None:
        yield item


def refreshed_graph():
    """The graph service's refreshed edge file: a day of new citations, new papers among them
    (their feature rows arrive with the next node-table export)."""
    r = np.random.default_rng(99)
    new = np.arange(N, N + 40)
    ns = np.concatenate([new, r.integers(0, N, 40)])
    nd = np.concatenate([r.integers(0, N, 40), new])
    s2, d2 = np.concatenate([src, ns]), np.concatenate([dst, nd])
    o = np.argsort(d2, kind="stable")
    s2, d2 = s2[o], d2[o]
    return np.searchsorted(d2, np.arange(N + 41)), s2


with mlflow.start_run():
    mlflow.log_params(vars(args))
    print(model, flush=True)
    iter_tput, global_step, avg = [], 0, 0.0
    cur_indptr, cur_src = indptr, src
    for epoch in range(args.num_epochs):
        if args.refresh_epoch and epoch == args.refresh_epoch:
            cur_indptr, cur_src = refreshed_graph()
            print(f"Epoch {epoch}: graph refreshed ({len(cur_src)} edges)", flush=True)
        tic = time.time()
        model.train()
        gen = batches(train_nid[rng.permutation(len(train_nid))], cur_indptr, cur_src)
        if args.prefetch_thread:
            it = prefetching(gen)
        else:
            it = ((a, b, c, feats_t[torch.tensor(a)]) for a, b, c in gen)
        for step, (_input_nodes, seeds, blocks, batch_inputs) in enumerate(it):
            tic_step = time.time()
            batch_labels = labels_t[torch.tensor(seeds)]
            batch_pred = model(blocks, batch_inputs)
            loss = F.cross_entropy(batch_pred, batch_labels)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            iter_tput.append(len(seeds) / (time.time() - tic_step))
            if step % args.log_every == 0:
                acc = (batch_pred.argmax(1) == batch_labels).float().mean().item()
                speed = float(np.mean(iter_tput[3:])) if len(iter_tput) > 3 else float("nan")
                print(
                    f"Epoch {epoch:05d} | Step {step:05d} | Loss {loss.item():.4f} | Train Acc "
                    f"{acc:.4f} | Speed (samples/sec) {speed:.4f} | GPU 0.0 MB",
                    flush=True,
                )
                logs = {"loss": loss.item(), "train_acc": acc}
                if len(iter_tput) > 3:
                    logs["speed_samples_per_sec"] = speed
                mlflow.log_metrics(logs, step=global_step)
            global_step += 1
        toc = time.time()
        print(f"Epoch Time(s): {toc - tic:.4f}", flush=True)
        mlflow.log_metrics({"epoch_time_s": toc - tic}, step=epoch)
        if epoch >= 5:
            avg += toc - tic
        if epoch % args.eval_every == 0 and epoch != 0:
            model.eval()
            pred = model.inference().argmax(1)
            eval_acc = (pred[val_nid] == labels_t[val_nid]).float().mean().item()
            test_acc = (pred[test_nid] == labels_t[test_nid]).float().mean().item()
            print(f"Eval Acc {eval_acc:.4f}", flush=True)
            print(f"Test Acc: {test_acc:.4f}", flush=True)
            mlflow.log_metrics({"eval_acc": eval_acc, "test_acc": test_acc}, step=epoch)
    print(f"Avg epoch time: {avg / max(1, epoch - 4)}", flush=True)
