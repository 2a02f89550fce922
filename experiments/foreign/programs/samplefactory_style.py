"""A PPO agent trained as Sample Factory 2's APPO (``sf_examples``) trains one, its per-policy
TensorBoard summaries mirrored to MLflow by the team's ``SummaryWriter`` wrapper.

Plain PyTorch + numpy + the plain ``mlflow`` API (no Sample Factory here).  What is imitated:

* the ``cfg`` keys: ``num_workers``, ``num_envs_per_worker``, ``rollout``, ``batch_size``,
  ``num_batches_per_epoch``, ``num_epochs``, ``learning_rate``, ``lr_schedule``
  (``constant`` or ``linear_decay``), ``gamma``, ``gae_lambda``, ``ppo_clip_ratio``,
  ``value_loss_coeff``, ``exploration_loss_coeff``, ``max_grad_norm`` (0: no clipping),
  ``normalize_returns``, ``normalize_input``, ``reward_scale``, ``train_for_env_steps``,
  ``experiment_summaries_interval`` (seconds), ``encoder_mlp_layers``;
* rollout workers (threads here) step ``num_envs_per_worker`` envs each and put trajectories of
  ``rollout`` steps on the learner's queue; the learner trains on ``batch_size`` samples a
  minibatch, ``num_batches_per_epoch`` minibatches an epoch, ``num_epochs`` epochs a batch;
* the learner's ``train/`` summaries of the last training batch (``train/loss``,
  ``train/policy_loss``, ``train/value_loss``, ``train/exploration_loss``, ``train/entropy``,
  ``train/kl_divergence``, ``train/grad_norm`` (before clipping), ``train/lr``,
  ``train/adv_mean``, ``train/adv_std``, ``train/fraction_clipped``, ``train/value``), and the
  runner's ``policy_stats/avg_reward``, ``policy_stats/avg_reward_min``,
  ``policy_stats/avg_reward_max``, ``policy_stats/avg_episode_length`` (the last 100 episodes),
  ``perf/_fps`` (env frames a second over the last interval), ``perf/_sample_throughput``,
  ``stats/master_process_memory_mb``, written every ``experiment_summaries_interval`` seconds
  at ``step = env_steps`` (every env's steps), so the steps are irregular;
* the console ``Fps is (10 sec: 8192.0, 60 sec: ...). Total num frames: 40960. Throughput: 0:
  8192.0. Samples: 40960. Policy #0 lag: (min: 0.0, avg: 0.0, max: 0.0)`` and ``Avg episode
  reward: [(0, '123.400')]`` lines.

Environment: a numpy ``CartPole`` (the classic control equations, +1 a step, at most
``max_episode_steps``).  The team's ``EpisodeStatsWrapper`` keeps each env's per-step rewards of
the running episode in a preallocated array of ``episode_buffer_len`` steps (0: a list that
grows); an episode longer than the array raises ``IndexError`` in the rollout worker, whose
thread dies with it, and the learner keeps waiting on its queue (no timeout), as SF's runner
waits on a worker that is gone.  The team's ``VideoRecorderWrapper`` (``--record_video``) is run by
the learner on each trajectory it receives: it renders every env's frame (a ``video_res``
square RGB float32 canvas) at every step and keeps the frames of the whole run in one list,
to write the video at the end.  Written without looking at the doctor.

Faults are real settings: ``--learning_rate``; ``--record_video``; ``--episode_buffer_len``; ``--max_grad_norm`` with ``--normalize_returns`` and ``--reward_scale``.
"""

import os
import queue
import resource
import threading
import time

import _setup
import mlflow
import numpy as np
import torch

args = _setup.parse_flags(
    {
        "--seed": 0,
        "--num_workers": 2,
        "--num_envs_per_worker": 16,
        "--rollout": 32,
        "--batch_size": 512,
        "--num_batches_per_epoch": 2,
        "--num_epochs": 4,
        "--learning_rate": 1e-3,
        "--lr_schedule": "constant",
        "--gamma": 0.99,
        "--gae_lambda": 0.95,
        "--ppo_clip_ratio": 0.2,
        "--value_loss_coeff": 0.5,
        "--exploration_loss_coeff": 0.003,
        "--max_grad_norm": 4.0,
        "--normalize_returns": 1,
        "--normalize_input": 1,
        "--reward_scale": 1.0,
        "--train_for_env_steps": 90000,
        "--experiment_summaries_interval": 1.0,
        "--encoder_mlp_layers": "64,64",
        "--max_episode_steps": 300,
        "--record_video": 0,
        "--video_res": 96,
        "--episode_buffer_len": 0,  # 0: a growing list; else a preallocated array
    }
)
rng = _setup.seeded(args.seed)


# ----------------------------------------------------------------------------- environment
class CartPole:
    def __init__(self, n, seed):
        self.n, self.rng = n, np.random.default_rng(seed)
        self.s = np.zeros((n, 4))
        self.t = np.zeros(n, np.int64)
        for i in range(n):
            self.reset(i)

    def reset(self, i):
        self.s[i] = self.rng.uniform(-0.05, 0.05, 4)
        self.t[i] = 0

    def step(self, a):
        x, xd, th, thd = self.s.T
        force = np.where(a == 1, 10.0, -10.0)
        ct, st = np.cos(th), np.sin(th)
        temp = (force + 0.05 * thd**2 * st) / 1.1
        thacc = (9.8 * st - ct * temp) / (0.5 * (4.0 / 3.0 - 0.1 * ct**2 / 1.1))
        xacc = temp - 0.05 * thacc * ct / 1.1
        self.s = np.stack([x + 0.02 * xd, xd + 0.02 * xacc, th + 0.02 * thd, thd + 0.02 * thacc], 1)
        self.t += 1
        fail = (np.abs(self.s[:, 0]) > 2.4) | (np.abs(self.s[:, 2]) > 0.2095)
        done = fail | (self.t >= args.max_episode_steps)
        return np.ones(self.n), done


def render(obs):
    """The VideoRecorderWrapper's frame of every env: the cart on a float32 RGB canvas."""
    r = args.video_res
    canvas = np.zeros((len(obs), r, r, 3), np.float32)
    cx = ((np.tanh(obs[:, 0]) + 1) / 2 * (r - 1)).astype(int)
    canvas[np.arange(len(obs)), r // 2, cx] = 1.0
    return canvas


# ----------------------------------------------------------------------------- model
def mlp(n_out):
    layers, d = [], 4
    for h in [int(v) for v in args.encoder_mlp_layers.split(",")]:
        layers += [torch.nn.Linear(d, h), torch.nn.ELU()]
        d = h
    return torch.nn.Sequential(*layers, torch.nn.Linear(d, n_out))


actor, critic = mlp(2), mlp(1)
params = list(actor.parameters()) + list(critic.parameters())
optim = torch.optim.Adam(params, lr=args.learning_rate, eps=1e-6)
lock = threading.Lock()


class RunningMeanStd:
    def __init__(self, shape=()):
        self.mean, self.var, self.count = np.zeros(shape), np.ones(shape), 1e-4

    def update(self, x):
        b, m, v = len(x), x.mean(0), x.var(0)
        d, tot = m - self.mean, self.count + len(x)
        self.mean = self.mean + d * b / tot
        self.var = (self.var * self.count + v * b + d**2 * self.count * b / tot) / tot
        self.count = tot


obs_norm, ret_norm = RunningMeanStd(4), RunningMeanStd()


def norm_obs(s):
    if not args.normalize_input:
        return s.astype(np.float32)
    return np.clip((s - obs_norm.mean) / np.sqrt(obs_norm.var + 1e-5), -5, 5).astype(np.float32)


episodes = []  # (reward, length) of finished episodes
ep_stats_lock = threading.Lock()


def rollout_worker(w, out_q, stop):
    env = CartPole(args.num_envs_per_worker, args.seed * 100 + w)
    ep_ret = np.zeros(env.n)
    n_buf = args.episode_buffer_len
    ep_rewards = np.zeros((env.n, n_buf)) if n_buf else [[] for _ in range(env.n)]
    try:
        while not stop.is_set():
            traj = {k: [] for k in ("obs", "act", "logp", "rew", "val", "done")}
            for _ in range(args.rollout):
                with lock:
                    obs_norm.update(env.s)
                    o = norm_obs(env.s)
                    with torch.no_grad():
                        ot = torch.from_numpy(o)
                        dist = torch.distributions.Categorical(logits=actor(ot))
                        a = dist.sample()
                        v = critic(ot)[:, 0].numpy()
                a = a.numpy()
                rew, done = env.step(a)
                ep_ret += rew
                for i in range(env.n):  # EpisodeStatsWrapper
                    if n_buf:
                        ep_rewards[i, env.t[i] - 1] = rew[i]
                    else:
                        ep_rewards[i].append(rew[i])
                for k, val in zip(
                    traj,
                    (o, a, dist.log_prob(torch.from_numpy(a)).numpy(), rew, v, done),
                    strict=True,
                ):
                    traj[k].append(val)
                for i in np.nonzero(done)[0]:
                    with ep_stats_lock:
                        episodes.append((ep_ret[i], env.t[i]))
                    ep_ret[i] = 0.0
                    if not n_buf:
                        ep_rewards[i] = []
                    env.reset(i)
            with lock, torch.no_grad():
                last_v = critic(torch.from_numpy(norm_obs(env.s)))[:, 0].numpy()
            out_q.put((traj, last_v))
    except Exception as err:  # the worker's own log; the runner is never told
        print(f"[E] rollout_worker {w}: {type(err).__name__}: {err}", flush=True)


def train(batch, env_steps):
    frac = env_steps / args.train_for_env_steps
    lr = args.learning_rate * (1 - frac if args.lr_schedule == "linear_decay" else 1.0)
    for g in optim.param_groups:
        g["lr"] = lr
    obs, act, old_logp, adv, ret, old_v = batch
    n, stats = len(obs), {}
    for _ in range(args.num_epochs):
        perm = torch.from_numpy(rng.permutation(n))
        for b in range(args.num_batches_per_epoch):
            i = perm[b * args.batch_size : (b + 1) * args.batch_size]
            with lock:
                dist = torch.distributions.Categorical(logits=actor(obs[i]))
                logp = dist.log_prob(act[i])
                ratio = torch.exp(logp - old_logp[i])
                a = adv[i]
                a = (a - a.mean()) / (a.std() + 1e-7)
                c = args.ppo_clip_ratio
                pl = -torch.min(ratio * a, ratio.clamp(1 - c, 1 + c) * a).mean()
                v = critic(obs[i])[:, 0]
                vl = ((v - ret[i]) ** 2).mean() * args.value_loss_coeff
                ent = dist.entropy().mean()
                el = -args.exploration_loss_coeff * ent
                loss = pl + vl + el
                optim.zero_grad()
                loss.backward()
                gn = float(torch.nn.utils.clip_grad_norm_(params, float("inf")))
                if args.max_grad_norm > 0:
                    torch.nn.utils.clip_grad_norm_(params, args.max_grad_norm)
                optim.step()
            stats = {
                "train/loss": loss.item(),
                "train/policy_loss": pl.item(),
                "train/value_loss": vl.item(),
                "train/exploration_loss": el.item(),
                "train/entropy": ent.item(),
                "train/kl_divergence": float((old_logp[i] - logp.detach()).mean()),
                "train/grad_norm": gn,
                "train/lr": lr,
                "train/adv_mean": float(adv[i].mean()),
                "train/adv_std": float(adv[i].std()),
                "train/fraction_clipped": float(((ratio - 1).abs() > c).float().mean()),
                "train/value": float(v.detach().mean()),
            }
    return stats


def gae(traj, last_v):
    rew = np.array(traj["rew"]) * args.reward_scale
    val = np.array(traj["val"])
    done = np.array(traj["done"])
    if args.normalize_returns:
        val = val * np.sqrt(ret_norm.var + 1e-8) + ret_norm.mean
        last_v = last_v * np.sqrt(ret_norm.var + 1e-8) + ret_norm.mean
    adv = np.zeros_like(rew)
    g, nv = 0.0, last_v
    for t in reversed(range(len(rew))):
        nonterm = 1.0 - done[t]
        delta = rew[t] + args.gamma * nv * nonterm - val[t]
        g = delta + args.gamma * args.gae_lambda * nonterm * g
        adv[t], nv = g, val[t]
    ret = adv + val
    if args.normalize_returns:
        ret_norm.update(ret.reshape(-1))
        ret = (ret - ret_norm.mean) / np.sqrt(ret_norm.var + 1e-8)
    return adv, ret


def cat(xs, dtype):
    return torch.from_numpy(np.concatenate([np.asarray(x).reshape(-1) for x in xs]).astype(dtype))


with mlflow.start_run():
    mlflow.log_params(vars(args))
    out_q, stop = queue.Queue(maxsize=args.num_workers), threading.Event()
    workers = [
        threading.Thread(target=rollout_worker, args=(w, out_q, stop), daemon=True)
        for w in range(args.num_workers)
    ]
    for t in workers:
        t.start()
    start = last_summary = time.time()
    env_steps = last_steps = samples = 0
    frames = []
    per_batch = args.num_envs_per_worker * args.rollout
    trajs_per_batch = -(-args.batch_size * args.num_batches_per_epoch // per_batch)
    while env_steps < args.train_for_env_steps:
        parts = []
        for _ in range(trajs_per_batch):
            traj, last_v = out_q.get()  # the learner waits for the next trajectory, no timeout
            if args.record_video:  # the video callback keeps the run's frames for the end
                frames.extend(render(o) for o in traj["obs"])
            adv, ret = gae(traj, last_v)
            parts.append(
                (
                    torch.from_numpy(np.concatenate(traj["obs"])),
                    cat(traj["act"], np.int64),
                    cat(traj["logp"], np.float32),
                    torch.from_numpy(adv.reshape(-1).astype(np.float32)),
                    torch.from_numpy(ret.reshape(-1).astype(np.float32)),
                    cat(traj["val"], np.float32),
                )
            )
        batch = [torch.cat(x) for x in zip(*parts, strict=True)]
        stats = train(batch, env_steps)
        env_steps += per_batch * trajs_per_batch
        samples += per_batch * trajs_per_batch
        now = time.time()
        if now - last_summary >= args.experiment_summaries_interval:
            with ep_stats_lock:
                recent = episodes[-100:]
            fps = (env_steps - last_steps) / (now - last_summary)
            m = dict(stats)
            if recent:
                r = np.array([e[0] for e in recent])
                m["policy_stats/avg_reward"] = float(r.mean())
                m["policy_stats/avg_reward_min"] = float(r.min())
                m["policy_stats/avg_reward_max"] = float(r.max())
                m["policy_stats/avg_episode_length"] = float(np.mean([e[1] for e in recent]))
            m["perf/_fps"] = fps
            m["perf/_sample_throughput"] = samples / (now - start)
            m["stats/master_process_memory_mb"] = (
                resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
            )
            mlflow.log_metrics(m, step=env_steps)
            print(
                f"Fps is (10 sec: {fps:.1f}). Total num frames: {env_steps}. Throughput: 0: "
                f"{fps:.1f}. Samples: {samples}. Policy #0 lag: (min: 0.0, avg: 0.0, max: 1.0)",
                flush=True,
            )
            if recent:
                print(
                    f"Avg episode reward: [(0, '{m['policy_stats/avg_reward']:.3f}')]", flush=True
                )
            last_summary, last_steps = now, env_steps
    stop.set()
    print(f"Collected {{0: {env_steps}}}, FPS: {env_steps / (time.time() - start):.1f}", flush=True)
    print(f"Done! pid {os.getpid()}", flush=True)
