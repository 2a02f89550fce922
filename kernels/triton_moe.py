"""Triton fused MoE: token alignment to expert blocks + two grouped GEMMs.

1. ``align_to_blocks``: (token, slot) pairs sorted by expert, each expert's run padded to a
   multiple of BLOCK_M with a sentinel, so every BLOCK_M rows belong to one expert.
2. GEMM 1 (gated): for a block of pairs of expert e, gate and up tiles of x @ W_gate_up[e]^T
   are accumulated side by side and SiLU(gate) * up is written per pair  -> inter [T*k, I].
3. GEMM 2: inter @ W_down[e]^T, multiplied by the pair's routing weight  -> [T*k, H],
   then the k copies of each token are summed.
FP8 e4m3 weights are dequantised tile by tile in the kernel (w * scale[128x128 block]).
The backward pass recomputes through the grouped-matmul ``torch`` path (kernels/torch_moe.py):
the Triton kernels are forward-only, which is where serving and rollouts spend their time.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from kernels.torch_moe import GroupedMoE, dequant_block_fp8

_INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"

if torch.cuda.is_available() and not _INTERPRET:
    _CONFIGS = [
        triton.Config({"BLOCK_N": bn, "BLOCK_K": bk, "GROUP_M": 8}, num_warps=w, num_stages=s)
        for bn, bk, w, s in [
            (64, 64, 4, 3),
            (128, 64, 4, 3),
            (128, 64, 8, 4),
            (64, 128, 4, 3),
            (128, 128, 8, 3),
            (256, 64, 8, 3),
        ]
    ]
else:  # the interpreter (and autotune without a GPU) wants exactly one config
    _CONFIGS = [triton.Config({"BLOCK_N": 32, "BLOCK_K": 64, "GROUP_M": 1})]


def align_to_blocks(
    topk_ids: torch.Tensor, num_experts: int, block_m: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """-> sorted_pairs [max_padded] (sentinel = T*k), expert_of_block [max_blocks], n_padded [1].

    Sized for the worst case so no host sync is needed; blocks past ``n_padded`` exit early.
    """
    flat = topk_ids.reshape(-1)
    num_pairs = flat.numel()
    order = torch.argsort(flat, stable=True)
    counts = torch.bincount(flat, minlength=num_experts)
    padded = (counts + block_m - 1) // block_m * block_m
    padded_end = torch.cumsum(padded, 0)
    padded_start = padded_end - padded
    count_start = torch.cumsum(counts, 0) - counts
    expert_sorted = flat[order]
    rank = torch.arange(num_pairs, device=flat.device) - count_start[expert_sorted]
    max_padded = num_pairs + num_experts * (block_m - 1)
    max_padded = triton.cdiv(max_padded, block_m) * block_m
    sorted_pairs = torch.full((max_padded,), num_pairs, dtype=torch.int32, device=flat.device)
    sorted_pairs[padded_start[expert_sorted] + rank] = order.to(torch.int32)
    block_start = torch.arange(0, max_padded, block_m, device=flat.device)
    expert_of_block = torch.searchsorted(padded_end, block_start, right=True)
    expert_of_block = expert_of_block.clamp_max(num_experts - 1).to(torch.int32)
    return sorted_pairs, expert_of_block, padded_end[-1:].to(torch.int32)


@triton.autotune(configs=_CONFIGS, key=["N", "K", "BLOCK_M", "GATED"])
@triton.jit
def _moe_gemm_kernel(
    a_ptr,  # [rows, K]: x (rows = tokens) or inter (rows = pairs)
    w_ptr,  # [E, N or 2N, K]
    scale_ptr,  # [E, ceil(rows/128), ceil(K/128)] fp32 (FP8 only)
    out_ptr,  # [pairs, N]
    weight_ptr,  # [pairs] routing weights (MUL_WEIGHT only)
    sorted_pairs_ptr,
    expert_of_block_ptr,
    n_padded_ptr,
    N,
    K,
    num_pairs,
    stride_am,
    stride_we,
    stride_wn,
    stride_wk,
    stride_se,
    stride_sn,
    stride_sk,
    stride_om,
    num_m_blocks,
    TOP_K: tl.constexpr,
    GATED: tl.constexpr,
    A_BY_TOKEN: tl.constexpr,
    MUL_WEIGHT: tl.constexpr,
    FP8: tl.constexpr,
    DOT_FP32: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    GROUP_M: tl.constexpr,
):
    # grouped launch order: neighbouring programs share weight tiles in L2
    pid = tl.program_id(0)
    num_n_blocks = tl.cdiv(N, BLOCK_N)
    per_group = GROUP_M * num_n_blocks
    first_m = (pid // per_group) * GROUP_M
    group_size = tl.minimum(num_m_blocks - first_m, GROUP_M)
    pid_m = first_m + (pid % per_group) % group_size
    pid_n = (pid % per_group) // group_size

    if pid_m * BLOCK_M >= tl.load(n_padded_ptr):
        return
    expert = tl.load(expert_of_block_ptr + pid_m).to(tl.int64)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    pairs = tl.load(sorted_pairs_ptr + offs_m)
    row_ok = pairs < num_pairs
    if A_BY_TOKEN:
        a_rows = pairs // TOP_K
    else:
        a_rows = pairs
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    n_ok = offs_n < N
    offs_k = tl.arange(0, BLOCK_K)

    a_ptrs = a_ptr + a_rows.to(tl.int64)[:, None] * stride_am + offs_k[None, :]
    w_base = w_ptr + expert * stride_we
    w_ptrs = w_base + offs_n[None, :] * stride_wn + offs_k[:, None] * stride_wk  # [BK, BN]
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    acc_up = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        k_ok = offs_k + k0 < K
        a = tl.load(a_ptrs, mask=row_ok[:, None] & k_ok[None, :], other=0.0)
        w_mask = k_ok[:, None] & n_ok[None, :]
        w = tl.load(w_ptrs, mask=w_mask, other=0.0)
        if GATED:
            w_up = tl.load(w_ptrs + N * stride_wn, mask=w_mask, other=0.0)
        if FP8:
            s_base = scale_ptr + expert * stride_se + ((offs_k[:, None] + k0) // 128) * stride_sk
            s = tl.load(s_base + (offs_n[None, :] // 128) * stride_sn, mask=w_mask, other=0.0)
            w = (w.to(tl.float32) * s).to(a.dtype)
            if GATED:  # up rows start at row N of the fused weight
                s_ptrs = s_base + ((offs_n[None, :] + N) // 128) * stride_sn
                s_up = tl.load(s_ptrs, mask=w_mask, other=0.0)
                w_up = (w_up.to(tl.float32) * s_up).to(a.dtype)
        if DOT_FP32:
            acc += tl.dot(a.to(tl.float32), w.to(tl.float32), input_precision="ieee")
            if GATED:
                acc_up += tl.dot(a.to(tl.float32), w_up.to(tl.float32), input_precision="ieee")
        else:
            acc += tl.dot(a, w)
            if GATED:
                acc_up += tl.dot(a, w_up)
        a_ptrs += BLOCK_K
        w_ptrs += BLOCK_K * stride_wk

    if GATED:
        acc = acc * tl.sigmoid(acc) * acc_up
    if MUL_WEIGHT:
        rw = tl.load(weight_ptr + pairs, mask=row_ok, other=0.0).to(tl.float32)
        acc = acc * rw[:, None]
    out_ptrs = out_ptr + pairs.to(tl.int64)[:, None] * stride_om + offs_n[None, :]
    tl.store(out_ptrs, acc.to(out_ptr.dtype.element_ty), mask=row_ok[:, None] & n_ok[None, :])


def _block_m(num_pairs: int, num_experts: int) -> int:
    if _INTERPRET or not torch.cuda.is_available():
        return 16
    # few pairs per expert (decode): small blocks waste less padding
    return 16 if num_pairs <= 2 * num_experts else 64


def _launch(a, w, scale, out, weights, aligned, num_pairs, top_k, block_m, gated, by_token):
    sorted_pairs, expert_of_block, n_padded = aligned
    n_out = out.shape[1]
    k_dim = a.shape[1]
    fp8 = scale is not None
    num_m_blocks = expert_of_block.numel()
    dot_fp32 = _INTERPRET or a.dtype == torch.float32

    def grid(meta):
        return (num_m_blocks * triton.cdiv(n_out, meta["BLOCK_N"]),)

    s = scale if fp8 else w
    _moe_gemm_kernel[grid](
        a,
        w,
        s,
        out,
        weights if weights is not None else a,
        sorted_pairs,
        expert_of_block,
        n_padded,
        n_out,
        k_dim,
        num_pairs,
        a.stride(0),
        w.stride(0),
        w.stride(1),
        w.stride(2),
        s.stride(0) if fp8 else 0,
        s.stride(1) if fp8 else 0,
        s.stride(2) if fp8 else 0,
        out.stride(0),
        num_m_blocks,
        TOP_K=top_k,
        GATED=gated,
        A_BY_TOKEN=by_token,
        MUL_WEIGHT=weights is not None,
        FP8=fp8,
        DOT_FP32=dot_fp32,
        BLOCK_M=block_m,
    )


def fused_moe_triton_forward(
    x, w_gate_up, w_down, topk_weights, topk_ids, w_gate_up_scale=None, w_down_scale=None
):
    T, H = x.shape
    top_k = topk_ids.shape[1]
    num_experts = w_gate_up.shape[0]
    inter = w_down.shape[-1]
    num_pairs = T * top_k
    x = x.contiguous()
    block_m = _block_m(num_pairs, num_experts)
    aligned = align_to_blocks(topk_ids, num_experts, block_m)
    act = torch.empty(num_pairs, inter, device=x.device, dtype=x.dtype)
    _launch(
        x, w_gate_up, w_gate_up_scale, act, None, aligned, num_pairs, top_k, block_m, True, True
    )
    y = torch.empty(num_pairs, H, device=x.device, dtype=x.dtype)
    weights = topk_weights.reshape(-1).float().contiguous()
    _launch(act, w_down, w_down_scale, y, weights, aligned, num_pairs, top_k, block_m, False, False)
    return y.view(T, top_k, H).sum(1, dtype=torch.float32).to(x.dtype)


class _TritonMoE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, topk_weights, w_gate_up, w_down, topk_ids, w_gate_up_scale, w_down_scale):
        ctx.save_for_backward(x, topk_weights, w_gate_up, w_down, topk_ids)
        ctx.scales = (w_gate_up_scale, w_down_scale)
        return fused_moe_triton_forward(
            x, w_gate_up, w_down, topk_weights, topk_ids, w_gate_up_scale, w_down_scale
        )

    @staticmethod
    def backward(ctx, d_out):
        x, topk_weights, w_gate_up, w_down, topk_ids = ctx.saved_tensors
        s_gu, s_d = ctx.scales
        if s_gu is not None:
            w_gate_up = dequant_block_fp8(w_gate_up, s_gu, x.dtype)
        if s_d is not None:
            w_down = dequant_block_fp8(w_down, s_d, x.dtype)
        inputs = [
            t.detach().requires_grad_(n)
            for t, n in zip(
                (x, topk_weights, w_gate_up, w_down), ctx.needs_input_grad[:4], strict=True
            )
        ]
        with torch.enable_grad():
            out = GroupedMoE.apply(*inputs, topk_ids)
            wanted = [t for t in inputs if t.requires_grad]
            grads = iter(torch.autograd.grad(out, wanted, d_out))
        result = [next(grads) if t.requires_grad else None for t in inputs]
        return (*result, None, None, None)


def fused_moe_triton(
    x, w_gate_up, w_down, topk_weights, topk_ids, w_gate_up_scale=None, w_down_scale=None
):
    args = (x, w_gate_up, w_down, topk_weights, topk_ids, w_gate_up_scale, w_down_scale)
    if not torch.is_grad_enabled() or not any(
        t.requires_grad for t in (x, w_gate_up, w_down, topk_weights)
    ):
        return fused_moe_triton_forward(*args)
    return _TritonMoE.apply(
        x, topk_weights, w_gate_up, w_down, topk_ids, w_gate_up_scale, w_down_scale
    )
