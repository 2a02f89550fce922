"""TrackingClient on a real MLflow sqlite store: paging, incremental cursors, logs, errors."""

from __future__ import annotations

import socket
import time

import numpy as np
import pytest

from workbench.errors import BadInputError, WorkbenchError
from workbench.tracking import TrackingClient


def test_runs_page_through_all(store):
    ids = {store.log_run({"loss": ([0, 1], [2.0, 1.0])}) for _ in range(7)}
    client = TrackingClient(store.uri)
    runs = client.runs("exp", page_size=3)
    assert {r.run_id for r in runs} == ids
    assert all(r.status == "FINISHED" and r.metric_keys == ("loss",) for r in runs)
    assert set(client.snapshot("exp")) == ids


def test_histories_keep_nan_and_inf(store):
    rid = store.log_run({"loss": ([0, 1, 2], [1.0, float("nan"), float("inf")])})
    h = TrackingClient(store.uri).history(rid, "loss")
    assert list(h.steps) == [0, 1, 2]
    assert h.values[0] == 1.0 and np.isnan(h.values[1]) and np.isposinf(h.values[2])


@pytest.mark.parametrize("sql", [True, False])
def test_new_points_fetch_only_what_is_new(store, sql):
    from mlflow.entities import Metric

    rid = store.log_run({"loss": (range(100), np.linspace(3, 1, 100))}, status=None)
    client = TrackingClient(store.uri)
    if not sql:
        client._db_path = None  # the generic path every store supports
    h, cur = client.new_points(rid, "loss", None)
    assert len(h) == 100 and cur.step == 99
    h2, cur2 = client.new_points(rid, "loss", cur)
    assert len(h2) == 0 and cur2 == cur
    now = int(time.time() * 1000)
    store.client.log_batch(rid, metrics=[Metric("loss", 0.5, now + i, 100 + i) for i in range(10)])
    h3, cur3 = client.new_points(rid, "loss", cur)
    assert list(h3.steps) == list(range(100, 110)) and cur3.step == 109
    # A resume re-logs old steps with newer timestamps: they are new points too.
    store.client.log_batch(
        rid, metrics=[Metric("loss", 9.0, now + 1000 + i, 105 + i) for i in range(3)]
    )
    h4, _ = client.new_points(rid, "loss", cur3)
    assert list(h4.steps) == [105, 106, 107] and np.all(h4.values == 9.0)


def test_log_text_is_tail_first_and_capped(store):
    log = "".join(f"line {i}\n" for i in range(5000))
    rid = store.log_run({"loss": ([0], [1.0])}, log=log)
    client = TrackingClient(store.uri)
    text = client.log_text(rid, max_bytes=1000)
    assert len(text) <= 1000 and text.endswith("line 4999\n") and text.startswith("line ")
    assert client.log_text(store.log_run({"loss": ([0], [1.0])})) == ""  # no log artifact


def test_bad_inputs_are_one_line_errors(store, tmp_path):
    client = TrackingClient(store.uri)
    with pytest.raises(BadInputError, match="not found"):
        client.run("0123456789abcdef0123456789abcdef")
    with pytest.raises(BadInputError, match="experiment 'nope' not found"):
        client.runs("nope")
    with pytest.raises(BadInputError, match="not found"):
        TrackingClient(f"sqlite:///{tmp_path}/missing.db")


def test_unreachable_server_is_retried_then_one_error():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # free, nothing listens once closed
    sleeps = []
    client = TrackingClient(f"http://127.0.0.1:{port}", retries=2, sleep=sleeps.append)
    with pytest.raises(WorkbenchError, match="unreachable") as exc:
        client.runs("exp")
    assert "\n" not in str(exc.value)
    assert sleeps == [0.25, 0.5]  # exponential backoff between the attempts


def test_bulk_first_pass_equals_per_run_reads(store):
    """A first pass over many runs reads all histories in one scan; verdicts are the same."""
    from scaffold.loader import load_scaffold
    from workbench.doctor.core import diagnose_run
    from workbench.doctor.watch import Watcher

    rng = np.random.default_rng(0)
    for i in range(24):
        x = 3 * np.exp(-np.arange(150) / 30) + 1 + 0.02 * rng.standard_normal(150)
        if i % 4 == 0:
            x[100 + i :] = np.nan
        store.log_run({"train/loss": (range(150), x), "grad_norm": (range(150), np.ones(150))})
    client = TrackingClient(store.uri)
    sc = load_scaffold(None)
    bulk = {v.run_id: v for v in Watcher(client, "exp", sc).poll()}
    assert len(bulk) == 24
    for rid, v in bulk.items():
        assert v == diagnose_run(client, rid, sc)
    assert sum(v.status == "failing" for v in bulk.values()) == 6
