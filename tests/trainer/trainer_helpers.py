"""Shared helpers: run a short training in-process into a sqlite MLflow store and read it back."""

from __future__ import annotations

import math
from pathlib import Path

from trainer.config import parse_config
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


def run(uri: str, program: str, data: dict):
    from trainer import digits, lm

    data = {"experiment": "t", **data}
    if program == "lm":
        data.setdefault("model", {"overrides": SMALL_LM})
    cfg = parse_config(program, data)
    body = lm.train if program == "lm" else digits.train
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
