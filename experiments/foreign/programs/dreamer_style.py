"""A DreamerV3-style world-model agent (danijar/dreamerv3's ``train`` loop) on a tiny RSSM, the
agent's logger scalars mirrored to MLflow by the team.

Plain PyTorch + the plain ``mlflow`` API (no dreamerv3 / jax import here).  What is imitated:

* the RSSM: a GRU deterministic state, a categorical stochastic state (``classes`` x
  ``groups`` one-hots with straight-through gradients, 1 % unimix), a posterior from the
  encoder's embedding, a prior from the deterministic state;
* the world-model loss: ``dyn`` (KL of the stop-gradient posterior to the prior) and ``rep``
  (the reverse) with free bits 1.0 and weights 0.5 / 0.1, the decoder's ``obs`` MSE, the
  reward head's symlog MSE (``rew``) and the continue head's binary cross-entropy (``con``);
* the actor-critic trained in imagination (``imag_horizon`` 10): lambda returns (0.95), the
  returns normalised by their 5-95 % percentile range (EMA), REINFORCE with the entropy bonus
  3e-4, the critic regressed on the lambda returns (``critic``), a slow critic target;
* the driver: ``train_ratio`` expressed as one training update every ``train_every``
  environment steps, batches of ``batch_size`` x ``batch_length`` from a uniform replay;
* the logger: ``train/loss/dyn``, ``train/loss/rep``, ``train/loss/obs``, ``train/loss/rew``,
  ``train/loss/con``, ``train/loss/actor``, ``train/loss/critic``, ``train/ent/actor``,
  ``train/ret``, ``fps/policy``, ``fps/train`` (averaged over each ``log_every`` env steps) and
  ``episode/score``, ``episode/length`` (every episode's end), all at step = environment steps.

Environment: a numpy "forager" on a 1-D track of 6 cells: the observation is the agent's and the
food's positions (one-hots, sensor noise) and an energy reading; actions left / stay / right;
reward 1 on reaching the food (which then moves), -0.01 per step; the episode ends when energy
runs out (30 steps, +10 per meal, at most 100).  Written without looking at the doctor.

Team options (the faults are real settings, data and code paths):

* ``--model_lr``, ``--actor_lr``, ``--critic_lr``, ``--batch_size``, ``--deter``,
  ``--train_every``, ``--imag_horizon``, ``--steps``, ``--entropy``;
* ``--replay_online 1``: the team's replay writes every new chunk to a file and rebuilds the
  replay from the directory before every batch (``replay_dir``);
* ``--report_video 1``: the team's report keeps every training update's imagined trajectories
  rendered as 64 x 64 RGB frames for an end-of-run video;
* ``--sensor_v2_step k``: from env step k the energy sensor's v2 firmware is used, which writes
  a dropped reading as ``--sensor_v2_dropout`` (``last`` = the previous reading, ``nan``).
"""

import os
import tempfile
import time

import _setup
import mlflow
import numpy as np
import torch
import torch.nn as nn
from torch.nn import functional as F

args = _setup.parse_flags(
    {
        "--seed": 0,
        "--steps": 3000,
        "--model_lr": 1e-3,
        "--actor_lr": 1e-3,
        "--critic_lr": 1e-3,
        "--batch_size": 8,
        "--batch_length": 12,
        "--deter": 48,
        "--classes": 4,
        "--groups": 4,
        "--train_every": 6,
        "--imag_horizon": 10,
        "--entropy": 3e-4,
        "--log_every": 200,
        "--replay_online": 0,
        "--report_video": 0,
        "--sensor_v2_step": 0,
        "--sensor_v2_dropout": "last",
    }
)
rng = _setup.seeded(args.seed)
TRACK = 6
OBS = 2 * TRACK + 1


class Forager:
    def __init__(self, seed):
        self.g = np.random.default_rng(seed)
        self.total = 0
        self.last_energy = 1.0

    def reset(self):
        self.pos, self.food = self.g.integers(0, TRACK, 2)
        self.energy, self.t = 30, 0
        return self.obs()

    def obs(self):
        o = np.zeros(OBS, np.float32)
        o[self.pos] = 1
        o[TRACK + self.food] = 1
        o[:-1] += self.g.normal(0, 0.05, OBS - 1)
        reading = self.energy / 30.0
        if args.sensor_v2_step and self.total >= args.sensor_v2_step and self.g.random() < 0.02:
            reading = np.nan if args.sensor_v2_dropout == "nan" else self.last_energy
        self.last_energy = reading
        o[-1] = reading
        return o

    def step(self, a):
        self.total += 1
        self.t += 1
        self.pos = int(np.clip(self.pos + a - 1, 0, TRACK - 1))
        self.energy -= 1
        r = -0.01
        if self.pos == self.food:
            r += 1.0
            self.energy = min(self.energy + 10, 60)
            self.food = self.g.integers(0, TRACK)
        done = self.energy <= 0 or self.t >= 100
        return self.obs(), r, done


def symlog(x):
    return torch.sign(x) * torch.log1p(x.abs())


def mlp(i, o, h=48):
    return nn.Sequential(nn.Linear(i, h), nn.SiLU(), nn.Linear(h, h), nn.SiLU(), nn.Linear(h, o))


class RSSM(nn.Module):
    def __init__(self):
        super().__init__()
        self.stoch = args.classes * args.groups
        self.enc = mlp(OBS, 32)
        self.img_in = nn.Linear(self.stoch + 3, args.deter)
        self.gru = nn.GRUCell(args.deter, args.deter)
        self.prior = mlp(args.deter, self.stoch)
        self.post = mlp(args.deter + 32, self.stoch)
        feat = args.deter + self.stoch
        self.dec = mlp(feat, OBS)
        self.rew = mlp(feat, 1)
        self.con = mlp(feat, 1)

    def dist(self, logits):
        p = F.softmax(logits.view(-1, args.groups, args.classes), -1)
        return 0.99 * p + 0.01 / args.classes

    def sample(self, probs):
        idx = torch.multinomial(probs.view(-1, args.classes), 1).view(probs.shape[:-1])
        one = F.one_hot(idx, args.classes).float()
        return (one + probs - probs.detach()).view(len(probs), -1)

    def img_step(self, h, z, a):
        h = self.gru(F.silu(self.img_in(torch.cat([z, a], -1))), h)
        return h, self.dist(self.prior(h))

    def initial(self, n):
        return torch.zeros(n, args.deter), torch.zeros(n, self.stoch)


def kl(p, q):
    return (p * (p.log() - q.log())).sum(-1).sum(-1)


wm = RSSM()
actor = mlp(args.deter + wm.stoch, 3)
critic = mlp(args.deter + wm.stoch, 1)
slow_critic = mlp(args.deter + wm.stoch, 1)
slow_critic.load_state_dict(critic.state_dict())
opt_wm = torch.optim.Adam(wm.parameters(), lr=args.model_lr, eps=1e-8)
opt_actor = torch.optim.Adam(actor.parameters(), lr=args.actor_lr, eps=1e-5)
opt_critic = torch.optim.Adam(critic.parameters(), lr=args.critic_lr, eps=1e-5)
ret_lo, ret_hi = 0.0, 1.0


class Replay:
    def __init__(self):
        self.obs, self.act, self.rew, self.cont = [], [], [], []
        self.dir = tempfile.mkdtemp(prefix="replay-")
        self.chunk = []

    def add(self, o, a, r, c):
        self.obs.append(o)
        self.act.append(a)
        self.rew.append(r)
        self.cont.append(c)
        if args.replay_online:
            self.chunk.append(np.concatenate([o, [a, r, c]]))
            if len(self.chunk) == 4:  # the online replay's chunk size
                n = len(os.listdir(self.dir))
                np.savetxt(os.path.join(self.dir, f"chunk-{n:06}.txt"), np.array(self.chunk))
                self.chunk = []

    def sample(self):
        if args.replay_online:  # rebuild the replay from its directory
            rows = [np.loadtxt(os.path.join(self.dir, f)) for f in sorted(os.listdir(self.dir))]
            rows = np.concatenate(rows) if rows else np.zeros((0, OBS + 3))
            n = len(rows)
            src = np.concatenate(
                [rows, np.column_stack([self.obs, self.act, self.rew, self.cont])[n:]]
            )
            obs, act, rew, cont = src[:, :OBS], src[:, OBS], src[:, OBS + 1], src[:, OBS + 2]
        else:
            obs, act = np.array(self.obs), np.array(self.act)
            rew, cont = np.array(self.rew), np.array(self.cont)
        starts = rng.integers(0, len(obs) - args.batch_length, args.batch_size)
        ix = starts[:, None] + np.arange(args.batch_length)
        return (
            torch.tensor(obs[ix], dtype=torch.float32),
            F.one_hot(torch.tensor(act[ix]).long(), 3).float(),
            torch.tensor(rew[ix], dtype=torch.float32),
            torch.tensor(cont[ix], dtype=torch.float32),
        )


video = []


def train_step(replay):
    global ret_lo, ret_hi
    obs, act, rew, cont = replay.sample()
    B, T = obs.shape[:2]
    h, z = wm.initial(B)
    embed = wm.enc(obs)
    feats, post_p, prior_p = [], [], []
    for t in range(T):
        prev_a = act[:, t - 1] if t else torch.zeros(B, 3)
        h, prior = wm.img_step(h, z, prev_a)
        post = wm.dist(wm.post(torch.cat([h, embed[:, t]], -1)))
        z = wm.sample(post)
        feats.append(torch.cat([h, z], -1))
        post_p.append(post)
        prior_p.append(prior)
    feat = torch.stack(feats, 1)
    post_p, prior_p = torch.stack(post_p, 1), torch.stack(prior_p, 1)
    dyn = kl(post_p.detach(), prior_p).clamp(min=1.0).mean()
    rep = kl(post_p, prior_p.detach()).clamp(min=1.0).mean()
    obs_l = ((wm.dec(feat) - obs) ** 2).sum(-1).mean()
    rew_l = ((wm.rew(feat).squeeze(-1) - symlog(rew)) ** 2).mean()
    con_l = F.binary_cross_entropy_with_logits(wm.con(feat).squeeze(-1), cont)
    loss = 0.5 * dyn + 0.1 * rep + obs_l + rew_l + con_l
    opt_wm.zero_grad()
    loss.backward()
    nn.utils.clip_grad_norm_(wm.parameters(), 1000.0)
    opt_wm.step()

    # imagination from every posterior state
    h = feat[..., : args.deter].reshape(-1, args.deter).detach()
    z = feat[..., args.deter :].reshape(-1, wm.stoch).detach()
    traj, logps, ents = [torch.cat([h, z], -1)], [], []
    for _ in range(args.imag_horizon):
        logits = actor(traj[-1].detach())
        dist = torch.distributions.Categorical(logits=logits)
        a = dist.sample()
        logps.append(dist.log_prob(a))
        ents.append(dist.entropy())
        with torch.no_grad():
            h, prior = wm.img_step(h, z, F.one_hot(a, 3).float())
            z = wm.sample(prior)
        traj.append(torch.cat([h, z], -1))
    traj = torch.stack(traj)
    with torch.no_grad():
        r = wm.rew(traj[1:]).squeeze(-1)
        r = torch.sign(r) * (torch.exp(r.abs()) - 1)
        c = torch.sigmoid(wm.con(traj[1:])).squeeze(-1) * 0.985
        v = slow_critic(traj).squeeze(-1)
        rets = [v[-1]]
        for t in reversed(range(args.imag_horizon)):
            rets.append(r[t] + c[t] * (0.05 * v[t + 1] + 0.95 * rets[-1]))
        ret = torch.stack(rets[::-1][:-1])
        lo, hi = torch.quantile(ret, 0.05).item(), torch.quantile(ret, 0.95).item()
        ret_lo, ret_hi = 0.99 * ret_lo + 0.01 * lo, 0.99 * ret_hi + 0.01 * hi
        scale = max(1.0, ret_hi - ret_lo)
        adv = (ret - v[:-1]) / scale
        if args.report_video:
            frames = np.zeros((len(traj), 16, 64, 64, 3), np.float32)  # 16 imagined rollouts
            frames[..., 0] = traj[:, :16, :1, None].numpy()
            video.append(frames)
    logp, ent = torch.stack(logps), torch.stack(ents)
    actor_l = -(logp * adv).mean() - args.entropy * ent.mean()
    opt_actor.zero_grad()
    actor_l.backward()
    nn.utils.clip_grad_norm_(actor.parameters(), 100.0)
    opt_actor.step()
    critic_l = ((critic(traj[:-1].detach()).squeeze(-1) - ret) ** 2).mean()
    opt_critic.zero_grad()
    critic_l.backward()
    nn.utils.clip_grad_norm_(critic.parameters(), 100.0)
    opt_critic.step()
    with torch.no_grad():
        for ps, pt in zip(critic.parameters(), slow_critic.parameters(), strict=True):
            pt.mul_(0.98).add_(0.02 * ps)
    return {
        "train/loss/dyn": dyn.item(),
        "train/loss/rep": rep.item(),
        "train/loss/obs": obs_l.item(),
        "train/loss/rew": rew_l.item(),
        "train/loss/con": con_l.item(),
        "train/loss/actor": actor_l.item(),
        "train/loss/critic": critic_l.item(),
        "train/ent/actor": ent.mean().item(),
        "train/ret": ret.mean().item(),
    }


with mlflow.start_run():
    mlflow.log_params(vars(args))
    env = Forager(300 + args.seed)
    replay = Replay()
    o = env.reset()
    h, z = wm.initial(1)
    a_prev = torch.zeros(1, 3)
    score, length = 0.0, 0
    agg, t_policy, n_policy, t_train, n_train = {}, 0.0, 0, 0.0, 0
    print(f"Observation space: {OBS}  Action space: 3  steps: {args.steps}", flush=True)
    for step in range(1, args.steps + 1):
        t0 = time.time()
        with torch.no_grad():
            emb = wm.enc(torch.tensor(o)[None])
            h, _ = wm.img_step(h, z, a_prev)
            z = wm.sample(wm.dist(wm.post(torch.cat([h, emb], -1))))
            if step < 400:  # prefill with random actions
                a = int(rng.integers(0, 3))
            else:
                a = int(
                    torch.distributions.Categorical(logits=actor(torch.cat([h, z], -1))).sample()
                )
        o2, r, done = env.step(a)
        t_policy += time.time() - t0
        n_policy += 1
        replay.add(o, a, r, 0.0 if done else 1.0)
        score += r
        length += 1
        o, a_prev = o2, F.one_hot(torch.tensor([a]), 3).float()
        if done:
            mlflow.log_metrics({"episode/score": score, "episode/length": length}, step=step)
            print(f"Episode has {length} steps and return {score:.1f}.", flush=True)
            o = env.reset()
            h, z = wm.initial(1)
            a_prev = torch.zeros(1, 3)
            score, length = 0.0, 0
        if step >= 400 and step % args.train_every == 0:
            t1 = time.time()
            for k, v in train_step(replay).items():
                agg.setdefault(k, []).append(v)
            t_train += time.time() - t1
            n_train += args.batch_size * args.batch_length
        if step % args.log_every == 0 and agg:
            row = {k: float(np.mean(v)) for k, v in agg.items()}
            row["fps/policy"] = n_policy / max(t_policy, 1e-9)
            row["fps/train"] = n_train / max(t_train, 1e-9)
            mlflow.log_metrics(row, step=step)
            print(
                f"[{step}] " + " / ".join(f"{k.split('/')[-1]} {v:.3g}" for k, v in row.items()),
                flush=True,
            )
            agg, t_policy, n_policy, t_train, n_train = {}, 0.0, 0, 0.0, 0
