"""An offline-RL run with d3rlpy 2's ``DiscreteCQL.fit`` on a logged CartPole dataset, its
``TensorboardAdapterFactory`` scalars mirrored to MLflow by the team's adapter.

Plain PyTorch + numpy + the plain ``mlflow`` API (no d3rlpy, no Gym here).  What is imitated:

* ``d3rlpy.algos.DiscreteCQLConfig(learning_rate, batch_size, gamma, alpha,
  target_update_interval, n_critics, encoder_factory=VectorEncoderFactory(hidden_units))``:
  a Q-network MLP, Adam, the TD loss a Huber loss of ``Q(s, a)`` against
  ``r + gamma * (1 - terminal) * max_a' Q_target(s', a')``, the conservative loss
  ``logsumexp_a Q(s, a) - Q(s, a_data)``, ``loss = td_loss + alpha * conservative_loss``, the
  target network copied every ``target_update_interval`` gradient steps;
* ``algo.fit(dataset, n_steps, n_steps_per_epoch, evaluators={"td_error":
  TDErrorEvaluator(episodes), "environment": EnvironmentEvaluator(env, n_trials)},
  save_interval)``: an ``MDPDataset`` built from the logged episodes (``ReplayBuffer`` with an
  ``InfiniteBuffer``), transitions sampled uniformly; at every epoch's end the logger's
  ``commit(epoch, step)`` writes each metric's mean over the epoch (``loss``, ``td_loss``,
  ``conservative_loss``, ``time_sample_batch``, ``time_algorithm_update``, ``time_step`` in
  seconds) and the evaluators' results (``td_error`` on the test episodes, ``environment`` =
  the mean return of ``n_trials`` greedy episodes); every ``save_interval`` epochs
  ``save_model(f"{save_dir}/model_{step}.d3")``;
* ``TensorboardAdapter.write_metric``: ``add_scalar(f"metrics/{name}", value, epoch)``,
  which the team's adapter writes as the MLflow metric ``metrics/{name}`` at ``step = epoch``
  (from 1); the console's ``DiscreteCQL_...: epoch=3 step=1500 metrics={...}`` lines.

Environment: a numpy ``CartPole-v1`` (its physics and termination), wrapped in a
``TimeLimit(max_episode_steps)`` for evaluation as ``gym.make`` wraps it; the dataset logged
by the team's heuristic controller with ``epsilon``-random actions (``n_episodes`` episodes,
the last ``test_episodes`` kept for ``TDErrorEvaluator``); ``--new_collector_epoch``
appends a second collector's 40 episodes to the buffer when that epoch starts, after the
team's sync has seen the collector's ``DONE`` marker (``--collector_done_file``, polled
without a time-out).  Written without looking at the
doctor.

Faults are real settings and data: ``--learning_rate``; ``--collector_done_file`` (a path
the collector never writes); ``--save_dir`` (a folder never
created); ``--new_collector_reward running_return`` (the new collector's logger wrote the
episode's running return in the reward column).
"""

import copy
import os
import time

import _setup
import mlflow
import numpy as np
import torch
import torch.nn.functional as F

args = _setup.parse_flags(
    {
        "--seed": 0,
        "--n_episodes": 120,
        "--epsilon": 0.3,
        "--test_episodes": 10,
        "--learning_rate": 3e-4,
        "--batch_size": 32,
        "--gamma": 0.99,
        "--alpha": 1.0,
        "--target_update_interval": 250,
        "--hidden_units": "64,64",
        "--n_steps": 8000,
        "--n_steps_per_epoch": 400,
        "--n_trials": 3,
        "--eval_max_episode_steps": 500,  # 0: no TimeLimit wrapper
        "--save_interval": 5,
        "--save_dir": "d3rlpy_logs",
        "--new_collector_epoch": 0,  # 0: no new collector's episodes during training
        "--new_collector_reward": "step",  # step | running_return (its reward column)
        "--collector_done_file": "collector_out/DONE",  # the marker the trainer waits for
    }
)
rng = _setup.seeded(args.seed)


# ----------------------------------------------------------------------------- environment
class CartPole:
    def __init__(self, seed):
        self.rng = np.random.default_rng(seed)

    def reset(self):
        self.s = self.rng.uniform(-0.05, 0.05, 4)
        return self.s.astype(np.float32)

    def step(self, a):
        x, xd, th, thd = self.s
        force = 10.0 if a == 1 else -10.0
        ct, st = np.cos(th), np.sin(th)
        temp = (force + 0.05 * thd**2 * st) / 1.1
        thacc = (9.8 * st - ct * temp) / (0.5 * (4.0 / 3.0 - 0.1 * ct**2 / 1.1))
        xacc = temp - 0.05 * thacc * ct / 1.1
        x, xd = x + 0.02 * xd, xd + 0.02 * xacc
        th, thd = th + 0.02 * thd, thd + 0.02 * thacc
        self.s = np.array([x, xd, th, thd])
        done = bool(abs(x) > 2.4 or abs(th) > 0.2095)
        return self.s.astype(np.float32), 1.0, done


def collect(n, seed, reward="step"):
    """The team's logged dataset: a heuristic controller with epsilon-random actions."""
    env, crng = CartPole(seed), np.random.default_rng(seed)
    episodes = []
    for _e in range(n):
        obs, o, a_, r_, t_ = env.reset(), [], [], [], []
        for _t in range(500):
            a = int(obs[2] + 0.5 * obs[3] + 0.05 * obs[1] > 0)
            if crng.uniform() < args.epsilon:
                a = int(crng.integers(2))
            nobs, r, done = env.step(a)
            o.append(obs)
            a_.append(a)
            r_.append(r)
            t_.append(float(done))
            obs = nobs
            if done:
                break
        o.append(obs)
        rew = np.array(r_, np.float32)
        if reward == "running_return":  # its logger wrote the episode's return so far
            rew = np.cumsum(rew).astype(np.float32)
        episodes.append((np.array(o), np.array(a_), rew, np.array(t_, np.float32)))
    return episodes


episodes = collect(args.n_episodes, 1000)
train_eps, test_eps = episodes[: -args.test_episodes], episodes[-args.test_episodes :]


def flatten(eps):
    obs, act, rew, nxt, term = [], [], [], [], []
    for o, a, r, t in eps:
        obs.append(o[:-1])
        nxt.append(o[1:])
        act.append(a)
        rew.append(r)
        term.append(t)
    return [torch.from_numpy(np.concatenate(v)) for v in (obs, act, rew, nxt, term)]


S, A, R, S2, T = flatten(train_eps)
A = A.long()
tS, tA, tR, tS2, tT = flatten(test_eps)
tA = tA.long()


# ----------------------------------------------------------------------------- algorithm
def q_net():
    layers, d = [], 4
    for h in [int(v) for v in args.hidden_units.split(",")]:
        layers += [torch.nn.Linear(d, h), torch.nn.ReLU()]
        d = h
    return torch.nn.Sequential(*layers, torch.nn.Linear(d, 2))


q = q_net()
q_target = copy.deepcopy(q)
optim = torch.optim.Adam(q.parameters(), lr=args.learning_rate)


def update(grad_step):
    idx = torch.from_numpy(rng.integers(len(S), size=args.batch_size))
    t0 = time.perf_counter()
    s, a, r, s2, term = S[idx], A[idx], R[idx], S2[idx], T[idx]
    t1 = time.perf_counter()
    qs = q(s)
    q_sa = qs.gather(1, a[:, None])[:, 0]
    with torch.no_grad():
        y = r + args.gamma * (1 - term) * q_target(s2).max(1).values
    td_loss = F.smooth_l1_loss(q_sa, y)
    cons = (torch.logsumexp(qs, 1) - q_sa).mean()
    loss = td_loss + args.alpha * cons
    optim.zero_grad()
    loss.backward()
    optim.step()
    if grad_step % args.target_update_interval == 0:
        q_target.load_state_dict(q.state_dict())
    t2 = time.perf_counter()
    return {
        "time_sample_batch": t1 - t0,
        "time_algorithm_update": t2 - t1,
        "loss": float(loss),
        "td_loss": float(td_loss),
        "conservative_loss": float(cons),
    }


@torch.no_grad()
def td_error():  # TDErrorEvaluator: mean squared TD error on the test episodes
    y = tR + args.gamma * (1 - tT) * q(tS2).max(1).values
    return float(((q(tS).gather(1, tA[:, None])[:, 0] - y) ** 2).mean())


@torch.no_grad()
def environment():  # EnvironmentEvaluator: greedy episodes
    env, total = CartPole(int(rng.integers(1 << 30))), 0.0
    for _ in range(args.n_trials):
        obs, done, t = env.reset(), False, 0
        while not done:
            obs, r, done = env.step(int(q(torch.from_numpy(obs)[None]).argmax()))
            total += r
            t += 1
            if args.eval_max_episode_steps and t >= args.eval_max_episode_steps:
                break  # TimeLimit truncation
    return total / args.n_trials


with mlflow.start_run():
    mlflow.log_params(vars(args))
    name = time.strftime("DiscreteCQL_%Y%m%d%H%M%S")
    print(
        f"{name}: Dataset info: transitions={len(S)} episodes={len(train_eps)} "
        f"mean_return={float(np.mean([e[2].sum() for e in train_eps])):.1f}",
        flush=True,
    )
    os.makedirs(f"d3rlpy_logs/{name}", exist_ok=True)
    n_epochs = args.n_steps // args.n_steps_per_epoch
    step = 0
    for epoch in range(1, n_epochs + 1):
        if args.new_collector_epoch and epoch == args.new_collector_epoch:
            # the new collector's 40 episodes appended to the ReplayBuffer, once the collector
            # has written its DONE marker (the team's sync: poll for it, no time-out)
            new_eps = collect(40, 2000, args.new_collector_reward)
            os.makedirs("collector_out", exist_ok=True)
            open("collector_out/DONE", "w").close()
            while not os.path.exists(args.collector_done_file):
                time.sleep(2.0)
            nS, nA, nR, nS2, nT = flatten(new_eps)
            S, A, R = torch.cat([S, nS]), torch.cat([A, nA.long()]), torch.cat([R, nR])
            S2, T = torch.cat([S2, nS2]), torch.cat([T, nT])
            print(f"{name}: appended 40 episodes: transitions={len(S)}", flush=True)
        acc = {}
        for _ in range(args.n_steps_per_epoch):
            t0 = time.perf_counter()
            step += 1
            m = update(step)
            m["time_step"] = time.perf_counter() - t0
            for k, v in m.items():
                acc.setdefault(k, []).append(v)
        metrics = {k: float(np.mean(v)) for k, v in acc.items()}
        metrics["td_error"] = td_error()
        metrics["environment"] = environment()
        print(f"{name}: epoch={epoch} step={step} metrics={metrics}", flush=True)
        mlflow.log_metrics({f"metrics/{k}": v for k, v in metrics.items()}, step=epoch)
        if epoch % args.save_interval == 0:
            torch.save(q.state_dict(), f"{args.save_dir}/{name}/model_{step}.d3")
            print(
                f"Model parameters are saved to {args.save_dir}/{name}/model_{step}.d3", flush=True
            )
