"""A T5 pre-trained as nanoT5 (PiotrNawrot/nanoT5, ``python -m nanoT5.main``) pre-trains one: span
corruption, the AdamWScale optimizer, its ``Logger`` statistics mirrored to MLflow by the team's
copy of the Neptune logger.

Plain PyTorch + numpy + the plain ``mlflow`` API (no nanoT5, no transformers here).  What is
imitated:

* ``DataCollatorForT5MLM``: ``input_length`` tokens, ``mlm_probability`` (noise density) 0.15,
  ``mean_noise_span_length`` 3; noise spans replaced by sentinel ids counting down from the top
  of the vocabulary in the inputs, the targets the sentinels each followed by its span, then
  EOS;
* ``get_optimizer``: ``AdamWScale`` (AdamW whose step is scaled by the RMS of the parameter,
  at least 1e-3, as Adafactor's ``scale_parameter``), ``optim.base_lr`` 2e-2,
  ``optim.weight_decay`` 0; ``get_lr_scheduler`` with ``lr_scheduler: cosine``: ``LinearLR``
  from 0.5 to 1 over ``warmup_steps``, then ``CosineAnnealingLR`` down to ``final_cosine``
  (1e-5) at ``total_steps``, or ``legacy``: linear warm-up from 0 over ``warmup_steps`` then
  1/sqrt decay; ``optim.grad_clip`` 1.0 (``clip_grad_norm_``, 0 = off);
* ``train``: every ``logging.every_steps`` steps ``maybe_logging`` averages, over the steps
  since the last log, ``loss``, ``grad_l2`` (the L2 norm of every gradient before clipping,
  ``logging.grad_l2``), ``weights_l2`` (``logging.weights_l2``), ``lr`` and
  ``seconds_per_step``, and ``Logger.log_stats(prefix='train/')`` writes them at ``step =
  args.current_train_step``: ``train/loss``, ``train/grad_l2``, ``train/weights_l2``,
  ``train/lr``, ``train/seconds_per_step``, printing ``[train] Step 100 out of 1200 | Loss -->
  3.812 | Grad_l2 --> 0.512 | Weights_l2 --> 123.456 | Lr --> 1.000e-02 |
  Seconds_per_step --> 0.054 |``; every ``eval.every_steps`` and after the last step
  ``maybe_eval_predict`` evaluates ``eval.steps`` batches of the validation split:
  ``eval/loss``, ``eval/accuracy`` (token accuracy of the targets), ``eval/time``.

Model: a tiny T5-like encoder-decoder (pre-norm, no biases, learned positions, ReLU feed
forward, tied output head) of ``d_model``, ``num_layers`` + ``num_decoder_layers``,
``num_heads``.  Data: a generated corpus (a random grammar of word classes over a vocabulary
of ``vocab_size`` ids, Zipfian within each class) in ``num_shards`` pre-tokenised shards, packed
into ``input_length``-token examples and streamed shard after shard, shuffled within a shard
(the streaming dataset's shuffle buffer).  Written without looking at the doctor.

Faults are real settings and data: ``--base_lr``; ``--corpus_tokens`` with ``--d_model`` /
``--num_layers`` (the debug subset); ``--shard_vocab`` (a shard tokenised with another
tokenizer's vocabulary: its ids are a different mapping of the same text); ``--warmup_steps``
with ``--lr_scheduler legacy``.
"""

import time

import _setup
import mlflow
import numpy as np
import torch
import torch.nn.functional as F

args = _setup.parse_flags(
    {
        "--seed": 2137,
        "--vocab_size": 512,
        "--input_length": 64,
        "--mlm_probability": 0.15,
        "--mean_noise_span_length": 3.0,
        "--d_model": 64,
        "--d_ff": 192,
        "--num_heads": 4,
        "--num_layers": 2,
        "--num_decoder_layers": 2,
        "--batch_size": 32,
        "--total_steps": 500,
        "--warmup_steps": 50,
        "--base_lr": 2e-2,
        "--lr_scheduler": "cosine",
        "--final_cosine": 1e-5,
        "--grad_clip": 1.0,
        "--weight_decay": 0.0,
        "--log_every_steps": 20,
        "--eval_every_steps": 100,
        "--eval_steps": 8,
        "--corpus_tokens": 800000,
        "--num_shards": 4,
        "--shard_vocab": "",  # e.g. "t5,t5,t5,other": the tokenizer each shard was made with
    }
)
rng = _setup.seeded(args.seed)
V, EOS, PAD = args.vocab_size, 1, 0
N_SENT = 64  # sentinel ids V-1, V-2, ... (extra_ids)
WORDS = V - N_SENT  # ids 2..WORDS-1 are words

# ----------------------------------------------------------------------------- corpus
grng = np.random.default_rng(7)  # the same language for every run
N_CLASS = 12
cls_of = grng.integers(0, N_CLASS, WORDS - 2)
members = [np.flatnonzero(cls_of == c) + 2 for c in range(N_CLASS)]
zipf = [1.0 / np.arange(1, len(m) + 1) ** 1.1 for m in members]
zipf = [z / z.sum() for z in zipf]
trans = grng.dirichlet(np.full(N_CLASS, 0.15), N_CLASS)  # class -> next class, peaked
bigram = {}  # a few strong word -> word habits
for w in grng.choice(np.arange(2, WORDS), 120, replace=False):
    bigram[int(w)] = int(grng.integers(2, WORDS))


def generate(n, g):
    out = np.empty(n, np.int64)
    c, prev = 0, -1
    for i in range(n):
        if prev in bigram and g.uniform() < 0.7:
            w = bigram[prev]
            c = int(cls_of[w - 2])
        else:
            c = int(g.choice(N_CLASS, p=trans[c]))
            w = int(g.choice(members[c], p=zipf[c]))
        out[i] = w
        prev = w
    return out


corpus = generate(args.corpus_tokens, np.random.default_rng(args.seed + 11))
valid = generate(60000, np.random.default_rng(99))
shards = np.array_split(corpus, args.num_shards)
vocabs = args.shard_vocab.split(",") if args.shard_vocab else ["t5"] * args.num_shards
other = np.arange(WORDS)
other[2:] = np.random.default_rng(5).permutation(np.arange(2, WORDS))  # another tokenizer
shards = [other[s] if v != "t5" else s for s, v in zip(shards, vocabs, strict=True)]
stream = np.concatenate(shards)
n_examples = len(stream) // args.input_length


def noise_mask(length, g):
    n_noise = max(1, int(round(length * args.mlm_probability)))
    n_spans = max(1, int(round(n_noise / args.mean_noise_span_length)))
    n_clean = length - n_noise

    def parts(total, k):
        cuts = np.sort(g.choice(np.arange(1, total), k - 1, replace=False)) if k > 1 else []
        return np.diff(np.concatenate([[0], cuts, [total]])).astype(int)

    noise, clean = parts(n_noise, n_spans), parts(n_clean, n_spans)
    mask = np.zeros(length, bool)
    pos = 0
    for c, nz in zip(clean, noise, strict=True):
        pos += c
        mask[pos : pos + nz] = True
        pos += nz
    return mask


def corrupt(tokens, g):
    mask = noise_mask(len(tokens), g)
    inp, tgt, sent, prev = [], [], V - 1, False
    for t, m in zip(tokens, mask, strict=True):
        if m:
            if not prev:
                inp.append(sent)
                tgt.append(sent)
                sent -= 1
            tgt.append(int(t))
        else:
            inp.append(int(t))
        prev = m
    return inp + [EOS], tgt + [EOS]


def batch(source, starts, g):
    pairs = [corrupt(source[s : s + args.input_length], g) for s in starts]
    li, lt = max(len(p[0]) for p in pairs), max(len(p[1]) for p in pairs)
    inp = torch.full((len(pairs), li), PAD)
    tgt = torch.full((len(pairs), lt), -100)
    for i, (a, b) in enumerate(pairs):
        inp[i, : len(a)] = torch.tensor(a)
        tgt[i, : len(b)] = torch.tensor(b)
    return inp, tgt


# ----------------------------------------------------------------------------- model
class T5(torch.nn.Module):
    def __init__(self):
        super().__init__()
        d = args.d_model
        self.shared = torch.nn.Embedding(V, d)
        self.enc_pos = torch.nn.Embedding(128, d)
        self.dec_pos = torch.nn.Embedding(128, d)
        self.tr = torch.nn.Transformer(
            d,
            args.num_heads,
            args.num_layers,
            args.num_decoder_layers,
            args.d_ff,
            dropout=0.0,
            batch_first=True,
            norm_first=True,
            bias=False,
        )

    def forward(self, inp, tgt):
        labels = tgt.clamp(min=0)
        dec_in = torch.cat([torch.zeros_like(labels[:, :1]), labels[:, :-1]], 1)  # PAD starts
        pi = torch.arange(inp.shape[1])
        pd = torch.arange(dec_in.shape[1])
        causal = torch.nn.Transformer.generate_square_subsequent_mask(dec_in.shape[1])
        h = self.tr(
            self.shared(inp) + self.enc_pos(pi),
            self.shared(dec_in) + self.dec_pos(pd),
            tgt_mask=causal,
            src_key_padding_mask=inp == PAD,
            memory_key_padding_mask=inp == PAD,
        )
        logits = h @ self.shared.weight.T * args.d_model**-0.5
        return F.cross_entropy(logits.reshape(-1, V), tgt.reshape(-1), ignore_index=-100), logits


class AdamWScale(torch.optim.Optimizer):
    def __init__(self, params, lr, betas=(0.9, 0.999), eps=1e-6, weight_decay=0.0):
        super().__init__(
            params, {"lr": lr, "betas": betas, "eps": eps, "weight_decay": weight_decay}
        )

    @torch.no_grad()
    def step(self):
        for group in self.param_groups:
            b1, b2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                st = self.state[p]
                if not st:
                    st["step"], st["m"], st["v"] = 0, torch.zeros_like(p), torch.zeros_like(p)
                st["step"] += 1
                st["m"].mul_(b1).add_(p.grad, alpha=1 - b1)
                st["v"].mul_(b2).addcmul_(p.grad, p.grad, value=1 - b2)
                step_size = group["lr"] * (1 - b2 ** st["step"]) ** 0.5 / (1 - b1 ** st["step"])
                step_size = step_size * max(1e-3, p.pow(2).mean().sqrt().item())
                p.addcdiv_(st["m"], st["v"].sqrt().add_(group["eps"]), value=-step_size)
                if group["weight_decay"] > 0:
                    p.add_(p, alpha=-group["lr"] * group["weight_decay"])


model = T5()
optim = AdamWScale(model.parameters(), lr=args.base_lr, weight_decay=args.weight_decay)


def lr_at(step):  # the scheduler's value for the step about to be taken (from 0)
    w = args.warmup_steps
    if args.lr_scheduler == "legacy":
        if step < w:
            return args.base_lr * step / w
        return args.base_lr * (w / max(step, 1)) ** 0.5
    if step < w:
        return args.base_lr * (0.5 + 0.5 * step / w)
    t = (step - w) / max(1, args.total_steps - w)
    return args.final_cosine + (args.base_lr - args.final_cosine) * 0.5 * (1 + np.cos(np.pi * t))


def evaluate(step):
    t0 = time.time()
    model.eval()
    g = np.random.default_rng(1)
    losses, correct, total = [], 0, 0
    with torch.no_grad():
        for _ in range(args.eval_steps):
            starts = g.integers(0, len(valid) - args.input_length, args.batch_size)
            inp, tgt = batch(valid, starts, g)
            loss, logits = model(inp, tgt)
            losses.append(loss.item())
            keep = tgt != -100
            correct += int((logits.argmax(-1)[keep] == tgt[keep]).sum())
            total += int(keep.sum())
    model.train()
    stats = {"loss": float(np.mean(losses)), "accuracy": correct / total, "time": time.time() - t0}
    mlflow.log_metrics({f"eval/{k}": v for k, v in stats.items()}, step=step)
    print(f"[eval] Step {step} | " + " | ".join(f"{k} --> {v:.3f}" for k, v in stats.items()))


with mlflow.start_run():
    mlflow.log_params(vars(args))
    n_params = sum(p.numel() for p in model.parameters())
    print(f"Number of parameters: {n_params}; examples: {n_examples}", flush=True)
    per_shard = np.array_split(np.arange(n_examples), args.num_shards)

    def epoch_order():  # the shards streamed in order, a shuffle buffer within each
        return np.concatenate([rng.permutation(s) for s in per_shard])

    order = epoch_order()
    pos, epoch = 0, 0
    avg = {}
    t_last = time.time()
    for step in range(1, args.total_steps + 1):
        if pos + args.batch_size > n_examples:
            order, pos, epoch = epoch_order(), 0, epoch + 1
        idx = order[pos : pos + args.batch_size]
        pos += args.batch_size
        inp, tgt = batch(stream, idx * args.input_length, rng)
        lr = lr_at(step - 1)
        for gr in optim.param_groups:
            gr["lr"] = lr
        loss, _ = model(inp, tgt)
        optim.zero_grad()
        loss.backward()
        grads = [p.grad.detach().flatten() for p in model.parameters() if p.grad is not None]
        grad_l2 = float(torch.cat(grads).norm())
        if args.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), args.grad_clip)
        optim.step()
        weights_l2 = float(torch.cat([p.detach().flatten() for p in model.parameters()]).norm())
        for k, v in (
            ("loss", loss.item()),
            ("grad_l2", grad_l2),
            ("weights_l2", weights_l2),
            ("lr", lr),
        ):
            avg.setdefault(k, []).append(v)
        if step % args.log_every_steps == 0:
            now = time.time()
            stats = {k: float(np.mean(v)) for k, v in avg.items()}
            stats["seconds_per_step"] = (now - t_last) / args.log_every_steps
            t_last = now
            avg = {}
            mlflow.log_metrics({f"train/{k}": v for k, v in stats.items()}, step=step)
            print(
                f"[train] Step {step} out of {args.total_steps} | "
                + " | ".join(
                    f"{k.capitalize()} --> {v:.3e}"
                    if k == "lr"
                    else f"{k.capitalize()} --> {v:.3f}"
                    for k, v in stats.items()
                )
                + " |",
                flush=True,
            )
        if step % args.eval_every_steps == 0 or step == args.total_steps:
            evaluate(step)
