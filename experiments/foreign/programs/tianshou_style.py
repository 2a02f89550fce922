"""A DQN agent trained as Tianshou 0.5's ``OffpolicyTrainer`` trains one, its
``TensorboardLogger`` scalars mirrored to MLflow by the team's ``BaseLogger`` subclass.

Plain PyTorch + numpy + the plain ``mlflow`` API (no Tianshou, no Gym here).  What is imitated:

* ``DQNPolicy`` (``discount_factor``, ``estimation_step=1``, ``target_update_freq`` gradient
  steps between target-network copies), an MLP ``Net`` with ``hidden_sizes``, Adam,
  ``VectorReplayBuffer(buffer_size, training_num)``; epsilon-greedy with ``eps_train`` (decayed
  linearly from 1 over the first ``eps_decay_steps`` environment steps by the ``train_fn``) and
  ``eps_test``;
* ``OffpolicyTrainer``: ``max_epoch`` epochs of ``step_per_epoch`` environment steps; each
  iteration ``train_collector.collect(n_step=step_per_collect)`` then
  ``round(update_per_step * n/st)`` gradient steps on ``batch_size`` samples; after every epoch
  ``test_episode`` runs ``episode_per_test`` episodes (and once before training, at
  ``env_step`` 0); ``stop_fn`` ends training once the test reward reaches
  ``reward_threshold``;
* the logger's ``write(step_type, step, data)``: ``log_train_data`` every ``train_interval``
  environment steps (a collect that finished episodes) with ``train/episode``,
  ``train/reward``, ``train/length``; ``log_update_data`` every ``update_interval`` gradient
  steps with ``update/loss``; ``log_test_data`` with ``test/reward``, ``test/length``,
  ``test/reward_std``, ``test/length_std``; the mirror logs each write's data and its step
  under the step type's name (``train/env_step``, ``update/gradient_step``,
  ``test/env_step``) at MLflow ``step = env_step`` (the trainer's environment steps when the
  write happens); at each epoch's end the team logs the trainer's ``gather_info`` under
  ``info/`` (``info/gradient_step``, ``info/train_speed`` = environment steps a second of
  collection and updates since the start, ``info/train_time/collector``,
  ``info/train_time/model``, ``info/test_speed``, ``info/best_reward``, ``info/duration``);
* the printed ``Epoch #3: 5000it, env_step=15000, len=..., loss=..., n/ep=..., n/st=..., rew=...``
  and ``Epoch #3: test_reward: 152.300000 ± 31.2, best_reward: ... in #3`` lines.

Environment: CartPole written in numpy (the classic cart-pole dynamics, 200-step episodes,
reward 1 a step) with a wind field along the track: the team's ``CartPoleWind`` reads a gust
force from a table sampled at the start over the track ``[-2.4, 2.4]`` m at the cart's
position; ``training_num`` environments in a ``DummyVectorEnv`` or a ``SubprocVectorEnv``
(the team's own: one worker process an environment, commands over pipes).  ``obs_norm``: the
team's observation normaliser wrapper, ``running`` (Welford running mean and variance) or
``full`` (mean and standard deviation recomputed from every observation seen so far).
Written without looking at the doctor.

Faults are real settings: ``--lr``; ``--x_threshold`` (the track's end, past which an episode
ends; the gust table still spans 2.4 m each side); ``--obs_norm full``.
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
        "--lr": 1e-3,
        "--gamma": 0.95,
        "--hidden_sizes": 128,
        "--target_update_freq": 320,
        "--epoch": 10,
        "--step_per_epoch": 4000,
        "--step_per_collect": 16,
        "--update_per_step": 0.125,
        "--batch_size": 64,
        "--buffer_size": 20000,
        "--training_num": 8,
        "--test_num": 10,
        "--eps_train": 0.05,
        "--eps_decay_steps": 8000,
        "--eps_test": 0.0,
        "--reward_threshold": 195.0,  # 0: no stop_fn
        "--venv": "dummy",
        "--obs_norm": "running",
        "--x_threshold": 2.4,
        "--wind": 2.0,
        "--train_interval": 1000,
        "--update_interval": 100,
    }
)
rng = _setup.seeded(args.seed)
TRACK = 2.4  # the table spans the standard track


# ----------------------------------------------------------------------------- environment
class CartPoleWind:
    gravity, masscart, masspole, length, force_mag, tau = 9.8, 1.0, 0.1, 0.5, 10.0, 0.02

    def __init__(self, seed, x_threshold, wind):
        self.rng = np.random.default_rng(seed)
        self.x_threshold = x_threshold
        self.theta_threshold = 12 * 2 * np.pi / 360
        self.gust = np.random.default_rng(7).normal(0, wind, 97)  # every 5 cm over [-2.4, 2.4]
        self.state, self.t = None, 0

    def reset(self):
        self.state = self.rng.uniform(-0.05, 0.05, 4)
        self.t = 0
        return self.state.copy()

    def step(self, action):
        x, x_dot, theta, theta_dot = self.state
        force = self.force_mag if action == 1 else -self.force_mag
        force += self.gust[int(round((x + TRACK) / 0.05))]
        costheta, sintheta = np.cos(theta), np.sin(theta)
        total_mass = self.masspole + self.masscart
        pml = self.masspole * self.length
        temp = (force + pml * theta_dot**2 * sintheta) / total_mass
        thetaacc = (self.gravity * sintheta - costheta * temp) / (
            self.length * (4.0 / 3.0 - self.masspole * costheta**2 / total_mass)
        )
        xacc = temp - pml * thetaacc * costheta / total_mass
        x, x_dot = x + self.tau * x_dot, x_dot + self.tau * xacc
        theta, theta_dot = theta + self.tau * theta_dot, theta_dot + self.tau * thetaacc
        self.state = np.array([x, x_dot, theta, theta_dot])
        self.t += 1
        term = bool(abs(x) > self.x_threshold or abs(theta) > self.theta_threshold)
        trunc = self.t >= 200
        return self.state.copy(), 1.0, term, trunc


class DummyVectorEnv:
    def __init__(self, seeds):
        self.envs = [CartPoleWind(s, args.x_threshold, args.wind) for s in seeds]

    def reset(self, ids):
        return np.stack([self.envs[i].reset() for i in ids])

    def step(self, actions):
        out = [e.step(a) for e, a in zip(self.envs, actions, strict=True)]
        return tuple(np.array(v) for v in zip(*out, strict=True))


def _worker(remote, parent_remote, seed):
    parent_remote.close()
    env = CartPoleWind(seed, args.x_threshold, args.wind)
    while True:
        try:
            cmd, data = remote.recv()
        except (EOFError, OSError):  # the trainer is gone
            return
        if cmd == "reset":
            remote.send(env.reset())
        elif cmd == "step":
            remote.send(env.step(data))


class SubprocVectorEnv:
    """One worker process an environment, commands over pipes."""

    def __init__(self, seeds):
        ctx = mp.get_context("fork")
        self.remotes, self.workers = [], []
        for s in seeds:
            parent, child = ctx.Pipe()
            p = ctx.Process(target=_worker, args=(child, parent, s), daemon=True)
            p.start()
            self.remotes.append(parent)
            self.workers.append((p, child))  # kept for close()

    def reset(self, ids):
        for i in ids:
            self.remotes[i].send(("reset", None))
        return np.stack([self.remotes[i].recv() for i in ids])

    def step(self, actions):
        for r, a in zip(self.remotes, actions, strict=True):
            r.send(("step", int(a)))
        out = [r.recv() for r in self.remotes]
        return tuple(np.array(v) for v in zip(*out, strict=True))


class ObsNorm:
    def __init__(self, mode):
        self.mode, self.n = mode, 0
        self.mean, self.m2, self.std = np.zeros(4), np.zeros(4), np.ones(4)
        self.seen = []

    def update(self, obs):
        if self.mode == "full":
            self.seen.extend(obs)
            arr = np.array(self.seen)
            self.mean, self.std = arr.mean(0), arr.std(0) + 1e-8
            return
        for o in obs:  # Welford
            self.n += 1
            d = o - self.mean
            self.mean += d / self.n
            self.m2 += d * (o - self.mean)
        self.std = np.sqrt(self.m2 / max(1, self.n)) + 1e-8

    def __call__(self, obs):
        return np.clip((obs - self.mean) / self.std, -10, 10).astype(np.float32)


# ----------------------------------------------------------------------------- policy
def net():
    h = args.hidden_sizes
    return torch.nn.Sequential(
        torch.nn.Linear(4, h),
        torch.nn.ReLU(),
        torch.nn.Linear(h, h),
        torch.nn.ReLU(),
        torch.nn.Linear(h, h),
        torch.nn.ReLU(),
        torch.nn.Linear(h, 2),
    )


model, target = net(), net()
target.load_state_dict(model.state_dict())
optim = torch.optim.Adam(model.parameters(), lr=args.lr)
norm = ObsNorm(args.obs_norm)

N = args.training_num
per_env = args.buffer_size // N
buf = {
    "obs": np.zeros((N, per_env, 4), np.float32),
    "act": np.zeros((N, per_env), np.int64),
    "rew": np.zeros((N, per_env), np.float32),
    "term": np.zeros((N, per_env), np.float32),
    "obs_next": np.zeros((N, per_env, 4), np.float32),
}
buf_ptr, buf_len = 0, 0


def act(obs_n, eps, r):
    with torch.no_grad():
        q = model(torch.from_numpy(obs_n))
    a = q.argmax(1).numpy()
    rand = r.uniform(size=len(a)) < eps
    a[rand] = r.integers(0, 2, rand.sum())
    return a


train_envs = (SubprocVectorEnv if args.venv == "subproc" else DummyVectorEnv)(
    [args.seed * 100 + i for i in range(N)]
)
test_envs = DummyVectorEnv([args.seed * 100 + 50 + i for i in range(args.test_num)])
raw_obs = train_envs.reset(range(N))
ep_rew, ep_len = np.zeros(N), np.zeros(N, np.int64)


def collect(n_step, eps):
    global raw_obs, buf_ptr, buf_len
    st, rews, lens = 0, [], []
    while st < n_step:
        for o in raw_obs:  # the wrapper around each environment, one shared statistics
            norm.update(o[None])
        a = act(norm(raw_obs), eps, rng)
        obs_next, rew, term, trunc = train_envs.step(a)
        buf["obs"][:, buf_ptr] = raw_obs
        buf["act"][:, buf_ptr] = a
        buf["rew"][:, buf_ptr] = rew
        buf["term"][:, buf_ptr] = term
        buf["obs_next"][:, buf_ptr] = obs_next
        buf_ptr, buf_len = (buf_ptr + 1) % per_env, min(buf_len + 1, per_env)
        ep_rew[:] += rew
        ep_len[:] += 1
        st += N
        done = np.flatnonzero(term | trunc)
        if len(done):
            rews += list(ep_rew[done])
            lens += list(ep_len[done])
            ep_rew[done], ep_len[done] = 0, 0
            obs_next = obs_next.copy()
            obs_next[done] = train_envs.reset(done)
        raw_obs = obs_next
    r = {"n/ep": len(rews), "n/st": st}
    if rews:
        r.update(rew=float(np.mean(rews)), len=float(np.mean(lens)))
    return r


def update():
    e = rng.integers(0, N, args.batch_size)
    i = rng.integers(0, buf_len, args.batch_size)
    obs = torch.from_numpy(norm(buf["obs"][e, i]))
    obs_next = torch.from_numpy(norm(buf["obs_next"][e, i]))
    with torch.no_grad():
        q_next = target(obs_next).max(1).values
    ret = torch.from_numpy(buf["rew"][e, i]) + args.gamma * q_next * (
        1 - torch.from_numpy(buf["term"][e, i])
    )
    q = model(obs).gather(1, torch.from_numpy(buf["act"][e, i])[:, None])[:, 0]
    loss = ((q - ret) ** 2).mean()
    optim.zero_grad()
    loss.backward()
    optim.step()
    return {"loss": loss.item()}


def test_episode():
    trng = np.random.default_rng(args.seed + 1)
    rews, lens = [], []
    obs = test_envs.reset(range(args.test_num))
    er, el = np.zeros(args.test_num), np.zeros(args.test_num)
    alive = np.ones(args.test_num, bool)
    while alive.any():
        a = act(norm(obs), args.eps_test, trng)
        obs, rew, term, trunc = test_envs.step(a)
        er += rew * alive
        el += alive
        done = np.flatnonzero(term | trunc)
        for k in done:
            if alive[k]:
                rews.append(er[k])
                lens.append(el[k])
                alive[k] = False
        if len(done) and alive.any():
            obs = obs.copy()
            obs[done] = test_envs.reset(done)
    return {
        "rew": float(np.mean(rews)),
        "rew_std": float(np.std(rews)),
        "len": float(np.mean(lens)),
        "len_std": float(np.std(lens)),
    }


def write(step_type, step, data, env_step):
    mlflow.log_metrics({step_type: step, **data}, step=env_step)


with mlflow.start_run():
    mlflow.log_params(vars(args))
    start = time.time()
    env_step = gradient_step = 0
    last_train_log, last_update_log = 0, 0
    t_collect = t_model = t_test = 0.0
    test_steps = test_eps = 0
    t0 = time.time()
    res = test_episode()
    t_test += time.time() - t0
    test_steps += int(res["len"] * args.test_num)
    test_eps += args.test_num
    best_reward, best_std, best_epoch = res["rew"], res["rew_std"], 0
    write(
        "test/env_step",
        0,
        {
            "test/reward": res["rew"],
            "test/length": res["len"],
            "test/reward_std": res["rew_std"],
            "test/length_std": res["len_std"],
        },
        0,
    )
    print(f"Epoch #0: test_reward: {res['rew']:.6f} ± {res['rew_std']:.6f}", flush=True)
    for epoch in range(1, args.epoch + 1):
        n = 0
        last = {}
        while n < args.step_per_epoch:
            eps = max(args.eps_train, 1.0 - env_step / args.eps_decay_steps)  # train_fn
            t0 = time.time()
            c = collect(args.step_per_collect, eps)
            t_collect += time.time() - t0
            env_step += c["n/st"]
            n += c["n/st"]
            if c["n/ep"] > 0:
                last.update(c)
                if env_step - last_train_log >= args.train_interval:
                    write(
                        "train/env_step",
                        env_step,
                        {
                            "train/episode": c["n/ep"],
                            "train/reward": c["rew"],
                            "train/length": c["len"],
                        },
                        env_step,
                    )
                    last_train_log = env_step
            t0 = time.time()
            if buf_len * N >= args.batch_size:
                for _ in range(round(args.update_per_step * c["n/st"])):
                    gradient_step += 1
                    losses = update()
                    last["loss"] = losses["loss"]
                    if gradient_step % args.target_update_freq == 0:
                        target.load_state_dict(model.state_dict())
                    if gradient_step - last_update_log >= args.update_interval:
                        write(
                            "update/gradient_step",
                            gradient_step,
                            {f"update/{k}": v for k, v in losses.items()},
                            env_step,
                        )
                        last_update_log = gradient_step
            t_model += time.time() - t0
        print(
            f"Epoch #{epoch}: {n}it, env_step={env_step}, len={last.get('len', 0):.0f}, "
            f"loss={last.get('loss', 0):.3f}, n/ep={last.get('n/ep', 0)}, "
            f"n/st={last.get('n/st', 0)}, rew={last.get('rew', 0):.2f}",
            flush=True,
        )
        t0 = time.time()
        res = test_episode()
        t_test += time.time() - t0
        test_steps += int(res["len"] * args.test_num)
        test_eps += args.test_num
        if res["rew"] > best_reward:
            best_reward, best_std, best_epoch = res["rew"], res["rew_std"], epoch
        write(
            "test/env_step",
            env_step,
            {
                "test/reward": res["rew"],
                "test/length": res["len"],
                "test/reward_std": res["rew_std"],
                "test/length_std": res["len_std"],
            },
            env_step,
        )
        print(
            f"Epoch #{epoch}: test_reward: {res['rew']:.6f} ± {res['rew_std']:.6f}, "
            f"best_reward: {best_reward:.6f} ± {best_std:.6f} in #{best_epoch}",
            flush=True,
        )
        mlflow.log_metrics(
            {
                "info/gradient_step": gradient_step,
                "info/train_speed": env_step / max(1e-9, t_collect + t_model),
                "info/train_time/collector": t_collect,
                "info/train_time/model": t_model,
                "info/test_speed": test_steps / max(1e-9, t_test),
                "info/best_reward": best_reward,
                "info/duration": time.time() - start,
            },
            step=env_step,
        )
        if args.reward_threshold and best_reward >= args.reward_threshold:  # stop_fn
            print(f"stop_fn: best_reward {best_reward:.1f} >= {args.reward_threshold}")
            break
    print(
        f"Finished training! Use {time.time() - start:.2f}s, best_reward: {best_reward:.2f}",
        flush=True,
    )
