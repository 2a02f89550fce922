"""Short digits runs with each defect (a setting, the repo's own code, or a harness fault):
assert on the MLflow histories what it really did."""

from __future__ import annotations

import math
import statistics

import pytest
from trainer_helpers import history, log_text, run, store

BASE = {"steps": 60, "batch_size": 32, "eval_interval": 10, "optimizer": {"warmup_steps": 5}}


@pytest.fixture(scope="module")
def uri(tmp_path_factory):
    return store(tmp_path_factory.mktemp("digits-store"))


def _values(uri, run_id, key, lo=0, hi=10**9):
    return [v for s, v in history(uri, run_id, key) if lo <= s < hi]


def test_healthy_run_finishes_and_eval_loss_falls_by_30_percent(uri):
    res = run(uri, "digits", BASE)
    assert res.status == "FINISHED"
    ev = _values(uri, res.run_id, "eval_loss")
    assert ev[-1] <= 0.7 * ev[0]
    for key in ("loss", "grad_norm", "learning_rate", "epoch", "train_samples_per_second"):
        assert len(history(uri, res.run_id, key)) == BASE["steps"]


def test_lr_too_high_makes_the_loss_rise_after_onset(uri):
    # A step schedule whose gamma multiplies the rate 300x at step 30 (a setting of the config).
    opt = {"warmup_steps": 5, "decay_steps": [30], "decay_gamma": 300.0}
    res = run(uri, "digits", {**BASE, "optimizer": opt})
    before = _values(uri, res.run_id, "loss", 20, 30)
    after = _values(uri, res.run_id, "loss", 30)
    lr = dict(history(uri, res.run_id, "learning_rate"))
    assert lr[30] > 100 * lr[29]
    assert any(not math.isfinite(v) or v > 3 * max(before) for v in after)


def test_fp16_with_an_overflowing_loss_scale_puts_inf_or_nan_in_the_loss(uri):
    fp16 = {"precision": "fp16", "optimizer": {"warmup_steps": 5, "loss_scale": 1.0e6}}
    res = run(uri, "digits", {**BASE, **fp16})
    assert any(not math.isfinite(v) for v in _values(uri, res.run_id, "loss"))
    fixed = run(uri, "digits", {**BASE, **fp16, "precision": "fp32"})  # the remedy
    assert all(math.isfinite(v) for v in _values(uri, fixed.run_id, "loss"))


def test_outlier_batches_without_clipping_spike_the_gradient_norm(uri):
    data = {
        **BASE,
        "optimizer": {"warmup_steps": 5, "grad_clip": None},
        "code": ("curated_weight", {"start": 20, "every": 20, "scale": 1e4}),
    }
    res = run(uri, "digits", data)
    g = dict(history(uri, res.run_id, "grad_norm"))
    typical = statistics.median(g[s] for s in range(20))
    assert g[20] > 100 * typical and g[40] > 100 * typical


def test_bad_data_raises_the_training_loss_from_onset(uri):
    res = run(uri, "digits", {**BASE, "code": ("pixel_shards", {"start": 40, "fraction": 1.0})})
    before = statistics.mean(_values(uri, res.run_id, "loss", 30, 40))
    after = statistics.mean(_values(uri, res.run_id, "loss", 40))
    assert after > 2 * before


def test_bad_data_is_dropped_when_batches_are_validated(uri):
    data = {
        **BASE,
        "data": {"validate": True},
        "code": ("pixel_shards", {"start": 40, "fraction": 0.5}),
    }
    res = run(uri, "digits", data)
    before = statistics.mean(_values(uri, res.run_id, "loss", 30, 40))
    after = statistics.mean(_values(uri, res.run_id, "loss", 40))
    assert after < 1.5 * before  # the remedy works: no garbage reaches the model


def test_a_tiny_train_set_overfits_eval_loss_turns_up(uri):
    data = {
        **BASE,
        "steps": 200,
        "model": {"hidden": 256},
        "optimizer": {"lr": 0.005, "weight_decay": 0.0, "warmup_steps": 5},
        "data": {"max_train_items": 30},
    }
    res = run(uri, "digits", data)
    ev = _values(uri, res.run_id, "eval_loss")
    train = _values(uri, res.run_id, "loss")
    assert ev[-1] > min(ev) + 0.1  # eval loss went down, then back up
    assert statistics.mean(train[-10:]) < 0.05  # while the train loss kept falling


def test_oom_fails_the_run_with_a_memory_error_in_its_log(uri, tmp_path):
    data = {**BASE, "faults": [{"kind": "oom", "start_step": 20, "budget_mb": 0.22, "growth": 4}]}
    res = run(uri, "digits", data)
    assert res.status == "FAILED"
    assert max(s for s, _ in history(uri, res.run_id, "loss")) == 19
    text = log_text(uri, res.run_id, tmp_path)
    assert "OutOfMemoryError" in text and "out of memory" in text


def test_code_error_fails_the_run_with_the_traceback_in_its_log(uri, tmp_path):
    res = run(uri, "digits", {**BASE, "code": ("packing", {"start": 25})})
    assert res.status == "FAILED"
    assert max(s for s, _ in history(uri, res.run_id, "loss")) == 24
    text = log_text(uri, res.run_id, tmp_path)
    # The traceback points at the repo's own line (hooks.py), where a fix would go.
    assert "Traceback" in text and "RuntimeError" in text and "hooks.py" in text


def test_slow_io_drops_throughput_and_workers_win_it_back(uri):
    fault = [{"kind": "slow_io", "start_step": 30, "delay_s": 0.1}]
    res = run(uri, "digits", {**BASE, "steps": 50, "faults": fault})
    before = statistics.median(_values(uri, res.run_id, "train_samples_per_second", 10, 30))
    after = statistics.median(_values(uri, res.run_id, "train_samples_per_second", 30))
    assert after < 0.5 * before
    fixed = run(uri, "digits", {**BASE, "steps": 50, "faults": fault, "data": {"num_workers": 8}})
    after_fixed = statistics.median(_values(uri, fixed.run_id, "train_samples_per_second", 35))
    assert after_fixed > 2 * after


def test_zero_grad_bug_zeroes_the_gradient_norm_and_freezes_the_loss(uri):
    res = run(uri, "digits", {**BASE, "code": ("freeze_embeddings", {"start": 30})})
    assert res.status == "FINISHED"  # a silent bug: nothing raises
    g = dict(history(uri, res.run_id, "grad_norm"))
    assert min(g[s] for s in range(30)) > 0.05
    assert all(g[s] == 0.0 for s in range(30, BASE["steps"]))
    # The weights stop moving: eval loss stays where it was at the onset.
    ev = dict(history(uri, res.run_id, "eval_loss"))
    assert ev[40] == pytest.approx(ev[30], rel=1e-6) and ev[50] == pytest.approx(ev[30], rel=1e-6)
