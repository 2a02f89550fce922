"""Build the foreign suite: every run is one program in its own process, MLflow's way.

The harness creates each run itself (tags ``workbench.scenario``, ``workbench.split`` and, for
evaluation only, ``workbench.expected``) and hands it to the program through MLflow's standard
environment (``MLFLOW_RUN_ID``, ``MLFLOW_TRACKING_URI``): the program only calls
``mlflow.start_run()``.  Its output is kept as the run's ``logs/train.log`` artifact, as a
job runner would.  Every run gets the suite's memory limit, as a container would.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

from experiments.faults.builder import (
    BuiltRun,
    prepare_store,
    run_pool,
    run_watched,
    tracking_uri,
)
from experiments.foreign.suite import PROGRAMS, Run, Suite
from trainer.tags import Tag

EXPERIMENT = "foreign"
__all__ = ["EXPERIMENT", "build", "command", "tracking_uri"]


def command(run: Run) -> list[str]:
    cmd = [sys.executable, str(PROGRAMS / f"{run.program}.py")]
    for key, value in run.args.items():
        cmd += [f"--{key}", str(value)]
    return cmd


def _create_run(uri: str, suite: Suite, run: Run) -> str:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(EXPERIMENT)
    tags = {
        Tag.SCENARIO: run.id,
        Tag.SPLIT: suite.split_of(run),
        Tag.EXPECTED: json.dumps(run.label.model_dump(), sort_keys=True),
        "mlflow.runName": run.id,
    }
    return client.create_run(exp.experiment_id, tags=tags).info.run_id


def run_one(run: Run, suite: Suite, out: Path, uri: str) -> BuiltRun:
    from mlflow.tracking import MlflowClient

    run_id = _create_run(uri, suite, run)
    env = dict(os.environ, MLFLOW_RUN_ID=run_id, MLFLOW_TRACKING_URI=uri, OMP_NUM_THREADS="1")
    env.pop("MLFLOW_EXPERIMENT_NAME", None)
    env.pop("MLFLOW_EXPERIMENT_ID", None)
    log = out / "logs" / run.id / "train.log"  # the run's `logs/train.log` artifact
    # Each run works in a folder of its own, as a team's separate jobs do: programs write
    # checkpoints under fixed or per-second names (RecBole's saved/BPR-<time>.pth), which two
    # runs started side by side would otherwise share.
    cwd = out / "work" / run.id
    cwd.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    _, hung = run_watched(
        command(run),
        log,
        cwd,
        suite.stall_timeout_s,
        suite.run_timeout_s,
        env=env,
        memory_limit_mb=suite.memory_limit_mb,
    )
    client = MlflowClient(uri)
    client.log_artifact(run_id, str(log), "logs")
    status = client.get_run(run_id).info.status
    return BuiltRun(run.id, run.program, run_id, status, time.monotonic() - t0, hung)


def build(
    suite: Suite,
    runs: list[Run],
    out: Path,
    jobs: int = 1,
    on_done: Callable[[BuiltRun], None] | None = None,
) -> list[BuiltRun]:
    out = Path(out)
    uri = prepare_store(out, EXPERIMENT)
    return run_pool(lambda run: run_one(run, suite, out, uri), runs, jobs, on_done)
