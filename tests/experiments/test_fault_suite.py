"""The shipped fault suite: coverage, valid remedies, and `workbench suite make` end to end."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from experiments.faults.suite import (
    CAUSES,
    SuiteError,
    harness_env,
    load_suite,
    scenario_config,
    select,
)
from trainer.config import parse_config


@pytest.fixture(scope="module")
def suite():
    return load_suite()


# Defects a real repo has in its own settings: never switched on by the harness.
CONFIG_DEFECTS = {"lr_too_high", "lr_too_low", "fp_overflow", "overfit_capacity"}


def test_every_cause_on_both_programs_and_eight_healthy_controls(suite):
    causes = {(s.program, s.expected.cause) for s in suite.scenarios}
    for cause in CAUSES - {"healthy"}:
        assert ("lm", cause) in causes, cause
        if cause != "router_imbalance":  # MoE-only
            assert ("digits", cause) in causes, cause
    healthy = [s for s in suite.scenarios if s.expected.cause == "healthy"]
    assert len(healthy) >= 8 and len({(s.program, s.config.get("seed")) for s in healthy}) >= 8
    assert {s.split for s in suite.scenarios} == {"selection", "heldout"}
    for s in suite.scenarios:
        assert s.harness is None or s.harness["kind"] == s.expected.cause, s.id
        if s.expected.cause in CONFIG_DEFECTS:  # the defect is the run's own setting
            assert s.harness is None and s.config, s.id
        if s.expected.cause == "healthy":
            assert s.harness is None and not s.remedies
        elif s.expected.cause != "code_error":  # a code change: no knob fixes it
            assert s.remedies, s.id


def test_no_fault_switch_in_any_file_the_agent_can_edit(suite, tmp_path):
    """Scenario configs are the run's settings only; harness faults travel in the environment,
    and the one patch guard refuses any remedy that touches them."""
    from experiments.faults.builder import write_config
    from workbench.supervisor.patches import touches_harness

    for sc in suite.scenarios:
        text = write_config(tmp_path, suite, sc).read_text()
        assert "faults" not in text and "WORKBENCH_HARNESS" not in text, sc.id
        env = harness_env(sc)
        assert (sc.harness is None) == (env == {}), sc.id
        for r in sc.remedies:
            assert not touches_harness(r.patch), (sc.id, r.id)


def test_every_finding_kind_is_expected_in_both_splits(suite):
    # Otherwise a kind has no F1 on a split and the doctor is never scored on it there.
    from experiments.faults.suite import FINDING_KINDS

    for split in ("selection", "heldout"):
        seen = {k for s in suite.scenarios if s.split == split for k in s.expected.findings}
        assert seen == FINDING_KINDS, (split, sorted(FINDING_KINDS - seen))


def test_every_remedy_patch_yields_a_valid_config(suite):
    from workbench.supervisor.patches import apply_ops

    for sc in suite.scenarios:
        base = scenario_config(suite, sc)
        for remedy in sc.remedies:
            patched = apply_ops(base, remedy.patch)
            assert patched != base, (sc.id, remedy.id)
            parse_config(sc.program, patched, source=f"{sc.id}+{remedy.id}")


def test_unknown_ids_are_rejected(suite):
    with pytest.raises(SuiteError, match="nope"):
        select(suite, ["lm-healthy-a", "nope"])


def test_suite_make_runs_a_divergence_and_a_healthy_scenario(tmp_path):
    res = subprocess.run(
        [
            sys.executable, "-m", "workbench.cli.main", "suite", "make", "faults",
            "--out", str(tmp_path), "--only", "digits-lr-too-high,digits-healthy-a",
            "--jobs", "2", "--json",
        ],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr[-2000:]
    out = json.loads(res.stdout)
    assert len(out["run_ids"]) == 2
    by_id = {r["scenario"]: r for r in out["runs"]}
    assert by_id["digits-healthy-a"]["status"] == "FINISHED"

    from mlflow.tracking import MlflowClient

    client = MlflowClient(out["tracking_uri"])
    div = client.get_run(by_id["digits-lr-too-high"]["run_id"])
    assert div.data.tags["workbench.scenario"] == "digits-lr-too-high"
    assert json.loads(div.data.tags["workbench.expected"])["cause"] == "lr_too_high"
    loss = sorted((m.step, m.value) for m in client.get_metric_history(div.info.run_id, "loss"))
    best = min(v for s, v in loss)
    assert any(v != v or v > 3 * best for s, v in loss if s > 50)  # NaN or far higher
    assert any(k.startswith("system/") for k in div.data.metrics)
