"""Kernels for the MiniMax-M2 MoE and for tree attention.

Public entry points (each takes ``backend="auto"|"reference"|"torch"|"triton"``):

- ``sigmoid_topk(router_logits, bias, top_k)`` -> ``(topk_weights, topk_ids)``
- ``fused_moe(x, w_gate_up, w_down, topk_weights, topk_ids)`` -> ``out``

This package imports nothing else of ours.
"""

from kernels.moe import fused_moe
from kernels.routing import sigmoid_topk

__all__ = ["fused_moe", "sigmoid_topk"]
