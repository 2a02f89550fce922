"""Shared helpers: run a short training in-process into a sqlite MLflow store and read it back."""

from __future__ import annotations

import json
import math
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path

from trainer.config import parse_config
from trainer.faults import HARNESS_ENV
from trainer.harness import run_program

SMALL_LM = {
    "hidden_size": 32,
    "intermediate_size": 48,
    "num_hidden_layers": 2,
    "head_dim": 8,
    "rotary_dim": 4,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
}


def store(tmp: Path) -> str:
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    client = MlflowClient(uri)
    client.create_experiment("t", artifact_location=(tmp / "artifacts").as_uri())
    return uri


@contextmanager
def harness(faults: list | None):
    """Switch the harness's faults on for this process (as the suite builder does for a
    subprocess): through the environment, never through the run's config."""
    old = os.environ.get(HARNESS_ENV)
    if faults:
        os.environ[HARNESS_ENV] = json.dumps(faults)
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(HARNESS_ENV, None)
        else:
            os.environ[HARNESS_ENV] = old


def repo_code(template: str, **params) -> str:
    """A file of repo code (a fault suite code template rendered with ``params``); its path."""
    from experiments.faults.suite import render_code

    path = Path(tempfile.mkdtemp(prefix="repo-code-")) / "hooks.py"
    path.write_text(render_code(template, params))
    return str(path)


def run(uri: str, program: str, data: dict):
    """Train ``data`` (a config; a ``faults`` entry goes to the harness, not the config; a
    ``code`` entry ``(template, params)`` is the repo's own code, named by ``hooks``)."""
    from trainer import digits, lm

    data = {"experiment": "t", **data}
    faults = data.pop("faults", None)
    if code := data.pop("code", None):
        data["hooks"] = repo_code(code[0], **code[1])
    if program == "lm":
        data.setdefault("model", {"overrides": SMALL_LM})
    cfg = parse_config(program, data)
    body = lm.train if program == "lm" else digits.train
    with harness(faults):
        return run_program(program, cfg, body, tracking_uri=uri, system_metrics=False)


def history(uri: str, run_id: str, key: str) -> list[tuple[int, float]]:
    from mlflow.tracking import MlflowClient

    pts = MlflowClient(uri).get_metric_history(run_id, key)
    return sorted((p.step, p.value) for p in pts)


def finite(values) -> bool:
    return all(math.isfinite(v) for v in values)


def log_text(uri: str, run_id: str, tmp: Path) -> str:
    from mlflow.tracking import MlflowClient

    path = MlflowClient(uri).download_artifacts(run_id, "logs/train.log", str(tmp))
    return Path(path).read_text()
