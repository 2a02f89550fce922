"""The engine's batch: the slot KV cache and the lean decode step against the model's forward,
and the engine's event contract (per-token events only for streaming sequences)."""

from __future__ import annotations

import threading
import time

import torch

from kernels import fused_moe
from model.modeling import RMSNorm
from model.serving.batch import (
    Decoder,
    _rms_fused,
    dense_decode_moe,
    grouped_prefill_moe,
    move_last_into,
    sparse_decode_moe,
)
from model.serving.engine import Engine, SamplingParams
from tests.model_fixtures import tiny_model


class Solo:
    """One sequence alone through the model's own forward and KV cache: the reference."""

    def __init__(self, model, prompt: list[int]) -> None:
        self.model = model
        out = model(torch.tensor([prompt]), use_cache=True, logits_to_keep=1)
        self.cache, self.logits = out.past_key_values, out.logits[0, -1]
        self.tokens = list(prompt)

    def feed(self, tok: int) -> torch.Tensor:
        self.tokens.append(tok)
        pos = torch.tensor([[len(self.tokens) - 1]])
        out = self.model(
            torch.tensor([[tok]]),
            position_ids=pos,
            past_key_values=self.cache,
            use_cache=True,
            logits_to_keep=1,
        )
        self.logits = out.logits[0, -1]
        return self.logits


def _prefill(model, prompts: list[list[int]]):
    """Left-padded prefill of several prompts, as the engine does it."""
    P = max(len(p) for p in prompts)
    ids = torch.zeros(len(prompts), P, dtype=torch.long)
    mask = torch.zeros(len(prompts), P, dtype=torch.long)
    for i, p in enumerate(prompts):
        ids[i, P - len(p) :] = torch.tensor(p)
        mask[i, P - len(p) :] = 1
    pos = (mask.cumsum(-1) - 1).clamp_min(0)
    out = model(ids, attention_mask=mask, position_ids=pos, use_cache=True, logits_to_keep=1)
    return out.past_key_values, out.logits[:, -1]


@torch.inference_mode()
def test_decode_step_matches_each_sequence_alone_as_rows_join_leave_and_the_cache_grows():
    model = tiny_model(seed=1)
    dec = Decoder(model)
    cache = dec.new_cache(max_rows=4, cap=8)  # tiny capacity: forces re-layouts and growth
    g = torch.Generator().manual_seed(0)
    prompts = [torch.randint(16, 2000, (n,), generator=g).tolist() for n in (5, 3, 12, 7)]
    rows: list[Solo] = []

    def admit(ps: list[list[int]], lean: bool) -> None:
        # Either the engine's own prefill, written straight into the cache, or the model's
        # forward copied in with add_rows: both must match each prompt run alone.
        if lean:
            logits = dec.prefill(cache, ps)
        else:
            kv, logits = _prefill(model, ps)
            cache.add_rows(kv.keys, kv.values, [len(p) for p in ps])
        for p, lg in zip(ps, logits, strict=True):
            rows.append(Solo(model, p))
            assert torch.allclose(rows[-1].logits, lg, atol=1e-5)

    def step() -> None:
        toks = [int(r.logits.argmax()) for r in rows]
        pos = [len(r.tokens) for r in rows]
        got = dec.step(cache, torch.tensor(toks), torch.tensor(pos))
        for r, t, lg in zip(rows, toks, got, strict=True):
            assert torch.allclose(r.feed(t), lg, atol=1e-5)

    admit(prompts[:2], lean=True)  # padded rows (5 and 3 tokens)
    for _ in range(4):
        step()
    admit([prompts[2]], lean=False)  # longer than the live window: the cache shifts right to fit it
    for _ in range(3):
        step()
    cache.remove_rows([0])  # the last row moves into row 0
    rows = move_last_into(rows, [0])
    admit([prompts[3]], lean=True)
    for _ in range(12):  # past several capacity doublings
        step()
    assert cache.rows == len(rows) == 3 and cache.cap > 8
    cache.remove_rows([0, 1, 2])
    assert cache.rows == 0 and cache.start == []


def test_fused_rms_norm_is_bit_identical_to_the_model_norm():
    g = torch.Generator().manual_seed(0)
    for shape in ((8, 128), (1, 64), (3, 5, 32)):
        norm = RMSNorm(shape[-1], eps=1e-6)
        with torch.no_grad():
            norm.weight.copy_(torch.randn(shape[-1], generator=g))
        x = torch.randn(*shape, generator=g) * 3
        with torch.no_grad():
            assert torch.equal(_rms_fused(x, norm.weight, norm.eps), norm(x))


def test_dense_and_sparse_decode_moe_match_the_kernels():
    g = torch.Generator().manual_seed(0)
    E, H, inter, k = 8, 32, 24, 2
    w_gu = torch.randn(E, 2 * inter, H, generator=g) * 0.2
    w_down = torch.randn(E, H, inter, generator=g) * 0.2
    down_t = w_down.transpose(1, 2).contiguous()
    for B in (1, 3, 8):
        h = torch.randn(B, H, generator=g)
        scores = torch.rand(B, E, generator=g)
        w, ids = scores.topk(k, dim=-1)
        w = w / w.sum(-1, keepdim=True)
        ref = fused_moe(h, w_gu, w_down, w, ids, backend="reference")
        assert torch.allclose(dense_decode_moe(h, w_gu, down_t, w, ids), ref, atol=1e-5)
        # The few-rows path (the decoder takes it while rows * k <= E / 2); any B is valid.
        assert torch.allclose(sparse_decode_moe(h, w_gu, down_t, w, ids), ref, atol=1e-5)
        # With `out`: the residual added in place.
        x = torch.randn(B, H, generator=g)
        want = x + ref
        assert torch.allclose(
            dense_decode_moe(h, w_gu, down_t, w, ids, out=x.clone()), want, atol=1e-5
        )
        assert torch.allclose(
            sparse_decode_moe(h, w_gu, down_t, w, ids, out=x.clone()), want, atol=1e-5
        )
    # The prefill path: many rows, per-expert GEMMs over rows sorted by expert.
    h = torch.randn(40, H, generator=g)
    w, ids = torch.rand(40, E, generator=g).topk(k, dim=-1)
    w = w / w.sum(-1, keepdim=True)
    ref = fused_moe(h, w_gu, w_down, w, ids, backend="reference")
    gu_t = w_gu.transpose(1, 2).contiguous()
    assert torch.allclose(grouped_prefill_moe(h, gu_t, down_t, w, ids), ref, atol=1e-5)


def test_engine_streams_tokens_only_when_asked_and_late_arrivals_join_the_batch():
    with torch.inference_mode():
        model = tiny_model(seed=2)
    engine = Engine(model, max_batch=4).start()
    try:
        events: dict[str, list[tuple]] = {"a": [], "b": [], "b_alone": []}
        done = {name: threading.Event() for name in events}

        def emit_to(name: str):
            def emit(event: tuple) -> None:
                events[name].append(event)
                if event[0] in ("done", "error"):
                    done[name].set()

            return emit

        greedy = dict(temperature=0.0, ignore_eos=True)
        b_prompt = [20, 21, 22, 23, 24, 25, 26]
        b_alone = engine.submit(
            b_prompt, SamplingParams(max_new_tokens=6, **greedy), emit_to("b_alone")
        )
        assert done["b_alone"].wait(60)
        engine.stats["max_batch_seen"] = 0
        a = engine.submit(
            [5, 6, 7], SamplingParams(max_new_tokens=40, **greedy), emit_to("a"), stream=False
        )
        while len(a.out_ids) < 3:  # a is decoding: b arrives mid-generation
            time.sleep(0.001)
        b = engine.submit(b_prompt, SamplingParams(max_new_tokens=6, **greedy), emit_to("b"))
        assert done["a"].wait(60) and done["b"].wait(60)
        assert events["a"] == [("done", "length")]  # non-streaming: one event, at the end
        assert len(a.out_ids) == 40
        assert [e[0] for e in events["b"]] == ["token"] * 6 + ["done"]
        assert [e[1] for e in events["b"][:-1]] == b.out_ids
        assert b.out_ids == b_alone.out_ids  # joining a running batch changes nothing
        assert engine.stats["max_batch_seen"] == 2
    finally:
        engine.shutdown()


def test_engine_prefill_batch_where_some_finish_at_their_first_token():
    """Requests admitted in one prefill, some done after one token: the rows left behind keep
    decoding exactly as each request alone."""
    with torch.inference_mode():
        model = tiny_model(seed=3)
    engine = Engine(model, max_batch=4)
    prompts = [[5, 6, 7], [30, 31, 32, 33, 34, 35], [9] * 4, [40, 41]]
    lengths = [1, 5, 1, 3]
    greedy = dict(temperature=0.0, ignore_eos=True)

    def run(idx: list[int]) -> list:
        done = [threading.Event() for _ in idx]
        seqs = [
            engine.submit(
                prompts[i],
                SamplingParams(max_new_tokens=lengths[i], **greedy),
                lambda e, d=d: d.set() if e[0] == "done" else None,
                stream=False,
            )
            for i, d in zip(idx, done, strict=True)
        ]
        engine.start()
        assert all(d.wait(60) for d in done)
        return seqs

    together = run([0, 1, 2, 3])  # queued before the engine starts: one prefill
    try:
        assert engine.stats["prefills"] == 1
        for i, seq in enumerate(together):
            alone = run([i])[0]
            assert seq.out_ids == alone.out_ids and len(seq.out_ids) == lengths[i]
            assert torch.allclose(
                torch.tensor(seq.logprobs), torch.tensor(alone.logprobs), atol=1e-5
            )
    finally:
        engine.shutdown()
