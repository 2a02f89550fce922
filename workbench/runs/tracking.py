"""MLflow access for the doctor: runs, params, tags, logs and *incremental* metric histories.

One class, ``TrackingClient``, over ``mlflow.tracking.MlflowClient`` for any store (sqlite,
file, http).  Two things MLflow does not give us directly:

* **Incremental histories.**  MLflow has no "points since step N" call on every store, so each
  (run, metric) keeps a ``Cursor``.  On sqlite stores we read MLflow's own ``metrics`` table
  with SQL (read-only), using its ``(run_uuid, key, step)`` index; elsewhere we fall back to
  ``get_metric_history`` and filter client-side.
* **Transient errors** (HTTP 429/5xx, connection resets, a locked sqlite file) are retried
  with exponential backoff; a server that stays unreachable becomes one ``WorkbenchError``.

Histories are returned *as logged* (arrays in logging order); ``normalize`` in
``workbench.doctor.series`` turns them into one value per step (restarts: last write wins).
"""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar
from urllib.parse import unquote, urlparse

import numpy as np

from workbench.errors import BadInputError, WorkbenchError

T = TypeVar("T")

# MLflow stores +/-inf as +/-float max in sqlite; we give them back as inf.
_FLOAT_MAX = 1.7976931348623157e308
LOG_ARTIFACT = "logs/train.log"
DEFAULT_LOG_BYTES = 256 * 1024


@dataclass(frozen=True)
class RunInfo:
    run_id: str
    experiment_id: str
    name: str
    status: str  # RUNNING | SCHEDULED | FINISHED | FAILED | KILLED
    start_time: int | None  # ms since epoch
    end_time: int | None
    params: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    metric_keys: tuple[str, ...] = ()


@dataclass(frozen=True)
class RunSnapshot:
    """What a poll needs to know cheaply: status, end time, newest (step, timestamp) per key."""

    run_id: str
    status: str
    end_time: int | None
    latest: dict[str, tuple[int, int]]


@dataclass(frozen=True)
class History:
    """One metric as logged: parallel arrays in logging order (timestamp, then step)."""

    steps: np.ndarray  # int64
    values: np.ndarray  # float64, NaN/inf kept
    timestamps: np.ndarray  # int64, ms

    def __len__(self) -> int:
        return len(self.steps)

    @staticmethod
    def empty() -> History:
        return History(np.zeros(0, np.int64), np.zeros(0, np.float64), np.zeros(0, np.int64))

    def concat(self, other: History) -> History:
        if len(other) == 0:
            return self
        if len(self) == 0:
            return other
        return History(
            np.concatenate([self.steps, other.steps]),
            np.concatenate([self.values, other.values]),
            np.concatenate([self.timestamps, other.timestamps]),
        )


@dataclass(frozen=True)
class Cursor:
    """The newest point seen for one (run, metric), plus how many points we hold."""

    step: int
    timestamp: int
    count: int


def _history(rows: list[tuple[Any, ...]]) -> History:
    """rows of (step, timestamp, value, is_nan) → History sorted by (timestamp, step)."""
    if not rows:
        return History.empty()
    arr = np.array(rows, dtype=np.float64)
    steps = arr[:, 0].astype(np.int64)
    ts = arr[:, 1].astype(np.int64)
    values = arr[:, 2].copy()
    values[arr[:, 3] != 0] = np.nan
    values[values >= _FLOAT_MAX] = np.inf
    values[values <= -_FLOAT_MAX] = -np.inf
    order = np.lexsort((steps, ts))
    return History(steps[order], values[order], ts[order])


def _group_columns(
    run_idx: np.ndarray,
    key_idx: np.ndarray,
    n_keys: int,
    steps: np.ndarray,
    ts: np.ndarray,
    values: np.ndarray,
    is_nan: np.ndarray,
) -> list[tuple[int, int, History]]:
    """Rows in table order (as columns) → one ``History`` per (run, key), each exactly what
    ``_history`` makes of that group's rows: sorted by (timestamp, step), ties in table order."""
    if len(steps) == 0:
        return []
    gid = run_idx.astype(np.int64) * n_keys + key_idx
    # Group ids are small: a stable sort on 16-bit ints is a radix sort (linear time).
    small = gid.max() < 1 << 16
    perm = np.argsort(gid.astype(np.uint16) if small else gid, kind="stable")
    g, st, t = gid[perm], steps[perm], ts[perm]
    same = g[1:] == g[:-1]
    dt, ds = np.diff(t), np.diff(st)
    if np.any(same & ((dt < 0) | ((dt == 0) & (ds < 0)))):
        perm = np.lexsort((steps, ts, gid))  # some run logged out of order: the general sort
        g, st, t = gid[perm], steps[perm], ts[perm]
    v = values[perm].astype(np.float64, copy=True)
    v[is_nan[perm] != 0] = np.nan
    v[v >= _FLOAT_MAX] = np.inf
    v[v <= -_FLOAT_MAX] = -np.inf
    st, t = st.astype(np.int64, copy=False), t.astype(np.int64, copy=False)
    bounds = np.concatenate([[0], np.flatnonzero(g[1:] != g[:-1]) + 1, [len(g)]])
    out = []
    for a, b in zip(bounds[:-1].tolist(), bounds[1:].tolist(), strict=True):
        out.append((int(g[a]) // n_keys, int(g[a]) % n_keys, History(st[a:b], v[a:b], t[a:b])))
    return out


def _cursor_of(h: History, prev: Cursor | None = None) -> Cursor | None:
    if len(h) == 0:
        return prev
    count = len(h) + (prev.count if prev else 0)
    return Cursor(
        int(h.steps.max()) if prev is None else max(prev.step, int(h.steps.max())),
        int(h.timestamps.max()) if prev is None else max(prev.timestamp, int(h.timestamps.max())),
        count,
    )


def _is_transient(exc: BaseException) -> bool:
    if isinstance(exc, sqlite3.OperationalError):
        return "locked" in str(exc) or "busy" in str(exc)
    if isinstance(exc, ConnectionError | TimeoutError):
        return True
    code = getattr(exc, "get_http_status_code", None)
    if callable(code):
        try:
            status = int(code())
        except Exception:
            status = 0
        if status in (429, 500, 502, 503, 504):
            return True
    text = str(exc).lower()
    return any(s in text for s in ("connection", "timed out", "temporarily", "max retries"))


def _is_unreachable(exc: BaseException) -> bool:
    text = str(exc).lower()
    return any(
        s in text
        for s in ("connection refused", "max retries", "failed to establish", "name or service")
    )


def sqlite_path(uri: str) -> str | None:
    """The database file behind a ``sqlite:///`` URI (None for other stores)."""
    if not uri.startswith("sqlite:"):
        return None
    path = uri[len("sqlite:") :]
    if path.startswith("///"):
        path = path[3:]  # sqlite:///rel/path → rel/path ; sqlite:////abs → /abs
    elif path.startswith("//"):
        path = path[2:]
    path = unquote(path.split("?", 1)[0])
    return path or None


class TrackingClient:
    """All the doctor needs from an MLflow tracking store.  ``uri`` as MLflow takes it."""

    def __init__(
        self,
        uri: str | None = None,
        *,
        retries: int = 4,
        backoff_s: float = 0.25,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        import mlflow

        self.uri = uri or os.environ.get("MLFLOW_TRACKING_URI") or mlflow.get_tracking_uri()
        scheme = urlparse(self.uri).scheme
        if scheme in ("", "file"):
            # The file store is in "maintenance mode" in MLflow 3; reading it is still fine.
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        if scheme in ("http", "https"):
            # We retry ourselves; MLflow's own default (7 retries, long backoff) would make a
            # down server look like a hang.
            os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
            os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
        self.retries = retries
        self.backoff_s = backoff_s
        self._sleep = sleep
        self._db_path = sqlite_path(self.uri)
        if self._db_path is not None and not os.path.exists(self._db_path):
            raise BadInputError(f"tracking store not found: {self._db_path}")
        from mlflow.tracking import MlflowClient

        self.mlflow = MlflowClient(tracking_uri=self.uri)
        self._db: sqlite3.Connection | None = None

    # ------------------------------------------------------------------ plumbing
    def _call(self, what: str, fn: Callable[[], T]) -> T:
        """Run ``fn`` with retries on transient errors; map the rest to one-line errors."""
        delay = self.backoff_s
        for attempt in range(self.retries + 1):
            try:
                return fn()
            except WorkbenchError:
                raise
            except Exception as exc:
                if _is_transient(exc) and attempt < self.retries:
                    self._sleep(delay)
                    delay *= 2
                    continue
                if _is_unreachable(exc):
                    raise WorkbenchError(
                        f"tracking server {self.uri} is unreachable ({what})"
                    ) from exc
                msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                if "RESOURCE_DOES_NOT_EXIST" in str(exc) or "not found" in msg.lower():
                    raise BadInputError(f"{what}: not found") from exc
                raise WorkbenchError(f"{what}: {msg}") from exc
        raise AssertionError("unreachable")

    def _sql(self) -> sqlite3.Connection | None:
        if self._db_path is None:
            return None
        if self._db is None:
            self._db = sqlite3.connect(
                f"file:{os.path.abspath(self._db_path)}?mode=ro",
                uri=True,
                timeout=10,
                check_same_thread=False,
            )
        return self._db

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    # ------------------------------------------------------------------ experiments & runs
    def experiment_id(self, name: str) -> str:
        exp = self._call(f"experiment {name!r}", lambda: self.mlflow.get_experiment_by_name(name))
        if exp is None:
            raise BadInputError(f"experiment {name!r} not found at {self.uri}")
        return exp.experiment_id

    def runs(
        self,
        experiment: str,
        *,
        filter_string: str = "",
        statuses: tuple[str, ...] = (),
        page_size: int = 1000,
    ) -> list[RunInfo]:
        """Every run of an experiment (by name), paging through ``search_runs``."""
        exp_id = self.experiment_id(experiment)
        out: list[RunInfo] = []
        token: str | None = None
        while True:
            page = self._call(
                f"runs of {experiment!r}",
                lambda token=token: self.mlflow.search_runs(
                    [exp_id], filter_string=filter_string, max_results=page_size, page_token=token
                ),
            )
            out.extend(_run_info(r) for r in page)
            token = getattr(page, "token", None)
            if not token:
                break
        if statuses:
            out = [r for r in out if r.status in statuses]
        return out

    def snapshot(self, experiment: str) -> dict[str, RunSnapshot]:
        """Status and newest point per metric of every active run — two SQL queries on sqlite
        (MLflow's ``latest_metrics`` table), one ``search_runs`` sweep elsewhere."""
        db = self._sql()
        if db is None:
            return {r.run_id: r for r in self._snapshot_api(experiment)}
        exp_id = self.experiment_id(experiment)

        def query() -> dict[str, RunSnapshot]:
            runs = db.execute(
                "SELECT run_uuid, status, end_time FROM runs "
                "WHERE experiment_id=? AND lifecycle_stage='active'",
                (exp_id,),
            ).fetchall()
            latest: dict[str, dict[str, tuple[int, int]]] = {r[0]: {} for r in runs}
            for run_id, key, step, ts in db.execute(
                "SELECT lm.run_uuid, lm.key, lm.step, lm.timestamp FROM latest_metrics lm "
                "JOIN runs r ON r.run_uuid = lm.run_uuid "
                "WHERE r.experiment_id=? AND r.lifecycle_stage='active'",
                (exp_id,),
            ):
                latest[run_id][key] = (int(step), int(ts or 0))
            return {rid: RunSnapshot(rid, status, end, latest[rid]) for rid, status, end in runs}

        return self._call(f"runs of {experiment!r}", query)

    def _snapshot_api(self, experiment: str) -> list[RunSnapshot]:
        exp_id = self.experiment_id(experiment)
        out: list[RunSnapshot] = []
        token: str | None = None
        while True:
            page = self._call(
                f"runs of {experiment!r}",
                lambda token=token: self.mlflow.search_runs(
                    [exp_id], max_results=1000, page_token=token
                ),
            )
            for r in page:
                latest = {
                    m.key: (int(m.step), int(m.timestamp or 0))
                    for m in getattr(r.data, "_metric_objs", [])
                }
                out.append(RunSnapshot(r.info.run_id, r.info.status, r.info.end_time, latest))
            token = getattr(page, "token", None)
            if not token:
                return out

    def run(self, run_id: str) -> RunInfo:
        if not run_id or not all(c.isalnum() or c in "-_" for c in run_id):
            raise BadInputError(f"run {run_id!r}: not a valid run id")
        return _run_info(self._call(f"run {run_id}", lambda: self.mlflow.get_run(run_id)))

    def params(self, run_id: str) -> dict[str, str]:
        return self.run(run_id).params

    def tags(self, run_id: str) -> dict[str, str]:
        return self.run(run_id).tags

    def status(self, run_id: str) -> str:
        return self.run(run_id).status

    def set_tag(self, run_id: str, key: str, value: str) -> None:
        self._call(f"set tag on {run_id}", lambda: self.mlflow.set_tag(run_id, key, value))

    def log_artifacts(self, run_id: str, local_dir: str, artifact_path: str | None = None) -> None:
        self._call(
            f"log artifacts to {run_id}",
            lambda: self.mlflow.log_artifacts(run_id, local_dir, artifact_path),
        )

    # ------------------------------------------------------------------ histories
    def history(self, run_id: str, key: str) -> History:
        """The full history of one metric."""
        h, _ = self.new_points(run_id, key, None)
        return h

    def histories(self, run_id: str, keys: tuple[str, ...] | None = None) -> dict[str, History]:
        """Full histories of several metrics (all of the run's when ``keys`` is None)."""
        db = self._sql()
        if db is not None:
            rows = self._call(
                f"metrics of {run_id}",
                lambda: db.execute(
                    "SELECT key, step, timestamp, value, is_nan FROM metrics WHERE run_uuid=?",
                    (run_id,),
                ).fetchall(),
            )
            grouped: dict[str, list[tuple[Any, ...]]] = {}
            for k, *rest in rows:
                if keys is None or k in keys:
                    grouped.setdefault(k, []).append(rest)
            return {k: _history(v) for k, v in grouped.items()}
        if keys is None:
            keys = self.run(run_id).metric_keys
        return {k: self.history(run_id, k) for k in keys}

    def bulk_histories(
        self, experiment: str, run_ids: set[str] | None = None
    ) -> dict[str, dict[str, tuple[History, Cursor]]] | None:
        """Every metric history of an experiment in one sequential scan of MLflow's ``metrics``
        table (sqlite only; None elsewhere).  Rows of concurrent runs are interleaved on disk,
        so one scan beats a per-run index lookup by far on a full pass.

        The scan is columnar (ADBC's sqlite driver straight into Arrow, split over two rowid
        ranges read in parallel): building a Python tuple per row would cost ~5x more."""
        db = self._sql()
        if db is None:
            return None
        exp_id = self.experiment_id(experiment)

        def scan() -> dict[str, dict[str, tuple[History, Cursor]]]:
            wanted = run_ids
            if wanted is None:
                wanted = {
                    r[0]
                    for r in db.execute(
                        "SELECT run_uuid FROM runs WHERE experiment_id=? AND lifecycle_stage='active'",
                        (exp_id,),
                    )
                }
            # (Two queries: sqlite answers a lone min() or max() from the b-tree's ends.)
            (lo,) = db.execute("SELECT min(rowid) FROM metrics").fetchone()
            (hi,) = db.execute("SELECT max(rowid) FROM metrics").fetchone()
            if lo is None:
                return {}
            cols = _scan_columns(self._db_path, int(lo), int(hi) + 1)  # type: ignore[arg-type]
            if cols is None:  # no ADBC driver: the same scan through the sqlite3 module
                cols = _scan_columns_sqlite3(db)
            run_names, run_idx, keys, key_idx, steps, ts, values, is_nan = cols
            keep = np.array([r in wanted for r in run_names], dtype=bool)
            if not keep.all():
                rows = keep[run_idx] if len(run_idx) else np.zeros(0, bool)
                run_idx, key_idx = run_idx[rows], key_idx[rows]
                steps, ts, values, is_nan = steps[rows], ts[rows], values[rows], is_nan[rows]
            out: dict[str, dict[str, tuple[History, Cursor]]] = {}
            groups = _group_columns(run_idx, key_idx, len(keys), steps, ts, values, is_nan)
            for r, k, h in groups:
                out.setdefault(run_names[r], {})[keys[k]] = (h, _cursor_of(h))  # type: ignore[assignment]
            return out

        return self._call(f"metrics of {experiment!r}", scan)

    def new_points_many(
        self, wanted: dict[tuple[str, str], Cursor | None]
    ) -> dict[tuple[str, str], tuple[History, Cursor | None]]:
        """``new_points`` for many (run, key) pairs at once: on sqlite a handful of queries
        instead of several per pair (one index range per pair for larger steps, one range of
        the primary key per metric name for re-logged old steps); elsewhere one call per pair."""
        db = self._sql()
        fresh = {p: c for p, c in wanted.items() if c is None or db is None}
        out = {(r, k): self.new_points(r, k, c) for (r, k), c in fresh.items()}
        rest = {p: c for p, c in wanted.items() if p not in fresh}
        if rest and db is not None:
            out.update(self._call("new metric points", lambda: self._new_points_many_sql(db, rest)))
        return out

    @staticmethod
    def _new_points_many_sql(
        db: sqlite3.Connection, wanted: dict[tuple[str, str], Cursor | None]
    ) -> dict[tuple[str, str], tuple[History, Cursor | None]]:
        """New = a larger step than the cursor's, or a newer timestamp (a resume re-logs old
        steps later).  MLflow's primary key starts with (key, timestamp): one range per metric
        name, from the oldest of its cursors, finds every point newer than that; the rare
        point with a larger step but an older timestamp (another machine's clock) comes from
        the (run_uuid, key, step) index: one short range per pair, 400 pairs a statement."""
        out: dict[tuple[str, str], tuple[History, Cursor | None]] = {}
        by_key: dict[str, dict[str, Cursor]] = {}
        for (rid, key), cur in wanted.items():
            by_key.setdefault(key, {})[rid] = cur  # type: ignore[assignment]
        # One index range per pair (run_uuid, key, step > its cursor), all in one statement.
        q_old_clock = (
            "WITH c(run_uuid, step) AS (VALUES {}) "
            "SELECT c.run_uuid, m.step, m.timestamp, m.value, m.is_nan FROM c JOIN metrics m "
            "ON m.run_uuid = c.run_uuid AND m.key = ? AND m.step > c.step "
            "AND +m.timestamp <= ?"
        )
        for key, curs in by_key.items():
            oldest = min(c.timestamp for c in curs.values())
            found: dict[str, History] = {}
            rows = db.execute(
                "SELECT run_uuid, step, timestamp, value, is_nan FROM metrics "
                "WHERE key=? AND timestamp>?",
                (key, oldest),
            ).fetchall()
            if rows:
                rids, steps, ts, values, nans = zip(*rows, strict=True)
                pos = {rid: i for i, rid in enumerate(curs)}
                r = np.array([pos.get(x, -1) for x in rids], np.int64)
                steps, ts = np.array(steps, np.int64), np.array(ts, np.int64)
                c_step = np.array([c.step for c in curs.values()] + [0], np.int64)[r]
                c_ts = np.array([c.timestamp for c in curs.values()] + [0], np.int64)[r]
                keep = (r >= 0) & ((steps > c_step) | (ts > c_ts))
                cols = (np.array(values, np.float64), np.array(nans, np.int64))
                names = list(curs)
                for i, _, h in _group_columns(
                    r[keep],
                    np.zeros(int(keep.sum()), np.int64),
                    1,
                    steps[keep],
                    ts[keep],
                    cols[0][keep],
                    cols[1][keep],
                ):
                    found[names[i]] = h
            late_rows: dict[str, list[tuple[Any, ...]]] = {}
            items = list(curs.items())
            for a in range(0, len(items), 400):  # (sqlite's limit on bound parameters)
                chunk = items[a : a + 400]
                values_sql = ", ".join("(?, ?)" for _ in chunk)
                params: list[Any] = [v for rid, c in chunk for v in (rid, c.step)]
                for rid, *row in db.execute(q_old_clock.format(values_sql), (*params, key, oldest)):
                    late_rows.setdefault(rid, []).append(tuple(row))
            for rid, c in curs.items():
                h = found.get(rid, History.empty())
                late = late_rows.get(rid)
                if late:  # rare: merge and sort again, as one per-pair read would
                    h = _history(
                        late
                        + list(
                            zip(
                                h.steps.tolist(),
                                h.timestamps.tolist(),
                                h.values.tolist(),
                                [0] * len(h),
                                strict=True,
                            )
                        )
                    )
                out[(rid, key)] = (h, _cursor_of(h, c))
        return out

    def new_points(
        self, run_id: str, key: str, cursor: Cursor | None
    ) -> tuple[History, Cursor | None]:
        """Points of ``key`` logged after ``cursor`` (all when None), and the advanced cursor.

        "After" means newer than the newest point seen: a larger step, or — for a run that
        restarted from a checkpoint and logs old steps again — a later timestamp.
        """
        db = self._sql()
        if db is not None:
            return self._call(
                f"metric {key!r} of {run_id}", lambda: self._new_points_sql(db, run_id, key, cursor)
            )
        metrics = self._call(
            f"metric {key!r} of {run_id}", lambda: self.mlflow.get_metric_history(run_id, key)
        )
        rows = [(m.step, m.timestamp, m.value, 0) for m in metrics]
        h = _history(rows)
        if cursor is not None and len(h):
            keep = (h.steps > cursor.step) | (h.timestamps > cursor.timestamp)
            # A point with the cursor's own (step, timestamp) was already seen.
            h = History(h.steps[keep], h.values[keep], h.timestamps[keep])
        return h, _cursor_of(h, cursor)

    @staticmethod
    def _new_points_sql(
        db: sqlite3.Connection, run_id: str, key: str, cursor: Cursor | None
    ) -> tuple[History, Cursor | None]:
        cols = "SELECT step, timestamp, value, is_nan FROM metrics WHERE run_uuid=? AND key=?"
        if cursor is None:
            rows = db.execute(cols, (run_id, key)).fetchall()
            h = _history(rows)
            return h, _cursor_of(h)
        # Fast path: the (run_uuid, key, step) index answers "step > cursor" directly.
        rows = db.execute(cols + " AND step > ?", (run_id, key, cursor.step)).fetchall()
        (total,) = db.execute(
            "SELECT COUNT(*) FROM metrics WHERE run_uuid=? AND key=?", (run_id, key)
        ).fetchone()
        if total != cursor.count + len(rows):
            # Some new points have old steps (a resume re-logging steps): use timestamps.
            rows = db.execute(
                cols + " AND (step > ? OR timestamp > ?)",
                (run_id, key, cursor.step, cursor.timestamp),
            ).fetchall()
        h = _history(rows)
        new = _cursor_of(h, cursor)
        if new is not None:
            new = Cursor(new.step, new.timestamp, int(total))
        return h, new

    # ------------------------------------------------------------------ logs
    def log_text(
        self, run_id: str, path: str = LOG_ARTIFACT, max_bytes: int = DEFAULT_LOG_BYTES
    ) -> str:
        """The tail of a text artifact (``""`` when the run has none), at most ``max_bytes``."""
        import tempfile

        local = self._local_artifact(run_id, path)
        if local is not None:
            # A local artifact store: read the file in place (MLflow's download machinery
            # costs ~0.1 s a run even when there is nothing to download).
            return _tail(local, max_bytes) if os.path.isfile(local) else ""

        def fetch() -> str:
            with tempfile.TemporaryDirectory() as tmp:
                try:
                    local = self.mlflow.download_artifacts(run_id, path, tmp)
                except Exception as exc:
                    if _is_transient(exc) and not _is_missing(exc):
                        raise
                    return ""
                return _tail(local, max_bytes)

        return self._call(f"log of {run_id}", fetch)

    def _local_artifact(self, run_id: str, path: str) -> str | None:
        """The file behind a run's artifact on a local artifact store (sqlite stores only:
        the artifact root is one SQL lookup); None when MLflow must fetch it."""
        db = self._sql()
        if db is None:
            return None
        row = self._call(
            f"run {run_id}",
            lambda: db.execute(
                "SELECT artifact_uri FROM runs WHERE run_uuid=?", (run_id,)
            ).fetchone(),
        )
        if not row or not row[0]:
            return None
        uri = urlparse(row[0])
        if uri.scheme == "file" and uri.netloc in ("", "localhost"):
            root = unquote(uri.path)
        elif uri.scheme == "" and os.path.isabs(row[0]):
            root = row[0]
        else:
            return None  # s3://, mlflow-artifacts:/, … : MLflow knows how
        return os.path.join(root, *path.split("/"))


# ---------------------------------------------------------------------- columnar scans
_SCAN_SQL = (
    "SELECT run_uuid, key, CAST(step AS INTEGER), CAST(timestamp AS INTEGER), "
    "CAST(value AS REAL), CAST(is_nan AS INTEGER) FROM metrics NOT INDEXED"
)
Columns = tuple[
    list[str], np.ndarray, list[str], np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray
]


def _scan_columns(path: str, lo: int, hi: int, parts: int = 2) -> Columns | None:
    """Every row of ``metrics`` with lo <= rowid < hi, in rowid order, as columns — read by
    ADBC's sqlite driver straight into Arrow in ``parts`` rowid ranges on as many threads (the
    driver releases the GIL).  None when the driver is not installed."""
    try:
        import adbc_driver_sqlite.dbapi as adbc
    except ImportError:
        return None
    from concurrent.futures import ThreadPoolExecutor

    import pyarrow.compute as pc

    uri = f"file:{os.path.abspath(path)}?mode=ro"
    bounds = np.linspace(lo, hi, parts + 1).astype(np.int64).tolist()

    def read(i: int) -> Any:
        # autocommit: the read lock is held for the query only, never across calls.
        with adbc.connect(uri, autocommit=True) as conn, conn.cursor() as cur:
            cur.adbc_statement.set_options(**{"adbc.sqlite.query.batch_rows": "262144"})
            cur.execute(_SCAN_SQL + " WHERE rowid >= ? AND rowid < ?", (bounds[i], bounds[i + 1]))
            return cur.fetch_arrow_table()

    with ThreadPoolExecutor(parts) as pool:
        tables = [t for t in pool.map(read, range(parts)) if t.num_rows]
    runs: dict[str, int] = {}
    keys: dict[str, int] = {}
    run_idx, key_idx, cols = [], [], [[], [], [], []]
    for t in tables:
        for name, index, out in ((0, runs, run_idx), (1, keys, key_idx)):
            col = t.column(name)
            uniq = pc.unique(col)
            local = [index.setdefault(s, len(index)) for s in uniq.to_pylist()]
            pos = pc.index_in(col, value_set=uniq).to_numpy()
            out.append(np.asarray(local, np.int64)[pos])
        for j in range(4):
            cols[j].append(t.column(2 + j).to_numpy())
    if not tables:
        empty = np.zeros(0, np.int64)
        return [], empty, [], empty, empty, empty, np.zeros(0), empty
    steps, ts, values, is_nan = (np.concatenate(c) for c in cols)
    return (
        list(runs),
        np.concatenate(run_idx),
        list(keys),
        np.concatenate(key_idx),
        steps,
        ts,
        values.astype(np.float64, copy=False),
        is_nan,
    )


def _scan_columns_sqlite3(db: sqlite3.Connection) -> Columns:
    """The same scan through the standard library's sqlite3 module (slower: a tuple per row)."""
    runs: dict[str, int] = {}
    keys: dict[str, int] = {}
    r_idx: list[int] = []
    k_idx: list[int] = []
    steps: list[int] = []
    ts: list[int] = []
    values: list[float] = []
    nans: list[int] = []
    cur = db.execute(_SCAN_SQL)
    while rows := cur.fetchmany(100_000):
        for rid, key, step, t, v, nan in rows:
            r_idx.append(runs.setdefault(rid, len(runs)))
            k_idx.append(keys.setdefault(key, len(keys)))
            steps.append(step)
            ts.append(t)
            values.append(v)
            nans.append(nan)
    i64 = np.int64
    return (
        list(runs),
        np.array(r_idx, i64),
        list(keys),
        np.array(k_idx, i64),
        np.array(steps, i64),
        np.array(ts, i64),
        np.array(values, np.float64),
        np.array(nans, i64),
    )


def _is_missing(exc: BaseException) -> bool:
    text = str(exc).lower()
    return "no such file" in text or "not found" in text or "does not exist" in text


def _tail(path: str, max_bytes: int) -> str:
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        if size > max_bytes:
            f.seek(size - max_bytes)
        data = f.read()
    text = data.decode("utf-8", errors="replace")
    if size > max_bytes:
        text = text.split("\n", 1)[-1]  # drop the partial first line
    return text


def _run_info(run: Any) -> RunInfo:
    return RunInfo(
        run_id=run.info.run_id,
        experiment_id=run.info.experiment_id,
        name=run.info.run_name or "",
        status=run.info.status,
        start_time=run.info.start_time,
        end_time=run.info.end_time,
        params=dict(run.data.params),
        tags=dict(run.data.tags),
        metric_keys=tuple(sorted(run.data.metrics)),
    )
