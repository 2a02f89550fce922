"""Fixtures: a real git training repo with a tiny real training script, a real MLflow store.

The script runs gradient descent on a quadratic (so a too-high learning rate really diverges)
and logs to MLflow the plain way (``mlflow.start_run()``, no workbench tags; metrics
``loss``/``eval_loss``, the log as ``logs/train.log``).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

TRAIN_PY = r"""
import os, subprocess, sys, tempfile, time
import yaml
from mlflow.entities import Metric, Param
from mlflow.tracking import MlflowClient

cfg_path = sys.argv[sys.argv.index("--config") + 1]
cfg = yaml.safe_load(open(cfg_path))
lr = float(cfg["optimizer"]["lr"])
steps, pause = int(cfg.get("steps", 40)), float(cfg.get("sleep", 0))
import mlflow
client = MlflowClient(os.environ["MLFLOW_TRACKING_URI"])
mlflow.set_experiment(os.environ.get("MLFLOW_EXPERIMENT_NAME") or "fixes")
rid = mlflow.start_run().info.run_id  # joins MLFLOW_RUN_ID when a launcher created the run
client.log_batch(rid, params=[Param("optimizer.lr", str(lr)), Param("optimizer.grad_clip", "1.0")])
x, metrics, log = 2.0, [], []
now = int(time.time() * 1000)
for t in range(steps):
    loss = 0.5 * x * x + 0.05
    grad = abs(1.3 * x)
    metrics += [Metric("loss", loss, now + t, t), Metric("eval_loss", loss + 0.01, now + t, t),
                Metric("grad_norm", grad, now + t, t)]
    log.append(f"step {t}: loss {loss:.4g}")
    x -= lr * min(1.0, (t + 1) / 10) * 1.3 * x  # curvature 1.3: lr > 1.54 diverges
    if pause:
        time.sleep(pause)
print("\n".join(log), flush=True)
log.append(str(cfg.get("log_line", "")))
client.log_batch(rid, metrics=metrics)
d = tempfile.mkdtemp()
open(os.path.join(d, "train.log"), "w").write("\n".join(log) + "\n")
client.log_artifact(rid, os.path.join(d, "train.log"), "logs")
mlflow.end_run()
"""

CONFIG = """optimizer:
  lr: 2.5
steps: 40
"""


def git(cwd: Path, *args: str) -> str:
    return subprocess.run(
        ["git", *args], cwd=cwd, check=True, capture_output=True, text=True
    ).stdout.strip()


def make_repo(root: Path, config: str = CONFIG) -> Path:
    root.mkdir(parents=True)
    (root / "configs").mkdir()
    (root / "train.py").write_text(TRAIN_PY)
    (root / "configs" / "train.yaml").write_text(config)
    (root / "workbench.yaml").write_text(
        'launch: "python train.py --config {config}"\nconfig: configs/train.yaml\ntimeout: 120\n'
    )
    git(root, "init", "-q", "-b", "main")
    git(root, "add", ".")
    git(root, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "init")
    return root


def make_store(root: Path) -> str:
    from mlflow.tracking import MlflowClient

    root.mkdir(parents=True, exist_ok=True)
    uri = f"sqlite:///{root / 'mlflow.db'}"
    MlflowClient(uri).create_experiment("fixes", artifact_location=(root / "artifacts").as_uri())
    return uri


def train(repo: Path, uri: str, config: str = "configs/train.yaml") -> str:
    """Run the repo's training once (a real subprocess); returns the new run id."""
    from mlflow.tracking import MlflowClient

    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "MLFLOW_EXPERIMENT_NAME": "fixes"}
    subprocess.run([sys.executable, "train.py", "--config", config], cwd=repo, env=env,
                   check=True, capture_output=True)  # fmt: skip
    runs = MlflowClient(uri).search_runs(
        [MlflowClient(uri).get_experiment_by_name("fixes").experiment_id],
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    return runs[0].info.run_id


@pytest.fixture(scope="session")
def failing(tmp_path_factory):
    """(repo, uri, run_id): a repo whose committed config diverges, and its failed run."""
    base = tmp_path_factory.mktemp("failing")
    uri = make_store(base / "store")
    repo = make_repo(base / "repo")
    return repo, uri, train(repo, uri)


@pytest.fixture
def workspace(failing, tmp_path):
    """A private copy of the failing repo (same commit) and a fresh workbench home."""
    repo, uri, run_id = failing
    copy = tmp_path / "repo"
    shutil.copytree(repo, copy)
    return copy, uri, run_id, tmp_path / "home"
