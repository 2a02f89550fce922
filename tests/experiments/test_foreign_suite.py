"""The foreign suite: labels by program and split, no held-out run reaches tuning, and a
couple of tiny foreign runs built and scored end to end."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from experiments.foreign.suite import PROGRAMS, SUITE_FILE, load_suite, select

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def suite():
    return load_suite()


def test_programs_split_by_program_and_more_healthy_than_faulty(suite):
    assert len(suite.programs) >= 8 and set(suite.programs.values()) == {"selection", "heldout"}
    healthy = [r for r in suite.runs if r.label.cause == "healthy"]
    faulty = [r for r in suite.runs if r.label.cause != "healthy"]
    assert len(healthy) >= 20 and len(healthy) >= len(faulty)
    # the held-out split alone is big enough to report on: >= 3 programs, >= 20 healthy runs
    held = select(suite, None, "heldout")
    assert len({r.program for r in held}) >= 3
    assert sum(r.label.cause == "healthy" for r in held) >= 20
    for split in ("selection", "heldout"):
        runs = select(suite, None, split)
        assert any(r.label.cause == "healthy" for r in runs)
        assert any(r.label.cause != "healthy" for r in runs)
        assert {suite.split_of(r) for r in runs} == {split}
    for program in suite.programs:
        # a program's runs are all on one side: no program is both tuned on and held out
        assert len({suite.split_of(r) for r in suite.runs if r.program == program}) == 1
        assert (PROGRAMS / f"{program}.py").is_file()


def test_programs_never_import_the_doctor():
    for path in PROGRAMS.glob("*.py"):
        text = path.read_text()
        assert "workbench" not in text and "scaffold" not in text, path.name


def _log_run(client, exp, scenario, split, loss):
    run = client.create_run(
        exp,
        tags={
            "workbench.scenario": scenario,
            "workbench.split": split,
            "workbench.expected": json.dumps({"any_of": [], "allowed": [], "cause": "healthy"}),
        },
    )
    from mlflow.entities import Metric

    rid = run.info.run_id
    client.log_batch(rid, metrics=[Metric("loss", v, 0, i) for i, v in enumerate(loss)])
    client.set_terminated(rid)
    return rid


def test_tuning_never_reads_a_held_out_run(tmp_path, monkeypatch):
    """The tuning entry point diagnoses the selection split only; thresholds and tuning code
    name no held-out program or run."""
    from mlflow.tracking import MlflowClient

    from workbench.doctor import tune, watch

    suite = load_suite()
    sel = select(suite, None, "selection")[0]
    held = select(suite, None, "heldout")[0]
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = client.create_experiment("foreign", artifact_location=str(tmp_path / "artifacts"))
    loss = [2.0 / (1 + 0.05 * i) for i in range(60)]
    sel_id = _log_run(client, exp, sel.id, "selection", loss)
    held_id = _log_run(client, exp, held.id, "heldout", loss)

    judged: list[str] = []
    update = watch.Watcher._update

    def spy(self, st, *a, **kw):
        judged.append(st.info.run_id)
        return update(self, st, *a, **kw)

    monkeypatch.setattr(watch.Watcher, "_update", spy)
    res = tune.tuning_report(str(tmp_path))
    assert judged == [sel_id] and held_id not in judged
    assert [s["scenario"] for s in res["scores"]] == [sel.id]

    heldout_names = {p for p, split in suite.programs.items() if split == "heldout"}
    heldout_names |= {r.id for r in suite.runs if suite.split_of(r) == "heldout"}
    for path in [*(ROOT / "scaffold").glob("*.yaml"), Path(tune.__file__)]:
        text = path.read_text()
        assert not [n for n in heldout_names if n in text], path


def test_two_tiny_foreign_runs_built_and_scored(tmp_path):
    """A healthy per-epoch numpy run and a run that cannot allocate its evaluation: built the
    way the suite builds them, then scored (the allocation failure is `oom` from the log)."""
    from experiments.foreign.builder import build
    from experiments.foreign.suite import load_suite as load
    from workbench.doctor.evaluate import evaluate_suite

    spec = yaml.safe_load(SUITE_FILE.read_text())
    spec["memory_limit_mb"] = 2500
    spec["runs"] = [
        {
            "id": "keras-healthy-s0",
            "program": "keras_style",
            "args": {"seed": 0, "epochs": 12},
            "label": {"cause": "healthy"},
        },
        {
            "id": "hf-oom",
            "program": "hf_style",
            "args": {"tta_copies": 100000, "eval_steps": 8, "num_train_epochs": 1},
            "label": {"any_of": ["crash"], "cause": "oom"},
        },
    ]
    path = tmp_path / "suite.yaml"
    path.write_text(yaml.safe_dump(spec))
    suite = load(path)
    built = build(suite, suite.runs, tmp_path / "store", jobs=2)
    assert {r.scenario: r.status for r in built} == {
        "keras-healthy-s0": "FINISHED",
        "hf-oom": "FAILED",
    }
    # each run worked in a folder of its own (no checkpoint name two runs could share)
    assert {p.name for p in (tmp_path / "store" / "work").iterdir()} == {
        "keras-healthy-s0",
        "hf-oom",
    }
    res = evaluate_suite(tmp_path / "store", split="all", suite="foreign", suite_file=path)
    by_id = {s["scenario"]: s for s in res["scores"]}
    assert by_id["keras-healthy-s0"]["predicted_kinds"] == []
    assert by_id["hf-oom"]["predicted_kinds"] == ["crash"]
    assert by_id["hf-oom"]["predicted_cause"] == "oom"
    assert res["false_alarms"] == 0 and res["cause_accuracy"] == 1.0
    # a label refined from the raw histories after the build is the one scored (the tag the
    # build wrote is only a record of the label it had then)
    spec["runs"][1]["label"] = {"any_of": ["stalled", "crash"], "cause": "code_error"}
    path.write_text(yaml.safe_dump(spec))
    res = evaluate_suite(tmp_path / "store", split="all", suite="foreign", suite_file=path)
    oom = {s["scenario"]: s for s in res["scores"]}["hf-oom"]
    assert oom["any_of"] == ["stalled", "crash"] and oom["expected_cause"] == "code_error"
    assert not oom["cause_ok"] and oom["kinds_ok"]


def test_programs_share_one_set_up_helper(monkeypatch):
    """Flags typed by their defaults (a float flag given ``0`` is ``0.0``), dests kept, and the
    same seed gives the same generator."""
    import sys

    monkeypatch.syspath_prepend(str(PROGRAMS))
    import _setup

    monkeypatch.setattr(sys, "argv", ["p", "--training.max_norm", "0", "--model.dim", "96"])
    args = _setup.parse_flags(
        {"--training.max_norm": ("max_norm", 1.0), "--model.dim": ("dim", 64), "--name": "x"}
    )
    assert args.max_norm == 0.0 and isinstance(args.max_norm, float)
    assert args.dim == 96 and args.name == "x"
    a, b = _setup.seeded(3, torch=False), _setup.seeded(3, torch=False)
    assert a.integers(0, 1 << 30) == b.integers(0, 1 << 30)
    for path in (p for p in PROGRAMS.glob("*.py") if p.name != "_setup.py"):
        text = path.read_text()
        assert "import _setup" in text and "argparse.ArgumentParser" not in text, path.name
