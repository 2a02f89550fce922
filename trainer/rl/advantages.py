"""Advantages: reward-to-go of each step minus a baseline.

Per episode, steps sorted by ``step``: ``G_t = sum_{k>=t} gamma^(k-t) r_k``. The baseline is
- ``group``: the mean episode return (G_0) of the episodes in the same group (same task: the
  GRPO idea, no value network), or
- ``batch``: the mean episode return over the whole batch (a trajectory baseline for when
  there are no groups), or ``none``.
``normalize`` divides by the group's (or batch's) return std (GRPO's normalisation).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

from trainer.rl.data import Sample

BASELINES = ("group", "batch", "none")


def rewards_to_go(rewards: Sequence[float], gamma: float = 1.0) -> list[float]:
    out, acc = [0.0] * len(rewards), 0.0
    for t in range(len(rewards) - 1, -1, -1):
        acc = rewards[t] + gamma * acc
        out[t] = acc
    return out


def compute_advantages(
    samples: Sequence[Sample],
    gamma: float = 1.0,
    baseline: str = "group",
    normalize: bool = False,
    eps: float = 1e-6,
) -> list[float]:
    """One advantage per sample (broadcast to its trainable tokens), in ``samples`` order."""
    if baseline not in BASELINES:
        raise ValueError(f"unknown baseline {baseline!r}; expected one of {BASELINES}")
    episodes: dict[str, list[int]] = defaultdict(list)
    for i, s in enumerate(samples):
        episodes[s.episode].append(i)
    togo = [0.0] * len(samples)
    ret: dict[str, float] = {}
    for ep, idx in episodes.items():
        idx.sort(key=lambda i: samples[i].step)
        g = rewards_to_go([samples[i].reward for i in idx], gamma)
        for i, v in zip(idx, g, strict=True):
            togo[i] = v
        ret[ep] = g[0]
    key = (lambda ep: samples[episodes[ep][0]].group) if baseline == "group" else (lambda ep: "")
    pools: dict[str, list[float]] = defaultdict(list)
    for ep, r in ret.items():
        pools[key(ep)].append(r)
    stats = {}
    for k, rs in pools.items():
        mean = sum(rs) / len(rs)
        std = (sum((r - mean) ** 2 for r in rs) / len(rs)) ** 0.5
        stats[k] = (mean if baseline != "none" else 0.0, std)
    adv = []
    for i, s in enumerate(samples):
        mean, std = stats[key(s.episode)]
        a = togo[i] - mean
        adv.append(a / (std + eps) if normalize else a)
    return adv
