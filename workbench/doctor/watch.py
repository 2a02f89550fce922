"""Incremental judging of every run of an experiment (``diagnose --experiment`` and ``watch``).

A ``Watcher`` keeps, per run, the metric histories seen so far, a ``Cursor`` per metric and
the findings.  Each ``poll``:

1. takes a cheap snapshot (status + newest point per metric of every run);
2. fetches only the points newer than each cursor, for metrics whose newest point moved (on
   sqlite: a handful of queries for all runs together);
3. re-runs the detectors on runs with new points: the prefix-stable ones only from a short
   look-back before the new points, the others over the whole — cheap — arrays (see
   ``detect_metrics``); a metric that already has a finding is judged whole again, so the
   findings always equal those of a full pass over the same data;
4. re-diagnoses a run only when its findings or status changed.

The first poll is a full pass; the state can be saved to a file so ``watch --once`` runs stay
incremental across processes.
"""

from __future__ import annotations

import os
import pickle
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from model.files import atomic_write_bytes
from scaffold.loader import Scaffold
from workbench.doctor.core import (
    _last_point,
    cadence_series,
    detect_metrics,
    detect_status,
    median_of_sorted,
    needs_log,
    order,
    stall_reference_ms,
    unread_losses,
    verdict,
)
from workbench.doctor.series import Series, normalize, resolve_roles
from workbench.doctor.types import Finding, RunVerdict
from workbench.errors import BadInputError
from workbench.runs.tracking import Cursor, History, RunInfo, TrackingClient

# Points re-judged before the new ones: a run of `persist` points may straddle two polls.
_LOOKBACK = 32
_STATE_VERSION = 2


@dataclass
class RunState:
    info: RunInfo
    cursors: dict[str, Cursor] = field(default_factory=dict)
    series: dict[str, Series] = field(default_factory=dict)
    roles: dict[str, str] = field(default_factory=dict)
    judged: dict[str, int] = field(default_factory=dict)  # points already judged per metric
    # Metrics whose judged points are not a prefix any more (re-normalised after a resume).
    rejudge: set[str] = field(default_factory=set)
    # The cadence's series: (name, points, their newest timestamp, sorted logging intervals),
    # grown with appended points instead of re-sorted every poll.
    cadence: tuple[str, int, int, np.ndarray] | None = None
    pre: list[Finding] = field(default_factory=list)  # findings before the log was read
    log_status_seen: str | None = None  # the status the verdict was made for
    metric_findings: list[Finding] = field(default_factory=list)
    verdict: RunVerdict | None = None
    log_text: str | None = None  # fetched when it first matters, again when the status changes
    log_status: str | None = None
    fresh: bool = False  # histories just loaded in bulk, not judged yet


def status_or_new(st: RunState, status: str) -> bool:
    """A run that stopped since its log was read may have written its traceback since."""
    return st.log_status != status


def _append(s: Series | None, name: str, new: History) -> tuple[Series, bool]:
    """Extend a normalised series with new points; False when it had to be re-normalised
    (steps went back: a resume), so the old points are not a prefix any more.  The series
    stands in for the raw history: it already holds the last write of each old step, and
    the new points come after all of them."""
    if s is None:
        return normalize(name, new), False
    steps = np.concatenate([s.steps, new.steps])
    values = np.concatenate([s.values, new.values])
    ts = np.concatenate([s.timestamps, new.timestamps])
    if len(new) and new.steps[0] > s.steps[-1] and np.all(np.diff(new.steps) > 0):
        return Series(name, steps, values, ts), True
    return normalize(name, History(steps, values, ts)), False


class Watcher:
    def __init__(
        self,
        client: TrackingClient,
        experiment: str,
        scaffold: Scaffold,
        *,
        filter_string: str = "",
    ) -> None:
        self.client = client
        self.experiment = experiment
        self.scaffold = scaffold
        self.filter_string = filter_string
        self.runs: dict[str, RunState] = {}
        # A run of `persist` points straddling two polls must be seen whole.
        persist = int(scaffold.detectors.get("divergence", {}).get("persist", 5))
        self._lookback = max(_LOOKBACK, persist + 1)

    # ------------------------------------------------------------------ persistence
    def save(self, path: str | Path) -> None:
        """Write the state atomically (temp file + rename)."""
        blob = {
            "version": _STATE_VERSION,
            "uri": self.client.uri,
            "experiment": self.experiment,
            "runs": self.runs,
        }
        atomic_write_bytes(path, pickle.dumps(blob, protocol=pickle.HIGHEST_PROTOCOL))

    def load(self, path: str | Path) -> bool:
        """Restore a saved state for the same store and experiment (False if none/other)."""
        path = Path(path)
        if not path.is_file():
            return False
        try:
            with open(path, "rb") as f:
                blob = pickle.load(f)
        except Exception as exc:
            raise BadInputError(f"watch state {path} is unreadable: {exc}") from exc
        if (
            not isinstance(blob, dict)
            or blob.get("version") != _STATE_VERSION
            or blob.get("uri") != self.client.uri
            or blob.get("experiment") != self.experiment
        ):
            return False
        self.runs = blob["runs"]
        return True

    # ------------------------------------------------------------------ polling
    def poll(
        self,
        *,
        now_ms: int | None = None,
        progress: Callable[[int, int], None] | None = None,
    ) -> list[RunVerdict]:
        """One pass over the experiment; returns every run's verdict (newest runs first)."""
        now_ms = int(time.time() * 1000) if now_ms is None else now_ms
        snap = self.client.snapshot(self.experiment)
        if self.filter_string:
            keep = {
                r.run_id
                for r in self.client.runs(self.experiment, filter_string=self.filter_string)
            }
            snap = {k: v for k, v in snap.items() if k in keep}
        new_ids = [rid for rid in snap if rid not in self.runs]
        if new_ids:
            infos = (
                {r.run_id: r for r in self.client.runs(self.experiment)}
                if len(new_ids) > 20
                else {rid: self.client.run(rid) for rid in new_ids}
            )
            for rid in new_ids:
                if rid in infos:
                    self.runs[rid] = RunState(info=infos[rid])
        for rid in list(self.runs):
            if rid not in snap:
                del self.runs[rid]  # deleted run
        if len(new_ids) > 20:
            # Many new runs (a first pass): one sequential scan instead of a lookup per run.
            bulk = self.client.bulk_histories(self.experiment, set(new_ids))
            for rid, by_key in (bulk or {}).items():
                st = self.runs.get(rid)
                if st is None:
                    continue
                for key, (h, cur) in by_key.items():
                    st.cursors[key] = cur
                    st.series[key] = normalize(key, h)
                st.fresh = True
        # Every metric whose newest point moved, for all runs at once.
        moved: dict[tuple[str, str], Cursor | None] = {}
        for rid, sn in snap.items():
            st = self.runs.get(rid)
            if st is None:
                continue
            for key, (step, ts) in sn.latest.items():
                cur = st.cursors.get(key)
                if cur is None or cur.step != step or cur.timestamp < ts:
                    moved[(rid, key)] = cur
        fetched = self.client.new_points_many(moved) if moved else {}
        total = len(snap)
        for i, (rid, sn) in enumerate(snap.items()):
            st = self.runs.get(rid)
            if st is not None:
                self._update(st, sn, now_ms, fetched)
            if progress:
                progress(i + 1, total)
        ordered = sorted(self.runs.values(), key=lambda s: -(s.info.start_time or 0))
        return [s.verdict for s in ordered if s.verdict is not None]

    def _update(
        self,
        st: RunState,
        sn: Any,
        now_ms: int,
        fetched: dict[tuple[str, str], tuple[History, Cursor | None]],
    ) -> None:
        status_changed = sn.status != st.info.status or sn.end_time != st.info.end_time
        if status_changed:
            st.info = RunInfo(**{**st.info.__dict__, "status": sn.status, "end_time": sn.end_time})
        changed: list[str] = []
        for key in sn.latest:
            got = fetched.get((st.info.run_id, key))
            if got is None:
                continue
            new, cur2 = got
            if cur2 is not None:
                st.cursors[key] = cur2
            if len(new) == 0:
                continue
            st.series[key], appended = _append(st.series.get(key), key, new)
            if not appended:
                st.rejudge.add(key)
                st.cadence = None
            changed.append(key)
        if st.fresh:
            changed = changed or list(st.series)
        if changed or st.verdict is None or status_changed:
            roles = resolve_roles({k: len(v) for k, v in st.series.items()}, self.scaffold.metrics)
            # Judged points are skipped only when nothing can have changed their verdict:
            # same roles, same status, a pure append, finite values, no finding on the metric.
            whole = st.fresh or status_changed or roles != st.roles
            since = {
                k: 0 if whole or k in st.rejudge else max(0, st.judged.get(k, 0) - self._lookback)
                for k in st.series
            }
            # Judged whole as well: a kind that already has a finding on a metric (its counts
            # and peaks are the whole series'), and `exploding_gradients` on a metric holding
            # a non-finite value (it fills gaps from the neighbouring points).
            again = {(f.kind, f.metric) for f in st.metric_findings if f.metric}
            again |= {
                ("exploding_gradients", k)
                for k, v in st.series.items()
                if not np.isfinite(v.values).all()
            }
            st.roles = roles
            st.metric_findings = detect_metrics(
                st.series,
                self.scaffold.detectors,
                self.scaffold.metrics,
                since=since,
                whole=again,
                roles=st.roles,
                final=st.info.status != "RUNNING",
                params=st.info.params,
            )
            st.judged = {k: len(v) for k, v in st.series.items()}
            st.rejudge = set()
            st.fresh = False
        self._judge(st, now_ms)

    def _judge(self, st: RunState, now_ms: int) -> None:
        status = st.info.status
        th = self.scaffold.detectors
        last = _last_point(st.series, None)
        ref = stall_reference_ms(st.info, now_ms)
        # The cadence only matters to `stalled`, and only once the silence outlasts the
        # minimum any cadence allows (then `stalled` compares it with the cadence).
        quiet = th.get("stalled", {}).get("min_seconds", 60.0)
        if ref is not None and last[1] is not None and (ref - last[1]) / 1000.0 > quiet:
            last = (last[0], last[1], _cadence(st))
        pre = st.metric_findings + detect_status(st.series, st.info, None, th, now_ms, last)
        if st.verdict is not None and pre == st.pre and status == st.log_status_seen:
            return  # same findings, same status, same log: the same verdict
        st.pre, st.log_status_seen = pre, status
        if needs_log(status, pre) and (st.log_text is None or status_or_new(st, status)):
            st.log_text = self.client.log_text(st.info.run_id)
            st.log_status = status
        found = st.metric_findings + detect_status(
            st.series, st.info, st.log_text, th, now_ms, last
        )
        found = order(found)
        has_data = any(len(x) for x in st.series.values())
        unread = unread_losses(st.series, self.scaffold.metrics, st.roles)
        st.verdict = verdict(
            st.info.run_id,
            found,
            st.info.params,
            st.log_text,
            self.scaffold,
            status,
            has_data,
            unread,
            st.series.get(st.roles["lr"]) if "lr" in st.roles else None,
        )


def _cadence(st: RunState) -> float | None:
    """The run's median logging interval (what ``_last_point`` computes), kept up to date
    from the new points' intervals: inserting ten values beats sorting thousands."""
    s = cadence_series(st.series)
    if s is None:
        return None
    ts, c = s.timestamps, st.cadence
    if c is not None and c[0] == s.name and c[1] <= len(ts):
        new = ts[c[1] :]
        if len(new) == 0:
            diffs = c[3]
        elif new.min() >= c[2]:
            add = np.diff(np.concatenate([[c[2]], np.sort(new)]))
            add.sort()
            diffs = np.insert(c[3], np.searchsorted(c[3], add), add)
        else:
            c = None
    else:
        c = None
    if c is None:
        diffs = np.sort(np.diff(np.sort(ts)))
    st.cadence = (s.name, len(ts), int(ts.max()) if len(ts) else 0, diffs)
    return median_of_sorted(diffs) if len(ts) > 2 else None


def diagnose_experiment(
    client: TrackingClient,
    experiment: str,
    scaffold: Scaffold,
    *,
    now_ms: int | None = None,
    progress: Callable[[int, int], None] | None = None,
    filter_string: str = "",
) -> list[RunVerdict]:
    """Every run of an experiment (matching ``filter_string``) judged once (a full pass)."""
    w = Watcher(client, experiment, scaffold, filter_string=filter_string)
    out = w.poll(now_ms=now_ms, progress=progress)
    if not out:
        raise BadInputError(f"experiment {experiment!r} has no runs")
    return out


def state_path(uri: str, experiment: str) -> Path:
    """Default place for a watcher's state: the user cache, one file per store+experiment."""
    import hashlib

    base = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "workbench" / "watch"
    digest = hashlib.sha1(f"{uri}\n{experiment}".encode()).hexdigest()[:16]
    return base / f"{digest}.pkl"
