"""The shipped fault suite: coverage, valid remedies, and `workbench suite make` end to end."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from experiments.faults.suite import (
    CAUSES,
    REPO_CONFIG,
    REPO_HOOKS,
    SuiteError,
    harness_env,
    load_suite,
    scenario_code,
    scenario_config,
    select,
)
from trainer.config import parse_config


@pytest.fixture(scope="module")
def suite():
    return load_suite()


# Defects a real repo has in its own settings: never switched on by the harness.
CONFIG_DEFECTS = {"lr_too_high", "lr_too_low", "fp_overflow", "overfit_capacity"}
# What only a harness can bring about (a process that blocks, a memory budget, a slow reader).
HARNESS_ONLY = {"oom", "hung_process", "slow_io"}


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
        # Every other defect is the repo's own: in its settings or in its code.
        assert (s.harness is not None) == (s.expected.cause in HARNESS_ONLY), s.id
        if s.expected.cause in CONFIG_DEFECTS:  # the defect is the run's own setting
            assert s.harness is None and s.code is None and s.config, s.id
        if s.expected.cause == "healthy":
            assert s.harness is None and not s.remedies
        elif s.expected.cause != "code_error":  # a code change: no knob fixes it
            assert s.remedies, s.id


def test_no_file_of_any_scenario_repo_holds_a_harness_switch(suite, tmp_path):
    """A scenario's repo (what the agent may edit) holds the run's settings and its own code,
    the defect included, and no harness switch; harness faults travel in the environment, and
    the one patch guard refuses a patch of the repo that would touch them."""
    from experiments.faults.builder import write_repo
    from trainer.faults import HARNESS_ENV, HARNESS_FILE_ENV
    from workbench.supervisor.patches import (
        HARNESS_KEYS,
        HarnessGuardError,
        guard,
        touches_harness,
    )

    markers = (HARNESS_ENV, HARNESS_FILE_ENV, "trainer.faults", "trainer/faults", "FaultPlan")
    for sc in suite.scenarios:
        repo = write_repo(tmp_path, suite, sc).parents[1]
        files = {p.relative_to(repo).as_posix(): p.read_text() for p in repo.rglob("*")
                 if p.is_file()}  # fmt: skip
        assert set(files) == {"workbench.yaml", REPO_CONFIG} | ({REPO_HOOKS} if sc.code else set())
        for rel, text in files.items():
            hit = [m for m in markers if m in text]
            assert not hit, (sc.id, rel, hit)
        cfg = yaml.safe_load(files[REPO_CONFIG])
        assert not set(cfg) & set(HARNESS_KEYS), sc.id
        if sc.code:  # the code defect is the repo's file, named by the repo's own config
            assert cfg["hooks"] == REPO_HOOKS and files[REPO_HOOKS] == scenario_code(sc)
        else:
            assert cfg["hooks"] is None, sc.id
        env = harness_env(sc)
        assert (sc.harness is None) == (env == {}), sc.id
        for r in sc.remedies:
            assert not touches_harness(r.patch), (sc.id, r.id)
        with pytest.raises(HarnessGuardError):  # switching the harness on from the repo
            guard(files, {**files, REPO_CONFIG: files[REPO_CONFIG] + f"# {HARNESS_ENV}=[]\n"})


def test_a_config_used_outside_the_repo_carries_the_same_code(suite, tmp_path, monkeypatch):
    # A remedy's rerun (workbench.rl.outcomes) trains scenario_config outside the scenario's
    # repo: its hooks path must find the same code from any working directory.
    monkeypatch.chdir(tmp_path)
    for sc in (s for s in suite.scenarios if s.code):
        hooks = scenario_config(suite, sc)["hooks"]
        assert Path(hooks).is_absolute() and Path(hooks).read_text() == scenario_code(sc), sc.id


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
