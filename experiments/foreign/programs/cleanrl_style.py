"""DQN on CartPole trained the way CleanRL's single-file ``dqn.py`` trains it, its
``SummaryWriter`` scalars mirrored into MLflow tag for tag (as ``--track`` would sync them).

Plain PyTorch + numpy + the plain ``mlflow`` API (no gymnasium, no cleanrl here).  The ``Args``
dataclass is logged as params (CleanRL writes it as the ``hyperparameters`` text).  As
``dqn.py`` writes them, all at ``global_step`` (the environment step, from 0): whenever an
episode ends, ``charts/episodic_return`` and ``charts/episodic_length`` (from
``RecordEpisodeStatistics``); after ``--learning_starts``, on every training step that falls on
a multiple of 100 (training every ``--train_frequency`` steps), ``losses/td_loss`` (the MSE
between the TD target and Q(s, a) of the sampled batch), ``losses/q_values`` (the batch's mean
Q(s, a)) and ``charts/SPS`` (``int(global_step / (time.time() - start_time))``: the average
steps per second since the start, not the interval's).  The console shows
``global_step=..., episodic_return=...`` and ``SPS: ...`` lines.  Written without looking at
the doctor.

Environment: CartPole-v1's physics (Euler, 0.02 s, +1 reward per step, terminated when the pole
passes 12 degrees or the cart 2.4, truncated at 500 steps), in numpy.  Agent: the ``QNetwork``
(4 -> 120 -> 84 -> 2, ReLU), Adam at ``--learning_rate``, epsilon-greedy with
``linear_schedule(start_e, end_e, exploration_fraction * total_timesteps)``, an SB3-style
``ReplayBuffer`` of ``--buffer_size`` preallocated transitions, a target network copied (tau 1)
or Polyak-averaged (tau < 1) every ``--target_network_frequency`` steps.

Faults are real settings: ``--learning_rate`` far too high (2.5e-1 typed for 2.5e-4);
``--learning_rate`` far too low; ``--target_network_frequency 0`` (the update test
``global_step % args.target_network_frequency`` divides by zero once training starts);
``--buffer_size`` typed with two zeros too many (the buffer's ``np.zeros`` cannot be allocated
under the job's memory limit).
"""

import time

import _setup
import mlflow
import numpy as np
import torch
import torch.nn.functional as F

args = _setup.parse_flags(
    {
        "--exp_name": "dqn",
        "--seed": 1,
        "--env_id": "CartPole-v1",
        "--total_timesteps": 40000,
        "--learning_rate": 0.0005,
        "--num_envs": 1,
        "--buffer_size": 10000,
        "--gamma": 0.99,
        "--tau": 1.0,
        "--target_network_frequency": 500,
        "--batch_size": 128,
        "--start_e": 1.0,
        "--end_e": 0.05,
        "--exploration_fraction": 0.3,
        "--learning_starts": 2000,
        "--train_frequency": 10,
    }
)
rng = _setup.seeded(args.seed)
run_name = f"{args.env_id}__{args.exp_name}__{args.seed}__{int(time.time())}"


class CartPole:
    """gymnasium's CartPole-v1 wrapped in RecordEpisodeStatistics."""

    gravity, masscart, masspole, length, force_mag, tau = 9.8, 1.0, 0.1, 0.5, 10.0, 0.02
    theta_threshold = 12 * 2 * np.pi / 360
    x_threshold = 2.4

    def __init__(self, seed):
        self.rng = np.random.default_rng(seed)
        self.total_mass = self.masspole + self.masscart
        self.polemass_length = self.masspole * self.length

    def reset(self):
        self.state = self.rng.uniform(-0.05, 0.05, 4)
        self.ep_r, self.ep_l = 0.0, 0
        return self.state.astype(np.float32)

    def step(self, action):
        x, x_dot, theta, theta_dot = self.state
        force = self.force_mag if action == 1 else -self.force_mag
        cos, sin = np.cos(theta), np.sin(theta)
        temp = (force + self.polemass_length * theta_dot**2 * sin) / self.total_mass
        thetaacc = (self.gravity * sin - cos * temp) / (
            self.length * (4.0 / 3.0 - self.masspole * cos**2 / self.total_mass)
        )
        xacc = temp - self.polemass_length * thetaacc * cos / self.total_mass
        x, x_dot = x + self.tau * x_dot, x_dot + self.tau * xacc
        theta, theta_dot = theta + self.tau * theta_dot, theta_dot + self.tau * thetaacc
        self.state = np.array([x, x_dot, theta, theta_dot])
        terminated = bool(
            x < -self.x_threshold
            or x > self.x_threshold
            or theta < -self.theta_threshold
            or theta > self.theta_threshold
        )
        self.ep_r += 1.0
        self.ep_l += 1
        truncated = self.ep_l >= 500
        info = {}
        if terminated or truncated:
            info["episode"] = {"r": self.ep_r, "l": self.ep_l}
        return self.state.astype(np.float32), 1.0, terminated, truncated, info


class QNetwork(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.network = torch.nn.Sequential(
            torch.nn.Linear(4, 120),
            torch.nn.ReLU(),
            torch.nn.Linear(120, 84),
            torch.nn.ReLU(),
            torch.nn.Linear(84, 2),
        )

    def forward(self, x):
        return self.network(x)


class ReplayBuffer:
    """stable_baselines3.common.buffers.ReplayBuffer (handle_timeout_termination=False)."""

    def __init__(self, buffer_size, obs_dim, n_envs=1):
        self.buffer_size = max(buffer_size // n_envs, 1)
        self.observations = np.zeros((self.buffer_size, n_envs, obs_dim), dtype=np.float32)
        self.next_observations = np.zeros((self.buffer_size, n_envs, obs_dim), dtype=np.float32)
        self.actions = np.zeros((self.buffer_size, n_envs, 1), dtype=np.int64)
        self.rewards = np.zeros((self.buffer_size, n_envs), dtype=np.float32)
        self.dones = np.zeros((self.buffer_size, n_envs), dtype=np.float32)
        self.pos, self.full = 0, False

    def add(self, obs, next_obs, action, reward, done):
        self.observations[self.pos] = obs
        self.next_observations[self.pos] = next_obs
        self.actions[self.pos] = action
        self.rewards[self.pos] = reward
        self.dones[self.pos] = done
        self.pos += 1
        if self.pos == self.buffer_size:
            self.full, self.pos = True, 0

    def sample(self, batch_size):
        upper = self.buffer_size if self.full else self.pos
        idx = rng.integers(0, upper, batch_size)
        t = torch.from_numpy
        return (
            t(self.observations[idx, 0]),
            t(self.actions[idx, 0]),
            t(self.next_observations[idx, 0]),
            t(self.dones[idx]),
            t(self.rewards[idx]),
        )


def linear_schedule(start_e, end_e, duration, t):
    slope = (end_e - start_e) / duration
    return max(slope * t + start_e, end_e)


with mlflow.start_run():
    mlflow.log_params(vars(args) | {"run_name": run_name})
    env = CartPole(args.seed)
    q_network = QNetwork()
    optimizer = torch.optim.Adam(q_network.parameters(), lr=args.learning_rate)
    target_network = QNetwork()
    target_network.load_state_dict(q_network.state_dict())
    rb = ReplayBuffer(args.buffer_size, 4, args.num_envs)
    start_time = time.time()

    obs = env.reset()
    for global_step in range(args.total_timesteps):
        epsilon = linear_schedule(
            args.start_e, args.end_e, args.exploration_fraction * args.total_timesteps, global_step
        )
        if rng.random() < epsilon:
            action = int(rng.integers(2))
        else:
            with torch.no_grad():
                action = int(q_network(torch.from_numpy(obs)[None]).argmax(1)[0])
        next_obs, reward, terminated, truncated, info = env.step(action)
        if "episode" in info:
            r, ln = info["episode"]["r"], info["episode"]["l"]
            print(f"global_step={global_step}, episodic_return={r}", flush=True)
            mlflow.log_metrics(
                {"charts/episodic_return": r, "charts/episodic_length": ln},
                step=global_step,
                synchronous=False,
            )
        real_next_obs = next_obs.copy()
        rb.add(obs, real_next_obs, action, reward, terminated)
        obs = env.reset() if (terminated or truncated) else next_obs

        if global_step > args.learning_starts:
            if global_step % args.train_frequency == 0:
                observations, actions, next_observations, dones, rewards = rb.sample(
                    args.batch_size
                )
                with torch.no_grad():
                    target_max, _ = target_network(next_observations).max(dim=1)
                    td_target = rewards.flatten() + args.gamma * target_max * (1 - dones.flatten())
                old_val = q_network(observations).gather(1, actions).squeeze()
                loss = F.mse_loss(td_target, old_val)
                if global_step % 100 == 0:
                    sps = int(global_step / (time.time() - start_time))
                    print("SPS:", sps, flush=True)
                    mlflow.log_metrics(
                        {
                            "losses/td_loss": loss.item(),
                            "losses/q_values": old_val.mean().item(),
                            "charts/SPS": sps,
                        },
                        step=global_step,
                        synchronous=False,
                    )
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()

            if global_step % args.target_network_frequency == 0:
                for tp, qp in zip(target_network.parameters(), q_network.parameters(), strict=True):
                    tp.data.copy_(args.tau * qp.data + (1.0 - args.tau) * tp.data)
