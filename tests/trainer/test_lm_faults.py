"""Short LM (MoE) runs: healthy learning, router collapse, divergence — read back from MLflow."""

from __future__ import annotations

import math
import statistics

import pytest
from trainer_helpers import history, run, store

BASE = {
    "steps": 40,
    "batch_size": 8,
    "eval_interval": 10,
    "eval_batches": 2,
    "data": {"seq_len": 32},
    "optimizer": {"lr": 0.005, "warmup_steps": 5},
    "moe": {"bias_update_rate": 0.01},
}
MOE = ("moe/load_max_over_mean", "moe/router_entropy", "moe/dead_experts")


@pytest.fixture(scope="module")
def uri(tmp_path_factory):
    return store(tmp_path_factory.mktemp("lm-store"))


def test_healthy_lm_run_logs_every_metric_and_eval_loss_falls_30_percent(uri):
    res = run(uri, "lm", BASE)
    assert res.status == "FINISHED"
    for key in ("train/loss", "grad_norm", "lr", "tokens_per_sec", "step_time", *MOE):
        assert len(history(uri, res.run_id, key)) == BASE["steps"], key
    ev = [v for _, v in history(uri, res.run_id, "eval/loss")]
    assert ev[-1] <= 0.7 * ev[0]


def test_router_imbalance_collapses_experts_without_the_bias_update(uri):
    code = ("router_warm_start", {"experts": 2, "skew": 1.0})  # the repo's skewed init
    bad = run(uri, "lm", {**BASE, "steps": 20, "moe": {"bias_update_rate": 0.0}, "code": code})
    ratio = [v for _, v in history(uri, bad.run_id, "moe/load_max_over_mean")]
    dead = [v for _, v in history(uri, bad.run_id, "moe/dead_experts")]
    assert min(ratio) >= 3.5  # of 4.0 possible with 8 experts, top-2: two experts take it all
    assert min(dead) >= 6
    # The remedy (bias update on) really rebalances the same skewed router.
    fixed = run(uri, "lm", {**BASE, "steps": 60, "moe": {"bias_update_rate": 0.05}, "code": code})
    ratio_fixed = [v for s, v in history(uri, fixed.run_id, "moe/load_max_over_mean") if s >= 50]
    assert statistics.median(ratio_fixed) < 3.0


def test_lr_too_high_diverges_after_onset(uri):
    # A step schedule whose gamma multiplies the rate 300x at step 20 (a setting of the config).
    opt = {**BASE["optimizer"], "decay_steps": [20], "decay_gamma": 300.0}
    res = run(uri, "lm", {**BASE, "steps": 30, "optimizer": opt})
    loss = dict(history(uri, res.run_id, "train/loss"))
    before = min(loss[s] for s in range(10, 20))
    assert any(not math.isfinite(loss[s]) or loss[s] > before + 1.0 for s in range(20, 30))


def test_zero_grad_bug_zeroes_the_gradient_norm_while_the_loss_is_high(uri):
    code = ("freeze_embeddings", {"start": 15})  # the repo's callback drops every gradient
    res = run(uri, "lm", {**BASE, "steps": 25, "code": code})
    assert res.status == "FINISHED"
    g = dict(history(uri, res.run_id, "grad_norm"))
    loss = dict(history(uri, res.run_id, "train/loss"))
    assert min(g[s] for s in range(15)) > 0.01
    assert all(g[s] == 0.0 for s in range(15, 25))
    assert min(loss[s] for s in range(15, 25)) > 0.5 * loss[0]  # far from converged
