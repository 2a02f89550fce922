"""Kernels for the MiniMax-M2 MoE and for tree attention.

Public entry points (each takes ``backend="auto"|"reference"|"torch"|"triton"``; ``auto`` is
Triton on CUDA and the fastest PyTorch path elsewhere; ``M2_KERNEL_BACKEND`` forces one):

- ``sigmoid_topk(router_logits, bias, top_k)`` -> ``(topk_weights, topk_ids)``
- ``fused_moe(x, w_gate_up, w_down, topk_weights, topk_ids)`` -> ``out``
  (optional ``w_gate_up_scale`` / ``w_down_scale`` for FP8 e4m3 weights with 128x128 blocks)
- ``tree_attention(q, k, v, tree)`` -> ``out`` with ``tree`` a ``PrefixTree``

This package imports nothing else of ours. See docs/kernels.md.
"""

from kernels.attention import tree_attention
from kernels.moe import fused_moe
from kernels.routing import sigmoid_topk
from kernels.torch_moe import dequant_block_fp8, quant_block_fp8
from kernels.tree import PrefixTree

__all__ = [
    "PrefixTree",
    "dequant_block_fp8",
    "fused_moe",
    "quant_block_fp8",
    "sigmoid_topk",
    "tree_attention",
]
