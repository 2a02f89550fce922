"""PPO fine-tuning of a tiny policy with OpenRLHF's ``train_ppo.py`` recipe (``PPOTrainer``
with an actor, a critic, a frozen initial/reference model and a programmatic reward), its wandb
scalars mirrored to MLflow by the team.

Plain PyTorch + the plain ``mlflow`` API (no openrlhf import here).  What is imitated:

* the actor: a GRU language model over a 9-token vocabulary (8 letters and ``<eos>``) that
  reads a prompt of ``prompt_len`` letters and samples up to ``generate_max_len`` tokens; it
  starts from a short supervised warm start (noisy continuations) and the reference model is a
  frozen copy of that start; the critic is a GRU of its own with a value head;
* ``make_experience``: per token the KL penalty ``-init_kl_coef * (log pi - log pi_ref)``,
  the reward model's score added at the last token, GAE (``gamma`` 1, ``lambd`` 0.95),
  advantages whitened; ``rollout_batch_size`` prompts per global step, ``max_epochs`` 1,
  ``micro_train_batch_size`` minibatches, PPO clip ``eps_clip`` 0.2, value clip 0.2,
  Adam for each model with ``actor_learning_rate`` and ``critic_learning_rate``, cosine
  with warm-up ``lr_warmup_ratio``, ``max_norm`` 1.0;
* the reward: the fraction of the first ``prompt_len`` answer tokens that continue the
  alphabet (mod 8) from the prompt's last letter, minus 0.1 per token beyond the prompt's
  length (the team's "continue" task); the warm start sees continuations with 80 % of their
  letters replaced at random;
* per global step from 1 the wandb names ``train/policy_loss``, ``train/critic_loss``,
  ``train/reward``, ``train/return``, ``train/kl``, ``train/response_length``,
  ``train/actor_lr``, ``train/critic_lr`` (and ``train/ptx_loss`` with ``--ptx_coef``); every
  ``eval_steps`` steps ``eval/reward`` = the mean reward of greedy answers to held-out prompts.

Written without looking at the doctor.

Team options (the faults are real settings, data and code paths):

* ``--actor_learning_rate``, ``--critic_learning_rate``, ``--rollout_batch_size``,
  ``--num_episodes`` (global steps), ``--hidden``, ``--init_kl_coef``, ``--lr_warmup_ratio``,
  ``--n_eval``, ``--ptx_coef``;
* ``--prompt2_step k``: a second prompt file (a JSONL of records) joins at step k; the
  team reads each record's ``--prompt2_key`` (default ``input``);
* ``--keep_experience 1``: the team's replay dump keeps every step's experience, actor
  logits still attached to the graph, expanded to a per-token 2048-wide report layout.
"""

import math

import _setup
import mlflow
import torch
import torch.nn as nn
import torch.nn.functional as F

args = _setup.parse_flags(
    {
        "--seed": 0,
        "--actor_learning_rate": 5e-3,
        "--critic_learning_rate": 2e-3,
        "--rollout_batch_size": 64,
        "--micro_train_batch_size": 32,
        "--num_episodes": 120,
        "--hidden": 64,
        "--init_kl_coef": 0.01,
        "--lr_warmup_ratio": 0.03,
        "--eval_steps": 10,
        "--n_eval": 128,
        "--ptx_coef": 0.0,
        "--prompt_len": 4,
        "--generate_max_len": 7,
        "--prompt2_step": 0,
        "--prompt2_key": "input",
        "--keep_experience": 0,
    }
)
rng = _setup.seeded(args.seed)
NL, EOS = 8, 8
V = 9
P, T = args.prompt_len, args.generate_max_len


class GRULM(nn.Module):
    def __init__(self, value=False):
        super().__init__()
        self.emb = nn.Embedding(V + 1, args.hidden)  # V = <bos>/separator
        self.gru = nn.GRU(args.hidden, args.hidden, batch_first=True)
        self.head = nn.Linear(args.hidden, 1 if value else V)

    def forward(self, x, h=None):
        o, h = self.gru(self.emb(x), h)
        return self.head(o), h


def prompts(n, g=None):
    return torch.randint(0, NL, (n, P), generator=g)


def reward_fn(prompt, resp, length):
    copied = torch.zeros(len(prompt))
    for i in range(P):
        copied += ((resp[:, i] == (prompt[:, -1] + i + 1) % NL) & (length > i)).float()
    return copied / P - 0.1 * torch.clamp(length - P, min=0).float()


def context(prompt):
    return torch.cat([prompt, torch.full((len(prompt), 1), V)], 1)


def generate(actor, prompt, greedy=False):
    logits, h = actor(context(prompt))
    last = logits[:, -1]
    toks, done = [], torch.zeros(len(prompt), dtype=torch.bool)
    length = torch.zeros(len(prompt), dtype=torch.long)
    for _ in range(T):
        t = last.argmax(-1) if greedy else torch.multinomial(F.softmax(last, -1), 1).squeeze(1)
        t = torch.where(done, torch.full_like(t, EOS), t)
        toks.append(t)
        length += (~done).long()
        done = done | (t == EOS)
        lg, h = actor(t.unsqueeze(1), h)
        last = lg[:, -1]
    return torch.stack(toks, 1), length


def seq_logprobs(model, prompt, resp):
    x = torch.cat([context(prompt), resp[:, :-1]], 1)
    logits, _ = model(x)
    lp = F.log_softmax(logits[:, P:], -1)
    return lp.gather(-1, resp.unsqueeze(-1)).squeeze(-1), logits


# ----------------------------------------------------------------------------- warm start
actor = GRULM()
sft_opt = torch.optim.Adam(actor.parameters(), lr=3e-3)
for _ in range(60):
    p = prompts(64)
    cont = (p[:, -1:] + torch.arange(1, P + 1)) % NL
    noisy = torch.where(torch.rand(p.shape) < 0.8, torch.randint(0, NL, p.shape), cont)
    resp = torch.cat([noisy, torch.full((64, T - P), EOS)], 1)
    lp, _ = seq_logprobs(actor, p, resp)
    sft_opt.zero_grad()
    (-lp.mean()).backward()
    sft_opt.step()
ref = GRULM()
ref.load_state_dict(actor.state_dict())
for q in ref.parameters():
    q.requires_grad_(False)
critic = GRULM(value=True)
a_opt = torch.optim.Adam(actor.parameters(), lr=args.actor_learning_rate)
c_opt = torch.optim.Adam(critic.parameters(), lr=args.critic_learning_rate)
warm = max(1, int(args.lr_warmup_ratio * args.num_episodes))


def sched(base, step):
    if step < warm:
        return base * (step + 1) / warm
    pr = (step - warm) / max(1, args.num_episodes - warm)
    return base * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * pr)))


def load_prompt2(n):
    records = [{"input": prompts(1)[0].tolist(), "label": "continue"} for _ in range(n)]
    return torch.tensor([r[args.prompt2_key] for r in records])


eval_prompts = prompts(args.n_eval, torch.Generator().manual_seed(777))
kept = []

with mlflow.start_run():
    mlflow.log_params(vars(args))
    print(f"actor/critic: GRU hidden {args.hidden}; {args.num_episodes} global steps", flush=True)
    for step in range(1, args.num_episodes + 1):
        a_lr = sched(args.actor_learning_rate, step - 1)
        c_lr = sched(args.critic_learning_rate, step - 1)
        for grp in a_opt.param_groups:
            grp["lr"] = a_lr
        for grp in c_opt.param_groups:
            grp["lr"] = c_lr
        # ---------------------------------------------------------------- make_experience
        p = prompts(args.rollout_batch_size)
        if args.prompt2_step and step >= args.prompt2_step:
            h = args.rollout_batch_size // 2
            p = torch.cat([p[h:], load_prompt2(h)])
        with torch.no_grad():
            resp, length = generate(actor, p)
            old_lp, _ = seq_logprobs(actor, p, resp)
            ref_lp, _ = seq_logprobs(ref, p, resp)
            vin = torch.cat([context(p), resp[:, :-1]], 1)
            values = critic(vin)[0][:, P:, 0]
            mask = (torch.arange(T).unsqueeze(0) < length.unsqueeze(1)).float()
            r = reward_fn(p, resp, length)
            kl = (old_lp - ref_lp) * mask
            rewards = -args.init_kl_coef * kl
            last = (length - 1).clamp(min=0)
            rewards[torch.arange(len(p)), last] += r
            adv, gae = torch.zeros_like(rewards), torch.zeros(len(p))
            for t in reversed(range(T)):
                nv = values[:, t + 1] * mask[:, t + 1] if t + 1 < T else torch.zeros(len(p))
                delta = rewards[:, t] + nv - values[:, t]
                gae = (delta + 0.95 * gae) * mask[:, t]
                adv[:, t] = gae
            returns = adv + values
            adv = (adv - adv[mask > 0].mean()) / (adv[mask > 0].std() + 1e-8) * mask
        # ---------------------------------------------------------------- ppo_train
        pl_s, cl_s, ptx_s, nb = 0.0, 0.0, 0.0, 0
        perm = torch.from_numpy(rng.permutation(len(p)))
        for i in range(0, len(p), args.micro_train_batch_size):
            b = perm[i : i + args.micro_train_batch_size]
            m = mask[b]
            lp, logits = seq_logprobs(actor, p[b], resp[b])
            ratio = torch.exp(lp - old_lp[b])
            s1, s2 = ratio * adv[b], ratio.clamp(0.8, 1.2) * adv[b]
            pl = -(torch.min(s1, s2) * m).sum() / m.sum()
            loss = pl
            if args.ptx_coef:
                pp = prompts(len(b))
                sft = torch.cat([pp, torch.full((len(b), T - P), EOS)], 1)
                ptx = -seq_logprobs(actor, pp, sft)[0].mean()
                loss = loss + args.ptx_coef * ptx
                ptx_s += ptx.item()
            a_opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(actor.parameters(), 1.0)
            a_opt.step()
            if args.keep_experience:
                kept.append(logits.unsqueeze(-1).expand(-1, -1, -1, 2048) * 1.0)
            v = critic(torch.cat([context(p[b]), resp[b][:, :-1]], 1))[0][:, P:, 0]
            vc = values[b] + (v - values[b]).clamp(-0.2, 0.2)
            cl = (
                0.5 * (torch.max((v - returns[b]) ** 2, (vc - returns[b]) ** 2) * m).sum() / m.sum()
            )
            c_opt.zero_grad()
            cl.backward()
            torch.nn.utils.clip_grad_norm_(critic.parameters(), 1.0)
            c_opt.step()
            pl_s, cl_s, nb = pl_s + pl.item(), cl_s + cl.item(), nb + 1
        met = {
            "train/policy_loss": pl_s / nb,
            "train/critic_loss": cl_s / nb,
            "train/reward": r.mean().item(),
            "train/return": (returns[:, 0]).mean().item(),
            "train/kl": (kl.sum(1) / length.clamp(min=1)).mean().item(),
            "train/response_length": length.float().mean().item(),
            "train/actor_lr": a_lr,
            "train/critic_lr": c_lr,
        }
        if args.ptx_coef:
            met["train/ptx_loss"] = ptx_s / nb
        mlflow.log_metrics(met, step=step)
        if step % 10 == 0:
            print(
                f"Train epoch [1/1] step {step}: policy_loss={met['train/policy_loss']:.4f} "
                f"critic_loss={met['train/critic_loss']:.4f} reward={met['train/reward']:.4f} "
                f"kl={met['train/kl']:.4f} response_length={met['train/response_length']:.2f}",
                flush=True,
            )
        if step % args.eval_steps == 0:
            with torch.no_grad():
                er, el = generate(actor, eval_prompts, greedy=True)
                ev = reward_fn(eval_prompts, er, el).mean().item()
            mlflow.log_metrics({"eval/reward": ev}, step=step)
            print(f"Evaluate step {step}: eval/reward={ev:.4f}", flush=True)
    if kept:
        print(f"replay dump: {len(kept)} micro-batches kept", flush=True)
