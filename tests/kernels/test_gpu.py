"""Compiled Triton kernels at realistic shapes (run only where CUDA is present)."""

from __future__ import annotations

import pytest
import torch
from kernels_testlib import moe_inputs

from kernels import PrefixTree, fused_moe, sigmoid_topk, tree_attention
from kernels.torch_moe import quant_block_fp8

pytestmark = pytest.mark.gpu


def _cuda(ts):
    return [t.detach().cuda() for t in ts]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("T", [1, 7, 333])
def test_fused_moe_cuda(T, dtype):
    x, w_gu, w_d, w, ids = _cuda(moe_inputs(T, 512, 256, 64, 8, dtype=dtype, skip_experts=(3,)))
    want = fused_moe(x.float(), w_gu.float(), w_d.float(), w, ids, backend="reference")
    got = fused_moe(x, w_gu, w_d, w, ids, backend="auto")
    tol = 1e-4 if dtype == torch.float32 else 3e-2
    torch.testing.assert_close(got.float(), want, rtol=tol, atol=tol)


def test_fused_moe_fp8_cuda():
    x, w_gu, w_d, w, ids = _cuda(moe_inputs(100, 384, 256, 16, 4, dtype=torch.bfloat16))
    (q_gu, s_gu), (q_d, s_d) = quant_block_fp8(w_gu), quant_block_fp8(w_d)
    kw = {"w_gate_up_scale": s_gu, "w_down_scale": s_d}
    want = fused_moe(x, q_gu, q_d, w, ids, backend="reference", **kw)
    got = fused_moe(x, q_gu, q_d, w, ids, backend="triton", **kw)
    torch.testing.assert_close(got.float(), want.float(), rtol=3e-2, atol=3e-2)


def test_router_cuda():
    logits = torch.randn(1000, 256, device="cuda")
    bias = torch.randn(256, device="cuda") * 0.1
    w_ref, ids_ref = sigmoid_topk(logits, bias, 8, backend="reference")
    w, ids = sigmoid_topk(logits, bias, 8, backend="triton")
    torch.testing.assert_close(ids, ids_ref)
    torch.testing.assert_close(w, w_ref)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_tree_attention_cuda(dtype):
    tree = PrefixTree(parent=(-1, 0, 1, 0, 3, 3), lengths=(300, 100, 77, 120, 64, 90))
    n = tree.num_tokens
    q = torch.randn(1, 8, n, 128, device="cuda", dtype=dtype, requires_grad=True)
    k = torch.randn(1, 2, n, 128, device="cuda", dtype=dtype, requires_grad=True)
    v = torch.randn(1, 2, n, 128, device="cuda", dtype=dtype, requires_grad=True)
    d_out = torch.randn_like(q)
    outs = {}
    for backend in ("reference", "triton"):
        o = tree_attention(q, k, v, tree, backend=backend)
        outs[backend] = (o, *torch.autograd.grad(o, (q, k, v), d_out))
    tol = 2e-3 if dtype == torch.float32 else 5e-2  # TF32 dots on the GPU
    for a, b in zip(outs["triton"], outs["reference"], strict=True):
        torch.testing.assert_close(a.float(), b.float(), rtol=tol, atol=tol)
