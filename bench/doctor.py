"""Run doctor speed: a full ``diagnose --experiment`` pass vs an incremental ``watch --once``.

A synthetic MLflow sqlite store of R runs × P steps (``train/loss`` and ``grad_norm`` at every
step, so 2·P points per run; ~10 % of the runs carry a fault) is bulk-inserted straight into
MLflow's own schema (the store is created by MLflow first, so the schema is exactly MLflow's).
Then:

1. full pass: a fresh ``Watcher`` polls the experiment (what ``workbench diagnose
   --experiment`` does);
2. 10 new points per run and metric are inserted;
3. incremental pass: the same watcher polls again (what ``workbench watch --once --state``
   does with the state of step 1).

Prints both times and their ratio (and the load average: the machine is shared).  With
``--check`` a fresh watcher then makes a full pass over the grown store and the bench says
whether its verdicts equal the incremental ones (they must: the incremental pass is exact).
``python -m bench.doctor --runs 1000 --points 5000`` is the issue's full size; ``make bench``
runs the smaller default.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sqlite3
import tempfile
import time
import uuid

import numpy as np


def build_store(path: str, runs: int, points: int, seed: int = 0) -> tuple[str, list[str], int]:
    """Create the store with MLflow, then bulk-insert rows into its tables.

    Rows go in the order of the ``metrics`` primary key (key, timestamp, step, run_uuid), so
    every insert is an append; MLflow's secondary indexes are dropped during the load and
    re-created from their own SQL afterwards (the schema ends up exactly MLflow's).
    """
    import logging

    from mlflow.tracking import MlflowClient

    logging.getLogger("mlflow").setLevel(logging.WARNING)
    uri = f"sqlite:///{path}"
    client = MlflowClient(uri)
    exp_id = client.create_experiment(
        "bench", artifact_location=tempfile.mkdtemp(prefix="bench-art-")
    )
    rng = np.random.default_rng(seed)
    t0 = int(time.time() * 1000) - points * 100  # one step every 100 ms, all runs in step
    ids = sorted(uuid.uuid4().hex for _ in range(runs))
    steps = np.arange(points)
    loss = 3 * np.exp(-steps / (points / 5)) + 1 + 0.02 * rng.standard_normal((runs, points))
    gn = np.exp(0.1 * rng.standard_normal((runs, points)))
    for i in range(0, runs, 10):  # a fault every tenth run: divergence, NaN or a blow-up
        at = int(rng.integers(points // 4, points - 50))
        kind = (i // 10) % 3
        if kind == 0:
            loss[i, at:] += np.linspace(0, 5, points - at)
        elif kind == 1:
            loss[i, at:] = np.nan
        else:
            gn[i, at] = 1e5

    db = sqlite3.connect(path)
    db.execute("PRAGMA synchronous=OFF")
    db.execute("PRAGMA journal_mode=MEMORY")
    indexes = db.execute(
        "SELECT name, sql FROM sqlite_master WHERE type='index' AND tbl_name='metrics' AND sql IS NOT NULL"
    ).fetchall()
    for name, _ in indexes:
        db.execute(f'DROP INDEX "{name}"')
    db.executemany(
        "INSERT INTO runs (run_uuid, name, source_type, source_name, entry_point_name, user_id, "
        "status, start_time, end_time, source_version, lifecycle_stage, artifact_uri, experiment_id) "
        "VALUES (?, ?, 'LOCAL', '', '', 'bench', 'RUNNING', ?, NULL, '', 'active', ?, ?)",
        [(rid, f"run-{i}", t0, f"/tmp/none/{rid}", int(exp_id)) for i, rid in enumerate(ids)],
    )
    chunk = max(1, 200_000 // runs)
    for key, vals in (("grad_norm", gn), ("train/loss", loss)):  # PK order: key first
        nan = np.isnan(vals)
        clean = np.where(nan, 0.0, vals)
        for a in range(0, points, chunk):
            rows = [
                (key, float(clean[r, s]), t0 + s * 100, ids[r], s, int(nan[r, s]))
                for s in range(a, min(points, a + chunk))
                for r in range(runs)
            ]
            db.executemany(
                "INSERT INTO metrics (key, value, timestamp, run_uuid, step, is_nan) VALUES (?,?,?,?,?,?)",
                rows,
            )
        db.executemany(
            "INSERT INTO latest_metrics (key, value, timestamp, step, is_nan, run_uuid) VALUES (?,?,?,?,?,?)",
            [
                (
                    key,
                    float(clean[r, -1]),
                    t0 + (points - 1) * 100,
                    points - 1,
                    int(nan[r, -1]),
                    ids[r],
                )
                for r in range(runs)
            ],
        )
    for _, sql in indexes:
        db.execute(sql)
    db.commit()
    db.close()
    return uri, ids, t0 + (points - 1) * 100


def append_points(path: str, ids: list[str], points: int, new: int, now: int) -> None:
    """``new`` more points per run and metric, as a live training would log them."""
    db = sqlite3.connect(path)
    rows, latest = [], []
    for rid in ids:
        for key, base in (("train/loss", 1.0), ("grad_norm", 1.0)):
            for j in range(new):
                rows.append((key, base + 0.01 * j, now + j, rid, points + j, 0))
            latest.append((base + 0.01 * (new - 1), now + new - 1, points + new - 1, key, rid))
    db.executemany(
        "INSERT INTO metrics (key, value, timestamp, run_uuid, step, is_nan) VALUES (?,?,?,?,?,?)",
        rows,
    )
    db.executemany(
        "UPDATE latest_metrics SET value=?, timestamp=?, step=? WHERE key=? AND run_uuid=?", latest
    )
    db.commit()
    db.close()


def main(argv: list[str]) -> None:
    ap = argparse.ArgumentParser(prog="bench.doctor", description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=200)
    ap.add_argument("--points", type=int, default=5000, help="steps per run (2 metrics each)")
    ap.add_argument("--new", type=int, default=10, help="new points per run and metric")
    ap.add_argument("--keep", help="build the store in this folder and keep it")
    ap.add_argument(
        "--check", action="store_true", help="compare the incremental verdicts with a full pass"
    )
    args = ap.parse_args(argv)

    from scaffold.loader import load_scaffold
    from workbench.doctor.watch import Watcher
    from workbench.runs.tracking import TrackingClient

    folder = args.keep or tempfile.mkdtemp(prefix="bench-doctor-")
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, "mlflow.db")
    if os.path.exists(path):
        os.unlink(path)
    try:
        t = time.perf_counter()
        uri, ids, t_end = build_store(path, args.runs, args.points)
        print(
            f"store: {args.runs} runs × {args.points} steps × 2 metrics built in {time.perf_counter() - t:.1f}s",
            flush=True,
        )
        sc = load_scaffold(None)
        client = TrackingClient(uri)
        w = Watcher(client, "bench", sc)
        t = time.perf_counter()
        # "now" is just after the last logged point (the store took a while to build).
        full = w.poll(now_ms=t_end + 1000)
        t_full = time.perf_counter() - t
        failing = sum(v.status == "failing" for v in full)
        append_points(path, ids, args.points, args.new, now=t_end + 2000)
        t = time.perf_counter()
        inc = w.poll(now_ms=t_end + 3000)
        t_inc = time.perf_counter() - t
        assert len(inc) == len(full) == args.runs
        print(
            f"full pass (diagnose --experiment): {t_full:.2f}s for {len(full)} runs ({failing} failing)"
        )
        print(f"incremental pass (watch --once, +{args.new} points/run/metric): {t_inc:.3f}s")
        print(f"ratio full/incremental: {t_full / max(t_inc, 1e-9):.1f}x")
        print("load average (1/5/15 min): " + " ".join(f"{x:.1f}" for x in os.getloadavg()))
        if args.check:
            fresh = Watcher(TrackingClient(uri), "bench", sc).poll(now_ms=t_end + 3000)
            print(f"incremental verdicts == fresh full pass: {fresh == inc}")
    finally:
        if not args.keep:
            shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    import sys

    main(sys.argv[1:])
