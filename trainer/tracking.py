"""One metrics path into MLflow, behind an interface with a no-op twin.

The training loops only call ``tracker.log_metrics(...)`` etc.; ``NullTracker`` makes them
run without any store (tests, dry runs), ``MlflowTracker`` writes to MLflow. Metrics are
buffered with their measurement timestamps and written in batches (sqlite writes cost
milliseconds each), at most ``flush_every_s`` apart.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path
from typing import Any, Protocol

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"


class TrackingError(RuntimeError):
    """The tracking store cannot be reached or written (one clear line)."""


def resolve_tracking_uri(uri: str | None = None) -> str:
    return uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI


class Tracker(Protocol):
    run_id: str | None

    def log_params(self, params: dict[str, Any]) -> None: ...
    def set_tags(self, tags: dict[str, str]) -> None: ...
    def log_metrics(self, metrics: dict[str, float], step: int) -> None: ...
    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None: ...
    def flush(self) -> None: ...
    def finish(self, status: str) -> None: ...
    def child(self, run_name: str, tags: dict[str, str]) -> Tracker: ...


class NullTracker:
    """Does nothing, so the loop never branches on 'is logging on?'."""

    run_id: str | None = None

    def __init__(self) -> None:
        self.metrics: list[tuple[int, dict[str, float]]] = []  # kept for tests / dry runs

    def log_params(self, params: dict[str, Any]) -> None:
        pass

    def set_tags(self, tags: dict[str, str]) -> None:
        pass

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        self.metrics.append((step, dict(metrics)))

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        pass

    def flush(self) -> None:
        pass

    def finish(self, status: str) -> None:
        pass

    def child(self, run_name: str, tags: dict[str, str]) -> NullTracker:
        return self


def _connect(uri: str, attempts: int = 4, first_delay_s: float = 0.5):
    """An MlflowClient whose store answered; retries with exponential backoff."""
    from mlflow.tracking import MlflowClient

    if uri.startswith(("http://", "https://")):
        # Our own backoff below; without this MLflow retries each request for minutes.
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
    delay, last = first_delay_s, None
    for attempt in range(attempts):
        try:
            client = MlflowClient(tracking_uri=uri)
            client.search_experiments(max_results=1)
            return client
        except Exception as exc:  # noqa: BLE001 — any failure to reach the store is retried
            last = exc
            if attempt + 1 < attempts:
                time.sleep(delay)
                delay *= 2
    reason = str(last).strip().splitlines()[0][:200] if str(last).strip() else type(last).__name__
    raise TrackingError(
        f"tracking store {uri} unreachable after {attempts} attempts ({reason})"
    ) from None


class MlflowTracker:
    def __init__(
        self,
        tracking_uri: str | None,
        experiment: str,
        run_name: str | None = None,
        tags: dict[str, str] | None = None,
        system_metrics: bool = True,
        system_metrics_interval_s: float = 1.0,
        flush_every_s: float = 0.5,
    ) -> None:
        import mlflow  # noqa: F401 — configures its loggers on import; quiet them after

        # MLflow's own INFO chatter would otherwise land in every run's log.
        logging.getLogger("mlflow").setLevel(logging.WARNING)
        self.uri = resolve_tracking_uri(tracking_uri)
        self.experiment = experiment
        self.client = _connect(self.uri)
        exp = self.client.get_experiment_by_name(experiment)
        if exp is None:
            try:
                exp_id = self.client.create_experiment(experiment)
            except Exception:  # created concurrently by a sibling run
                exp_id = self.client.get_experiment_by_name(experiment).experiment_id
        else:
            exp_id = exp.experiment_id
        handed = os.environ.get("MLFLOW_RUN_ID")  # a launcher created the run: log into it
        if handed:
            self.run_id: str | None = self.client.get_run(handed).info.run_id
            self.set_tags({**(tags or {}), **({"mlflow.runName": run_name} if run_name else {})})
            self.client.update_run(self.run_id, status="RUNNING")
        else:
            run = self.client.create_run(exp_id, run_name=run_name, tags=dict(tags or {}))
            self.run_id = run.info.run_id
        self.flush_every_s = flush_every_s
        self._buffer: list = []
        self._lock = threading.Lock()
        self._last_flush = time.monotonic()
        # A background flush, so the last points reach the store even if the loop then blocks
        # forever (a hung run must show when it stopped).
        self._stop = threading.Event()
        self._flusher = threading.Thread(target=self._flush_loop, daemon=True, name="mlflow-flush")
        self._flusher.start()
        self._monitor = None
        if system_metrics:
            try:
                from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

                self._monitor = SystemMetricsMonitor(
                    self.run_id,
                    sampling_interval=system_metrics_interval_s,
                    tracking_uri=self.uri,
                )
                self._monitor.start()
            except Exception:  # psutil missing or similar: training goes on without them
                self._monitor = None

    def log_params(self, params: dict[str, Any]) -> None:
        from mlflow.entities import Param

        items = [Param(k, str(v)[:6000]) for k, v in params.items()]
        for i in range(0, len(items), 100):  # MLflow caps a batch at 100 params
            self.client.log_batch(self.run_id, params=items[i : i + 100])

    def set_tags(self, tags: dict[str, str]) -> None:
        from mlflow.entities import RunTag

        self.client.log_batch(self.run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        with self._lock:
            self._buffer.extend(Metric(k, float(v), now, step) for k, v in metrics.items())
        if time.monotonic() - self._last_flush >= self.flush_every_s:
            self.flush()

    def _flush_loop(self) -> None:
        while not self._stop.wait(self.flush_every_s):
            try:
                self.flush()
            except Exception:  # the loop's own flush will raise it
                pass

    def flush(self) -> None:
        with self._lock:
            while self._buffer:
                chunk, self._buffer = self._buffer[:1000], self._buffer[1000:]
                self.client.log_batch(self.run_id, metrics=chunk)
            self._last_flush = time.monotonic()

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        self.client.log_artifact(self.run_id, str(path), artifact_path)

    def child(self, run_name: str, tags: dict[str, str]) -> MlflowTracker:
        """A nested run in the same experiment (MLflow's ``mlflow.parentRunId``)."""
        return MlflowTracker(
            self.uri,
            self.experiment,
            run_name=run_name,
            tags={**tags, "mlflow.parentRunId": self.run_id},
            system_metrics=False,
            flush_every_s=self.flush_every_s,
        )

    def finish(self, status: str) -> None:
        self._stop.set()
        try:
            self.flush()
        finally:
            if self._monitor is not None:
                self._monitor.finish()
            self.client.set_terminated(self.run_id, status=status)
