"""Behaviour of our model: expert paths agree, padding/caching do not change results,
router statistics and the aux-loss-free bias update, MTP, loss."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from m2_testlib import tiny_config

from model import MiniMaxM2Config, MiniMaxM2ForCausalLM, router_bias_update
from model.generation import sample_next


def _model(seed=0, **overrides):
    torch.manual_seed(seed)
    m = MiniMaxM2ForCausalLM(tiny_config(**overrides))
    with torch.no_grad():
        for blk in m.moe_blocks:  # a non-trivial bias exercises biased selection
            blk.e_score_correction_bias.uniform_(-0.05, 0.05)
    return m


def _ids(b=3, t=11, seed=1, vocab=256):
    return torch.randint(2, vocab, (b, t), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("other", ["grouped", "auto"])
def test_expert_paths_agree_forward_and_backward(other):
    ids = _ids()
    results = {}
    for backend in ("reference", other):
        m = _model()
        m.set_moe_backend(backend)
        out = m(ids, labels=ids)
        out.loss.backward()
        grads = {n: p.grad.clone() for n, p in m.named_parameters()}
        results[backend] = (out.logits.detach(), grads)
    (la, ga), (lb, gb) = results["reference"], results[other]
    assert (la - lb).abs().max() <= 1e-5
    for name in ga:
        assert torch.allclose(ga[name], gb[name], atol=1e-5, rtol=1e-4), name


def test_left_padding_gives_unpadded_logits():
    m = _model().eval()
    a, b = _ids(1, 9, seed=2)[0], _ids(1, 5, seed=3)[0]
    pad = 0
    batch = torch.full((2, 9), pad)
    batch[0], batch[1, 4:] = a, b
    mask = torch.zeros(2, 9, dtype=torch.long)
    mask[0], mask[1, 4:] = 1, 1
    with torch.no_grad():
        out = m(batch, attention_mask=mask).logits
        alone_a = m(a[None]).logits[0]
        alone_b = m(b[None]).logits[0]
    assert (out[0] - alone_a).abs().max() <= 1e-5
    assert (out[1, 4:] - alone_b).abs().max() <= 1e-5
    assert torch.isfinite(out).all()


def test_router_stats_exclude_padding():
    m = _model().eval()
    ids = _ids(2, 6)
    mask = torch.tensor([[0, 0, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1]])
    with torch.no_grad():
        padded = m(ids, attention_mask=mask).router_stats
        row0 = m(ids[:1, 2:]).router_stats  # the 4 real tokens of row 0, unpadded
        row1 = m(ids[1:]).router_stats
    for p, a, b in zip(padded, row0, row1, strict=True):
        want = (a["load"] * 4 + b["load"] * 6) / 10  # 10 real tokens, pads not counted
        assert torch.allclose(p["load"], want, atol=1e-6)
        assert torch.isclose(p["entropy"], (a["entropy"] * 4 + b["entropy"] * 6) / 10, atol=1e-5)


def test_kv_cache_generation_equals_recomputation():
    m = _model().eval()
    prompt = _ids(2, 6, seed=4)
    got = m.generate(prompt, max_new_tokens=8)
    assert got.shape == (2, 14)
    seq = prompt
    with torch.no_grad():
        for _ in range(8):  # no cache: the full forward every step
            nxt = m(seq).logits[:, -1].argmax(-1)
            seq = torch.cat([seq, nxt[:, None]], dim=1)
    assert torch.equal(got, seq)


def test_cached_logits_equal_full_forward():
    m = _model().eval()
    ids = _ids(2, 10, seed=5)
    with torch.no_grad():
        full = m(ids).logits
        out = m(ids[:, :6], use_cache=True)
        step = m(ids[:, 6:8], past_key_values=out.past_key_values, use_cache=True)
        last = m(ids[:, 8:], past_key_values=step.past_key_values, use_cache=True)
    got = torch.cat([out.logits, step.logits, last.logits], dim=1)
    assert (got - full).abs().max() <= 1e-5
    assert last.past_key_values.get_seq_length() == 10


def test_batched_left_padded_generation_matches_single():
    m = _model().eval()
    a, b = _ids(1, 7, seed=6), _ids(1, 4, seed=7)
    batch = torch.zeros(2, 7, dtype=torch.long)
    batch[0], batch[1, 3:] = a[0], b[0]
    mask = (torch.arange(7)[None] >= torch.tensor([[0], [3]])).long()
    got = m.generate(batch, max_new_tokens=6, attention_mask=mask)
    assert torch.equal(got[0, 7:], m.generate(a, max_new_tokens=6)[0, 7:])
    assert torch.equal(got[1, 7:], m.generate(b, max_new_tokens=6)[0, 4:])


def test_stop_tokens_and_sampling_are_reproducible():
    m = _model().eval()
    prompt = _ids(2, 5, seed=8)
    greedy = m.generate(prompt, max_new_tokens=6)
    stop = int(greedy[0, 7])  # the third generated token of row 0
    first = int((greedy[0, 5:] == stop).nonzero()[0]) + 5
    got = m.generate(prompt, max_new_tokens=6, stop_token_ids=[stop])
    assert torch.equal(got[0, : first + 1], greedy[0, : first + 1])
    assert (got[0, first + 1 :] == m.config.eos_token_id).all()
    g1 = m.generate(
        prompt, 6, temperature=1.0, top_p=0.9, generator=torch.Generator().manual_seed(3)
    )
    g2 = m.generate(
        prompt, 6, temperature=1.0, top_p=0.9, generator=torch.Generator().manual_seed(3)
    )
    assert torch.equal(g1, g2)


def test_top_p_keeps_only_the_nucleus():
    logits = torch.log(torch.tensor([[0.6, 0.3, 0.05, 0.05]]))
    gen = torch.Generator().manual_seed(0)
    draws = {int(sample_next(logits, 1.0, 0.8, gen)) for _ in range(200)}
    assert draws == {0, 1}
    assert int(sample_next(logits, 0.0)) == 0


def test_token_logprobs_equal_log_softmax_of_forward():
    m = _model().eval()
    ids = _ids(2, 9, seed=9)
    targets = torch.roll(ids, -1, dims=1)
    targets[:, -1] = -100
    with torch.no_grad():
        lp = m.token_logprobs(ids, targets)
        full = torch.log_softmax(m(ids).logits, -1)
    want = full[:, :-1].gather(-1, targets[:, :-1, None]).squeeze(-1)
    assert lp.shape == (2, 9)
    assert (lp[:, :-1] - want).abs().max() <= 1e-5
    assert (lp[:, -1] == 0).all()


def test_loss_is_shifted_cross_entropy_with_ignore():
    m = _model()
    ids = _ids(2, 8, seed=10)
    labels = ids.clone()
    labels[0, :4] = -100
    out = m(ids, labels=labels)
    want = F.cross_entropy(out.logits[:, :-1].reshape(-1, 256), labels[:, 1:].reshape(-1))
    assert torch.isclose(out.loss, want)


def test_router_stats_and_bias_update():
    m = _model()
    out = m(_ids(4, 16))
    E = m.config.num_local_experts
    assert len(out.router_stats) == m.config.num_hidden_layers
    for st in out.router_stats:
        assert st["load"].shape == (E,) and torch.isclose(st["load"].sum(), torch.tensor(1.0))
        assert 0 < float(st["entropy"]) <= torch.log(torch.tensor(float(E))) + 1e-5
    blk = m.moe_blocks[0]
    assert "e_score_correction_bias" not in dict(m.named_parameters())
    assert any(n.endswith("e_score_correction_bias") for n, _ in m.named_buffers())
    before = blk.e_score_correction_bias.clone()
    load = out.router_stats[0]["load"]
    m.update_router_bias(0.01)
    delta = blk.e_score_correction_bias - before
    assert torch.allclose(delta, 0.01 * torch.sign(load.mean() - load))
    # mean load 1/3: the over-loaded expert goes down, the under-loaded ones go up
    got = router_bias_update(torch.zeros(3), torch.tensor([0.5, 0.3, 0.2]), 0.1)
    assert torch.allclose(got, torch.tensor([-0.1, 0.1, 0.1]))


def test_bias_changes_selection_but_not_weights():
    m = _model().eval()
    blk = m.moe_blocks[0]
    x = torch.randn(1, 5, m.config.hidden_size)
    with torch.no_grad():
        blk.e_score_correction_bias.zero_()
        y0 = blk(x)
        blk.e_score_correction_bias[3] = 10.0  # expert 3 is now always chosen
        y1 = blk(x)
    assert blk.last_stats["load"][3] == 0.5  # one of two slots for every token
    assert not torch.allclose(y0, y1)


def test_attention_hook_runs_tree_attention_inside_the_models_own_forward():
    """The attention backend is swappable through forward: a packed prefix tree (shared prefix,
    two branches, position ids continuing from the parent) with tree attention gives every
    token the logits it gets in its own sequence; the default backend is what forward uses."""
    from kernels import PrefixTree, tree_attention
    from model.modeling import sdpa_attention

    m = _model().eval()
    prefix, a, b = _ids(1, 6, seed=2)[0], _ids(1, 4, seed=3)[0], _ids(1, 3, seed=4)[0]
    tree = PrefixTree(parent=(-1, 0, 0), lengths=(6, 4, 3))
    packed = torch.cat([prefix, a, b])[None]
    calls = []

    def attend(q, k, v):
        calls.append(q.shape)
        return tree_attention(q, k, v, tree, backend="torch")

    with torch.no_grad():
        got = m(packed, position_ids=tree.position_ids()[None], attention_fn=attend).logits[0]
        seq_a = m(torch.cat([prefix, a])[None]).logits[0]
        seq_b = m(torch.cat([prefix, b])[None]).logits[0]
        default = m(packed, attention_fn=sdpa_attention).logits
        plain = m(packed).logits
    assert len(calls) == m.config.num_hidden_layers
    assert (got[:10] - seq_a).abs().max() <= 1e-5
    assert (got[10:] - seq_b[6:]).abs().max() <= 1e-5
    assert torch.equal(default, plain)
    with pytest.raises(ValueError, match="attention_fn"):
        m(packed, attention_mask=torch.ones_like(packed), attention_fn=attend)


def test_mtp_modules_predict_further_tokens_and_train():
    m = _model(use_mtp=True, num_mtp_modules=2)
    ids = _ids(2, 10, seed=11)
    out = m(ids, labels=ids)
    assert [t.shape for t in out.mtp_logits] == [(2, 9, 256), (2, 8, 256)]
    main = F.cross_entropy(out.logits[:, :-1].reshape(-1, 256), ids[:, 1:].reshape(-1))
    assert torch.isclose(out.loss, main + m.config.mtp_loss_weight * out.mtp_loss)
    out.loss.backward()
    assert m.model.mtp[1].eh_proj.weight.grad.abs().sum() > 0
    # off by default: not instantiated
    assert MiniMaxM2ForCausalLM(tiny_config()).model.mtp is None


def test_bf16_forward_is_close_to_fp32():
    m = _model().eval()
    ids = _ids(2, 8)
    with torch.no_grad():
        ref = m(ids).logits
        lo = m.to(torch.bfloat16)(ids).logits.float()
    assert (lo - ref).abs().max() < 0.05


def test_config_validation_messages():
    with pytest.raises(ValueError, match="num_key_value_heads"):
        tiny_config(num_key_value_heads=3)
    with pytest.raises(ValueError, match="num_experts_per_tok"):
        tiny_config(num_experts_per_tok=9)
    with pytest.raises(ValueError, match="rotary_dim"):
        tiny_config(rotary_dim=32)
    with pytest.raises(ValueError, match="unknown preset"):
        MiniMaxM2Config.from_preset("huge")
    with pytest.raises(ValueError, match="moe_backend"):
        tiny_config(moe_backend="cuda")


def test_config_dict_roundtrip_and_transformers_compatibility():
    import transformers

    for name in ("tiny", "small", "minimax-m2"):
        cfg = MiniMaxM2Config.from_preset(name)
        assert MiniMaxM2Config.from_dict(cfg.to_dict()) == cfg
        hf = transformers.MiniMaxM2Config(**cfg.to_dict())
        for key in (
            "hidden_size",
            "num_local_experts",
            "num_experts_per_tok",
            "head_dim",
            "intermediate_size",
            "vocab_size",
            "num_key_value_heads",
            "rms_norm_eps",
        ):
            assert getattr(hf, key) == getattr(cfg, key), key
        assert hf.rope_parameters["partial_rotary_factor"] == cfg.rotary_dim / cfg.head_dim
        assert hf.rope_parameters["rope_theta"] == cfg.rope_theta
        assert MiniMaxM2Config.from_dict(hf.to_dict()).to_dict() == {
            **cfg.to_dict(),
            "moe_backend": cfg.moe_backend,
        }


def test_triton_expert_path_agrees_with_reference(monkeypatch):
    # On a CPU the Triton kernels run under the interpreter (tiny shapes keep it quick).
    if not torch.cuda.is_available():
        monkeypatch.setenv("TRITON_INTERPRET", "1")
    ids = _ids(1, 6)
    results = {}
    for backend in ("reference", "triton"):
        m = _model(num_hidden_layers=1)
        m.set_moe_backend(backend)
        out = m(ids, labels=ids)
        out.loss.backward()
        results[backend] = (out.logits.detach(), m.moe_blocks[0].experts.gate_up_proj.grad)
    assert (results["reference"][0] - results["triton"][0]).abs().max() <= 1e-4
    assert torch.allclose(results["reference"][1], results["triton"][1], atol=1e-5, rtol=1e-3)
