"""The shipped fault suite: coverage, valid remedies, and `workbench suite make` end to end."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from experiments.faults.suite import (
    PatchOp,
    SuiteError,
    apply_patch,
    load_suite,
    scenario_config,
    select,
)
from trainer.config import parse_config
from trainer.faults import FAULT_KINDS


@pytest.fixture(scope="module")
def suite():
    return load_suite()


def test_every_fault_on_both_programs_and_eight_healthy_controls(suite):
    kinds = {(s.program, s.fault["kind"]) for s in suite.scenarios if s.fault}
    for kind in FAULT_KINDS:
        assert ("lm", kind) in kinds, kind
        if kind != "router_imbalance":  # MoE-only
            assert ("digits", kind) in kinds, kind
    healthy = [s for s in suite.scenarios if s.expected.cause == "healthy"]
    assert len(healthy) >= 8 and len({(s.program, s.config.get("seed")) for s in healthy}) >= 8
    assert {s.split for s in suite.scenarios} == {"selection", "heldout"}
    for s in suite.scenarios:
        assert (s.fault is None) == (s.expected.cause == "healthy")
        assert s.fault is None or s.fault["kind"] == s.expected.cause
        assert s.fault is None or s.remedies, s.id


def test_every_finding_kind_is_expected_in_both_splits(suite):
    # Otherwise a kind has no F1 on a split and the doctor is never scored on it there.
    from experiments.faults.suite import FINDING_KINDS

    for split in ("selection", "heldout"):
        seen = {k for s in suite.scenarios if s.split == split for k in s.expected.findings}
        assert seen == FINDING_KINDS, (split, sorted(FINDING_KINDS - seen))


def test_every_remedy_patch_yields_a_valid_config(suite):
    for sc in suite.scenarios:
        base = scenario_config(suite, sc)
        for remedy in sc.remedies:
            patched = apply_patch(base, remedy.patch)
            parse_config(sc.program, patched, source=f"{sc.id}+{remedy.id}")


def test_apply_patch_ops():
    cfg = {"optimizer": {"lr": 0.1}, "batch_size": 8, "faults": [{"kind": "oom"}]}
    out = apply_patch(
        cfg,
        [
            PatchOp(key="optimizer.lr", op="mul", value=0.5),
            PatchOp(key="batch_size", op="mul", value=0.5),
            PatchOp(key="faults", op="delete"),
            PatchOp(key="data.validate", op="set", value=True),
        ],
    )
    assert out == {"optimizer": {"lr": 0.05}, "batch_size": 4, "data": {"validate": True}}
    assert cfg["batch_size"] == 8  # the input is not modified


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
    before = min(v for s, v in loss if 80 <= s < 100)
    assert any(v != v or v > 3 * before for s, v in loss if s >= 100)  # NaN or far higher
    assert any(k.startswith("system/") for k in div.data.metrics)
