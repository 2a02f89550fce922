"""The fast paths added for speed compute what the plain paths compute: the small-T inference
MoE (dense), recycled expert-gradient storages, the in-place KV cache, and
logits for the last positions only."""

from __future__ import annotations

import pytest
import torch

from kernels.moe import fused_moe
from kernels.torch_moe import _GRAD_POOL, fused_moe_reference, fused_moe_small
from model import KVCache, MiniMaxM2Config, MiniMaxM2ForCausalLM


def _moe_inputs(T, E, k, H=32, inter=48, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(T, H, generator=g)
    wgu = torch.randn(E, 2 * inter, H, generator=g) * 0.1
    wd = torch.randn(E, H, inter, generator=g) * 0.1
    w, ids = torch.rand(T, E, generator=g).topk(k)
    return x, wgu, wd, w / w.sum(-1, keepdim=True), ids


# (T, E, k): the dispatcher takes the dense path when T*k >= E, the grouped one otherwise
@pytest.mark.parametrize("shape", [(1, 8, 2), (8, 8, 2), (1, 16, 2), (3, 16, 2), (40, 8, 2)])
def test_small_t_moe_matches_reference(shape):
    x, wgu, wd, w, ids = _moe_inputs(*shape)
    want = fused_moe_reference(x, wgu, wd, w, ids)
    assert torch.allclose(fused_moe_small(x, wgu, wd, w, ids), want, atol=1e-5, rtol=1e-5)
    with torch.no_grad():  # the dispatcher takes the fast path without autograd
        assert torch.allclose(fused_moe(x, wgu, wd, w, ids, backend="torch"), want, atol=1e-5)


def test_recycled_weight_grads_are_never_shared_with_a_live_grad():
    x, wgu, wd, w, ids = _moe_inputs(96, 8, 2)
    wgu.requires_grad_()
    grads = []
    for scale in (1.0, 2.0):
        fused_moe(x * scale, wgu, wd, w, ids, backend="torch").sum().backward()
        grads.append(wgu.grad)
        wgu.grad = None  # the first grad is still held in `grads`: its storage must stay intact
    assert grads[0].untyped_storage().data_ptr() != grads[1].untyped_storage().data_ptr()
    # the expert output is linear in nothing simple, so compare with the reference instead
    for scale, got in zip((1.0, 2.0), grads, strict=True):
        ref_w = wgu.detach().clone().requires_grad_()
        fused_moe_reference(x * scale, ref_w, wd, w, ids).sum().backward()
        assert torch.allclose(got, ref_w.grad, atol=1e-4, rtol=1e-4)
    del grads
    # once nothing else holds it, the storage is handed out again (no fresh allocation)
    fused_moe(x, wgu, wd, w, ids, backend="torch").sum().backward()
    first = wgu.grad.untyped_storage().data_ptr()
    wgu.grad = None
    fused_moe(x, wgu, wd, w, ids, backend="torch").sum().backward()
    assert wgu.grad.untyped_storage().data_ptr() == first
    _GRAD_POOL.clear()


def test_kv_cache_in_place_growth_reorder_and_crop():
    cache = KVCache(1)
    chunks = [torch.randn(3, 2, n, 4) for n in (5, 1, 70, 1)]  # forces two regrowths
    for c in chunks:
        k, v = cache.update(0, c, -c)
    want = torch.cat(chunks, dim=2)
    assert torch.equal(k, want) and torch.equal(v, -want)
    assert cache.get_seq_length() == want.shape[2]
    cache.reorder(torch.tensor([2, 0]))
    cache.crop_left(3)
    assert torch.equal(cache.keys[0], want[[2, 0], :, 3:])
    nxt = torch.randn(2, 2, 1, 4)
    k, _ = cache.update(0, nxt, nxt)
    assert torch.equal(k, torch.cat([want[[2, 0], :, 3:], nxt], dim=2))


def test_logits_to_keep_equals_the_tail_of_full_logits():
    torch.manual_seed(0)
    m = MiniMaxM2ForCausalLM(MiniMaxM2Config.from_preset("tiny", num_hidden_layers=2)).eval()
    ids = torch.randint(0, 2048, (2, 12))
    with torch.no_grad():
        full = m(ids).logits
        last = m(ids, logits_to_keep=1, use_cache=True)
    assert last.logits.shape == (2, 1, full.shape[-1])
    assert torch.allclose(last.logits, full[:, -1:], atol=1e-5)
    assert last.router_stats == []  # decoding with a cache skips the training metrics
