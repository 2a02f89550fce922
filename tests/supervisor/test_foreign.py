"""The runs people actually have, against a team's MLflow server over HTTP.

A real ``mlflow server`` subprocess (loopback, free port, temporary sqlite backend) serves the
module; each foreign-style template repo (HF-style JSON, torchtitan-style TOML, Lightning-style
YAML; plain ``mlflow.start_run()``, no workbench tag) trains its failing run into it, and
``diagnose``, ``watch --once`` and ``fix`` work on it over HTTP. ``fix`` must give a verified
fix on a ``workbench/fix/...`` branch whose diff is the knob's line, main and the checked-out
branch untouched.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.supervisor.conftest import git

TEMPLATES = Path(__file__).resolve().parents[2] / "experiments" / "templates"
# Two real runs (the user's and the fix) per case, a few seconds of CPU each: minutes of wall
# time on a shared machine.
pytestmark = pytest.mark.timeout(1500)
CLI = [sys.executable, "-m", "workbench.cli.main"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """``http://127.0.0.1:PORT`` of a real ``mlflow server`` with a temporary backend."""
    root = tmp_path_factory.mktemp("mlflow-server")
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
         "--workers", "1", "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
         "--artifacts-destination", (root / "artifacts").as_uri()],
        stdout=open(root / "server.log", "wb"), stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    while True:
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
                if r.status == 200:
                    break
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail("mlflow server did not start: " + (root / "server.log").read_text()[-500:])
        time.sleep(0.5)
    yield url
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()


def _env(uri: str, experiment: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    return {**env, "MLFLOW_TRACKING_URI": uri, "MLFLOW_EXPERIMENT_NAME": experiment,
            "OMP_NUM_THREADS": "1"}  # fmt: skip


def _repo(template: str, dest: Path) -> Path:
    repo = dest / template
    shutil.copytree(TEMPLATES / template, repo)
    git(repo, "init", "-q", "-b", "main")
    git(repo, "add", ".")
    git(repo, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "init")
    return repo


def _train(repo: Path, uri: str, experiment: str) -> tuple[str, float]:
    """Run the repo's own launch command once (the user's failing run); (run id, seconds)."""
    import yaml
    from mlflow.tracking import MlflowClient

    spec = yaml.safe_load((repo / "workbench.yaml").read_text())
    argv = spec["launch"].replace("{config}", spec["config"]).split()
    argv[0] = sys.executable
    t0 = time.monotonic()
    subprocess.run(argv, cwd=repo, env=_env(uri, experiment), check=True, capture_output=True)
    seconds = time.monotonic() - t0
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    [run] = client.search_runs([exp.experiment_id], max_results=1)
    assert not any(k.startswith("workbench.") for k in run.data.tags)  # none asked of the user
    return run.info.run_id, seconds


def _cli(*args: str, uri: str, cwd: Path | None = None, timeout: float = 900):
    return subprocess.run(
        [*CLI, *args], capture_output=True, text=True, timeout=timeout, cwd=cwd,
        env={**_env(uri, "unused"), "MLFLOW_EXPERIMENT_NAME": ""},
    )  # fmt: skip


CASES = [
    # template, diagnosis, the knob's line before -> after
    ("hf-json-repo", "lr_too_high", "args.json",
     ['-  "learning_rate": 0.15,', '+  "learning_rate": 0.015,']),
    ("titan-toml-repo", "lr_too_low", "train.toml", ["-lr = 2e-5", "+lr = 0.0002"]),
    ("lightning-yaml-repo", "overfit_capacity", "config.yaml",
     ["-  max_train_samples: 48     # quick experiments on a subset",
      "+  max_train_samples: null     # quick experiments on a subset"]),
]  # fmt: skip


@pytest.mark.parametrize("template, cause, config, diff", CASES, ids=[c[0] for c in CASES])
def test_fix_gives_a_verified_one_line_fix_over_http(
    server, tmp_path, template, cause, config, diff
):
    repo = _repo(template, tmp_path)
    run_id, _ = _train(repo, server, template)
    head = git(repo, "rev-parse", "HEAD")

    res = _cli("diagnose", run_id, "--tracking-uri", server, "--json", uri=server)
    assert res.returncode == 0, res.stderr[-1000:]
    verdict = json.loads(res.stdout)
    verdict = verdict[0] if isinstance(verdict, list) else verdict
    assert verdict["status"] == "failing" and verdict["diagnosis"]["cause"] == cause

    home = tmp_path / "home"
    res = _cli("fix", run_id, "--repo", str(repo), "--tracking-uri", server, "--home", str(home),
               "--json", uri=server)  # fmt: skip
    assert res.returncode == 0, res.stderr[-2000:]
    out = json.loads(res.stdout)
    assert out["status"] == "fixed" and out["verified"] and out["diagnosis"] == cause, out
    branch = out["branch"]
    assert branch.startswith("workbench/fix/")
    # main and the checked-out branch untouched; the branch's diff is the knob's line
    assert (
        git(repo, "rev-parse", "main") == head and git(repo, "branch", "--show-current") == "main"
    )
    assert git(repo, "status", "--porcelain") == ""
    changed = git(repo, "diff", "--unified=0", "main", branch).splitlines()
    assert [x for x in changed if x[:1] in "+-" and not x.startswith(("+++", "---"))] == diff
    assert git(repo, "diff", "--name-only", "main", branch) == config

    from mlflow.tracking import MlflowClient

    child = MlflowClient(server).get_run(out["new_run_id"])
    assert child.data.tags["workbench.parent_run"] == run_id
    assert child.data.tags["workbench.branch"] == branch and child.info.status == "FINISHED"


def test_watch_once_reads_the_server_incrementally(server, tmp_path):
    repo = _repo("titan-toml-repo", tmp_path)
    run_id, _ = _train(repo, server, "watched")
    state = tmp_path / "watch.json"
    args = ("watch", "-e", "watched", "--once", "--tracking-uri", server, "--state", str(state),
            "--json")  # fmt: skip
    first = _cli(*args, uri=server)
    assert first.returncode == 0, first.stderr[-1000:]
    assert run_id in first.stdout and "lr_too_low" in first.stdout
    again = _cli(*args, uri=server)  # nothing new since the last poll: same verdict
    assert again.returncode == 0 and run_id in again.stdout and "lr_too_low" in again.stdout


def test_a_repo_without_workbench_yaml_gets_one_line_or_uses_launch_and_config(server, tmp_path):
    repo = _repo("titan-toml-repo", tmp_path)
    run_id, _ = _train(repo, server, "no-spec")
    git(repo, "rm", "-q", "workbench.yaml")
    git(repo, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "no spec")
    home = tmp_path / "home"
    res = _cli("fix", run_id, "--repo", str(repo), "--tracking-uri", server, "--home", str(home),
               uri=server)  # fmt: skip
    assert res.returncode == 2 and "Traceback" not in res.stderr
    lines = [x for x in res.stderr.strip().splitlines() if x.strip()]
    assert len(lines) == 1 and "no workbench.yaml" in lines[0] and "--launch" in lines[0]
    assert git(repo, "branch", "--list", "workbench/*") == ""
    res = _cli("fix", run_id, "--repo", str(repo), "--tracking-uri", server, "--home", str(home),
               "--launch", "python train.py --job.config_file {config}", "--config", "train.toml",
               "--json", uri=server)  # fmt: skip
    assert res.returncode == 0, res.stderr[-2000:]
    assert json.loads(res.stdout)["verified"]
