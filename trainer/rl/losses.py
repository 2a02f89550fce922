"""Policy-gradient losses over flat per-token tensors (one entry per trainable token).

All take ``logp`` (current policy, with grad), ``old_logp`` (the behaviour policy that sampled the
token), ``adv`` (per-token advantage) and ``sample_index`` (which sample a token belongs to).

- **CISPO** (MiniMax-M1): ``J = (1/N) sum_t sg(clip(r_t, 0, 1 + eps_high)) * A_t * log pi(t)``.
  The importance weight is clipped and detached, but every token keeps its gradient (PPO's clip
  zeroes the gradient of clipped tokens, which drops the rare "fork" tokens RL most needs).
  No KL term; normalised over all tokens of the batch.
- **PPO-clip**: ``min(r A, clip(r, 1-eps, 1+eps) A)``, token-level mean.
- **GRPO**: the PPO-clip objective averaged per sample first, then over samples (its original
  sequence-level normalisation); pair it with group-normalised advantages.
Each returns ``(loss, stats)`` with loss = -J to minimise.
"""

from __future__ import annotations

import torch

LOSSES = ("cispo", "ppo", "grpo")


def _ratio(logp: torch.Tensor, old_logp: torch.Tensor) -> torch.Tensor:
    return torch.exp(logp - old_logp)


def cispo_loss(logp, old_logp, adv, sample_index=None, eps_high: float = 2.0, eps_low=None):
    """eps_low None: no lower clip (the weight is clipped to [0, 1 + eps_high])."""
    r = _ratio(logp.detach(), old_logp)
    lo = 0.0 if eps_low is None else 1.0 - eps_low
    w = r.clamp(lo, 1.0 + eps_high)
    loss = -(w * adv * logp).sum() / max(logp.numel(), 1)
    clipped = ((r > 1.0 + eps_high) | (r < lo)).float().mean() if logp.numel() else r.sum()
    return loss, {"clip_frac": float(clipped), "ratio_mean": float(r.mean()) if r.numel() else 1.0}


def ppo_clip_loss(logp, old_logp, adv, sample_index=None, eps: float = 0.2):
    r = _ratio(logp, old_logp)
    obj = torch.minimum(r * adv, r.clamp(1 - eps, 1 + eps) * adv)
    loss = -obj.sum() / max(logp.numel(), 1)
    clipped = ((r.detach() - 1).abs() > eps).float().mean() if logp.numel() else r.sum()
    return loss, {
        "clip_frac": float(clipped),
        "ratio_mean": float(r.detach().mean()) if r.numel() else 1.0,
    }


def grpo_loss(logp, old_logp, adv, sample_index, eps: float = 0.2):
    r = _ratio(logp, old_logp)
    obj = torch.minimum(r * adv, r.clamp(1 - eps, 1 + eps) * adv)
    n = int(sample_index.max()) + 1 if sample_index.numel() else 0
    per_sample = torch.zeros(n, dtype=obj.dtype, device=obj.device).index_add(0, sample_index, obj)
    counts = torch.bincount(sample_index, minlength=n).clamp_min(1).to(obj.dtype)
    present = torch.bincount(sample_index, minlength=n) > 0
    loss = -(per_sample / counts)[present].mean() if n else obj.sum()
    clipped = ((r.detach() - 1).abs() > eps).float().mean() if logp.numel() else r.sum()
    return loss, {
        "clip_frac": float(clipped),
        "ratio_mean": float(r.detach().mean()) if r.numel() else 1.0,
    }


def policy_loss(name: str, logp, old_logp, adv, sample_index, **kw):
    if name == "cispo":
        return cispo_loss(logp, old_logp, adv, sample_index, **kw)
    if name == "ppo":
        return ppo_clip_loss(logp, old_logp, adv, sample_index, **kw)
    if name == "grpo":
        return grpo_loss(logp, old_logp, adv, sample_index, **kw)
    raise ValueError(f"unknown loss {name!r}; expected one of {LOSSES}")
