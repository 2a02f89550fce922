"""``verify.judge`` is the reward: a fix passes only when every check holds, each failure
names its reason, and odd inputs (no data, NaN, no failure step) have one defined answer."""

from __future__ import annotations

import math

import pytest

from workbench.supervisor.verify import ALWAYS_BLOCKING, judge

BEFORE = {"run_id": "a", "status": "FAILED", "eval_metric": "eval_loss", "best_eval": 2.0,
          "last_step": 30}  # fmt: skip
AFTER = {"run_id": "b", "status": "FINISHED", "eval_metric": "eval_loss", "best_eval": 1.9,
         "last_step": 99}  # fmt: skip
DIVERGED = [{"kind": "divergence", "metric": "loss", "step": 25, "evidence": "loss rose"}]


def _judge(after=None, original=DIVERGED, new=(), **kw):
    return judge(BEFORE, {**AFTER, **(after or {})}, list(original), list(new), **kw)


def test_a_real_fix_passes_with_reward_one():
    out = _judge()
    assert (out.passed, out.reward, out.reasons) == (True, 1.0, ["verified"])
    assert out.before == BEFORE and out.after == AFTER and out.new_findings == []
    assert out.to_json()["passed"] is True


@pytest.mark.parametrize(
    ("after", "new", "reason"),
    [
        ({"status": "FAILED"}, (), "patched run ended FAILED"),
        ({"status": "KILLED"}, (), "patched run ended KILLED"),
        ({"last_step": 25}, (), "stopped at step 25, before 25"),  # not past the failure step
        ({"last_step": 10}, (), "stopped at step 10, before 25"),
        ({"last_step": None}, (), "stopped at step None, before 25"),
        ({}, [{"kind": "divergence", "step": 60}], "doctor still finds divergence"),
        ({}, [{"kind": "nan_inf", "step": 60}], "doctor still finds nan_inf"),  # always blocks
        ({"best_eval": 2.5}, (), "best eval 2.5 does not reach 2"),
        ({"best_eval": None}, (), "patched run has no finite eval metric"),
    ],
)
def test_each_failure_names_its_reason_and_scores_zero(after, new, reason):
    out = _judge(after, new=new)
    assert not out.passed and out.reward == 0.0
    assert any(reason in r for r in out.reasons), out.reasons


def test_every_failing_check_is_reported_together():
    out = _judge({"status": "FAILED", "last_step": 3, "best_eval": None}, new=DIVERGED)
    assert len(out.reasons) == 4 and not out.passed


def test_a_finding_the_original_did_not_have_blocks_only_when_always_blocking():
    assert _judge(new=[{"kind": "plateau", "step": 80}]).passed
    assert set(ALWAYS_BLOCKING) == {"nan_inf", "divergence", "crash", "stalled"}
    for kind in ALWAYS_BLOCKING:
        assert not _judge(new=[{"kind": kind, "step": 80}]).passed


def test_tolerance_and_an_explicit_target():
    assert _judge({"best_eval": 2.0 * 1.009}).passed  # within 1% of the original best
    assert not _judge({"best_eval": 2.0 * 1.011}).passed
    assert not _judge({"best_eval": 1.9}, target=1.5).passed  # the target replaces the original
    assert _judge({"best_eval": 1.4}, target=1.5).passed
    assert _judge({"best_eval": 2.1}, tolerance=0.1).passed


def test_no_data_before_means_no_step_or_metric_bar():
    before = {**BEFORE, "best_eval": None, "last_step": None}
    out = judge(before, AFTER, [{"kind": "no_data", "step": None}], [])
    assert out.passed
    # a failure without a step (a crash before any metric) sets no step bar either
    assert _judge({"last_step": 1}, original=[{"kind": "crash", "step": None}]).passed


def test_the_failure_step_is_the_earliest_finding():
    original = [*DIVERGED, {"kind": "loss_spike", "step": 12}]
    assert _judge({"last_step": 13}, original=original).passed
    assert not _judge({"last_step": 12}, original=original).passed


def test_a_nan_best_metric_is_no_metric_and_a_nan_original_sets_no_bar():
    out = _judge({"best_eval": math.nan})
    assert not out.passed and out.reasons == ["patched run has no finite eval metric"]
    assert not _judge({"best_eval": math.inf}).passed
    nan_before = {**BEFORE, "best_eval": math.nan}
    assert judge(nan_before, AFTER, DIVERGED, []).passed
