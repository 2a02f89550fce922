"""The template training repo: a valid config, a launch line, and tags pointing into the repo."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import yaml

from trainer.config import load_config
from trainer.harness import run_tags

TEMPLATE = Path(__file__).resolve().parents[2] / "experiments" / "templates" / "lm-repo"


def test_template_launches_its_config_and_tags_the_commit(tmp_path):
    repo = tmp_path / "repo"
    shutil.copytree(TEMPLATE, repo)
    spec = yaml.safe_load((repo / "workbench.yaml").read_text())
    assert spec["launch"] == "workbench train lm --config {config}"
    assert spec["config"] == "configs/train.yaml" and spec["timeout"] > 0
    cfg = load_config(repo / spec["config"], "lm")
    assert cfg.optimizer.grad_clip == 1.0 and "faults" not in (repo / spec["config"]).read_text()

    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run([*git, "init", "-q"], cwd=repo, check=True)
    subprocess.run([*git, "add", "."], cwd=repo, check=True)
    subprocess.run([*git, "commit", "-qm", "init"], cwd=repo, check=True)
    head = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True, check=True
    ).stdout.strip()
    tags = run_tags("lm", repo / spec["config"])
    assert tags["workbench.config"] == "configs/train.yaml"
    assert tags["workbench.launch"] == spec["launch"].format(config="configs/train.yaml")
    assert tags["mlflow.source.git.commit"] == head
