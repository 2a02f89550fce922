"""A PPO agent trained as TorchRL's ``sota-implementations/ppo/ppo_mujoco.py`` trains one, its
scalars written through ``torchrl.record.loggers.MLFlowLogger`` (``logger.backend=mlflow``).

Plain PyTorch + numpy + the plain ``mlflow`` API (no TorchRL, no tensordict, no MuJoCo here).
What is imitated:

* the script's config (``collector.frames_per_batch``, ``collector.total_frames``,
  ``loss.mini_batch_size``, ``loss.ppo_epochs``, ``loss.gamma``, ``loss.gae_lambda``,
  ``loss.clip_epsilon``, ``loss.critic_coef``, ``loss.entropy_coef``, ``loss.anneal_clip_epsilon``,
  ``optim.lr``, ``optim.anneal_lr``, ``logger.test_interval``, ``logger.num_test_episodes``);
* the actor: an MLP (``num_cells`` x 2, Tanh) into a ``NormalParamExtractor`` and a
  ``ProbabilisticActor`` with a ``TanhNormal`` distribution; the critic a ``ValueOperator`` MLP;
  two Adam optimisers; ``GAE(gamma, lmbda, average_gae=False)``; ``ClipPPOLoss`` with
  ``loss_critic_type="l2"`` (its ``loss_entropy`` = ``-entropy_coef * entropy``, the entropy of
  a ``TanhNormal`` estimated from a sample, as TorchRL does);
* the loop: a ``SyncDataCollector`` gives ``frames_per_batch`` frames at a time (``num_envs``
  environments stepped together); per batch ``ppo_epochs`` passes, each recomputing GAE and
  sampling minibatches without replacement from a ``TensorDictReplayBuffer``;
  ``alpha = 1 - num_network_updates / total_network_updates`` scales ``lr`` and, with
  ``anneal_clip_epsilon``, the clip epsilon;
* what is logged, every batch at ``step = collected_frames``: ``train/reward`` (the mean
  ``episode_reward`` of the episodes that ended in the batch) and ``train/episode_length`` (when
  some ended), ``train/loss_critic``, ``train/loss_entropy``, ``train/loss_objective`` (means over
  the batch's updates), ``train/lr``, ``train/sampling_time``, ``train/training_time``,
  ``train/clip_epsilon``; ``eval/reward`` (the deterministic policy's mean return over
  ``num_test_episodes``) and ``eval/time`` whenever ``collected_frames`` crosses a multiple of
  ``test_interval``.

Environment: a numpy ``PointReach-v0`` (a point mass in a 2 x 2 arena pushed by a 2-D force in
[-1, 1]; the observation is its position, velocity and the goal's offset; the reward the negative
distance to the goal; ``max_episode_steps`` steps an episode, wrapped as ``StepCounter`` +
``RewardSum``).  Goals come from the team's goal file (``--goal_file_size`` goals, drawn in
order).  With ``--num_workers`` the environments run in worker processes, as ``ParallelEnv``
runs them, each answering the parent's ``step`` / ``reset`` commands over a
``multiprocessing.Pipe``; with
``--record_video`` a ``VideoRecorder(skip=1)`` on the batched environment keeps every rendered
frame (``PixelRenderTransform`` + ``ToTensorImage``: float32 64 x 64 x 3) until ``dump()``,
which the script calls after training.  Written without looking at the doctor.

Faults are real settings: ``--lr``; ``--anneal_frames`` (the frames the lr annealing counts
against); ``--num_workers`` with ``--goal_file_size``; ``--record_video``.
"""

import multiprocessing as mp
import time

import _setup
import mlflow
import numpy as np
import torch

args = _setup.parse_flags(
    {
        "--seed": 0,
        "--frames_per_batch": 2048,
        "--total_frames": 122880,
        "--num_envs": 16,
        "--max_episode_steps": 64,
        "--mini_batch_size": 256,
        "--ppo_epochs": 4,
        "--gamma": 0.99,
        "--gae_lambda": 0.95,
        "--clip_epsilon": 0.2,
        "--anneal_clip_epsilon": 0,
        "--critic_coef": 0.25,
        "--entropy_coef": 0.0,
        "--lr": 3e-4,
        "--anneal_lr": 1,
        "--anneal_frames": 0,  # 0: collector.total_frames
        "--num_cells": 64,
        "--test_interval": 10240,
        "--num_test_episodes": 5,
        "--num_workers": 0,  # 0: the environments step in this process (SerialEnv)
        "--goal_file_size": 100000,
        "--record_video": 0,
    }
)
rng = _setup.seeded(args.seed)
DT, DAMP, HALF = 0.1, 0.8, 1.0


# ----------------------------------------------------------------------------- environment
def goal_file(n):
    g = np.random.default_rng(7)  # the team's fixed goal file
    return g.uniform(-0.8 * HALF, 0.8 * HALF, (n, 2))


class PointReach:
    """``n`` PointReach-v0 environments; goals drawn in order from the goal file."""

    def __init__(self, n, seed, offset=0, stride=1):
        self.n, self.rng = n, np.random.default_rng(seed)
        self.goals = goal_file(args.goal_file_size)
        self.next_goal, self.stride = offset, stride
        self.pos = np.zeros((n, 2))
        self.vel = np.zeros((n, 2))
        self.goal = np.zeros((n, 2))
        self.t = np.zeros(n, np.int64)
        self.ret = np.zeros(n)
        for i in range(n):
            self.reset_one(i)

    def reset_one(self, i):
        self.pos[i] = self.rng.uniform(-HALF, HALF, 2)
        self.vel[i] = 0.0
        self.goal[i] = self.goals[self.next_goal]
        self.next_goal += self.stride
        self.t[i] = 0
        self.ret[i] = 0.0

    def obs(self):
        return np.concatenate([self.pos, self.vel, self.goal - self.pos], 1).astype(np.float32)

    def step(self, action):
        a = np.clip(action, -1.0, 1.0)
        self.vel = DAMP * self.vel + DT * a
        self.pos = np.clip(self.pos + self.vel, -HALF, HALF)
        dist = np.linalg.norm(self.goal - self.pos, axis=1)
        reward = -dist
        self.t += 1
        self.ret += reward
        done = self.t >= args.max_episode_steps
        info = (self.ret.copy(), self.t.copy())
        for i in np.flatnonzero(done):
            self.reset_one(i)
        return reward.astype(np.float32), done, info

    def render(self):  # PixelRenderTransform + ToTensorImage: float32 in [0, 1]
        frames = np.zeros((self.n, 64, 64, 3), np.float32)
        p = ((self.pos + HALF) / (2 * HALF) * 63).astype(int)
        g = ((self.goal + HALF) / (2 * HALF) * 63).astype(int)
        idx = np.arange(self.n)
        frames[idx, p[:, 1], p[:, 0], 0] = 1.0
        frames[idx, g[:, 1], g[:, 0], 1] = 1.0
        return frames


def _worker(conn, n, seed, offset, stride):
    env = PointReach(n, seed, offset, stride)
    while True:
        cmd, data = conn.recv()
        if cmd == "obs":
            conn.send(env.obs())
        elif cmd == "step":
            conn.send(env.step(data))
        elif cmd == "render":
            conn.send(env.render())
        elif cmd == "close":
            return


class ParallelEnv:
    """``ParallelEnv``-like: ``num_workers`` processes, each stepping its share of the envs."""

    def __init__(self, n, workers, seed):
        ctx = mp.get_context("fork")
        self.conns, self.procs, self.sizes = [], [], np.array_split(np.arange(n), workers)
        for w, idx in enumerate(self.sizes):
            parent, child = ctx.Pipe()
            p = ctx.Process(
                target=_worker, args=(child, len(idx), seed + 1000 * w, w, workers), daemon=True
            )
            p.start()
            self.conns.append(parent)
            self.procs.append(p)
            # the child's end stays open here too, as the team's wrapper keeps it
            self._children = getattr(self, "_children", []) + [child]

    def _all(self, cmd, datas=None):
        for k, c in enumerate(self.conns):
            c.send((cmd, None if datas is None else datas[k]))
        return [c.recv() for c in self.conns]

    def obs(self):
        return np.concatenate(self._all("obs"))

    def step(self, action):
        outs = self._all("step", [action[idx] for idx in self.sizes])
        r = np.concatenate([o[0] for o in outs])
        d = np.concatenate([o[1] for o in outs])
        info = (np.concatenate([o[2][0] for o in outs]), np.concatenate([o[2][1] for o in outs]))
        return r, d, info

    def render(self):
        return np.concatenate(self._all("render"))

    def close(self):
        for c in self.conns:
            c.send(("close", None))


# ----------------------------------------------------------------------------- model
OBS, ACT = 6, 2


def mlp(out):
    c = args.num_cells
    return torch.nn.Sequential(
        torch.nn.Linear(OBS, c),
        torch.nn.Tanh(),
        torch.nn.Linear(c, c),
        torch.nn.Tanh(),
        torch.nn.Linear(c, out),
    )


actor_net, critic = mlp(2 * ACT), mlp(1)
actor_optim = torch.optim.Adam(actor_net.parameters(), lr=args.lr)
critic_optim = torch.optim.Adam(critic.parameters(), lr=args.lr)


def dist_params(obs):
    out = actor_net(obs)
    loc, scale = out[:, :ACT], out[:, ACT:]
    return loc, torch.nn.functional.softplus(scale + 0.5413) + 1e-4  # biased_softplus(1.0)


def tanh_normal_log_prob(loc, scale, u):
    base = torch.distributions.Normal(loc, scale)
    return (base.log_prob(u) - torch.log(1 - torch.tanh(u) ** 2 + 1e-6)).sum(-1)


def act(obs_np, deterministic=False):
    with torch.no_grad():
        loc, scale = dist_params(torch.from_numpy(obs_np))
        u = loc if deterministic else loc + scale * torch.randn_like(loc)
        return u.numpy(), torch.tanh(u).numpy(), tanh_normal_log_prob(loc, scale, u).numpy()


def eval_model(n_episodes):
    env = PointReach(n_episodes, 10_000 + args.seed)
    total = np.zeros(n_episodes)
    for _ in range(args.max_episode_steps):
        _, a, _ = act(env.obs(), deterministic=True)
        r, _, _ = env.step(a)
        total += r
    return float(total.mean())


# ----------------------------------------------------------------------------- training
env = (
    ParallelEnv(args.num_envs, args.num_workers, args.seed)
    if args.num_workers
    else PointReach(args.num_envs, args.seed)
)
T = args.frames_per_batch // args.num_envs
num_mini_batches = args.frames_per_batch // args.mini_batch_size
anneal_frames = args.anneal_frames or args.total_frames
total_network_updates = (
    (anneal_frames // args.frames_per_batch) * args.ppo_epochs * num_mini_batches
)
video_frames = []

with mlflow.start_run():
    mlflow.log_params(vars(args))
    collected_frames, num_network_updates, i = 0, 0, 0
    obs = env.obs()
    sampling_start = time.time()
    while collected_frames < args.total_frames:
        # ---- SyncDataCollector: one batch of frames_per_batch frames
        B_obs = np.zeros((T, args.num_envs, OBS), np.float32)
        B_u = np.zeros((T, args.num_envs, ACT), np.float32)
        B_lp = np.zeros((T, args.num_envs), np.float32)
        B_r = np.zeros((T, args.num_envs), np.float32)
        B_done = np.zeros((T, args.num_envs), bool)
        B_next = np.zeros((T, args.num_envs, OBS), np.float32)
        ep_rewards, ep_lengths = [], []
        for t in range(T):
            u, a, lp = act(obs)
            r, done, (ret, length) = env.step(a)
            nxt = env.obs()
            next_obs = nxt.copy()
            B_obs[t], B_u[t], B_lp[t], B_r[t], B_done[t] = obs, u, lp, r, done
            B_next[t] = next_obs
            ep_rewards += list(ret[done])
            ep_lengths += list(length[done])
            if args.record_video:  # VideoRecorder(skip=1): every frame kept until dump()
                video_frames.append(env.render())
            obs = nxt
        sampling_time = time.time() - sampling_start
        frames_in_batch = T * args.num_envs
        collected_frames += frames_in_batch
        log_info = {}
        if ep_rewards:
            log_info["train/reward"] = float(np.mean(ep_rewards))
            log_info["train/episode_length"] = float(np.sum(ep_lengths) / len(ep_lengths))

        # ---- PPO epochs
        training_start = time.time()
        obs_t = torch.from_numpy(B_obs.reshape(-1, OBS))
        u_t = torch.from_numpy(B_u.reshape(-1, ACT))
        lp_t = torch.from_numpy(B_lp.reshape(-1))
        losses = {"loss_critic": [], "loss_entropy": [], "loss_objective": []}
        alpha = 1.0
        for _ in range(args.ppo_epochs):
            with torch.no_grad():  # GAE, recomputed every epoch
                v = critic(torch.from_numpy(B_obs.reshape(-1, OBS)))[:, 0].numpy().reshape(T, -1)
                v_next = critic(torch.from_numpy(B_next.reshape(-1, OBS)))[:, 0].numpy()
                v_next = v_next.reshape(T, -1)
            adv = np.zeros((T, args.num_envs), np.float32)
            last = np.zeros(args.num_envs, np.float32)
            for t in reversed(range(T)):
                # truncation at max_episode_steps: bootstrap from the next state's value
                delta = B_r[t] + args.gamma * v_next[t] - v[t]
                last = delta + args.gamma * args.gae_lambda * (~B_done[t]) * last
                adv[t] = last
            target = torch.from_numpy((adv + v).reshape(-1))
            adv_t = torch.from_numpy(adv.reshape(-1))
            perm = torch.from_numpy(rng.permutation(frames_in_batch))
            for k in range(num_mini_batches):
                idx = perm[k * args.mini_batch_size : (k + 1) * args.mini_batch_size]
                if args.anneal_lr:
                    alpha = max(0.0, 1 - num_network_updates / total_network_updates)
                    for opt in (actor_optim, critic_optim):
                        for g in opt.param_groups:
                            g["lr"] = args.lr * alpha
                clip = args.clip_epsilon * (alpha if args.anneal_clip_epsilon else 1.0)
                num_network_updates += 1
                loc, scale = dist_params(obs_t[idx])
                new_lp = tanh_normal_log_prob(loc, scale, u_t[idx])
                a_hat = adv_t[idx]
                a_hat = (a_hat - a_hat.mean()) / (a_hat.std() + 1e-8)
                ratio = torch.exp(new_lp - lp_t[idx])
                loss_objective = -torch.min(
                    ratio * a_hat, ratio.clamp(1 - clip, 1 + clip) * a_hat
                ).mean()
                sample = loc + scale * torch.randn_like(loc)
                entropy = -tanh_normal_log_prob(loc, scale, sample).mean()
                loss_entropy = -args.entropy_coef * entropy
                loss_critic = (
                    args.critic_coef * ((critic(obs_t[idx])[:, 0] - target[idx]) ** 2).mean()
                )
                actor_loss = loss_objective + loss_entropy
                actor_optim.zero_grad()
                critic_optim.zero_grad()
                actor_loss.backward()
                loss_critic.backward()
                actor_optim.step()
                critic_optim.step()
                losses["loss_critic"].append(loss_critic.item())
                losses["loss_entropy"].append(loss_entropy.item())
                losses["loss_objective"].append(loss_objective.item())
        training_time = time.time() - training_start
        for key, vals in losses.items():
            log_info[f"train/{key}"] = float(np.mean(vals))
        log_info.update(
            {
                "train/lr": alpha * args.lr,
                "train/sampling_time": sampling_time,
                "train/training_time": training_time,
                "train/clip_epsilon": (
                    alpha * args.clip_epsilon if args.anneal_clip_epsilon else args.clip_epsilon
                ),
            }
        )
        if (i - 1) * frames_in_batch // args.test_interval < (
            i * frames_in_batch
        ) // args.test_interval:
            eval_start = time.time()
            test_reward = eval_model(args.num_test_episodes)
            log_info.update({"eval/reward": test_reward, "eval/time": time.time() - eval_start})
        for key, value in log_info.items():  # MLFlowLogger.log_scalar
            mlflow.log_metric(key, value, step=collected_frames)
        print(
            f"collected_frames={collected_frames} "
            + " ".join(f"{k}={v:.4g}" for k, v in log_info.items()),
            flush=True,
        )
        i += 1
        sampling_start = time.time()
    if args.record_video:
        print(f"VideoRecorder.dump(): {len(video_frames)} frames", flush=True)
    if args.num_workers:
        env.close()
