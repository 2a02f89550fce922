"""Tree attention: causal attention inside a DFS-packed prefix tree (kernels/tree.py).

Each token attends to itself, to earlier tokens of its own node and to every token of its
ancestors. Shapes: q [B, Hq, N, D], k and v [B, Hkv, N, D] with Hq % Hkv == 0 (GQA: query head
h reads kv head h // (Hq // Hkv)); one tree describes the packing of all B rows. Returns
[B, Hq, N, D]. Differentiable on every backend.

Backends: ``reference`` (explicit masked softmax), ``torch`` (SDPA with the dense boolean mask),
``triton`` (flash-style forward/backward without a dense mask).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from kernels.dispatch import resolve_backend
from kernels.tree import PrefixTree


def _check(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, tree: PrefixTree) -> None:
    if q.dim() != 4 or k.shape != v.shape or k.dim() != 4:
        raise ValueError("expected q [B, Hq, N, D] and k, v [B, Hkv, N, D]")
    if q.shape[0] != k.shape[0] or q.shape[2:] != k.shape[2:]:
        raise ValueError(f"q {tuple(q.shape)} and k {tuple(k.shape)} disagree on B, N or D")
    if q.shape[1] % k.shape[1]:
        raise ValueError(f"{q.shape[1]} query heads are not a multiple of {k.shape[1]} kv heads")
    if q.shape[2] != tree.num_tokens:
        raise ValueError(f"tree packs {tree.num_tokens} tokens, tensors have {q.shape[2]}")


def tree_attention_reference(q, k, v, tree: PrefixTree, scale: float | None = None):
    group = q.shape[1] // k.shape[1]
    k = k.repeat_interleave(group, dim=1)
    v = v.repeat_interleave(group, dim=1)
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    scores = (q.float() @ k.float().transpose(-1, -2)) * scale
    scores = scores.masked_fill(~tree.dense_mask(q.device), float("-inf"))
    return (torch.softmax(scores, dim=-1) @ v.float()).to(q.dtype)


def tree_attention_torch(q, k, v, tree: PrefixTree, scale: float | None = None):
    mask = tree.dense_mask(q.device)
    return F.scaled_dot_product_attention(
        q, k, v, attn_mask=mask, scale=scale, enable_gqa=q.shape[1] != k.shape[1]
    )


def tree_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    tree: PrefixTree,
    backend: str = "auto",
    scale: float | None = None,
) -> torch.Tensor:
    """Attention under the prefix-tree mask; ``scale`` defaults to 1/sqrt(D)."""
    _check(q, k, v, tree)
    backend = resolve_backend(backend, q.device, "tree attention")
    if backend == "reference":
        return tree_attention_reference(q, k, v, tree, scale)
    if backend == "torch":
        return tree_attention_torch(q, k, v, tree, scale)
    from kernels.triton_tree_attention import TreeAttention

    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    return TreeAttention.apply(q, k, v, tree.subtree_end(q.device), scale)
