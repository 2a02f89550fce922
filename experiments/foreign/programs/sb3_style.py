"""A CartPole agent trained by Stable-Baselines3's ``PPO("MlpPolicy", ...)`` on a
``DummyVecEnv`` of ``Monitor``-wrapped envs, its logger given SB3's documented
``MLflowOutputFormat`` (a ``KVWriter`` calling ``mlflow.log_metric(key, value, step)``).

Plain torch + numpy + the plain ``mlflow`` API (no SB3 or Gymnasium here).  CartPole-v1 is
re-implemented with Gymnasium's dynamics (termination at |x| > 2.4 or |theta| > 12 degrees,
truncation at 500 steps, reward 1 per step); the policy is SB3's ``MlpPolicy`` (separate
64-64 tanh actor and critic, orthogonal init), trained by PPO's clipped objective with GAE,
advantage normalisation, ``vf_coef`` 0.5 and ``max_grad_norm`` 0.5.  The hyper-parameters
are logged as params.

As SB3 writes them: after every ``log_interval`` rollouts, ``logger.dump(step=num_timesteps)``
writes ``time/iterations``, ``time/fps`` (timesteps since ``learn()`` began over the seconds
since then: a running average, not the last rollout's rate), ``time/time_elapsed`` (whole
seconds), ``time/total_timesteps`` and, once an episode has ended, ``rollout/ep_rew_mean`` and
``rollout/ep_len_mean`` (means over the last ``stats_window_size`` = 100 episodes).  The
``train/*`` values (``learning_rate``, ``entropy_loss`` = minus the mean entropy,
``policy_gradient_loss``, ``value_loss`` (grows with the returns), ``approx_kl``,
``clip_fraction``, ``clip_range``, ``loss`` (the LAST minibatch's total loss only),
``explained_variance``, ``n_updates``) are recorded by ``train()``, which runs after the dump:
they appear at the NEXT dump's step, the first dump has none, and the last ``train()``'s
values are never written.  Written without looking at the doctor.

Faults are real settings: a learning rate far too high or too low; an evaluation env with
another observation space (``--eval_env Pendulum-v1``: ``predict`` raises on the first
evaluation); a ``VecVideoRecorder`` started at ``--record_video_trigger`` that keeps every
tiled frame until ``--video_length`` frames (the memory runs out), or that writes every frame
to ``--video_folder`` as a compressed image (``--video_format npz``), slowing every step.
"""

import os
import tempfile
import time
from collections import deque

import _setup
import mlflow
import numpy as np
import torch
import torch.nn.functional as F

args = _setup.parse_flags(
    {
        "--seed": 0,
        "--env": "CartPole-v1",
        "--n_envs": 4,
        "--total_timesteps": 60000,
        "--learning_rate": 3e-4,
        "--lr_schedule": "constant",  # or lin (SB3 zoo's lin_<lr>)
        "--n_steps": 256,
        "--batch_size": 64,
        "--n_epochs": 10,
        "--gamma": 0.99,
        "--gae_lambda": 0.95,
        "--clip_range": 0.2,
        "--ent_coef": 0.0,
        "--vf_coef": 0.5,
        "--max_grad_norm": 0.5,
        "--target_kl": 0.0,  # 0 = None
        "--log_interval": 1,
        "--eval_env": "",
        "--eval_freq": 10000,
        "--record_video_trigger": -1,
        "--video_length": 200,
        "--video_format": "mp4",
        "--video_folder": "",
    }
)
rng = _setup.seeded(args.seed)


# ---------------------------------------------------------------- envs
class CartPoleVec:
    """n CartPole-v1 envs stepped together, auto-reset as DummyVecEnv does (Monitor inside)."""

    g, mc, mp, l, fm, tau = 9.8, 1.0, 0.1, 0.5, 10.0, 0.02
    obs_dim, n_actions = 4, 2

    def __init__(self, n, rng):
        self.n, self.rng = n, rng
        self.s = rng.uniform(-0.05, 0.05, (n, 4))
        self.t = np.zeros(n, dtype=int)
        self.ret = np.zeros(n)

    def reset_one(self, i):
        self.s[i] = self.rng.uniform(-0.05, 0.05, 4)
        self.t[i] = 0
        self.ret[i] = 0.0

    def step(self, a):
        x, xd, th, thd = self.s.T
        force = np.where(a == 1, self.fm, -self.fm)
        ct, st = np.cos(th), np.sin(th)
        tm = self.mc + self.mp
        temp = (force + self.mp * self.l * thd**2 * st) / tm
        tha = (self.g * st - ct * temp) / (self.l * (4 / 3 - self.mp * ct**2 / tm))
        xa = temp - self.mp * self.l * tha * ct / tm
        self.s = np.stack(
            [x + self.tau * xd, xd + self.tau * xa, th + self.tau * thd, thd + self.tau * tha], 1
        )
        self.t += 1
        self.ret += 1.0
        term = (np.abs(self.s[:, 0]) > 2.4) | (np.abs(self.s[:, 2]) > 12 * 2 * np.pi / 360)
        trunc = (self.t >= 500) & ~term
        infos = [{} for _ in range(self.n)]
        for i in np.flatnonzero(term | trunc):
            infos[i] = {
                "episode": {"r": self.ret[i], "l": int(self.t[i])},
                "terminal_observation": self.s[i].copy(),
                "TimeLimit.truncated": bool(trunc[i]),
            }
            self.reset_one(i)
        return self.s.astype(np.float32), np.ones(self.n, np.float32), term | trunc, infos

    def render(self):
        """rgb_array of every env tiled (2 columns), 400x600 each, as DummyVecEnv.render does."""
        frames = []
        for x, _, th, _ in self.s:
            f = np.full((400, 600, 3), 255, np.uint8)
            cx = int(300 + x * 125)
            f[300:310, :] = 0
            f[280:310, max(cx - 25, 0) : cx + 25] = (0, 0, 0)
            for r in range(0, 100, 2):
                px, py = int(cx + r * np.sin(th)), int(285 - r * np.cos(th))
                if 0 <= py < 400 and 0 <= px < 600:
                    f[max(py - 5, 0) : py + 5, max(px - 5, 0) : px + 5] = (202, 152, 101)
            frames.append(f)
        rows = [np.concatenate(frames[i : i + 2], 1) for i in range(0, len(frames), 2)]
        w = max(r.shape[1] for r in rows)
        rows = [np.pad(r, ((0, 0), (0, w - r.shape[1]), (0, 0))) for r in rows]
        return np.concatenate(rows, 0)


OBS_SPACES = {"CartPole-v1": (4,), "Pendulum-v1": (3,)}


# ---------------------------------------------------------------- policy
def mlp(i, o, gain):
    layers = [torch.nn.Linear(i, 64), torch.nn.Tanh(), torch.nn.Linear(64, 64), torch.nn.Tanh()]
    for m in layers[::2]:
        torch.nn.init.orthogonal_(m.weight, np.sqrt(2))
        torch.nn.init.zeros_(m.bias)
    head = torch.nn.Linear(64, o)
    torch.nn.init.orthogonal_(head.weight, gain)
    torch.nn.init.zeros_(head.bias)
    return torch.nn.Sequential(*layers, head)


class ActorCriticPolicy(torch.nn.Module):
    def __init__(self, obs_shape, n_actions):
        super().__init__()
        self.obs_shape = obs_shape
        self.pi = mlp(obs_shape[0], n_actions, 0.01)
        self.vf = mlp(obs_shape[0], 1, 1.0)

    def forward(self, obs):
        return torch.distributions.Categorical(logits=self.pi(obs)), self.vf(obs).squeeze(-1)

    def predict(self, obs, deterministic=True):
        obs = np.asarray(obs, np.float32)
        if obs.shape[-len(self.obs_shape) :] != self.obs_shape:
            raise ValueError(
                f"Error: Unexpected observation shape {obs.shape} for Box environment, "
                f"please use {self.obs_shape} or (n_env, {', '.join(map(str, self.obs_shape))}) "
                "for the observation shape."
            )
        with torch.no_grad():
            dist, _ = self(torch.as_tensor(obs))
        return dist.probs.argmax(-1).numpy() if deterministic else dist.sample().numpy()


env = CartPoleVec(args.n_envs, rng)
policy = ActorCriticPolicy((CartPoleVec.obs_dim,), CartPoleVec.n_actions)
optimizer = torch.optim.Adam(policy.parameters(), lr=args.learning_rate, eps=1e-5)


def lr_at(progress_remaining):
    if args.lr_schedule == "lin":
        return args.learning_rate * progress_remaining
    return args.learning_rate


# ---------------------------------------------------------------- logger (SB3's Logger)
class Logger:
    def __init__(self):
        self.kv, self.excluded = {}, {}

    def record(self, key, value, exclude=None):
        self.kv[key], self.excluded[key] = value, exclude

    def dump(self, step):
        # HumanOutputFormat to stdout
        groups = {}
        for key in sorted(self.kv):
            tag, _, name = key.partition("/")
            groups.setdefault(tag, []).append((name, self.kv[key]))
        lines = []
        for tag, items in groups.items():
            lines.append(f"| {tag + '/':<23} | {'':<11} |")
            for name, v in items:
                s = f"{v:<8.3g}" if isinstance(v, float) else str(v)
                lines.append(f"|    {name:<20} | {s:<11} |")
        bar = "-" * 41
        print("\n".join([bar, *lines, bar]), flush=True)
        # MLflowOutputFormat (SB3 docs): every numeric value not excluded for mlflow
        for key in sorted(self.kv):
            exc = self.excluded[key]
            if exc is not None and "mlflow" in exc:
                continue
            mlflow.log_metric(key, float(self.kv[key]), step)
        self.kv, self.excluded = {}, {}


logger = Logger()


# ---------------------------------------------------------------- video recorder
class VecVideoRecorder:
    """Records ``video_length`` tiled frames once ``num_timesteps`` reaches the trigger."""

    def __init__(self, venv, trigger, length, fmt, folder):
        self.venv, self.trigger, self.length, self.fmt = venv, trigger, length, fmt
        self.folder = folder or tempfile.mkdtemp(prefix="videos-")
        self.recording, self.done, self.frames, self.n_saved = False, False, [], 0

    def after_step(self, num_timesteps):
        if not self.recording and not self.done and 0 <= self.trigger <= num_timesteps:
            self.recording = True
            print(f"Recording video to {self.folder}/rl-video-step-{num_timesteps}", flush=True)
        if not self.recording:
            return
        frame = self.venv.render()
        if self.fmt == "npz":  # an image sequence: every frame compressed to disk at once
            path = os.path.join(self.folder, f"frame-{self.n_saved:07d}.npz")
            np.savez_compressed(path, frame=frame)
            os.remove(path) if self.n_saved % 500 else None
        else:
            self.frames.append(frame)
        self.n_saved += 1
        if self.n_saved >= self.length:
            print(f"Saving video of {self.n_saved} frames", flush=True)
            self.recording, self.done, self.frames = False, True, []


recorder = None
if args.record_video_trigger >= 0:
    recorder = VecVideoRecorder(
        env, args.record_video_trigger, args.video_length, args.video_format, args.video_folder
    )


# ---------------------------------------------------------------- evaluation
def evaluate_policy(n_eval_episodes=5):
    shape = OBS_SPACES[args.eval_env]
    eval_env = CartPoleVec(1, np.random.default_rng(args.seed + 1))
    obs = eval_env.s.astype(np.float32)
    if shape != (4,):  # Pendulum-v1: (cos theta, sin theta, theta dot)
        th = rng.uniform(-np.pi, np.pi)
        obs = np.array([[np.cos(th), np.sin(th), 0.0]], np.float32)
    rewards, cur = [], 0.0
    while len(rewards) < n_eval_episodes:
        a = policy.predict(obs)
        obs, r, done, info = eval_env.step(a)
        cur += r[0]
        if done[0]:
            rewards.append(cur)
            cur = 0.0
    return float(np.mean(rewards)), float(np.std(rewards))


# ---------------------------------------------------------------- PPO.learn
def explained_variance(y_pred, y_true):
    var_y = np.var(y_true)
    return np.nan if var_y == 0 else float(1 - np.var(y_true - y_pred) / var_y)


with mlflow.start_run():
    mlflow.log_params(
        {
            "algo": "PPO",
            "policy": "MlpPolicy",
            "env_id": args.env,
            "n_envs": args.n_envs,
            "n_timesteps": args.total_timesteps,
            "learning_rate": args.learning_rate,
            "n_steps": args.n_steps,
            "batch_size": args.batch_size,
            "n_epochs": args.n_epochs,
            "gamma": args.gamma,
            "gae_lambda": args.gae_lambda,
            "clip_range": args.clip_range,
            "ent_coef": args.ent_coef,
            "vf_coef": args.vf_coef,
            "max_grad_norm": args.max_grad_norm,
            "target_kl": args.target_kl or None,
            "seed": args.seed,
        }
    )
    print("Using cpu device", flush=True)
    print("Wrapping the env with a `Monitor` wrapper", flush=True)
    print("Wrapping the env in a DummyVecEnv.", flush=True)
    if args.eval_env:
        print(f"Eval num_timesteps={0}, using eval env {args.eval_env}", flush=True)
    ep_info_buffer = deque(maxlen=100)
    num_timesteps, n_updates, iteration = 0, 0, 0
    last_obs = env.s.astype(np.float32)
    last_episode_starts = np.ones(args.n_envs, bool)
    start = time.time_ns()
    next_eval = args.eval_freq
    N = args.n_steps
    while num_timesteps < args.total_timesteps:
        # ---- collect_rollouts
        policy.eval()
        buf = {k: [] for k in ("obs", "act", "rew", "val", "logp", "start")}
        for _ in range(N):
            with torch.no_grad():
                dist, values = policy(torch.as_tensor(last_obs))
                actions = dist.sample()
                logp = dist.log_prob(actions)
            new_obs, rewards, dones, infos = env.step(actions.numpy())
            num_timesteps += args.n_envs
            if recorder is not None:
                recorder.after_step(num_timesteps)
            for i, info in enumerate(infos):
                if "episode" in info:
                    ep_info_buffer.append(info["episode"])
                if dones[i] and info.get("TimeLimit.truncated"):
                    with torch.no_grad():
                        term_v = policy.vf(
                            torch.as_tensor(info["terminal_observation"], dtype=torch.float32)
                        )
                    rewards[i] += args.gamma * term_v.item()
            buf["obs"].append(last_obs)
            buf["act"].append(actions.numpy())
            buf["rew"].append(rewards)
            buf["val"].append(values.numpy())
            buf["logp"].append(logp.numpy())
            buf["start"].append(last_episode_starts)
            last_obs, last_episode_starts = new_obs, dones
            if args.eval_env and num_timesteps >= next_eval:
                next_eval += args.eval_freq
                mean_r, std_r = evaluate_policy()
                print(
                    f"Eval num_timesteps={num_timesteps}, episode_reward={mean_r:.2f} +/- {std_r:.2f}"
                )
                logger.record("eval/mean_reward", mean_r)
        with torch.no_grad():
            _, last_values = policy(torch.as_tensor(last_obs))
        vals, rews = np.array(buf["val"]), np.array(buf["rew"])
        starts = np.array(buf["start"], dtype=np.float32)
        adv = np.zeros_like(rews)
        last_gae = 0.0
        for t in reversed(range(N)):
            if t == N - 1:
                nonterm, next_v = 1.0 - last_episode_starts.astype(np.float32), last_values.numpy()
            else:
                nonterm, next_v = 1.0 - starts[t + 1], vals[t + 1]
            delta = rews[t] + args.gamma * next_v * nonterm - vals[t]
            last_gae = delta + args.gamma * args.gae_lambda * nonterm * last_gae
            adv[t] = last_gae
        returns = adv + vals
        iteration += 1
        # ---- _dump_logs
        if args.log_interval and iteration % args.log_interval == 0:
            elapsed = max((time.time_ns() - start) / 1e9, 1e-9)
            fps = int(num_timesteps / elapsed)
            logger.record("time/iterations", iteration, exclude="tensorboard")
            if ep_info_buffer:
                logger.record(
                    "rollout/ep_rew_mean", float(np.mean([e["r"] for e in ep_info_buffer]))
                )
                logger.record(
                    "rollout/ep_len_mean", float(np.mean([e["l"] for e in ep_info_buffer]))
                )
            logger.record("time/fps", fps)
            logger.record("time/time_elapsed", int(elapsed), exclude="tensorboard")
            logger.record("time/total_timesteps", num_timesteps, exclude="tensorboard")
            logger.dump(step=num_timesteps)
        # ---- train
        policy.train()
        lr = lr_at(1.0 - num_timesteps / args.total_timesteps)
        for g in optimizer.param_groups:
            g["lr"] = lr
        logger.record("train/learning_rate", lr)

        def flat(a):
            a = np.asarray(a)
            return torch.as_tensor(a.reshape(N * args.n_envs, *a.shape[2:]))

        b_obs, b_act, b_logp = flat(buf["obs"]), flat(buf["act"]), flat(buf["logp"])
        b_adv, b_ret = flat(adv).float(), flat(returns).float()
        ent_l, pg_l, v_l, kls, clipf = [], [], [], [], []
        continue_training = True
        for epoch in range(args.n_epochs):
            approx_kl_divs = []
            perm = torch.from_numpy(rng.permutation(N * args.n_envs))
            for s in range(0, N * args.n_envs, args.batch_size):
                idx = perm[s : s + args.batch_size]
                dist, values = policy(b_obs[idx])
                log_prob = dist.log_prob(b_act[idx])
                a = b_adv[idx]
                if len(idx) > 1:
                    a = (a - a.mean()) / (a.std() + 1e-8)
                ratio = torch.exp(log_prob - b_logp[idx])
                pl1 = a * ratio
                pl2 = a * torch.clamp(ratio, 1 - args.clip_range, 1 + args.clip_range)
                policy_loss = -torch.min(pl1, pl2).mean()
                pg_l.append(policy_loss.item())
                clipf.append(torch.mean((torch.abs(ratio - 1) > args.clip_range).float()).item())
                value_loss = F.mse_loss(b_ret[idx], values)
                v_l.append(value_loss.item())
                entropy_loss = -torch.mean(dist.entropy())
                ent_l.append(entropy_loss.item())
                loss = policy_loss + args.ent_coef * entropy_loss + args.vf_coef * value_loss
                with torch.no_grad():
                    lr_ = log_prob - b_logp[idx]
                    approx_kl = torch.mean((torch.exp(lr_) - 1) - lr_).item()
                    approx_kl_divs.append(approx_kl)
                if args.target_kl and approx_kl > 1.5 * args.target_kl:
                    continue_training = False
                    print(f"Early stopping at step {epoch} due to reaching max kl: {approx_kl:.2f}")
                    break
                optimizer.zero_grad()
                loss.backward()
                torch.nn.utils.clip_grad_norm_(policy.parameters(), args.max_grad_norm)
                optimizer.step()
            n_updates += 1
            kls += approx_kl_divs
            if not continue_training:
                break
        ev = explained_variance(np.asarray(buf["val"]).ravel(), returns.ravel())
        logger.record("train/entropy_loss", float(np.mean(ent_l)))
        logger.record("train/policy_gradient_loss", float(np.mean(pg_l)))
        logger.record("train/value_loss", float(np.mean(v_l)))
        logger.record("train/approx_kl", float(np.mean(kls)))
        logger.record("train/clip_fraction", float(np.mean(clipf)))
        logger.record("train/loss", loss.item())
        logger.record("train/explained_variance", ev)
        logger.record("train/n_updates", n_updates, exclude="tensorboard")
        logger.record("train/clip_range", args.clip_range)
