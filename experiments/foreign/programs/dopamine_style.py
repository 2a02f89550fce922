"""A DQN agent trained as Google Dopamine's ``Runner`` trains one (``dopamine.discrete_domains.
run_experiment.Runner`` with the JAX ``DQNAgent`` and the ``dqn_cartpole.gin`` settings), its
TensorBoard summaries mirrored to MLflow by the team's summary writer.

Plain PyTorch + numpy + the plain ``mlflow`` API (no Dopamine, no Gym here).  What is imitated:

* ``Runner.run_experiment``: ``num_iterations`` iterations, each a training phase of at least
  ``training_steps`` environment steps (whole episodes of at most ``max_steps_per_episode``
  steps) and an evaluation phase of at least ``evaluation_steps`` steps with ``epsilon_eval``;
  after each iteration ``Runner._save_tensorboard_summaries`` writes, at ``step = iteration``
  (from 0): ``Train/NumEpisodes``, ``Train/AverageReturns``, ``Train/AverageStepsPerSecond``,
  ``Eval/NumEpisodes``, ``Eval/AverageReturns``; the log lines ``Average undiscounted return per
  training episode: 22.41`` and ``Average training steps per second: 812.31``;
* ``DQNAgent`` (``gamma``, ``update_horizon`` 1, ``min_replay_history``, ``update_period``,
  ``target_update_period``, ``epsilon_fn = linearly_decaying_epsilon`` over
  ``epsilon_decay_period`` to ``epsilon_train``, Adam with ``learning_rate`` and ``eps``,
  Huber loss on the TD error); every ``summary_writing_frequency`` training steps the agent
  writes ``HuberLoss`` at ``step = training_steps`` (the agent's own counter of environment
  steps, from the first step of training);
* ``OutOfGraphReplayBuffer`` (``replay_capacity``, ``batch_size``) as a circular numpy buffer;
* the ``Checkpointer`` that saves the agent after every iteration (``ckpt.<iteration>``),
  keeping the last few.

Environment: a numpy CartPole (the classic physics, 200 steps at most, +1 a step).

The team's additions: ``--best_every`` (every that many iterations a ``best.json`` with the
best evaluation return so far is written next to the checkpoints); ``--bucket_sync_every``
(every that many iterations the checkpoint folder is synced to the team's bucket, waiting for
the sync lock of any earlier sync to go away); ``--gif_eval_episodes`` (the evaluation episodes
are rendered to 200 x 300 RGB frames for the GIF summary the team looks at).  Written without
looking at the doctor.

Faults are real settings: ``--learning_rate``; ``--best_every``; ``--stale_sync_lock`` (a
previous, preempted job left its sync lock in the shared base_dir); ``--gif_eval_episodes``
with ``--gif_keep_all`` (the frames of every evaluation episode kept, not the last one's).
"""

import json
import math
import os
import time

import _setup
import mlflow
import numpy as np
import torch

args = _setup.parse_flags(
    {
        "--seed": 0,
        "--num_iterations": 20,
        "--training_steps": 1000,
        "--evaluation_steps": 600,
        "--max_steps_per_episode": 200,
        "--gamma": 0.99,
        "--min_replay_history": 500,
        "--update_period": 2,
        "--target_update_period": 100,
        "--epsilon_train": 0.01,
        "--epsilon_eval": 0.001,
        "--epsilon_decay_period": 2000,
        "--learning_rate": 1e-3,
        "--adam_eps": 3.125e-4,
        "--batch_size": 64,
        "--replay_capacity": 50000,
        "--hidden": 64,
        "--layers": 2,
        "--summary_writing_frequency": 100,
        "--best_every": 0,
        "--bucket_sync_every": 0,
        "--stale_sync_lock": 0,
        "--gif_eval_episodes": 0,
        "--gif_keep_all": 0,
    }
)
rng = _setup.seeded(args.seed)


class CartPole:
    def __init__(self, seed):
        self.rng = np.random.default_rng(seed)
        self.s = None
        self.t = 0

    def reset(self):
        self.s = self.rng.uniform(-0.05, 0.05, 4)
        self.t = 0
        return self.s.astype(np.float32)

    def step(self, a):
        x, xd, th, thd = self.s
        force = 10.0 if a == 1 else -10.0
        ct, st = math.cos(th), math.sin(th)
        temp = (force + 0.05 * thd * thd * st) / 1.1
        tha = (9.8 * st - ct * temp) / (0.5 * (4.0 / 3.0 - 0.1 * ct * ct / 1.1))
        xa = temp - 0.05 * tha * ct / 1.1
        x, xd = x + 0.02 * xd, xd + 0.02 * xa
        th, thd = th + 0.02 * thd, thd + 0.02 * tha
        self.s = np.array([x, xd, th, thd])
        self.t += 1
        done = abs(x) > 2.4 or abs(th) > 12 * 2 * math.pi / 360
        return self.s.astype(np.float32), 1.0, done, self.t >= args.max_steps_per_episode

    def render(self):
        frame = np.full((200, 300, 3), 255, np.uint8)
        cx = int(150 + self.s[0] * 50)
        frame[150:165, max(0, cx - 12) : cx + 12] = 0
        tip = int(cx + 50 * math.sin(self.s[2]))
        frame[100:150, min(cx, tip) : max(cx, tip) + 3] = (200, 150, 100)
        return frame


def network():
    layers, d = [], 4
    for _ in range(args.layers):
        layers += [torch.nn.Linear(d, args.hidden), torch.nn.ReLU()]
        d = args.hidden
    return torch.nn.Sequential(*layers, torch.nn.Linear(d, 2))


online, target = network(), network()
target.load_state_dict(online.state_dict())
optim = torch.optim.Adam(online.parameters(), lr=args.learning_rate, eps=args.adam_eps)

cap = args.replay_capacity
rb = {
    "s": np.zeros((cap, 4), np.float32),
    "a": np.zeros(cap, np.int64),
    "r": np.zeros(cap, np.float32),
    "s2": np.zeros((cap, 4), np.float32),
    "d": np.zeros(cap, np.float32),
}
rb_n = rb_i = 0
training_steps = 0
gif_frames = []


def add(s, a, r, s2, d):
    global rb_n, rb_i
    for k, v in zip(("s", "a", "r", "s2", "d"), (s, a, r, s2, d), strict=True):
        rb[k][rb_i] = v
    rb_i = (rb_i + 1) % cap
    rb_n = min(rb_n + 1, cap)


def epsilon():
    steps_left = args.epsilon_decay_period + args.min_replay_history - training_steps
    bonus = (1.0 - args.epsilon_train) * steps_left / args.epsilon_decay_period
    return args.epsilon_train + float(np.clip(bonus, 0.0, 1.0 - args.epsilon_train))


def act(s, eps):
    if rng.uniform() < eps:
        return int(rng.integers(2))
    with torch.no_grad():
        return int(online(torch.from_numpy(s)[None]).argmax(1))


def train_step():
    i = rng.integers(0, rb_n, args.batch_size)
    s, a, r = (torch.from_numpy(rb[k][i]) for k in ("s", "a", "r"))
    s2, d = torch.from_numpy(rb["s2"][i]), torch.from_numpy(rb["d"][i])
    with torch.no_grad():
        tgt = r + args.gamma * target(s2).max(1).values * (1.0 - d)
    q = online(s).gather(1, a[:, None])[:, 0]
    loss = torch.nn.functional.huber_loss(q, tgt)
    optim.zero_grad()
    loss.backward()
    optim.step()
    return loss.item()


def run_phase(env, min_steps, train):
    global training_steps
    steps, returns, losses = 0, [], []
    while steps < min_steps:
        s, ret = env.reset(), 0.0
        if not train and args.gif_eval_episodes:
            if not args.gif_keep_all:
                gif_frames.clear()
        while True:
            a = act(s, epsilon() if train else args.epsilon_eval)
            s2, r, term, trunc = env.step(a)
            ret += r
            steps += 1
            if not train and args.gif_eval_episodes:
                gif_frames.append(env.render())
            if train:
                add(s, a, r, s2, float(term))
                training_steps += 1
                if rb_n >= args.min_replay_history:
                    if training_steps % args.update_period == 0:
                        losses.append(train_step())
                    if training_steps % args.target_update_period == 0:
                        target.load_state_dict(online.state_dict())
                    if training_steps % args.summary_writing_frequency == 0 and losses:
                        mlflow.log_metric("HuberLoss", float(np.mean(losses[-50:])), training_steps)
            s = s2
            if term or trunc:
                break
        returns.append(ret)
    return steps, returns


def save_checkpoint(iteration, best):
    os.makedirs("checkpoints", exist_ok=True)
    torch.save(
        {"online": online.state_dict(), "target": target.state_dict(), "iteration": iteration},
        f"checkpoints/ckpt.{iteration}",
    )
    old = f"checkpoints/ckpt.{iteration - 5}"
    if os.path.exists(old):
        os.remove(old)
    if args.best_every and iteration % args.best_every == 0 and iteration > 0:
        with open("checkpoints/best.json", "w") as f:
            json.dump({"iteration": best[0], "eval_average_return": best[1]}, f)
    if args.bucket_sync_every and iteration % args.bucket_sync_every == 0 and iteration > 0:
        lock = "checkpoints/.bucket_sync.lock"
        while os.path.exists(lock):  # an earlier sync still running
            time.sleep(0.5)
        open(lock, "w").close()
        os.remove(lock)  # the sync itself is instantaneous here


with mlflow.start_run():
    mlflow.log_params(vars(args))
    if args.stale_sync_lock:
        os.makedirs("checkpoints", exist_ok=True)
        open("checkpoints/.bucket_sync.lock", "w").close()  # the preempted job's
    print("Beginning training...", flush=True)
    train_env, eval_env = CartPole(args.seed + 1), CartPole(args.seed + 2)
    best = (-1, -np.inf)
    for it in range(args.num_iterations):
        print(f"Starting iteration {it}", flush=True)
        t0 = time.time()
        n, tr = run_phase(train_env, args.training_steps, True)
        sps = n / (time.time() - t0)
        print(f"Average undiscounted return per training episode: {np.mean(tr):.2f}", flush=True)
        print(f"Average training steps per second: {sps:.2f}", flush=True)
        _, ev = run_phase(eval_env, args.evaluation_steps, False)
        print(f"Average undiscounted return per evaluation episode: {np.mean(ev):.2f}", flush=True)
        if np.mean(ev) > best[1]:
            best = (it, np.float32(np.mean(ev)))
        mlflow.log_metrics(
            {
                "Train/NumEpisodes": len(tr),
                "Train/AverageReturns": float(np.mean(tr)),
                "Train/AverageStepsPerSecond": sps,
                "Eval/NumEpisodes": len(ev),
                "Eval/AverageReturns": float(np.mean(ev)),
            },
            step=it,
        )
        save_checkpoint(it, best)
