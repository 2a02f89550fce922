"""PPO on a cart-pole simulator trained as RLlib's ``PPO`` algorithm trains (old API stack,
``algo.train()`` once per training iteration under Ray Tune), logged the way Ray's
``MLflowLoggerCallback`` logs a trial.

Plain PyTorch + numpy + the plain ``mlflow`` API (no Ray here).  What is imitated:

* one result dict per training iteration, flattened with ``/`` as Tune flattens it, its
  numeric values logged by ``MLflowLoggerCallback.log_trial_result`` at
  ``step = result.get("timesteps_total") or result["training_iteration"]``, i.e. at the
  environment steps sampled so far (``train_batch_size``, 2x, 3x, ...);
* RLlib's keys: ``episode_reward_mean`` / ``_min`` / ``_max`` and ``episode_len_mean`` over the
  last ``metrics_num_episodes_for_smoothing`` (100) finished episodes, ``episodes_this_iter``,
  ``episodes_total``, the same under ``sampler_results/``; ``num_env_steps_sampled``,
  ``num_env_steps_trained``, ``num_env_steps_sampled_throughput_per_sec``,
  ``timesteps_total``; ``info/learner/default_policy/learner_stats/`` ``total_loss``,
  ``policy_loss``, ``vf_loss``, ``vf_explained_var``, ``kl``, ``entropy``, ``entropy_coeff``,
  ``cur_kl_coeff``, ``cur_lr`` (and ``grad_gnorm`` only when ``grad_clip`` is set, as
  ``apply_grad_clipping`` reports it), ``info/learner/default_policy/num_grad_updates_lifetime``;
  ``timers/sample_time_ms``, ``timers/learn_time_ms``, ``timers/training_iteration_time_ms``;
  Tune's ``training_iteration``, ``time_this_iter_s``, ``time_total_s``, ``timestamp``, ``done``;
* RLlib's PPO: ``num_envs_per_worker`` vectorised sub-environments, GAE (``lambda_``),
  advantages standardised over the train batch, ``num_sgd_iter`` epochs of
  ``sgd_minibatch_size`` minibatches, clipped surrogate (``clip_param``), value loss clipped at
  ``vf_clip_param``, adaptive KL penalty (``kl_coeff`` x1.5 / x0.5 around ``kl_target``),
  separate policy and value ``fcnet_hiddens`` tanh networks (``vf_share_layers`` off).

Env: a cart-pole simulator (CartPole-v1's dynamics, 500-step limit) behind the team's client
class, with ``env_config``.  Written without looking at the doctor.

Faults are real code paths: ``--lr`` far too high; ``--env_config.units mm``: the simulator
export reports the cart's position and velocity in millimetres (and mm/s), unscaled;
``--env_config.reconnect_every N``: the client reconnects to the simulator every N episodes,
and ``reset`` calls ``_reconnect`` while holding the client's (non-reentrant) lock;
``--env_config.smooth_obs 1``: the client's obs smoothing recomputes its moving average over
the whole episode at every step, so a step costs more the longer the episode.
"""

import math
import os
import threading
import time

import _setup
import mlflow
import numpy as np
import torch
from torch import nn

args = _setup.parse_flags(
    {
        "--seed": 0,
        "--stop_iters": 40,
        "--lr": 3e-4,
        "--gamma": 0.99,
        "--lambda_": 0.95,
        "--train_batch_size": 4000,
        "--sgd_minibatch_size": 128,
        "--num_sgd_iter": 6,
        "--clip_param": 0.3,
        "--vf_clip_param": 10.0,
        "--vf_loss_coeff": 1.0,
        "--kl_coeff": 0.2,
        "--kl_target": 0.01,
        "--entropy_coeff": 0.0,
        "--grad_clip": 0.0,
        "--fcnet_hiddens": 64,
        "--num_envs_per_worker": 8,
        "--env_config.units": ("units", "m"),
        "--env_config.reconnect_every": ("reconnect_every", 0),
        "--env_config.smooth_obs": ("smooth_obs", 0),
    }
)
rng = _setup.seeded(args.seed)


# ----------------------------------------------------------------------------- env
class CartPoleClient:
    """The team's client for the cart-pole simulator (CartPole-v1 dynamics)."""

    scale = {"m": 1.0, "mm": 1000.0}

    def __init__(self, idx):
        self.rng = np.random.default_rng(args.seed * 1000 + idx)
        self._lock = threading.Lock()
        self.episodes, self.state, self.t, self.traj = 0, None, 0, []

    def _reconnect(self):
        with self._lock:
            self.rng = np.random.default_rng(self.rng.integers(1 << 31))

    def _obs(self):
        s = self.state.copy()
        s[:2] *= self.scale[args.units]  # position, velocity as the export reports them
        if args.smooth_obs:  # an exponential moving average of the episode so far
            self.traj.append(s)
            ema = self.traj[0]
            for h in self.traj:  # recomputed over the whole episode at every step
                ema = 0.8 * ema + 0.2 * h
            s = 0.75 * s + 0.25 * ema
        return s.astype(np.float32)

    def reset(self):
        with self._lock:
            self.episodes += 1
            if args.reconnect_every and self.episodes % args.reconnect_every == 0:
                self._reconnect()
            self.state = self.rng.uniform(-0.05, 0.05, 4)
            self.t, self.traj = 0, []
            return self._obs()

    def step(self, action):
        x, x_dot, th, th_dot = self.state
        force = 10.0 if action == 1 else -10.0
        cos, sin = math.cos(th), math.sin(th)
        temp = (force + 0.05 * th_dot**2 * sin) / 1.1
        th_acc = (9.8 * sin - cos * temp) / (0.5 * (4.0 / 3.0 - 0.1 * cos**2 / 1.1))
        x_acc = temp - 0.05 * th_acc * cos / 1.1
        self.state = np.array(
            [x + 0.02 * x_dot, x_dot + 0.02 * x_acc, th + 0.02 * th_dot, th_dot + 0.02 * th_acc]
        )
        self.t += 1
        term = bool(abs(self.state[0]) > 2.4 or abs(self.state[2]) > 12 * 2 * math.pi / 360)
        return self._obs(), 1.0, term, self.t >= 500


# ----------------------------------------------------------------------------- policy
def mlp(out, std):
    h = args.fcnet_hiddens
    net = nn.Sequential(nn.Linear(4, h), nn.Tanh(), nn.Linear(h, h), nn.Tanh(), nn.Linear(h, out))
    for m in net:
        if isinstance(m, nn.Linear):  # RLlib's normc_initializer
            w = torch.randn_like(m.weight)
            m.weight.data = w * (1.0 if m is not net[-1] else std) / w.norm(dim=1, keepdim=True)
            nn.init.zeros_(m.bias)
    return net


pi_net, vf_net = mlp(2, 0.01), mlp(1, 0.01)
params = list(pi_net.parameters()) + list(vf_net.parameters())
optimizer = torch.optim.Adam(params, lr=args.lr)
kl_coeff = args.kl_coeff

envs = [CartPoleClient(i) for i in range(args.num_envs_per_worker)]
obs = np.stack([e.reset() for e in envs])
ep_ret = np.zeros(len(envs))
ep_len = np.zeros(len(envs), dtype=int)
finished = []  # (return, length) of finished episodes


def sample(n_steps):
    global obs
    n_env = len(envs)
    T = n_steps // n_env
    buf = {k: [] for k in ("obs", "act", "logp", "logits", "vf", "rew", "done", "trunc_v")}
    new_eps = 0
    for _ in range(T):
        with torch.no_grad():
            o = torch.tensor(obs)
            logits = pi_net(o)
            vf = vf_net(o).squeeze(-1)
            act = torch.distributions.Categorical(logits=logits).sample()
        logp = torch.log_softmax(logits, -1).gather(1, act[:, None]).squeeze(1)
        nxt, rew, done, tv = np.empty_like(obs), np.ones(n_env), np.zeros(n_env), np.zeros(n_env)
        for i, e in enumerate(envs):
            o2, r, term, trunc = e.step(int(act[i]))
            ep_ret[i] += r
            ep_len[i] += 1
            if term or trunc:
                if trunc:  # bootstrap a truncated episode from its last observation
                    with torch.no_grad():
                        tv[i] = float(vf_net(torch.tensor(o2)[None]))
                finished.append((ep_ret[i], ep_len[i]))
                new_eps += 1
                ep_ret[i], ep_len[i] = 0, 0
                o2 = e.reset()
                done[i] = 1
            nxt[i] = o2
        for k, v in zip(
            buf, (obs, act.numpy(), logp.numpy(), logits.numpy(), vf.numpy()), strict=False
        ):
            buf[k].append(v)
        buf["rew"].append(rew)
        buf["done"].append(done)
        buf["trunc_v"].append(tv)
        obs = nxt
    with torch.no_grad():
        last_v = vf_net(torch.tensor(obs)).squeeze(-1).numpy()
    b = {k: np.array(v) for k, v in buf.items()}  # (T, n_env, ...)
    adv = np.zeros((T, n_env))
    gae = np.zeros(n_env)
    for t in reversed(range(T)):
        nv = last_v if t == T - 1 else b["vf"][t + 1]
        nv = np.where(b["done"][t] == 1, b["trunc_v"][t], nv)
        delta = b["rew"][t] + args.gamma * nv - b["vf"][t]
        gae = delta + args.gamma * args.lambda_ * (1 - b["done"][t]) * gae
        adv[t] = gae
    b["value_targets"] = adv + b["vf"]
    b["advantages"] = adv
    flat = {k: torch.tensor(v.reshape(T * n_env, *v.shape[2:])) for k, v in b.items()}
    return flat, new_eps


def learn(batch):
    global kl_coeff
    adv = batch["advantages"]
    batch["advantages"] = (adv - adv.mean()) / max(1e-4, float(adv.std()))
    n = len(adv)
    stats, n_updates = [], 0
    for _ in range(args.num_sgd_iter):
        perm = torch.randperm(n)
        for s in range(0, n - args.sgd_minibatch_size + 1, args.sgd_minibatch_size):
            mb = {k: v[perm[s : s + args.sgd_minibatch_size]] for k, v in batch.items()}
            logits = pi_net(mb["obs"].float())
            logp_all = torch.log_softmax(logits, -1)
            logp = logp_all.gather(1, mb["act"][:, None]).squeeze(1)
            old_logp_all = torch.log_softmax(mb["logits"].float(), -1)
            ratio = torch.exp(logp - mb["logp"].float())
            a = mb["advantages"].float()
            surrogate = torch.min(
                a * ratio, a * torch.clamp(ratio, 1 - args.clip_param, 1 + args.clip_param)
            )
            kl = (old_logp_all.exp() * (old_logp_all - logp_all)).sum(-1).mean()
            entropy = -(logp_all.exp() * logp_all).sum(-1).mean()
            vf = vf_net(mb["obs"].float()).squeeze(-1)
            vt = mb["value_targets"].float()
            vf_loss = torch.clamp((vf - vt) ** 2, 0, args.vf_clip_param)
            total = (
                -surrogate.mean()
                + args.vf_loss_coeff * vf_loss.mean()
                - args.entropy_coeff * entropy
                + kl_coeff * kl
            )
            optimizer.zero_grad()
            total.backward()
            st = {}
            if args.grad_clip:
                st["grad_gnorm"] = float(nn.utils.clip_grad_norm_(params, args.grad_clip))
            optimizer.step()
            n_updates += 1
            ev = 1 - torch.var(vt - vf.detach()) / torch.var(vt)
            st.update(
                total_loss=total.item(),
                policy_loss=-surrogate.mean().item(),
                vf_loss=vf_loss.mean().item(),
                vf_explained_var=max(-1.0, ev.item()),
                kl=kl.item(),
                entropy=entropy.item(),
            )
            stats.append(st)
    out = {k: float(np.mean([s[k] for s in stats])) for k in stats[0]}
    out.update(cur_kl_coeff=kl_coeff, cur_lr=args.lr, entropy_coeff=args.entropy_coeff)
    if out["kl"] > 2.0 * args.kl_target:
        kl_coeff *= 1.5
    elif out["kl"] < 0.5 * args.kl_target:
        kl_coeff *= 0.5
    return out, n_updates


# ----------------------------------------------------------------------------- algo.train()
with mlflow.start_run():
    cfg = {
        k: v for k, v in vars(args).items() if k not in ("units", "reconnect_every", "smooth_obs")
    }
    mlflow.log_params({**cfg, "env": "CartPoleSim", "framework": "torch", "num_workers": 0})
    mlflow.log_params(
        {f"env_config/{k}": getattr(args, k) for k in ("units", "reconnect_every", "smooth_obs")}
    )
    print("== Status ==\nCurrent time: " + time.strftime("%Y-%m-%d %H:%M:%S"), flush=True)
    print("Trial PPO_CartPoleSim_00000 RUNNING", flush=True)
    t_start, steps, episodes_total, grad_updates = time.time(), 0, 0, 0
    for it in range(1, args.stop_iters + 1):
        t0 = time.time()
        batch, new_eps = sample(args.train_batch_size)
        t1 = time.time()
        learner, n_up = learn(batch)
        t2 = time.time()
        steps += len(batch["rew"])
        episodes_total += new_eps
        grad_updates += n_up
        recent = finished[-100:]
        rets = [r for r, _ in recent] or [float("nan")]
        lens = [ln for _, ln in recent] or [float("nan")]
        ep = {
            "episode_reward_max": float(np.max(rets)),
            "episode_reward_min": float(np.min(rets)),
            "episode_reward_mean": float(np.mean(rets)),
            "episode_len_mean": float(np.mean(lens)),
            "episodes_this_iter": new_eps,
        }
        lp = "info/learner/default_policy/"
        result = {
            **ep,
            "episodes_total": episodes_total,
            **{f"sampler_results/{k}": v for k, v in ep.items()},
            "num_env_steps_sampled": steps,
            "num_env_steps_trained": steps,
            "num_env_steps_sampled_this_iter": len(batch["rew"]),
            "num_env_steps_sampled_throughput_per_sec": len(batch["rew"]) / (t2 - t0),
            "timesteps_total": steps,
            **{f"{lp}learner_stats/{k}": v for k, v in learner.items()},
            f"{lp}num_grad_updates_lifetime": grad_updates,
            "info/num_env_steps_sampled": steps,
            "info/num_env_steps_trained": steps,
            "timers/sample_time_ms": (t1 - t0) * 1000,
            "timers/learn_time_ms": (t2 - t1) * 1000,
            "timers/training_iteration_time_ms": (t2 - t0) * 1000,
            "training_iteration": it,
            "time_this_iter_s": t2 - t0,
            "time_total_s": t2 - t_start,
            "timestamp": int(time.time()),
            "pid": os.getpid(),
            "done": int(it == args.stop_iters),
        }
        step = result.get("timesteps_total") or result["training_iteration"]
        mlflow.log_metrics(result, step=step)
        print(
            f"Trial PPO_CartPoleSim_00000 reported episode_reward_mean={ep['episode_reward_mean']:.2f},"
            f"episode_len_mean={ep['episode_len_mean']:.2f},timesteps_total={steps},"
            f"training_iteration={it} with parameters={{'lr': {args.lr}}}.",
            flush=True,
        )
    print("Trial PPO_CartPoleSim_00000 completed.", flush=True)
