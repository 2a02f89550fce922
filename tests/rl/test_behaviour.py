"""CISPO's old policy is the behaviour policy: a rollout drawn at temperature T was sampled from
mu = softmax(logits / T), so before any update the importance ratio must be pi / mu (not 1, as
with the raw log-probs), down-weighting answers that the temperature over-draws."""

from __future__ import annotations

import torch
from rl_testlib import tiny_model

from trainer.rl.data import completion_sample
from trainer.rl.forward import behaviour_logprobs
from trainer.rl.update import UpdateConfig, make_optimizer, rl_step, sample_logprobs


def test_behaviour_logprobs_are_the_tempered_distribution():
    model = tiny_model(seed=3).eval()
    prompt = [5, 17, 42, 99, 7, 250]
    T = 1.5
    gen = torch.Generator().manual_seed(0)
    drawn = model.generate(torch.tensor([prompt] * 6), max_new_tokens=3, temperature=T,
                           generator=gen)[:, len(prompt):].tolist()  # fmt: skip
    beh, raw = behaviour_logprobs(model, prompt, drawn, T)
    for comp, b, r in zip(drawn, beh, raw, strict=True):
        with torch.no_grad():
            logits = model(torch.tensor([prompt + comp])).logits[0].float()
        for j, tok in enumerate(comp):
            z = logits[len(prompt) - 1 + j]
            assert abs(b[j] - float(torch.log_softmax(z / T, -1)[tok])) < 1e-5
            assert abs(r[j] - float(torch.log_softmax(z, -1)[tok])) < 1e-5
    # T = 0 (greedy) is scored as the raw policy
    beh0, raw0 = behaviour_logprobs(model, prompt, drawn[:2], 0.0)
    assert beh0 == raw0


def test_cispo_ratio_at_the_start_is_pi_over_mu():
    model = tiny_model(seed=4)
    prompt = [9, 33, 120, 4, 61]
    T = 1.5
    comps = [[7, 300], [480, 2], [7, 300], [55, 66]]  # a repeat: scored once, same values
    beh, raw = behaviour_logprobs(model, prompt, comps, T)
    assert beh[0] == beh[2]
    samples = [completion_sample(prompt, c, b) for c, b in zip(comps, beh, strict=True)]
    cfg = UpdateConfig(lr=1e-3)
    with torch.no_grad():
        logp = sample_logprobs(model, samples, cfg)
    r = torch.exp(logp - torch.tensor([x for b in beh for x in b]))
    pi = torch.tensor([x for q in raw for x in q]).exp()
    mu = torch.tensor([x for b in beh for x in b]).exp()
    assert torch.allclose(r, pi / mu, rtol=1e-4)
    assert (r - 1).abs().max() > 0.05  # with the raw log-probs it would be exactly 1
    # tempering flattens: a token rarer under pi than under mu is down-weighted (r < 1)
    assert ((pi < mu) == (r < 1)).all() and bool((r < 1).any())
    # and rl_step reports that ratio on its first update
    stats = rl_step(model, make_optimizer(model, 1e-3), samples, [1.0, -1.0, 1.0, -1.0], cfg)
    assert abs(stats["ratio_mean"] - float(r.mean())) < 1e-4
