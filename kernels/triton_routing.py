"""Triton router: fp32 sigmoid, top-k on score + bias, renormalised unbiased weights.

One program handles BLOCK_T tokens x all E experts (E <= a few hundred fits in registers).
Top-k is k rounds of argmax-and-knock-out, which returns experts in descending order like
torch.topk(sorted=True).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _sigmoid_topk_kernel(
    logits_ptr,
    bias_ptr,
    weights_ptr,
    ids_ptr,
    T,
    E,
    stride_t,
    HAS_BIAS: tl.constexpr,
    TOP_K: tl.constexpr,
    BLOCK_T: tl.constexpr,
    BLOCK_E: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    pid = tl.program_id(0)
    rows = pid * BLOCK_T + tl.arange(0, BLOCK_T)
    cols = tl.arange(0, BLOCK_E)
    row_ok = rows < T
    col_ok = cols < E
    mask = row_ok[:, None] & col_ok[None, :]
    logits = tl.load(logits_ptr + rows[:, None] * stride_t + cols[None, :], mask=mask, other=0.0)
    scores = tl.sigmoid(logits.to(tl.float32))
    choice = scores
    if HAS_BIAS:
        bias = tl.load(bias_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)
        choice = scores + bias[None, :]
    choice = tl.where(mask, choice, float("-inf"))

    kk = tl.arange(0, BLOCK_K)
    ids = tl.zeros((BLOCK_T, BLOCK_K), dtype=tl.int32)
    weights = tl.zeros((BLOCK_T, BLOCK_K), dtype=tl.float32)
    for k in tl.static_range(TOP_K):
        best = tl.argmax(choice, axis=1)  # [BLOCK_T]
        hit = cols[None, :] == best[:, None]
        w = tl.sum(tl.where(hit, scores, 0.0), axis=1)
        ids = tl.where(kk[None, :] == k, best[:, None], ids)
        weights = tl.where(kk[None, :] == k, w[:, None], weights)
        choice = tl.where(hit, float("-inf"), choice)
    weights = weights / tl.sum(weights, axis=1)[:, None]
    out_mask = row_ok[:, None] & (kk[None, :] < TOP_K)
    out_off = rows[:, None] * TOP_K + kk[None, :]
    tl.store(weights_ptr + out_off, weights, mask=out_mask)
    tl.store(ids_ptr + out_off, ids.to(tl.int64), mask=out_mask)


def sigmoid_topk_triton(
    router_logits: torch.Tensor, bias: torch.Tensor | None, top_k: int
) -> tuple[torch.Tensor, torch.Tensor]:
    T, E = router_logits.shape
    if not 1 <= top_k <= E:
        raise ValueError(f"top_k={top_k} must be in 1..{E}")
    logits = router_logits.contiguous()
    weights = torch.empty(T, top_k, device=logits.device, dtype=torch.float32)
    ids = torch.empty(T, top_k, device=logits.device, dtype=torch.int64)
    block_e = triton.next_power_of_2(E)
    block_t = max(1, min(16, 4096 // block_e))
    grid = (triton.cdiv(T, block_t),)
    _sigmoid_topk_kernel[grid](
        logits,
        bias if bias is not None else logits,
        weights,
        ids,
        T,
        E,
        logits.stride(0),
        HAS_BIAS=bias is not None,
        TOP_K=top_k,
        BLOCK_T=block_t,
        BLOCK_E=block_e,
        BLOCK_K=triton.next_power_of_2(top_k),
    )
    return weights, ids
