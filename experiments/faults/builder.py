"""Build the fault suite: every scenario is a real training run in its own process.

Runs go into one MLflow store under ``out`` (``sqlite:///OUT/mlflow.db``, artifacts in
``OUT/artifacts``), tagged ``workbench.scenario`` and — for evaluation only —
``workbench.expected``. Each scenario trains from its own repo, ``OUT/repos/<id>/`` (what an
agent may edit): ``configs/train.yaml`` holds the run's own settings and ``src/hooks.py`` its
own code, the defect in one of them; a harness fault reaches the process through its
environment (``harness_env``), never through a file of the repo. A run that prints nothing for
``stall_timeout_s`` is hung: it is killed with SIGKILL so that, like a real hung job, its
MLflow run stays RUNNING.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import yaml

from experiments.faults.suite import (
    REPO_CONFIG,
    REPO_HOOKS,
    Scenario,
    Suite,
    harness_env,
    scenario_code,
    scenario_config,
)
from model.files import atomic_write_text
from trainer.tags import Tag

EXPERIMENT = "faults"


@dataclass
class BuiltRun:
    scenario: str
    program: str
    run_id: str | None
    status: str  # the MLflow status after the build (RUNNING for a killed hung run)
    seconds: float
    killed_as_hung: bool = False

    def to_dict(self) -> dict:
        return asdict(self)


def tracking_uri(out: Path) -> str:
    return f"sqlite:///{out.resolve() / 'mlflow.db'}"


def prepare_store(out: Path, experiment: str = EXPERIMENT) -> str:
    """Create the store and experiment once, before children race to migrate the schema."""
    import logging

    from mlflow.tracking import MlflowClient

    logging.getLogger("mlflow").setLevel(logging.WARNING)
    out.mkdir(parents=True, exist_ok=True)
    uri = tracking_uri(out)
    client = MlflowClient(uri)
    if client.get_experiment_by_name(experiment) is None:
        client.create_experiment(
            experiment, artifact_location=(out / "artifacts").resolve().as_uri()
        )
    return uri


def write_repo(out: Path, suite: Suite, sc: Scenario) -> Path:
    """Write the scenario's repo ``out/repos/<id>/`` (config, own code, launch file); returns
    its config path. Runs start in the repo, so the config names its code relative to it."""
    repo = out / "repos" / sc.id
    code = scenario_code(sc)
    if code is not None:
        atomic_write_text(repo / REPO_HOOKS, code)
    launch = {
        "launch": f"workbench train {sc.program} --config {{config}}",
        "config": REPO_CONFIG,
        "env": {"WORKBENCH_TRAIN_THREADS": "1"},
    }
    atomic_write_text(repo / "workbench.yaml", yaml.safe_dump(launch, sort_keys=False))
    cfg = scenario_config(suite, sc, hooks=REPO_HOOKS if code is not None else None)
    return atomic_write_text(repo / REPO_CONFIG, yaml.safe_dump(cfg, sort_keys=False))


def train_command(program: str, config: Path, uri: str, tags: dict[str, str]) -> list[str]:
    """``workbench train PROGRAM`` as a subprocess, logging to ``uri`` with ``tags``."""
    cmd = [sys.executable, "-m", "workbench.cli.main", "train", program,
           "--config", str(config), "--tracking-uri", uri, "--json"]  # fmt: skip
    for key, value in tags.items():
        cmd += ["--tag", f"{key}={value}"]
    return cmd


def _command(sc: Scenario, config: Path, uri: str) -> list[str]:
    expected = json.dumps(sc.expected.model_dump(), sort_keys=True)
    tags = {
        Tag.SCENARIO: sc.id,
        Tag.EXPECTED: expected,
        Tag.SPLIT: sc.split,
    }
    return train_command(sc.program, config, uri, tags)


class _ProgressWatch:
    """Progress = new log output or CPU time spent. A hung process has neither.

    CPU time matters on a crowded machine: a slow run still burns CPU, a blocked one doesn't.
    """

    CPU_STEP_S = 0.5

    def __init__(self, pid: int, log_path: Path) -> None:
        import psutil

        self.proc = psutil.Process(pid)
        self.log_path = log_path
        self.size, self.cpu = -1, 0.0
        self.last_progress = time.monotonic()

    def _cpu(self) -> float:
        try:
            t = self.proc.cpu_times()
            return t.user + t.system
        except Exception:  # exited between polls
            return self.cpu

    def idle_for(self, now: float) -> float:
        size = self.log_path.stat().st_size
        cpu = self._cpu()
        if size != self.size or cpu - self.cpu >= self.CPU_STEP_S:
            self.size, self.cpu, self.last_progress = size, cpu, now
        return now - self.last_progress


def run_watched(
    cmd: list[str],
    log_path: Path,
    cwd: Path,
    stall_s: float,
    limit_s: float,
    harness_env: dict[str, str] | None = None,
    *,
    env: dict[str, str] | None = None,
    memory_limit_mb: int = 0,
) -> tuple[bool, bool]:
    """Run a training subprocess, SIGKILLing it when it makes no progress for ``stall_s`` or
    runs past ``limit_s`` (no handler runs: its MLflow run stays RUNNING).
    ``harness_env``: the harness's fault switch for this run (never in its config); ``env``:
    the child's MLflow environment (default: this suite's experiment, no tracking URI);
    ``memory_limit_mb``: an address-space limit, as a container's memory limit.
    Returns (killed, stalled)."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    if env is None:
        env = dict(os.environ, MLFLOW_EXPERIMENT_NAME=EXPERIMENT, WORKBENCH_TRAIN_THREADS="1")
        env.pop("MLFLOW_TRACKING_URI", None)
        env.pop("MLFLOW_RUN_ID", None)
    env = {**env, **(harness_env or {})}
    t0 = time.monotonic()
    killed = stalled = False
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            cmd,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=cwd,
            preexec_fn=_memory_limit(memory_limit_mb) if memory_limit_mb else None,
        )
        watch = _ProgressWatch(proc.pid, log_path)
        while proc.poll() is None:
            time.sleep(0.25)
            now = time.monotonic()
            idle = watch.idle_for(now)
            if idle > stall_s or now - t0 > limit_s:
                killed, stalled = True, idle > stall_s
                proc.send_signal(signal.SIGKILL)
                proc.wait()
    return killed, stalled


def _memory_limit(mb: int) -> Callable[[], None]:
    def apply() -> None:
        import resource

        resource.setrlimit(resource.RLIMIT_AS, (mb << 20, mb << 20))

    return apply


def run_one(sc: Scenario, suite: Suite, out: Path, uri: str) -> BuiltRun:
    config = write_repo(out, suite, sc)
    t0 = time.monotonic()
    _, hung = run_watched(
        _command(sc, config.resolve(), uri),
        out / "logs" / f"{sc.id}.log",
        config.parents[1],  # the repo: its config names its code relative to it
        suite.stall_timeout_s,
        suite.run_timeout_s,
        harness_env(sc),
    )
    return BuiltRun(sc.id, sc.program, None, "UNKNOWN", time.monotonic() - t0, hung)


def _resolve(uri: str, runs: list[BuiltRun]) -> None:
    """Fill in run ids and statuses from the store (the newest run of each scenario)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(EXPERIMENT)
    for r in runs:
        found = client.search_runs(
            [exp.experiment_id],
            filter_string=f"tags.`{Tag.SCENARIO}` = '{r.scenario}'",
            order_by=["attributes.start_time DESC"],
            max_results=1,
        )
        if found:
            r.run_id, r.status = found[0].info.run_id, found[0].info.status


def build(
    suite: Suite,
    scenarios: list[Scenario],
    out: Path,
    jobs: int = 2,
    on_done: Callable[[BuiltRun], None] | None = None,
) -> list[BuiltRun]:
    out = Path(out)
    uri = prepare_store(out)
    runs = run_pool(lambda sc: run_one(sc, suite, out, uri), scenarios, jobs, on_done)
    _resolve(uri, runs)
    return runs


def run_pool(
    one: Callable[[Any], BuiltRun],
    items: list[Any],
    jobs: int,
    on_done: Callable[[BuiltRun], None] | None = None,
) -> list[BuiltRun]:
    """``one(item)`` for every item, ``jobs`` at a time; ``on_done`` sees each as it ends."""
    lock = threading.Lock()

    def task(item: Any) -> BuiltRun:
        r = one(item)
        if on_done:
            with lock:
                on_done(r)
        return r

    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        return list(pool.map(task, items))
