"""Suite scoring: a precursor absorbed into a NaN finding counts as detected where the label
asks for it, and is no extra alarm where it does not."""

from __future__ import annotations

from workbench.doctor.evaluate import score_run, summarize
from workbench.doctor.types import Diagnosis, Finding, RunVerdict


def _verdict(run_id: str, *findings: Finding, cause: str = "missing_grad_clip") -> RunVerdict:
    diag = Diagnosis(cause=cause, confidence=0.5, summary="s") if findings else None
    return RunVerdict(
        run_id=run_id,
        status="failing" if findings else "healthy",
        findings=findings,
        diagnosis=diag,
        remedies=(),
    )


NAN_AFTER_BOOM = Finding(
    kind="nan_inf",
    metric="grad_norm",
    step=42,
    severity=1.0,
    evidence="grad_norm is inf at step 45; first went wrong at step 42",
    after=("exploding_gradients",),
)


def test_an_absorbed_precursor_is_detected_where_the_label_asks_for_it():
    label = {
        "any_of": ["exploding_gradients"],
        "allowed": ["nan_inf"],
        "cause": "missing_grad_clip",
    }
    s = score_run(_verdict("a", NAN_AFTER_BOOM), "boom", "heldout", label, None)
    assert s.predicted_kinds == ["nan_inf"] and s.absorbed == ["exploding_gradients"]
    res = summarize([s])
    assert res["per_kind"]["exploding_gradients"]["tp"] == 1
    assert res["per_kind"]["exploding_gradients"]["fn"] == 0
    assert res["scores"][0]["kinds_ok"] and res["cause_accuracy"] == 1.0
    # the same NaN without the run-up: the asked-for kind is missed
    bare = NAN_AFTER_BOOM.model_copy(update={"after": ()})
    res = summarize([score_run(_verdict("b", bare), "boom", "heldout", label, None)])
    assert res["per_kind"]["exploding_gradients"]["fn"] == 1


def test_an_absorbed_precursor_the_label_does_not_name_is_no_false_alarm():
    label = {"findings": ["nan_inf"], "cause": "fp_overflow"}
    s = score_run(_verdict("c", NAN_AFTER_BOOM, cause="fp_overflow"), "nan", "selection", label, 40)
    res = summarize([s])
    assert res["per_kind"]["exploding_gradients"]["fp"] == 0
    assert res["per_kind"]["nan_inf"]["tp"] == 1 and res["scores"][0]["kinds_ok"]
    assert s.delays == {"nan_inf": 2}


def test_a_run_the_doctor_could_not_judge_is_not_a_right_healthy_verdict():
    unjudged = RunVerdict(
        run_id="u", status="no_data", findings=(), diagnosis=None, remedies=(), note="no loss"
    )
    res = summarize([score_run(unjudged, "ok", "heldout", {"cause": "healthy"}, None)])
    assert res["cause_accuracy"] == 0.0 and res["false_alarms"] == 0
    res = summarize([score_run(_verdict("h"), "ok", "heldout", {"cause": "healthy"}, None)])
    assert res["cause_accuracy"] == 1.0
