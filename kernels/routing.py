"""MiniMax-M2 router: fp32 sigmoid scores, biased choice, unbiased renormalised weights."""

from __future__ import annotations

import torch

from kernels.dispatch import resolve_backend


def sigmoid_topk_reference(
    router_logits: torch.Tensor, bias: torch.Tensor | None, top_k: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """router_logits [T, E] -> (weights [T, k] fp32, ids [T, k] int64)."""
    scores = torch.sigmoid(router_logits.float())
    choice = scores if bias is None else scores + bias.float()
    topk_ids = torch.topk(choice, top_k, dim=-1, sorted=True).indices
    topk_weights = scores.gather(-1, topk_ids)
    topk_weights = topk_weights / topk_weights.sum(dim=-1, keepdim=True)
    return topk_weights, topk_ids


def sigmoid_topk(
    router_logits: torch.Tensor,
    bias: torch.Tensor | None,
    top_k: int,
    backend: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor]:
    """router_logits [T, E] -> (weights [T, k] fp32 summing to 1, ids [T, k] int64, descending)."""
    backend = resolve_backend(backend, router_logits.device, "router")
    if backend != "triton":  # the reference is already the fastest PyTorch formulation
        return sigmoid_topk_reference(router_logits, bias, top_k)
    from kernels.triton_routing import sigmoid_topk_triton

    return sigmoid_topk_triton(router_logits, bias, top_k)
