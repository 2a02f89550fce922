"""A tiny synthetic fault suite held in memory (no training, no MLflow): healthy runs and runs
whose loss diverges, split into selection and heldout, labelled with what the shipped scaffold
must say.  Plus a weakened seed scaffold whose divergence detector misses them."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np

from scaffold.loader import PACKAGED
from workbench.doctor.core import series_of
from workbench.evolve.suite import SuiteCache, SuiteRun
from workbench.tracking import RunInfo

T0 = 1_700_000_000_000


def _run(rid: str, loss: np.ndarray, seed: int) -> tuple[RunInfo, dict]:
    rng = np.random.default_rng(seed)
    steps = np.arange(len(loss))
    ts = T0 + steps * 1000
    grad = 1.0 + 0.05 * rng.standard_normal(len(loss))
    info = RunInfo(
        rid, "0", rid, "FINISHED", T0, int(ts[-1]) + 1000, {"optimizer.grad_clip": "1.0"}
    )
    return info, series_of({"train/loss": (steps, loss, ts), "grad_norm": (steps, grad, ts)})


def healthy(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    s = np.arange(n)
    return 2.0 * np.exp(-s / 40) + 0.5 + 0.01 * rng.standard_normal(n)


def diverging(n: int, seed: int, onset: int, peak: float) -> np.ndarray:
    """Learns, then from ``onset`` the loss climbs smoothly to ``peak`` × its minimum."""
    loss = healthy(n, seed)
    lo = loss[onset]
    ramp = np.clip((np.arange(n) - onset) / 30, 0, 1)
    return np.where(np.arange(n) >= onset, lo * (1 + (peak - 1) * ramp), loss)


def make_cache() -> SuiteCache:
    runs = []
    specs = [
        ("healthy-a", "selection", None, 0),
        ("healthy-b", "heldout", None, 0),
        ("diverge-a", "selection", 60, 3.0),
        ("diverge-b", "selection", 70, 2.6),
        ("diverge-c", "heldout", 55, 2.8),
        ("diverge-d", "heldout", 65, 3.2),
    ]
    for i, (sid, split, onset, peak) in enumerate(specs):
        loss = healthy(150, i) if onset is None else diverging(150, i, onset, peak)
        info, series = _run(f"run{i}", loss, i)
        expected = (
            {"findings": [], "cause": "healthy"}
            if onset is None
            else {"findings": ["divergence", "loss_spike"], "cause": "lr_too_high"}
        )
        runs.append(SuiteRun(sid, split, info, series, "", expected, onset))
    return SuiteCache(runs, now_ms=T0 + 10_000_000)


def copy_scaffold(dest: Path) -> Path:
    shutil.copytree(PACKAGED, dest, ignore=shutil.ignore_patterns("*.py", "__pycache__"))
    return dest


def set_detector(root: Path, kind: str, key: str, value: str) -> None:
    p = root / "detectors.yaml"
    text = p.read_text()
    start = text.index(f"\n{kind}:")
    m = re.compile(rf"(\n\s+{key}:\s*)([^\s#]+)").search(text, start)
    p.write_text(text[: m.start(2)] + value + text[m.end(2) :])


def weak_seed(dest: Path) -> Path:
    """The shipped scaffold with a divergence detector too lax to see these runs."""
    copy_scaffold(dest)
    set_detector(dest, "divergence", "ratio", "4.0")
    set_detector(dest, "divergence", "megatron_ratio", "40.0")
    return dest
