"""A PPO agent trained as PufferLib's ``clean_pufferl`` trains one on an Ocean environment, its
``wandb.log`` dictionaries mirrored to MLflow by the team's logger.

Plain PyTorch + numpy + the plain ``mlflow`` API (no PufferLib here).  What is imitated:

* the ``[train]`` config (``total_timesteps``, ``learning_rate``, ``anneal_lr``, ``num_envs``,
  ``num_workers``, ``batch_size``, ``minibatch_size``, ``bptt_horizon``, ``update_epochs``,
  ``gamma``, ``gae_lambda``, ``norm_adv``, ``clip_coef``, ``clip_vloss``, ``vf_coef``,
  ``ent_coef``, ``max_grad_norm``) and ``clean_pufferl``'s loop: ``evaluate`` fills the
  experience buffer (``batch_size`` agent steps), ``train`` runs ``update_epochs`` passes of
  minibatches, ``global_step`` counts agent steps;
* the log dictionary after each ``train``, at ``step = global_step``: ``0verview/SPS``,
  ``0verview/agent_steps``, ``0verview/epoch``, ``0verview/learning_rate`` (PufferLib's own
  zero, which sorts the overview first in W&B), ``losses/policy_loss``, ``losses/value_loss``,
  ``losses/entropy``, ``losses/old_approx_kl``, ``losses/approx_kl``, ``losses/clipfrac``,
  ``losses/explained_variance``, the environment's info means ``environment/episode_return``,
  ``environment/episode_length``, ``environment/score`` and the profile
  ``performance/eval_time``, ``performance/train_time`` (s in the epoch);
* the vector backends: ``Serial`` (every env in the main process) and the team's
  ``Threaded`` port of ``Multiprocessing`` (``num_workers`` workers, each stepping its slice of
  the envs; the main loop sends actions and blocks on the workers' results).

Environment: an Ocean ``Squared``-like grid (``size`` x ``size``, the agent starts in the
centre, targets appear on the border; five actions; the observation is the flattened grid with
the agent at +1 and the target at -1; +1 for a target, -1 when ``size * 2`` ticks pass without
one; ``targets_per_episode`` targets end an episode; ``score`` = targets collected / targets
asked).  ``--respawn_avoid_agent`` is the team's change to the respawn: when the new target
lands on the agent's cell it moves to the next border cell.  ``--save_trajectories`` is the
team's offline-dataset export: after each epoch the whole dataset collected so far is written
to ``trajectories.npz`` (compressed).  Written without looking at the doctor.

Faults are real settings and code paths: ``--learning_rate``; ``--respawn_avoid_agent`` (under
``Serial`` and under ``Threaded``); ``--save_trajectories``.
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
        "--seed": 1,
        "--total_timesteps": 400_000,
        "--learning_rate": 3e-3,
        "--anneal_lr": 1,
        "--num_envs": 64,
        "--num_workers": 4,
        "--vec_backend": "serial",
        "--bptt_horizon": 32,
        "--minibatch_size": 512,
        "--update_epochs": 2,
        "--gamma": 0.95,
        "--gae_lambda": 0.9,
        "--norm_adv": 1,
        "--clip_coef": 0.2,
        "--clip_vloss": 1,
        "--vf_coef": 0.5,
        "--ent_coef": 0.01,
        "--max_grad_norm": 0.5,
        "--hidden_size": 128,
        "--size": 9,
        "--targets_per_episode": 3,
        "--respawn_avoid_agent": 0,
        "--save_trajectories": 0,
    }
)
rng = _setup.seeded(args.seed)
BATCH = args.num_envs * args.bptt_horizon
MOVES = np.array([[0, 0], [-1, 0], [1, 0], [0, -1], [0, 1]])


class Squared:
    """A slice of vectorised Squared envs (numpy)."""

    def __init__(self, n, seed):
        s = args.size
        self.n, self.rng = n, np.random.default_rng(seed)
        self.border = np.array(
            [(r, c) for r in range(s) for c in range(s) if r in (0, s - 1) or c in (0, s - 1)]
        )
        self.agent = np.zeros((n, 2), np.int64)
        self.target = np.zeros((n, 2), np.int64)
        self.tick = np.zeros(n, np.int64)
        self.hits = np.zeros(n, np.int64)
        self.ret = np.zeros(n)
        self.length = np.zeros(n, np.int64)
        for i in range(n):
            self.reset(i)

    def respawn(self, i):
        idx = self.rng.integers(len(self.border))
        if args.respawn_avoid_agent and (self.border[idx] == self.agent[i]).all():
            idx = idx + 1  # the next border cell
        self.target[i] = self.border[idx]
        self.tick[i] = 0

    def reset(self, i):
        self.agent[i] = args.size // 2
        self.hits[i] = self.length[i] = 0
        self.ret[i] = 0.0
        self.respawn(i)

    def obs(self):
        s = args.size
        grid = np.zeros((self.n, s, s), np.float32)
        ar = np.arange(self.n)
        grid[ar, self.target[:, 0], self.target[:, 1]] = -1.0
        grid[ar, self.agent[:, 0], self.agent[:, 1]] = 1.0
        return grid.reshape(self.n, -1)

    def step(self, actions):
        self.agent = np.clip(self.agent + MOVES[actions], 0, args.size - 1)
        self.tick += 1
        self.length += 1
        reward = np.zeros(self.n, np.float32)
        done = np.zeros(self.n, bool)
        infos = []
        for i in range(self.n):
            if (self.agent[i] == self.target[i]).all():
                reward[i] = 1.0
                self.hits[i] += 1
                if self.hits[i] < args.targets_per_episode:
                    self.respawn(i)
                else:
                    done[i] = True
            elif self.tick[i] >= 2 * args.size:
                reward[i] = -1.0
                done[i] = True
            self.ret[i] += reward[i]
            if done[i]:
                infos.append((self.ret[i], self.length[i], self.hits[i] / args.targets_per_episode))
                self.reset(i)
        return self.obs(), reward, done, infos


class Serial:
    def __init__(self):
        self.env = Squared(args.num_envs, args.seed + 100)

    def reset(self):
        return self.env.obs()

    def step(self, actions):
        return self.env.step(actions)


class Threaded:
    """The team's Multiprocessing port: one thread per worker, results over queues."""

    def __init__(self):
        w = args.num_workers
        self.per = args.num_envs // w
        self.envs = [Squared(self.per, args.seed + 100 + k) for k in range(w)]
        self.send = [queue.Queue() for _ in range(w)]
        self.recv = queue.Queue()
        for k in range(w):
            threading.Thread(target=self.worker, args=(k,), daemon=True).start()

    def worker(self, k):
        while True:
            actions = self.send[k].get()
            self.recv.put((k, self.envs[k].step(actions)))

    def reset(self):
        return np.concatenate([e.obs() for e in self.envs])

    def step(self, actions):
        for k in range(len(self.envs)):
            self.send[k].put(actions[k * self.per : (k + 1) * self.per])
        parts = dict(self.recv.get() for _ in range(len(self.envs)))  # blocks on every worker
        out = [parts[k] for k in range(len(self.envs))]
        return (
            np.concatenate([o[0] for o in out]),
            np.concatenate([o[1] for o in out]),
            np.concatenate([o[2] for o in out]),
            [i for o in out for i in o[3]],
        )


class Policy(torch.nn.Module):
    def __init__(self, n_obs, h):
        super().__init__()
        self.enc = torch.nn.Sequential(torch.nn.Linear(n_obs, h), torch.nn.GELU())
        self.actor = torch.nn.Linear(h, 5)
        self.value = torch.nn.Linear(h, 1)

    def forward(self, x):
        z = self.enc(x)
        return self.actor(z), self.value(z)[:, 0]


vec = Threaded() if args.vec_backend == "threads" else Serial()
policy = Policy(args.size * args.size, args.hidden_size)
optim = torch.optim.Adam(policy.parameters(), lr=args.learning_rate, eps=1e-5)
num_epochs = args.total_timesteps // BATCH
dataset = []

with mlflow.start_run():
    mlflow.log_params(vars(args))
    obs = vec.reset()
    global_step, start = 0, time.time()
    for epoch in range(num_epochs):
        t0 = time.time()
        O = np.zeros((args.bptt_horizon, args.num_envs, obs.shape[1]), np.float32)
        A = np.zeros((args.bptt_horizon, args.num_envs), np.int64)
        LP = np.zeros((args.bptt_horizon, args.num_envs), np.float32)
        V = np.zeros((args.bptt_horizon + 1, args.num_envs), np.float32)
        R = np.zeros((args.bptt_horizon, args.num_envs), np.float32)
        D = np.zeros((args.bptt_horizon, args.num_envs), np.float32)
        infos = []
        with torch.no_grad():
            for t in range(args.bptt_horizon):
                logits, v = policy(torch.from_numpy(obs))
                dist = torch.distributions.Categorical(logits=logits)
                a = dist.sample()
                O[t], A[t], LP[t], V[t] = obs, a.numpy(), dist.log_prob(a).numpy(), v.numpy()
                obs, R[t], done, info = vec.step(a.numpy())
                D[t] = done
                infos += info
            V[-1] = policy(torch.from_numpy(obs))[1].numpy()
        global_step += BATCH
        adv = np.zeros_like(R)
        gae = 0.0
        for t in reversed(range(args.bptt_horizon)):
            nonterm = 1.0 - D[t]
            delta = R[t] + args.gamma * V[t + 1] * nonterm - V[t]
            gae = delta + args.gamma * args.gae_lambda * nonterm * gae
            adv[t] = gae
        ret = adv + V[:-1]
        eval_time = time.time() - t0

        t1 = time.time()
        if args.anneal_lr:
            lr = args.learning_rate * (1.0 - epoch / num_epochs)
            for g in optim.param_groups:
                g["lr"] = lr
        b_obs = torch.from_numpy(O.reshape(BATCH, -1))
        b_act = torch.from_numpy(A.reshape(-1))
        b_lp = torch.from_numpy(LP.reshape(-1))
        b_adv = torch.from_numpy(adv.reshape(-1))
        b_ret = torch.from_numpy(ret.reshape(-1))
        b_val = torch.from_numpy(V[:-1].reshape(-1))
        stats = {k: [] for k in ("pl", "vl", "ent", "okl", "kl", "cf")}
        for _ in range(args.update_epochs):
            perm = torch.from_numpy(rng.permutation(BATCH))
            for s in range(0, BATCH, args.minibatch_size):
                i = perm[s : s + args.minibatch_size]
                logits, v = policy(b_obs[i])
                dist = torch.distributions.Categorical(logits=logits)
                lp = dist.log_prob(b_act[i])
                logratio = lp - b_lp[i]
                ratio = logratio.exp()
                with torch.no_grad():
                    stats["okl"].append((-logratio).mean().item())
                    stats["kl"].append(((ratio - 1) - logratio).mean().item())
                    stats["cf"].append(((ratio - 1.0).abs() > args.clip_coef).float().mean().item())
                a = b_adv[i]
                if args.norm_adv:
                    a = (a - a.mean()) / (a.std() + 1e-8)
                pg = torch.max(
                    -a * ratio, -a * torch.clamp(ratio, 1 - args.clip_coef, 1 + args.clip_coef)
                ).mean()
                if args.clip_vloss:
                    vc = b_val[i] + torch.clamp(v - b_val[i], -args.clip_coef, args.clip_coef)
                    vl = 0.5 * torch.max((v - b_ret[i]) ** 2, (vc - b_ret[i]) ** 2).mean()
                else:
                    vl = 0.5 * ((v - b_ret[i]) ** 2).mean()
                ent = dist.entropy().mean()
                loss = pg - args.ent_coef * ent + args.vf_coef * vl
                optim.zero_grad()
                loss.backward()
                torch.nn.utils.clip_grad_norm_(policy.parameters(), args.max_grad_norm)
                optim.step()
                stats["pl"].append(pg.item())
                stats["vl"].append(vl.item())
                stats["ent"].append(ent.item())
        y_pred, y_true = V[:-1].reshape(-1), ret.reshape(-1)
        explained = 1 - np.var(y_true - y_pred) / (np.var(y_true) + 1e-8)
        if args.save_trajectories:
            dataset.append((O, A, R, D))
            np.savez_compressed(
                "trajectories.npz",
                obs=np.concatenate([d[0] for d in dataset]),
                actions=np.concatenate([d[1] for d in dataset]),
                rewards=np.concatenate([d[2] for d in dataset]),
                dones=np.concatenate([d[3] for d in dataset]),
            )
        train_time = time.time() - t1
        sps = BATCH / (time.time() - t0)
        log = {
            "0verview/SPS": sps,
            "0verview/agent_steps": global_step,
            "0verview/epoch": epoch,
            "0verview/learning_rate": optim.param_groups[0]["lr"],
            "losses/policy_loss": float(np.mean(stats["pl"])),
            "losses/value_loss": float(np.mean(stats["vl"])),
            "losses/entropy": float(np.mean(stats["ent"])),
            "losses/old_approx_kl": float(np.mean(stats["okl"])),
            "losses/approx_kl": float(np.mean(stats["kl"])),
            "losses/clipfrac": float(np.mean(stats["cf"])),
            "losses/explained_variance": float(explained),
            "performance/eval_time": eval_time,
            "performance/train_time": train_time,
        }
        if infos:
            r, n, sc = np.array(infos, np.float64).T
            log["environment/episode_return"] = float(np.mean(r))
            log["environment/episode_length"] = float(np.mean(n))
            log["environment/score"] = float(np.mean(sc))
        mlflow.log_metrics(log, step=global_step)
        if epoch % 10 == 0 or epoch == num_epochs - 1:
            print(
                f"epoch {epoch} agent_steps {global_step} SPS {sps:.0f} "
                f"return {log.get('environment/episode_return', float('nan')):.3f} "
                f"score {log.get('environment/score', float('nan')):.3f} "
                f"entropy {log['losses/entropy']:.3f}",
                flush=True,
            )
