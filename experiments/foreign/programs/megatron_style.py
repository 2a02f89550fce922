"""A tiny GPT pre-trained the way Megatron-LM's ``pretrain_gpt.py`` trains, with the scalars
Megatron writes to TensorBoard / Weights & Biases mirrored into MLflow.

Plain PyTorch + the plain ``mlflow`` API.  Names as Megatron's ``training_log`` and
``evaluate_and_print_results`` write them, against the iteration:

* every ``--tensorboard-log-interval`` iterations: ``learning-rate``, ``batch-size``,
  ``lm loss`` (that iteration's loss), ``loss-scale`` (with ``--fp16``), ``grad-norm`` (not on
  an iteration the loss scaler skipped) and ``params-norm`` (with ``--log-params-norm``);
* every ``--log-interval`` iterations (``--log-timers-to-tensorboard``): ``iteration-time``
  (seconds per iteration over the interval) and ``throughput`` (TFLOP/s per GPU, Megatron's
  FLOP count for a GPT);
* every ``--eval-interval`` iterations: ``lm loss validation`` and ``lm loss validation ppl``
  over ``--eval-iters`` batches.

Params: Megatron's argument names (``vars(args)``).  Written without looking at the doctor.

The model is Megatron's GPT layout: learned absolute positions, pre-LayerNorm blocks with an
unfused causal self-attention (the ``[b, heads, s, s]`` scores materialised), a GeLU MLP, a
final LayerNorm and an output layer tied to the embedding; init normal with
``--init-method-std``, output projections scaled by ``1/sqrt(2 * num_layers)``.  AdamW with
decoupled weight decay, warm-up then ``--lr-decay-style`` decay to ``--min-lr``, gradient
clipping at ``--clip-grad``.  ``--fp16`` emulates mixed precision's dynamic loss scaler:
gradients of the scaled loss held in float16; an overflow skips the iteration and, after
``--hysteresis`` of them, halves the scale; ``--loss-scale-window`` clean iterations double it.

The corpus is generated text (a fixed seeded word-bigram language, character tokens), written
as ``--num-shards`` shard files that are read in order, samples shuffled inside each shard.
``--corrupt-shard K``: shard K was extracted from binary files, so its text is byte noise.
``--uncached-from K``: shards K and later have no index cache: for every sample the reader
decompresses the shard file and re-tokenises it.  ``--eval-seq-length`` evaluates on longer
sequences than those trained on (long-context validation).
"""

import gzip
import math
import time

import _setup
import mlflow
import numpy as np
import torch

args = _setup.parse_flags(
    {
        "--num-layers": 2,
        "--hidden-size": 64,
        "--num-attention-heads": 4,
        "--seq-length": 64,
        "--max-position-embeddings": 0,
        "--micro-batch-size": 16,
        "--global-batch-size": 16,
        "--train-iters": 300,
        "--lr": 3e-3,
        "--min-lr": 3e-4,
        "--lr-decay-style": "cosine",
        "--lr-warmup-iters": 30,
        "--lr-decay-iters": 0,
        "--weight-decay": 0.1,
        "--adam-beta1": 0.9,
        "--adam-beta2": 0.95,
        "--adam-eps": 1e-8,
        "--clip-grad": 1.0,
        "--init-method-std": 0.02,
        "--hidden-dropout": 0.0,
        "--attention-dropout": 0.0,
        "--fp16": 0,
        "--initial-loss-scale": 65536.0,
        "--min-loss-scale": 1.0,
        "--loss-scale-window": 100,
        "--hysteresis": 2,
        "--log-interval": 10,
        "--tensorboard-log-interval": 2,
        "--log-params-norm": 0,
        "--eval-interval": 50,
        "--eval-iters": 10,
        "--eval-seq-length": 0,
        "--num-shards": 16,
        "--corrupt-shard": -1,
        "--uncached-from": -1,
        "--seed": 1234,
    }
)
a = args
L, H, NH, S = a.num_layers, a.hidden_size, a.num_attention_heads, a.seq_length
S_EVAL = a.eval_seq_length or S
MAXPOS = max(a.max_position_embeddings, S, S_EVAL)
lr_decay_iters = a.lr_decay_iters or a.train_iters
n_micro = max(1, a.global_batch_size // a.micro_batch_size)

# ------------------------------------------------------------------ the corpus (fixed language)
lang = np.random.default_rng(20261204)
letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))
letter_p = lang.dirichlet(np.ones(26) * 0.7)
words = sorted(
    {"".join(lang.choice(letters, size=lang.integers(2, 8), p=letter_p)) for _ in range(400)}
)
nw = len(words)
zipf = 1.0 / np.arange(1, nw + 1)
succ = [lang.choice(nw, size=6, replace=False, p=zipf / zipf.sum()) for _ in range(nw)]


def document(r):
    out, w = [], int(r.integers(nw))
    for _ in range(int(r.integers(6, 14))):  # sentences
        n = int(r.integers(5, 15))
        sent = []
        for _ in range(n):
            sent.append(words[w])
            w = int(succ[w][r.integers(6)]) if r.random() < 0.85 else int(r.integers(nw))
        out.append(" ".join(sent) + ".")
    return " ".join(out) + "\n"


docs = [document(lang) for _ in range(480)]
vocab = sorted(set("".join(docs)) | {"\0"})  # "\0" = the end-of-document token
stoi = {c: i for i, c in enumerate(vocab)}
V = len(vocab)
n_valid = 16
valid_text = "\0".join(docs[:n_valid])
shard_texts = ["\0".join(d) for d in np.array_split(np.array(docs[n_valid:], object), a.num_shards)]
if a.corrupt_shard >= 0:  # text extracted from binary files: byte noise in the vocabulary
    junk = np.random.default_rng(7)
    n = len(shard_texts[a.corrupt_shard])
    shard_texts[a.corrupt_shard] = "".join(junk.choice(np.array(vocab[1:]), size=n))


def tokenize(text):
    return np.array([stoi[c] for c in text], dtype=np.int64)


class Shard:
    """One shard file: its samples are (seq_length + 1)-token windows of its token stream."""

    def __init__(self, text, cached):
        self.cached = cached
        self.blob = gzip.compress(text.encode(), compresslevel=6)
        self.tokens = tokenize(text) if cached else None
        self.n = (len(text) - 1) // S

    def __getitem__(self, i):
        toks = self.tokens
        if not self.cached:  # no index: decompress the file and tokenise it again
            toks = tokenize(gzip.decompress(self.blob).decode())
        return toks[i * S : i * S + S + 1]


shards = [
    Shard(t, cached=a.uncached_from < 0 or k < a.uncached_from) for k, t in enumerate(shard_texts)
]
valid_tokens = tokenize(valid_text)

# ------------------------------------------------------------------ the model
rng = _setup.seeded(a.seed)
std_out = a.init_method_std / math.sqrt(2.0 * L)


def linear(i, o, std):
    m = torch.nn.Linear(i, o)
    torch.nn.init.normal_(m.weight, 0.0, std)
    torch.nn.init.zeros_(m.bias)
    return m


class Block(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.input_layernorm = torch.nn.LayerNorm(H)
        self.query_key_value = linear(H, 3 * H, a.init_method_std)
        self.dense = linear(H, H, std_out)
        self.post_attention_layernorm = torch.nn.LayerNorm(H)
        self.dense_h_to_4h = linear(H, 4 * H, a.init_method_std)
        self.dense_4h_to_h = linear(4 * H, H, std_out)
        self.drop_attn = torch.nn.Dropout(a.attention_dropout)
        self.drop = torch.nn.Dropout(a.hidden_dropout)

    def forward(self, x):
        b, s, _ = x.shape
        q, k, v = self.query_key_value(self.input_layernorm(x)).split(H, dim=-1)
        q, k, v = (t.view(b, s, NH, H // NH).transpose(1, 2) for t in (q, k, v))
        scores = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(H // NH)  # [b, np, s, s]
        mask = torch.ones(s, s, dtype=torch.bool).triu(1)
        probs = self.drop_attn(torch.softmax(scores.masked_fill(mask, -10000.0), dim=-1))
        ctx = torch.matmul(probs, v).transpose(1, 2).reshape(b, s, H)
        x = x + self.drop(self.dense(ctx))
        h = torch.nn.functional.gelu(self.dense_h_to_4h(self.post_attention_layernorm(x)))
        return x + self.drop(self.dense_4h_to_h(h))


class GPT(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.word_embeddings = torch.nn.Embedding(V, H)
        self.position_embeddings = torch.nn.Embedding(MAXPOS, H)
        torch.nn.init.normal_(self.word_embeddings.weight, 0.0, a.init_method_std)
        torch.nn.init.normal_(self.position_embeddings.weight, 0.0, a.init_method_std)
        self.layers = torch.nn.ModuleList(Block() for _ in range(L))
        self.final_layernorm = torch.nn.LayerNorm(H)

    def forward(self, tokens):
        pos = torch.arange(tokens.shape[1])
        x = self.word_embeddings(tokens) + self.position_embeddings(pos)
        for layer in self.layers:
            x = layer(x)
        return self.final_layernorm(x) @ self.word_embeddings.weight.t()  # tied output layer


model = GPT()
n_params = sum(p.numel() for p in model.parameters())
decay = [p for n, p in model.named_parameters() if p.ndim > 1 and "embeddings" not in n]
no_decay = [p for n, p in model.named_parameters() if not (p.ndim > 1 and "embeddings" not in n)]
opt = torch.optim.AdamW(
    [{"params": decay, "weight_decay": a.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
    lr=a.lr,
    betas=(a.adam_beta1, a.adam_beta2),
    eps=a.adam_eps,
)


def lr_at(it):  # OptimizerParamScheduler.get_lr
    if a.lr_warmup_iters > 0 and it <= a.lr_warmup_iters:
        return a.lr * it / a.lr_warmup_iters
    if a.lr_decay_style == "constant":
        return a.lr
    ratio = min(1.0, (it - a.lr_warmup_iters) / max(1, lr_decay_iters - a.lr_warmup_iters))
    if a.lr_decay_style == "linear":
        coeff = 1.0 - ratio
    else:
        coeff = 0.5 * (math.cos(math.pi * ratio) + 1.0)
    return a.min_lr + coeff * (a.lr - a.min_lr)


def flops_per_iteration(batch):  # num_floating_point_operations for a GPT
    return 72 * batch * S * L * H * H * (1 + S / (6 * H) + V / (12 * H * L))


def lm_loss(tokens):
    logits = model(tokens[:, :-1])
    return torch.nn.functional.cross_entropy(logits.reshape(-1, V), tokens[:, 1:].reshape(-1))


def train_samples():
    """Shards in order, epoch after epoch; samples shuffled inside a shard."""
    while True:
        for sh in shards:
            for i in rng.permutation(sh.n):
                yield sh[int(i)]


def evaluate():
    model.eval()
    losses = []
    n_eval = (len(valid_tokens) - 1) // S_EVAL
    with torch.no_grad():
        for k in range(a.eval_iters):
            rows = []
            for j in range(a.micro_batch_size):
                i = (k * a.micro_batch_size + j) % max(1, n_eval)
                if n_eval == 0:  # fewer valid tokens than one sequence: wrap around
                    rows.append(np.resize(valid_tokens, S_EVAL + 1))
                else:
                    rows.append(valid_tokens[i * S_EVAL : i * S_EVAL + S_EVAL + 1])
            losses.append(lm_loss(torch.from_numpy(np.stack(rows))).item())
    model.train()
    return float(np.mean(losses))


with mlflow.start_run():
    mlflow.log_params({k: v for k, v in vars(a).items()})
    mlflow.log_params({"padded_vocab_size": V, "world_size": 1, "num_parameters": n_params})
    print(f"> number of parameters: {n_params}, vocab size {V}, {sum(s.n for s in shards)} samples")
    samples = train_samples()
    scale = a.initial_loss_scale if a.fp16 else 1.0
    hysteresis_left, good_steps, skipped_total = a.hysteresis, 0, 0
    t_interval, consumed = time.time(), 0
    interval_loss, interval_n, interval_skipped = 0.0, 0, 0
    for it in range(1, a.train_iters + 1):
        lr = lr_at(it)
        for g in opt.param_groups:
            g["lr"] = lr
        opt.zero_grad()
        loss_val = 0.0
        for _ in range(n_micro):
            batch = torch.from_numpy(np.stack([next(samples) for _ in range(a.micro_batch_size)]))
            loss = lm_loss(batch)
            (loss / n_micro).backward()
            loss_val += loss.item() / n_micro
        consumed += n_micro * a.micro_batch_size
        skipped, grad_norm = False, None
        if a.fp16:  # gradients of the scaled loss, as float16 would hold them
            found_inf = False
            for p in model.parameters():
                g16 = (p.grad * scale).half()
                found_inf |= not bool(torch.isfinite(g16).all())
                p.grad = g16.float() / scale
            if found_inf:
                skipped = True
                hysteresis_left -= 1
                good_steps = 0
                if hysteresis_left <= 0:
                    scale = max(scale / 2.0, a.min_loss_scale)
                    hysteresis_left = a.hysteresis
            else:
                good_steps += 1
                if good_steps % a.loss_scale_window == 0:
                    scale *= 2.0
                    hysteresis_left = a.hysteresis
        if not skipped:
            max_norm = a.clip_grad if a.clip_grad > 0 else float("inf")
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm).item()
            opt.step()
        else:
            skipped_total += 1
            interval_skipped += 1
        if not skipped:  # the console's average leaves skipped iterations out
            interval_loss += loss_val
        interval_n += 1
        if it % a.tensorboard_log_interval == 0:
            m = {
                "learning-rate": lr,
                "batch-size": n_micro * a.micro_batch_size,
                "lm loss": loss_val,
            }
            if a.fp16:
                m["loss-scale"] = scale
            if grad_norm is not None:
                m["grad-norm"] = grad_norm
            if a.log_params_norm:
                m["params-norm"] = float(
                    torch.sqrt(sum((p.detach() ** 2).sum() for p in model.parameters()))
                )
            mlflow.log_metrics(m, step=it)
        if it % a.log_interval == 0:
            per_it = (time.time() - t_interval) / a.log_interval
            tput = flops_per_iteration(n_micro * a.micro_batch_size) / (per_it * 10**12)
            mlflow.log_metrics({"iteration-time": per_it, "throughput": tput}, step=it)
            avg = interval_loss / max(1, interval_n - interval_skipped)
            print(
                f" iteration {it:8d}/{a.train_iters:8d} | consumed samples: {consumed:12d} |"
                f" elapsed time per iteration (ms): {per_it * 1000:.1f} |"
                f" throughput per GPU (TFLOP/s/GPU): {tput:.4f} | learning rate: {lr:.6E} |"
                f" global batch size: {n_micro * a.micro_batch_size:5d} | lm loss: {avg:.6E} |"
                + (f" loss scale: {scale:.1f} |" if a.fp16 else "")
                + (f" grad norm: {grad_norm:.3f} |" if grad_norm is not None else "")
                + f" number of skipped iterations: {interval_skipped:3d} |",
                flush=True,
            )
            interval_loss, interval_n, interval_skipped = 0.0, 0, 0
            t_interval = time.time()
        if it % a.eval_interval == 0:
            t_eval = time.time()
            vl = evaluate()
            ppl = math.exp(min(20.0, vl))
            mlflow.log_metrics({"lm loss validation": vl, "lm loss validation ppl": ppl}, step=it)
            print(
                f" validation loss at iteration {it} | lm loss value: {vl:.6E} |"
                f" lm loss PPL: {ppl:.6E} |",
                flush=True,
            )
            t_interval += time.time() - t_eval  # the interval timer excludes evaluation
    print(f"[after training is done] skipped iterations: {skipped_total}", flush=True)
