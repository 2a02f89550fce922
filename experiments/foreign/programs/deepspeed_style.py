"""A tiny token language model trained the way a DeepSpeed engine runs an fp16 job, logged
under the names DeepSpeed's monitor writes.

Plain PyTorch + the plain ``mlflow`` API.  DeepSpeed's monitor events, logged against the
number of samples seen (``step=global_samples``, as the monitor does): ``Train/Samples/train_loss``
(each optimizer step), ``Train/Samples/lr`` and ``Train/Samples/loss_scale`` (after each step;
the loss scale only under fp16).  The script adds the engine's global gradient norm
(``engine.get_global_grad_norm()``) under the same prefix, ``Train/Samples/grad_norm``, and
every ``steps_per_print`` steps the throughput timer's two figures under the names the timer
prints them, ``RunningAvgSamplesPerSec`` and ``CurrSamplesPerSec``.  Params are the DeepSpeed
JSON config flattened with dots (``optimizer.params.lr``, ``fp16.initial_scale_power``,
``scheduler.type``, ``curriculum_learning.max_difficulty`` ...).  Written without looking at
the doctor.

fp16 as DeepSpeed does it: float32 master weights, float16 model weights (the master rounded
after every step), module outputs (logits, loss) in float16, gradients of the scaled loss in
float16; a step whose gradients overflow float16 is skipped and the dynamic loss scale halved
(after ``hysteresis`` overflows), the scale doubles after ``loss_scale_window`` clean steps, and
an overflow at ``min_loss_scale`` ends the run with DeepSpeed's exception.  For speed on a CPU
the layers' internal arithmetic runs in float32; every value DeepSpeed keeps in float16 is
rounded to float16 at the same place.

Data: a fixed random Markov chain over 64 tokens (about 2.6 nats per token).  The model sees
the last ``context`` tokens (embedding, concatenation, MLP).  ``--curriculum_learning.enabled``
grows the sequence length from ``min_difficulty`` to ``max_difficulty`` (DeepSpeed's legacy
seqlen curriculum, ``fixed_linear``).  ``--loss_reduction sum`` sums the per-token losses
(in the model's float16 output dtype) and divides by the token count afterwards.
"""

import math
import time

import _setup
import mlflow
import numpy as np
import torch

args = _setup.parse_flags(
    {
        "--train_micro_batch_size_per_gpu": ("micro_bs", 32),
        "--gradient_accumulation_steps": ("gas", 1),
        "--train_iters": ("iters", 300),
        "--seq_length": ("seq", 64),
        "--optimizer.params.lr": ("lr", 2e-3),
        "--optimizer.params.weight_decay": ("wd", 0.01),
        "--scheduler.type": ("sched", "WarmupDecayLR"),
        "--scheduler.params.warmup_num_steps": ("warmup", 40),
        "--gradient_clipping": ("clip", 1.0),
        "--fp16.enabled": ("fp16", 1),
        "--fp16.initial_scale_power": ("scale_power", 16),
        "--fp16.loss_scale_window": ("scale_window", 1000),
        "--fp16.hysteresis": ("hysteresis", 2),
        "--fp16.min_loss_scale": ("min_scale", 1.0),
        "--curriculum_learning.enabled": ("cl", 0),
        "--curriculum_learning.min_difficulty": ("cl_min", 16),
        "--curriculum_learning.max_difficulty": ("cl_max", 256),
        "--curriculum_learning.schedule_config.total_curriculum_step": ("cl_steps", 400),
        "--curriculum_learning.schedule_config.difficulty_step": ("cl_step", 8),
        "--steps_per_print": ("print_every", 10),
        "--model.hidden_size": ("hidden", 128),
        "--model.context": ("context", 4),
        "--loss_reduction": ("reduction", "mean"),
        "--seed": ("seed", 1234),
    }
)

V, D = 64, 32
chain_rng = np.random.default_rng(20240607)  # the "language" is the same for every run
P = chain_rng.dirichlet(np.full(V, 0.15), size=V)
cdf = np.cumsum(P, 1)
rng = _setup.seeded(args.seed)


def batch(n, length):
    """``n`` token sequences of ``length + 1`` from the chain, each from a random start."""
    out = np.empty((n, length + 1), np.int64)
    out[:, 0] = rng.integers(0, V, n)
    u = rng.random((n, length))
    for t in range(length):
        nxt = (u[:, t : t + 1] > cdf[out[:, t]]).sum(1)
        out[:, t + 1] = np.minimum(nxt, V - 1)
    return torch.from_numpy(out)


class TinyLM(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = torch.nn.Embedding(V, D)
        self.fc = torch.nn.Linear(D * args.context, args.hidden)
        self.out = torch.nn.Linear(args.hidden, V)

    def forward(self, x):
        h = self.emb(x)  # [B, T, D]; position t sees tokens t-context+1 .. t (zeros before 0)
        pad = torch.nn.functional.pad(h, (0, 0, args.context - 1, 0))
        win = torch.cat([pad[:, k : k + x.shape[1]] for k in range(args.context)], -1)
        logits = self.out(torch.nn.functional.gelu(self.fc(win)))
        return logits.half() if args.fp16 else logits  # the module's output dtype


model = TinyLM()
master = [p.detach().clone() for p in model.parameters()]  # fp32 master weights
opt = torch.optim.AdamW(master, lr=args.lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=args.wd)


def sync_model():
    with torch.no_grad():
        for p, m in zip(model.parameters(), master, strict=True):
            p.copy_(m.half().float() if args.fp16 else m)


sync_model()


def lr_at(n):
    """DeepSpeed's schedulers at scheduler step ``n`` (skipped steps do not advance it)."""
    w = max(1, args.warmup)
    if args.sched == "WarmupLR":  # warmup_type "log" (DeepSpeed's default), then constant
        return args.lr * (math.log(n + 1) / math.log(w) if n < w else 1.0)
    if n < w:
        return args.lr * n / w
    if args.sched == "WarmupCosineLR":
        return args.lr * 0.5 * (1 + math.cos(math.pi * (n - w) / max(1, args.iters - w)))
    return args.lr * max(0.0, (args.iters - n) / max(1.0, args.iters - w))  # WarmupDecayLR


def seqlen_at(step):
    if not args.cl:
        return args.seq
    frac = min(1.0, step / args.cl_steps)
    d = args.cl_min + frac * (args.cl_max - args.cl_min)
    return max(args.cl_min, int(d) // args.cl_step * args.cl_step)


class DynamicLossScaler:
    """DeepSpeed's ``DynamicLossScaler`` (scale factor 2, delayed shift = hysteresis)."""

    def __init__(self):
        self.cur_scale = 2.0**args.scale_power if args.fp16 else 1.0
        self.cur_iter, self.last_overflow_iter = 0, -1
        self.cur_hysteresis = args.hysteresis

    def update(self, overflow):
        if overflow:
            if args.hysteresis == 1 or self.cur_hysteresis == 1:
                if self.cur_scale == args.min_scale:
                    raise Exception(
                        "Current loss scale already at minimum - cannot decrease scale anymore."
                        " Exiting run."
                    )
                self.cur_scale = max(self.cur_scale / 2, args.min_scale)
            else:
                self.cur_hysteresis -= 1
            self.last_overflow_iter = self.cur_iter
        elif (self.cur_iter - self.last_overflow_iter) % args.scale_window == 0:
            self.cur_hysteresis = args.hysteresis
            self.cur_scale *= 2
        self.cur_iter += 1


scaler = DynamicLossScaler()
config = {
    "train_micro_batch_size_per_gpu": args.micro_bs,
    "gradient_accumulation_steps": args.gas,
    "train_batch_size": args.micro_bs * args.gas,
    "optimizer.type": "AdamW",
    "optimizer.params.lr": args.lr,
    "optimizer.params.weight_decay": args.wd,
    "scheduler.type": args.sched,
    "scheduler.params.warmup_num_steps": args.warmup,
    "scheduler.params.warmup_max_lr": args.lr,
    "scheduler.params.total_num_steps": args.iters,
    "gradient_clipping": args.clip,
    "fp16.enabled": bool(args.fp16),
    "fp16.loss_scale": 0,
    "fp16.initial_scale_power": args.scale_power,
    "fp16.loss_scale_window": args.scale_window,
    "fp16.hysteresis": args.hysteresis,
    "fp16.min_loss_scale": args.min_scale,
    "curriculum_learning.enabled": bool(args.cl),
    "curriculum_learning.curriculum_type": "seqlen",
    "curriculum_learning.min_difficulty": args.cl_min,
    "curriculum_learning.max_difficulty": args.cl_max,
    "curriculum_learning.schedule_type": "fixed_linear",
    "curriculum_learning.schedule_config.total_curriculum_step": args.cl_steps,
    "curriculum_learning.schedule_config.difficulty_step": args.cl_step,
    "steps_per_print": args.print_every,
    "seq_length": args.seq,
    "train_iters": args.iters,
    "loss_reduction": args.reduction,
    "model.hidden_size": args.hidden,
    "model.context": args.context,
    "seed": args.seed,
}

with mlflow.start_run():
    mlflow.log_params(config)
    global_samples, skipped, sched_n = 0, 0, 0
    t_start = time.perf_counter()
    for step in range(1, args.iters + 1):
        t0 = time.perf_counter()
        length = seqlen_at(step)
        for g in opt.param_groups:
            g["lr"] = lr_at(sched_n)
        losses = []
        for _ in range(args.gas):
            b = batch(args.micro_bs, length)
            logits = model(b[:, :-1])
            tgt = b[:, 1:].reshape(-1)
            per_tok = torch.nn.functional.cross_entropy(
                logits.float().reshape(-1, V), tgt, reduction="none"
            ).to(logits.dtype)  # per-token losses in the output dtype
            if args.reduction == "sum":  # summed in that dtype, divided afterwards
                loss = per_tok.sum() / tgt.numel()
            else:
                loss = per_tok.mean()
            (loss.float() * scaler.cur_scale / args.gas).backward()  # engine.backward(loss)
            losses.append(loss.float().item())
            global_samples += args.micro_bs
        train_loss = float(np.mean(losses))
        # engine.step(): fp16 gradients of the scaled loss; overflow → skip the step
        grads = [p.grad.half() if args.fp16 else p.grad for p in model.parameters()]
        overflow = bool(args.fp16) and not all(torch.isfinite(g).all() for g in grads)
        prev_scale = scaler.cur_scale
        if overflow:
            skipped += 1
            gn = float("nan")
        else:
            for m, g in zip(master, grads, strict=True):
                m.grad = g.float() / scaler.cur_scale
            gn = torch.nn.utils.clip_grad_norm_(
                master, args.clip if args.clip > 0 else float("inf")
            ).item()
            opt.step()
            sched_n += 1
            sync_model()
        for p in model.parameters():
            p.grad = None
        scaler.update(overflow)
        if overflow:
            print(
                f"[deepspeed] OVERFLOW! Rank 0 Skipping step. Attempted loss scale: {prev_scale},"
                f" reducing to {scaler.cur_scale}",
                flush=True,
            )
        events = {
            "Train/Samples/train_loss": train_loss,
            "Train/Samples/lr": opt.param_groups[0]["lr"],
        }
        if args.fp16:
            events["Train/Samples/loss_scale"] = scaler.cur_scale
        if not overflow:
            events["Train/Samples/grad_norm"] = gn
        dt = time.perf_counter() - t0
        if step % args.print_every == 0:
            avg = global_samples / (time.perf_counter() - t_start)
            cur = args.micro_bs * args.gas / dt
            events |= {"RunningAvgSamplesPerSec": avg, "CurrSamplesPerSec": cur}
            print(
                f"[INFO] [timer.py:stop] epoch=0/micro_step={step * args.gas}/global_step={step},"
                f" RunningAvgSamplesPerSec={avg}, CurrSamplesPerSec={cur},"
                f" MemAllocated=0.0GB, MaxMemAllocated=0.0GB",
                flush=True,
            )
            print(
                f"[INFO] [logging.py:log_dist] [Rank 0] step={step}, skipped={skipped},"
                f" lr=[{opt.param_groups[0]['lr']}], mom=[(0.9, 0.999)]",
                flush=True,
            )
        mlflow.log_metrics(events, step=global_samples)
    print(f"done: {args.iters} steps, {skipped} skipped, loss {train_loss:.4f}")
