"""The update step: samples + advantages -> one tree-packed forward/backward -> AdamW step.

Also the SFT step of the warm start (mean negative log-likelihood of the trainable tokens),
through the same packing, so both gain from prefix merging.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from trainer.rl.data import Sample
from trainer.rl.forward import tree_logprobs, unmerged_logprobs
from trainer.rl.losses import policy_loss
from trainer.rl.tree import PackedTree, build_tree


@dataclass(frozen=True)
class UpdateConfig:
    loss: str = "cispo"  # cispo | ppo | grpo
    eps_high: float = 2.0  # CISPO: IS weight clipped to [0, 1 + eps_high]
    eps: float = 0.2  # PPO/GRPO clip range
    lr: float = 1e-5
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    merge: bool = True  # prefix-tree merging (False: every sample on its own, for ablations)
    attention: str = "auto"  # tree attention: auto | blocked | dense | kernels
    max_row_tokens: int | None = None

    def loss_kwargs(self) -> dict:
        return {"eps_high": self.eps_high} if self.loss == "cispo" else {"eps": self.eps}


def make_optimizer(model: torch.nn.Module, lr: float, weight_decay: float = 0.0):
    """AdamW with beta2 = 0.95 (steadier under the spiky gradients of RL)."""
    params = [p for p in model.parameters() if p.requires_grad]
    return torch.optim.AdamW(params, lr=lr, betas=(0.9, 0.95), weight_decay=weight_decay)


def pack(samples: Sequence[Sample], cfg: UpdateConfig) -> PackedTree:
    return build_tree(
        [s.ids for s in samples],
        [s.trainable for s in samples],
        merge=cfg.merge,
        max_row_tokens=cfg.max_row_tokens,
    )


def flat_per_target(samples: Sequence[Sample], values: Sequence[Sequence[float]]) -> list[float]:
    """Per-token values of the trainable targets, in ``build_tree``'s target order."""
    out = []
    for s, vals in zip(samples, values, strict=True):
        out.extend(vals[j] for j in range(1, len(s.ids)) if s.trainable[j])
    return out


def sample_logprobs(model, samples: Sequence[Sample], cfg: UpdateConfig, packed=None):
    """[N] log-probs of every trainable token (merged or not, per ``cfg``)."""
    device = next(model.parameters()).device
    if not cfg.merge:
        return unmerged_logprobs(model, [s.ids for s in samples], [s.trainable for s in samples])
    packed = packed if packed is not None else pack(samples, cfg)
    return tree_logprobs(model, packed.to(device), attention=cfg.attention)


def rl_step(
    model,
    optimizer,
    samples: Sequence[Sample],
    advantages: Sequence[float],
    cfg: UpdateConfig = UpdateConfig(),
) -> dict[str, float]:
    """One policy-gradient update on ``samples`` (advantage per sample). Samples without
    behaviour log-probs are treated as on-policy (ratio 1)."""
    t0 = time.perf_counter()
    device = next(model.parameters()).device
    model.train()
    packed = pack(samples, cfg)
    logp = sample_logprobs(model, samples, cfg, packed)
    sample_index = packed.sample_index.to(device)
    adv = torch.tensor(list(advantages), dtype=torch.float32, device=device)[sample_index]
    olds = [s.old_logprobs if s.old_logprobs is not None else None for s in samples]
    if all(o is not None for o in olds):
        old = torch.tensor(flat_per_target(samples, olds), dtype=torch.float32, device=device)
    else:
        old = logp.detach().clone()
        have = [o is not None for o in olds]
        if any(have):
            fill = flat_per_target(
                samples, [o or [0.0] * len(s.ids) for o, s in zip(olds, samples, strict=True)]
            )
            use = torch.tensor(have, device=device)[sample_index]
            old = torch.where(use, torch.tensor(fill, device=device), old)
    loss, stats = policy_loss(cfg.loss, logp, old, adv, sample_index, **cfg.loss_kwargs())
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    gnorm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
    optimizer.step()
    dt = time.perf_counter() - t0
    return {
        "loss": float(loss.detach()),
        "grad_norm": float(gnorm),
        "kl_old": float((old - logp.detach()).mean()) if logp.numel() else 0.0,
        "trainable_tokens": int(logp.numel()),
        "tokens_unmerged": packed.tokens_unmerged,
        "tokens_merged": packed.tokens_merged,
        "compression": packed.compression,
        "step_time_s": dt,
        "tokens_per_s": packed.tokens_unmerged / dt,
        **stats,
    }


def sft_step(
    model,
    optimizer,
    samples: Sequence[Sample],
    cfg: UpdateConfig = UpdateConfig(),
    weights: Sequence[float] | None = None,
):
    """One supervised step: mean NLL of the trainable tokens (the warm start). ``weights`` (one
    per sample) make it a weighted mean, e.g. a teacher answer plus label smoothing over the
    other valid answers."""
    model.train()
    packed = pack(samples, cfg)
    logp = sample_logprobs(model, samples, cfg, packed)
    if weights is None:
        loss = -logp.mean()
    else:
        w = torch.tensor(list(weights), dtype=torch.float32, device=logp.device)
        w = w[packed.sample_index.to(logp.device)]
        loss = -(w * logp).sum() / w.sum()
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
    optimizer.step()
    return {
        "sft_loss": float(loss.detach()),
        "trainable_tokens": int(logp.numel()),
        "tokens_unmerged": packed.tokens_unmerged,
        "tokens_merged": packed.tokens_merged,
    }
