"""A DQN agent written in the shape of DeepMind Acme's ``agents.jax.dqn`` / ``tf.dqn``
(an actor, a replay table, a learner with an online and a target network, an evaluator),
its loggers mirrored to MLflow.

Plain PyTorch + numpy + the plain ``mlflow`` API (no acme, no dm_env, no reverb import here).
What is imitated:

* an ``EnvironmentLoop`` for the actor (epsilon-greedy) and one for the evaluator (greedy),
  each with its own logger: per finished episode 'actor/episode_return',
  'actor/episode_length', 'actor/actor_steps' at step = actor steps, and every
  ``eval_every`` actor steps 'evaluator/episode_return' (the mean over ``eval_episodes``
  greedy episodes) at step = actor steps;
* a Reverb-like uniform replay table (``max_replay_size``, ``min_replay_size``,
  ``samples_per_insert`` = 1 learner step per actor step once the table is warm);
* the learner: double-Q TD loss (Huber) on an MLP, Adam, the target network copied every
  ``target_update_period`` learner steps; the learner's logger every ``log_every`` learner
  steps: 'learner/loss', 'learner/steps', 'learner/steps_per_second' at step = learner steps.

Environment: a generated gridworld (a dm_env-like ``reset``/``step``) of ``size`` x ``size``
cells with a few walls, a goal (+1) and a small step cost; random starts; episodes end at the
goal or after ``max_episode_len`` steps.  Written without looking at the doctor.

Team options (the faults are real settings, data and code paths):

* ``--learning_rate``, ``--batch_size``, ``--hidden``, ``--target_update_period``,
  ``--epsilon``, ``--discount``, ``--num_actor_steps``, ``--eval_every``,
  ``--eval_episodes``, ``--min_replay_size``;
* ``--level2_step k``: from actor step k the actor and the evaluator also play a second
  layout, read from the team's level file (a JSON-like dict) by ``--level2_key``
  (``walls``);
* ``--keep_batches 1``: the team's replay inspector keeps every sampled batch, widened to the
  observation spec of the full environment suite (float64), for a later plot of the
  sampled state distribution.
"""

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
        "--learning_rate": 1e-3,
        "--batch_size": 64,
        "--hidden": 64,
        "--target_update_period": 100,
        "--epsilon": 0.1,
        "--discount": 0.95,
        "--num_actor_steps": 3000,
        "--eval_every": 150,
        "--eval_episodes": 10,
        "--min_replay_size": 300,
        "--max_replay_size": 20000,
        "--log_every": 50,
        "--size": 6,
        "--max_episode_len": 40,
        "--level2_step": 0,
        "--level2_key": "walls",
        "--keep_batches": 0,
    }
)
rng = _setup.seeded(args.seed)
S = args.size
OBS = 2 * S * S
MOVES = [(-1, 0), (1, 0), (0, -1), (0, 1)]


def make_level(g):
    walls = set()
    while len(walls) < S:
        c = (int(g.integers(1, S - 1)), int(g.integers(1, S - 1)))
        walls.add(c)
    return {"walls": sorted(walls), "goal": (S - 1, S - 1)}


LEVEL1 = make_level(np.random.default_rng(500 + args.seed))


def load_level2():
    spec = make_level(np.random.default_rng(600 + args.seed))
    return {"walls": spec[args.level2_key], "goal": (0, S - 1)}


class GridWorld:
    """A dm_env-like gridworld: reset() → obs, step(a) → (obs, reward, done)."""

    def __init__(self, level, g):
        self.walls = set(map(tuple, level["walls"]))
        self.goal = tuple(level["goal"])
        self.g = g
        self.layer = 0

    def obs(self):
        o = np.zeros(OBS, np.float32)
        o[self.pos[0] * S + self.pos[1]] = 1.0
        o[S * S + self.goal[0] * S + self.goal[1]] = 1.0
        return o

    def reset(self):
        while True:
            p = (int(self.g.integers(0, S)), int(self.g.integers(0, S)))
            if p not in self.walls and p != self.goal:
                break
        self.pos, self.t = p, 0
        return self.obs()

    def step(self, a):
        dr, dc = MOVES[a]
        p = (min(max(self.pos[0] + dr, 0), S - 1), min(max(self.pos[1] + dc, 0), S - 1))
        if p not in self.walls:
            self.pos = p
        self.t += 1
        done = self.pos == self.goal
        r = 1.0 if done else -0.02
        return self.obs(), r, done or self.t >= args.max_episode_len, done


def mlp():
    h = args.hidden
    return nn.Sequential(nn.Linear(OBS, h), nn.ReLU(), nn.Linear(h, h), nn.ReLU(), nn.Linear(h, 4))


online, target = mlp(), mlp()
target.load_state_dict(online.state_dict())
opt = torch.optim.Adam(online.parameters(), lr=args.learning_rate)


class Replay:
    def __init__(self, n):
        self.o = np.zeros((n, OBS), np.float32)
        self.a = np.zeros(n, np.int64)
        self.r = np.zeros(n, np.float32)
        self.d = np.zeros(n, np.float32)
        self.o2 = np.zeros((n, OBS), np.float32)
        self.n, self.i, self.full = n, 0, False

    def add(self, o, a, r, d, o2):
        self.o[self.i], self.a[self.i], self.r[self.i], self.d[self.i] = o, a, r, d
        self.o2[self.i] = o2
        self.i = (self.i + 1) % self.n
        self.full = self.full or self.i == 0

    def __len__(self):
        return self.n if self.full else self.i

    def sample(self, k):
        j = rng.integers(0, len(self), k)
        return [torch.from_numpy(x[j]) for x in (self.o, self.a, self.r, self.d, self.o2)]


replay = Replay(args.max_replay_size)
inspected = []


def act(o, eps, g):
    if g.random() < eps:
        return int(g.integers(0, 4))
    with torch.no_grad():
        return int(online(torch.from_numpy(o)).argmax())


def learner_step():
    o, a, r, d, o2 = replay.sample(args.batch_size)
    if args.keep_batches:
        # the suite's widest observation spec: 16 x 16 grids x 8 feature planes, float64
        wide = np.zeros((args.batch_size, 16 * 16 * 8), np.float64)
        wide[:, :OBS] = o.numpy()
        inspected.append(wide)
    q = online(o).gather(1, a[:, None]).squeeze(1)
    with torch.no_grad():
        a2 = online(o2).argmax(1, keepdim=True)
        y = r + args.discount * (1 - d) * target(o2).gather(1, a2).squeeze(1)
    loss = F.smooth_l1_loss(q, y)
    opt.zero_grad()
    loss.backward()
    opt.step()
    return loss.item()


def evaluate(envs, g):
    rets = []
    for k in range(args.eval_episodes):
        env = envs[k % len(envs)]
        o, ret, done = env.reset(), 0.0, False
        while not done:
            o, r, done, _ = env.step(act(o, 0.0, g))
            ret += r
        rets.append(ret)
    return float(np.mean(rets))


with mlflow.start_run():
    mlflow.log_params(vars(args))
    g_act = np.random.default_rng(10 + args.seed)
    g_eval = np.random.default_rng(20 + args.seed)
    envs = [GridWorld(LEVEL1, g_act)]
    eval_envs = [GridWorld(LEVEL1, g_eval)]
    print(f"[Environment] {S}x{S} grid, walls {LEVEL1['walls']}", flush=True)
    learner_steps, actor_steps, episodes = 0, 0, 0
    losses, t_log = [], time.time()
    t0 = time.time()
    env = envs[0]
    o, ep_ret, ep_len = env.reset(), 0.0, 0
    while actor_steps < args.num_actor_steps:
        a = act(o, args.epsilon, g_act)
        o2, r, done, terminal = env.step(a)
        replay.add(o, a, r, float(terminal), o2)
        o, ep_ret, ep_len = o2, ep_ret + r, ep_len + 1
        actor_steps += 1
        if done:
            episodes += 1
            mlflow.log_metrics(
                {
                    "actor/episode_return": ep_ret,
                    "actor/episode_length": ep_len,
                    "actor/actor_steps": actor_steps,
                },
                step=actor_steps,
            )
            env = envs[episodes % len(envs)]
            o, ep_ret, ep_len = env.reset(), 0.0, 0
        if len(replay) >= args.min_replay_size:
            losses.append(learner_step())
            learner_steps += 1
            if learner_steps % args.target_update_period == 0:
                target.load_state_dict(online.state_dict())
            if learner_steps % args.log_every == 0:
                now = time.time()
                sps = args.log_every / max(now - t_log, 1e-6)
                t_log = now
                loss = float(np.mean(losses))
                losses = []
                mlflow.log_metrics(
                    {
                        "learner/loss": loss,
                        "learner/steps": learner_steps,
                        "learner/steps_per_second": sps,
                    },
                    step=learner_steps,
                )
                print(
                    f"[Learner] Loss = {loss:.4f} | Steps = {learner_steps} | "
                    f"Steps Per Second = {sps:.1f}",
                    flush=True,
                )
        if args.level2_step and actor_steps == args.level2_step:
            level2 = load_level2()
            envs.append(GridWorld(level2, g_act))
            eval_envs.append(GridWorld(level2, g_eval))
            print(f"[Environment] level 2 joins at actor step {actor_steps}", flush=True)
        if actor_steps % args.eval_every == 0:
            ret = evaluate(eval_envs, g_eval)
            mlflow.log_metric("evaluator/episode_return", ret, step=actor_steps)
            print(
                f"[Evaluator] Episode Return = {ret:.3f} | Actor Steps = {actor_steps}", flush=True
            )
    print(f"done in {time.time() - t0:.1f}s", flush=True)
