"""Run lifecycle through the real CLI: a hung run left RUNNING, SIGTERM → KILLED, bad input."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys

import yaml
from trainer_helpers import history, log_text

from experiments.faults.builder import prepare_store, run_one
from experiments.faults.suite import Suite
from tests.waiting import blocked_on_a_lock, wait_until


def _cli(*args, **kw):
    return [sys.executable, "-m", "workbench.cli.main", *args]


def _client(uri):
    from mlflow.tracking import MlflowClient

    return MlflowClient(uri)


HUNG = {
    "id": "digits-hung",
    "program": "digits",
    "harness": {"kind": "hung_process", "start_step": 15},
    "expected": {"findings": ["stalled"], "cause": "hung_process"},
    "split": "selection",
}


def test_hung_run_is_killed_by_the_builder_and_stays_running_without_new_metrics(tmp_path):
    suite = Suite.model_validate(
        {
            "name": "t",
            "stall_timeout_s": 15,
            "run_timeout_s": 240,
            "defaults": {"digits": {"steps": 40, "eval_interval": 5}},
            "scenarios": [HUNG],
        }
    )
    uri = prepare_store(tmp_path)
    built = run_one(suite.scenarios[0], suite, tmp_path, uri)
    assert built.killed_as_hung
    [found] = _client(uri).search_runs(
        [_client(uri).get_experiment_by_name("faults").experiment_id]
    )
    assert found.info.status == "RUNNING"  # like a real hung job: nobody closed the run
    steps = [s for s, _ in history(uri, found.info.run_id, "loss")]
    assert steps and max(steps) == 14  # nothing logged from the hang on
    assert found.data.tags["workbench.scenario"] == "digits-hung"
    assert "hung_process" in found.data.tags["workbench.expected"]
    assert "faults.0.kind" not in found.data.params


def test_sigterm_marks_the_run_killed_and_uploads_its_log(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        yaml.safe_dump(
            {
                "steps": 40,
                "eval_interval": 5,
            }
        )
    )
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    prepare_store(tmp_path)  # creates the store (experiment "faults") up front
    env = dict(
        os.environ,
        MLFLOW_EXPERIMENT_NAME="faults",
        WORKBENCH_HARNESS_FAULTS='[{"kind": "hung_process", "start_step": 10}]',
    )
    log = tmp_path / "out.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            _cli(
                "train",
                "digits",
                "--config",
                str(cfg),
                "--tracking-uri",
                uri,
                "--no-system-metrics",
            ),
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
        )
        run_id = wait_until(lambda: _the_run(uri, proc, log), 180, "the run")
        # Step 9 (the last before the hang) has reached the store, flushed after the step, and
        # the trainer's main thread waits on a lock: it is blocked in the stuck read of step 10.
        wait_until(
            lambda: _logged_to(uri, run_id, 9) and blocked_on_a_lock(proc.pid),
            180,
            "the stuck read",
        )
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 130
    exp = _client(uri).get_experiment_by_name("faults")
    [found] = _client(uri).search_runs([exp.experiment_id])
    assert found.info.status == "KILLED"
    assert "run killed" in log_text(uri, found.info.run_id, tmp_path)
    assert found.data.tags["workbench.launch"].startswith("workbench train digits --config ")


def _the_run(uri: str, proc: subprocess.Popen, log) -> str | None:
    assert proc.poll() is None, log.read_text()  # died before it hung
    exp = _client(uri).get_experiment_by_name("faults")
    runs = _client(uri).search_runs([exp.experiment_id])
    return runs[0].info.run_id if runs else None


def _logged_to(uri: str, run_id: str, step: int) -> bool:
    return any(s >= step for s, _ in history(uri, run_id, "loss"))


def test_invalid_config_is_one_line_naming_key_and_value(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("optimizer:\n  lr: -1\n")
    res = subprocess.run(_cli("train", "lm", "--config", str(cfg)), capture_output=True, text=True)
    assert res.returncode == 2
    assert "optimizer.lr = -1" in res.stderr and "Traceback" not in res.stderr


def test_unreachable_tracking_server_is_retried_then_a_clear_error(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    cfg = tmp_path / "c.yaml"
    cfg.write_text("steps: 5\n")
    res = subprocess.run(
        _cli("train", "digits", "--config", str(cfg), "--tracking-uri", f"http://127.0.0.1:{port}"),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 1
    assert "unreachable after 4 attempts" in res.stderr and "Traceback" not in res.stderr
