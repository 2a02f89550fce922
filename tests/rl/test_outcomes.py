"""FixOutcomes for real: a one-scenario suite is built (a short digits run that crashes out of
memory under the harness's budget), then a remedy is rerun — in the same harness world — and
verified against it, once; the second ask is a cache hit."""

from __future__ import annotations

from pathlib import Path

import yaml

from experiments.faults.builder import build
from experiments.faults.suite import load_suite
from workbench.rl.outcomes import FixOutcomes, canonical_patch

SUITE = {
    "name": "tiny",
    "stall_timeout_s": 60,
    "run_timeout_s": 600,
    "defaults": {
        "digits": {
            "steps": 30,
            "batch_size": 32,
            "eval_interval": 5,
            "model": {"arch": "mlp", "hidden": 64, "depth": 2},
            "optimizer": {"lr": 0.003, "warmup_steps": 2, "grad_clip": 1.0},
        }
    },
    "scenarios": [
        {
            "id": "digits-crash",
            "program": "digits",
            "harness": {"kind": "oom", "start_step": 15, "budget_mb": 0.22, "growth": 4},
            "expected": {"findings": ["crash"], "cause": "oom"},
            "split": "selection",
        }
    ],
}


def test_a_remedy_is_rerun_verified_once_and_then_read_from_the_cache(tmp_path):
    suite_file = tmp_path / "suite.yaml"
    suite_file.write_text(yaml.safe_dump(SUITE))
    suite = load_suite(suite_file)
    store = tmp_path / "store"
    (orig,) = build(suite, suite.scenarios, store, jobs=1)
    assert orig.status == "FAILED"

    fo = FixOutcomes(tmp_path / "cache", suite_file=suite_file, original_store=store)
    remove_bug = [{"key": "batch_size", "op": "mul", "value": 0.5}]
    out = fo.outcome("digits-crash", remove_bug)
    assert out.fixed and out.reason == "verified" and out.seconds > 0, out
    assert out.best_eval is not None and out.best_eval <= out.original_best * 1.01
    assert out.patch == canonical_patch(remove_bug) and fo.measured == 1

    # measured once: a second ask, or another process's FixOutcomes on the same folder, reads it
    assert fo.outcome("digits-crash", [{"op": "mul", "key": "batch_size", "value": 0.5}]) == out
    other = FixOutcomes(tmp_path / "cache", suite_file=suite_file, original_store=store)
    assert other.outcome("digits-crash", remove_bug) == out and other.measured == 0
    assert fo.measured == 1

    # what the suite cannot express fails without running anything
    code = fo.outcome("digits-crash", [])
    bad = fo.outcome("digits-crash", [{"key": "optimizer.nope", "op": "set", "value": 1}])
    rigged = fo.outcome("digits-crash", [{"key": "faults", "op": "delete"}])  # the one guard
    assert not code.fixed and "code change" in code.reason
    assert not bad.fixed and "not applicable" in bad.reason
    assert not rigged.fixed and "harness" in rigged.reason
    assert fo.measured == 1 and len(fo.all()) == 4
    runs = list((tmp_path / "cache" / "runs" / "configs").iterdir())
    assert len(runs) == 1 and Path(runs[0]).suffix == ".yaml"
