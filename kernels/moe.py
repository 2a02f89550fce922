"""Fused MoE expert computation: SwiGLU experts weighted by the router, summed over top-k."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def fused_moe_reference(
    x: torch.Tensor,
    w_gate_up: torch.Tensor,
    w_down: torch.Tensor,
    topk_weights: torch.Tensor,
    topk_ids: torch.Tensor,
) -> torch.Tensor:
    """Loop over experts. x [T, H], w_gate_up [E, 2I, H] (gate rows first), w_down [E, H, I]."""
    num_experts = w_gate_up.shape[0]
    inter = w_down.shape[-1]
    out = torch.zeros_like(x)
    for e in range(num_experts):
        token_idx, slot = torch.where(topk_ids == e)
        if token_idx.numel() == 0:
            continue
        h = x[token_idx] @ w_gate_up[e].t()  # (n, 2I)
        h = F.silu(h[:, :inter]) * h[:, inter:]
        y = h @ w_down[e].t()  # (n, H)
        y = y * topk_weights[token_idx, slot].unsqueeze(-1).to(y.dtype)
        out.index_add_(0, token_idx, y.to(out.dtype))
    return out


def fused_moe(
    x: torch.Tensor,
    w_gate_up: torch.Tensor,
    w_down: torch.Tensor,
    topk_weights: torch.Tensor,
    topk_ids: torch.Tensor,
    backend: str = "auto",
) -> torch.Tensor:
    if backend not in ("auto", "reference", "torch", "triton"):
        raise ValueError(f"unknown MoE backend {backend!r}")
    return fused_moe_reference(x, w_gate_up, w_down, topk_weights, topk_ids)
