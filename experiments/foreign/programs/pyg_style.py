"""Semi-supervised node classification as PyTorch Geometric's ``examples/gcn.py`` and
``examples/gat.py`` run it on a Planetoid citation graph, its ``torch_geometric.logging.log``
calls mirrored into MLflow.

Plain PyTorch + numpy + the plain ``mlflow`` API (no torch_geometric here).  The example's
arguments are logged as params.  As the examples do: full-batch training, one optimizer step a
epoch, then an evaluation pass, and ``log(Epoch=epoch, Loss=loss, Train=train_acc,
Val=val_acc, Test=test_acc)`` once a epoch (epochs from 1).  ``Loss`` is the training
cross-entropy on the labelled nodes *before* the step; ``Train``/``Val``/``Test`` are
accuracies (fractions), and ``Test`` is the test accuracy *at the best validation accuracy so
far*, as the examples report it (it only changes when ``Val`` improves).  ``log`` prints
``Epoch: 001, Loss: 1.9459, Train: 0.2714, Val: 0.1620, Test: 0.1490`` and hands the same
keyword arguments to ``wandb.log``; here they go to ``mlflow.log_metrics`` at the W&B step
(the count of log calls, from 0), so ``Epoch`` is a metric too.  At the end the example prints
``Median time per epoch: 0.0123s``.  Written without looking at the doctor.

Data: a synthetic citation graph in Planetoid's layout, sized as ``--dataset`` Cora (2708
papers, 7 topics, 1433 words), CiteSeer (3327, 6, 3703) or PubMed (19717, 3, 500): binary
bag-of-words features, citations mostly within a topic (``--homophily``), heavy-tailed degrees;
the public split: ``--num_train_per_class`` labelled papers per class, 500 validation and 1000
test papers.  ``T.NormalizeFeatures()`` row-normalises the features (``--row_norm plain`` is a
team's own normalisation that divides by the row sum without PyG's ``clamp(min=1)``).  Models:
``gcn`` (two GCNConv layers over the symmetric-normalised adjacency with self-loops, dropout
0.5, ReLU), ``gat`` (two GATConv layers, ``--heads`` heads of ``--hidden_channels``, dropout
0.6, ELU), ``sage`` (two SAGEConv layers, mean aggregation).  Adam; as in gcn.py the weight
decay only applies to the first layer.  ``--attn_plot_every K`` (GAT): every K epochs the
evaluation pass takes the first layer's attention weights (``return_attention_weights``),
densifies them with ``to_dense_adj`` and saves the most-cited papers' block as a heat-map
artifact, a team's addition.

Faults are real settings or data: ``--lr`` typed orders of magnitude too high or too low; a
feature file where some papers have no words (``--empty_papers N``) read through ``--row_norm
plain`` (0/0); the attention heat-map, fine on Cora, turned on for a PubMed-sized graph (the
dense (N, N, heads) matrix is 12 GB).
"""

import os
import tempfile
import time

import _setup
import mlflow
import numpy as np
import torch
import torch.nn.functional as F

args = _setup.parse_flags(
    {
        "--dataset": "Cora",
        "--model": "gcn",
        "--hidden_channels": 16,
        "--heads": 8,
        "--lr": 0.01,
        "--weight_decay": 5e-4,
        "--dropout": -1.0,  # -1: the example's own (gcn/sage 0.5, gat 0.6)
        "--epochs": 200,
        "--num_train_per_class": 20,
        "--attn_plot_every": 0,
        "--homophily": 0.8,
        "--row_norm": "pyg",
        "--empty_papers": 0,
        "--seed": 12345,
    }
)
rng = _setup.seeded(args.seed)
dropout = args.dropout if args.dropout >= 0 else (0.6 if args.model == "gat" else 0.5)

# ---------------------------------------------------------------- data (fixed; seed 7)
data_rng = np.random.default_rng(7)
PLANETOID = {"Cora": (2708, 7, 1433), "CiteSeer": (3327, 6, 3703), "PubMed": (19717, 3, 500)}
N, C, D = PLANETOID[args.dataset]  # nodes, classes, features
y_np = data_rng.integers(0, C, N)
# topics: each class favours its own slice of the vocabulary
topic = np.full((C, D), 0.3)
for c in range(C):
    topic[c, data_rng.choice(D, D // C, replace=False)] += 4.0
topic /= topic.sum(1, keepdims=True)
n_words = data_rng.poisson(18, N) + 1
x_np = np.zeros((N, D), np.float32)
for i in range(N):
    mix = 0.35 * topic[y_np[i]] + 0.75 / D  # most words generic
    x_np[i, data_rng.choice(D, n_words[i], p=mix / mix.sum())] = 1.0
if args.empty_papers:  # papers whose abstract was never scraped: no words at all
    x_np[data_rng.choice(N, args.empty_papers, replace=False)] = 0.0
# citations: heavy-tailed out-degree, mostly to the same topic
by_class = [np.flatnonzero(y_np == c) for c in range(C)]
src, dst = [], []
for i in range(N):
    for _ in range(min(int(data_rng.pareto(2.0) * 2) + 1, 60)):
        same = data_rng.random() < args.homophily
        pool = by_class[y_np[i]] if same else by_class[data_rng.integers(C)]
        j = int(pool[data_rng.integers(len(pool))])
        if j != i:
            src += [i, j]
            dst += [j, i]
edge_index = torch.tensor(np.unique(np.stack([src, dst], 1), axis=0).T, dtype=torch.long)
# Planetoid public split: the first k of each class train, then 500 val, 1000 test
order = data_rng.permutation(N)
train_mask = torch.zeros(N, dtype=torch.bool)
for c in range(C):
    train_mask[[i for i in order if y_np[i] == c][: args.num_train_per_class]] = True
rest = [i for i in order if not train_mask[i]]
val_mask = torch.zeros(N, dtype=torch.bool)
val_mask[rest[:500]] = True
test_mask = torch.zeros(N, dtype=torch.bool)
test_mask[rest[500:1500]] = True
y = torch.from_numpy(y_np)
x = torch.from_numpy(x_np)
if args.row_norm == "pyg":  # T.NormalizeFeatures(): x / x.sum(-1).clamp(min=1)
    x = x / x.sum(-1, keepdim=True).clamp(min=1)
else:  # the team's own
    x = x / x.sum(-1, keepdim=True)
print(
    f"{args.dataset}(): {N} nodes, {edge_index.shape[1]} edges, {D} features, {C} classes; "
    f"train {int(train_mask.sum())}, val {int(val_mask.sum())}, test {int(test_mask.sum())}",
    flush=True,
)


# ---------------------------------------------------------------- model
def sparse_adj(src_i, dst_i, weight):
    """The message-passing operator as a sparse (dst, src) matrix: A @ h sums the messages
    h[src] * weight into dst (MessagePassing's scatter-add, as a SparseTensor adj_t does)."""
    idx = torch.stack([dst_i, src_i])
    return torch.sparse_coo_tensor(idx, weight, (N, N)).coalesce()


loops = torch.arange(N)
ei_loop = torch.cat([edge_index, torch.stack([loops, loops])], 1)
row, col = ei_loop
deg = torch.zeros(N).index_add_(0, col, torch.ones(col.numel()))
A_gcn = sparse_adj(row, col, deg[row].rsqrt() * deg[col].rsqrt())  # cached=True
indeg = torch.zeros(N).index_add_(0, edge_index[1], torch.ones(edge_index.shape[1]))
A_mean = sparse_adj(*edge_index, 1.0 / indeg.clamp(min=1)[edge_index[1]])


class GCNConv(torch.nn.Module):
    def __init__(self, cin, cout):
        super().__init__()
        self.lin = torch.nn.Linear(cin, cout, bias=False)
        torch.nn.init.xavier_uniform_(self.lin.weight)
        self.bias = torch.nn.Parameter(torch.zeros(cout))

    def forward(self, h):
        return A_gcn @ self.lin(h) + self.bias


class SAGEConv(torch.nn.Module):
    def __init__(self, cin, cout):
        super().__init__()
        self.lin_l = torch.nn.Linear(cin, cout)
        self.lin_r = torch.nn.Linear(cin, cout, bias=False)

    def forward(self, h):
        return self.lin_l(A_mean @ h) + self.lin_r(h)  # mean over in-neighbours


class GATConv(torch.nn.Module):
    def __init__(self, cin, cout, heads, concat=True):
        super().__init__()
        self.heads, self.cout, self.concat = heads, cout, concat
        self.lin = torch.nn.Linear(cin, heads * cout, bias=False)
        self.att_src = torch.nn.Parameter(torch.empty(1, heads, cout))
        self.att_dst = torch.nn.Parameter(torch.empty(1, heads, cout))
        self.bias = torch.nn.Parameter(torch.zeros(heads * cout if concat else cout))
        for p in (self.lin.weight, self.att_src, self.att_dst):
            torch.nn.init.xavier_uniform_(p)

    def forward(self, h):
        H, Co = self.heads, self.cout
        z = self.lin(h).view(N, H, Co)
        a_s, a_d = (z * self.att_src).sum(-1), (z * self.att_dst).sum(-1)  # (N, H)
        e = F.leaky_relu(a_s[row] + a_d[col], 0.2)  # (E, H): edge-wise softmax per target
        emax = torch.full((N, H), -1e9).scatter_reduce(0, col[:, None].expand(-1, H), e, "amax")
        w = torch.exp(e - emax[col])
        alpha = w / torch.zeros(N, H).index_add_(0, col, w)[col]
        self.last_alpha = alpha.detach()  # return_attention_weights=True
        alpha = F.dropout(alpha, dropout, self.training)
        out = torch.zeros(N, H, Co).index_add_(0, col, z[row] * alpha[..., None])
        out = out.reshape(N, H * Co) if self.concat else out.mean(1)
        return out + self.bias


class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        hid = args.hidden_channels
        if args.model == "gat":
            self.conv1 = GATConv(D, hid, args.heads)
            self.conv2 = GATConv(hid * args.heads, C, 1, concat=False)
            self.act = F.elu
        else:
            conv = GCNConv if args.model == "gcn" else SAGEConv
            self.conv1, self.conv2 = conv(D, hid), conv(hid, C)
            self.act = F.relu

    def forward(self, h):
        h = F.dropout(h, dropout, self.training)
        h = self.act(self.conv1(h))
        h = F.dropout(h, dropout, self.training)
        return self.conv2(h)


model = Net()
optimizer = torch.optim.Adam(
    [
        dict(params=model.conv1.parameters(), weight_decay=args.weight_decay),
        dict(params=model.conv2.parameters(), weight_decay=0),
    ],
    lr=args.lr,
)  # Only perform weight-decay on first convolution.


def train():
    model.train()
    optimizer.zero_grad()
    out = model(x)
    loss = F.cross_entropy(out[train_mask], y[train_mask])
    loss.backward()
    optimizer.step()
    return float(loss)


def to_dense_adj(ei, edge_attr):
    """torch_geometric.utils.to_dense_adj for one graph: (1, N, N, *edge_attr.shape[1:])."""
    adj = torch.zeros((1, N, N) + tuple(edge_attr.shape[1:]))
    adj[0, ei[0], ei[1]] = edge_attr
    return adj


@torch.no_grad()
def test(epoch):
    model.eval()
    pred = model(x).argmax(dim=-1)
    if args.model == "gat" and args.attn_plot_every and epoch % args.attn_plot_every == 0:
        # the team's attention heat-map: the first layer's weights as a dense (N, N, heads)
        # matrix, the 100 most-cited papers' block saved as the figure's data
        att = to_dense_adj(ei_loop, model.conv1.last_alpha)[0]
        top = torch.from_numpy(np.argsort(-deg.numpy())[:100].copy())
        path = os.path.join(tempfile.gettempdir(), f"attention_epoch{epoch:03d}.npy")
        np.save(path, att[top][:, top].mean(-1).numpy())
        mlflow.log_artifact(path, "attention")
    return [int((pred[m] == y[m]).sum()) / int(m.sum()) for m in (train_mask, val_mask, test_mask)]


_step = 0


def log(**kwargs):
    """torch_geometric.logging.log: print the line, then the W&B call (here MLflow's)."""
    global _step
    print(
        ", ".join(
            f"{k}: {v:.4f}" if isinstance(v, float) else f"{k}: {v:03d}" for k, v in kwargs.items()
        ),
        flush=True,
    )
    mlflow.log_metrics({k: float(v) for k, v in kwargs.items()}, step=_step)
    _step += 1


with mlflow.start_run():
    mlflow.log_params(vars(args))
    best_val_acc = test_acc = 0
    times = []
    for epoch in range(1, args.epochs + 1):
        start = time.time()
        loss = train()
        train_acc, val_acc, tmp_test_acc = test(epoch)
        if val_acc > best_val_acc:
            best_val_acc = val_acc
            test_acc = tmp_test_acc
        log(Epoch=epoch, Loss=loss, Train=train_acc, Val=val_acc, Test=test_acc)
        times.append(time.time() - start)
    print(f"Median time per epoch: {torch.tensor(times).median():.4f}s", flush=True)
