"""PrefixTree layout and tree attention (reference, SDPA, Triton under the interpreter)."""

from __future__ import annotations

import pytest
import torch

from kernels import PrefixTree, tree_attention


def _naive_mask(tree: PrefixTree) -> torch.Tensor:
    """Ancestor-or-self by walking parents: the definition, independent of subtree_end."""
    node = tree.node_of_token().tolist()
    n = tree.num_tokens
    mask = torch.zeros(n, n, dtype=torch.bool)
    for i in range(n):
        chain, a = set(), node[i]
        while a != -1:
            chain.add(a)
            a = tree.parent[a]
        for j in range(i + 1):
            mask[i, j] = node[j] in chain
    return mask


TREES = {
    "one-node": PrefixTree.chain(21),
    "deep": PrefixTree(parent=tuple(range(-1, 9)), lengths=(3, 1, 2, 1, 4, 1, 2, 3, 1, 2)),
    "wide": PrefixTree(parent=(-1,) + (0,) * 8, lengths=(5, 2, 3, 1, 4, 2, 3, 2, 1)),
    "mixed-forest": PrefixTree(parent=(-1, 0, 1, 1, 0, -1, 5), lengths=(4, 3, 5, 2, 6, 3, 4)),
}


@pytest.mark.parametrize("name", list(TREES))
def test_dense_mask_is_ancestor_or_self_and_causal(name):
    tree = TREES[name]
    assert torch.equal(tree.dense_mask(), _naive_mask(tree))


def test_one_node_is_plain_causal_and_positions_continue_from_parent():
    assert torch.equal(PrefixTree.chain(6).dense_mask(), torch.ones(6, 6).tril().bool())
    tree = PrefixTree(parent=(-1, 0, 0, 2), lengths=(2, 3, 1, 2))
    assert tree.position_ids().tolist() == [0, 1, 2, 3, 4, 2, 3, 4]
    assert tree.node_exit == (3, 1, 3, 3)


def test_tree_must_be_in_dfs_order():
    with pytest.raises(ValueError, match="DFS"):
        PrefixTree(parent=(-1, 0, -1, 1), lengths=(1, 1, 1, 1))  # node 3 after its parent closed
    with pytest.raises(ValueError, match="at least one token"):
        PrefixTree(parent=(-1,), lengths=(0,))
    with pytest.raises(ValueError, match="tree packs"):
        q = torch.zeros(1, 1, 5, 16)
        tree_attention(q, q, q, PrefixTree.chain(4), backend="reference")


def _qkv(tree, B, HQ, HKV, D, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    N = tree.num_tokens
    q = torch.randn(B, HQ, N, D, generator=g).to(dtype).requires_grad_()
    k = torch.randn(B, HKV, N, D, generator=g).to(dtype).requires_grad_()
    v = torch.randn(B, HKV, N, D, generator=g).to(dtype).requires_grad_()
    d_out = torch.randn(B, HQ, N, D, generator=g).to(dtype)
    return q, k, v, d_out


def _fwd_bwd(backend, q, k, v, d_out, tree):
    out = tree_attention(q, k, v, tree, backend=backend)
    return (out, *torch.autograd.grad(out, (q, k, v), d_out))


@pytest.mark.parametrize("name", list(TREES))
@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_backends_match_reference_with_gradients(name, backend):
    tree = TREES[name]
    heads = (4, 2) if name != "one-node" else (2, 2)  # GQA and plain multi-head
    q, k, v, d_out = _qkv(tree, 1, *heads, 16, seed=len(name))
    want = _fwd_bwd("reference", q, k, v, d_out, tree)
    got = _fwd_bwd(backend, q, k, v, d_out, tree)
    for what, a, b in zip(["out", "dq", "dk", "dv"], got, want, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5, msg=what)


def test_triton_batch_gqa_odd_head_dim_and_bf16():
    tree = TREES["mixed-forest"]
    q, k, v, d_out = _qkv(tree, 2, 2, 1, 24, seed=3)  # D=24 pads to 32 inside the kernel
    want = _fwd_bwd("reference", q, k, v, d_out, tree)
    got = _fwd_bwd("triton", q, k, v, d_out, tree)
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    q16, k16, v16 = (t.detach().bfloat16().requires_grad_() for t in (q, k, v))
    got16 = _fwd_bwd("triton", q16, k16, v16, d_out.bfloat16(), tree)
    for a, b in zip(got16, want, strict=True):
        assert a.dtype == torch.bfloat16
        torch.testing.assert_close(a.float(), b, rtol=3e-2, atol=3e-2)


def test_tree_attention_equals_separate_sequences():
    # the point of the tree: a branch sees exactly what its own unmerged sequence would see
    tree = PrefixTree(parent=(-1, 0, 0), lengths=(3, 2, 4))
    q, k, v, _ = _qkv(tree, 1, 2, 2, 16)
    out = tree_attention(q, k, v, tree, backend="triton")
    for branch in ([0, 1, 2, 3, 4], [0, 1, 2, 5, 6, 7, 8]):
        idx = torch.tensor(branch)
        seq = PrefixTree.chain(len(branch))
        alone = tree_attention(q[:, :, idx], k[:, :, idx], v[:, :, idx], seq, "reference")
        torch.testing.assert_close(out[:, :, idx], alone, rtol=1e-5, atol=1e-5)
