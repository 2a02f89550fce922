"""``workbench diagnose | watch | report`` end to end on a tmp MLflow store."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import numpy as np
import pytest
from typer.testing import CliRunner

from workbench.cli.main import app

RNG = np.random.default_rng(1)
N = 200
STEPS = np.arange(N)


def loss(n=N):
    return 3 * np.exp(-np.arange(n) / 40) + 1 + 0.02 * RNG.standard_normal(n)


def cli(*args: str):
    res = CliRunner().invoke(app, list(args), catch_exceptions=True)
    return res


@pytest.fixture
def runs(store):
    healthy = store.log_run({"train/loss": (STEPS, loss()), "grad_norm": (STEPS, np.ones(N))})
    x = loss()
    x[120:] = np.nan
    nan = store.log_run(
        {"train/loss": (STEPS, x), "grad_norm": (STEPS, np.ones(N))}, params={"precision": "bf16"}
    )
    oom = store.log_run(
        {"train/loss": (STEPS[:80], loss(80))},
        status="FAILED",
        log='step 79\nTraceback (most recent call last):\n  File "lm.py", line 3\ntorch.OutOfMemoryError: CUDA out of memory.\n',
    )
    return store, {"healthy": healthy, "nan": nan, "oom": oom}


def test_diagnose_json_schema_single_and_batch(runs):
    store, ids = runs
    res = cli("diagnose", ids["oom"], "--tracking-uri", store.uri, "--json")
    assert res.exit_code == 0, res.output
    one = json.loads(res.stdout)
    assert set(one) == {"run_id", "status", "findings", "diagnosis", "remedies", "note"}
    assert one["status"] == "failing"
    assert set(one["findings"][0]) == {
        "kind",
        "metric",
        "step",
        "severity",
        "evidence",
        "after",
        "context",
        "at_ms",
    }
    assert set(one["diagnosis"]) >= {"cause", "confidence", "summary", "evidence"}
    assert any("log:" in e for e in one["diagnosis"]["evidence"])
    assert one["diagnosis"]["cause"] == "oom"
    assert set(one["remedies"][0]) == {"id", "description", "patch"}
    assert one["remedies"][0]["patch"][0]["key"] == "batch_size"

    res = cli("diagnose", ids["healthy"], ids["nan"], "--tracking-uri", store.uri, "--json")
    many = json.loads(res.stdout)
    assert [v["status"] for v in many] == ["healthy", "failing"]
    assert many[0]["diagnosis"] is None and many[0]["findings"] == [] and many[0]["remedies"] == []
    assert many[1]["findings"][0]["kind"] == "nan_inf" and many[1]["findings"][0]["step"] == 120


def test_diagnose_experiment_and_a_missing_run_in_a_batch(runs):
    store, ids = runs
    res = cli("diagnose", "--experiment", "exp", "--tracking-uri", store.uri, "--json")
    verdicts = {v["run_id"]: v for v in json.loads(res.stdout)}
    assert set(verdicts) == set(ids.values())
    assert verdicts[ids["oom"]]["diagnosis"]["cause"] == "oom"
    # The other runs of the batch are still diagnosed; the missing one is one line, exit 2.
    res = cli(
        "diagnose",
        ids["healthy"],
        "ffffffffffffffffffffffffffffffff",
        "--tracking-uri",
        store.uri,
        "--json",
    )
    assert res.exit_code == 2
    assert [v["run_id"] for v in json.loads(res.stdout)] == [ids["healthy"]]


def test_errors_are_one_line_without_traceback(store):
    from workbench.errors import BadInputError

    store.experiment("empty")
    for args, needle in [
        (["diagnose", "--experiment", "empty"], "has no runs"),
        (["diagnose", "0123456789abcdef0123456789abcdef"], "not found"),
        (["diagnose", "--experiment", "exp", "some-run"], "not both"),
    ]:
        res = cli(*args, "--tracking-uri", store.uri)
        assert isinstance(res.exception, BadInputError) and needle in str(res.exception)
    # Through the console script: one line on stderr, exit 2, no traceback.
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "workbench.cli.main",
            "diagnose",
            "--experiment",
            "nope",
            "--tracking-uri",
            store.uri,
        ],
        capture_output=True,
        text=True,
    )
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert res.stderr.strip().splitlines() == ["error: experiment 'nope' not found at " + store.uri]


def test_watch_once_incremental_state_and_tags(runs, tmp_path):
    from mlflow.entities import Metric

    store, ids = runs
    live = store.log_run(
        {"train/loss": (STEPS, loss())}, status=None, t0_ms=int(time.time() * 1000) - N * 1000
    )
    state = tmp_path / "watch.pkl"
    res = cli(
        "watch",
        "--experiment",
        "exp",
        "--once",
        "--json",
        "--tracking-uri",
        store.uri,
        "--state",
        str(state),
        "--tag-runs",
    )
    assert res.exit_code == 0, res.output
    first = {v["run_id"]: v for v in json.loads(res.stdout)}
    assert first[live]["status"] == "healthy" and state.exists()
    assert store.client.get_run(ids["oom"]).data.tags["workbench.cause"] == "oom"
    assert store.client.get_run(ids["healthy"]).data.tags["workbench.cause"] == "healthy"
    # New points arrive: the live run now goes NaN; the next pass picks it up from the state.
    now = int(time.time() * 1000)
    store.client.log_batch(
        live, metrics=[Metric("train/loss", float("nan"), now + i, N + i) for i in range(5)]
    )
    res = cli(
        "watch",
        "--experiment",
        "exp",
        "--once",
        "--json",
        "--tracking-uri",
        store.uri,
        "--state",
        str(state),
    )
    second = {v["run_id"]: v for v in json.loads(res.stdout)}
    assert (
        second[live]["findings"][0]["kind"] == "nan_inf"
        and second[live]["findings"][0]["step"] == N
    )
    # Without --tag-runs nothing is written: the tag still holds the first pass's verdict.
    assert store.client.get_run(live).data.tags["workbench.cause"] == "healthy"


def test_watch_table_without_json(runs):
    store, _ = runs
    res = cli("watch", "--experiment", "exp", "--once", "--tracking-uri", store.uri)
    assert res.exit_code == 0 and "nan_inf" in res.stdout and "crash" in res.stdout


def test_report_writes_markdown_and_plots(runs, tmp_path):
    store, ids = runs
    out = tmp_path / "rep"
    res = cli(
        "report", ids["nan"], "--out", str(out), "--tracking-uri", store.uri, "--log-to-mlflow"
    )
    assert res.exit_code == 0, res.output
    md = (out / "report.md").read_text()
    assert "nan_inf" in md and "train_loss.png" in md.replace("train/loss", "train_loss")
    pngs = sorted(p.name for p in out.glob("*.png"))
    assert pngs and all((out / p).read_bytes()[:4] == b"\x89PNG" for p in pngs)
    arts = [a.path for a in store.client.list_artifacts(ids["nan"], "doctor_report")]
    assert "doctor_report/report.md" in arts


def _console(*args: str) -> subprocess.CompletedProcess:
    """Through the console script's own entry point (its exit-code mapping included)."""
    return subprocess.run(
        [sys.executable, "-m", "workbench.cli.main", *args], capture_output=True, text=True
    )


def test_a_missing_run_before_a_good_one_still_exits_2_from_the_console_script(runs):
    store, ids = runs
    missing = "ffffffffffffffffffffffffffffffff"
    res = _console("diagnose", missing, ids["healthy"], "--tracking-uri", store.uri, "--json")
    assert res.returncode == 2, (res.stdout, res.stderr)
    assert [v["run_id"] for v in json.loads(res.stdout)] == [ids["healthy"]]
    assert f"run {missing}" in res.stderr and "Traceback" not in res.stderr


def test_a_run_without_any_metric_is_no_data_not_healthy(store):
    empty = store.log_run({})
    crashed = store.log_run({}, status="FAILED", log="Traceback (most recent call last):\nboom\n")
    res = cli("diagnose", empty, crashed, "--tracking-uri", store.uri, "--json")
    assert res.exit_code == 0, res.output
    verdicts = json.loads(res.stdout)
    assert [v["status"] for v in verdicts] == ["no_data", "failing"]
    assert verdicts[0]["findings"] == [] and verdicts[0]["diagnosis"] is None
    res = cli("watch", "--experiment", "exp", "--once", "--tracking-uri", store.uri, "--json")
    assert {v["run_id"]: v["status"] for v in json.loads(res.stdout)}[empty] == "no_data"


def test_a_run_whose_loss_the_doctor_cannot_read_is_not_called_healthy(store):
    """Metrics under names no alias maps to a loss: not judged (no_data, with the names and
    where to map them), never "healthy"; one mapped name makes the same run judged."""
    rising = np.linspace(2.0, 9.0, N)  # would be a divergence if read
    odd = store.log_run({"objective value": (STEPS, rising), "gnorm": (STEPS, np.ones(N))})
    res = cli("diagnose", odd, "--tracking-uri", store.uri, "--json")
    v = json.loads(res.stdout)
    assert res.exit_code == 0 and v["status"] == "no_data" and v["findings"] == []
    assert "'objective value'" in v["note"] and "metrics.yaml" in v["note"]
    res = cli("diagnose", odd, "--tracking-uri", store.uri)
    assert "not judged" in res.stdout and "'objective value'" in res.stdout
    res = cli("watch", "--experiment", "exp", "--once", "--tracking-uri", store.uri, "--json")
    got = {w["run_id"]: w for w in json.loads(res.stdout)}[odd]
    assert got["status"] == "no_data" and got["note"] == v["note"]
    named = store.log_run({"train/loss": (STEPS, rising), "gnorm": (STEPS, np.ones(N))})
    v = json.loads(cli("diagnose", named, "--tracking-uri", store.uri, "--json").stdout)
    assert v["status"] == "failing" and v["note"] == ""
