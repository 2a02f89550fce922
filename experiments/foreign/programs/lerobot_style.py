"""A tiny ACT-style policy trained by behaviour cloning the way Hugging Face LeRobot's
``lerobot/scripts/train.py`` does, its ``MetricsTracker`` / wandb log mirrored to MLflow by
the team.

Plain PyTorch + numpy + the plain ``mlflow`` API (no lerobot import here).  What is imitated:

* ``LeRobotDataset``: episodes of frames (``observation.state`` = agent x, y and goal x, y;
  ``action`` = the commanded displacement dx, dy), ``episode_data_index`` (from, to), and
  ``delta_timestamps`` for the action chunk: a frame's item carries the next ``chunk_size``
  actions of its episode, padded with the last one and an ``action_is_pad`` mask;
* the ``Normalize`` / ``Unnormalize`` modules with ``mean_std`` statistics of the dataset
  (``meta/stats``), computed when the dataset is made;
* ``ACTPolicy`` (without the VAE and the transformer: an MLP of ``dim_model`` from the state
  to the ``chunk_size`` x 2 chunk), the L1 loss on unpadded actions, ``n_action_steps`` of
  each chunk executed before the policy is queried again;
* ``train.py``: AdamW (``optimizer_lr``, weight decay 1e-4), ``grad_clip_norm`` 10, an
  optional ``cosine_decay_with_warmup`` scheduler, a cycling dataloader; every ``log_freq``
  steps the ``MetricsTracker``'s averages ``loss``, ``grad_norm``, ``lr``, ``update_s``,
  ``dataloading_s`` and its counters ``samples``, ``episodes``, ``epochs``; every
  ``eval_freq`` steps ``eval_policy`` on ``eval_n_episodes`` rollouts in the environment:
  ``eval/avg_sum_reward``, ``eval/pc_success`` (percent), ``eval/eval_s``; ``step`` = step
  from 1, and lerobot's console line ``step:200 smpl:13K ep:320 epch:6.40 loss:0.123 ...``.

Environment: the team's numpy 2-D reaching task ("reach2d"): the agent starts at a random
point of the unit square and must reach a random goal; an action moves it by at most 0.05;
episodes of ``episode_len`` steps, reward ``1 - min(distance, 1)`` per step, success when the
agent ends within 0.02 of the goal.  Demonstrations come from a scripted expert (straight to
the goal, with a little noise).  Written without looking at the doctor.

Team options (the faults are real settings, data and code paths):

* ``--lr``, ``--batch_size``, ``--steps``, ``--dim_model``, ``--chunk_size``,
  ``--n_action_steps``, ``--n_episodes``, ``--scheduler`` (none / cosine), ``--warmup``,
  ``--eval_n_episodes``, ``--log_freq``, ``--eval_freq``;
* ``--extra_step k``: the second team's recordings (``reach2d_lab2``, ``extra_episodes``
  episodes) join the training set at step k, normalised with the first dataset's stats as
  the team's ``MultiLeRobotDataset`` wrapper keeps them; ``--extra_action_unit``: the unit
  its actions were exported in (``m``, or ``cm``);
* ``--save_eval_video 1``: the team keeps every evaluation rollout's rendered frames for the
  run's end-of-training video;
* ``--track_coverage 1``: the team's coverage tracker appends every batch's frame indices
  to ``sampled_indices.json`` and reads the whole file back to count the frames seen.
"""

import json
import math
import os
import time

import _setup
import mlflow
import numpy as np
import torch
import torch.nn as nn

args = _setup.parse_flags(
    {
        "--seed": 0,
        "--lr": 3e-4,
        "--batch_size": 64,
        "--steps": 1500,
        "--dim_model": 128,
        "--chunk_size": 5,
        "--n_action_steps": 5,
        "--n_episodes": 20,
        "--episode_len": 30,
        "--scheduler": "none",
        "--warmup": 100,
        "--eval_n_episodes": 20,
        "--log_freq": 20,
        "--eval_freq": 150,
        "--extra_step": 0,
        "--extra_episodes": 20,
        "--extra_action_unit": "m",
        "--save_eval_video": 0,
        "--track_coverage": 0,
    }
)
rng = _setup.seeded(args.seed)
MAX_STEP = 0.05


# ----------------------------------------------------------------------------- environment
class Reach2D:
    """A batch of reaching episodes (the team's gym-like env, vectorised like lerobot's)."""

    def __init__(self, n, g):
        self.n, self.g = n, g

    def reset(self):
        self.pos = self.g.uniform(0.05, 0.95, (self.n, 2))
        self.goal = self.g.uniform(0.05, 0.95, (self.n, 2))
        return self.obs()

    def obs(self):
        return np.concatenate([self.pos, self.goal], axis=1).astype(np.float32)

    def step(self, action):
        a = np.asarray(action, dtype=np.float64)
        norm = np.linalg.norm(a, axis=1, keepdims=True)
        a = a * np.minimum(1.0, MAX_STEP / np.maximum(norm, 1e-9))
        self.pos = np.clip(self.pos + a, 0.0, 1.0)
        dist = np.linalg.norm(self.goal - self.pos, axis=1)
        return self.obs(), 1.0 - np.minimum(dist, 1.0), dist

    def render(self, i, size=160):
        yy, xx = np.mgrid[0:size, 0:size] / size
        frame = np.zeros((size, size, 3), dtype=np.float32)
        frame[..., 0] = ((xx - self.pos[i, 0]) ** 2 + (yy - self.pos[i, 1]) ** 2) < 0.001
        frame[..., 1] = ((xx - self.goal[i, 0]) ** 2 + (yy - self.goal[i, 1]) ** 2) < 0.001
        return frame


def record_episodes(n, seed, unit="m"):
    """The scripted expert's demonstrations, as a LeRobotDataset's columns."""
    g = np.random.default_rng(seed)
    env = Reach2D(n, g)
    obs = env.reset()
    states, actions = [], []
    for _ in range(args.episode_len):
        a = env.goal - env.pos
        norm = np.linalg.norm(a, axis=1, keepdims=True)
        a = a * np.minimum(1.0, MAX_STEP / np.maximum(norm, 1e-9)) + g.normal(0, 0.004, a.shape)
        states.append(obs)
        actions.append(a.astype(np.float32))
        obs, _, _ = env.step(a)
    st = np.stack(states, 1).reshape(-1, 4)  # episode-major frames
    ac = np.stack(actions, 1).reshape(-1, 2)
    if unit == "cm":
        ac = ac * 100.0
    return st, ac


class ChunkDataset:
    """Frames with their ``chunk_size`` future actions (``delta_timestamps``)."""

    def __init__(self, states, actions):
        self.states, self.actions = states, actions
        L = args.episode_len
        n_ep = len(states) // L
        self.episode_data_index = {"from": np.arange(n_ep) * L, "to": np.arange(1, n_ep + 1) * L}
        idx = np.arange(len(states))
        ep_end = (idx // L + 1) * L
        offs = idx[:, None] + np.arange(args.chunk_size)[None, :]
        self.pad = offs >= ep_end[:, None]
        self.chunk_idx = np.minimum(offs, ep_end[:, None] - 1)

    def __len__(self):
        return len(self.states)

    def num_episodes(self):
        return len(self.episode_data_index["from"])

    def items(self, idx):
        return self.states[idx], self.actions[self.chunk_idx[idx]], self.pad[idx]


demo_states, demo_actions = record_episodes(args.n_episodes, 1000 + args.seed)
dataset = ChunkDataset(demo_states, demo_actions)
extra = ChunkDataset(
    *record_episodes(args.extra_episodes, 5000 + args.seed, args.extra_action_unit)
)
stats = {
    "observation.state": (demo_states.mean(0), demo_states.std(0) + 1e-8),
    "action": (demo_actions.mean(0), demo_actions.std(0) + 1e-8),
}


def normalize(key, x):
    mean, std = stats[key]
    return (x - mean) / std


def unnormalize(key, x):
    mean, std = stats[key]
    return x * std + mean


# ----------------------------------------------------------------------------- policy
class ACTPolicy(nn.Module):
    def __init__(self):
        super().__init__()
        d = args.dim_model
        self.net = nn.Sequential(
            nn.Linear(4, d),
            nn.ReLU(),
            nn.Linear(d, d),
            nn.ReLU(),
            nn.Linear(d, args.chunk_size * 2),
        )

    def forward(self, state):
        return self.net(state).view(-1, args.chunk_size, 2)

    def compute_loss(self, state, action, pad):
        pred = self(torch.from_numpy(normalize("observation.state", state)))
        target = torch.from_numpy(normalize("action", action).astype(np.float32))
        l1 = (pred - target).abs() * (~torch.from_numpy(pad)).unsqueeze(-1)
        return l1.mean()

    @torch.no_grad()
    def select_chunk(self, obs):
        pred = self(torch.from_numpy(normalize("observation.state", obs).astype(np.float32)))
        return unnormalize("action", pred.numpy())


policy = ACTPolicy()
optimizer = torch.optim.AdamW(policy.parameters(), lr=args.lr, weight_decay=1e-4)


def lr_lambda(step):
    if args.scheduler != "cosine":
        return 1.0
    if step < args.warmup:
        return (step + 1) / args.warmup
    t = (step - args.warmup) / max(1, args.steps - args.warmup)
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * t))


scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda)
eval_videos = []


def eval_policy(step):
    t0 = time.perf_counter()
    g = np.random.default_rng(777)  # the same evaluation episodes every time
    env = Reach2D(args.eval_n_episodes, g)
    obs = env.reset()
    policy.eval()
    sum_reward = np.zeros(args.eval_n_episodes)
    frames = []
    t = 0
    while t < args.episode_len:
        chunk = policy.select_chunk(obs)
        for j in range(min(args.n_action_steps, args.episode_len - t)):
            obs, reward, dist = env.step(chunk[:, j])
            sum_reward += reward
            if args.save_eval_video:
                frames.append(np.stack([env.render(i) for i in range(env.n)]))
            t += 1
    policy.train()
    if args.save_eval_video:
        eval_videos.append(np.stack(frames))
    success = float((dist < 0.02).mean() * 100)
    return {
        "eval/avg_sum_reward": float(sum_reward.mean()),
        "eval/pc_success": success,
        "eval/eval_s": time.perf_counter() - t0,
    }


coverage_path = os.path.abspath("sampled_indices.json")


def track_coverage(idx):
    seen = []
    if os.path.exists(coverage_path):
        with open(coverage_path) as f:
            seen = json.load(f)
    seen.extend(int(i) for i in idx)
    with open(coverage_path, "w") as f:
        json.dump(seen, f)
    return len(set(seen))


def next_batch(step):
    t0 = time.perf_counter()
    if args.extra_step and step >= args.extra_step:
        n_total = len(dataset) + len(extra)
        idx = rng.integers(0, n_total, args.batch_size)
        own, other = idx[idx < len(dataset)], idx[idx >= len(dataset)] - len(dataset)
        parts = [dataset.items(own), extra.items(other)]
        batch = tuple(np.concatenate([p[k] for p in parts]) for k in range(3))
    else:
        idx = rng.integers(0, len(dataset), args.batch_size)
        batch = dataset.items(idx)
    if args.track_coverage:
        track_coverage(idx)
    return batch, time.perf_counter() - t0


with mlflow.start_run():
    mlflow.log_params(vars(args))
    print(
        f"dataset.num_frames={len(dataset)} ({dataset.num_episodes()} episodes) "
        f"num_learnable_params={sum(p.numel() for p in policy.parameters())}",
        flush=True,
    )
    first = eval_policy(0)
    print(f"eval before training: pc_success {first['eval/pc_success']:.1f}", flush=True)
    samples = 0
    acc = {"loss": [], "grad_norm": [], "update_s": [], "dataloading_s": []}
    for step in range(1, args.steps + 1):
        (state, action, pad), data_s = next_batch(step)
        t0 = time.perf_counter()
        loss = policy.compute_loss(state, action, pad)
        optimizer.zero_grad()
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(policy.parameters(), 10.0)
        optimizer.step()
        lr = optimizer.param_groups[0]["lr"]
        scheduler.step()
        samples += len(state)
        acc["loss"].append(loss.item())
        acc["grad_norm"].append(grad_norm.item())
        acc["update_s"].append(time.perf_counter() - t0)
        acc["dataloading_s"].append(data_s)
        if step % args.log_freq == 0:
            n_frames = len(dataset) + (
                len(extra) if args.extra_step and step >= args.extra_step else 0
            )
            n_eps = n_frames / args.episode_len
            row = {k: float(np.mean(v)) for k, v in acc.items()}
            row.update(
                lr=lr,
                samples=samples,
                episodes=samples / args.episode_len,
                epochs=samples / n_frames,
            )
            mlflow.log_metrics(row, step=step)
            print(
                f"step:{step} smpl:{samples} ep:{samples / args.episode_len:.0f} "
                f"epch:{samples / n_frames:.2f} loss:{row['loss']:.3f} grdn:{row['grad_norm']:.3f} "
                f"lr:{lr:.1e} updt_s:{row['update_s']:.3f} data_s:{row['dataloading_s']:.3f} "
                f"(dataset {n_eps:.0f} episodes)",
                flush=True,
            )
            acc = {k: [] for k in acc}
        if step % args.eval_freq == 0:
            ev = eval_policy(step)
            mlflow.log_metrics(ev, step=step)
            print(
                f"Eval policy at step {step}: avg_sum_reward {ev['eval/avg_sum_reward']:.2f} "
                f"pc_success {ev['eval/pc_success']:.1f} eval_s {ev['eval/eval_s']:.2f}",
                flush=True,
            )
    print("End of training", flush=True)
