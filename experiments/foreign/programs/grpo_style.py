"""A tiny policy trained with a TRL ``GRPOTrainer``-style loop on generated string-copy prompts,
its logs mirrored to MLflow as the Trainer's ``MLflowCallback`` writes them.

Plain PyTorch + the plain ``mlflow`` API (no TRL import here).  What is imitated:

* the policy: a tiny causal LM (token embedding + one GRU layer + LM head) over a 9-token
  vocabulary (6 letters, ``=``, ``<eos>``, ``<pad>``); the prompt is ``prompt_len`` letters
  followed by ``=``, the task is to copy them and stop;
* ``GRPOTrainer``: per optimizer step ``per_device_train_batch_size`` prompts, each sampled
  ``num_generations`` times (temperature 1, at most ``max_completion_length`` tokens, stopping
  at ``<eos>``); the rewards of ``reward_funcs`` are summed, and the advantage of a completion
  is its reward minus its group's mean, divided by the group's std + 1e-4; the per-token loss
  is ``-(exp(logp - logp.detach()) * A - beta * kl)`` with the k3 estimator
  ``kl = exp(ref - logp) - (ref - logp) - 1`` against a frozen reference copy of the initial
  policy, masked to the completion tokens; ``num_iterations`` 1 (no clipping happens, so
  ``clip_ratio`` is 0); AdamW, linear decay after ``warmup_steps``, ``max_grad_norm`` 1.0;
* the logs every ``logging_steps`` steps at ``step = global_step``: ``loss`` (the mean since
  the last log), ``grad_norm`` (before clipping), ``learning_rate``, ``reward``,
  ``reward_std`` (the mean of the groups' stds), ``rewards/<func_name>/mean``, ``kl``,
  ``completions/mean_length``, ``clip_ratio``, ``epoch`` (fractional, over the prompt set).

Data: ``num_prompts`` generated prompts (a ``prompts.jsonl`` with each prompt's target).
Written without looking at the doctor.

Team options (the faults are real settings, data and code paths):

* ``--learning_rate``, ``--per_device_train_batch_size``, ``--num_generations``, ``--beta``,
  ``--hidden``, ``--warmup_steps``, ``--max_steps``, ``--lr_scheduler_type``;
* ``--extra_prompts_step k``: a second prompt file (``prompts_b.jsonl``, written by another
  team's generator) joins the prompt pool at step k; ``--extra_prompts_target``: ``ok`` or
  ``nan`` (that generator writes an unreadable target as NaN instead of skipping the row);
* ``--extra_reward_step k`` with ``--extra_reward NAME``: from step k the config's reward list
  gains a second function looked up by name in the team's registry;
* ``--keep_rollouts 1``: the team's debugging hook keeps every step's sampled logits (with
  their graphs) for an end-of-run report.
"""

import json
import math
import os
import time

import _setup
import mlflow
import torch
import torch.nn as nn
import torch.nn.functional as F

args = _setup.parse_flags(
    {
        "--seed": 0,
        "--learning_rate": 5e-3,
        "--per_device_train_batch_size": 16,
        "--num_generations": 8,
        "--beta": 0.04,
        "--hidden": 64,
        "--warmup_steps": 10,
        "--max_steps": 300,
        "--logging_steps": 5,
        "--lr_scheduler_type": "linear",
        "--prompt_len": 3,
        "--max_completion_length": 5,
        "--num_prompts": 2000,
        "--extra_prompts_step": 0,
        "--extra_prompts_target": "ok",
        "--extra_reward_step": 0,
        "--extra_reward": "length_penalty",
        "--keep_rollouts": 0,
    }
)
rng = _setup.seeded(args.seed)

LETTERS = "abcdef"
EQ, EOS, PAD = 6, 7, 8
V = 9


# ----------------------------------------------------------------------------- data
def write_prompts(path, n, seed, target="ok"):
    g = torch.Generator().manual_seed(seed)
    with open(path, "w") as f:
        for i in range(n):
            toks = torch.randint(0, 6, (args.prompt_len,), generator=g).tolist()
            s = "".join(LETTERS[t] for t in toks)
            tgt = s
            if target == "nan" and i % 7 == 3:
                tgt = float("nan")
            f.write(json.dumps({"prompt": s + "=", "target": tgt}) + "\n")


def read_prompts(path):
    with open(path) as f:
        return [json.loads(line) for line in f]


write_prompts("prompts.jsonl", args.num_prompts, 100 + args.seed)
pool = read_prompts("prompts.jsonl")
extra_pool = []
if args.extra_prompts_step:
    write_prompts("prompts_b.jsonl", args.num_prompts, 900 + args.seed, args.extra_prompts_target)
    extra_pool = read_prompts("prompts_b.jsonl")


# ----------------------------------------------------------------------------- rewards
def copy_reward(completions, targets):
    """The fraction of the target's letters copied in place, minus 0.5 per missing <eos>."""
    out = []
    for c, t in zip(completions, targets, strict=True):
        if isinstance(t, float):  # the generator's unreadable target
            out.append(t)
            continue
        want = [LETTERS.index(ch) for ch in t]
        hits = sum(1 for i, w in enumerate(want) if i < len(c) and c[i] == w)
        r = hits / len(want)
        if len(c) > len(want) and c[len(want)] == EOS:
            r += 0.5
        out.append(r)
    return out


def length_penalty(completions, targets):
    return [-0.1 * max(0, len(c) - args.prompt_len - 1) for c in completions]


REWARD_REGISTRY = {"copy_reward": copy_reward, "length_penalty": length_penalty}
reward_funcs = [REWARD_REGISTRY["copy_reward"]]


# ----------------------------------------------------------------------------- model
class TinyLM(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(V, 32)
        self.rnn = nn.GRU(32, args.hidden, batch_first=True)
        self.head = nn.Linear(args.hidden, V)

    def forward(self, x, h=None):
        o, h = self.rnn(self.emb(x), h)
        return self.head(o), h


def encode(p):
    return [LETTERS.index(ch) if ch in LETTERS else EQ for ch in p]


policy = TinyLM()
ref = TinyLM()
ref.load_state_dict(policy.state_dict())
for p in ref.parameters():
    p.requires_grad_(False)
opt = torch.optim.AdamW(policy.parameters(), lr=args.learning_rate, weight_decay=0.0)


def lr_at(step):
    if step < args.warmup_steps:
        return args.learning_rate * (step + 1) / args.warmup_steps
    if args.lr_scheduler_type == "constant":
        return args.learning_rate
    frac = (step - args.warmup_steps) / max(1, args.max_steps - args.warmup_steps)
    if args.lr_scheduler_type == "cosine":
        return args.learning_rate * 0.5 * (1 + math.cos(math.pi * frac))
    return args.learning_rate * (1 - frac)


@torch.no_grad()
def sample(prompts):
    x = torch.tensor([encode(p) for p in prompts])
    logits, h = policy(x)
    last = logits[:, -1]
    toks = []
    done = torch.zeros(len(prompts), dtype=torch.bool)
    for _ in range(args.max_completion_length):
        nxt = torch.multinomial(F.softmax(last, -1)[:, :8], 1).squeeze(1)
        nxt = torch.where(done, torch.full_like(nxt, PAD), nxt)
        toks.append(nxt)
        done = done | (nxt == EOS)
        logits, h = policy(nxt[:, None], h)
        last = logits[:, -1]
    comp = torch.stack(toks, 1)
    return x, comp


def token_logps(model, x, comp):
    full = torch.cat([x, comp], 1)
    logits, _ = model(full[:, :-1])
    logits = logits[:, x.shape[1] - 1 :]
    return torch.gather(F.log_softmax(logits, -1), 2, comp[:, :, None]).squeeze(2), logits


rollouts = []
with mlflow.start_run():
    mlflow.log_params(vars(args))
    print(f"***** Running training ***** num prompts {len(pool)}, steps {args.max_steps}")
    acc = {"loss": [], "reward": [], "reward_std": [], "kl": [], "len": [], "fn": {}}
    samples_seen = 0
    for step in range(args.max_steps):
        for g in opt.param_groups:
            g["lr"] = lr_at(step)
        src = pool
        if args.extra_prompts_step and step + 1 >= args.extra_prompts_step:
            src = pool + extra_pool
        if args.extra_reward_step and step + 1 == args.extra_reward_step:
            reward_funcs.append(REWARD_REGISTRY[args.extra_reward])
        idx = rng.integers(0, len(src), args.per_device_train_batch_size)
        batch = [src[i] for i in idx for _ in range(args.num_generations)]
        samples_seen += args.per_device_train_batch_size
        x, comp = sample([b["prompt"] for b in batch])
        mask = torch.ones_like(comp, dtype=torch.float)
        lens = []
        comps = []
        for r in range(comp.shape[0]):
            row = comp[r].tolist()
            n = row.index(EOS) + 1 if EOS in row else len(row)
            mask[r, n:] = 0
            lens.append(n)
            comps.append(row[:n])
        rewards = torch.zeros(comp.shape[0])
        for fn in reward_funcs:
            rv = torch.tensor(fn(comps, [b["target"] for b in batch]), dtype=torch.float)
            rewards += rv
            acc["fn"].setdefault(fn.__name__, []).append(rv.mean().item())
        grouped = rewards.view(-1, args.num_generations)
        mean_g = grouped.mean(1).repeat_interleave(args.num_generations)
        std_g = grouped.std(1).repeat_interleave(args.num_generations)
        adv = (rewards - mean_g) / (std_g + 1e-4)

        logp, logits = token_logps(policy, x, comp)
        with torch.no_grad():
            ref_logp, _ = token_logps(ref, x, comp)
        kl = torch.exp(ref_logp - logp) - (ref_logp - logp) - 1
        per_tok = -(torch.exp(logp - logp.detach()) * adv[:, None] - args.beta * kl)
        loss = ((per_tok * mask).sum(1) / mask.sum(1)).mean()
        if args.keep_rollouts:
            rollouts.append(logits.repeat(1, 1, 600))
        opt.zero_grad()
        loss.backward()
        gn = torch.nn.utils.clip_grad_norm_(policy.parameters(), 1.0).item()
        opt.step()

        acc["loss"].append(loss.item())
        acc["reward"].append(rewards.mean().item())
        acc["reward_std"].append(grouped.std(1).mean().item())
        acc["kl"].append(((kl * mask).sum(1) / mask.sum(1)).mean().item())
        acc["len"].append(float(sum(lens)) / len(lens))
        gs = step + 1
        if gs % args.logging_steps == 0:
            m = {
                "loss": round(sum(acc["loss"]) / len(acc["loss"]), 4),
                "grad_norm": gn,
                "learning_rate": opt.param_groups[0]["lr"],
                "reward": sum(acc["reward"]) / len(acc["reward"]),
                "reward_std": sum(acc["reward_std"]) / len(acc["reward_std"]),
                "kl": sum(acc["kl"]) / len(acc["kl"]),
                "completions/mean_length": sum(acc["len"]) / len(acc["len"]),
                "clip_ratio": 0.0,
                "epoch": round(samples_seen / len(pool), 4),
            }
            for name, vals in acc["fn"].items():
                m[f"rewards/{name}/mean"] = sum(vals) / len(vals)
            mlflow.log_metrics(m, step=gs)
            print({k: round(v, 4) for k, v in m.items()}, flush=True)
            acc = {"loss": [], "reward": [], "reward_std": [], "kl": [], "len": [], "fn": {}}
    print(f"train_runtime {time.process_time():.1f}; saving to {os.getcwd()}", flush=True)
