"""A tiny ESM-style protein masked language model trained with fairseq's ``train.py``
(``--task masked_lm``, as ESM-1 was), its progress-bar stats mirrored to MLflow by the team.

Plain PyTorch + the plain ``mlflow`` API (no fairseq or esm import here).  What is imitated:

* ESM-1's model: token + learned position embeddings, pre-LayerNorm transformer layers
  (``encoder_layers``, ``encoder_embed_dim``, 4 heads, GELU), a tied LM head;
* the alphabet: 20 amino acids plus ``<cls>``, ``<pad>``, ``<eos>``, ``<mask>``; 15 % of the
  residues are chosen, of which 80 % become ``<mask>``, 10 % a random residue, 10 % stay;
* fairseq's ``masked_lm`` criterion (cross-entropy on the chosen positions, reported in
  base 2), Adam (betas 0.9, 0.98), ``clip_norm`` 1.0, ``lr_scheduler`` inverse_sqrt (or
  polynomial_decay) with ``warmup_updates``;
* the progress bar every ``log_interval`` updates: ``train_loss`` (bits), ``train_ppl``
  (2 ** loss), ``train_wps``, ``train_ups``, ``train_lr``, ``train_gnorm`` (before clipping),
  ``train_clip`` (percent of updates clipped); every ``validate_interval`` updates
  ``valid_loss``, ``valid_ppl`` and the team's ``valid_accuracy`` (percent of masked residues
  predicted); step = num_updates.

Data: generated protein-like sequences (a background composition with planted motifs that
recur at family-specific offsets).  Written without looking at the doctor.

Team options (the faults are real settings, data and code paths):

* ``--lr``, ``--max_sentences``, ``--max_update``, ``--encoder_layers``,
  ``--encoder_embed_dim``, ``--warmup_updates``, ``--lr_scheduler``, ``--valid_size``,
  ``--train_size``, ``--dropout``;
* ``--shard2_update k``: UniRef shard 2 joins at update k (half of each batch); the team's
  converter writes its targets aligned by ``--shard2_target_shift`` (default 0);
* ``--shard2_refresh k``: the team's shard-2 cache re-reads its index every k updates (under
  ``cache_lock``, a plain ``threading.Lock``);
* ``--dedup_check 1``: the team's redundancy filter appends every batch's sequences (JSON
  records with their composition) to ``seen.jsonl`` and re-reads and parses the whole file to
  count repeats before each update.
"""

import json
import math
import os
import tempfile
import threading
import time

import _setup
import mlflow
import torch
import torch.nn as nn
import torch.nn.functional as F

args = _setup.parse_flags(
    {
        "--seed": 0,
        "--lr": 2e-3,
        "--max_sentences": 32,
        "--max_update": 300,
        "--encoder_layers": 2,
        "--encoder_embed_dim": 64,
        "--warmup_updates": 40,
        "--lr_scheduler": "inverse_sqrt",
        "--log_interval": 10,
        "--validate_interval": 50,
        "--train_size": 4000,
        "--valid_size": 256,
        "--dropout": 0.1,
        "--seq_len": 48,
        "--shard2_update": 0,
        "--shard2_target_shift": 0,
        "--dedup_check": 0,
        "--shard2_refresh": 0,
    }
)
rng = _setup.seeded(args.seed)

AA = "ACDEFGHIKLMNPQRSTVWY"
CLS, PAD, EOS, MASK = 20, 21, 22, 23
V = 24
L = args.seq_len


# ----------------------------------------------------------------------------- data
def make_proteins(g, n, families):
    comp = torch.softmax(torch.randn(20, generator=g) * 0.8, 0)
    seqs = torch.multinomial(comp, n * L, replacement=True, generator=g).view(n, L)
    fam = torch.randint(0, len(families), (n,), generator=g)
    for i in range(n):
        motif, off = families[int(fam[i])]
        seqs[i, off : off + len(motif)] = motif
        seqs[i, off + 12 : off + 12 + len(motif)] = motif.flip(0)
        seqs[i, off + 24 : off + 24 + len(motif)] = motif
    return seqs


gf = torch.Generator().manual_seed(77)
families = [
    (torch.randint(0, 20, (8,), generator=gf), int(torch.randint(0, L - 32, (1,), generator=gf)))
    for _ in range(8)
]
train_seqs = make_proteins(
    torch.Generator().manual_seed(1000 + args.seed), args.train_size, families
)
valid_seqs = make_proteins(
    torch.Generator().manual_seed(9000 + args.seed), args.valid_size, families
)
shard2_seqs = make_proteins(torch.Generator().manual_seed(2000 + args.seed), 2000, families)


def add_special(s):
    b = s.size(0)
    return torch.cat([torch.full((b, 1), CLS), s, torch.full((b, 1), EOS)], 1)


def mask_batch(s, g=None):
    tok = add_special(s)
    sel = torch.rand(tok.shape, generator=g) < 0.15
    sel[:, 0] = sel[:, -1] = False
    r = torch.rand(tok.shape, generator=g)
    inp = tok.clone()
    inp[sel & (r < 0.8)] = MASK
    rnd = sel & (r >= 0.8) & (r < 0.9)
    inp[rnd] = torch.randint(0, 20, tok.shape, generator=g)[rnd]
    tgt = torch.where(sel, tok, torch.full_like(tok, PAD))
    return inp, tgt


cache_lock = threading.Lock()
shard2_cache = {"seqs": shard2_seqs, "refreshed": 0}


def refresh_shard2(u):
    """The team's cache refresh: re-reads shard 2's index under the cache lock."""
    with cache_lock:
        shard2_cache["refreshed"] = u


def shard2_batch(n, u=0):
    with cache_lock:
        if args.shard2_refresh and u and u % args.shard2_refresh == 0:
            refresh_shard2(u)
        pool = shard2_cache["seqs"]
    s = pool[torch.from_numpy(rng.integers(0, len(pool), n))]
    inp, tgt = mask_batch(s)
    if args.shard2_target_shift:
        tgt = torch.roll(tgt, args.shard2_target_shift, 1)
    return inp, tgt


# ----------------------------------------------------------------------------- model
class Layer(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.attn = nn.MultiheadAttention(d, 4, dropout=args.dropout, batch_first=True)
        self.fc = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d))
        self.drop = nn.Dropout(args.dropout)

    def forward(self, x):
        h = self.ln1(x)
        x = x + self.drop(self.attn(h, h, h, need_weights=False)[0])
        return x + self.drop(self.fc(self.ln2(x)))


class ProteinBert(nn.Module):
    def __init__(self):
        super().__init__()
        d = args.encoder_embed_dim
        self.embed = nn.Embedding(V, d, padding_idx=PAD)
        nn.init.normal_(self.embed.weight, mean=0.0, std=d**-0.5)
        self.pos = nn.Embedding(L + 2, d)
        self.layers = nn.ModuleList([Layer(d) for _ in range(args.encoder_layers)])
        self.ln = nn.LayerNorm(d)
        self.bias = nn.Parameter(torch.zeros(V))

    def forward(self, x):
        h = self.embed(x) + self.pos(torch.arange(x.size(1)))
        for layer in self.layers:
            h = layer(h)
        return self.ln(h) @ self.embed.weight.t() + self.bias


model = ProteinBert()
opt = torch.optim.Adam(model.parameters(), lr=args.lr, betas=(0.9, 0.98), eps=1e-6)


def lr_at(u):
    if u < args.warmup_updates:
        return args.lr * (u + 1) / args.warmup_updates
    if args.lr_scheduler == "polynomial_decay":
        return (
            args.lr
            * max(0.0, 1 - (u - args.warmup_updates) / (args.max_update - args.warmup_updates))
            + 1e-6
        )
    return args.lr * math.sqrt(args.warmup_updates / (u + 1))


def masked_loss(logits, tgt):
    return F.cross_entropy(logits.view(-1, V), tgt.view(-1), ignore_index=PAD)


workdir = tempfile.mkdtemp(prefix="esm-")


def dedup(s, u):
    path = os.path.join(workdir, "seen.jsonl")
    with open(path, "a") as f:
        for i, row in enumerate(s.tolist()):
            rec = {
                "id": f"u{u}_{i}",
                "seq": "".join(AA[t] for t in row),
                "comp": [row.count(a) / L for a in range(20)],
            }
            f.write(json.dumps(rec) + "\n")
    seen, dups = set(), 0
    with open(path) as f:
        for line in f:
            rec = json.loads(line)
            dups += rec["seq"] in seen
            seen.add(rec["seq"])
    return dups


vg = torch.Generator().manual_seed(4242)
valid_batches = [mask_batch(valid_seqs[i : i + 64], vg) for i in range(0, len(valid_seqs), 64)]

with mlflow.start_run():
    mlflow.log_params(vars(args))
    n_params = sum(p.numel() for p in model.parameters())
    print(f"ProteinBertModel: {args.encoder_layers} layers, {n_params} parameters", flush=True)
    print(f"train: {len(train_seqs)} sequences; valid: {len(valid_seqs)}", flush=True)
    acc = {"loss": 0.0, "n": 0, "gnorm": 0.0, "clip": 0, "tok": 0}
    t_log = time.time()
    for u in range(args.max_update):
        model.train()
        lr = lr_at(u)
        for grp in opt.param_groups:
            grp["lr"] = lr
        s = train_seqs[torch.from_numpy(rng.integers(0, len(train_seqs), args.max_sentences))]
        if args.dedup_check:
            dedup(s, u)
        inp, tgt = mask_batch(s)
        if args.shard2_update and u >= args.shard2_update:
            h = args.max_sentences // 2
            i2, t2 = shard2_batch(h, u)
            inp, tgt = torch.cat([inp[h:], i2]), torch.cat([tgt[h:], t2])
        loss = masked_loss(model(inp), tgt)
        opt.zero_grad()
        loss.backward()
        gn = float(torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0))
        opt.step()
        num_updates = u + 1
        acc["loss"] += loss.item() / math.log(2)
        acc["n"] += 1
        acc["gnorm"] += gn
        acc["clip"] += gn > 1.0
        acc["tok"] += inp.numel()
        if num_updates % args.log_interval == 0:
            dt = time.time() - t_log
            tl = acc["loss"] / acc["n"]
            m = {
                "train_loss": tl,
                "train_ppl": 2**tl,
                "train_wps": acc["tok"] / dt,
                "train_ups": acc["n"] / dt,
                "train_lr": lr,
                "train_gnorm": acc["gnorm"] / acc["n"],
                "train_clip": 100.0 * acc["clip"] / acc["n"],
            }
            mlflow.log_metrics(m, step=num_updates)
            print(
                f"| epoch 001:  {num_updates} / {args.max_update} loss={tl:.3f}, ppl={2**tl:.2f}, "
                f"wps={m['train_wps']:.0f}, ups={m['train_ups']:.2f}, lr={lr:.3g}, gnorm={m['train_gnorm']:.3f}, "
                f"clip={m['train_clip']:.0f}, num_updates={num_updates}",
                flush=True,
            )
            acc = {"loss": 0.0, "n": 0, "gnorm": 0.0, "clip": 0, "tok": 0}
            t_log = time.time()
        if num_updates % args.validate_interval == 0:
            model.eval()
            tot, n, correct = 0.0, 0, 0
            with torch.no_grad():
                for vi, vt in valid_batches:
                    lg = model(vi)
                    k = (vt != PAD).sum().item()
                    tot += masked_loss(lg, vt).item() * k
                    n += k
                    correct += ((lg.argmax(-1) == vt) & (vt != PAD)).sum().item()
            vl = tot / n / math.log(2)
            v = {"valid_loss": vl, "valid_ppl": 2**vl, "valid_accuracy": 100.0 * correct / n}
            mlflow.log_metrics(v, step=num_updates)
            print(
                f"| valid on 'valid' subset | loss {vl:.3f} | ppl {2**vl:.2f} | accuracy {v['valid_accuracy']:.2f} | num_updates {num_updates}",
                flush=True,
            )
            t_log = time.time()
