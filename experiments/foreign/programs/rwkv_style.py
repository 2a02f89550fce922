"""A tiny RWKV-4 character language model trained the RWKV-LM ``train.py`` way, its
``train_callback`` wandb dict mirrored to MLflow by the team's logger.

Plain PyTorch + numpy + the plain ``mlflow`` API (no RWKV-LM, no Lightning here).  What is
imitated:

* the RWKV-4 block: ``ln1`` -> ``RWKV_TimeMix`` (token shift, ``time_mix_k/v/r``,
  ``time_decay`` w, ``time_first`` u, the WKV recurrence ``(sum_i e^{-(t-1-i)w + k_i} v_i +
  e^{u + k_t} v_t) / (...)`` computed in parallel, ``sigmoid(r) * wkv`` -> ``output``),
  ``ln2`` -> ``RWKV_ChannelMix`` (token shift, ``square(relu(key))``, ``sigmoid(receptance)``);
  ``ln0`` after the embedding, ``ln_out`` and ``head``; the ``time_decay`` / ``time_first``
  zig-zag initialisation by layer;
* the trainer: random ``ctx_len`` windows of the token stream (``data_type`` numpy),
  ``micro_bsz`` windows a step, Adam(betas 0.9/0.99, eps 1e-8), lr warm-up over
  ``warmup_steps`` then the exponential decay from ``lr_init`` to ``lr_final`` over the run,
  ``gradient_clip_val`` 1.0, "epochs" of ``epoch_steps`` steps (RWKV's mini-epochs);
* ``train_callback.on_train_batch_end``'s wandb dict ``{"loss": trainer.my_loss, "lr":
  trainer.my_lr, "wd": trainer.my_wd, "Gtokens": real_step * token_per_step / 1e9, "kt/s":
  kt_s}`` logged every step at ``step = real_step`` (from 1; ``kt/s`` from the second step);
  per mini-epoch the team's ``epoch_loss`` (``my_epoch_loss``, the epoch's running mean) and
  ``val_loss`` (the held-out tail of the corpus), and ``train_log.txt``'s line
  ``epoch loss ppl lr datetime epoch``.

Data: a generated character corpus (a small probabilistic grammar of sensor-log sentences),
``n_chars`` characters, the last ``val_frac`` held out.  Written without looking at the
doctor.

Team options (the faults are real settings, data and code paths):

* ``--lr_init`` / ``--lr_final``, ``--warmup_steps``, ``--n_embd``, ``--n_layer``,
  ``--micro_bsz``, ``--ctx_len``, ``--n_chars``, ``--epoch_count``;
* ``--hard_token_log 1``: every step's per-token losses (with their contexts) appended to
  ``token_losses.tsv`` and the whole file read back to find the hardest 1 % of tokens and the hardest character so far;
* ``--new_shard_step k``: a second shard (the vendor's logs) joins the sampler at step k, half
  of every batch; ``--new_shard_vocab`` ``same`` or ``vendor``: the shard tokenised with the
  vendor's own vocab.json (the same characters in another order).
"""

import datetime
import math
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
        "--n_embd": 64,
        "--n_layer": 2,
        "--ctx_len": 32,
        "--micro_bsz": 12,
        "--lr_init": 2e-3,
        "--lr_final": 2e-4,
        "--warmup_steps": 20,
        "--epoch_steps": 40,
        "--epoch_count": 10,
        "--weight_decay": 0.0,
        "--grad_clip": 1.0,
        "--n_chars": 120000,
        "--val_frac": 0.1,
        "--hard_token_log": 0,
        "--new_shard_step": 0,
        "--new_shard_vocab": "same",  # same | vendor
    }
)
rng = _setup.seeded(args.seed)

# ----------------------------------------------------------------------------- corpus
WORDS = {
    "dev": ["pump", "valve", "fan", "boiler", "chiller", "sensor", "relay", "motor"],
    "verb": ["reports", "logs", "reads", "sends", "holds", "drops to", "rises to"],
    "unit": ["kpa", "rpm", "degc", "volts", "amps", "lpm"],
    "state": ["ok", "warn", "fault", "idle", "busy"],
}


def corpus(n, r):
    out, size = [], 0
    while size < n:
        dev = r.choice(WORDS["dev"])
        num = int(r.integers(1, 9))
        val = int(r.integers(10, 99))
        if r.random() < 0.6:
            s = f"{dev} {num} {r.choice(WORDS['verb'])} {val} {r.choice(WORDS['unit'])}. "
        else:
            s = f"{dev} {num} is {r.choice(WORDS['state'])}; next check in {val} min. "
        out.append(s)
        size += len(s)
    return "".join(out)[:n]


crng = np.random.default_rng(2024)
text = corpus(args.n_chars, crng)
chars = sorted(set(corpus(200000, np.random.default_rng(0))) | set(text))
stoi = {c: i for i, c in enumerate(chars)}
VOCAB = len(chars)
data = np.array([stoi[c] for c in text], dtype=np.int64)
n_val = int(args.val_frac * len(data))
train_data, val_data = data[:-n_val], data[-n_val:]
shard_text = corpus(60000, np.random.default_rng(77))
if args.new_shard_vocab == "vendor":
    vendor = {c: i for i, c in enumerate(np.random.default_rng(5).permutation(chars))}
    shard = np.array([vendor[c] for c in shard_text], dtype=np.int64)
else:
    shard = np.array([stoi[c] for c in shard_text], dtype=np.int64)


def windows(src, n, r):
    ix = r.integers(0, len(src) - args.ctx_len - 1, n)
    x = np.stack([src[i : i + args.ctx_len] for i in ix])
    y = np.stack([src[i + 1 : i + args.ctx_len + 1] for i in ix])
    return torch.from_numpy(x), torch.from_numpy(y)


# ----------------------------------------------------------------------------- RWKV-4
def time_shift(x):
    return F.pad(x, (0, 0, 1, -1))


class TimeMix(nn.Module):
    def __init__(self, C, layer_id, n_layer):
        super().__init__()
        r01 = layer_id / max(1, n_layer - 1)
        r1a0 = 1.0 - layer_id / n_layer
        h = torch.arange(C) / C
        decay = -5 + 8 * (torch.arange(C) / (C - 1)) ** (0.7 + 1.3 * r01)
        self.time_decay = nn.Parameter(decay)
        zigzag = torch.tensor([(i + 1) % 3 - 1 for i in range(C)]) * 0.5
        self.time_first = nn.Parameter(torch.ones(C) * math.log(0.3) + zigzag)
        self.time_mix_k = nn.Parameter(h**r1a0)
        self.time_mix_v = nn.Parameter(h**r1a0 + 0.3 * r01)
        self.time_mix_r = nn.Parameter(h ** (0.5 * r1a0))
        self.key = nn.Linear(C, C, bias=False)
        self.value = nn.Linear(C, C, bias=False)
        self.receptance = nn.Linear(C, C, bias=False)
        self.output = nn.Linear(C, C, bias=False)

    def forward(self, x):
        B, T, C = x.shape
        xx = time_shift(x)
        k = self.key(x * self.time_mix_k + xx * (1 - self.time_mix_k))
        v = self.value(x * self.time_mix_v + xx * (1 - self.time_mix_v))
        r = self.receptance(x * self.time_mix_r + xx * (1 - self.time_mix_r))
        w = torch.exp(self.time_decay)  # decay a step, per channel
        t = torch.arange(T)
        dist = (t[:, None] - 1 - t[None, :]).float()  # t - 1 - i
        logit = -dist[:, :, None] * w + k[:, None, :, :]  # B, T(t), T(i), C
        diag = (self.time_first + k)[:, :, None, :]
        eye = torch.eye(T, dtype=torch.bool)[None, :, :, None]
        logit = torch.where(eye, diag.expand(B, T, T, C), logit)
        logit = logit.masked_fill(
            ~torch.tril(torch.ones(T, T, dtype=torch.bool))[None, :, :, None], -1e30
        )
        a = torch.softmax(logit, dim=2)
        wkv = (a * v[:, None, :, :]).sum(2)
        return self.output(torch.sigmoid(r) * wkv)


class ChannelMix(nn.Module):
    def __init__(self, C, layer_id, n_layer):
        super().__init__()
        h = torch.arange(C) / C
        r1a0 = 1.0 - layer_id / n_layer
        self.time_mix_k = nn.Parameter(h**r1a0)
        self.time_mix_r = nn.Parameter(h**r1a0)
        self.key = nn.Linear(C, 4 * C, bias=False)
        self.receptance = nn.Linear(C, C, bias=False)
        self.value = nn.Linear(4 * C, C, bias=False)

    def forward(self, x):
        xx = time_shift(x)
        k = self.key(x * self.time_mix_k + xx * (1 - self.time_mix_k))
        r = self.receptance(x * self.time_mix_r + xx * (1 - self.time_mix_r))
        return torch.sigmoid(r) * self.value(torch.square(torch.relu(k)))


class Block(nn.Module):
    def __init__(self, C, i, n):
        super().__init__()
        self.ln0 = nn.LayerNorm(C) if i == 0 else None
        self.ln1, self.ln2 = nn.LayerNorm(C), nn.LayerNorm(C)
        self.att, self.ffn = TimeMix(C, i, n), ChannelMix(C, i, n)

    def forward(self, x):
        if self.ln0 is not None:
            x = self.ln0(x)
        x = x + self.att(self.ln1(x))
        return x + self.ffn(self.ln2(x))


class RWKV(nn.Module):
    def __init__(self):
        super().__init__()
        C = args.n_embd
        self.emb = nn.Embedding(VOCAB, C)
        nn.init.uniform_(self.emb.weight, -1e-4, 1e-4)
        self.blocks = nn.Sequential(*[Block(C, i, args.n_layer) for i in range(args.n_layer)])
        self.ln_out = nn.LayerNorm(C)
        self.head = nn.Linear(C, VOCAB, bias=False)

    def forward(self, idx):
        return self.head(self.ln_out(self.blocks(self.emb(idx))))


model = RWKV()
opt = torch.optim.Adam(model.parameters(), lr=args.lr_init, betas=(0.9, 0.99), eps=1e-8)
total_steps = args.epoch_steps * args.epoch_count
token_per_step = args.micro_bsz * args.ctx_len


def lr_at(step):
    if step < args.warmup_steps:
        return args.lr_init * (0.2 + 0.8 * step / args.warmup_steps)
    progress = (step - args.warmup_steps) / max(1, total_steps - args.warmup_steps)
    return args.lr_init * math.exp(math.log(args.lr_final / args.lr_init) * progress)


@torch.no_grad()
def val_loss():
    model.eval()
    vr = np.random.default_rng(0)
    tot = 0.0
    for _ in range(8):
        x, y = windows(val_data, 16, vr)
        tot += F.cross_entropy(model(x).reshape(-1, VOCAB), y.reshape(-1)).item()
    model.train()
    return tot / 8


with mlflow.start_run():
    mlflow.log_params(vars(args))
    n_params = sum(p.numel() for p in model.parameters())
    print(f"\n############################################################\n"
          f"RWKV-4 {args.n_layer}x{args.n_embd} ctx {args.ctx_len}, {n_params} params, vocab {VOCAB}\n"
          f"Data has {len(train_data)} tokens (+{len(val_data)} held out), "
          f"micro_bsz {args.micro_bsz}, epoch_steps {args.epoch_steps}, epoch_count {args.epoch_count}\n"
          f"Adam lr {args.lr_init} -> {args.lr_final}, warmup {args.warmup_steps}, grad clip {args.grad_clip}\n"
          f"############################################################", flush=True)  # fmt: skip
    my_log = open("train_log.txt", "a")
    my_time_ns = None
    real_step = 0
    for epoch in range(args.epoch_count):
        loss_sum, loss_count = 0.0, 0
        t_ep = time.time()
        for _ in range(args.epoch_steps):
            lr = lr_at(real_step)
            for g in opt.param_groups:
                g["lr"] = lr
            if args.new_shard_step and real_step >= args.new_shard_step:
                if real_step == args.new_shard_step:
                    print(
                        f"step {real_step}: vendor shard joined ({len(shard)} tokens)", flush=True
                    )
                h = args.micro_bsz // 2
                x1, y1 = windows(train_data, args.micro_bsz - h, rng)
                x2, y2 = windows(shard, h, rng)
                x, y = torch.cat([x1, x2]), torch.cat([y1, y2])
            else:
                x, y = windows(train_data, args.micro_bsz, rng)
            tok_loss = F.cross_entropy(model(x).reshape(-1, VOCAB), y.reshape(-1), reduction="none")
            loss = tok_loss.mean()
            opt.zero_grad()
            loss.backward()
            if args.grad_clip:
                nn.utils.clip_grad_norm_(model.parameters(), args.grad_clip)
            opt.step()
            real_step += 1
            if args.hard_token_log:
                xs = x.tolist()
                with open("token_losses.tsv", "a") as fh:
                    for j, v in enumerate(tok_loss.detach().tolist()):
                        b, t = divmod(j, args.ctx_len)
                        ctx = "".join(chars[c] for c in xs[b][max(0, t - 7) : t + 1])
                        fh.write(f"{real_step}\t{j}\t{v:.4f}\t{ctx!r}\n")
                seen, by_char = [], {}
                with open("token_losses.tsv") as fh:
                    for line in fh:
                        _, _, v, ctx = line.rstrip("\n").split("\t")
                        seen.append(float(v))
                        by_char.setdefault(ctx[-2], []).append(seen[-1])
                hard = sorted(seen)[-max(1, len(seen) // 100)]  # the hardest 1 % so far
                worst_char = max(by_char, key=lambda c: sum(by_char[c]) / len(by_char[c]))
            my_loss = loss.item()
            loss_sum += my_loss
            loss_count += 1
            lll = {
                "loss": my_loss,
                "lr": lr,
                "wd": args.weight_decay,
                "Gtokens": real_step * token_per_step / 1e9,
            }
            t_now = time.time_ns()
            if my_time_ns is not None:
                lll["kt/s"] = token_per_step / ((t_now - my_time_ns) / 1e9) / 1000
            my_time_ns = t_now
            mlflow.log_metrics(lll, step=real_step)
        epoch_loss = loss_sum / loss_count
        vl = val_loss()
        mlflow.log_metrics({"epoch_loss": epoch_loss, "val_loss": vl}, step=real_step)
        el = time.time() - t_ep
        print(
            f"Epoch {epoch}: 100%|##########| {args.epoch_steps}/{args.epoch_steps} "
            f"[{int(el // 60):02d}:{int(el % 60):02d}<00:00, {args.epoch_steps / el:.2f}it/s, "
            f"loss={epoch_loss:.3f}, lr={lr:.6f}, REAL it/s={args.epoch_steps / el:.3f}, "
            f"Kt/s={lll.get('kt/s', 0.0):.2f}] val_loss={vl:.3f}",
            flush=True,
        )
        my_log.write(
            f"{epoch} {epoch_loss:.6f} {math.exp(epoch_loss):.4f} {lr:.8f} "
            f"{datetime.datetime.now()} {epoch}\n"
        )
        my_log.flush()
    my_log.close()
    print(
        f"done: {real_step} steps, {os.path.getsize('train_log.txt')} bytes of train_log.txt",
        flush=True,
    )
