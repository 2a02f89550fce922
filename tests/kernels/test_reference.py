"""Router and MoE references against direct formulas (the Triton tests live in tests/kernels)."""

from __future__ import annotations

import torch

from kernels import fused_moe, sigmoid_topk


def test_router_selects_on_biased_scores_but_weights_are_unbiased():
    logits = torch.tensor([[2.0, 0.0, -1.0, 1.0]])
    bias = torch.tensor([0.0, 0.0, 5.0, 0.0])  # pushes expert 2 in despite the lowest score
    w, ids = sigmoid_topk(logits, bias, top_k=2, backend="reference")
    assert set(ids[0].tolist()) == {2, 0}
    s = torch.sigmoid(logits[0])
    expected = torch.stack([s[ids[0, 0]], s[ids[0, 1]]])
    torch.testing.assert_close(w[0], expected / expected.sum())


def test_reference_moe_matches_dense_formula():
    torch.manual_seed(0)
    T, H, I, E, K = 5, 8, 6, 4, 2
    x = torch.randn(T, H)
    wgu = torch.randn(E, 2 * I, H)
    wd = torch.randn(E, H, I)
    w, ids = sigmoid_topk(torch.randn(T, E), None, K, backend="reference")
    out = fused_moe(x, wgu, wd, w, ids, backend="reference")
    expected = torch.zeros(T, H)
    for t in range(T):
        for k in range(K):
            e = ids[t, k]
            g, u = (wgu[e] @ x[t]).split(I)
            expected[t] += w[t, k] * (wd[e] @ (torch.nn.functional.silu(g) * u))
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
