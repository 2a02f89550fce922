"""Shared fixtures: a fresh MLflow sqlite store per test, copied from one template (creating
MLflow's schema takes seconds; copying a file takes microseconds)."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest

_TEMPLATE: Path | None = None


def _template(tmp_root: Path) -> Path:
    """One schema-initialised store shared by all xdist workers (created under a file lock)."""
    global _TEMPLATE
    if _TEMPLATE is None or not _TEMPLATE.exists():
        import fcntl

        from mlflow.tracking import MlflowClient

        shared = tmp_root.parent if os.environ.get("PYTEST_XDIST_WORKER") else tmp_root
        path = shared / "doctor-template.db"
        with open(shared / "doctor-template.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if not path.exists():
                tmp = shared / "doctor-template.tmp.db"
                MlflowClient(f"sqlite:///{tmp}").search_experiments()  # creates the schema
                os.replace(tmp, path)
        _TEMPLATE = path
    return _TEMPLATE


class Store:
    """A tmp MLflow store plus helpers to log runs quickly (one log_batch per 1000 points)."""

    def __init__(self, path: Path) -> None:
        from mlflow.tracking import MlflowClient

        self.path = path
        self.uri = f"sqlite:///{path}"
        self.client = MlflowClient(self.uri)
        self._exps: dict[str, str] = {}

    def experiment(self, name: str) -> str:
        if name not in self._exps:
            self._exps[name] = self.client.create_experiment(
                name, artifact_location=str(self.path.parent / "artifacts" / name)
            )
        return self._exps[name]

    def log_run(
        self,
        metrics: dict[str, tuple],
        *,
        experiment: str = "exp",
        status: str | None = "FINISHED",
        params: dict[str, str] | None = None,
        tags: dict[str, str] | None = None,
        log: str | None = None,
        t0_ms: int | None = None,
        dt_ms: int = 1000,
        end_ms: int | None = None,
    ) -> str:
        """metrics: name → (steps, values[, timestamps]); timestamps default t0 + step·dt."""
        from mlflow.entities import Metric, Param

        run = self.client.create_run(self.experiment(experiment), tags=dict(tags or {}))
        rid = run.info.run_id
        t0 = t0_ms if t0_ms is not None else int(time.time() * 1000) - 10_000_000
        batch = []
        for name, h in metrics.items():
            steps, values, *ts = h
            for i, (s, v) in enumerate(zip(steps, values, strict=True)):
                t = int(ts[0][i]) if ts else t0 + int(s) * dt_ms
                batch.append(Metric(name, float(v), t, int(s)))
        for i in range(0, len(batch), 1000):
            self.client.log_batch(rid, metrics=batch[i : i + 1000])
        if params:
            self.client.log_batch(rid, params=[Param(k, str(v)) for k, v in params.items()])
        if log is not None:
            d = self.path.parent / f"log-{rid}" / "logs"
            d.mkdir(parents=True)
            (d / "train.log").write_text(log)
            self.client.log_artifacts(rid, str(d), "logs")
        if status is not None:
            self.client.set_terminated(rid, status, end_time=end_ms)
        return rid


@pytest.fixture
def store(tmp_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Store:
    tpl = _template(tmp_path_factory.getbasetemp())
    path = tmp_path / "mlflow.db"
    shutil.copy(tpl, path)
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    return Store(path)
