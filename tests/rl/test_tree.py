"""Prefix-tree packing: layout facts, and loss/gradient equivalence with the unmerged model."""

from __future__ import annotations

import pytest
import torch
from rl_testlib import tiny_model, tree_batch

from trainer.rl.advantages import compute_advantages
from trainer.rl.forward import tree_logprobs, unmerged_logprobs
from trainer.rl.losses import cispo_loss
from trainer.rl.tree import build_tree, tree_mask
from trainer.rl.update import flat_per_target


def _pack(samples, **kw):
    return build_tree([s.ids for s in samples], [s.trainable for s in samples], **kw)


def test_trie_merges_shared_prefixes_and_positions_continue():
    seqs = [[5, 6, 7, 8], [5, 6, 9], [5, 6, 7, 10, 11], [20, 21]]
    tr = [[False, True, True, True], [False, False, True], [False] * 3 + [True, True], [True, True]]
    p = build_tree(seqs, tr)
    # unique prefixes: 5 6 7 8 | 9 | 10 11 | 20 21
    assert (p.tokens_unmerged, p.tokens_merged) == (14, 9)
    ids = p.input_ids[0].tolist()
    assert ids == [5, 6, 7, 8, 10, 11, 9, 20, 21]  # DFS, children in insertion order
    assert p.position_ids[0].tolist() == [0, 1, 2, 3, 3, 4, 2, 0, 1]
    assert p.parent[0].tolist() == [-1, 0, 1, 2, 2, 4, 1, -1, 7]
    # targets: every trainable token with a predecessor, predicted by its predecessor's node
    assert p.targets.tolist() == [6, 7, 8, 9, 10, 11, 21]
    assert p.pred_index.tolist() == [0, 1, 2, 1, 2, 4, 7]
    assert p.sample_index.tolist() == [0, 0, 0, 1, 2, 2, 3]


def test_tree_mask_is_ancestor_or_self():
    samples = tree_batch()
    p = _pack(samples)
    mask = tree_mask(p.subtree_end)[0, 0]
    par = p.parent[0].tolist()
    T = len(par)
    brute = torch.zeros(T, T, dtype=torch.bool)
    for i in range(T):
        j = i
        while j >= 0:
            brute[i, j] = True
            j = par[j]
    assert torch.equal(mask, brute)
    # depth = number of strict ancestors
    assert p.position_ids[0].tolist() == (brute.sum(1) - 1).tolist()


def test_kernels_prefix_tree_layout_matches():
    p = _pack(tree_batch())
    t = p.prefix_tree(0)
    assert t.num_tokens == p.tokens_merged
    assert t.num_nodes < t.num_tokens  # chains were compressed into nodes
    assert torch.equal(t.position_ids(), p.position_ids[0])
    assert torch.equal(t.dense_mask(), tree_mask(p.subtree_end)[0, 0])


def test_rows_split_the_forest():
    samples = tree_batch()
    p1, p2 = _pack(samples), _pack(samples, max_row_tokens=20)
    assert p2.input_ids.shape[0] == 2 and p1.input_ids.shape[0] == 1
    assert p2.tokens_merged == p1.tokens_merged
    # each sample's path reads back its own tokens in either layout
    for p in (p1, p2):
        flat = p.input_ids.reshape(-1)
        assert flat[p.pred_index].tolist() == [
            s.ids[j - 1] for s in samples for j in range(1, len(s.ids)) if s.trainable[j]
        ]


def _reference_logprobs(model, samples):
    """The plain computation: the model's own forward on each sample separately."""
    out = []
    for s in samples:
        ids = torch.tensor([s.ids])
        targets = torch.tensor([s.ids[1:] + [-1]])
        lp = model.token_logprobs(ids, targets)[0]
        out += [lp[j - 1] for j in range(1, len(s.ids)) if s.trainable[j]]
    return torch.stack(out)


def _loss(logp, samples, p):
    adv = torch.tensor(compute_advantages(samples))[p.sample_index] + 0.3
    old = torch.tensor(
        flat_per_target(samples, [s.old_logprobs or [0.0] * len(s.ids) for s in samples])
    )
    return cispo_loss(logp, old, adv, p.sample_index, eps_high=0.5)[0]


def _loss_and_grads(model, fn):
    model.zero_grad()
    loss = fn()
    loss.backward()
    return loss.detach(), {
        n: q.grad.clone() for n, q in model.named_parameters() if q.grad is not None
    }


def _rel(a, b):
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))


@pytest.mark.parametrize(
    "attention,rows", [("dense", None), ("blocked", None), ("blocked", 40), ("kernels", None)]
)
def test_merged_loss_and_grads_equal_unmerged(attention, rows):
    model = tiny_model()
    samples = tree_batch(episodes=3, turns=3)
    p = _pack(samples, max_row_tokens=rows)
    assert p.compression > 1.8
    ref_loss, ref_g = _loss_and_grads(
        model, lambda: _loss(_reference_logprobs(model, samples), samples, p)
    )
    # block=8: many query blocks, so the ancestor-gathering path is exercised at every depth
    kw = {"block": 8} if attention == "blocked" else {}
    loss, g = _loss_and_grads(
        model, lambda: _loss(tree_logprobs(model, p, attention, **kw), samples, p)
    )
    assert _rel(loss, ref_loss) <= 1e-5
    assert ref_g.keys() == g.keys() and len(g) > 10
    worst = max(_rel(g[n], ref_g[n]) for n in g)
    assert worst <= 1e-5, worst
    # and a real signal: the gradients are not all zero
    assert max(float(x.abs().max()) for x in g.values()) > 1e-4


def test_unmerged_batched_path_matches_reference():
    model = tiny_model(seed=1)
    samples = tree_batch(episodes=2, turns=4, seed=3)
    with torch.no_grad():
        ref = _reference_logprobs(model, samples)
        got = unmerged_logprobs(model, [s.ids for s in samples], [s.trainable for s in samples], 64)
    assert _rel(got, ref) <= 1e-5


def test_wrong_mask_would_be_caught():
    """Guard for the test itself: a plain causal mask over the packed tree gives other
    log-probs (siblings would see each other), so the equivalence test has teeth."""
    model = tiny_model()
    samples = tree_batch()
    p = _pack(samples)
    with torch.no_grad():
        good = tree_logprobs(model, p, "dense")
        p.subtree_end[:] = p.subtree_end.shape[-1]  # every key visible to all later queries
        bad = tree_logprobs(model, p, "dense")
    assert _rel(bad, good) > 1e-2
