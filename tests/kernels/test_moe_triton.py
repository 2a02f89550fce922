"""Triton fused MoE against the reference loop (interpreter on the CPU: tiny shapes)."""

from __future__ import annotations

import pytest
import torch
from kernels_testlib import moe_inputs

from kernels import fused_moe
from kernels.torch_moe import quant_block_fp8
from kernels.triton_moe import align_to_blocks


def test_alignment_pads_each_expert_to_whole_blocks():
    ids = torch.tensor([[2, 0], [2, 3], [0, 2], [3, 2], [2, 0]])  # expert 1: no tokens
    pairs, expert_of_block, n_padded = align_to_blocks(ids, num_experts=4, block_m=4)
    flat = ids.reshape(-1)
    assert n_padded.item() == 4 + 8 + 4  # experts 0 (3), 2 (5), 3 (2) rounded up to 4s
    used = pairs[: n_padded.item()]
    assert sorted(used[used < flat.numel()].tolist()) == list(range(flat.numel()))
    for b in range(n_padded.item() // 4):
        block = used[b * 4 : (b + 1) * 4]
        real = block[block < flat.numel()].long()
        assert real.numel() > 0 and (flat[real] == expert_of_block[b]).all()
    assert (pairs[n_padded.item() :] == flat.numel()).all()


@pytest.mark.parametrize(
    "T,H,I,E,K",
    [(13, 24, 20, 6, 1), (13, 24, 20, 6, 2), (21, 32, 16, 7, 4), (19, 16, 24, 10, 8)],
)
def test_triton_fp32_matches_reference(T, H, I, E, K):
    inputs = moe_inputs(T, H, I, E, K, skip_experts=(E - 1,), seed=K)  # last expert idle
    want = fused_moe(*inputs, backend="reference")
    got = fused_moe(*inputs, backend="triton")
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_triton_bf16_within_bf16_tolerance():
    inputs = moe_inputs(21, 32, 16, 6, 3, dtype=torch.bfloat16)
    exact = fused_moe(*[t.float() if t.is_floating_point() else t for t in inputs], "reference")
    got = fused_moe(*inputs, backend="triton")
    assert got.dtype == torch.bfloat16
    torch.testing.assert_close(got.float(), exact, rtol=2e-2, atol=2e-2)


def test_triton_fp8_block_scales_match_reference():
    # H=136, 2I=144: several 128-blocks, and the up rows straddle a block boundary
    x, w_gate_up, w_down, weights, ids = moe_inputs(5, 136, 72, 2, 2)
    q_gu, s_gu = quant_block_fp8(w_gate_up)
    q_d, s_d = quant_block_fp8(w_down)
    kw = {"w_gate_up_scale": s_gu, "w_down_scale": s_d}
    want = fused_moe(x, q_gu, q_d, weights, ids, backend="reference", **kw)
    got = fused_moe(x, q_gu, q_d, weights, ids, backend="triton", **kw)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_triton_moe_is_differentiable():
    inputs = moe_inputs(11, 16, 8, 5, 2, grad=True)
    tensors = [inputs[0], inputs[3], inputs[1], inputs[2]]
    got = torch.autograd.grad(fused_moe(*inputs, backend="triton").sum(), tensors)
    want = torch.autograd.grad(fused_moe(*inputs, backend="reference").sum(), tensors)
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
