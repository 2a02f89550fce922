"""Flash-style tree attention in Triton: forward, and backward (dK/dV pass + dQ pass).

Shapes: q [B, Hq, N, D], k/v [B, Hkv, N, D] with Hq % Hkv == 0 (GQA), one PrefixTree for all
B rows. No dense mask: key j is visible to query i iff j <= i <= end[j] (kernels/tree.py), and
a key block is skipped outright when max(end) over the block is below the first query of the
query block — siblings' subtrees cost nothing. Softmax runs in base 2 (exp2) with fp32
statistics; the log-sum-exp per query is kept for the backward.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

_INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
_LOG2E = 1.4426950408889634

if torch.cuda.is_available() and not _INTERPRET:
    _FWD_CONFIGS = [
        triton.Config({"BLOCK_M": bm, "BLOCK_N": bn}, num_warps=w, num_stages=s)
        for bm, bn, w, s in [(128, 64, 8, 3), (128, 64, 4, 3), (64, 64, 4, 3), (128, 128, 8, 2)]
    ]
    _BWD_CONFIGS = [
        triton.Config({"BLOCK_M": bm, "BLOCK_N": bn}, num_warps=w, num_stages=s)
        for bm, bn, w, s in [(32, 128, 4, 3), (64, 64, 4, 3), (64, 128, 8, 2), (32, 64, 4, 3)]
    ]
else:  # interpreter: a single config (autotune would need a GPU to time several)
    _FWD_CONFIGS = _BWD_CONFIGS = [triton.Config({"BLOCK_M": 16, "BLOCK_N": 16})]


def _dot(a, b, DOT_FP32: tl.constexpr):
    if DOT_FP32:
        return tl.dot(a.to(tl.float32), b.to(tl.float32), input_precision="ieee")
    return tl.dot(a, b)


_dot = triton.jit(_dot)


@triton.jit
def _query_block(
    pid_m, pid_bh, N, HQ, GROUP, HEAD_DIM, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr
):
    # (batch, q head, kv head) of a program and the rows/columns of its query block
    b = pid_bh // HQ
    h = pid_bh % HQ
    q_start = pid_m * BLOCK_M
    offs_m = q_start + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    return b, h, h // GROUP, q_start, offs_m, offs_d, offs_m < N, offs_d < HEAD_DIM


@triton.jit
def _load_kv(k_base, v_base, offs_n, n_ok, sk_n, offs_d, d_ok):
    kv_mask = n_ok[:, None] & d_ok[None, :]
    k = tl.load(k_base + offs_n[:, None] * sk_n + offs_d[None, :], mask=kv_mask, other=0.0)
    v = tl.load(v_base + offs_n[:, None] * sk_n + offs_d[None, :], mask=kv_mask, other=0.0)
    return k, v


@triton.autotune(configs=_FWD_CONFIGS, key=["N", "HEAD_DIM"])
@triton.jit
def _fwd_kernel(
    q_ptr, k_ptr, v_ptr, o_ptr, lse_ptr, end_ptr,
    sq_b, sq_h, sq_n, sk_b, sk_h, sk_n, so_b, so_h, so_n,
    N, HQ, GROUP, qk_scale,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, DOT_FP32: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):  # fmt: skip
    pid_bh = tl.program_id(1)
    b, h, hk, q_start, offs_m, offs_d, m_ok, d_ok = _query_block(
        tl.program_id(0), pid_bh, N, HQ, GROUP, HEAD_DIM, BLOCK_M, BLOCK_D
    )
    q = tl.load(
        q_ptr + b * sq_b + h * sq_h + offs_m[:, None] * sq_n + offs_d[None, :],
        mask=m_ok[:, None] & d_ok[None, :],
        other=0.0,
    )
    k_base = k_ptr + b * sk_b + hk * sk_h
    v_base = v_ptr + b * sk_b + hk * sk_h
    m_i = tl.full((BLOCK_M,), -1.0e30, dtype=tl.float32)
    l_i = tl.zeros((BLOCK_M,), dtype=tl.float32)
    acc = tl.zeros((BLOCK_M, BLOCK_D), dtype=tl.float32)
    hi = tl.minimum(q_start + BLOCK_M, N)
    for start_n in range(0, hi, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        n_ok = offs_n < N
        end = tl.load(end_ptr + offs_n, mask=n_ok, other=-1)
        if tl.max(end, axis=0) >= q_start:  # else no query here sees any key of the block
            k, v = _load_kv(k_base, v_base, offs_n, n_ok, sk_n, offs_d, d_ok)
            s = _dot(q, tl.trans(k), DOT_FP32) * qk_scale
            visible = (offs_n[None, :] <= offs_m[:, None]) & (offs_m[:, None] <= end[None, :])
            s = tl.where(visible, s, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(s, axis=1))
            p = tl.math.exp2(s - m_new[:, None])
            alpha = tl.math.exp2(m_i - m_new)
            l_i = l_i * alpha + tl.sum(p, axis=1)
            acc = acc * alpha[:, None] + _dot(p.to(v.dtype), v, DOT_FP32)
            m_i = m_new
    l_safe = tl.where(l_i > 0, l_i, 1.0)
    out = acc / l_safe[:, None]
    tl.store(
        o_ptr + b * so_b + h * so_h + offs_m[:, None] * so_n + offs_d[None, :],
        out.to(o_ptr.dtype.element_ty),
        mask=m_ok[:, None] & d_ok[None, :],
    )
    tl.store(lse_ptr + pid_bh * N + offs_m, m_i + tl.math.log2(l_safe), mask=m_ok)


@triton.autotune(configs=_BWD_CONFIGS, key=["N", "HEAD_DIM"])
@triton.jit
def _bwd_dkdv_kernel(
    q_ptr, k_ptr, v_ptr, do_ptr, lse_ptr, delta_ptr, end_ptr, dk_ptr, dv_ptr,
    sq_b, sq_h, sq_n, sk_b, sk_h, sk_n, sdk_b, sdk_h, sdk_n,
    N, HQ, HKV, GROUP, qk_scale, sm_scale,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, DOT_FP32: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):  # fmt: skip
    # one program per (key block, batch, kv head); loops over the q heads of its group
    pid_n = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = pid_bh // HKV
    hk = pid_bh % HKV
    start_n = pid_n * BLOCK_N
    offs_n = start_n + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    n_ok = offs_n < N
    d_ok = offs_d < HEAD_DIM
    kv_mask = n_ok[:, None] & d_ok[None, :]
    k = tl.load(k_ptr + b * sk_b + hk * sk_h + offs_n[:, None] * sk_n + offs_d[None, :], mask=kv_mask, other=0.0)  # fmt: skip
    v = tl.load(v_ptr + b * sk_b + hk * sk_h + offs_n[:, None] * sk_n + offs_d[None, :], mask=kv_mask, other=0.0)  # fmt: skip
    end = tl.load(end_ptr + offs_n, mask=n_ok, other=-1)
    q_hi = tl.max(end, axis=0) + 1  # no later query sees this key block
    q_lo = (start_n // BLOCK_M) * BLOCK_M
    dk = tl.zeros((BLOCK_N, BLOCK_D), dtype=tl.float32)
    dv = tl.zeros((BLOCK_N, BLOCK_D), dtype=tl.float32)
    for g in range(0, GROUP):
        h = hk * GROUP + g
        q_base = q_ptr + b * sq_b + h * sq_h
        do_base = do_ptr + b * sq_b + h * sq_h
        row_base = (b * HQ + h) * N
        for start_m in range(q_lo, q_hi, BLOCK_M):
            offs_m = start_m + tl.arange(0, BLOCK_M)
            m_ok = offs_m < N
            q_mask = m_ok[:, None] & d_ok[None, :]
            q = tl.load(q_base + offs_m[:, None] * sq_n + offs_d[None, :], mask=q_mask, other=0.0)
            do = tl.load(do_base + offs_m[:, None] * sq_n + offs_d[None, :], mask=q_mask, other=0.0)
            lse = tl.load(lse_ptr + row_base + offs_m, mask=m_ok, other=0.0)
            delta = tl.load(delta_ptr + row_base + offs_m, mask=m_ok, other=0.0)
            s = _dot(q, tl.trans(k), DOT_FP32) * qk_scale  # [BM, BN], log2 domain
            visible = (offs_n[None, :] <= offs_m[:, None]) & (offs_m[:, None] <= end[None, :])
            visible = visible & m_ok[:, None]
            p = tl.where(visible, tl.math.exp2(s - lse[:, None]), 0.0)
            dv += _dot(tl.trans(p).to(do.dtype), do, DOT_FP32)
            dp = _dot(do, tl.trans(v), DOT_FP32)
            ds = p * (dp - delta[:, None])
            dk += _dot(tl.trans(ds).to(q.dtype), q, DOT_FP32)
    out_off = b * sdk_b + hk * sdk_h + offs_n[:, None] * sdk_n + offs_d[None, :]
    tl.store(dk_ptr + out_off, (dk * sm_scale).to(dk_ptr.dtype.element_ty), mask=kv_mask)
    tl.store(dv_ptr + out_off, dv.to(dv_ptr.dtype.element_ty), mask=kv_mask)


@triton.autotune(configs=_BWD_CONFIGS, key=["N", "HEAD_DIM"])
@triton.jit
def _bwd_dq_kernel(
    q_ptr, k_ptr, v_ptr, do_ptr, lse_ptr, delta_ptr, end_ptr, dq_ptr,
    sq_b, sq_h, sq_n, sk_b, sk_h, sk_n,
    N, HQ, GROUP, qk_scale, sm_scale,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, DOT_FP32: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):  # fmt: skip
    pid_bh = tl.program_id(1)
    b, h, hk, q_start, offs_m, offs_d, m_ok, d_ok = _query_block(
        tl.program_id(0), pid_bh, N, HQ, GROUP, HEAD_DIM, BLOCK_M, BLOCK_D
    )
    q_mask = m_ok[:, None] & d_ok[None, :]
    q_off = b * sq_b + h * sq_h + offs_m[:, None] * sq_n + offs_d[None, :]
    q = tl.load(q_ptr + q_off, mask=q_mask, other=0.0)
    do = tl.load(do_ptr + q_off, mask=q_mask, other=0.0)
    lse = tl.load(lse_ptr + pid_bh * N + offs_m, mask=m_ok, other=0.0)
    delta = tl.load(delta_ptr + pid_bh * N + offs_m, mask=m_ok, other=0.0)
    k_base = k_ptr + b * sk_b + hk * sk_h
    v_base = v_ptr + b * sk_b + hk * sk_h
    dq = tl.zeros((BLOCK_M, BLOCK_D), dtype=tl.float32)
    hi = tl.minimum(q_start + BLOCK_M, N)
    for start_n in range(0, hi, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        n_ok = offs_n < N
        end = tl.load(end_ptr + offs_n, mask=n_ok, other=-1)
        if tl.max(end, axis=0) >= q_start:
            k, v = _load_kv(k_base, v_base, offs_n, n_ok, sk_n, offs_d, d_ok)
            s = _dot(q, tl.trans(k), DOT_FP32) * qk_scale
            visible = (offs_n[None, :] <= offs_m[:, None]) & (offs_m[:, None] <= end[None, :])
            visible = visible & m_ok[:, None]
            p = tl.where(visible, tl.math.exp2(s - lse[:, None]), 0.0)
            dp = _dot(do, tl.trans(v), DOT_FP32)
            ds = p * (dp - delta[:, None])
            dq += _dot(ds.to(k.dtype), k, DOT_FP32)
    tl.store(dq_ptr + q_off, (dq * sm_scale).to(dq_ptr.dtype.element_ty), mask=q_mask)


def _meta(q: torch.Tensor) -> dict:
    head_dim = q.shape[-1]
    return {
        "HEAD_DIM": head_dim,
        "BLOCK_D": max(16, triton.next_power_of_2(head_dim)),
        "DOT_FP32": _INTERPRET or q.dtype == torch.float32,
    }


def tree_attention_forward(q, k, v, end, sm_scale):
    B, HQ, N, _ = q.shape
    HKV = k.shape[1]
    o = torch.empty_like(q)
    lse = torch.empty(B, HQ, N, device=q.device, dtype=torch.float32)

    def grid(meta):
        return (triton.cdiv(N, meta["BLOCK_M"]), B * HQ)

    _fwd_kernel[grid](
        q, k, v, o, lse, end,
        q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
        o.stride(0), o.stride(1), o.stride(2),
        N, HQ, HQ // HKV, sm_scale * _LOG2E, **_meta(q),
    )  # fmt: skip
    return o, lse


def tree_attention_backward(q, k, v, o, lse, end, do, sm_scale):
    B, HQ, N, _ = q.shape
    HKV = k.shape[1]
    do = do.contiguous()
    delta = (do.float() * o.float()).sum(-1)  # [B, HQ, N]
    dq = torch.empty_like(q)
    dk = torch.empty_like(k)
    dv = torch.empty_like(v)
    meta = _meta(q)
    qk_scale = sm_scale * _LOG2E

    def grid_kv(m):
        return (triton.cdiv(N, m["BLOCK_N"]), B * HKV)

    def grid_q(m):
        return (triton.cdiv(N, m["BLOCK_M"]), B * HQ)

    _bwd_dkdv_kernel[grid_kv](
        q, k, v, do, lse, delta, end, dk, dv,
        q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
        dk.stride(0), dk.stride(1), dk.stride(2),
        N, HQ, HKV, HQ // HKV, qk_scale, sm_scale, **meta,
    )  # fmt: skip
    _bwd_dq_kernel[grid_q](
        q, k, v, do, lse, delta, end, dq,
        q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
        N, HQ, HQ // HKV, qk_scale, sm_scale, **meta,
    )  # fmt: skip
    return dq, dk, dv


class TreeAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, end, sm_scale):
        q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
        o, lse = tree_attention_forward(q, k, v, end, sm_scale)
        ctx.save_for_backward(q, k, v, o, lse, end)
        ctx.sm_scale = sm_scale
        return o

    @staticmethod
    def backward(ctx, do):
        q, k, v, o, lse, end = ctx.saved_tensors
        dq, dk, dv = tree_attention_backward(q, k, v, o, lse, end, do, ctx.sm_scale)
        return dq, dk, dv, None, None
