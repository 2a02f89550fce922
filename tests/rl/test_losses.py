"""CISPO / PPO-clip / GRPO against direct per-token formulas, and the advantages."""

from __future__ import annotations

import math

import pytest
import torch

from trainer.rl.advantages import compute_advantages, rewards_to_go
from trainer.rl.data import Sample
from trainer.rl.losses import cispo_loss, grpo_loss, policy_loss, ppo_clip_loss


def _tensors(seed=0, n=13):
    g = torch.Generator().manual_seed(seed)
    logp = (torch.rand(n, generator=g) * -3).requires_grad_(True)
    old = logp.detach() + torch.randn(n, generator=g) * 0.8  # ratios well inside and outside clips
    adv = torch.randn(n, generator=g)
    idx = torch.tensor([0, 0, 0, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3])[:n]
    return logp, old, adv, idx


def test_cispo_matches_direct_formula_value_and_gradient():
    logp, old, adv, idx = _tensors()
    eps_high = 0.3
    loss, stats = cispo_loss(logp, old, adv, idx, eps_high=eps_high)
    loss.backward()
    n = logp.numel()
    direct, grad = 0.0, []
    for t in range(n):
        r = math.exp(float(logp.detach()[t]) - float(old[t]))
        w = min(max(r, 0.0), 1 + eps_high)  # sg(clip(r, 0, 1 + eps_high))
        direct += w * float(adv[t]) * float(logp.detach()[t])
        grad.append(-w * float(adv[t]) / n)  # the weight is a constant: d/dlogp = -w A / N
    assert float(loss.detach()) == pytest.approx(-direct / n, rel=1e-6)
    assert torch.allclose(logp.grad, torch.tensor(grad), rtol=1e-5, atol=1e-7)
    # some tokens were clipped, and clipped tokens still get gradient (unlike PPO)
    assert 0 < stats["clip_frac"] < 1
    r = torch.exp(logp.detach() - old)
    assert (logp.grad[r > 1 + eps_high] != 0).all()


def test_ppo_clip_matches_direct_formula_and_zeroes_clipped_gradients():
    logp, old, adv, idx = _tensors(1)
    eps = 0.2
    loss, _ = ppo_clip_loss(logp, old, adv, idx, eps=eps)
    loss.backward()
    direct = 0.0
    for t in range(logp.numel()):
        r = math.exp(float(logp.detach()[t]) - float(old[t]))
        a = float(adv[t])
        direct += min(r * a, min(max(r, 1 - eps), 1 + eps) * a)
    assert float(loss.detach()) == pytest.approx(-direct / logp.numel(), rel=1e-6)
    r = torch.exp(logp.detach() - old)
    clipped_out = ((r > 1 + eps) & (adv > 0)) | ((r < 1 - eps) & (adv < 0))
    assert clipped_out.any() and (logp.grad[clipped_out] == 0).all()


def test_grpo_normalises_per_sample_then_over_samples():
    logp, old, adv, idx = _tensors(2)
    eps = 0.2
    loss, _ = grpo_loss(logp, old, adv, idx, eps=eps)
    per = {}
    for t in range(logp.numel()):
        r = math.exp(float(logp.detach()[t]) - float(old[t]))
        a = float(adv[t])
        per.setdefault(int(idx[t]), []).append(min(r * a, min(max(r, 1 - eps), 1 + eps) * a))
    direct = sum(sum(v) / len(v) for v in per.values()) / len(per)
    assert float(loss.detach()) == pytest.approx(-direct, rel=1e-6)
    with pytest.raises(ValueError):
        policy_loss("reinforce", logp, old, adv, idx)


def test_on_policy_cispo_is_the_policy_gradient():
    logp, _, adv, idx = _tensors(3)
    loss, stats = policy_loss("cispo", logp, logp.detach(), adv, idx, eps_high=0.2)
    assert float(loss.detach()) == pytest.approx(float(-(adv * logp).mean()), rel=1e-6)
    assert stats["clip_frac"] == 0.0


def _ep(name, group, rewards):
    return [
        Sample(ids=[1, 2], trainable=[False, True], reward=r, episode=name, group=group, step=t)
        for t, r in enumerate(rewards)
    ]


def test_rewards_to_go_and_baselines():
    assert rewards_to_go([0.0, 1.0, 2.0], gamma=0.5) == [1.0, 2.0, 2.0]
    samples = _ep("a", "g1", [0, 1]) + _ep("b", "g1", [0, 0]) + _ep("c", "g2", [0, 0, 3])
    # shuffled order must not matter
    order = [4, 0, 2, 6, 1, 5, 3]
    shuffled = [samples[i] for i in order]
    adv = dict(zip(order, compute_advantages(shuffled, baseline="group"), strict=True))
    # group g1: returns 1 and 0 -> mean 0.5; g2 alone -> its own return is the baseline
    assert [adv[i] for i in range(7)] == [0.5, 0.5, -0.5, -0.5, 0.0, 0.0, 0.0]
    batch = compute_advantages(samples, baseline="batch")
    assert batch[0] == pytest.approx(1 - 4 / 3) and batch[4] == pytest.approx(3 - 4 / 3)
    norm = compute_advantages(samples, baseline="group", normalize=True)
    assert norm[0] == pytest.approx(1.0, rel=1e-4) and norm[2] == pytest.approx(-1.0, rel=1e-4)
    assert compute_advantages(samples, baseline="none")[4] == 3.0
    with pytest.raises(ValueError):
        compute_advantages(samples, baseline="critic")


def test_weighted_sft_step_is_the_weighted_mean_nll():
    from rl_testlib import tiny_model

    from trainer.rl.update import UpdateConfig, make_optimizer, sft_step

    samples = [
        Sample(ids=[5, 6, 7, 8], trainable=[False, False, True, True]),
        Sample(ids=[5, 6, 9], trainable=[False, False, True]),
    ]
    w = [0.75, 0.25]
    model = tiny_model()
    with torch.no_grad():
        lp = [model.token_logprobs(torch.tensor([s.ids[:-1]]), torch.tensor([s.ids[1:]]))[0]
              for s in samples]  # fmt: skip
    want = -(0.75 * (lp[0][1] + lp[0][2]) + 0.25 * lp[1][1]) / (0.75 * 2 + 0.25)
    opt = make_optimizer(model, 0.0)
    got = sft_step(model, opt, samples, UpdateConfig(attention="dense"), weights=w)["sft_loss"]
    assert math.isclose(got, float(want), rel_tol=1e-5)
