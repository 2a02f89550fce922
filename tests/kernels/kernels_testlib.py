"""Small builders shared by the kernel tests."""

from __future__ import annotations

import torch


def moe_inputs(T, H, I, E, K, dtype=torch.float32, skip_experts=(), seed=0, grad=False):
    """Random MoE inputs; experts in ``skip_experts`` receive no token."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(T, H, generator=g).to(dtype)
    w_gate_up = (torch.randn(E, 2 * I, H, generator=g) / H**0.5).to(dtype)
    w_down = (torch.randn(E, H, I, generator=g) / I**0.5).to(dtype)
    allowed = torch.tensor([e for e in range(E) if e not in set(skip_experts)])
    assert len(allowed) >= K
    pick = torch.stack([allowed[torch.randperm(len(allowed), generator=g)[:K]] for _ in range(T)])
    weights = torch.rand(T, K, generator=g) + 0.1
    weights = weights / weights.sum(-1, keepdim=True)
    tensors = [x, weights, w_gate_up, w_down]
    if grad:
        tensors = [t.requires_grad_() for t in tensors]
    x, weights, w_gate_up, w_down = tensors
    return x, w_gate_up, w_down, weights, pick
