"""Fused MoE expert computation: SwiGLU experts weighted by the router, summed over top-k.

Layouts follow transformers' fused MiniMax-M2 experts:
    x          [T, H]        tokens
    w_gate_up  [E, 2I, H]    gate rows first, then up rows
    w_down     [E, H, I]
    topk_weights [T, k] float, topk_ids [T, k] int
    out[t] = sum_k  w[t,k] * W_down[e] @ (silu(W_gate[e] @ x[t]) * (W_up[e] @ x[t])),  e = ids[t,k]

Optional FP8 weights: ``w_*`` as float8_e4m3fn with fp32 block scales ``w_*_scale`` of shape
[E, ceil(rows/128), ceil(cols/128)], dequantised as ``w * scale`` (MiniMax-M2's
``weight_scale_inv`` convention: multiplied, not divided).

Backends: ``reference`` (loop over experts), ``torch`` (tokens sorted by expert, two grouped
matmuls, hand-written grouped backward) -- both in kernels/torch_moe.py -- and ``triton``
(kernels/triton_moe.py). This module is the entry point: it picks one.
"""

from __future__ import annotations

import torch

from kernels.dispatch import resolve_backend
from kernels.torch_moe import fused_moe_reference, fused_moe_torch


def fused_moe(
    x: torch.Tensor,
    w_gate_up: torch.Tensor,
    w_down: torch.Tensor,
    topk_weights: torch.Tensor,
    topk_ids: torch.Tensor,
    backend: str = "auto",
    w_gate_up_scale: torch.Tensor | None = None,
    w_down_scale: torch.Tensor | None = None,
) -> torch.Tensor:
    """SwiGLU MoE experts; see the module docstring for shapes. Differentiable on every backend."""
    backend = resolve_backend(backend, x.device, "MoE")
    args = (x, w_gate_up, w_down, topk_weights, topk_ids, w_gate_up_scale, w_down_scale)
    if backend == "reference":
        return fused_moe_reference(*args)
    if backend == "torch":
        return fused_moe_torch(*args)
    from kernels.triton_moe import fused_moe_triton

    return fused_moe_triton(*args)
