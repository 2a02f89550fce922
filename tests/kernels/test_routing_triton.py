"""Triton router kernel against the PyTorch reference (interpreter on the CPU)."""

from __future__ import annotations

import pytest
import torch

from kernels import sigmoid_topk


@pytest.mark.parametrize("top_k", [1, 2, 4, 8])
@pytest.mark.parametrize("num_experts", [8, 24])
@pytest.mark.parametrize("with_bias", [True, False])
def test_triton_router_matches_reference(top_k, num_experts, with_bias):
    g = torch.Generator().manual_seed(top_k * 100 + num_experts)
    logits = torch.randn(19, num_experts, generator=g)  # 19: not a multiple of the block
    bias = torch.randn(num_experts, generator=g) * 0.5 if with_bias else None
    w_ref, ids_ref = sigmoid_topk(logits, bias, top_k, backend="reference")
    w, ids = sigmoid_topk(logits, bias, top_k, backend="triton")
    assert ids.dtype == torch.int64 and w.dtype == torch.float32
    torch.testing.assert_close(ids, ids_ref)
    torch.testing.assert_close(w, w_ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(w.sum(-1), torch.ones(19))


def test_triton_router_bf16_logits_use_fp32_scores():
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(5, 16, generator=g).to(torch.bfloat16)
    bias = torch.randn(16, generator=g)
    w_ref, ids_ref = sigmoid_topk(logits, bias, 8, backend="reference")
    w, ids = sigmoid_topk(logits, bias, 8, backend="triton")
    torch.testing.assert_close(ids, ids_ref)
    torch.testing.assert_close(w, w_ref, rtol=1e-5, atol=1e-6)
