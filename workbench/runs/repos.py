"""Training repos made from the shipped templates, and their first (failing) runs.

Used by ``workbench demo`` and the model-in-the-loop scenarios (``workbench.rl.scenarios``):
copy a template, ``git init`` it, train it once in the sandbox into a given MLflow experiment.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

from workbench.errors import BadInputError

# LM-repo scenarios run the template's config shortened to the fault suite's length (onsets at
# step 50 leave 70 steps to fail in, and a fix 120 steps to recover): minutes, not hours.
SHORT_RUN = {"steps": 120}


def template_path(name: str = "lm-repo") -> Path | None:
    """A template repo shipped in ``experiments/templates`` (None: not installed)."""
    import experiments

    path = Path(experiments.__file__).resolve().parent / "templates" / name
    return path if (path / "workbench.yaml").exists() else None


def deep_merge(base: dict, over: dict) -> dict:
    """``over`` merged into ``base``, nested dicts key by key (a scenario's config overrides)."""
    out = dict(base)
    for k, v in over.items():
        out[k] = (
            deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
        )
    return out


def _git(repo: Path, *args: str) -> None:
    ident = ["-c", "user.name=workbench demo", "-c", "user.email=demo@localhost"]
    subprocess.run(["git", *ident, *args], cwd=repo, check=True, capture_output=True)


def init_repo(repo: Path, message: str) -> None:
    """``git init`` the folder on ``main`` with one commit of everything in it."""
    (repo / ".gitignore").write_text(".workbench/\nmlruns/\n*.db\ncheckpoints/\nout/\n")
    _git(repo, "init", "-q", "-b", "main")
    _git(repo, "add", ".")
    _git(repo, "commit", "-q", "-m", message)


def run_original(
    repo: Path,
    config: str | None,
    uri: str,
    experiment_id: str,
    logs: Path,
    name: str,
    experiment_name: str = "demo",
) -> str:
    """One training run of the untouched repo, sandboxed like every launch; returns its run id.
    The run is created here and handed over the MLflow way (``MLFLOW_RUN_ID``)."""
    from mlflow.tracking import MlflowClient

    from workbench.runs import sandbox
    from workbench.runs.launch import launch_argv, read_repo_spec

    spec = read_repo_spec(repo)
    client = MlflowClient(uri)
    rid = client.create_run(experiment_id, run_name=name).info.run_id
    box = sandbox.SandboxSpec(
        argv=launch_argv(spec, config or spec.config), cwd=repo, timeout_s=spec.timeout,
        env={**spec.env, "MLFLOW_TRACKING_URI": uri, "MLFLOW_EXPERIMENT_NAME": experiment_name,
             "MLFLOW_EXPERIMENT_ID": experiment_id, "MLFLOW_RUN_ID": rid,
             "OMP_NUM_THREADS": "1"},
        log_path=logs / f"{name}.log",
    )  # fmt: skip
    t0 = time.monotonic()
    sandbox.run_local(box)
    data = client.get_run(rid).data
    if not (data.metrics or data.params):
        raise BadInputError(f"the {name} run did not start; see {box.log_path}")
    if client.get_run(rid).info.status == "RUNNING":
        client.set_terminated(rid, "FINISHED")
    client.set_tag(rid, "demo.run_seconds", f"{time.monotonic() - t0:.1f}")
    return rid
