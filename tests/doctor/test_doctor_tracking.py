"""TrackingClient on a real MLflow sqlite store: paging, incremental cursors, the columnar
scan and batched polls (equal to per-run and MLflow API reads), logs, errors — and watcher
polls that equal full passes over the same data."""

from __future__ import annotations

import socket
import time

import numpy as np
import pytest

from workbench.errors import BadInputError, WorkbenchError
from workbench.runs.tracking import TrackingClient


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


def _awkward_store(store) -> list[str]:
    """Runs logged by MLflow's own client with what real stores hold: NaN/±inf, a resume that
    re-logs old steps, timestamps out of step order, a metric with one point."""
    from mlflow.entities import Metric

    ids = []
    t0 = int(time.time() * 1000) - 10_000_000
    for i in range(5):
        x = np.linspace(3, 1, 60)
        if i == 1:
            x[40:] = np.nan
        if i == 2:
            x[10], x[11] = np.inf, -np.inf
        rid = store.log_run({"loss": (range(60), x), "lr": ([0], [0.1])}, t0_ms=t0)
        ids.append(rid)
    # A resume from step 30, logged later; and points whose timestamps run backwards.
    store.client.log_batch(
        ids[3], metrics=[Metric("loss", 7.0 + s, t0 + 900_000 + s, s) for s in range(30, 40)]
    )
    store.client.log_batch(
        ids[4], metrics=[Metric("loss", 0.5, t0 + 500_000 - s, 60 + s) for s in range(5)]
    )
    return ids


@pytest.mark.parametrize("adbc", [True, False])
def test_bulk_scan_equals_per_run_and_mlflow_api_reads(store, adbc, monkeypatch):
    """The columnar scan (ADBC, or sqlite3 without it), the per-run SQL reads and MLflow's
    own ``get_metric_history`` give the same arrays, point for point."""
    import workbench.runs.tracking as T

    if not adbc:
        monkeypatch.setattr(T, "_scan_columns", lambda *a, **k: None)
    ids = _awkward_store(store)
    client = TrackingClient(store.uri)
    api = TrackingClient(store.uri)
    api._db_path = None  # the generic path every store supports
    bulk = client.bulk_histories("exp")
    assert set(bulk) == set(ids)
    for rid in ids:
        per_run = client.histories(rid)
        assert set(per_run) == set(bulk[rid]) == {"loss", "lr"}
        for key, (h, cur) in bulk[rid].items():
            for other in (per_run[key], api.history(rid, key)):
                assert np.array_equal(h.steps, other.steps)
                assert np.array_equal(h.timestamps, other.timestamps)
                assert np.array_equal(h.values, other.values, equal_nan=True)
            assert cur.count == len(h) and cur.step == h.steps.max()
    assert np.isnan(bulk[ids[1]]["loss"][0].values[40:]).all()
    assert list(bulk[ids[2]]["loss"][0].values[10:12]) == [np.inf, -np.inf]


def test_new_points_many_equals_one_pair_at_a_time(store):
    from mlflow.entities import Metric

    ids = _awkward_store(store)
    client = TrackingClient(store.uri)
    cursors = {(r, k): client.new_points(r, k, None)[1] for r in ids for k in ("loss", "lr")}
    now = int(time.time() * 1000)
    store.client.log_batch(ids[0], metrics=[Metric("loss", 0.1, now + s, 60 + s) for s in range(4)])
    store.client.log_batch(ids[1], metrics=[Metric("loss", 5.0, now + 9, 20)])  # a re-logged step
    store.client.log_batch(ids[2], metrics=[Metric("lr", 0.2, now, 1)])
    # A larger step with an old timestamp (another machine's clock), next to a normal one.
    store.client.log_batch(
        ids[4], metrics=[Metric("loss", 0.3, 1000, 100), Metric("loss", 0.2, now, 101)]
    )
    many = client.new_points_many(cursors)
    assert set(many) == set(cursors)
    for pair, cur in cursors.items():
        h1, c1 = client.new_points(*pair, cur)
        h2, c2 = many[pair]
        assert np.array_equal(h1.steps, h2.steps) and np.array_equal(h1.timestamps, h2.timestamps)
        assert np.array_equal(h1.values, h2.values, equal_nan=True)
        assert (c1.step, c1.timestamp) == (c2.step, c2.timestamp)
    assert list(many[(ids[0], "loss")][0].steps) == [60, 61, 62, 63]
    assert list(many[(ids[1], "loss")][0].steps) == [20]
    assert list(many[(ids[4], "loss")][0].steps) == [100, 101]
    assert len(many[(ids[3], "loss")][0]) == 0


def test_local_log_is_read_in_place_like_mlflow_downloads_it(store):
    rid = store.log_run({"loss": ([0], [1.0])}, log="a\nTraceback (most recent call last)\nboom\n")
    client = TrackingClient(store.uri)
    assert client._local_artifact(rid, "logs/train.log") is not None
    fast = client.log_text(rid, max_bytes=20)
    client._db_path = None  # MLflow's download path
    assert fast == client.log_text(rid, max_bytes=20) == "boom\n"


def test_incremental_polls_equal_a_full_pass(store):
    """A watcher fed new points poll after poll reports exactly what a fresh full pass over
    the same data reports — for faults that straddle polls (a divergence whose `persist`
    points arrive in two polls, a spike, NaN and a gradient blow-up after a poll, an eval
    loss that confirms an earlier divergence only later, a throughput drop that becomes
    "sustained" only later, vanishing gradients, a diffusion model's loss and FID judged
    both, a resume re-logging old steps)."""
    from mlflow.entities import Metric

    from scaffold.loader import load_scaffold
    from workbench.doctor.watch import Watcher

    rng = np.random.default_rng(1)
    n0, new, rounds = 200, 25, 3
    n = n0 + new * rounds
    steps = np.arange(n)
    t0 = int(time.time() * 1000) - 10_000_000
    runs: dict[str, dict[str, np.ndarray]] = {}
    for i in range(22):  # > 20 new runs: the first pass takes the bulk scan
        loss = 3 * np.exp(-steps / 60) + 1 + 0.02 * rng.standard_normal(n)
        gn = np.exp(0.1 * rng.standard_normal(n))
        m = {"train/loss": loss, "grad_norm": gn}
        if i == 1:
            loss[210] *= 4  # spike after the first poll
        elif i == 2:
            loss[197:] += 3  # divergence straddling the first poll
        elif i == 3:
            loss[230:] = np.nan
        elif i == 4:
            gn[205] = 1e6
        elif i == 5:  # diverges at 150, the eval loss confirms it only after step 240
            loss[150:] += 2
            ev = np.full(n // 10, 1.5)
            ev[24:] = 3.0
            m["eval/loss"] = ev
        elif i == 6:  # slows down at 190 for good: "sustained" only after enough points
            tp = 1000 + 10 * rng.standard_normal(n)
            tp[190:] = 400
            m["tokens_per_sec"] = tp
        elif i == 7:
            gn[190:] = 1e-9
        elif i == 8:  # a diffusion model: its loss thrown after a poll, its FID worse only later
            loss[215:] *= 1000
            fid = np.linspace(0.6, 0.2, n // 10)
            fid[25:] = 3.0
            m = {"loss": loss, "FID": fid}
        elif i == 10:  # a loss that starts at 0.05 rises by half its start, across a poll
            loss = 0.04 * np.exp(-steps / 30) + 0.012 + 5e-4 * rng.standard_normal(n)
            loss[198:] += 0.04
            m = {"train/loss": loss, "grad_norm": gn}
        elif i == 11:  # a loss that crossed zero: a wobble of 0.05 after a poll is no rise
            loss = -0.6 + 0.7 * np.exp(-steps / 8) + 0.005 * rng.standard_normal(n)
            loss[205:215] += 0.05
            m = {"train/loss": loss, "grad_norm": gn}
        runs[store.log_run({}, status=None, t0_ms=t0)] = m

    def log(rid: str, lo: int, hi: int) -> None:
        batch = []
        for key, x in runs[rid].items():
            sparse = key in ("eval/loss", "FID")  # one eval every 10 steps
            sub = range(lo // 10, hi // 10) if sparse else range(lo, hi)
            step = (lambda s: 10 * s) if sparse else (lambda s: s)
            batch += [Metric(key, float(x[s]), t0 + 1000 * step(s), step(s)) for s in sub]
        for j in range(0, len(batch), 1000):
            store.client.log_batch(rid, metrics=batch[j : j + 1000])

    for rid in runs:
        log(rid, 0, n0)
    sc = load_scaffold(None)
    client = TrackingClient(store.uri)
    watcher = Watcher(client, "exp", sc)
    first = watcher.poll(now_ms=t0 + 1000 * n0)
    assert first == Watcher(client, "exp", sc).poll(now_ms=t0 + 1000 * n0)
    resumed = next(iter(runs))
    for r in range(rounds):
        hi = n0 + new * (r + 1)
        for rid in runs:
            log(rid, hi - new, hi)
        if r == 1:  # a resume: old steps again, later, with other values
            store.client.log_batch(
                resumed,
                metrics=[Metric("train/loss", 9.0, t0 + 1000 * hi + s, 150 + s) for s in range(8)],
            )
        now = t0 + 1000 * hi + 500
        inc = watcher.poll(now_ms=now)
        full = Watcher(client, "exp", sc).poll(now_ms=now)
        assert inc == full, r
    kinds = {v.run_id: {f.kind for f in v.findings} for v in inc}
    ids = list(runs)
    assert "loss_spike" in kinds[ids[1]] and "divergence" in kinds[ids[2]]
    assert "nan_inf" in kinds[ids[3]] and "exploding_gradients" in kinds[ids[4]]
    assert "divergence" in kinds[ids[5]] and "throughput_drop" in kinds[ids[6]]
    assert "vanishing_gradients" in kinds[ids[7]] and kinds[resumed]
    div = [f for v in inc if v.run_id == ids[8] for f in v.findings if f.kind == "divergence"]
    assert [(f.metric, f.step) for f in div] == [("loss", 215)]  # before the FID saw it
    assert not kinds[ids[9]]
    assert "divergence" in kinds[ids[10]] and "divergence" not in kinds[ids[11]]
