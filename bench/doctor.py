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

Prints both times and their ratio.  ``python -m bench.doctor --runs 1000 --points 5000`` is the
issue's full size; ``make bench`` runs the smaller default.
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


def build_store(path: str, runs: int, points: int, seed: int = 0) -> tuple[str, list[str]]:
    import logging

    from mlflow.tracking import MlflowClient

    logging.getLogger("mlflow").setLevel(logging.WARNING)
    uri = f"sqlite:///{path}"
    client = MlflowClient(uri)
    exp_id = client.create_experiment(
        "bench", artifact_location=tempfile.mkdtemp(prefix="bench-art-")
    )
    rng = np.random.default_rng(seed)
    now = int(time.time() * 1000)
    t0 = now - points * 100  # one step every 100 ms, the last one just now
    ids = [uuid.uuid4().hex for _ in range(runs)]
    db = sqlite3.connect(path)
    db.executemany(
        "INSERT INTO runs (run_uuid, name, source_type, source_name, entry_point_name, user_id, "
        "status, start_time, end_time, source_version, lifecycle_stage, artifact_uri, experiment_id) "
        "VALUES (?, ?, 'LOCAL', '', '', 'bench', 'RUNNING', ?, NULL, '', 'active', ?, ?)",
        [(rid, f"run-{i}", t0 + i, f"/tmp/none/{rid}", int(exp_id)) for i, rid in enumerate(ids)],
    )
    steps = np.arange(points)
    ts = (t0 + steps * 100).tolist()
    step_list = steps.tolist()
    for i, rid in enumerate(ids):
        loss = 3 * np.exp(-steps / (points / 5)) + 1 + 0.02 * rng.standard_normal(points)
        gn = np.exp(0.1 * rng.standard_normal(points))
        if i % 10 == 0:  # a fault every tenth run: divergence, NaN or a gradient blow-up
            at = int(rng.integers(points // 4, points - 50))
            kind = (i // 10) % 3
            if kind == 0:
                loss[at:] += np.linspace(0, 5, points - at)
            elif kind == 1:
                loss[at:] = np.nan
            else:
                gn[at] = 1e5
        rows = []
        for key, vals in (("train/loss", loss), ("grad_norm", gn)):
            nan = np.isnan(vals)
            v = np.where(nan, 0.0, vals).tolist()
            rows += zip(
                [key] * points,
                v,
                ts,
                [rid] * points,
                step_list,
                nan.astype(int).tolist(),
                strict=True,
            )
        db.executemany(
            "INSERT INTO metrics (key, value, timestamp, run_uuid, step, is_nan) VALUES (?,?,?,?,?,?)",
            rows,
        )
        db.executemany(
            "INSERT INTO latest_metrics (key, value, timestamp, step, is_nan, run_uuid) VALUES (?,?,?,?,?,?)",
            [
                (k, r[1], r[2], r[4], r[5], rid)
                for k, r in (("train/loss", rows[points - 1]), ("grad_norm", rows[-1]))
            ],
        )
    db.commit()
    db.close()
    return uri, ids


def append_points(path: str, ids: list[str], points: int, new: int) -> None:
    """``new`` more points per run and metric, as a live training would log them."""
    db = sqlite3.connect(path)
    now = int(time.time() * 1000)
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
    args = ap.parse_args(argv)

    from scaffold.loader import load_scaffold
    from workbench.doctor.watch import Watcher
    from workbench.tracking import TrackingClient

    folder = args.keep or tempfile.mkdtemp(prefix="bench-doctor-")
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, "mlflow.db")
    if os.path.exists(path):
        os.unlink(path)
    try:
        t = time.perf_counter()
        uri, ids = build_store(path, args.runs, args.points)
        print(
            f"store: {args.runs} runs × {args.points} steps × 2 metrics built in {time.perf_counter() - t:.1f}s",
            flush=True,
        )
        sc = load_scaffold(None)
        client = TrackingClient(uri)
        w = Watcher(client, "bench", sc)
        t = time.perf_counter()
        full = w.poll()
        t_full = time.perf_counter() - t
        failing = sum(v.status == "failing" for v in full)
        append_points(path, ids, args.points, args.new)
        t = time.perf_counter()
        inc = w.poll()
        t_inc = time.perf_counter() - t
        assert len(inc) == len(full) == args.runs
        print(
            f"full pass (diagnose --experiment): {t_full:.2f}s for {len(full)} runs ({failing} failing)"
        )
        print(f"incremental pass (watch --once, +{args.new} points/run/metric): {t_inc:.3f}s")
        print(f"ratio full/incremental: {t_full / max(t_inc, 1e-9):.1f}x")
    finally:
        if not args.keep:
            shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    import sys

    main(sys.argv[1:])
