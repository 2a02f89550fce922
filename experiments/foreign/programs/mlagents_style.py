"""A PPO agent trained as Unity ML-Agents' ``mlagents-learn`` trains one, its ``StatsReporter``
summaries written by the team's ``StatsWriter`` that mirrors ``TensorboardWriter`` to MLflow.

Plain PyTorch + numpy + the plain ``mlflow`` API (no ML-Agents, no Unity here).  What is
imitated:

* the trainer config's ``hyperparameters`` for ``trainer_type: ppo`` (``batch_size``,
  ``buffer_size``, ``learning_rate`` with ``learning_rate_schedule: linear`` down to 1e-10 at
  ``max_steps``, ``beta`` (entropy) and ``epsilon`` (clip) with linear schedules down to 1e-5 and
  0.1, ``lambd``, ``num_epoch``), ``network_settings`` (``hidden_units``, ``num_layers``,
  ``normalize``), ``reward_signals.extrinsic`` (``gamma``, ``strength``), ``time_horizon``,
  ``summary_freq``, ``max_steps``; the ``environment_parameters`` curriculum (lessons with
  ``completion_criteria``: ``measure: reward``, ``threshold``, ``min_lesson_length``);
* the trainer's step counting: every agent's step counts (``num_areas`` training areas in one
  scene), trajectories of at most ``time_horizon`` steps go to the update buffer, an update
  (``num_epoch`` passes over ``buffer_size`` experiences in minibatches of ``batch_size``)
  whenever the buffer is full; ``Losses/Policy Loss`` is recorded as ``abs(policy_loss)``;
* ``StatsReporter``: each stat's mean since the last summary, written every ``summary_freq``
  steps at ``step = summary_freq * k``: ``Environment/Cumulative Reward``,
  ``Environment/Episode Length``, ``Environment/Lesson Number/<parameter>`` (with a
  curriculum), ``Policy/Entropy``, ``Policy/Extrinsic Value Estimate``,
  ``Policy/Extrinsic Reward``, ``Policy/Learning Rate``, ``Policy/Epsilon``, ``Policy/Beta``,
  ``Losses/Policy Loss``, ``Losses/Value Loss``, ``Is Training``; the team's writer adds the
  ConsoleWriter's ``Time Elapsed`` and its hierarchical timer totals since the last summary
  (``Timers/env_step``, ``Timers/update_policy`` in seconds, ``Timers/steps_per_sec``);
* the console line ``[INFO] PushTarget. Step: 12000. Time Elapsed: 9.312 s. Mean Reward:
  0.512. Std of Reward: 0.310. Training.``.

Environment: a numpy ``PushTarget`` scene (``num_areas`` areas, each a 10 m x 10 m arena with
one agent and one target; five discrete actions; the observation is the agent's position and
velocity, the target's relative position and ``num_rays`` ray distances to the walls; +1 for
reaching the target, -1/``max_step`` a step, ``max_step`` steps an episode); a new target is
spawned by rejection sampling at least ``min_spawn_distance`` from the agent.  The team's
``DemonstrationRecorder`` (``--record_demo``) writes the scene's steps to a ``.demo`` file:
after each finished episode it rewrites the whole file from every step recorded so far.
Written without looking at the doctor.

Faults are real settings: ``--learning_rate``; ``--record_demo``; ``--num_rays_lessons``
(rays a lesson asks the ray sensor for); ``--min_spawn_lessons`` (the spawn distance a lesson
asks for).
"""

import time

import _setup
import mlflow
import numpy as np
import torch

args = _setup.parse_flags(
    {
        "--seed": 0,
        "--max_steps": 60000,
        "--summary_freq": 2000,
        "--time_horizon": 64,
        "--batch_size": 128,
        "--buffer_size": 2048,
        "--learning_rate": 1e-3,
        "--learning_rate_schedule": "linear",
        "--beta": 5e-3,
        "--epsilon": 0.2,
        "--lambd": 0.95,
        "--num_epoch": 3,
        "--hidden_units": 64,
        "--num_layers": 2,
        "--normalize": 0,
        "--gamma": 0.99,
        "--strength": 1.0,
        "--num_areas": 8,
        "--max_step": 100,
        "--num_rays": 4,
        "--num_rays_lessons": "",  # e.g. "4,8": a curriculum over the ray sensor
        "--min_spawn_distance": 1.0,
        "--min_spawn_lessons": "",  # e.g. "1,3": a curriculum over the spawn distance
        "--lesson_threshold": 0.6,
        "--min_lesson_length": 50,
        "--record_demo": 0,
        "--demo_name": "PushTarget",
    }
)
rng = _setup.seeded(args.seed)
HALF, MARGIN, SPEED, REACH = 5.0, 0.5, 0.4, 0.8


# ----------------------------------------------------------------------------- curriculum
def _lessons(text, default, cast):
    return [cast(v) for v in text.split(",")] if text else [default]


LESSONS = {
    "num_rays": _lessons(args.num_rays_lessons, args.num_rays, int),
    "min_spawn_distance": _lessons(args.min_spawn_lessons, args.min_spawn_distance, float),
}
CURRICULUM = [k for k, v in LESSONS.items() if len(v) > 1]
lesson = dict.fromkeys(LESSONS, 0)
lesson_episodes = dict.fromkeys(LESSONS, 0)


def param(name):
    return LESSONS[name][lesson[name]]


# ----------------------------------------------------------------------------- environment
class PushTarget:
    ACTIONS = np.array([[0, 0], [0, 1], [0, -1], [1, 0], [-1, 0]], float) * SPEED

    def __init__(self, n, seed):
        self.n, self.rng = n, np.random.default_rng(seed)
        self.pos = np.zeros((n, 2))
        self.vel = np.zeros((n, 2))
        self.target = np.zeros((n, 2))
        self.t = np.zeros(n, np.int64)
        for i in range(n):
            self.reset(i)

    def spawn(self, i):
        d = param("min_spawn_distance")
        while True:  # rejection sampling inside the arena's margin
            p = self.rng.uniform(-HALF + MARGIN, HALF - MARGIN, 2)
            if np.linalg.norm(p - self.pos[i]) >= d:
                self.target[i] = p
                return

    def reset(self, i):
        self.pos[i] = self.rng.uniform(-HALF + 1, HALF - 1, 2)
        self.vel[i] = 0
        self.t[i] = 0
        self.spawn(i)

    def observe(self):
        k = param("num_rays")
        ang = np.arange(k) * 2 * np.pi / k
        dirs = np.stack([np.cos(ang), np.sin(ang)], 1)  # (k, 2)
        rays = []
        for j in range(k):  # distance to the wall along each ray
            dx, dy = dirs[j]
            tx = np.where(dx > 0, (HALF - self.pos[:, 0]) / max(dx, 1e-9), np.inf)
            tx = np.where(dx < 0, (-HALF - self.pos[:, 0]) / min(dx, -1e-9), tx)
            ty = np.where(dy > 0, (HALF - self.pos[:, 1]) / max(dy, 1e-9), np.inf)
            ty = np.where(dy < 0, (-HALF - self.pos[:, 1]) / min(dy, -1e-9), ty)
            rays.append(np.minimum(tx, ty) / (2 * HALF))
        return np.concatenate(
            [self.pos / HALF, self.vel / SPEED, (self.target - self.pos) / HALF]
            + [np.stack(rays, 1)],
            1,
        ).astype(np.float32)

    def step(self, actions):
        self.vel = 0.5 * self.vel + self.ACTIONS[actions]
        self.pos = np.clip(self.pos + self.vel, -HALF + 0.2, HALF - 0.2)
        self.t += 1
        dist = np.linalg.norm(self.target - self.pos, axis=1)
        reached = dist < REACH
        reward = np.where(reached, 1.0, 0.0) - 1.0 / args.max_step
        done = reached | (self.t >= args.max_step)
        return reward, done, reached


class DemonstrationRecorder:
    def __init__(self, name):
        self.path, self.steps = f"{name}.demo.npz", []

    def record(self, obs, actions, rewards):
        self.steps.append(np.concatenate([obs, actions[:, None], rewards[:, None]], 1))

    def episode_end(self):
        np.savez(self.path, steps=np.concatenate(self.steps, 0))


# ----------------------------------------------------------------------------- policy
def mlp(n_in, n_out):
    layers, d = [], n_in
    for _ in range(args.num_layers):
        layers += [torch.nn.Linear(d, args.hidden_units), torch.nn.SiLU()]
        d = args.hidden_units
    return torch.nn.Sequential(*layers, torch.nn.Linear(d, n_out))


OBS = 6 + LESSONS["num_rays"][0]
actor, critic = mlp(OBS, 5), mlp(OBS, 1)
params = list(actor.parameters()) + list(critic.parameters())
optim = torch.optim.Adam(params, lr=args.learning_rate)


class Normalizer:
    def __init__(self, n):
        self.count, self.mean, self.var = 1e-4, np.zeros(n), np.ones(n)

    def update(self, x):
        b = len(x)
        m, v = x.mean(0), x.var(0)
        d = m - self.mean
        tot = self.count + b
        self.mean = self.mean + d * b / tot
        self.var = (self.var * self.count + v * b + d**2 * self.count * b / tot) / tot
        self.count = tot

    def __call__(self, x):
        if not args.normalize:
            return x
        return np.clip((x - self.mean) / np.sqrt(self.var + 1e-8), -5, 5).astype(np.float32)


def decay(initial, final, step):
    if args.learning_rate_schedule == "constant":
        return initial
    return max(final, initial - (initial - final) * step / args.max_steps)


norm = Normalizer(OBS)
env = PushTarget(args.num_areas, args.seed + 1000)
demo = DemonstrationRecorder(args.demo_name) if args.record_demo else None
stats = {}


def add_stat(key, value):
    stats.setdefault(key, []).append(float(value))


def update(buffer, step):
    lr = decay(args.learning_rate, 1e-10, step)
    eps = decay(args.epsilon, 0.1, step)
    beta = decay(args.beta, 1e-5, step)
    for g in optim.param_groups:
        g["lr"] = lr
    obs = torch.from_numpy(np.concatenate(buffer["obs"]))
    act = torch.from_numpy(np.concatenate(buffer["act"]))
    old_logp = torch.from_numpy(np.concatenate(buffer["logp"]))
    adv = torch.from_numpy(np.concatenate(buffer["adv"]))
    ret = torch.from_numpy(np.concatenate(buffer["ret"]))
    old_v = torch.from_numpy(np.concatenate(buffer["val"]))
    n = len(obs)
    for _ in range(args.num_epoch):
        perm = torch.from_numpy(rng.permutation(n))
        for s in range(0, n - args.batch_size + 1, args.batch_size):
            i = perm[s : s + args.batch_size]
            dist = torch.distributions.Categorical(logits=actor(obs[i]))
            logp = dist.log_prob(act[i])
            ratio = torch.exp(logp - old_logp[i])
            a = (adv[i] - adv[i].mean()) / (adv[i].std() + 1e-10)
            pl = -torch.min(ratio * a, torch.clamp(ratio, 1 - eps, 1 + eps) * a).mean()
            v = critic(obs[i])[:, 0]
            v_clip = old_v[i] + torch.clamp(v - old_v[i], -eps, eps)
            vl = torch.max((ret[i] - v) ** 2, (ret[i] - v_clip) ** 2).mean()
            ent = dist.entropy().mean()
            loss = pl + 0.5 * vl - beta * ent
            optim.zero_grad()
            loss.backward()
            optim.step()
            add_stat("Losses/Policy Loss", abs(pl.item()))
            add_stat("Losses/Value Loss", vl.item())
            add_stat("Policy/Learning Rate", lr)
            add_stat("Policy/Epsilon", eps)
            add_stat("Policy/Beta", beta)


def finish_trajectory(traj, last_value, buffer):
    obs, act, logp, rew, val, done = (np.array(traj[k]) for k in traj)
    adv = np.zeros(len(rew), np.float32)
    gae, nv = 0.0, last_value
    for t in reversed(range(len(rew))):
        nonterm = 0.0 if done[t] else 1.0
        delta = rew[t] * args.strength + args.gamma * nv * nonterm - val[t]
        gae = delta + args.gamma * args.lambd * nonterm * gae
        adv[t] = gae
        nv = val[t]
    buffer["obs"].append(obs.astype(np.float32))
    buffer["act"].append(act.astype(np.int64))
    buffer["logp"].append(logp.astype(np.float32))
    buffer["adv"].append(adv)
    buffer["ret"].append((adv + val).astype(np.float32))
    buffer["val"].append(val.astype(np.float32))


def new_buffer():
    return {k: [] for k in ("obs", "act", "logp", "adv", "ret", "val")}


def new_traj():
    return {k: [] for k in ("obs", "act", "logp", "rew", "val", "done")}


with mlflow.start_run():
    mlflow.log_params(vars(args))
    start = last_summary_time = time.time()
    t_env = t_update = 0.0
    step, next_summary = 0, args.summary_freq
    buffer, buffered = new_buffer(), 0
    trajs = [new_traj() for _ in range(args.num_areas)]
    ep_reward = np.zeros(args.num_areas)
    recent = []
    while step < args.max_steps:
        t0 = time.time()
        raw = env.observe()
        norm.update(raw)
        obs = norm(raw)
        with torch.no_grad():
            ot = torch.from_numpy(obs)
            dist = torch.distributions.Categorical(logits=actor(ot))
            a = dist.sample()
            logp = dist.log_prob(a).numpy()
            val = critic(ot)[:, 0].numpy()
            add_stat("Policy/Entropy", dist.entropy().mean().item())
            add_stat("Policy/Extrinsic Value Estimate", val.mean())
        a = a.numpy()
        rew, done, _ = env.step(a)
        if demo:
            demo.record(raw, a, rew)
        ep_reward += rew
        for i in range(args.num_areas):
            tr = trajs[i]
            for k, v in zip(tr, (obs[i], a[i], logp[i], rew[i], val[i], done[i]), strict=True):
                tr[k].append(v)
            if done[i] or len(tr["obs"]) >= args.time_horizon:
                last_v = 0.0
                if not done[i]:
                    with torch.no_grad():
                        nxt = norm(env.observe()[i : i + 1])
                        last_v = float(critic(torch.from_numpy(nxt))[0, 0])
                buffered += len(tr["obs"])
                finish_trajectory(tr, last_v, buffer)
                trajs[i] = new_traj()
            if done[i]:
                add_stat("Environment/Cumulative Reward", ep_reward[i])
                add_stat("Environment/Episode Length", env.t[i])
                add_stat("Policy/Extrinsic Reward", ep_reward[i] * args.strength)
                recent = (recent + [ep_reward[i]])[-100:]
                for name in CURRICULUM:
                    lesson_episodes[name] += 1
                    if (
                        lesson[name] < len(LESSONS[name]) - 1
                        and lesson_episodes[name] >= args.min_lesson_length
                        and np.mean(recent) >= args.lesson_threshold
                    ):
                        lesson[name] += 1
                        lesson_episodes[name] = 0
                        print(
                            f"[INFO] Parameter '{name}' has been updated to "
                            f"{LESSONS[name][lesson[name]]}. Now in lesson '{lesson[name]}'.",
                            flush=True,
                        )
                ep_reward[i] = 0.0
                env.reset(i)
                if demo:
                    demo.episode_end()
        step += args.num_areas
        t_env += time.time() - t0
        if buffered >= args.buffer_size:
            t0 = time.time()
            update(buffer, step)
            buffer, buffered = new_buffer(), 0
            t_update += time.time() - t0
        if step >= next_summary:
            now = time.time()
            metrics = {k: float(np.mean(v)) for k, v in stats.items()}
            for name in CURRICULUM:
                metrics[f"Environment/Lesson Number/{name}"] = lesson[name]
            metrics["Is Training"] = 1.0
            metrics["Time Elapsed"] = now - start
            metrics["Timers/env_step"] = t_env
            metrics["Timers/update_policy"] = t_update
            metrics["Timers/steps_per_sec"] = args.summary_freq / max(1e-9, now - last_summary_time)
            mlflow.log_metrics(metrics, step=next_summary)
            if "Environment/Cumulative Reward" in stats:
                r = stats["Environment/Cumulative Reward"]
                print(
                    f"[INFO] {args.demo_name}. Step: {next_summary}. Time Elapsed: "
                    f"{now - start:.3f} s. Mean Reward: {np.mean(r):.3f}. Std of Reward: "
                    f"{np.std(r):.3f}. Training.",
                    flush=True,
                )
            else:
                print(
                    f"[INFO] {args.demo_name}. Step: {next_summary}. Time Elapsed: "
                    f"{now - start:.3f} s. No episode was completed since last summary. "
                    "Training.",
                    flush=True,
                )
            stats = {}
            t_env = t_update = 0.0
            last_summary_time = now
            next_summary += args.summary_freq
    print(f"[INFO] Learning was interrupted? No. Finished at step {step}.", flush=True)
