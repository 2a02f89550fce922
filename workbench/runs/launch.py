"""Launch a (patched) training run the MLflow way, idempotently.

``workbench.yaml`` at the repo root says how to start a run (or ``workbench fix --launch "CMD
{config}" --config PATH`` does)::

    launch: "python train.py --config {config}"
    config: configs/train.yaml
    timeout: 600
    env: {OMP_NUM_THREADS: "1"}

The launcher creates the child's MLflow run itself (parent run, branch and episode tags) and
hands it over through MLflow's standard environment (``MLFLOW_RUN_ID``, ``MLFLOW_TRACKING_URI``,
``MLFLOW_EXPERIMENT_NAME``), so any program that calls ``mlflow.start_run()`` logs into it; no
``workbench.*`` tag is asked of the program. The child runs in its own process group
(``workbench.runs.sandbox``). A launch record (pid, run id, start time) is written as soon as
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


NO_SPEC = (
    "{root}: no workbench.yaml; write one with two lines, "
    'launch: "python train.py --config {{config}}" and config: path/to/config.yaml '
    '(or pass --launch "CMD {{config}}" --config PATH)'
)


def repo_spec(root: Path, launch: str | None = None, config: str | None = None) -> RepoSpec:
    """The repo's launch spec: ``--launch``/``--config`` given on the command line win over
    (or stand in for) ``workbench.yaml``."""
    path = Path(root) / "workbench.yaml"
    if launch is None and not path.exists():
        raise BadInputError(NO_SPEC.format(root=root))
    if launch is not None and not path.exists():
        if not config:
            raise BadInputError("--launch needs --config PATH (the config file the command reads)")
        spec = RepoSpec(launch=launch, config=config)
        check_repo_path(spec.config)
        return spec
    spec = read_repo_spec(root)
    update = {k: v for k, v in (("launch", launch), ("config", config)) if v}
    spec = spec.model_copy(update=update)
    check_repo_path(spec.config)
    return spec


def read_repo_spec(root: Path) -> RepoSpec:
    path = Path(root) / "workbench.yaml"
    if not path.exists():
        raise BadInputError(NO_SPEC.format(root=root))
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
    launch: str | None = None,
) -> LaunchResult:
    """Start the run for ``episode_key`` — or find it again after a crash — and wait for it.

    ``launch``: the attempt's launch command (a flag edit changes it), else workbench.yaml's.
    """
    from mlflow.tracking import MlflowClient

    if not re.match(r"^[A-Za-z0-9_.:/-]+$", episode_key):
        raise BadInputError(f"refused episode key {episode_key!r}")
    spec = repo_spec(worktree, launch, config)
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
    if record.get("pid") and record.get("run_id"):
        # A previous supervisor started this launch and died; its child runs on in its own
        # session. Wait for it and adopt its run instead of starting a second one.
        rc, timed_out = sandbox.wait_pid(record["pid"], timeout)
        return _finish(client, record["run_id"], rc, timed_out, record["log"], tags, True)

    log_path = launches / f"{_slug(episode_key)}.log"
    # The child's run, created here: the program only has to call mlflow.start_run().
    run_id = client.create_run(experiment_id, tags=tags).info.run_id
    env = {
        **spec.env,
        "MLFLOW_TRACKING_URI": uri,
        "MLFLOW_EXPERIMENT_NAME": experiment_name,
        "MLFLOW_EXPERIMENT_ID": experiment_id,
        "MLFLOW_RUN_ID": run_id,
        "WORKBENCH_EPISODE": episode_key,
    }
    box = sandbox.SandboxSpec(
        argv=launch_argv(spec, config),
        cwd=Path(worktree),
        env=env,
        timeout_s=timeout,
        network=not uri.startswith(("sqlite:", "file:")),
        log_path=log_path,
    )
    started = time.monotonic()
    if backend == "docker":
        result = sandbox.run_docker(box)
        rc, timed_out = result.returncode, result.timed_out
    else:
        proc = sandbox.start_local(box)
        _write_json(
            record_path,
            {"pid": proc.pid, "run_id": run_id, "started_ms": int(time.time() * 1000),
             "log": str(log_path)},
        )  # fmt: skip
        if progress:
            progress(f"patched run started (pid {proc.pid}, run {run_id[:8]})")
        rc, timed_out = sandbox.wait_pid(proc.pid, timeout, proc)
    if rc != 0 and not timed_out and not _logged_anything(client, run_id):
        client.set_terminated(run_id, "FAILED")
        tail = (
            log_path.read_text(errors="replace").strip().splitlines()[-1:]
            if log_path.exists()
            else []
        )
        quick = time.monotonic() - started < 10
        what = "exited at once" if quick else "exited"
        raise LaunchExited(
            f"the launch command {what} (exit {rc}) without logging to its run: "
            f"{' '.join(tail)[:200] or 'no output'}"
        )
    return _finish(client, run_id, rc, timed_out, str(log_path), tags, False)


def _logged_anything(client, run_id: str) -> bool:
    data = client.get_run(run_id).data
    return bool(data.metrics or data.params)


class LaunchError(WorkbenchError):
    pass


class LaunchExited(BadInputError):
    """The launch command ended without the run logging anything: a broken command, not a
    failed fix (the episode stops with its last line)."""


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
