"""A small transformer translation model trained by Sockeye 3's ``sockeye-train`` on
prepared data (``--prepared-data``, shards), its checkpoint metrics written by Sockeye's
TensorBoard logger and mirrored into MLflow.

Plain torch + the plain ``mlflow`` API (no Sockeye here).  The "language pair" is generated:
source sentences of 4-14 tokens over a 40-word vocabulary, the target the source read
through a fixed word mapping, with 8 % of the target tokens replaced at random
(noisy references; the best perplexity is ~1.6).  12000 training pairs prepared into 3 shards
of 4000 (``--num-shards``); 400 validation pairs.  The model is a 2+2-layer transformer
(``--num-embed 64``, 4 heads, feed-forward 128) with sentence batches (``--batch-type
sentence``); Adam, ``--gradient-clipping-type none`` as Sockeye's default.  The arguments are
logged as params.

As Sockeye writes them: every 10 updates a Speedometer line (``Epoch[e] Batch [b] Speed: ...
samples/sec ... tokens/sec ... updates/sec perplexity=...``, the perplexity since the last
line); every ``--checkpoint-interval`` updates a checkpoint: ``Checkpoint [n] Updates=...
Epoch=... Samples=... Time-cost=... Updates/sec=...``, ``Train-perplexity`` (over the updates
since the previous checkpoint), ``Validation-perplexity``, the checkpoint decoder's
``bleu``/``chrf`` on the first ``--decode-and-evaluate`` validation sentences, and then the
checkpoint's metrics dict in one ``log_metrics`` call with step = the checkpoint number (from
1): ``perplexity-train``, ``perplexity-val``, ``bleu-val``, ``chrf-val``,
``decode-walltime-val`` (seconds), ``learning-rate``, ``epoch`` (from 0), ``time-elapsed``
(seconds since training began: a cumulative clock), ``converged`` and ``diverged`` (0/1).
The learning rate follows ``--learning-rate-scheduler-type`` (``plateau-reduce``: times
``--learning-rate-reduce-factor`` after ``--learning-rate-reduce-num-not-improved``
checkpoints without a better validation perplexity; ``inv-sqrt-decay`` after
``--learning-rate-warmup`` updates).  Training stops at ``--max-updates``, after
``--max-num-checkpoint-not-improved`` checkpoints without improvement, or when the
validation perplexity is not finite ("diverged").  Shards are visited in a random order every
epoch, each shuffled.  Written without looking at the doctor.

Faults are real settings: a learning rate far too high; one prepared shard whose source and
target lines are misaligned (``--misaligned-shard``: the target of line i is the target of
line i+1); training read from the raw gzip'd text from some checkpoint on
(``--raw-data-from-checkpoint``: every sentence re-opens its shard's file, scans it to the line
and re-tokenises); a
checkpoint decoder with ``--beam-size`` far too large for the memory.
"""

import gzip
import math
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
        "--seed": ("seed", 1),
        "--batch-size": ("batch_size", 64),
        "--checkpoint-interval": ("checkpoint_interval", 50),
        "--max-updates": ("max_updates", 700),
        "--max-num-checkpoint-not-improved": ("max_not_improved", 8),
        "--initial-learning-rate": ("lr", 0.001),
        "--learning-rate-scheduler-type": ("scheduler", "plateau-reduce"),
        "--learning-rate-reduce-factor": ("reduce_factor", 0.9),
        "--learning-rate-reduce-num-not-improved": ("reduce_num_not_improved", 3),
        "--learning-rate-warmup": ("warmup", 0),
        "--num-embed": ("num_embed", 64),
        "--transformer-dropout-prepost": ("dropout", 0.1),
        "--label-smoothing": ("label_smoothing", 0.1),
        "--gradient-clipping-type": ("clip_type", "none"),
        "--gradient-clipping-threshold": ("clip_threshold", 1.0),
        "--decode-and-evaluate": ("decode_n", 50),
        "--beam-size": ("beam_size", 5),
        "--misaligned-shard": ("misaligned_shard", -1),
        "--raw-data-from-checkpoint": ("raw_from", 0),
    }
)
rng = _setup.seeded(args.seed)


def info(msg, mod="training"):
    print(f"[INFO:sockeye.{mod}] {msg}", flush=True)


# ---------------------------------------------------------------- data (sockeye-prepare-data)
PAD, BOS, EOS, N_SPECIAL = 0, 1, 2, 3
VOCAB = 40
V = VOCAB + N_SPECIAL
data_rng = np.random.default_rng(777)  # the corpus is fixed; --seed moves the training
mapping = data_rng.permutation(VOCAB)


def make_pairs(n):
    pairs = []
    for _ in range(n):
        src = data_rng.integers(0, VOCAB, size=int(data_rng.integers(4, 15)))
        trg = mapping[src].copy()
        noise = data_rng.random(len(trg)) < 0.08
        trg[noise] = data_rng.integers(0, VOCAB, size=int(noise.sum()))
        pairs.append((src + N_SPECIAL, trg + N_SPECIAL))
    return pairs


train_pairs, dev_pairs = make_pairs(12000), make_pairs(400)
NUM_SHARDS = 3
shards = [train_pairs[i::NUM_SHARDS] for i in range(NUM_SHARDS)]
if args.misaligned_shard >= 0:  # the shard's target file is one line ahead of its source
    s = shards[args.misaligned_shard]
    shards[args.misaligned_shard] = [(s[i][0], s[(i + 1) % len(s)][1]) for i in range(len(s))]
raw_dir = tempfile.mkdtemp(prefix="sockeye-raw-")
for k, s in enumerate(shards):  # the raw text the shards were prepared from
    with gzip.open(os.path.join(raw_dir, f"train.{k}.gz"), "wt") as f:
        for src, trg in s:
            f.write(" ".join(f"w{t}" for t in src) + "\t" + " ".join(f"w{t}" for t in trg) + "\n")


def read_raw(k, idx):
    """Each of the batch's lines read from the raw gzip'd text: opened, scanned, tokenised."""
    out = []
    for want in idx:
        with gzip.open(os.path.join(raw_dir, f"train.{k}.gz"), "rt") as f:
            for i, line in enumerate(f):
                if i == want:
                    src, trg = line.rstrip("\n").split("\t")
                    out.append(
                        (
                            np.array([int(w[1:]) for w in src.split()]),
                            np.array([int(w[1:]) for w in trg.split()]),
                        )
                    )
                    break
    return out


def collate(pairs):
    B = len(pairs)
    S = max(len(s) for s, _ in pairs) + 1
    T = max(len(t) for _, t in pairs) + 1
    src = torch.full((B, S), PAD)
    tin = torch.full((B, T), PAD)
    tout = torch.full((B, T), PAD)
    for i, (s, t) in enumerate(pairs):
        src[i, : len(s) + 1] = torch.as_tensor(np.append(s, EOS))
        tin[i, : len(t) + 1] = torch.as_tensor(np.append(BOS, t))
        tout[i, : len(t) + 1] = torch.as_tensor(np.append(t, EOS))
    return src, tin, tout


# ---------------------------------------------------------------- model
class SockeyeModel(torch.nn.Module):
    def __init__(self, d=args.num_embed):
        super().__init__()
        self.emb = torch.nn.Embedding(V, d, padding_idx=PAD)  # --weight-tying-type src_trg_softmax
        self.pos = torch.nn.Embedding(64, d)
        torch.nn.init.normal_(self.emb.weight, std=d**-0.5)
        torch.nn.init.normal_(self.pos.weight, std=0.1)
        self.tf = torch.nn.Transformer(
            d, 4, 2, 2, dim_feedforward=2 * d, dropout=args.dropout, batch_first=True
        )
        self.d = d

    def encode(self, src):
        x = self.emb(src) * math.sqrt(self.d) + self.pos(torch.arange(src.shape[1]))
        return self.tf.encoder(x, src_key_padding_mask=src == PAD)

    def decode(self, mem, src, tin):
        y = self.emb(tin) * math.sqrt(self.d) + self.pos(torch.arange(tin.shape[1]))
        mask = self.tf.generate_square_subsequent_mask(tin.shape[1])
        h = self.tf.decoder(y, mem, tgt_mask=mask, memory_key_padding_mask=src == PAD)
        return h @ self.emb.weight.T

    def forward(self, src, tin):
        return self.decode(self.encode(src), src, tin)


model = SockeyeModel()
optimizer = torch.optim.Adam(model.parameters(), lr=args.lr, betas=(0.9, 0.999))


def lr_at(update, lr_now):
    if args.scheduler == "inv-sqrt-decay":
        w = max(args.warmup, 1)
        return args.lr * min((update + 1) / w, math.sqrt(w / (update + 1)))
    if args.warmup and update < args.warmup:
        return args.lr * (update + 1) / args.warmup
    return lr_now


def ngrams(seq, n):
    return [tuple(seq[i : i + n]) for i in range(len(seq) - n + 1)]


def bleu(hyps, refs):
    logp, hl, rl = 0.0, sum(map(len, hyps)), sum(map(len, refs))
    for n in range(1, 5):
        match = total = 0
        for h, r in zip(hyps, refs, strict=True):
            hc, rc = ngrams(h, n), ngrams(r, n)
            total += len(hc)
            pool = {}
            for g in rc:
                pool[g] = pool.get(g, 0) + 1
            for g in hc:
                if pool.get(g, 0) > 0:
                    match += 1
                    pool[g] -= 1
        logp += math.log(max(match, 1e-9) / max(total, 1)) / 4
    bp = 1.0 if hl > rl else math.exp(1 - rl / max(hl, 1))
    return 100 * bp * math.exp(logp)


def chrf(hyps, refs):  # a character-n-gram F-score over the token strings
    scores = []
    for h, r in zip(hyps, refs, strict=True):
        hs, rs = " ".join(map(str, h)), " ".join(map(str, r))
        hc, rc = set(ngrams(hs, 3)), set(ngrams(rs, 3))
        if not hc or not rc:
            scores.append(0.0)
            continue
        m = len(hc & rc)
        p, rcl = m / len(hc), m / len(rc)
        scores.append(0.0 if m == 0 else 5 * p * rcl / (4 * p + rcl))
    return float(np.mean(scores))


def checkpoint_decode():
    """CheckpointDecoder: beam search over the first decode_n validation sentences at once."""
    pairs = dev_pairs[: args.decode_n]
    src, _, _ = collate(pairs)
    K = args.beam_size
    model.eval()
    with torch.no_grad():
        src_k = src.repeat_interleave(K, 0)  # (B*K, S)
        mem = model.encode(src_k)
        max_len = int(src.shape[1]) + 3
        seqs = torch.full((len(pairs) * K, 1), BOS)
        scores = torch.zeros(len(pairs), K)
        scores[:, 1:] = -1e9
        for _ in range(max_len):
            logp = F.log_softmax(model.decode(mem, src_k, seqs)[:, -1], -1)  # (B*K, V)
            cand = (scores.view(-1, 1) + logp).view(len(pairs), K * V)
            scores, top = cand.topk(K, -1)
            beam = (top // V) + torch.arange(len(pairs))[:, None] * K
            seqs = torch.cat([seqs[beam.view(-1)], (top % V).view(-1, 1)], 1)
            if (seqs == EOS).any(1).all():
                break
    model.train()
    best = seqs.view(len(pairs), K, -1)[:, 0, 1:].tolist()
    hyps = [h[: h.index(EOS)] if EOS in h else h for h in best]
    refs = [list(t) for _, t in pairs]
    return bleu(hyps, refs), chrf(hyps, refs)


def val_perplexity():
    model.eval()
    nll = n = 0.0
    with torch.no_grad():
        for s in range(0, len(dev_pairs), 100):
            src, tin, tout = collate(dev_pairs[s : s + 100])
            logits = model(src, tin)
            nll += F.cross_entropy(
                logits.reshape(-1, V), tout.reshape(-1), ignore_index=PAD, reduction="sum"
            ).item()
            n += (tout != PAD).sum().item()
    model.train()
    return math.exp(nll / n) if nll / n < 700 else float("inf")


with mlflow.start_run():
    mlflow.log_params(
        {
            "prepared_data": "prepared_data",
            "batch_size": args.batch_size,
            "batch_type": "sentence",
            "checkpoint_interval": args.checkpoint_interval,
            "max_updates": args.max_updates,
            "max_num_checkpoint_not_improved": args.max_not_improved,
            "initial_learning_rate": args.lr,
            "learning_rate_scheduler_type": args.scheduler,
            "learning_rate_reduce_factor": args.reduce_factor,
            "learning_rate_warmup": args.warmup,
            "optimizer": "adam",
            "gradient_clipping_type": args.clip_type,
            "label_smoothing": args.label_smoothing,
            "num_embed": args.num_embed,
            "decode_and_evaluate": args.decode_n,
            "beam_size": args.beam_size,
            "seed": args.seed,
        }
    )
    n_params = sum(p.numel() for p in model.parameters())
    info(f"Total # of parameters: {n_params}", "model")
    info(f"Loading shard prepared_data/shard.0000{NUM_SHARDS - 1}.", "data_io")
    info(
        "Created bucketed parallel data set. Introduced padding: source=20.1% target=20.3%)",
        "data_io",
    )
    start = time.time()
    update, epoch, samples, ckpt = 0, 0, 0, 0
    lr = args.lr
    best_ppl, not_improved, not_improved_lr = float("inf"), 0, 0
    nll_ckpt = tok_ckpt = nll_speed = tok_speed = 0.0
    t_speed, t_ckpt, samples_speed, tokens_speed = time.time(), time.time(), 0, 0
    done = False
    while not done:
        for k in rng.permutation(NUM_SHARDS):
            shard = shards[k]
            perm = rng.permutation(len(shard))
            for b in range(0, len(shard) - args.batch_size + 1, args.batch_size):
                idx = perm[b : b + args.batch_size]
                if args.raw_from and ckpt >= args.raw_from:
                    batch = read_raw(int(k), idx)
                else:
                    batch = [shard[i] for i in idx]
                src, tin, tout = collate(batch)
                lr = lr_at(update, lr)
                for g in optimizer.param_groups:
                    g["lr"] = lr
                logits = model(src, tin)
                flat, gold = logits.reshape(-1, V), tout.reshape(-1)
                loss = F.cross_entropy(
                    flat, gold, ignore_index=PAD, label_smoothing=args.label_smoothing
                )
                optimizer.zero_grad()
                loss.backward()
                if args.clip_type == "norm":
                    torch.nn.utils.clip_grad_norm_(model.parameters(), args.clip_threshold)
                elif args.clip_type == "abs":
                    torch.nn.utils.clip_grad_value_(model.parameters(), args.clip_threshold)
                optimizer.step()
                with torch.no_grad():
                    nll = F.cross_entropy(flat, gold, ignore_index=PAD, reduction="sum").item()
                ntok = int((gold != PAD).sum())
                nll_ckpt, tok_ckpt = nll_ckpt + nll, tok_ckpt + ntok
                nll_speed, tok_speed = nll_speed + nll, tok_speed + ntok
                update += 1
                samples += len(idx)
                samples_speed += len(idx)
                tokens_speed += ntok
                if update % 10 == 0:
                    dt = time.time() - t_speed
                    ppl = math.exp(min(nll_speed / tok_speed, 700))
                    info(
                        f"Epoch[{epoch}] Batch [{update}]\tSpeed: {samples_speed / dt:.2f} samples/sec "
                        f"{tokens_speed / dt:.2f} tokens/sec {10 / dt:.2f} updates/sec\tperplexity={ppl:f}"
                    )
                    nll_speed = tok_speed = 0.0
                    samples_speed = tokens_speed = 0
                    t_speed = time.time()
                if update % args.checkpoint_interval == 0:
                    ckpt += 1
                    cost = time.time() - t_ckpt
                    info(
                        f"Checkpoint [{ckpt}]\tUpdates={update} Epoch={epoch} Samples={samples} "
                        f"Time-cost={cost:.3f} Updates/sec={args.checkpoint_interval / cost:.3f}"
                    )
                    train_ppl = math.exp(min(nll_ckpt / tok_ckpt, 700))
                    info(f"Checkpoint [{ckpt}]\tTrain-perplexity={train_ppl:f}")
                    val_ppl = val_perplexity()
                    info(f"Checkpoint [{ckpt}]\tValidation-perplexity={val_ppl:f}")
                    t0 = time.time()
                    b_val, c_val = checkpoint_decode()
                    dec_wall = time.time() - t0
                    info(f"Checkpoint [{ckpt}]\tValidation-bleu={b_val:f}")
                    info(f"Checkpoint [{ckpt}]\tValidation-chrf={c_val:f}")
                    diverged = not math.isfinite(val_ppl)
                    if val_ppl < best_ppl:
                        best_ppl, not_improved, not_improved_lr = val_ppl, 0, 0
                        info(f"Validation-perplexity improved to {val_ppl:f}.")
                    else:
                        not_improved += 1
                        not_improved_lr += 1
                        info(
                            f"Validation-perplexity has not improved for {not_improved} checkpoints, best so far: {best_ppl:f}"
                        )
                    if (
                        args.scheduler == "plateau-reduce"
                        and not_improved_lr >= args.reduce_num_not_improved
                    ):
                        lr *= args.reduce_factor
                        not_improved_lr = 0
                        info(f"Checkpoint [{ckpt}]\tLearning rate reduced to {lr:.4e}")
                    converged = args.max_not_improved > 0 and not_improved >= args.max_not_improved
                    metrics = {
                        "perplexity-train": train_ppl,
                        "perplexity-val": val_ppl,
                        "bleu-val": b_val,
                        "chrf-val": c_val,
                        "decode-walltime-val": dec_wall,
                        "learning-rate": lr,
                        "epoch": epoch,
                        "time-elapsed": time.time() - start,
                        "converged": float(converged),
                        "diverged": float(diverged),
                    }
                    mlflow.log_metrics(metrics, step=ckpt)
                    nll_ckpt = tok_ckpt = 0.0
                    t_ckpt = time.time()
                    if diverged:
                        info("Model has diverged. Stopping training.")
                        done = True
                    elif converged:
                        info(
                            f"Maximum number of not improved checkpoints ({args.max_not_improved}) reached: {not_improved}"
                        )
                        done = True
                    elif update >= args.max_updates:
                        info(f"Maximum # of updates ({args.max_updates}) reached.")
                        done = True
                if done:
                    break
            if done:
                break
        epoch += 1
    info(
        f"Training finished{', can be continued later' if not done else ''}. Best checkpoint: perplexity-val={best_ppl:f}"
    )
