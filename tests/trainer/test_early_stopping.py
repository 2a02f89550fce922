"""Early stopping (`early_stop_patience`): the run ends FINISHED when its eval loss stops
improving, says why in its log, and (by default) ends on its best weights."""

from __future__ import annotations

import math

import pytest
from trainer_helpers import history, log_text, run, store

from trainer.harness import EarlyStopping

# The overfitting scenario of the fault suite, shortened: 40 training examples, a wide MLP.
OVERFIT = {
    "steps": 300,
    "batch_size": 32,
    "eval_interval": 10,
    "model": {"hidden": 256},
    "optimizer": {"weight_decay": 0.0, "lr": 0.005, "warmup_steps": 5},
    "data": {"max_train_items": 40},
}


@pytest.fixture(scope="module")
def uri(tmp_path_factory):
    return store(tmp_path_factory.mktemp("early-stop-store"))


def test_counter_stops_after_patience_evals_without_a_new_best():
    es = EarlyStopping(patience=2)
    assert es.update(1.0, 0) and es.update(0.5, 10)
    assert not es.update(0.6, 20) and not es.should_stop
    assert not es.update(math.nan, 30) and es.should_stop  # NaN is never a best
    assert (es.best, es.best_step) == (0.5, 10)
    off = EarlyStopping(patience=0)
    for i in range(10):
        off.update(1.0 + i, i)
    assert not off.should_stop


def test_overfitting_digits_run_stops_early_and_ends_on_its_best_weights(uri, tmp_path):
    res = run(uri, "digits", {**OVERFIT, "early_stop_patience": 2})
    assert res.status == "FINISHED"
    last = max(s for s, _ in history(uri, res.run_id, "loss"))
    assert last < OVERFIT["steps"] - 1  # stopped before the configured end
    evals = history(uri, res.run_id, "eval_loss")
    best, best_step = min((v, s) for s, v in evals if s < last)
    # Two evals without a new best, then the restored best weights' eval at the stop step.
    assert sum(v > best for s, v in evals if s > best_step) == 2
    assert any(s == last and v == pytest.approx(best, rel=1e-5) for s, v in evals)
    text = log_text(uri, res.run_id, tmp_path)
    assert f"early stop at step {last}" in text and "early_stop_patience 2" in text
    assert "restored the step-" in text and "training finished" in text


def test_without_restore_the_last_eval_is_the_last_weights(uri):
    res = run(uri, "digits", {**OVERFIT, "early_stop_patience": 1, "early_stop_restore": False})
    evals = history(uri, res.run_id, "eval_loss")
    last = max(s for s, _ in evals)
    assert last < OVERFIT["steps"] - 1
    assert len([s for s, _ in evals if s == last]) == 1  # nothing re-logged
    assert evals[-1][1] > min(v for _, v in evals)


def test_patience_zero_runs_every_step(uri):
    res = run(uri, "digits", {**OVERFIT, "steps": 120})
    assert res.status == "FINISHED"
    assert max(s for s, _ in history(uri, res.run_id, "loss")) == 119
    evals = [v for _, v in history(uri, res.run_id, "eval_loss")]
    assert evals[-1] > min(evals) * 1.05  # it did overfit: patience 2 would have stopped it


def test_lm_run_stops_early_too(uri, tmp_path):
    res = run(
        uri,
        "lm",
        {
            "steps": 200,
            "batch_size": 8,
            "eval_interval": 5,
            "early_stop_patience": 1,
            "optimizer": {"weight_decay": 0.0, "warmup_steps": 5, "lr": 0.01},
            "data": {"max_train_items": 300},
        },
    )
    assert res.status == "FINISHED"
    last = max(s for s, _ in history(uri, res.run_id, "train/loss"))
    assert last < 199
    assert f"early stop at step {last}" in log_text(uri, res.run_id, tmp_path)
