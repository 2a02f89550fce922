"""The grouped-matmul `torch` MoE backend against the reference loop, forward and backward."""

from __future__ import annotations

import pytest
import torch
from kernels_testlib import moe_inputs

from kernels import fused_moe
from kernels.torch_moe import dequant_block_fp8, quant_block_fp8


def _run(backend, x, w_gate_up, w_down, weights, ids, **kw):
    out = fused_moe(x, w_gate_up, w_down, weights, ids, backend=backend, **kw)
    d_out = torch.randn(out.shape, generator=torch.Generator().manual_seed(7)).to(out.dtype)
    grads = torch.autograd.grad(out, (x, weights, w_gate_up, w_down), d_out)
    return (out, *grads)


@pytest.mark.parametrize("top_k", [1, 2, 3, 5, 8])
@pytest.mark.parametrize("shape", [(13, 8, 6, 9), (40, 16, 8, 12), (7, 12, 4, 10)])
def test_torch_matches_reference_fp32_with_grads(top_k, shape):
    T, H, I, E = shape
    inputs = moe_inputs(T, H, I, E, top_k, skip_experts=(0,), grad=True)  # expert 0: no tokens
    ref = _run("reference", *inputs)
    got = _run("torch", *inputs)
    for name, a, b in zip(
        ["out", "dx", "dweights", "dw_gate_up", "dw_down"], got, ref, strict=True
    ):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5, msg=name)
    assert got[3][0].abs().max() == 0  # the idle expert gets no gradient


def test_torch_bf16_within_bf16_tolerance_of_fp32():
    T, H, I, E, K = 33, 16, 8, 8, 4
    inputs32 = moe_inputs(T, H, I, E, K, grad=True)
    inputs16 = [t.detach().to(torch.bfloat16) if t.is_floating_point() else t for t in inputs32]
    inputs16[3] = inputs32[3].detach().clone()  # routing weights stay fp32
    for t in inputs16[:4]:
        t.requires_grad_()
    exact = fused_moe(*inputs32, backend="reference")
    got = fused_moe(*inputs16, backend="torch")
    assert got.dtype == torch.bfloat16
    torch.testing.assert_close(got.float(), exact, rtol=2e-2, atol=2e-2)
    got.float().sum().backward()
    assert all(t.grad is not None and torch.isfinite(t.grad).all() for t in inputs16[:4])


def test_unaligned_bf16_falls_back_to_loop_and_stays_correct():
    # H=6 bf16 rows are 12 bytes: grouped_mm would refuse them, the slice loop must take over.
    inputs = moe_inputs(10, 6, 3, 4, 2, dtype=torch.bfloat16)
    ref = fused_moe(*inputs, backend="reference")
    got = fused_moe(*inputs, backend="torch")
    torch.testing.assert_close(got, ref, rtol=2e-2, atol=2e-2)


def test_fp8_block_scales_dequantise_as_multiply():
    w = torch.randn(2, 200, 130)
    q, scale = quant_block_fp8(w)
    assert q.dtype == torch.float8_e4m3fn and scale.shape == (2, 2, 2)
    back = dequant_block_fp8(q, scale)
    torch.testing.assert_close(back, w, rtol=0.07, atol=1e-3)  # e4m3 has a 3-bit mantissa
    torch.testing.assert_close(back[0, :128, :128], q[0, :128, :128].float() * scale[0, 0, 0])


@pytest.mark.parametrize("backend", ["reference", "torch"])
def test_fp8_weights_match_dequantised_weights(backend):
    x, w_gate_up, w_down, weights, ids = moe_inputs(9, 16, 8, 4, 2)
    q_gu, s_gu = quant_block_fp8(w_gate_up)
    q_d, s_d = quant_block_fp8(w_down)
    got = fused_moe(
        x, q_gu, q_d, weights, ids, backend=backend, w_gate_up_scale=s_gu, w_down_scale=s_d
    )
    want = fused_moe(
        x, dequant_block_fp8(q_gu, s_gu), dequant_block_fp8(q_d, s_d), weights, ids, "reference"
    )
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_backend_names_are_checked(monkeypatch):
    inputs = moe_inputs(4, 8, 4, 4, 2)
    with pytest.raises(ValueError, match="unknown MoE backend"):
        fused_moe(*inputs, backend="cuda")
    monkeypatch.setenv("M2_KERNEL_BACKEND", "nope")
    with pytest.raises(ValueError, match="M2_KERNEL_BACKEND"):
        fused_moe(*inputs)
    monkeypatch.setenv("M2_KERNEL_BACKEND", "reference")
    torch.testing.assert_close(fused_moe(*inputs), fused_moe(*inputs, backend="torch"))


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_int32_ids_bf16_weights_and_empty_batch(backend):
    x, w_gate_up, w_down, weights, ids = moe_inputs(6, 16, 8, 4, 2)
    want = fused_moe(x, w_gate_up, w_down, weights, ids, backend="reference")
    got = fused_moe(x, w_gate_up, w_down, weights, ids.int(), backend=backend)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    got = fused_moe(x, w_gate_up, w_down, weights.bfloat16(), ids, backend=backend)
    torch.testing.assert_close(got, want, rtol=1e-2, atol=1e-2)  # weights rounded to bf16
    empty = fused_moe(x[:0], w_gate_up, w_down, weights[:0], ids[:0], backend=backend)
    assert empty.shape == (0, 16)
