"""Launch a (patched) training run from a repo's ``workbench.yaml``, idempotently.

``workbench.yaml`` at the repo root says how to start a run::

    launch: "workbench train lm --config {config}"
    config: configs/train.yaml
    timeout: 600
    env: {OMP_NUM_THREADS: "1"}

The child runs in its own process group (``workbench.runs.sandbox``); its run is found by the
``workbench.repo`` tag the trainer sets (the worktree path, unique per attempt) and then tagged
with its parent run, branch and episode. A launch record (pid, start time) is written as soon as
the child starts: a supervisor killed mid-run finds it on resume, waits for the still-running
child and adopts its run — it never starts a second one.
"""

from __future__ import annotations

import json
import re
import shlex
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from model.files import atomic_write_text
from trainer.tags import Tag
from workbench.errors import BadInputError, WorkbenchError
from workbench.runs import sandbox
from workbench.supervisor.patches import check_repo_path

TERMINAL = ("FINISHED", "FAILED", "KILLED")


class RepoSpec(BaseModel):
    """The parsed ``workbench.yaml``."""

    model_config = ConfigDict(extra="allow")

    launch: str
    config: str = "configs/train.yaml"
    timeout: float = Field(default=600.0, gt=0)
    env: dict[str, str] = Field(default_factory=dict)


def read_repo_spec(root: Path) -> RepoSpec:
    path = Path(root) / "workbench.yaml"
    if not path.exists():
        raise BadInputError(f"{root}: no workbench.yaml (it says how to launch a run)")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
        raw["env"] = {str(k): str(v) for k, v in (raw.get("env") or {}).items()}
        spec = RepoSpec.model_validate(raw)
    except (yaml.YAMLError, ValidationError, AttributeError) as exc:
        raise BadInputError(f"{path}: invalid workbench.yaml: {str(exc).splitlines()[0]}") from None
    check_repo_path(spec.config)
    return spec


def launch_argv(spec: RepoSpec, config: str) -> list[str]:
    """Split the launch template into argv (no shell) and fill ``{config}`` per word.

    ``workbench`` and ``python`` run with this interpreter so the child sees the same install.
    """
    argv = [w.replace("{config}", check_repo_path(config)) for w in shlex.split(spec.launch)]
    if not argv:
        raise BadInputError("workbench.yaml: launch is empty")
    if argv[0] == "workbench":
        argv = [sys.executable, "-m", "workbench.cli.main", *argv[1:]]
    elif argv[0] in ("python", "python3"):
        argv = [sys.executable, *argv[1:]]
    return argv


def absolute_tracking_uri(uri: str) -> str:
    """The child runs in another directory: make ``sqlite:///rel.db`` / plain paths absolute."""
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        return "sqlite:///" + str(Path(uri[len("sqlite:///") :]).resolve())
    if "://" not in uri:
        return Path(uri).resolve().as_uri()
    return uri


@dataclass
class LaunchResult:
    run_id: str
    status: str  # MLflow status after the child ended
    returncode: int
    timed_out: bool
    log_path: str
    reused: bool = False  # True when a resumed step found the run already launched
    extra: dict = field(default_factory=dict)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text)[:120]


def find_episode_run(client, experiment_id: str, episode_key: str):
    """A run already tagged with this episode (a finished, earlier launch of the same step)."""
    runs = client.search_runs(
        [experiment_id],
        filter_string=f"tags.`{Tag.EPISODE}` = '{episode_key}'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    return runs[0] if runs else None


def find_child_run(client, experiment_id: str, worktree: Path, started_ms: int):
    """The run our child created: the trainer tags ``workbench.repo`` with the git toplevel of
    its config, which is the worktree — unique per attempt."""
    runs = client.search_runs(
        [experiment_id],
        filter_string=f"tags.`{Tag.REPO}` = '{Path(worktree).resolve()}' "
        f"and attributes.start_time >= {int(started_ms) - 2000}",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    return runs[0] if runs else None


def relaunch(
    *,
    worktree: Path,
    config: str,
    tracking_uri: str,
    experiment_id: str,
    experiment_name: str,
    episode_key: str,
    tags: dict[str, str],
    home: Path,
    backend: str = "local",
    timeout_s: float | None = None,
    progress=None,
) -> LaunchResult:
    """Start the run for ``episode_key`` — or find it again after a crash — and wait for it."""
    from mlflow.tracking import MlflowClient

    if not re.match(r"^[A-Za-z0-9_.:/-]+$", episode_key):
        raise BadInputError(f"refused episode key {episode_key!r}")
    spec = read_repo_spec(worktree)
    uri = absolute_tracking_uri(tracking_uri)
    client = MlflowClient(uri)
    launches = Path(home) / "launches"
    launches.mkdir(parents=True, exist_ok=True)
    record_path = launches / f"{_slug(episode_key)}.json"
    record = json.loads(record_path.read_text()) if record_path.exists() else {}
    tags = {**tags, Tag.EPISODE: episode_key}
    timeout = timeout_s or spec.timeout

    run = find_episode_run(client, experiment_id, episode_key)
    if run is not None and run.info.status in TERMINAL:
        return LaunchResult(run.info.run_id, run.info.status, 0, False, record.get("log", ""), True)
    if record.get("pid"):
        # A previous supervisor started this launch and died; its child runs on in its own
        # session. Wait for it and adopt its run instead of starting a second one.
        rc, timed_out = sandbox.wait_pid(record["pid"], timeout)
        run = find_child_run(client, experiment_id, worktree, record["started_ms"])
        if run is not None:
            return _finish(client, run.info.run_id, rc, timed_out, record["log"], tags, True)

    log_path = launches / f"{_slug(episode_key)}.log"
    env = {
        **spec.env,
        "MLFLOW_TRACKING_URI": uri,
        "MLFLOW_EXPERIMENT_NAME": experiment_name,
        "WORKBENCH_EPISODE": episode_key,
        "WORKBENCH_RUN_TAGS": json.dumps(tags),
    }
    box = sandbox.SandboxSpec(
        argv=launch_argv(spec, config),
        cwd=Path(worktree),
        env=env,
        timeout_s=timeout,
        network=not uri.startswith(("sqlite:", "file:")),
        log_path=log_path,
    )
    started_ms = int(time.time() * 1000)
    if backend == "docker":
        result = sandbox.run_docker(box)
        rc, timed_out = result.returncode, result.timed_out
    else:
        proc = sandbox.start_local(box)
        _write_json(record_path, {"pid": proc.pid, "started_ms": started_ms, "log": str(log_path)})
        if progress:
            progress(f"patched run started (pid {proc.pid})")
        rc, timed_out = sandbox.wait_pid(proc.pid, timeout, proc)
    run = find_child_run(client, experiment_id, worktree, started_ms)
    if run is None:
        tail = (
            log_path.read_text(errors="replace").strip().splitlines()[-1:]
            if log_path.exists()
            else []
        )
        raise LaunchError(f"the patched run did not start (exit {rc}): {' '.join(tail)[:200]}")
    return _finish(client, run.info.run_id, rc, timed_out, str(log_path), tags, False)


class LaunchError(WorkbenchError):
    pass


def _finish(client, run_id, rc, timed_out, log, tags, reused) -> LaunchResult:
    # The child's final status write may trail its exit by a moment.
    status = client.get_run(run_id).info.status
    for _ in range(20):
        if status in TERMINAL:
            break
        time.sleep(0.1)
        status = client.get_run(run_id).info.status
    if status not in TERMINAL:  # the child died without closing its run
        status = "KILLED" if timed_out or rc < 0 else ("FINISHED" if rc == 0 else "FAILED")
        client.set_terminated(run_id, status)
    for key, value in tags.items():  # parent run, branch, episode: set by us, not the child
        client.set_tag(run_id, key, value)
    return LaunchResult(run_id, status, rc, timed_out, log, reused=reused)


def _write_json(path: Path, data: dict) -> None:
    atomic_write_text(path, json.dumps(data))
