"""A continuous-control PPO agent trained as rl_games' ``A2CAgent`` (``algo: a2c_continuous``)
trains one, its TensorBoard ``SummaryWriter`` scalars mirrored to MLflow by the team's writer.

Plain PyTorch + numpy + the plain ``mlflow`` API (no rl_games, no Isaac Gym here).  What is
imitated:

* the yaml ``config``: ``num_actors``, ``horizon_length``, ``minibatch_size``, ``mini_epochs``,
  ``learning_rate`` with ``lr_schedule`` (``adaptive``: divided by 1.5 when the KL passes twice
  ``kl_threshold``, multiplied by 1.5 below half of it; ``linear``; ``None``), ``e_clip``,
  ``gamma``, ``tau``, ``critic_coef``, ``entropy_coef``, ``bounds_loss_coef``,
  ``normalize_advantage``, ``normalize_input`` (a running mean/std), ``truncate_grads`` with
  ``grad_norm``, ``max_epochs``; the network's ``mlp.units`` with ``elu`` and a fixed sigma;
* ``frame`` = every actor's steps so far; after each epoch (one rollout of ``horizon_length``
  steps of every actor plus ``mini_epochs`` passes of minibatch updates) the writer gets
  ``performance/step_inference_rl_update_fps``, ``performance/step_inference_fps``,
  ``performance/step_fps``, ``performance/rl_update_time``, ``performance/step_inference_time``,
  ``performance/step_time``, ``losses/a_loss``, ``losses/c_loss``, ``losses/bounds_loss``,
  ``losses/entropy``, ``info/last_lr`` (lr x lr_mul), ``info/lr_mul``, ``info/e_clip``,
  ``info/kl``, ``info/epochs`` at ``step = frame``; once episodes have finished,
  ``rewards/step`` and ``episode_lengths/step`` at ``step = frame``, ``rewards/iter`` and
  ``episode_lengths/iter`` at ``step = epoch_num``, ``rewards/time`` and
  ``episode_lengths/time`` at ``step = total_time`` (whole seconds), as rl_games writes them
  (means over the last ``games_to_track`` games);
* the console's ``fps step: 9123 fps step and policy inference: 7000 fps total: 5400 epoch:
  12/200 frames: 6144`` and ``=> saving checkpoint 'runs/Reacher/nn/Reacher.pth'`` lines.

Environment: a numpy ``Reacher2D`` (a point mass pushed toward a goal in a 2-D arena, reward
``-distance - 0.01 |action|^2`` plus 1 on reaching, ``max_episode_steps`` a game), stepped by the
team's threaded ``VecEnv`` (``env_workers`` threads, each owning a slice of the actors).
Written without looking at the doctor.

Faults are real settings and code paths: ``--learning_rate``; ``--episode_stats`` (the team's
per-worker episode-statistics callback, which flushes under the worker's lock);
``--record_frames`` (the team's frame recorder for the offline dataset).
"""

import queue
import threading
import time

import _setup
import mlflow
import numpy as np
import torch

args = _setup.parse_flags(
    {
        "--seed": 0,
        "--num_actors": 16,
        "--horizon_length": 32,
        "--minibatch_size": 256,
        "--mini_epochs": 4,
        "--learning_rate": 3e-4,
        "--lr_schedule": "adaptive",  # adaptive | linear | None
        "--kl_threshold": 0.008,
        "--e_clip": 0.2,
        "--gamma": 0.99,
        "--tau": 0.95,
        "--critic_coef": 2.0,
        "--entropy_coef": 0.0,
        "--bounds_loss_coef": 1e-4,
        "--normalize_input": 1,
        "--normalize_advantage": 1,
        "--truncate_grads": 1,
        "--grad_norm": 1.0,
        "--units": "64,64",
        "--sigma_init": 0.0,
        "--max_epochs": 160,
        "--max_episode_steps": 64,
        "--games_to_track": 100,
        "--env_workers": 2,
        "--episode_stats": 0,  # the team's per-worker episode statistics callback
        "--stats_flush_every": 200,
        "--record_frames": 0,  # keep rendered frames for the offline dataset
        "--save_frequency": 50,
    }
)
rng = _setup.seeded(args.seed)
OBS, ACT = 6, 2


# ----------------------------------------------------------------------------- environment
class Reacher2D:
    def __init__(self, n, seed):
        self.n, self.rng = n, np.random.default_rng(seed)
        self.pos, self.vel = np.zeros((n, 2)), np.zeros((n, 2))
        self.goal, self.t = np.zeros((n, 2)), np.zeros(n, np.int64)
        for i in range(n):
            self.reset(i)

    def reset(self, i):
        self.pos[i] = self.rng.uniform(-1, 1, 2)
        self.vel[i] = 0
        self.goal[i] = self.rng.uniform(-1, 1, 2)
        self.t[i] = 0

    def obs(self, idx):
        return np.concatenate([self.pos[idx], self.vel[idx], self.goal[idx] - self.pos[idx]], 1)

    def step(self, idx, action):
        a = np.clip(action, -1, 1)
        self.vel[idx] = 0.8 * self.vel[idx] + 0.05 * a
        self.pos[idx] = np.clip(self.pos[idx] + self.vel[idx], -1.2, 1.2)
        self.t[idx] += 1
        d = np.linalg.norm(self.goal[idx] - self.pos[idx], axis=1)
        reached = d < 0.1
        rew = -d - 0.01 * (a**2).sum(1) + reached * 1.0
        done = reached | (self.t[idx] >= args.max_episode_steps)
        return rew, done

    def render(self, idx):
        img = np.zeros((len(idx), 64, 64, 3), np.float32)
        p = ((self.pos[idx] + 1.2) / 2.4 * 63).astype(int)
        img[np.arange(len(idx)), p[:, 1], p[:, 0]] = 1.0
        return img


class VecEnv:
    """The team's threaded vector env: each worker thread owns a slice of the actors."""

    def __init__(self):
        self.env = Reacher2D(args.num_actors, args.seed + 1000)
        self.slices = np.array_split(np.arange(args.num_actors), args.env_workers)
        self.locks = [threading.Lock() for _ in self.slices]
        self.inbox = [queue.Queue() for _ in self.slices]
        self.outbox = queue.Queue()
        self.ep_ret = np.zeros(args.num_actors)
        self.finished = []  # (return, length) of finished games
        self.worker_stats = [[] for _ in self.slices]
        self.frames = []
        for w in range(len(self.slices)):
            threading.Thread(target=self._work, args=(w,), daemon=True).start()

    def _flush_stats(self, w):
        with self.locks[w]:
            self.worker_stats[w] = self.worker_stats[w][-10:]

    def _work(self, w):
        idx = self.slices[w]
        while True:
            actions = self.inbox[w].get()
            try:
                rew, done = self._step_slice(w, idx, actions)
            except Exception as exc:  # handed to the learner, as SubprocVecEnv re-raises
                self.outbox.put((w, exc, None))
                return
            self.outbox.put((w, rew, done))

    def _step_slice(self, w, idx, actions):
        with self.locks[w]:
            rew, done = self.env.step(idx, actions[idx])
            self.ep_ret[idx] += rew
            for j in np.nonzero(done)[0]:
                i = idx[j]
                self.finished.append((self.ep_ret[i], int(self.env.t[i])))
                if args.episode_stats:
                    self.worker_stats[w].append(self.ep_ret[i])
                    if len(self.worker_stats[w]) >= args.stats_flush_every:
                        self._flush_stats(w)
                self.ep_ret[i] = 0.0
                self.env.reset(i)
            if args.record_frames:
                self.frames.append(self.env.render(idx))
        return rew, done

    def step(self, actions):
        for q in self.inbox:
            q.put(actions)
        rew, done = np.zeros(args.num_actors), np.zeros(args.num_actors, bool)
        for _ in self.slices:
            w, r, d = self.outbox.get()
            if isinstance(r, Exception):
                raise RuntimeError(f"env worker {w} failed") from r
            rew[self.slices[w]], done[self.slices[w]] = r, d
        return rew, done

    def obs(self):
        return self.env.obs(np.arange(args.num_actors)).astype(np.float32)


# ----------------------------------------------------------------------------- network
class RunningMeanStd:
    def __init__(self, n):
        self.mean, self.var, self.count = np.zeros(n), np.ones(n), 1e-4

    def update(self, x):
        b, m, v = len(x), x.mean(0), x.var(0)
        d, tot = m - self.mean, self.count + len(x)
        self.mean = self.mean + d * b / tot
        self.var = (self.var * self.count + v * b + d**2 * self.count * b / tot) / tot
        self.count = tot

    def __call__(self, x):
        if not args.normalize_input:
            return x
        return np.clip((x - self.mean) / np.sqrt(self.var + 1e-5), -5, 5).astype(np.float32)


def mlp(n_in):
    layers, d = [], n_in
    for u in [int(v) for v in args.units.split(",")]:
        layers += [torch.nn.Linear(d, u), torch.nn.ELU()]
        d = u
    return torch.nn.Sequential(*layers), d


class Network(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.actor_mlp, d = mlp(OBS)
        self.critic_mlp, _ = mlp(OBS)
        self.mu, self.value = torch.nn.Linear(d, ACT), torch.nn.Linear(d, 1)
        self.sigma = torch.nn.Parameter(torch.full((ACT,), args.sigma_init))

    def forward(self, x):
        return (
            self.mu(self.actor_mlp(x)),
            self.sigma.expand(len(x), ACT),
            self.value(self.critic_mlp(x))[:, 0],
        )


net = Network()
optim = torch.optim.Adam(net.parameters(), lr=args.learning_rate, eps=1e-8)
rms = RunningMeanStd(OBS)
venv = VecEnv()
lr = args.learning_rate


def dist_of(mu, logstd):
    return torch.distributions.Normal(mu, torch.exp(logstd))


with mlflow.start_run():
    mlflow.log_params(vars(args))
    frame, start = 0, time.time()
    batch = args.num_actors * args.horizon_length
    for epoch_num in range(1, args.max_epochs + 1):
        t_play = time.time()
        t_infer = 0.0
        buf = {k: [] for k in ("obs", "act", "logp", "val", "rew", "done", "mu", "sigma")}
        for _ in range(args.horizon_length):
            raw = venv.obs()
            rms.update(raw)
            obs = rms(raw)
            t0 = time.time()
            with torch.no_grad():
                mu, logstd, val = net(torch.from_numpy(obs))
                d = dist_of(mu, logstd)
                act = d.sample()
                logp = d.log_prob(act).sum(1)
            t_infer += time.time() - t0
            rew, done = venv.step(act.numpy())
            for k, v in zip(buf, (obs, act, logp, val, rew, done, mu, logstd), strict=True):
                buf[k].append(torch.as_tensor(v))
        with torch.no_grad():
            last_val = net(torch.from_numpy(rms(venv.obs())))[2]
        t_play = time.time() - t_play
        frame += batch
        # GAE
        rews = torch.stack(buf["rew"]).float()
        dones = torch.stack(buf["done"]).float()
        vals = torch.stack(buf["val"])
        adv = torch.zeros_like(rews)
        gae, nv = torch.zeros(args.num_actors), last_val
        for t in reversed(range(args.horizon_length)):
            nonterm = 1.0 - dones[t]
            delta = rews[t] + args.gamma * nv * nonterm - vals[t]
            gae = delta + args.gamma * args.tau * nonterm * gae
            adv[t], nv = gae, vals[t]
        rets = (adv + vals).reshape(-1)
        adv = adv.reshape(-1)
        obs_b = torch.stack(buf["obs"]).reshape(batch, OBS)
        act_b = torch.stack(buf["act"]).reshape(batch, ACT)
        old_logp = torch.stack(buf["logp"]).reshape(-1)
        old_val = vals.reshape(-1)
        if args.lr_schedule == "linear":
            lr = args.learning_rate * max(0.0, 1 - (epoch_num - 1) / args.max_epochs)
        t_up = time.time()
        a_l, c_l, b_l, ent_l, kl_l = [], [], [], [], []
        for _ in range(args.mini_epochs):
            perm = torch.from_numpy(rng.permutation(batch))
            ep_kls = []
            for s in range(0, batch, args.minibatch_size):
                i = perm[s : s + args.minibatch_size]
                mu, logstd, v = net(obs_b[i])
                d = dist_of(mu, logstd)
                logp = d.log_prob(act_b[i]).sum(1)
                a = adv[i]
                if args.normalize_advantage:
                    a = (a - a.mean()) / (a.std() + 1e-8)
                ratio = torch.exp(logp - old_logp[i])
                a_loss = torch.max(
                    -a * ratio, -a * torch.clamp(ratio, 1 - args.e_clip, 1 + args.e_clip)
                ).mean()
                v_clip = old_val[i] + (v - old_val[i]).clamp(-args.e_clip, args.e_clip)
                c_loss = torch.max((v - rets[i]) ** 2, (v_clip - rets[i]) ** 2).mean()
                entropy = d.entropy().sum(1).mean()
                b_loss = (
                    (torch.clamp(mu - 1.1, min=0) ** 2 + torch.clamp(-1.1 - mu, min=0) ** 2)
                    .sum(1)
                    .mean()
                )
                loss = (
                    a_loss
                    + 0.5 * c_loss * args.critic_coef
                    - entropy * args.entropy_coef
                    + b_loss * args.bounds_loss_coef
                )
                for g in optim.param_groups:
                    g["lr"] = lr
                optim.zero_grad()
                loss.backward()
                if args.truncate_grads:
                    torch.nn.utils.clip_grad_norm_(net.parameters(), args.grad_norm)
                optim.step()
                with torch.no_grad():
                    kl = (old_logp[i] - logp).mean().abs()
                a_l.append(a_loss.item())
                c_l.append(c_loss.item())
                b_l.append(b_loss.item())
                ent_l.append(entropy.item())
                ep_kls.append(kl.item())
            kl_l.append(float(np.mean(ep_kls)))
            if args.lr_schedule == "adaptive":
                if kl_l[-1] > 2.0 * args.kl_threshold:
                    lr = max(lr / 1.5, 1e-6)
                elif kl_l[-1] < 0.5 * args.kl_threshold:
                    lr = min(lr * 1.5, 1e-2)
        t_up = time.time() - t_up
        total = t_play + t_up
        total_time = time.time() - start
        m = {
            "performance/step_inference_rl_update_fps": batch / total,
            "performance/step_inference_fps": batch / t_play,
            "performance/step_fps": batch / max(1e-9, t_play - t_infer),
            "performance/rl_update_time": t_up,
            "performance/step_inference_time": t_play,
            "performance/step_time": t_play - t_infer,
            "losses/a_loss": float(np.mean(a_l)),
            "losses/c_loss": float(np.mean(c_l)),
            "losses/bounds_loss": float(np.mean(b_l)),
            "losses/entropy": float(np.mean(ent_l)),
            "info/last_lr": lr,
            "info/lr_mul": 1.0,
            "info/e_clip": args.e_clip,
            "info/kl": float(np.mean(kl_l)),
            "info/epochs": epoch_num,
        }
        games = venv.finished[-args.games_to_track :]
        if games:
            mr = float(np.mean([g[0] for g in games]))
            ml = float(np.mean([g[1] for g in games]))
            m["rewards/step"], m["episode_lengths/step"] = mr, ml
        mlflow.log_metrics(m, step=frame)
        if games:
            mlflow.log_metrics({"rewards/iter": mr, "episode_lengths/iter": ml}, step=epoch_num)
            mlflow.log_metrics(
                {"rewards/time": mr, "episode_lengths/time": ml}, step=int(total_time)
            )
        print(
            f"fps step: {batch / max(1e-9, t_play - t_infer):.0f} fps step and policy inference: "
            f"{batch / t_play:.0f} fps total: {batch / total:.0f} epoch: {epoch_num}/"
            f"{args.max_epochs} frames: {frame}",
            flush=True,
        )
        if epoch_num % args.save_frequency == 0:
            torch.save(net.state_dict(), "Reacher.pth")
            print("=> saving checkpoint 'runs/Reacher/nn/Reacher.pth'", flush=True)
    print(f"MAX EPOCHS NUM! mean reward: {mr:.3f}", flush=True)
