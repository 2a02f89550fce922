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
from workbench.runs.tracking import RunInfo

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


# Pinned thresholds and playbook: the tests must not move when the shipped scaffold is tuned.
DETECTORS = """# Detector thresholds (tuned on the fault suite's `selection` split; see docs/doctor.md).
# Points are counted in logged points of the metric, steps in the run's own step numbers.
nan_inf:
  roles: [train_loss, eval_loss, grad_norm]
divergence:
  smooth: 5              # rolling-median width (points) before comparing
  ratio: 1.5             # smoothed loss above ratio × its running minimum …
  min_delta: 0.5         # … and at least this much above it (absolute)
  persist: 5             # for this many consecutive points
  megatron_ratio: 10.0   # or any point above 10× the running max so far (Megatron's check)
loss_spike:
  window: 128            # robust baseline over the preceding points (OLMo: 128 steps)
  min_history: 16        # no spike is judged before this many points
  stride: 8              # recompute the baseline every `stride` points (speed)
  z: 6.0                 # robust z-score (median / 1.4826·MAD) above which a point is a spike
  min_rel: 0.25          # and at least 25 % above the baseline median
  rel_floor: 0.01        # MAD floor, relative to the median (flat curves)
plateau:
  min_points: 40
  head: 0.1              # compare the median of the first 10 % of points …
  tail: 0.2              # … with the median of the last 20 %
  min_improvement: 0.05  # relative improvement below which the run learned nothing
exploding_gradients:
  window: 128
  min_history: 16
  stride: 8
  z: 8.0                 # robust z on log(grad_norm)
  ratio: 8.0             # and at least ratio × the baseline median
  abs_max: 10000.0        # or above this absolute value
vanishing_gradients:
  min_points: 20
  ratio: 1.0e-3          # below ratio × the early median …
  abs_min: 1.0e-8        # … or below this absolute value
  persist: 5
overfitting:
  min_points: 4          # eval points
  rise: 0.05             # eval loss rises this much above its minimum …
  persist: 2             # … for the last `persist` eval points
  train_drop: 0.15       # while the train loss fell by at least this fraction
expert_collapse:
  warmup: 0.1            # ignore the first 10 % of points
  load_ratio: 3.0        # moe load max/mean above this …
  dead: 1                # … or at least this many dead experts …
  entropy_frac: 0.5      # … or router entropy below this fraction of its early value
  persist: 5
throughput_drop:
  window: 64
  min_history: 10
  stride: 8
  drop: 0.6              # throughput below drop × baseline median (step time above 1/drop ×)
  persist: 5
crash:
  statuses: [FAILED]
stalled:
  factor: 20.0           # no point for `factor` × the run's median logging interval …
  min_seconds: 60        # … and at least this long
"""
# min_score 4: the diverging runs score 3 for lr_too_high, so this pinned doctor leaves them
# `unknown` (a weight or the bar must move): the error evolution has to find and fix.
PLAYBOOK = """min_score: 4.0
causes:
  lr_too_high:
    summary: the learning rate is too high
    explanation: updates overshoot
    requires: [divergence, exploding_gradients, nan_inf, loss_spike]
    signals:
      - {finding: divergence, weight: 3}
      - {finding: exploding_gradients, weight: 1}
  lr_too_low:
    summary: the learning rate is too low
    explanation: the loss barely moved
    requires: [plateau, vanishing_gradients]
    signals:
      - {finding: plateau, weight: 4}
      - {finding: vanishing_gradients, weight: 1}
  bad_data:
    summary: corrupted batches
    explanation: the loss jumped on single batches
    requires: [loss_spike, divergence]
    signals:
      - {finding: loss_spike, weight: 3}
      - {absent: exploding_gradients, weight: 1}
"""


def copy_scaffold(dest: Path) -> Path:
    """The packaged scaffold's data files with the pinned detectors and playbook."""
    shutil.copytree(PACKAGED, dest, ignore=shutil.ignore_patterns("*.py", "__pycache__"))
    (dest / "detectors.yaml").write_text(DETECTORS)
    (dest / "playbook.yaml").write_text(PLAYBOOK)
    return dest


def pinned_home(home: Path) -> Path:
    """A workbench home whose scaffold repo starts from the pinned scaffold."""
    from workbench.evolve.home import init_scaffold

    src = copy_scaffold(home.parent / f"{home.name}-src")
    init_scaffold(home / "scaffold", src)
    return home


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
