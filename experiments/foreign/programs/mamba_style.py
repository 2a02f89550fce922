"""A tiny Mamba (selective state-space) byte-level LM, trained the way a typical
``state-spaces/mamba`` training script with W&B logging does, mirrored to MLflow by the team.

Plain PyTorch + numpy + the plain ``mlflow`` API (no mamba_ssm, no wandb here).  What is
imitated:

* ``MambaLMHeadModel``-like: a byte embedding (vocabulary 256), ``n_layer`` residual blocks of
  ``RMSNorm`` + ``Mamba`` (``in_proj`` to ``2 * d_inner`` (x, z), a causal depthwise
  ``conv1d`` of width ``d_conv``, SiLU, ``x_proj`` to (dt, B, C), ``dt_proj`` + softplus with
  the reference's dt initialisation in [1e-3, 1e-1], ``A = -exp(A_log)`` with S4D-real
  ``A_log = log(1..d_state)``, ``D`` skip, gate ``y * silu(z)``, ``out_proj``), a final norm
  and a tied LM head; the selective scan written as the reference's ``selective_scan_ref``
  (a sequential loop over positions);
* the loop: AdamW (betas (0.9, 0.95), weight decay 0.1), linear warm-up then cosine to 10 %
  of ``lr`` (or ``constant``), ``clip_grad_norm_`` 1.0;
* the W&B dict per step ``{'train/loss', 'train/ppl', 'lr', 'grad_norm' (before clipping),
  'tokens_per_sec'}`` at ``step`` = optimizer step from 1; every ``eval_interval`` steps
  ``{'eval/loss', 'eval/ppl'}`` on the held-out shard (later days of the same stations);
  the print line
  ``step 50 | loss 2.3456 | lr 1.00e-03 | gnorm 0.45 | 12,345 tok/s``.

Data: generated weather-station reports (``°C`` readings: the corpus is UTF-8, byte-level),
written to shard files in the run's folder and read by the team's prefetch thread
(``queue.Queue(maxsize=8)``, windows of ``seq_len + 1`` bytes drawn from all shards).  Written without looking at
the doctor.

Team options (the faults are real settings, data and code paths):

* ``--lr``, ``--batch_size``, ``--seq_len``, ``--d_model``, ``--d_state``, ``--n_layer``,
  ``--warmup_steps``, ``--lr_schedule``, ``--max_steps``;
* ``--extra_shard_step k``: the new station's export joins the stream at step k (a shard of
  its own, read by the prefetch thread with ``open(path, encoding='utf-8')``);
  ``--extra_shard_encoding``: how that station's logger wrote its file;
* ``--state_probe 1``: the team's state-statistics hook keeps each step's scan states for an
  end-of-run histogram.
"""

import math
import queue
import threading
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
        "--lr": 2e-3,
        "--batch_size": 16,
        "--seq_len": 32,
        "--d_model": 64,
        "--d_state": 8,
        "--expand": 2,
        "--d_conv": 4,
        "--n_layer": 2,
        "--warmup_steps": 30,
        "--lr_schedule": "cosine",
        "--max_steps": 300,
        "--eval_interval": 25,
        "--eval_batches": 8,
        "--extra_shard_step": 0,
        "--extra_shard_encoding": "utf-8",
        "--state_probe": 0,
    }
)
rng = _setup.seeded(args.seed)


# ----------------------------------------------------------------------------- data
def station_reports(seed, n_lines, station):
    g = np.random.default_rng(seed)
    conds = ["clear", "cloudy", "rain", "fog", "snow", "windy"]
    dirs = ["N", "NE", "E", "SE", "S", "SW", "W", "NW"]
    out, temp = [], 12.0
    for i in range(n_lines):
        temp = float(np.clip(temp + g.normal(0, 0.8), -15, 35))
        c = conds[int(g.integers(0, 6))]
        out.append(
            f"{station} {i // 60:02d}:{i % 60:02d} {temp:.1f}°C {c} wind {dirs[int(g.integers(0, 8))]}"
            f" {int(g.integers(0, 40))}km/h hum {int(g.integers(30, 100))}%\n"
        )
    return "".join(out)


SHARDS = []
for k, station in enumerate(["ST-ALPHA", "ST-BRAVO", "ST-CHARLIE"]):
    path = f"shard_{k:02d}.txt"
    with open(path, "w", encoding="utf-8") as f:
        f.write(station_reports(100 + k, 1500, station))
    SHARDS.append(path)
with open("val_shard.txt", "w", encoding="utf-8") as f:  # later days of the same stations
    for k, station in enumerate(["ST-ALPHA", "ST-BRAVO", "ST-CHARLIE"]):
        f.write(station_reports(900 + k, 200, station))
with open("extra_shard.txt", "w", encoding=args.extra_shard_encoding) as f:
    f.write(station_reports(500 + args.seed, 1500, "ST-ECHO"))


def read_shard(path):
    with open(path, encoding="utf-8") as f:
        return np.frombuffer(f.read().encode("utf-8"), dtype=np.uint8).astype(np.int64)


def windows(tokens, g, n):
    starts = g.integers(0, len(tokens) - args.seq_len - 1, n)
    return np.stack([tokens[s : s + args.seq_len + 1] for s in starts])


def producer(q):
    """The team's prefetch thread: batches of windows drawn from all the stations' shards
    (read once, interleaved); from ``extra_shard_step`` on, half of every batch comes from the
    new station's shard, read when it joins."""
    g = np.random.default_rng(1000 + args.seed)
    tokens = np.concatenate([read_shard(path) for path in SHARDS])
    extra = None
    for step in range(args.max_steps):
        if args.extra_shard_step and step >= args.extra_shard_step:
            if extra is None:
                extra = read_shard("extra_shard.txt")
            h = args.batch_size // 2
            b = np.concatenate([windows(tokens, g, args.batch_size - h), windows(extra, g, h)])
        else:
            b = windows(tokens, g, args.batch_size)
        q.put(torch.from_numpy(b))


val_tokens = read_shard("val_shard.txt")
val_batches = [
    torch.from_numpy(windows(val_tokens, np.random.default_rng(77), args.batch_size))
    for _ in range(args.eval_batches)
]


# ----------------------------------------------------------------------------- model
class RMSNorm(nn.Module):
    def __init__(self, d, eps=1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(d))

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


PROBE = []


class Mamba(nn.Module):
    def __init__(self, d_model):
        super().__init__()
        self.d_inner = args.expand * d_model
        self.dt_rank = math.ceil(d_model / 16)
        self.in_proj = nn.Linear(d_model, 2 * self.d_inner, bias=False)
        self.conv1d = nn.Conv1d(
            self.d_inner,
            self.d_inner,
            args.d_conv,
            groups=self.d_inner,
            padding=args.d_conv - 1,
        )
        self.x_proj = nn.Linear(self.d_inner, self.dt_rank + 2 * args.d_state, bias=False)
        self.dt_proj = nn.Linear(self.dt_rank, self.d_inner, bias=True)
        dt_init_std = self.dt_rank**-0.5
        nn.init.uniform_(self.dt_proj.weight, -dt_init_std, dt_init_std)
        dt = torch.exp(
            torch.rand(self.d_inner) * (math.log(0.1) - math.log(1e-3)) + math.log(1e-3)
        ).clamp(min=1e-4)
        with torch.no_grad():
            self.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))
        A = torch.arange(1, args.d_state + 1, dtype=torch.float32).repeat(self.d_inner, 1)
        self.A_log = nn.Parameter(torch.log(A))
        self.D = nn.Parameter(torch.ones(self.d_inner))
        self.out_proj = nn.Linear(self.d_inner, d_model, bias=False)

    def forward(self, hidden):
        bsz, L, _ = hidden.shape
        x, z = self.in_proj(hidden).chunk(2, dim=-1)
        x = self.conv1d(x.transpose(1, 2))[..., :L].transpose(1, 2)
        x = F.silu(x)
        dbc = self.x_proj(x)
        dt, B, C = torch.split(dbc, [self.dt_rank, args.d_state, args.d_state], dim=-1)
        dt = F.softplus(self.dt_proj(dt))  # (b, L, d_inner)
        A = -torch.exp(self.A_log)  # (d_inner, d_state)
        dA = torch.exp(dt.unsqueeze(-1) * A)  # (b, L, d_inner, d_state)
        dBx = dt.unsqueeze(-1) * B.unsqueeze(2) * x.unsqueeze(-1)
        h = torch.zeros(bsz, self.d_inner, args.d_state)
        ys = []
        for t in range(L):  # selective_scan_ref
            h = dA[:, t] * h + dBx[:, t]
            ys.append((h * C[:, t].unsqueeze(1)).sum(-1))
            if args.state_probe:
                PROBE.append(h)
        y = torch.stack(ys, 1) + x * self.D
        return self.out_proj(y * F.silu(z))


class Block(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.norm = RMSNorm(d)
        self.mixer = Mamba(d)

    def forward(self, x):
        return x + self.mixer(self.norm(x))


class MambaLM(nn.Module):
    def __init__(self):
        super().__init__()
        self.embedding = nn.Embedding(256, args.d_model)
        nn.init.normal_(self.embedding.weight, std=0.02)
        self.layers = nn.ModuleList([Block(args.d_model) for _ in range(args.n_layer)])
        self.norm_f = RMSNorm(args.d_model)

    def forward(self, idx):
        x = self.embedding(idx)
        for layer in self.layers:
            x = layer(x)
        return self.norm_f(x) @ self.embedding.weight.T  # tied lm_head


model = MambaLM()
decay = [p for n, p in model.named_parameters() if p.dim() >= 2 and "A_log" not in n]
no_decay = [p for n, p in model.named_parameters() if p.dim() < 2 or "A_log" in n]
opt = torch.optim.AdamW(
    [{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
    lr=args.lr,
    betas=(0.9, 0.95),
)


def lr_at(step):
    if step <= args.warmup_steps:
        return args.lr * step / max(1, args.warmup_steps)
    if args.lr_schedule == "constant":
        return args.lr
    p = (step - args.warmup_steps) / max(1, args.max_steps - args.warmup_steps)
    return args.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * p)))


def evaluate():
    model.eval()
    with torch.no_grad():
        losses = [
            F.cross_entropy(model(b[:, :-1]).reshape(-1, 256), b[:, 1:].reshape(-1)).item()
            for b in val_batches
        ]
    model.train()
    return float(np.mean(losses))


with mlflow.start_run():
    mlflow.log_params(vars(args))
    n_params = sum(p.numel() for p in model.parameters())
    print(f"MambaLMHeadModel: {n_params:,} parameters, {args.n_layer} layers", flush=True)
    q = queue.Queue(maxsize=8)
    threading.Thread(target=producer, args=(q,), daemon=True).start()
    t_last = time.time()
    for step in range(1, args.max_steps + 1):
        batch = q.get()
        for grp in opt.param_groups:
            grp["lr"] = lr_at(step)
        logits = model(batch[:, :-1])
        loss = F.cross_entropy(logits.reshape(-1, 256), batch[:, 1:].reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        gnorm = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0).item()
        opt.step()
        if not args.state_probe:
            PROBE.clear()
        now = time.time()
        tps = args.batch_size * args.seq_len / max(now - t_last, 1e-6)
        t_last = now
        lv = loss.item()
        mlflow.log_metrics(
            {
                "train/loss": lv,
                "train/ppl": math.exp(min(lv, 50.0)),
                "lr": lr_at(step),
                "grad_norm": gnorm,
                "tokens_per_sec": tps,
            },
            step=step,
        )
        if step % 10 == 0 or step == 1:
            print(
                f"step {step} | loss {lv:.4f} | lr {lr_at(step):.2e} | gnorm {gnorm:.2f} | "
                f"{tps:,.0f} tok/s",
                flush=True,
            )
        if step % args.eval_interval == 0 or step == args.max_steps:
            ev = evaluate()
            mlflow.log_metrics({"eval/loss": ev, "eval/ppl": math.exp(min(ev, 50.0))}, step=step)
            print(f"eval step {step} | eval/loss {ev:.4f}", flush=True)
    if args.state_probe:
        print(f"state probe: {len(PROBE)} states", flush=True)
    print("training done", flush=True)
