"""A tiny PPO actor-critic trained the way Google Brax's ``brax.training.agents.ppo.train``
does, its ``progress_fn`` metrics mirrored to MLflow by the team.

Plain PyTorch + numpy + the plain ``mlflow`` API (no JAX, no brax import here).  What is
imitated:

* the environment: ``PointReach``, a 2-D point mass (velocity-controlled, ``dt`` 0.1, actions
  in [-1, 1]) that must reach a goal drawn per episode; observation = position, goal - position
  and the last action (6 floats); reward = -distance - 0.01 |a|^2, +1 and done within 0.1 of
  the goal; ``episode_length`` 50 with brax's ``EpisodeWrapper``/``AutoResetWrapper``
  (truncation at the limit, reset on done), ``num_envs`` vectorised environments in numpy;
* ``ppo.train``: ``num_timesteps``, ``num_envs``, ``unroll_length``, the environments split into
  ``num_minibatches`` minibatches per SGD pass, ``num_updates_per_batch`` passes, ``learning_rate``
  (Adam, constant), ``entropy_cost``, ``discounting``, ``reward_scaling``, GAE lambda 0.95,
  clipping epsilon 0.3, ``normalize_advantage``, a tanh-squashed normal policy (brax's
  ``NormalTanhDistribution``; the entropy of the pre-tanh normal), the value loss
  ``0.5 * 0.5 * mean((v - target)^2)`` and ``entropy_loss = entropy_cost * -entropy``;
* the evaluator: every ``num_timesteps / num_evals`` environment steps, ``num_eval_envs``
  deterministic episodes; ``progress_fn(num_steps, metrics)`` receives
  ``eval/episode_reward``, ``eval/episode_reward_std``, ``eval/avg_episode_length``,
  ``eval/walltime``, ``eval/sps`` and, after the first, the training metrics of the last
  update: ``training/sps``, ``training/walltime``, ``training/policy_loss``,
  ``training/v_loss``, ``training/entropy_loss``, ``training/total_loss``; the team's
  ``progress_fn`` calls ``mlflow.log_metrics(metrics, step=num_steps)``.

Written without looking at the doctor.

Team options (the faults are real settings and code paths):

* ``--learning_rate``, ``--num_envs``, ``--num_minibatches``,
  ``--hidden``, ``--entropy_cost``, ``--num_timesteps``, ``--num_evals``,
  ``--num_eval_envs``, ``--reward_scaling``, ``--unroll_length``;
* ``--render_eval 1``: the team's evaluator renders every evaluation episode (64 x 64 RGB
  float32 frames) and keeps them for a video at the end of training;
* ``--log_transitions 1``: the team's transition logger appends every rollout's actions and
  rewards (of the first 16 environments) to ``transitions.json`` (read whole, extended,
  written back) for an offline data set.
"""

import json
import math
import time

import _setup
import mlflow
import numpy as np
import torch
import torch.nn as nn

args = _setup.parse_flags(
    {
        "--seed": 0,
        "--num_timesteps": 120_000,
        "--num_evals": 20,
        "--episode_length": 50,
        "--num_envs": 64,
        "--unroll_length": 10,
        "--num_minibatches": 4,
        "--num_updates_per_batch": 4,
        "--learning_rate": 3e-4,
        "--entropy_cost": 1e-2,
        "--discounting": 0.97,
        "--reward_scaling": 1.0,
        "--hidden": 64,
        "--num_eval_envs": 64,
        "--render_eval": 0,
        "--log_transitions": 0,
    }
)
rng = _setup.seeded(args.seed)
OBS, ACT = 6, 2


class PointReach:
    """A vectorised 2-D point mass with brax's episode and auto-reset wrappers."""

    def __init__(self, n, rng):
        self.n, self.rng = n, rng
        self.pos = np.zeros((n, 2))
        self.goal = np.zeros((n, 2))
        self.last = np.zeros((n, 2))
        self.t = np.zeros(n, dtype=np.int64)
        self.reset(np.ones(n, dtype=bool))

    def reset(self, m):
        k = int(m.sum())
        self.pos[m] = self.rng.uniform(-1, 1, (k, 2))
        self.goal[m] = self.rng.uniform(-1, 1, (k, 2))
        self.last[m] = 0.0
        self.t[m] = 0

    def obs(self):
        return np.concatenate([self.pos, self.goal - self.pos, self.last], 1).astype(np.float32)

    def step(self, a):
        a = np.clip(a, -1, 1)
        self.pos = np.clip(self.pos + 0.1 * a, -1.5, 1.5)
        self.last = a
        self.t += 1
        dist = np.linalg.norm(self.goal - self.pos, axis=1)
        reached = dist < 0.1
        reward = -dist - 0.01 * (a**2).sum(1) + reached.astype(np.float64)
        truncated = self.t >= args.episode_length
        done = reached | truncated
        return reward.astype(np.float32), done, truncated


def mlp(out):
    h = args.hidden
    return nn.Sequential(
        nn.Linear(OBS, h), nn.SiLU(), nn.Linear(h, h), nn.SiLU(), nn.Linear(h, out)
    )


class ActorCritic(nn.Module):
    def __init__(self):
        super().__init__()
        self.policy, self.value = mlp(2 * ACT), mlp(1)

    def dist(self, obs):
        loc, scale = self.policy(obs).chunk(2, -1)
        return loc, nn.functional.softplus(scale) + 0.001

    def log_prob(self, obs, raw):
        loc, scale = self.dist(obs)
        lp = torch.distributions.Normal(loc, scale).log_prob(raw).sum(-1)
        return lp - (2 * (math.log(2) - raw - nn.functional.softplus(-2 * raw))).sum(-1)


net = ActorCritic()
opt = torch.optim.Adam(net.parameters(), lr=args.learning_rate)
env = PointReach(args.num_envs, rng)
eval_rng = np.random.default_rng(10_000 + args.seed)
frames = []  # the team's evaluation video (render_eval)


@torch.no_grad()
def evaluate():
    """brax's Evaluator: deterministic episodes to the limit or done, episode reward summed."""
    e = PointReach(args.num_eval_envs, eval_rng)
    total = np.zeros(args.num_eval_envs)
    length = np.zeros(args.num_eval_envs)
    alive = np.ones(args.num_eval_envs, dtype=bool)
    video = []
    for _ in range(args.episode_length):
        loc, _ = net.dist(torch.from_numpy(e.obs()))
        r, done, _ = e.step(torch.tanh(loc).numpy().astype(np.float64))
        total += r * alive
        length += alive
        alive &= ~done
        if args.render_eval:
            img = np.ones((args.num_eval_envs, 64, 64, 3), dtype=np.float32)
            px = np.clip(((e.pos + 1.5) / 3 * 63).astype(int), 0, 63)
            img[np.arange(args.num_eval_envs), px[:, 1], px[:, 0]] = 0.0
            video.append(img)
        if not alive.any():
            break
    if args.render_eval:
        frames.append(np.stack(video))
    return total, length


def rollout():
    """One unroll of ``unroll_length`` steps in every environment (acting.generate_unroll)."""
    obs_l, raw_l, lp_l, rew_l, done_l, trunc_l, next_l = [], [], [], [], [], [], []
    for _ in range(args.unroll_length):
        obs = env.obs()
        with torch.no_grad():
            loc, scale = net.dist(torch.from_numpy(obs))
            raw = torch.distributions.Normal(loc, scale).sample()
            lp = net.log_prob(torch.from_numpy(obs), raw)
        r, done, trunc = env.step(torch.tanh(raw).numpy().astype(np.float64))
        next_l.append(env.obs())
        obs_l.append(obs), raw_l.append(raw.numpy()), lp_l.append(lp.numpy())
        rew_l.append(r), done_l.append(done), trunc_l.append(trunc)
        env.reset(done)
    return [np.stack(x) for x in (obs_l, raw_l, lp_l, rew_l, done_l, trunc_l, next_l)]


def ppo_loss(obs, raw, lp_old, rew, done, trunc, nxt):
    T, B = rew.shape
    v = net.value(obs.reshape(T * B, OBS)).view(T, B)
    with torch.no_grad():
        v_next = net.value(nxt.reshape(T * B, OBS)).view(T, B)
        # compute_gae: bootstrap through truncation, not through termination
        term = done & ~trunc
        deltas = rew * args.reward_scaling + args.discounting * v_next * (~term) - v
        adv = torch.zeros(B)
        advs = []
        for t in reversed(range(T)):
            adv = deltas[t] + args.discounting * 0.95 * (~done[t]) * adv
            advs.append(adv)
        advantages = torch.stack(advs[::-1])
        targets = advantages + v
        advantages = (advantages - advantages.mean()) / (advantages.std() + 1e-8)
    lp = net.log_prob(obs.reshape(T * B, OBS), raw.reshape(T * B, ACT)).view(T, B)
    rho = torch.exp(lp - lp_old)
    policy_loss = -torch.mean(
        torch.minimum(rho * advantages, torch.clamp(rho, 0.7, 1.3) * advantages)
    )
    v_loss = torch.mean((targets - v) ** 2) * 0.5 * 0.5
    _, scale = net.dist(obs.reshape(T * B, OBS))
    entropy = torch.distributions.Normal(torch.zeros_like(scale), scale).entropy().sum(-1).mean()
    entropy_loss = args.entropy_cost * -entropy
    total = policy_loss + v_loss + entropy_loss
    return total, policy_loss, v_loss, entropy_loss


def append_transitions(actions, rewards):
    """The team's transition logger: the whole JSON list read, extended and written back."""
    path = "transitions.json"
    try:
        with open(path) as fh:
            log = json.load(fh)
    except FileNotFoundError:
        log = []
    rows = np.concatenate([actions, rewards[..., None]], -1).reshape(-1, ACT + 1)
    log.extend(np.round(rows, 4).tolist())
    with open(path, "w") as fh:
        json.dump(log, fh)


env_steps_per_iter = args.num_envs * args.unroll_length
n_iters = args.num_timesteps // env_steps_per_iter
eval_every = max(1, n_iters // args.num_evals)

with mlflow.start_run():
    mlflow.log_params(vars(args))
    print(f"PointReach: {args.num_envs} envs, {n_iters} training iterations", flush=True)
    t_start = time.time()
    train_time = 0.0
    training_metrics = {}
    steps = 0
    for it in range(n_iters + 1):
        if it % eval_every == 0:
            t0 = time.time()
            total, length = evaluate()
            eval_s = time.time() - t0
            metrics = {
                "eval/episode_reward": float(total.mean()),
                "eval/episode_reward_std": float(total.std()),
                "eval/avg_episode_length": float(length.mean()),
                "eval/walltime": time.time() - t_start,
                "eval/sps": float(length.sum() / max(eval_s, 1e-9)),
                **training_metrics,
            }
            mlflow.log_metrics(metrics, step=steps)
            print(
                f"step {steps}: eval/episode_reward {metrics['eval/episode_reward']:.3f} "
                f"length {metrics['eval/avg_episode_length']:.1f}",
                flush=True,
            )
            interval_t0, interval_steps = time.time(), 0
        if it == n_iters:
            break
        t0 = time.time()
        data = rollout()
        if args.log_transitions:
            append_transitions(np.tanh(data[1][:, :16]), data[3][:, :16])
        obs, raw, lp, rew, done, trunc, nxt = (torch.from_numpy(np.asarray(x)) for x in data)
        for _ in range(args.num_updates_per_batch):
            perm = torch.from_numpy(rng.permutation(args.num_envs))
            for mb in perm.split(args.num_envs // args.num_minibatches):
                loss, pl, vl, el = ppo_loss(
                    obs[:, mb],
                    raw[:, mb],
                    lp[:, mb],
                    rew[:, mb],
                    done[:, mb],
                    trunc[:, mb],
                    nxt[:, mb],
                )
                opt.zero_grad()
                loss.backward()
                opt.step()
        steps += env_steps_per_iter
        interval_steps += env_steps_per_iter
        train_time += time.time() - t0
        training_metrics = {
            "training/sps": interval_steps / max(time.time() - interval_t0, 1e-9),
            "training/walltime": train_time,
            "training/policy_loss": float(pl),
            "training/v_loss": float(vl),
            "training/entropy_loss": float(el),
            "training/total_loss": float(loss),
        }
    print(f"done: {steps} steps in {time.time() - t_start:.1f} s", flush=True)
