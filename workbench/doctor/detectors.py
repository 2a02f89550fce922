"""Detectors: pure functions from one metric series (or the run's status and log) to a finding.

Every detector returns at most one ``Finding`` — the *onset* (first step) of its problem —
with thresholds from ``scaffold/detectors.yaml``.  Robust statistics throughout: a rolling
median and MAD over the preceding window (OLMo's z > 6 over 128 steps), Megatron's "10× the
running max", runs of ``persist`` consecutive points so one noisy point is not a trend.

``since`` (an index into the series) restricts where an onset may be found; the incremental
watcher passes the first index it has not judged yet, so windowed detectors cost O(new points).

Each metric detector is registered (``@detector``) with the roles it reads; its series-level
work is a private function of the same name, so tests and tools can call it on arrays.
"""

from __future__ import annotations

import re
from functools import partial
from typing import Any

import numpy as np

from workbench.doctor.registry import QUALITY_ROLES, RunView, detector
from workbench.doctor.series import Series, as_float
from workbench.doctor.types import Finding

# ------------------------------------------------------------------------- helpers


def _fmt(x: float) -> str:
    if not np.isfinite(x):
        return str(x)
    return f"{x:.4g}"


def _first_run(mask: np.ndarray, persist: int, since: int = 0, trailing: bool = True) -> int | None:
    """First index ≥ since starting ``persist`` consecutive True values (a shorter run that
    reaches the end of the series counts when it has at least 2 points, or ``persist`` is 1)."""
    n = len(mask)
    if n == 0 or persist <= 0:
        return None
    m = mask.astype(np.int8)
    if persist == 1:
        idx = np.flatnonzero(m[since:])
        return int(idx[0]) + since if len(idx) else None
    if n >= persist:
        c = np.convolve(m, np.ones(persist, np.int8), "valid")
        idx = np.flatnonzero(c[since:] == persist) if since < len(c) else np.zeros(0, int)
        if len(idx):
            return int(idx[0]) + since
    # A trailing run shorter than persist (the series ended; not while a run is live).
    if not trailing:
        return None
    tail = 0
    while tail < n and m[n - 1 - tail]:
        tail += 1
    start = n - tail
    if tail >= min(2, persist) and start >= since:
        return start
    return None


def _ffill_finite(x: np.ndarray) -> np.ndarray:
    """Replace non-finite values by the last finite one (or the first finite one at the start)."""
    ok = np.isfinite(x)
    if ok.all():
        return x
    if not ok.any():
        return np.zeros_like(x)
    idx = np.where(ok, np.arange(len(x)), 0)
    np.maximum.accumulate(idx, out=idx)
    out = x[idx]
    first = int(np.argmax(ok))
    out[:first] = x[first]
    return out


def rolling_baseline(
    x: np.ndarray, window: int, stride: int, min_history: int, since: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Median and MAD of the ``window`` points *before* each index (NaN before ``min_history``).

    Recomputed every ``stride`` points (blocks share the baseline of their first index), so
    the cost is O(n·window/stride); only indices ≥ ``since`` are filled.
    """
    n = len(x)
    med = np.full(n, np.nan)
    mad = np.full(n, np.nan)
    # Blocks start at min_history + k·stride; skip those that end before `since`.
    k0 = max(0, (since - min_history) // stride)
    starts = np.arange(min_history + k0 * stride, n, stride)
    if len(starts) == 0:
        return med, mad
    # Each block's window is one row of a matrix: one vectorised median for all blocks.
    m = np.empty(len(starts))
    d = np.empty(len(starts))
    short = int(np.searchsorted(starts, window))  # blocks [0, short) start before a full window
    if short < len(starts):
        view = np.lib.stride_tricks.as_strided(
            x, (n - window + 1, window), (x.strides[0], x.strides[0]), writeable=False
        )
        full = view[starts[short:] - window]
        m[short:] = _row_median(full)
        d[short:] = _row_median(np.abs(full - m[short:, None]))
    if short:  # early blocks: only the `min_history` points before them
        view = np.lib.stride_tricks.as_strided(
            x, (n - min_history + 1, min_history), (x.strides[0], x.strides[0]), writeable=False
        )
        part = view[starts[:short] - min_history]
        m[:short] = _row_median(part)
        d[:short] = _row_median(np.abs(part - m[:short, None]))
    # Spread each block's value over its `stride` indices (the blocks tile starts[0]..n-1).
    reps = np.minimum(stride, n - starts)
    med[starts[0] :] = np.repeat(m, reps)
    mad[starts[0] :] = np.repeat(d, reps)
    return med, mad


def _median(a: np.ndarray) -> float:
    """``float(np.median(a))`` for a non-empty finite 1-D array, bit for bit (the same
    partition and the same (a + b) / 2), without ``np.median``'s generic machinery."""
    k = len(a) // 2
    if len(a) % 2:
        return float(np.partition(a, k)[k])
    p = np.partition(a, (k - 1, k))
    return float((p[k - 1] + p[k]) / 2)


# For a normal sample: its standard deviation per unit of its median absolute deviation, and
# the standard error of its median per unit of its mean's (sqrt(pi / 2)).
MAD_TO_SIGMA = 1.4826
MEDIAN_SE = 1.2533


def _mad(a: np.ndarray) -> float:
    """Median absolute deviation from the median."""
    return _median(np.abs(a - _median(a)))


def _row_median(a: np.ndarray) -> np.ndarray:
    """Median of each row (a lower median for even widths: one partition, twice as fast)."""
    k = (a.shape[1] - 1) // 2
    return np.partition(a, k, axis=1)[:, k]


# ------------------------------------------------------------------------- metric detectors


def _nan_inf(s: Series, th: dict[str, Any], since: int = 0) -> Finding | None:
    if np.isfinite(s.values[since:]).all():
        return None  # (the common case, judged on the new points only)
    bad = ~np.isfinite(s.values)
    idx = np.flatnonzero(bad[since:])
    i = int(idx[0]) + since
    ok = np.flatnonzero(~bad[:i])
    before = (
        f" (last finite {_fmt(s.values[ok[-1]])} at step {s.steps[ok[-1]]})"
        if len(ok)
        else " (no finite value logged)"
    )
    # Non-finite from the first points on: no finite stretch showed the loss "fine, then
    # overflowing" or climbing first; the inputs themselves may not be finite.
    start = ("from_start",) if len(ok) <= th.get("from_start_points", 1) else ()
    # …or after the run had trained a while: it was fine, then non-finite
    if len(ok) >= th.get("trained_points", np.inf):
        start = ("after_training",)
    return Finding(
        kind="nan_inf",
        metric=s.name,
        step=int(s.steps[i]),
        severity=1.0,
        evidence=f"{s.name} is {s.values[i]} at step {s.steps[i]}{before}; {int(bad.sum())}/{len(s)} points non-finite",
        context=start,
    )


def _eval_agrees(f: Finding, s: Series, eval_loss: Series | None, th: dict[str, Any]) -> bool:
    """Whether a rise ``f`` of the training loss ``s`` (``_divergence_of_loss``: ``persist``
    points above ratio × running min and min_delta above it, or one point above
    ``megatron_ratio`` × the running max) is the model's: where the run has an eval loss, it
    must agree, the model got worse, not just the training batches (corrupted batches raise
    the training loss while held-out loss stays put)."""
    if eval_loss is None or len(eval_loss) < 2 or f.step is None:
        return True
    ev = eval_loss.values
    before = ev[eval_loss.steps <= f.step]
    after = ev[eval_loss.steps > f.step]
    if len(before) == 0 or len(after) == 0:
        return True  # nothing to compare yet
    best = float(np.nanmin(before)) if np.isfinite(before).any() else np.nan
    worst = float(np.nanmax(np.where(np.isfinite(after), after, np.inf)))
    if not np.isfinite(best) or worst > best * th.get("eval_ratio", 1.3) + 1e-12:
        return True
    last = before[-2:]
    if len(before) > 1 and np.max(last) <= th.get("eval_ratio", 1.3) * np.min(last):
        return False  # the eval had a level before the rise, and did not leave it
    # The eval's first point may come after the rise began, or the eval had no level yet (a
    # rate far too high: 6e4, then 2.5e3 against a training loss of 14): it agrees as well
    # when it sits where the training loss went, above the bar the training loss crossed.
    train = s.values[(s.steps <= f.step) & np.isfinite(s.values)]
    low = float(train.min()) if len(train) else np.inf
    bar = _rise_bar(low, s.values, th)
    fin = after[np.isfinite(after)]
    return bool(len(fin) and _median(fin) > bar)


_STAYED_UP = " and stayed up"  # how _divergence_of_loss's evidence ends


def _rise_bar(level: float, x: np.ndarray, th: dict[str, Any]) -> float:
    """The divergence's bar above a loss's ``level`` (its best so far, or its level before a
    jump): ``ratio`` × it, and a margin above it (``_rise_margins``)."""
    above_zero, otherwise = _rise_margins(x, th)
    return max(level * th.get("ratio", 1.5), level + (above_zero if level > 0 else otherwise))


def _rise_margins(x: np.ndarray, th: dict[str, Any]) -> tuple[float, float]:
    """How far above a level a loss must rise, above a positive level and at or below zero:
    ``min_delta``, or ``min_delta_start`` × the loss's starting level (the median of the first
    three finite points of ``x``) where that is smaller and the level is above zero.  A loss
    that starts at 0.05 cannot rise by 0.5; one that crossed zero as it learned (a negative
    cosine similarity) has no scale in its start."""
    delta = th.get("min_delta", 0.5)
    share = th.get("min_delta_start")
    head = x[:3][np.isfinite(x[:3])]
    if share is None or not len(head):
        return delta, delta
    return min(delta, share * _median(head)), delta


def _not_stayed(f: Finding) -> str:
    """A rise's evidence without its claim that the loss stayed up (it came back, or the
    batches did it)."""
    return f.evidence.replace(_STAYED_UP, "")


def _divergence_of_loss(s: Series, th: dict[str, Any], since: int = 0) -> Finding | None:
    x = s.values
    fin = np.isfinite(x)
    if fin.sum() < 3:
        return None
    # Only the finite prefix: what happens after a NaN is nan_inf's business.
    end = int(np.argmin(fin)) if not fin.all() else len(x)
    x = x[:end]
    if len(x) < 3:
        return None
    # Everything below is judged on x[lo:], the points before entering only through their
    # running min and max (exact), so an incremental call costs O(new points).  One point
    # before `since` lets a trailing run that started earlier be seen as such.
    lo = min(max(0, since - 1), len(x) - 1)
    t = x[lo:]
    ratio = th.get("ratio", 1.5)
    margin_pos, margin = _rise_margins(x, th)
    mega_ratio = th.get("megatron_ratio", 10.0)
    first_min = x[0] if lo == 0 else float(np.min(x[:lo]))
    first_max = np.inf if lo == 0 else max(float(np.max(x[:lo])), -first_min)
    if lo:
        # Every threshold from `since` on is at least the one of the lowest point so far,
        # and every Megatron bar at least 10x the largest |x| before `since`: new points
        # under both cannot start anything (the common case of a poll).
        new = t[since - lo :]
        if len(new) == 0:
            return None
        low = min(first_min, float(t.min()))
        high = max(first_max, abs(float(x[lo])))
        top = float(new.max())
        # (the margin above a positive level is the smaller one: a floor under every bar)
        floor = max(low * ratio, low + margin_pos)
        if top <= floor and max(top, -float(new.min())) <= (mega_ratio * high):
            return None
    run_min = np.minimum.accumulate(t)
    if lo:
        np.minimum(run_min, first_min, out=run_min)
    prev_min = np.concatenate([[first_min], run_min[:-1]])
    thresh = np.maximum(prev_min * ratio, prev_min + np.where(prev_min > 0, margin_pos, margin))
    above = t > thresh
    # A rise cut short by the end of the run is not "stayed up" (a bad batch at the very end);
    # cut short by a non-finite value it is (what follows is nan_inf's).
    trailing = th.get("_final", True) and end < len(s.values)
    i = _first_run(above, int(th.get("persist", 5)), since - lo, trailing)
    run_max = np.maximum.accumulate(np.abs(t))
    if lo:
        np.maximum(run_max, first_max, out=run_max)
    prev_max = np.concatenate([[first_max], run_max[:-1]])
    m0 = max(since, 1) - lo
    # (a rise: a loss that crosses zero as it learns, a likelihood's NLL, grows in size only)
    mega = np.flatnonzero((t > mega_ratio * prev_max)[m0:])
    j = int(mega[0]) + m0 if len(mega) else None
    if i is None and j is None:
        return None
    k = min(v for v in (i, j) if v is not None)
    best = float(prev_min[k])
    peak = float(np.max(t[k:]))
    return Finding(
        kind="divergence",
        metric=s.name,
        step=int(s.steps[lo + k]),
        severity=float(min(1.0, 0.5 + 0.1 * peak / max(abs(best), 1e-12))),
        evidence=f"{s.name} rose from its best {_fmt(best)} to {_fmt(t[k])} at step {s.steps[lo + k]} (peak {_fmt(peak)}){_STAYED_UP}",
    )


def rolling_step_noise(
    x: np.ndarray, window: int, stride: int, min_history: int, since: int = 0
) -> np.ndarray:
    """``_noise`` of the ``window`` points before each index (all of them while fewer exist;
    NaN before ``min_history``), on ``rolling_baseline``'s block grid, so an incremental pass
    gets the very same numbers."""
    n = len(x)
    out = np.full(n, np.nan)
    k0 = max(0, (since - min_history) // stride)
    for start in range(min_history + k0 * stride, n, stride):
        out[start : start + stride] = _noise(x[max(0, start - window) : start])
    return out


def _count_within(mask: np.ndarray, window: int) -> np.ndarray:
    """How many of the ``window`` points up to and including each point are set."""
    counts = np.cumsum(mask)
    before = np.concatenate([np.zeros(window, dtype=counts.dtype), counts])[: len(mask)]
    return counts - before


def _loss_spike(
    s: Series, th: dict[str, Any], since: int = 0, *, start_level: float | None = None
) -> Finding | None:
    """A point far above the robust baseline of the preceding window, by an amount that
    matters: at least ``min_rise`` of the loss's starting level (``start_level``).

    Or a recurring spike: ``recur`` points within one ``window`` that stand out from the
    window's robust spread (median/MAD) but not from its point-to-point noise, which the
    recurrences themselves inflate (a bad shard read at the same place in every epoch)."""
    x = _finite_prefix(s.values)
    window, stride = int(th.get("window", 128)), int(th.get("stride", 4))
    min_history = int(th.get("min_history", 16))
    if len(x) <= min_history:
        return None
    recur = int(th.get("recur", 0))
    lone_z, lone_rel = th.get("lone_z"), th.get("lone_rel")
    # Recurrences (and a spike's company) count over the window before a new point: judge
    # from a window earlier.
    lo = max(0, since - window) if recur or lone_z else since
    med, mad = rolling_baseline(x, window, stride, min_history, lo)
    spread = np.maximum(MAD_TO_SIGMA * mad, th.get("rel_floor", 0.01) * np.abs(med))
    scale = spread
    if th.get("step_noise", 0.0):
        # A loss of single batches scatters by its own noise all run long, and the few points
        # of an early baseline can be a quiet stretch of it: the point-to-point noise of the
        # whole window before (free of the trend) is a floor under the scale.
        noise = rolling_step_noise(x, window, stride, min_history, lo)
        scale = np.fmax(spread, th["step_noise"] * noise)
    with np.errstate(invalid="ignore", divide="ignore"):
        z, z_spread = (x - med) / scale, (x - med) / spread
        big = x > med * (1 + th.get("min_rel", 0.25))
        if start_level:
            # A memorised loss (1e-6 after starting at 0.7) wiggles by factors of two on float
            # rounding alone: both z-scores call that a spike, yet it gives back nothing of
            # what training gained.  A spike must rise by a material share of where the loss
            # started.
            big &= x - med > th.get("min_rise", 0.0) * start_level
        hit = (z > th.get("z", 6.0)) & big
        raw = (z_spread > th.get("z", 6.0)) & big if recur else np.zeros_like(hit)
    log_z = np.full(len(x), np.inf)  # (a loss that goes negative has no log scale)
    positive = x[x > 0]
    if (
        (hit[since:].any() or raw[since:].any())
        and (x >= 0).all()
        and len(positive)
        and th.get("log_z", 0)
    ):
        # A small minibatch loss is noisy by factors, not by amounts (one wrong sample moves
        # 0.05 to 0.2): the point must stand out on a log scale as well.  A hinge loss (a
        # triplet margin's) is exactly 0 on a batch that meets every margin: on that scale
        # it sits at its smallest positive value, it scatters by factors all the same.
        lx = np.log(np.maximum(x, float(positive.min())))
        lmed, lmad = rolling_baseline(lx, window, stride, min_history, lo)
        with np.errstate(invalid="ignore", divide="ignore"):
            log_z = (lx - lmed) / np.maximum(MAD_TO_SIGMA * lmad, 1e-6)
        on_log = log_z > th["log_z"]
        hit &= on_log
        raw &= on_log
    confirmed: dict[int, int] = {}  # a lone spike's confirming point -> the spike
    if lone_z and hit[lo:].any():
        # A loss of single batches of mixed text (a table, code, a rare script) has a heavy
        # right tail: a lone batch 1.3-1.5x the median is its nature, not a corrupted batch.
        # A spike with no other within the window before it must stand out further: by z or
        # by its relative rise, and on the log scale too (a regression loss of single batches
        # scatters by factors: a batch with one outlier molecule sits 9x the median, 5 of its
        # log-spreads), or the loss must stay up after it (the batch hurt the model: the median
        # of the next `lone_after` points `lone_shift` scales above the baseline), reported at
        # the point that shows it.  Corrupted data comes in bursts or far above.
        with np.errstate(invalid="ignore"):
            strong = (z > lone_z) | (x > med * (1 + (lone_rel or np.inf)))
            strong &= log_z > (th.get("lone_log_z") or -np.inf)
        lone = hit & (_count_within(hit, window) == 1)
        weak = lone & ~strong
        hit &= ~weak
        k, shift = int(th.get("lone_after", 0)), th.get("lone_shift", 2.0)
        for i in np.flatnonzero(weak[lo : len(x) - k]) + lo if k else []:
            if _median(x[i + 1 : i + k + 1]) > med[i] + shift * scale[i]:
                confirmed.setdefault(int(i + k), int(i))
        hit[list(confirmed)] = True
    if recur and raw[since:].any():
        # the recur-th raw spike within a window: the recurrence is the evidence
        hit |= raw & (_count_within(raw, window) >= recur)
    idx = np.flatnonzero(hit[since:])
    if not len(idx):
        return None
    j = int(idx[0]) + since
    i = confirmed.get(j, j)
    n_spikes = int(np.count_nonzero(hit))
    zi = float(max(z[i], z_spread[i]))
    why = f"robust z {zi:.1f}"
    if not z[i] > th.get("z", 6.0):
        why += f" against the window's spread alone, {recur} such points within {window} points"
    if i != j:
        why += f"; the loss stayed up after it: median {_fmt(_median(x[i + 1 : j + 1]))} over the next {j - i} points"
    return Finding(
        kind="loss_spike",
        metric=s.name,
        step=int(s.steps[j]),
        severity=float(min(1.0, zi / (4 * th.get("z", 6.0)))),
        evidence=f"{s.name} = {_fmt(x[i])} at step {s.steps[i]} vs median {_fmt(med[i])} of the previous points ({why}); {n_spikes} spike point(s)",
    )


def _head_tail(x: np.ndarray, th: dict[str, Any]) -> tuple[float, float]:
    """The medians of a series' first ``head`` share and its last ``tail`` share."""
    n = len(x)
    h = max(1, int(n * th.get("head", 0.1)))
    t = max(1, int(n * th.get("tail", 0.2)))
    return _median(x[:h]), _median(x[-t:])


def _gain(x: np.ndarray, th: dict[str, Any]) -> tuple[float, float, float]:
    """(start, end, relative gain) of a loss: the first point, unless the first 10 % sit lower
    (a rise in the first points is an overshoot, not the starting level), against the median
    of the last 20 %."""
    first, tail = _head_tail(x, th)
    head = min(float(x[0]), first)
    return head, tail, (head - tail) / abs(head) if head else 0.0


def _eval_still(eval_loss: Series | None, th: dict[str, Any]) -> bool:
    """An eval loss of ``slow_evals`` evals or more that stayed within ``eval_still`` of its
    first value at every one: the weights barely moved (a fixed set scores a fixed model)."""
    if eval_loss is None:
        return False
    ev = eval_loss.values[np.isfinite(eval_loss.values)]
    if len(ev) < th.get("slow_evals", 4) or not ev[0] > 0:
        return False
    return bool(np.max(np.abs(ev / ev[0] - 1)) <= th.get("eval_still", 0.0))


def _chunk_medians(x: np.ndarray, h: int) -> list[float]:
    """The medians of the consecutive whole chunks of ``h`` points (a partial last one left
    out): the levels a loss held, stretch by stretch."""
    return [_median(x[i : i + h]) for i in range(0, len(x) - h + 1, h)]


def _plateau(
    s: Series,
    th: dict[str, Any],
    since: int = 0,
    *,
    eval_loss: Series | None = None,
    lr: float | None = None,
    adaptive_lr: float | None = None,
    peak_lr: float | None = None,
    peak_step: int | None = None,
    grad_norm: Series | None = None,
) -> Finding | None:
    """The loss did not improve over the whole run (a relative gain below min_improvement),
    or it and the eval loss both gained less than ``slow_gain`` (a rate too low still moves
    a loss by a few per cent over a short run; a healthy one gains far more).  ``lr``: the
    rate the run was configured with, where it said; ``adaptive_lr``: that rate, where its
    optimizer is an adaptive one (Adam and kin); ``peak_lr``: the highest rate it logged
    (what its schedule reached: a warm-up longer than the run never gets near ``lr``);
    ``peak_step``: where the logged rate first stood near that peak (the end of a warm-up);
    ``grad_norm``: the run's gradient norm, where it logs one (``_grad_collapsed``)."""
    if not np.all(np.isfinite(s.values)):
        return None  # a run that went non-finite did not "plateau" (nan_inf's business)
    x = s.values
    n = len(x)
    if n < th.get("min_points", 40):
        return None
    h = max(1, int(n * th.get("head", 0.1)))
    head, tail, gain = _gain(x, th)
    if not head > 0:
        return None
    min_gain = th.get("min_improvement", 0.05)
    # Learned within its first points and converged there (a fast learner, or an easy task
    # logged from step 1): the untrained first point sits far above the rest of the head, by
    # a material share and beyond the head's own scatter (a noisy first batch is no lesson).
    # Not at an adaptive rate far too high: that throws the weights at the first steps, and
    # the first point far above the rest is where they landed, not a lesson.
    rest = x[1 : h + 1]
    first_drop = float(x[0]) - _median(rest) if len(rest) >= 3 else 0.0
    # (nor at a configured rate of ``lr_throw`` or more, whatever the optimizer: a run at
    # such a rate that did learn goes on gaining, as SGD at 20 with a clip trains an LSTM)
    huge = lr is not None and lr >= th.get("lr_throw", np.inf)
    thrown = huge or (adaptive_lr is not None and adaptive_lr >= th.get("adaptive_lr_high", np.inf))
    collapsed = _grad_collapsed(grad_norm, th)
    if not thrown and first_drop >= max(
        th.get("early_drop", 0.2) * abs(float(x[0])),
        th.get("early_drop_spread", 1.5) * MAD_TO_SIGMA * _mad(rest),
    ):
        return None
    if tail > head * 1.2:
        return None  # went up (divergence's business)
    slow, context = "", ()
    if gain >= min_gain:
        ev = eval_loss.values[np.isfinite(eval_loss.values)] if eval_loss is not None else []
        if not gain < th.get("slow_gain", 0.0) or len(ev) < th.get("slow_evals", 4):
            return None  # learned
        rate = peak_lr if peak_lr is not None else lr
        if rate is not None and rate >= th.get("slow_lr_ok", np.inf) and not (thrown or collapsed):
            # Both losses moved a few per cent at a rate that moves weights (Adam's 1e-3): a
            # loss with a large floor (scvi-tools' count likelihood, ~1,250 of 1,500) learns
            # by a few per cent; a rate too small to learn is far below it (1e-5).  (An
            # adaptive rate far too high holds a loss stuck: below.)
            return None
        e_head, e_tail, e_gain = _gain(ev, th)
        if not (e_head > 0 and e_gain < th["slow_gain"]):
            return None
        slow = f", and {eval_loss.name} from {_fmt(e_head)} to {_fmt(e_tail)} over {len(ev)} evals ({100 * e_gain:.1f}% better): both under {100 * th['slow_gain']:.0f}%, a run that barely learns"  # type: ignore[union-attr]
        # The train loss moved and the eval ended worse than it began: what it learned does
        # not carry over (labels without signal), where a rate too low moves both alike.
        context = ("eval_worse",) if e_gain < 0 else ()
    # Learned for a while and came back up (to chance level): divergence's business too.  The
    # dip must be one beyond the chunk medians' own error (a loss that scatters by factors
    # has chunks below its start by chance).
    chunks = _chunk_medians(x, h)
    dip, chunk_err = head - min(chunks), MEDIAN_SE * _noise(x) / np.sqrt(h)
    if dip > 2 * min_gain * head and dip > th.get("dip_noise", 3.0) * chunk_err:
        return None
    evidence = f"{s.name} went from {_fmt(head)} to {_fmt(tail)} over {n} points ({100 * gain:.1f}% better{slow or f', < {100 * min_gain:.0f}%'})"
    # Stuck from the start has two causes: a rate too small to move anything, or one so large
    # that the first updates threw the model to where it stays (saturated units at chance
    # level).  Only the second makes the loss rise above where it started: an overshoot of
    # many noise units and a material share of the start, early in the run.
    start = _median(x[: min(3, n)])
    # (a warm-up moves the throw to where the rate peaks: early runs to a head past it)
    warm = int(np.searchsorted(s.steps, peak_step)) + h + 1 if peak_step is not None else 0
    early = x[: max(3, 2 * h, min(warm, n // 2))]
    # (above the first point itself nothing rose: a loss that only fell has its top there,
    # and its start, the median of three, below it)
    top = 1 + int(np.argmax(early[1:]))
    rise = float(early[top]) - start
    bar = max(th.get("overshoot_noise", 8.0) * _noise(x), min_gain * abs(start))
    after: tuple[str, ...] = ()
    if rise > bar:
        after = ("divergence",)
        evidence += f"; it first rose from {_fmt(start)} to {_fmt(early[top])} at step {s.steps[top]} (an overshoot)"
    elif -gain >= min_gain and not _eval_still(eval_loss, th):
        # Ended materially worse than it began: a rate too small barely moves the loss, it
        # does not make it worse.  (Unless the eval loss says the weights did not move: then
        # the train loss's end is its batches' scatter.)
        after = ("divergence",)
        evidence += f"; it ended {100 * -gain:.1f}% worse than it began"
    if not after and collapsed is not None:
        # Stuck while the gradients died away: the updates drove the model where no gradient
        # is left (saturated units, a collapsed output), the work of a rate too high.  A rate
        # too small barely moves the weights, so their gradient keeps its size.
        context = (*context, "thrown")
        evidence += f"; {collapsed}"
    elif not after and huge:
        # Stuck from its first points at a rate that size: the first updates threw the model
        # to where it stays (a constant prediction), not a rate too small to move it.
        context = (*context, "thrown")
        evidence += f"; at a configured rate of {_fmt(lr)}"  # type: ignore[arg-type]
    lr_not_low = lr is not None and lr >= th.get("lr_not_low", np.inf)
    if (
        not after
        and lr_not_low
        and not (thrown or collapsed)
        and gain >= th.get("lr_not_low_gain", 0.0)
    ):
        # A loss that still gains at a rate this large learns slowly (a task whose loss has
        # little room, a click-through log-loss under SGD at 0.3-1): its rate does not hold it
        # back.  Not at an adaptive rate far too high: that rate holds it stuck.
        return None
    return Finding(
        kind="plateau",
        metric=s.name,
        step=int(s.steps[0]),
        severity=0.3 if slow else float(min(1.0, 1 - max(gain, 0) / min_gain)),
        evidence=evidence,
        after=after,
        context=context,
    )


def _grad_collapsed(g: Series | None, th: dict[str, Any]) -> str | None:
    """The gradient norm's last ``tail`` share sat at ``grad_collapse`` × its first ``head``
    share or below (medians of the finite points, ``min_points`` of them at least): the
    evidence, else None.  Beside a loss that did not move, the gradients died away without
    anything learned."""
    if g is None:
        return None
    x = g.values[np.isfinite(g.values)]
    if len(x) < th.get("min_points", 40):
        return None
    head, tail = _head_tail(x, th)
    if not head > 0 or tail > th.get("grad_collapse", 0.0) * head:
        return None
    return f"{g.name} fell {_fmt(head)} → {_fmt(tail)} ({head / max(tail, 1e-30):.0f}x) while it did not learn: the gradients died away"


def _exploding_gradients(
    s: Series, th: dict[str, Any], since: int = 0, *, clipped: bool | None = None
) -> Finding | None:
    """A grad norm far above its robust baseline.  With gradient clipping on, the logged
    (pre-clip) norm may spike while the update stays bounded: the bar is ``clip_factor``
    times higher then.  With clipping logged off (``clipped`` False, not None: unknown), every
    jump of the norm is a jump of the update: the bar is ``noclip_ratio`` and ``noclip_z``."""
    x = s.values
    ratio = th.get("ratio", 100.0) * (th.get("clip_factor", 100.0) if clipped else 1.0)
    z_bar = th.get("z", 8.0)
    if clipped is False:
        ratio, z_bar = th.get("noclip_ratio", ratio), th.get("noclip_z", z_bar)
    abs_max = th.get("abs_max", 1e4) * (th.get("clip_factor", 100.0) if clipped else 1.0)
    inf_idx = np.flatnonzero(np.isposinf(x[since:]))
    y = np.log10(np.maximum(_ffill_finite(x), 1e-30))
    # Every baseline median is at least min(y), so when no new point rises ratio× above that
    # (and none is inf or over abs_max) nothing can be found: skip the baselines.
    if (
        not len(inf_idx)
        and not (x[since:] > abs_max).any()
        and (since >= len(y) or y[since:].max() <= y.min() + np.log10(ratio))
    ):
        return None
    med, mad = rolling_baseline(
        y,
        int(th.get("window", 128)),
        int(th.get("stride", 4)),
        int(th.get("min_history", 16)),
        since,
    )
    scale = np.maximum(MAD_TO_SIGMA * mad, 0.05)
    with np.errstate(invalid="ignore"):
        z = (y - med) / scale
        hit = (z > z_bar) & (y > med + np.log10(ratio))
    hit |= np.isfinite(x) & (x > abs_max)
    idx = np.flatnonzero(hit[since:])
    cands = [int(idx[0]) + since] if len(idx) else []
    if len(inf_idx):
        cands.append(int(inf_idx[0]) + since)
    if not cands:
        return None
    i = min(cands)
    base = 10 ** med[i] if np.isfinite(med[i]) else float("nan")
    return Finding(
        kind="exploding_gradients",
        metric=s.name,
        step=int(s.steps[i]),
        severity=float(min(1.0, 0.5 + 0.05 * (z[i] if np.isfinite(z[i]) else 10))),
        evidence=f"{s.name} = {_fmt(x[i])} at step {s.steps[i]} vs median {_fmt(base)} before; {int(np.count_nonzero(hit))} point(s) over",
    )


def _vanishing_gradients(
    s: Series, th: dict[str, Any], since: int = 0, *, loss: Series | None = None
) -> Finding | None:
    """The grad norm collapses while the loss is still high (tiny gradients at a near-zero
    loss are convergence, not a problem).

    A norm below ``abs_min`` (in practice exactly 0: the gradients were thrown away or the
    graph was cut) counts whatever the loss, as long as the loss itself is not ~0: a model
    that still learns never has an all-zero minibatch gradient."""
    x = s.values
    fin = np.isfinite(x)
    if fin.sum() < th.get("min_points", 20):
        return None
    early = x[fin][: max(5, int(fin.sum() * 0.1))]
    ref = float(np.median(early))
    dead = fin & (np.abs(x) < th.get("abs_min", 1e-8))
    low = fin & (x < th.get("ratio", 1e-3) * ref)
    if not (low.any() or dead.any()):  # the usual case: skip the loss alignment below
        return None
    if loss is not None and len(loss):
        lv = np.interp(s.steps, loss.steps, _ffill_finite(loss.values))
        l0 = float(np.median(_ffill_finite(loss.values)[: max(3, len(loss) // 20)]))
        low &= lv > th.get("loss_frac", 0.1) * l0
        dead &= lv > th.get("dead_loss_frac", 1e-4) * l0
    low |= dead
    i = _first_run(low, int(th.get("persist", 5)), since, th.get("_final", True))
    if i is None:
        return None
    return Finding(
        kind="vanishing_gradients",
        metric=s.name,
        step=int(s.steps[i]),
        severity=0.7,
        evidence=f"{s.name} fell to {_fmt(x[i])} at step {s.steps[i]} from an early median of {_fmt(ref)}",
    )


def _noise(x: np.ndarray) -> float:
    """A series' own point-to-point noise: the robust spread of its first differences over
    √2 (a steady trend shifts every difference alike and drops out of the spread)."""
    d = np.diff(x)
    if len(d) < 3:
        return 0.0
    return MAD_TO_SIGMA * _mad(d) / float(np.sqrt(2))


def _overfitting(
    ev: Series, tr: Series | None, th: dict[str, Any], *, higher: bool = False
) -> Finding | None:
    """Eval loss turned up from its minimum (for the last ``persist`` evals) while the train
    loss fell by ``train_drop`` or more from its value at that minimum: memorisation.  ``higher``: ``ev`` is a held-out score
    (accuracy, MRR), judged as a loss with its sign turned and reported as logged.

    Calibrated to the run's own noise: the best eval is taken as the median of the ``smooth``
    evals around the minimum (a minimum picked from noisy evals is biased low), and the rise
    must exceed both ``rise`` × the best and ``z`` × the eval's eval-to-eval noise (small
    validation sets, logged once per epoch, wander a lot)."""
    x = _finite_prefix(-ev.values if higher else ev.values)
    n = len(x)
    persist = int(th.get("persist", 2))
    if n < max(th.get("min_points", 4), persist + 2):
        return None
    shown = (lambda v: _fmt(-v)) if higher else _fmt  # as logged
    m = int(np.argmin(x[: n - persist]))  # the best eval before the last `persist` ones
    best = float(x[m])
    half = int(th.get("smooth", 3)) // 2
    level = _level_around(x, m, th.get("smooth", 3))
    noise = _noise(x[n // 4 :])
    bar = max(abs(best) * th.get("rise", 0.05), th.get("z", 4.0) * noise)
    limit = level + bar
    tail = _median(x[n - max(persist, 2 * half + 1) :])  # as many evals as the minimum's level
    if not np.all(x[n - persist :] > limit):
        # Or: eval loss stalled for `stall_evals` evals while the train loss kept falling,
        # and the evals since sit above the best by more than their noise explains.
        # (Not a score: one that stops improving while the loss still falls is a ranking or
        # an accuracy that has settled while the model's confidence still sharpens.)
        m = int(np.argmin(x))
        stall = int(th.get("stall_evals", 4))
        if higher or n - 1 - m < stall or tr is None or not len(tr):
            return None
        if tail - level <= th.get("stall_z", 2.0) * noise:
            return None
        if tail - level < th.get("stall_rise", 0.0) * abs(level):
            return None  # a rise that costs next to nothing (a smooth boosted-tree eval: 3 %)
        if tail - level < th.get("give_back", 0.02) * (x[0] - level):
            return None  # gave back next to nothing of what it gained: converged, not overfitting
        t_at, t_end = _train_at(tr, ev, m), _train_at(tr, ev, n - 1)
        if not _memorised(tr, t_at, t_end, th):
            return None
        best = float(x[m])
        return Finding(
            kind="overfitting",
            metric=ev.name,
            step=int(ev.steps[m]),
            severity=0.6,
            evidence=f"{ev.name} stopped improving at {shown(best)} (step {ev.steps[m]}) for {n - 1 - m} evals (now {shown(tail)}, eval-to-eval noise {_fmt(noise)}) while {tr.name} fell {_fmt(t_at)} → {_fmt(t_end)}",
        )
    rise_at = m + 1 + int(np.argmax(x[m + 1 :] > limit))
    has_train = tr is not None and len(tr) > 0
    t_at, t_end = (_train_at(tr, ev, m), _train_at(tr, ev, n - 1)) if has_train else (None, None)
    never = not higher and has_train and _never_better(x, m, level, tr.values[0], t_at, th)
    context = ("eval_never_better",) if never else ()
    never_txt = "; it was never better than the untrained model's" if never else ""
    if has_train and t_end is None and not np.isfinite(tr.values[-1]):
        return None  # the train loss went non-finite: a NaN model's eval collapses (nan_inf's)
    if has_train:
        if None not in (t_at, t_end) and not _memorised(tr, t_at, t_end, th):
            # the train loss barely moved (or rose) while the eval rose: nothing was memorised
            # (an eval drifting at a rate too low, a divergence, noise)
            return None
        train_txt = f"; {tr.name} {_fmt(t_at or np.nan)} → {_fmt(t_end or np.nan)}"
    else:
        train_txt = ""
    return Finding(
        kind="overfitting",
        metric=ev.name,
        step=int(ev.steps[m]),
        severity=float(min(1.0, (x[-1] - best) / max(abs(best), 1e-12))),
        evidence=f"{ev.name} {'peaked' if higher else 'bottomed'} at {shown(best)} (step {ev.steps[m]}), {shown(x[rise_at])} by step {ev.steps[rise_at]}, now {shown(x[-1])}: {(tail - level) / max(noise, 1e-12):.1f}× its eval-to-eval noise {_fmt(noise)}{train_txt}{never_txt}",
        context=context,
    )


def _memorised(tr: Series, t_at: float | None, t_end: float | None, th: dict[str, Any]) -> bool:
    """The train loss fell from ``t_at`` (at the eval's best) to ``t_end`` by ``train_drop`` of
    its value, or, where it fell by that much over the whole run, by ``train_share`` of all it
    fell: a loss with a large floor (a count likelihood of ~1,000 nats a cell) memorises by
    a few per cent of its value, a third of its progress."""
    if t_at is None or t_end is None:
        return False
    drop, share = th.get("train_drop", 0.15), th.get("train_share")
    if t_end <= t_at - drop * abs(t_at):  # (a likelihood's loss runs negative)
        return True
    fin = tr.values[np.isfinite(tr.values)]
    if not share or not len(fin):
        return False
    first = float(fin[0])
    # (and over the run it fell by train_drop: a loss a rate too low barely moves has no
    # progress to take a share of)
    return first - t_end >= drop * abs(first) and t_at - t_end >= share * (first - t_end)


def _train_at(tr: Series, ev: Series, i: int) -> float | None:
    """The train loss where eval ``i`` was taken: at its step, or at the same share of the
    run where the two count steps on other axes (AllenNLP logs its batch loss by batch and
    its evals by epoch: their last steps differ by more than 2×).  The level of the points up
    to that step where there are a few (the weights the eval scored are those they trained:
    a jump in the train loss right after it is no level it held then), else around it."""
    step = float(ev.steps[i])
    if not 0.5 <= tr.steps[-1] / max(ev.steps[-1], 1) <= 2:
        share = (ev.steps[i] - ev.steps[0]) / max(ev.steps[-1] - ev.steps[0], 1)
        step = tr.steps[0] + share * (tr.steps[-1] - tr.steps[0])
    upto = tr.values[: int(np.searchsorted(tr.steps, int(step), side="right"))][-6:]
    upto = upto[np.isfinite(upto)]
    return float(np.median(upto)) if len(upto) >= 3 else _value_at(tr, int(step))


def _level_around(x: np.ndarray, i: int, width: int) -> float:
    """The median of the ``width`` points around ``i``: a level the series held there, not one
    lucky (or unlucky) point."""
    half = int(width) // 2
    return _median(x[max(0, i - half) : i + half + 1])


def _never_better(
    x: np.ndarray, m: int, level: float, t0: float, t_at: float | None, th: dict[str, Any]
) -> bool:
    """Labels without signal: the eval loss's best ``level`` sat within ``never_better`` of its
    first value and of the train loss's first point (the untrained model's level), it came
    no earlier than the third eval, and the train loss too was still at its first point's
    level then.  Nothing in the data could be learned, so both sat at the untrained level
    until the model began to memorise; a model merely too large for its data fits its
    training set at once, so its eval turns up from the first evals while the train loss
    has already fallen (or gains something first).  ``t0``: the train loss's first point;
    ``t_at``: the train loss at the eval's best."""
    if m < 2 or not np.isfinite(t0):
        return False
    bar = 1 - th.get("never_better", 0.05)
    return t_at is not None and all(
        v > 0 and lv >= bar * v for v, lv in ((x[0], level), (t0, level), (t0, t_at))
    )


def _expert_collapse(
    load: Series | None,
    dead: Series | None,
    entropy: Series | None,
    th: dict[str, Any],
    since: int = 0,
    *,
    aux: Series | None = None,
    max_entropy: float | None = None,
) -> Finding | None:
    """Experts starve: max/mean load high, experts without tokens, the load's entropy far
    below its start (or below log(n_experts), the balanced value, when the run says how many
    experts it has), or a load-balancing loss far above its balanced value of 1."""
    persist = int(th.get("persist", 5))
    cands: list[tuple[int, Series, str]] = []
    for s, kind in ((load, "load"), (dead, "dead"), (entropy, "entropy"), (aux, "aux")):
        if s is None or len(s) < persist:
            continue
        x = s.values
        w = int(len(x) * th.get("warmup", 0.1))
        if kind == "load":
            mask = x > th.get("load_ratio", 3.0)
        elif kind == "dead":
            mask = x >= th.get("dead", 1)
        elif kind == "aux":
            mask = x > th.get("aux_ratio", 2.0)
        else:
            ref = float(np.nanmedian(x[: max(3, w)]))
            if max_entropy is not None and max_entropy > 0:
                ref = max(ref, max_entropy)
            mask = x < th.get("entropy_frac", 0.5) * ref
        mask = mask & np.isfinite(x)
        mask[:w] = False
        # Early training balances experts noisily: a high max/mean load needs a longer run.
        need = int(th.get("load_persist", persist)) if kind == "load" else persist
        # A collapse lasts: the router is still collapsed at the latest points. A healthy
        # run's early imbalance (or a fixed run's recovering one) has passed by then.
        tail = int(th.get("tail", 0))
        if tail and not mask[-tail:].all():
            continue
        i = _first_run(mask, need, since, th.get("_final", True))
        if i is not None:
            cands.append((int(s.steps[i]), s, kind))
    if not cands:
        return None
    step, s, kind = min(cands, key=lambda c: c[0])
    i = int(np.searchsorted(s.steps, step))
    what = {
        "load": "max/mean expert load",
        "dead": "dead experts",
        "entropy": "router entropy",
        "aux": "load-balancing loss",
    }[kind]
    return Finding(
        kind="expert_collapse",
        metric=s.name,
        step=step,
        severity=0.8,
        evidence=f"{what} {s.name} = {_fmt(s.values[i])} at step {step}, now {_fmt(s.values[-1])}",
    )


def _throughput_drop(
    s: Series,
    th: dict[str, Any],
    since: int = 0,
    *,
    higher_is_worse: bool = False,
    utilization: bool = False,
) -> Finding | None:
    """Throughput falls below ``drop`` × its rolling median and stays there.

    Throughput is noisy (other processes, GC, eval pauses), so one point means nothing: the
    median of the *next* ``persist`` points must be below ``drop`` × the median of the
    ``window`` points before, and so must the median of the run's last ``persist`` points.
    """
    x = s.values
    persist = int(th.get("persist", 16))
    min_history = int(th.get("min_history", 10))
    y = _ffill_finite(x)
    if higher_is_worse:
        y = 1.0 / np.maximum(y, 1e-12)
    shown = (lambda v: 1.0 / v) if higher_is_worse else (lambda v: v)
    if len(x) <= min_history + min(persist, int(th.get("stretch_points", persist))):
        return _sparse_drop(s, y, th, since, shown, utilization)
    med, _ = rolling_baseline(
        y,
        int(th.get("window", 64)),
        int(th.get("stride", 4)),
        min_history,
        since,
    )
    if len(x) <= min_history + persist:  # too short for the end rule
        return _slow_stretch(s, y, med, th, since, shown, utilization)
    fwd = _row_median(
        np.lib.stride_tricks.sliding_window_view(y, persist)
    )  # fwd[i]: y[i:i+persist]
    tail = float(np.median(y[-persist:]))
    drop = th.get("drop", 0.6)
    with np.errstate(invalid="ignore"):
        bad = (fwd < drop * med[: len(fwd)]) & (tail < drop * med[: len(fwd)])
    # …and most points from there on are slow (a busy machine slows a run for a while; a
    # slow input pipeline slows it for good).
    # A slow reader adds the same delay to every step until the end, so nearly every point
    # after the onset is slow, over a long stretch; load from other processes comes and goes.
    sustain = th.get("sustain", 0.6)
    min_tail = int(th.get("min_tail", persist))
    i = None
    # Every candidate onset is tried (a noisy healthy stretch makes many before the real
    # one).  The baseline changes once per block of `stride` points, so one suffix count of
    # slow points per block answers all its candidates (up to 256 blocks: bounded cost).
    cand = np.flatnonzero(bad[since:]) + since
    blocks, last, slow_after = 0, np.nan, np.zeros(0)
    for c in cand:
        if len(y) - c < min_tail:
            break
        if not med[c] == last:
            blocks, last = blocks + 1, med[c]
            if blocks > 256:
                break
            slow_after = np.cumsum((y < drop * last)[::-1])[::-1]  # slow points from j on
        if slow_after[c] / (len(y) - c) >= sustain:
            i = int(c)
            break
    if i is None:
        return _slow_stretch(s, y, med, th, since, shown, utilization)
    base = float(med[i])
    # The onset is the first slow point of that window.
    j = i + int(np.argmax(y[i : i + persist] < drop * base))
    return Finding(
        kind="throughput_drop",
        metric=s.name,
        step=int(s.steps[j]),
        severity=float(min(1.0, max(0.0, 1 - fwd[i] / base))) if base > 0 else 0.5,
        evidence=f"{s.name} median {_fmt(shown(fwd[i]))} from step {s.steps[j]} vs {_fmt(shown(base))} before ({100 * (1 - fwd[i] / base):.0f}% slower), still {_fmt(shown(tail))} at the end",
    )


def _sparse_drop(
    s: Series,
    y: np.ndarray,
    th: dict[str, Any],
    since: int,
    shown: Any,
    utilization: bool = False,
) -> Finding | None:
    """A sparse log (a point per eval period or per epoch, too few for a rolling baseline)
    that drops for good: every point from some onset to the end is below ``drop`` × the
    median of all points before it, over at least ``sparse_points`` points after at least
    ``sparse_history``; each of the 3 points just before it ran at ``stretch_abrupt`` × that
    median or faster (an abrupt drop), and the slow points cost ``stretch_cost`` of the run's
    time. With so few points a lasting drop is the only kind that is not noise; a gradual one
    counts only on a ``utilization`` where it ends deep (``_deep``)."""
    drop, min_cost = th.get("drop", 0.6), th.get("stretch_cost", 0.25)
    history, points = int(th.get("sparse_history", 4)), int(th.get("sparse_points", 3))
    abrupt = th.get("stretch_abrupt", 0.85)
    step_time = 1.0 / np.maximum(y, 1e-12)
    for j in range(max(history, since), len(y) - points + 1):
        base = _median(y[:j])
        if not base > 0 or not (y[j:] < drop * base).all():
            continue
        if np.min(y[max(0, j - 3) : j]) < abrupt * base and not (
            utilization and _deep(y, j, len(y), base, th)
        ):
            return None  # a gradual slowdown that did not go deep
        cost = float(np.sum(step_time[j:] - 1.0 / base)) / float(np.sum(step_time))
        if cost < min_cost:
            return None
        return _slow_finding(
            s,
            j,
            _median(y[j:]),
            base,
            shown,
            "to the end",
            f", {len(y) - j} of {len(y)} points",
            cost,
        )
    return None


def _deep(y: np.ndarray, j: int, k: int, base: float, th: dict[str, Any]) -> bool:
    """A slow stretch ``y[j:k]`` whose last 3 points run at ``gradual_deep`` × ``base`` or
    slower.  A gradual slowdown (growing sequences, a curriculum) is no fault, except on a
    rate of the hardware's use (MFU: the callers ask only there, ``utilization``), which
    growing work leaves level: one that falls that deep is an input stage or a thread that
    takes ever more of the step."""
    return _median(y[max(j, k - 3) : k]) <= th.get("gradual_deep", 0.0) * base


def _slow_finding(
    s: Series, j: int, level: float, base: float, shown: Any, end: str, more: str, cost: float
) -> Finding:
    """A ``throughput_drop`` from point ``j`` on: ``level`` vs ``base`` (in the series' own
    direction), ``end`` where the slow stretch ends, the share of the run's time it cost."""
    return Finding(
        kind="throughput_drop",
        metric=s.name,
        step=int(s.steps[j]),
        severity=float(min(1.0, max(0.0, 1 - level / base))),
        evidence=f"{s.name} median {_fmt(shown(level))} from step {s.steps[j]} {end} vs {_fmt(shown(base))} before ({100 * (1 - level / base):.0f}% slower{more}), {100 * cost:.0f}% of the run's time lost",
    )


def _slow_stretch(
    s: Series,
    y: np.ndarray,
    med: np.ndarray,
    th: dict[str, Any],
    since: int,
    shown: Any,
    utilization: bool = False,
) -> Finding | None:
    """A slow stretch that costs the run a good part of its time, whether or not it lasts to
    the end (a reader that is slow for some shards, a sparse log too short for the end rule).

    The stretch starts abruptly (the points just before it run at the baseline's speed, or
    each at ``stretch_step`` × what three quarters of the stretch run at: a step down after
    a dip from load, not a box whose load makes every other step slow; a
    gradual slowdown, such as a curriculum's growing sequences, is no fault unless it goes
    deep, ``_deep``) and nearly all of its points are slow. Load from other processes can do
    the same for a moment; what it rarely does is cost ``min_cost`` of the run's whole time,
    measured as the time per step above the baseline's, summed over the stretch.
    """
    drop, sustain = th.get("drop", 0.6), th.get("sustain", 0.6)
    min_points, min_cost = int(th.get("stretch_points", 8)), th.get("stretch_cost", 0.25)
    abrupt = th.get("stretch_abrupt", 0.85)
    step_time = 1.0 / np.maximum(y, 1e-12)
    total = float(np.sum(step_time))
    with np.errstate(invalid="ignore"):
        onsets = np.flatnonzero(y[since:] < drop * med[since:])[:64] + since
    for j in onsets:
        base = float(med[j])
        if not base > 0:
            continue
        slow = y[j:] < drop * base
        share = np.cumsum(slow) / np.arange(1, len(slow) + 1)
        ends = np.flatnonzero((share >= sustain) & slow)
        if not len(ends) or ends[-1] + 1 < min_points:
            continue
        k = int(j + ends[-1] + 1)
        before = y[max(0, j - 3) : j]
        if (
            np.median(before) < abrupt * base
            and not (
                len(before)
                and np.min(before) >= th.get("stretch_step", 2.0) * np.percentile(y[j:k], 75)
            )
            and not (utilization and _deep(y, j, k, base, th))
        ):
            continue  # a gradual slowdown that did not go deep
        cost = float(np.sum(np.maximum(step_time[j:k] - 1.0 / base, 0.0))) / total
        if cost < min_cost:
            continue
        end = "to the end" if k == len(y) else f"to step {s.steps[k - 1]}"
        return _slow_finding(s, int(j), float(np.median(y[j:k])), base, shown, end, "", cost)
    return None


# ------------------------------------------------------------------------- the registered detectors
# Each reads its roles from the run view; ``stable`` ones judge only from ``run.start``.


def _tail(s: Series, since: int, th: dict[str, Any]) -> tuple[Series, int]:
    """The last points of ``s`` a rolling-baseline detector needs to judge from ``since`` on:
    whole windows before the first baseline block it evaluates, cut on the block grid, so
    every baseline, z-score and count it reports is the very same number (and it costs
    O(new points), not O(run))."""
    window, stride = int(th.get("window", 128)), int(th.get("stride", 4))
    min_history = int(th.get("min_history", 16))
    if since <= min_history:
        return s, since
    first_block = min_history + (since - min_history) // stride * stride
    lo = (first_block - window) // stride * stride
    if lo <= 0:
        return s, since
    return Series(s.name, s.steps[lo:], s.values[lo:], s.timestamps[lo:]), since - lo


@detector(
    "nan_inf", reads=("train_loss", "eval_loss", "grad_norm"), stable=True, roles_from="roles"
)
def nan_inf(run: RunView, th: dict[str, Any]) -> list[Finding]:
    """A non-finite value in any metric it reads (one finding per metric)."""
    out, seen = [], set()
    for s in run.series.values():
        if s.name not in seen:
            seen.add(s.name)
            f = _nan_inf(s, th, run.start("nan_inf", s))
            if f:
                out.append(f)
    return out


QUALITY_READS = tuple(role for role, _, _ in QUALITY_ROLES)


@detector(
    "divergence",
    reads=("train_loss", "eval_loss", "lr", "adversary_loss", *QUALITY_READS),
    stable=True,
    precursor=True,
)
def divergence(run: RunView, th: dict[str, Any]) -> Finding | None:
    return _beside_quality(run, "divergence", _quality_worse, _divergence_of_run, th)


def _beside_quality(run: RunView, kind: str, on_quality: Any, own: Any, th: dict[str, Any]):
    """``own(run, th)`` on the run's losses, and where it logs a measure of progress (see
    RunView.quality) ``on_quality`` on that: only that where its losses are a contest (a
    critic's, a GAN's: see RunView.contest), else the earlier onset of the two."""
    if run.quality is None:
        return own(run, th)
    found = _on_quality(run, kind, on_quality, th)
    if run.contest:
        return found
    both = [f for f in (found, own(run, th)) if f is not None]
    return min(both, key=lambda f: f.step or 0, default=None)


def _divergence_of_run(run: RunView, th: dict[str, Any]) -> Finding | None:
    loss, ev = run["train_loss"], run["eval_loss"]
    if loss is None or run.moving_target:
        return None
    # With an eval loss, a divergence found earlier may be confirmed only now: judged whole.
    since = run.start("divergence", loss) if ev is None else 0
    f = _divergence_of_loss(loss, th, since)
    if f is None or f.step is None:
        return f
    if not _eval_agrees(f, loss, ev, th):
        return _batches_worse(f, loss, th)
    lr = run["lr"]
    if _warmup_transient(f, loss, ev, lr, th, adaptive_lr=as_float(run.param("adaptive_lr"))):
        return None
    f = _set_back(_late(_recovered(f, loss, lr, th), loss, lr, th), loss, th)
    return f if lr is None else _lr_decayed(f, lr, th.get("lr_decayed", 0.8))


def _batches_worse(f: Finding, loss: Series, th: dict[str, Any]) -> Finding | None:
    """A rise ``f`` of the training loss that the eval loss did not follow (``_eval_agrees``)
    and that jumped above the level the loss held just before it (the median of its five
    points before the onset) by the divergence's own bar: the batches the run trained on got
    worse while the model did not, a stretch of bad data joining them (a dataset read with
    its columns swapped), and to a new high over its ``held_range`` points before.  Marked
    ``eval_held``; ``consolidate`` reports it as a spike.  A loss that dipped on easy data and
    came back to its level rose only from its dip."""
    y, i = loss.values, int(np.searchsorted(loss.steps, f.step))
    before = y[:i][np.isfinite(y[:i])][-5:]
    if len(before) < 5:
        return None
    level, top = _median(before), float(y[i])
    if not top > _rise_bar(level, y, th):
        return None
    # and above every point of the stretch before it: a heavy-tailed batch loss (an energy
    # MSE whose batches scatter 3x) reaches such a jump every few dozen steps
    recent = y[max(0, i - int(th.get("held_range", 16))) : i]
    recent = recent[np.isfinite(recent)]
    if len(recent) and top <= float(np.max(recent)):
        return None
    return f.model_copy(
        update={
            "context": ("eval_held",),
            "evidence": f"{_not_stayed(f)}, {top / level:.1f}x its level {_fmt(level)} just before, while the eval loss held its level: the training batches got worse, not the model",
        }
    )


def _warmup_transient(
    f: Finding,
    loss: Series,
    ev: Series | None,
    lr: Series | None,
    th: dict[str, Any],
    *,
    adaptive_lr: float | None = None,
) -> bool:
    """A rise in the run's first points (fewer than ``recover_min_points`` before the onset:
    the run had no level of its own yet) that it learned its way out of at its rate, ending at
    or below ``recover_learned`` × its lowest point before the rise, and its eval loss, where
    logged, below its best before it and that point, with the rate when it got back within
    ``1 / recover_lr`` of the onset's and of every rate in between: the optimizer's first moves
    (momentum building up, a probe on a backbone still settling), not a divergence.  (A
    judgement of the whole run: only a finished one, ``_final``.)  Not at an Adam-family rate
    of ``adaptive_lr_high`` or more: such a rate throws the weights (Adam steps each by about
    the rate), and where the run got back, its schedule's decay let it.  Nor a rise to
    ``transient_max`` × its lowest point before or more: first moves unsettle a model, a
    step far too large throws it (Trax at a peak rate of 2.7: 3.3 → 105, back by decay)."""
    y, steps = loss.values, loss.steps
    i = int(np.searchsorted(steps, f.step))
    before = y[:i][np.isfinite(y[:i])]
    if not th.get("_final", True) or not 1 <= len(before) < int(th.get("recover_min_points", 8)):
        return False
    if adaptive_lr is not None and adaptive_lr >= th.get("adaptive_lr_high", np.inf):
        return False
    if not np.isfinite(y[i:]).all():
        return False
    n = max(3, len(y) // 10)
    low = float(np.min(before))
    if low > 0 and np.max(y[i:]) >= th.get("transient_max", np.inf) * low:
        return False
    if (
        len(y) - i <= n
        or not low > 0
        or not _median(y[-n:]) <= th.get("recover_learned", 0.9) * low
    ):
        return False
    if ev is not None:
        # The model got back too: its eval ends below its best before the rise and below the
        # level the training loss rose from (where it had no eval yet, that level alone).
        e_before = ev.values[(ev.steps <= f.step) & np.isfinite(ev.values)]
        e = ev.values[np.isfinite(ev.values)]
        m = max(1, len(e) // 10)
        if len(e) and not _median(e[-m:]) <= min([low, *e_before]):
            return False
    if lr is not None:
        k = i + int(np.argmax(y[i:] <= low))  # first point back below where it started
        onset, back = _value_at(lr, f.step), _value_at(lr, int(steps[k]))
        ratio = th.get("recover_lr", 0.5)
        if onset and back and onset > 0 and not ratio * onset <= back <= onset / ratio:
            return False  # the rate moved: the schedule, not the run, brought it back
        # nor did it pass through a peak on the way (a warm-up that went on rising after the
        # onset, then a decay that brought the loss back)
        between = lr.values[(lr.steps >= f.step) & (lr.steps <= steps[k])]
        between = between[np.isfinite(between)]
        if back and len(between) and back < ratio * float(np.max(between)):
            return False
    return True


def _recovered(f: Finding, loss: Series, lr: Series | None, th: dict[str, Any]) -> Finding:
    """Mark a divergence the run came back from by itself: it had trained before the onset
    (at least ``recover_min_points`` points) and was back at its level there within
    ``recover_quick`` points, or had learned (that level at most ``recover_learned`` × its
    first value); it ends at or below that level, and, where an lr is
    logged, the rate when it got back was within a factor ``1 / recover_lr`` of the rate at
    the onset. A rate too high keeps throwing a model off (or threw it off as a warm-up raised
    it); a bad stretch of data sets it back once, and at the same rate it learns its way back.
    (Judged on the points seen so far: a live run's divergence is marked only once the
    recovery is in the log.)"""
    y, steps = loss.values, loss.steps
    i = int(np.searchsorted(steps, f.step))
    before = y[:i][np.isfinite(y[:i])]
    if len(before) < int(th.get("recover_min_points", 8)) or not np.isfinite(y[i:]).all():
        return f
    level = _median(before[-5:])
    n = max(3, len(y) // 10)
    if len(y) - i <= n or not _median(y[-n:]) <= level:
        return f
    peak = i + int(np.argmax(y[i:]))
    k = peak + int(np.argmax(y[peak:] <= level))  # the first point back at the level
    # Back within a few points, the model was not thrown off (it had nothing to re-learn):
    # the batches were bad. Slower, only a run that had learned before tells a setback from a
    # start that overshot.
    quick = k - i <= int(th.get("recover_quick", 10))
    if not quick and not level <= th.get("recover_learned", 0.9) * before[0]:
        return f
    if lr is not None:
        onset, back = _value_at(lr, f.step), _value_at(lr, int(steps[k]))
        ratio = th.get("recover_lr", 0.5)
        if onset and back and onset > 0 and not ratio * onset <= back <= onset / ratio:
            return f  # the rate moved (a cut, or a warm-up it diverged in): the rate is implicated
    return f.model_copy(
        update={
            "context": (*f.context, "recovered"),
            "evidence": f"{_not_stayed(f)}, back to {_fmt(y[k])} by step {steps[k]} and ending at {_fmt(_median(y[-n:]))}, at or below its level {_fmt(level)} before the onset",
        }
    )


def _late(f: Finding, loss: Series, lr: Series | None, th: dict[str, Any]) -> Finding:
    """Mark a divergence whose onset came ``late_share`` of the way through the run's span or
    later, after at least ``recover_min_points`` points, and, where an lr is logged, after the
    run had trained at its onset rate or above for ``late_held`` of the span, the rate within
    ``recover_lr``'s factor of it from then to the end: a rate too high
    throws a model off once it is reached (in the warm-up, or soon after); one that held for
    that long did not change, what the model was fed did.  Judged once the run has ended."""
    if not th.get("_final", True):
        return f  # (a live run's span is not its length: any fresh onset sits near its end)
    steps = loss.steps
    span = float(steps[-1] - steps[0])
    i = int(np.searchsorted(steps, f.step))
    if not span > 0 or i < th.get("recover_min_points", 8):
        return f
    share = (f.step - float(steps[0])) / span
    if share < th.get("late_share", 0.4):
        return f
    if lr is not None:
        fin = np.isfinite(lr.values) & (lr.steps <= f.step)
        lv, ls = lr.values[fin], lr.steps[fin]
        if not len(lv):
            return f
        reached = ls[np.flatnonzero(lv >= 0.9 * lv[-1])[0]]  # when it first stood this high
        if (f.step - reached) / span < th.get("late_held", 0.2):
            return f
        # …and not moved since by more than ``recover_lr``'s factor (a cut that rescued the
        # run, or a raise after it, implicates the rate): no decay to nothing, no step cut.
        # A fall after the onset that rescued nothing (the loss never came back: a schedule's
        # decay it went on diverging under) clears the rate all the more.
        later = lr.values[(lr.steps > f.step) & np.isfinite(lr.values)]
        ratio = th.get("recover_lr", 0.5)
        if len(later) and not (
            np.max(later) <= lv[-1] / ratio
            and (ratio * lv[-1] <= np.min(later) or _never_back(loss, f.step))
        ):
            return f
    return f.model_copy(
        update={
            "context": (*f.context, "late"),
            "evidence": f"{f.evidence}; {100 * share:.0f}% of the way through the run",
        }
    )


def _set_back(f: Finding, loss: Series, th: dict[str, Any]) -> Finding:
    """Mark a ``late`` rise that came in one jump and that the run then learned its way down
    from, at its own rate: its highest point after the onset is among the first three, and its
    last tenth ends within ``setback_share`` of the jump (from its level before the onset to
    the level it jumped to, the median of its first five points after) above that level.
    Data that changed late (a shard with shifted labels joining the batches) sets a model back
    in one step and it re-learns from there; a rate that throws it climbs, or stays up.
    ``consolidate`` reports such a rise as the spike it was."""
    if "late" not in f.context or "recovered" in f.context:
        return f
    y, i = loss.values, int(np.searchsorted(loss.steps, f.step))
    before, after = y[:i][np.isfinite(y[:i])], y[i:]
    n = max(3, len(y) // 10)
    if len(before) < 5 or len(after) <= 2 * n or not np.isfinite(after).all():
        return f
    level, jumped, end = _median(before[-5:]), _median(after[:5]), _median(y[-n:])
    if int(np.argmax(after)) >= 3 or not jumped > level:
        return f
    if end > level + th.get("setback_share", 0.75) * (jumped - level):
        return f
    return f.model_copy(
        update={
            "context": (*f.context, "setback"),
            "evidence": f"{_not_stayed(f)}; it then fell back to {_fmt(end)} at the end ({100 * (end - level) / (jumped - level):.0f}% of its jump from {_fmt(level)} to {_fmt(jumped)}): a setback it learned its way down from",
        }
    )


def _never_back(loss: Series, step: int, k: int = 5) -> bool:
    """The loss never came back from a rise at ``step``: it has ``k`` finite points or fewer
    after it (it went non-finite), or the median of its last ``k`` sits above its level before
    the rise by a quarter of the rise's own level (the median of its first ``k`` points after
    it) or a tenth of the level, whichever is more."""
    x, i = loss.values, int(np.searchsorted(loss.steps, step))
    before, after = x[:i][np.isfinite(x[:i])][-k:], x[i:][np.isfinite(x[i:])]
    if not len(before):
        return False
    if len(after) <= k:
        return True
    level = _median(before)
    bar = max(0.1 * abs(level), 0.25 * (_median(after[:k]) - level))
    return _median(after[-k:]) > level + bar


def _lr_decayed(f: Finding, lr: Series, ratio: float) -> Finding:
    """Mark a divergence whose onset came at a learning rate below ``ratio`` × the peak the run
    had already trained at: the rate alone did not throw it off (it was higher before)."""
    i = int(np.searchsorted(lr.steps, f.step, side="right"))
    seen = lr.values[:i][np.isfinite(lr.values[:i])]
    if not len(seen) or not np.max(seen) > 0 or not seen[-1] < ratio * np.max(seen):
        return f
    return f.model_copy(
        update={
            "context": (*f.context, "lr_decayed"),
            "evidence": f"{f.evidence}; at {lr.name} {_fmt(seen[-1])}, below its peak {_fmt(np.max(seen))}",
        }
    )


def _windowed(run: RunView, kind: str, role: str, th: dict[str, Any], fn: Any) -> Finding | None:
    """``fn(series, th, since)`` on the tail a rolling-baseline detector needs."""
    s = run[role]
    if s is None:
        return None
    tail, at = _tail(s, run.start(kind, s), th)
    return fn(tail, th, at)


@detector(
    "loss_spike",
    reads=("train_loss", "eval_loss", "lr", "adversary_loss", *QUALITY_READS),
    stable=True,
    precursor=True,
)
def loss_spike(run: RunView, th: dict[str, Any]) -> Finding | None:
    # (a critic's loss jumps as its returns do, a GAN's as its players trade places)
    return _beside_quality(run, "loss_spike", _distance_spike, _loss_spike_of_run, th)


def _loss_spike_of_run(run: RunView, th: dict[str, Any]) -> Finding | None:
    s = run["train_loss"]
    if s is None or run.moving_target:
        return None
    # The starting level: the second highest of the first `min_history` points of the whole
    # series (a loss can fall by orders of magnitude within them, and one point makes no level:
    # a rate far too high can throw the very first to 1e5); fixed once they exist, so an
    # incremental pass judges with the very same number.
    first = _finite_prefix(s.values)[: int(th.get("min_history", 16))]
    head = np.sort(np.abs(first))
    level = float(head[-2] if len(head) > 1 else head[-1]) if len(head) else None
    since = run.start("loss_spike", s)
    early, lr = _thrown_early(s, first, th, since), run["lr"]
    if (
        early is not None
        and lr is not None
        and _warmup_transient(
            early, s, run["eval_loss"], lr, th, adaptive_lr=as_float(run.param("adaptive_lr"))
        )
    ):
        # Thrown in its first points, then learned its way well below where it began at a
        # logged rate that held (an online classifier over features that shift fast in their
        # first epochs): the first moves of the run, not a rate that threw the model.  (Where
        # no rate is logged, a schedule's decay may have brought it back: a spike still.)
        early = None
    return (
        early
        or _windowed(run, "loss_spike", "train_loss", th, partial(_loss_spike, start_level=level))
        or _jump(s, th, since)
    )


def _jump(s: Series, th: dict[str, Any], since: int = 0) -> Finding | None:
    """A step up from one point to the next, after ``jump_history`` points or more, that
    stands ``jump_z`` robust spreads above the point-to-point changes of the ``jump_history``
    before it (a trend's steady fall is its own baseline), lifts the loss ``jump_rel`` above
    the point before, and holds: the median of the ``jump_after`` points from it stays at
    least half the step up.  A loss logged every few dozen steps has too few points for a
    rolling level, and its fall inflates any spread of levels; a shard of other data moves it
    up at once and keeps it there while it lasts.  Only on such a log (``jump_max_points`` at
    most): single batches' losses jump by themselves.  Reported at the point that confirms it."""
    x = _finite_prefix(s.values)
    k, hist = int(th.get("jump_after", 4)), int(th.get("jump_history", 8))
    if not hist + 1 + k <= len(x) <= th.get("jump_max_points", 0) or not (x > 0).all():
        return None  # (a dense log of single batches jumps by itself: the rolling rules judge it)
    d = np.diff(x)
    for i in range(hist, len(d)):
        if i + k < since:
            continue  # (confirmed on points an incremental pass has judged)
        if i + k > len(x):
            break
        prev = d[i - hist : i]
        scale = max(MAD_TO_SIGMA * _mad(prev), th.get("rel_floor", 0.01) * x[i])
        z = (d[i] - _median(prev)) / scale
        if z < th.get("jump_z", 8.0) or x[i + 1] < (1 + th.get("jump_rel", 0.15)) * x[i]:
            continue
        held = _median(x[i + 1 : i + 1 + k])
        if held < x[i] + 0.5 * d[i]:
            continue
        j = i + k
        return Finding(
            kind="loss_spike",
            metric=s.name,
            step=int(s.steps[j]),
            severity=float(min(1.0, z / (4 * th.get("z", 6.0)))),
            evidence=f"{s.name} stepped up from {_fmt(x[i])} to {_fmt(x[i + 1])} at step {s.steps[i + 1]} ({z:.0f} robust spreads of its previous {hist} changes) and held: median {_fmt(held)} over the {k} points from there",
        )
    return None


def _thrown_early(s: Series, x: np.ndarray, th: dict[str, Any], since: int) -> Finding | None:
    """A point of ``x``, the first ``min_history`` finite points (before any baseline exists),
    ``early_ratio`` times the first point or more: the model got far worse than it was
    untrained.  A batch cannot do that to a model that has barely moved (an untrained one is
    equally unsure of every batch); a step far too large can (GPT-NeoX at 0.3: 7.1 at
    iteration 1, 19.4 at 6)."""
    ratio = th.get("early_ratio")
    if not ratio or since >= len(x) or len(x) < 3 or not x[0] > 0:
        return None  # (an incremental pass past those points has judged them already)
    c = int(th.get("min_history", 16)) - 1  # the point that confirms a thrown first one
    rest = _median(x[1 : c + 1]) if len(x) > c else 0.0
    throw = th.get("first_throw") or np.inf
    if since <= c and rest > 0 and x[0] >= throw * max(rest, float(x[1])):
        # The first point thousands of times the level the run then holds: no untrained
        # model is that far off (a classifier starts near ln C, a regression near its
        # targets' variance, and learning by heart takes hundreds of steps to gain 400x);
        # the first updates threw the weights (Ray Tune's Adam at 0.5: 1.1e5, then 4.5 and
        # 0.8).  One point that far above the next as well: a loss that learns by heart
        # falls by factors a point, not by thousands at once.  Reported where the points
        # after it confirm it.
        return Finding(
            kind="loss_spike",
            metric=s.name,
            step=int(s.steps[c]),
            severity=1.0,
            evidence=f"{s.name} = {_fmt(x[0])} at its first point (step {s.steps[0]}), {x[0] / rest:.0f}x the median {_fmt(rest)} of the next {c}: the first updates threw the weights",
            context=("untrained",),
        )
    above = np.flatnonzero(x[1:] > ratio * x[0]) + 1
    above = above[above >= since]
    if not len(above):
        return _held_early(s, x, th, since)
    i = int(above[0])
    return Finding(
        kind="loss_spike",
        metric=s.name,
        step=int(s.steps[i]),
        severity=float(min(1.0, x[i] / x[0] / (4 * ratio))),
        evidence=f"{s.name} = {_fmt(x[i])} at step {s.steps[i]}, {x[i] / x[0]:.1f}x its first point {_fmt(x[0])} (the untrained model's), before any baseline: thrown far above where it began",
        context=("untrained",),
    )


def _held_early(s: Series, x: np.ndarray, th: dict[str, Any], since: int) -> Finding | None:
    """``early_held`` consecutive points of the first ones, each ``early_held_ratio`` times the
    first (untrained) point or more: not one noisy batch but a model that stayed far worse
    than untrained for several updates (x-transformers at lr 0.1: 5.7, then 7.0, 8.5, 9.3, 8.2
    at iterations 3-6; a healthy start's worst point sits 1.3x its first).  Reported at the
    point that completes the run of them."""
    ratio, k = th.get("early_held_ratio"), int(th.get("early_held", 3))
    if not ratio or len(x) < k + 1:
        return None
    hi = x[1:] > ratio * x[0]
    for i in range(1, len(x) - k + 1):
        if hi[i - 1 : i - 1 + k].all():
            j = i + k - 1
            if j < since:
                return None  # judged by an earlier pass
            peak = float(np.max(x[i : j + 1]))
            return Finding(
                kind="loss_spike",
                metric=s.name,
                step=int(s.steps[j]),
                severity=float(min(1.0, peak / x[0] / (4 * ratio))),
                evidence=f"{s.name} stayed {ratio:g}x or more above its first point {_fmt(x[0])} (the untrained model's) for {k} points from step {s.steps[i]} (up to {_fmt(peak)}), before any baseline: thrown above where it began",
                context=("untrained",),
            )
    return None


_AVERAGED = re.compile(r"(?i).*(avg|average|mean).*")


@detector(
    "plateau",
    reads=(
        "train_loss",
        "eval_loss",
        "eval_score",
        "lr",
        "grad_norm",
        "policy_entropy",
        "eval_success",
        *QUALITY_READS,
    ),
    precursor=True,
)
def plateau(run: RunView, th: dict[str, Any]) -> Finding | None:
    q = run.quality
    if q is not None and q.series is run["eval_reward"] and run["eval_success"] is not None:
        # A test return beside the share of test episodes that succeeded: the share says what
        # was learned (a dense return moves 24 -> 27 while success goes 30 -> 100 %), judged
        # as a bounded held-out score; a share at 0 from its first eval to the end gained
        # nothing.  Judged from the learner's first update on, as the return would be.
        s = run["train_loss"]
        return _score_plateau(run["eval_success"], s, th) if s is not None else None
    if q is not None:
        explore = run["reward"] if q.series is run["eval_reward"] else None
        # a training return averaged over many episodes (Sample Factory's avg_reward, SB3's
        # ep_rew_mean) is as steady as a test return: judged from as few points
        steady = q.per_eval or _AVERAGED.fullmatch(q.series.name) is not None
        f = _quality_plateau(q.series, q.higher, steady, run["train_loss"], th, explore=explore)
        if f is not None or run.contest or _judged(q.series, steady, th):
            return _entropy_collapsed(f, run["policy_entropy"], th) if f and q.higher else f
        # (a measure too short to judge, four FID snapshots of a diffusion model, says
        # nothing: its one loss, no contest, is judged instead)
    s = run["train_loss"]
    if s is None or run.moving_target:
        return None
    lr = run["lr"]
    logged = lr.values[np.isfinite(lr.values)] if lr is not None else np.array([])
    f = _plateau(
        s,
        th,
        eval_loss=run["eval_loss"],
        lr=as_float(run.param("lr")),
        adaptive_lr=as_float(run.param("adaptive_lr")),
        peak_lr=float(np.max(logged)) if len(logged) else None,
        peak_step=_peak_step(lr),
        grad_norm=run["grad_norm"],
    )
    if f is None and lr is not None:
        f = _schedule_stopped(s, lr, th)
    if f is None and lr is not None:
        f = _stuck_while_annealed(s, lr, th)
    if f is None and lr is not None:
        f = _learned_once_rate_fell(s, lr, th)
    if f is None and run["eval_loss"] is None and run["eval_score"] is not None:
        # No eval loss: the held-out score is the measure of what the run learned
        f = _score_plateau(run["eval_score"], s, th)
    if f is None and run["eval_loss"] is not None:
        f = _eval_frozen(run["eval_loss"], s, th, grad_norm=run["grad_norm"])
    return f


def _eval_frozen(
    ev: Series, loss: Series, th: dict[str, Any], *, grad_norm: Series | None = None
) -> Finding | None:
    """An eval loss that stopped moving: its last ``frozen_evals`` evals or more the very same
    number (within ``frozen_tol`` of it), from ``frozen_share`` of the way through the run on,
    while the run kept training.  A model still updated moves a continuous held-out error in
    its last digits at every eval, however converged; one whose rate decayed to nothing (a
    decay typed per step, meant per thousand) leaves it exactly where it stopped.  Not where
    the logged gradients vanished over that stretch (below a thousandth of their first
    points'): ``vanishing_gradients`` names that cause."""
    fin = np.isfinite(ev.values)
    x, steps = ev.values[fin], ev.steps[fin]
    n = int(th.get("frozen_evals", 5))
    if len(x) < n + 1 or all(float(f"{v:.5g}") == v for v in x):
        return None  # (a logger that rounds its evals, 0.5743, freezes a converged run's too)
    last = x[-1]
    same = np.abs(x - last) <= th.get("frozen_tol", 1e-6) * max(abs(float(last)), 1e-12)
    k = len(x) - (int(np.flatnonzero(~same)[-1]) + 1 if (~same).any() else 0)
    if k < n or k == len(x):
        return None  # (never moved at all: eval_still's, with the loss's own judgement)
    t = loss.steps[np.isfinite(loss.values)]
    if len(t) < 2 or t[-1] <= t[0]:
        return None
    start = int(steps[len(x) - k])
    share = (float(t[-1]) - start) / (float(t[-1]) - float(t[0]))
    if share < th.get("frozen_share", 0.4):
        return None
    if grad_norm is not None:
        g = grad_norm.values[np.isfinite(grad_norm.values)]
        late = g[grad_norm.steps[np.isfinite(grad_norm.values)] >= start]
        if len(g) >= 3 and len(late) and _median(late) <= 1e-3 * _median(g[:3]):
            return None
    return Finding(
        kind="plateau",
        metric=ev.name,
        step=start,
        severity=float(min(1.0, share)),
        evidence=f"{ev.name} stood at exactly {_fmt(float(last))} for its last {k} evals (from step {start}, {100 * share:.0f}% of the run) while {loss.name} went on logging: the weights stopped moving",
        context=("frozen",),
    )


def _entropy_collapsed(f: Finding, ent: Series | None, th: dict[str, Any]) -> Finding:
    """A return that never improved while the policy's entropy fell to ``entropy_collapse`` of
    its start or below: the policy collapsed onto a few actions without learning to act (the
    steps of a rate too high; a policy at a rate too low barely moves, its entropy with it).
    Where it learned, entropy falls too, but the return rose: no plateau to mark."""
    if ent is None:
        return f
    x = ent.values[np.isfinite(ent.values)]
    if len(x) < 10:
        return f
    k = max(1, len(x) // 10)
    head, tail = _median(x[:k]), _median(x[-2 * k :])
    if not head > 0 or tail > th.get("entropy_collapse", 0.1) * head:
        return f
    return f.model_copy(
        update={
            "context": (*f.context, "collapsed"),
            "evidence": f"{f.evidence}; {ent.name} fell {_fmt(head)} → {_fmt(tail)}: the policy collapsed without learning",
        }
    )


def _score_plateau(sc: Series, loss: Series, th: dict[str, Any]) -> Finding | None:
    """A held-out score (higher is better, bounded: accuracy, F1, BLEU) that did not improve:
    its last 20 % gained less than ``score_gain`` both of its first 10 % (floored at a tenth of
    its scale) and of the room left above them (to 1, or to 100 for a score logged in per
    cent: an accuracy from 0.9 to 0.97 gained little of its start and most of its room), and
    neither did its best over its first eval, over ``score_min_points`` evals or more.  Not
    a score that starts near its top (``score_high``): it has nothing left to gain.  Where
    the loss ended ``score_loss_rise`` above its best (of its level and of its fall), the
    run learned and was thrown back (``divergence`` before it); where the loss fell by ``slow_gain`` or
    more, what it learned on the training data does not carry over (``eval_flat``)."""
    fin = np.isfinite(sc.values)
    x = sc.values[fin]
    if len(x) < th.get("score_min_points", 5) or np.any(x < 0):
        return None
    scale = 100.0 if float(np.max(x)) > 1 else 1.0
    head, tail = _head_tail(x, th)
    if head >= th.get("score_high", 0.9) * scale:
        return None
    bar = th.get("score_gain", 0.25)

    def gain(v: float, ref: float) -> float:
        # of its start (floored at a tenth of the scale: BLEU 0.1 → 1.2 is no gain) and of its room
        return max((v - ref) / max(ref, 0.1 * scale), (v - ref) / (scale - ref))

    # the tail gained little, and so did its best level over its first eval: one that rose and
    # fell back learned something and lost it (overfitting, judged by its own rule)
    g = gain(tail, head)
    peak = _level_around(x, int(np.argmax(x)), th.get("score_smooth", 3))
    if g >= bar or gain(peak, float(x[0])) >= bar:
        return None
    evidence = f"{sc.name} (a held-out score) went from {_fmt(head)} to {_fmt(tail)} over {len(x)} evals ({100 * (tail - head) / max(head, 1e-12):+.0f}%, {100 * (tail - head) / (scale - head):+.1f}% of the room to {scale:g})"
    lx = loss.values[np.isfinite(loss.values)]
    after: tuple[str, ...] = ()
    context: tuple[str, ...] = ()
    if len(lx) >= 3 and float(np.min(lx)) > 0:
        _, l_tail = _head_tail(lx, th)
        l_gain = (float(lx[0]) - l_tail) / float(lx[0])
        l_best, rise = float(np.min(lx)), th.get("score_loss_rise", 0.1)
        # thrown back: the rise is a share of both the loss's level and of what it had gained
        if l_tail - l_best >= rise * max(l_best, float(lx[0]) - l_best):
            after = ("divergence",)
            evidence += f"; {loss.name} rose from its best {_fmt(l_best)} to {_fmt(l_tail)} and stayed there"
        elif l_gain >= th.get("slow_gain", 0.1):
            context = ("eval_flat",)
            evidence += f"; {loss.name} fell {_fmt(float(lx[0]))} → {_fmt(l_tail)}: what it learned does not carry over"
    return Finding(
        kind="plateau",
        metric=sc.name,
        step=int(sc.steps[fin][0]),
        severity=float(min(1.0, max(0.3, 1 - max(g, 0) / bar))),
        evidence=evidence,
        after=after,
        context=context,
    )


def _peak_step(lr: Series | None, near: float = 0.9) -> int | None:
    """The step where a logged rate first stood at ``near`` × its peak (a warm-up's end)."""
    if lr is None:
        return None
    fin = np.isfinite(lr.values)
    if not fin.any() or not np.max(lr.values[fin]) > 0:
        return None
    return int(lr.steps[fin][np.argmax(lr.values[fin] >= near * np.max(lr.values[fin]))])


def _schedule_stopped(s: Series, lr: Series, th: dict[str, Any]) -> Finding | None:
    """The logged rate fell to ``lr_dead`` × its peak or less and stayed there for the last
    ``lr_dead_share`` of the run or more, where the loss had still fallen by
    ``lr_dead_falling`` over the last quarter of its points before (at least 2), and has not
    moved since (it gained less than ``min_improvement`` over at least
    ``distance_min_points`` points): the schedule stopped the training early (a decay horizon
    or a floor set wrong).  A schedule that decays to nothing does so at the end."""
    fin = np.isfinite(lr.values)
    lv, ls = lr.values[fin], lr.steps[fin]
    if len(lv) < 3 or not float(np.max(lv)) > 0:
        return None
    dead = lv <= th.get("lr_dead", 0.01) * float(np.max(lv))
    if not dead[-1]:
        return None
    k = len(dead) - int(np.argmin(dead[::-1]))  # the first point of the last dead stretch
    span = float(s.steps[-1] - s.steps[0])
    if not span > 0 or (s.steps[-1] - ls[k]) / span < th.get("lr_dead_share", 0.4):
        return None
    after = s.values[(s.steps >= ls[k]) & np.isfinite(s.values)]
    if len(after) < th.get("distance_min_points", 5) or not after[0] > 0:
        return None
    # …while the loss was still falling fast: a rate cut because the loss had levelled off
    # (ReduceLROnPlateau) follows a converged run, it does not stop one.  (Where the rate was
    # dead for ``lr_dead_early`` of the run or more, no plateau's cuts got it there that soon:
    # a schedule stepped per batch instead of per epoch, whatever the loss did before.)
    was = s.values[(s.steps < ls[k]) & np.isfinite(s.values)]
    w = max(2, len(was) // 4)
    early = (s.steps[-1] - ls[k]) / span >= th.get("lr_dead_early", np.inf)
    if not early and (
        len(was) < w or not (was[-w] - after[0]) >= th.get("lr_dead_falling", 0.1) * was[-w]
    ):
        return None
    # (from the level of its first points since, not one batch's loss: a loss of single
    # batches scatters by half its level)
    head, tail = _head_tail(after, th)
    start = head if early else float(after[0])
    if not start > 0:
        return None
    gain = (start - tail) / start
    min_gain = th.get("min_improvement", 0.05)
    if gain >= min_gain:
        return None
    return Finding(
        kind="plateau",
        metric=s.name,
        step=int(ls[k]),
        severity=float(min(1.0, 1 - max(gain, 0) / min_gain)),
        evidence=f"{lr.name} fell to {_fmt(float(lv[k]))} (≤ {100 * th.get('lr_dead', 0.01):g}% of its peak {_fmt(float(np.max(lv)))}) at step {ls[k]} and stayed there for the last {100 * (s.steps[-1] - ls[k]) / span:.0f}% of the run; {s.name} went from {_fmt(start)} to {_fmt(tail)} since ({100 * gain:.1f}% better): the schedule stopped the training",
        context=("lr_dead",),
    )


def _stuck_while_annealed(s: Series, lr: Series, th: dict[str, Any]) -> Finding | None:
    """The loss fell in its first ``head`` share of points and then stopped: from there to the
    end it gained less than ``stuck_gain`` of its level while the logged rate annealed
    ``stuck_anneal``-fold or more before the last ``tail`` share, and it stayed at
    ``stuck_level`` of its start or above.  A healthy run that learned at once keeps gaining
    as its rate anneals (smaller steps settle into the minimum it found); one that does not
    move at a rate hundreds of times smaller was thrown by its first steps to a place no step
    size gets it out of (saturated units, a collapsed field): the rate was too high from the
    start (``thrown``)."""
    x = s.values
    n = len(x)
    if n < th.get("min_points", 12) or not np.all(np.isfinite(x)):
        return None
    h = max(1, int(n * th.get("head", 0.1)))
    start = float(x[0])
    rest = x[h:]
    if not start > 0 or len(rest) < 2 * h:
        return None
    level, tail = _median(rest[:h]), _head_tail(x, th)[1]
    if not (level > 0 and tail >= th.get("stuck_level", 0.2) * start):
        return None
    # flat all the way: no stretch of it (chunk medians) left the level by the bar either way
    # (one that fell further learned; one that rose or dipped and came back was hit by
    # something else)
    bar = th.get("stuck_gain", 0.15)
    chunks = _chunk_medians(rest, h)
    gain = (level - tail) / level
    if abs(gain) >= bar or any(abs(c - level) >= bar * level for c in chunks):
        return None
    # the anneal before the tail (a cosine to zero falls most in its last points, after the
    # loss has had its chance to answer)
    t = max(1, int(n * th.get("tail", 0.2)))
    at_level, at_tail = _value_at(lr, int(s.steps[h])), _value_at(lr, int(s.steps[n - t]))
    if at_level is None or at_tail is None or not at_tail > 0:
        return None
    fold = at_level / at_tail
    if fold < th.get("stuck_anneal", 30.0):
        return None
    return Finding(
        kind="plateau",
        metric=s.name,
        step=int(s.steps[h]),
        severity=float(min(1.0, 1 - max(gain, 0) / bar)),
        evidence=f"{s.name} fell from {_fmt(start)} to {_fmt(level)} by step {s.steps[h]}, then went to {_fmt(tail)} ({100 * gain:+.1f}%) while {lr.name} annealed {fold:.0f}-fold ({_fmt(at_level)} → {_fmt(at_tail)} at step {s.steps[n - t]}): stuck where its first steps threw it",
        context=("thrown",),
    )


def _learned_once_rate_fell(s: Series, lr: Series, th: dict[str, Any]) -> Finding | None:
    """The loss gained less than ``slow_gain`` from its first points to the end of the stretch
    where the logged rate stood at ``peak_share`` of its peak or more (at least ``peak_span``
    of the loss's points), then, once the schedule brought the rate down, gained
    ``min_improvement`` or more, at ``fell_pace`` times the pace per step of the high stretch.
    A healthy run learns most at its peak rate and settles as the rate decays; one that waits
    for the decay to learn at all was held back by a rate too high for it (``thrown``)."""
    x, xs = s.values, s.steps
    fin = np.isfinite(lr.values)
    lv, ls = lr.values[fin], lr.steps[fin]
    if len(lv) < 3 or not np.all(np.isfinite(x)) or not float(np.max(lv)) > 0:
        return None
    peak = float(np.max(lv))
    high = np.flatnonzero(lv >= th.get("peak_share", 0.5) * peak)
    a, b = int(ls[high[0]]), int(ls[high[-1]])
    at_peak, fell = (xs >= a) & (xs <= b), xs > b
    p, post = x[at_peak], x[fell]
    k = max(3, int(len(p) * th.get("tail", 0.2)))
    if len(p) < 2 * k or len(post) < max(3, k) or len(p) < th.get("peak_span", 0.3) * len(x):
        return None
    start = _median(x[: min(3, len(x))])
    p_head, p_tail = _median(p[:3]), _median(p[-k:])
    end = _median(post[-max(3, int(len(post) * th.get("tail", 0.2))) :])
    if not (start > 0 and p_head > 0 and p_tail > 0):
        return None
    before = (start - p_tail) / start  # all it learned before the rate fell
    # …nor below the bar at any stretch before (one that learned and was thrown back, by a
    # bad shard or a spike, is another finding's business)
    pre = x[xs <= b]
    low = min(_chunk_medians(pre, max(3, int(len(x) * th.get("head", 0.1)))))
    on_peak = max(0.0, (p_head - p_tail) / p_head)
    since = (p_tail - end) / p_tail
    if before >= th.get("slow_gain", 0.1) or since < th.get("min_improvement", 0.05):
        return None
    if (start - low) / start >= th.get("slow_gain", 0.1):
        return None
    pace_peak = on_peak / max(1, b - a)
    pace_since = since / max(1, int(xs[-1]) - b)
    if pace_since < th.get("fell_pace", 3.0) * pace_peak:
        return None
    return Finding(
        kind="plateau",
        metric=s.name,
        step=a,
        severity=float(min(1.0, 1 - max(before, 0) / th.get("slow_gain", 0.1))),
        evidence=f"{s.name} went from {_fmt(start)} to {_fmt(p_tail)} ({100 * before:.1f}% better) while {lr.name} stood at half its peak {_fmt(peak)} or more (steps {a}-{b}), then to {_fmt(end)} ({100 * since:.1f}% better) once it fell: it learned only when the rate came down",
        context=("thrown",),
    )


def _quality_min_points(per_eval: bool, th: dict[str, Any]) -> int:
    """The points a measure of progress needs to be judged: one per evaluation
    (``distance_min_points``) or a noisy training return's (``min_points``)."""
    return int(th.get("distance_min_points" if per_eval else "min_points", 12))


def _judged(r: Series, per_eval: bool, th: dict[str, Any]) -> bool:
    """A measure of progress with as many finite points as ``_quality_plateau`` asks for
    (counted over the whole run)."""
    return int(np.isfinite(r.values).sum()) >= _quality_min_points(per_eval, th)


def _quality_plateau(
    r: Series,
    higher: bool,
    per_eval: bool,
    loss: Series | None,
    th: dict[str, Any],
    *,
    explore: Series | None = None,
) -> Finding | None:
    """A measure of progress (see ``RunView.quality``) that did not improve by
    ``quality_gain`` of its starting magnitude from its first 10 % to its last 20 %, counted
    from the learner's first update (its first loss point): before it, the returns are a
    random policy's, and a run that logged no update was never seen learning.  A training
    episode's return is noisy (``min_points``); a distance over a fixed sample set, or the
    return over a set of test episodes, is one number an evaluation (``distance_min_points``).
    ``explore``: the training episodes' return beside a test return: the policy's level before
    it learned (its first points, exploring at random), which a test return that starts
    ``quality_gain`` above it had left behind by its first evaluation."""
    if loss is None or not len(loss) or not len(r):
        return None
    if r.steps[-1] >= loss.steps[0]:
        learning = r.steps >= loss.steps[0]
    elif r.timestamps.any() and loss.timestamps.any():
        # counted on another axis (Dopamine's iterations against the learner's training
        # steps): the clock says which came after the first update
        learning = r.timestamps >= loss.timestamps[0]
    else:
        learning = np.ones(len(r), dtype=bool)
    x = r.values[learning & np.isfinite(r.values)]
    if len(x) < _quality_min_points(per_eval, th):
        return None
    n = len(x)
    head, tail = _head_tail(x, th)
    if head == 0:
        return None  # a sparse reward not found yet tells nothing of the rate
    gain = (tail - head if higher else head - tail) / abs(head)
    bar = th.get("quality_gain", 0.25)
    if gain >= bar:
        return None
    e = explore.values[np.isfinite(explore.values)] if explore is not None else np.array([])
    if higher and len(e) and e[0] != 0 and (head - e[0]) / abs(e[0]) >= bar:
        # learned before its first test (Dopamine's iteration 0 of CartPole: 160) — where the
        # training return rose too; one that never rose learned nothing, and a test above it
        # from the first eval on is the starting policy's (a warm start tested greedily)
        e_head, e_tail = _head_tail(e, th)
        if e_head != 0 and (e_tail - e_head) / abs(e_head) >= bar:
            return None
    what = "the episode return" if higher else "a distance from the data, lower is better"
    evidence = f"{r.name} ({what}) went from {_fmt(head)} to {_fmt(tail)} over {n} points ({100 * gain:+.1f}% better, < {100 * bar:.0f}%)"
    # A rate too small barely moves the learner's loss; one too large throws it up many-fold
    # while the return stays where it was (the TD targets chase the overshooting values).
    lx = loss.values[np.isfinite(loss.values)]
    after: tuple[str, ...] = ()
    if len(lx) >= th.get("min_points", 12):
        l_head, l_tail = _head_tail(lx, th)
        if l_head > 0 and l_tail >= th.get("loss_rise", 3.0) * l_head:
            after = ("divergence",)
            evidence += f"; its loss {loss.name} rose from {_fmt(l_head)} to {_fmt(l_tail)}"
    return Finding(
        kind="plateau",
        metric=r.name,
        step=int(r.steps[0]),
        severity=float(min(1.0, max(0.3, 1 - max(gain, 0) / bar))),
        evidence=evidence,
        after=after,
    )


def _distance_worse(d: Series, th: dict[str, Any]) -> Finding | None:
    """A distance from the data (lower is better, ≥ 0) whose last 20 % ended ``quality_worse``
    × above its first point: the model ended worse than untrained.  Onset: the first point
    above that bar."""
    fin = np.isfinite(d.values)
    x, steps = d.values[fin], d.steps[fin]
    if len(x) < 3 or not x[0] > 0:
        return None
    bar = th.get("quality_worse", 2.0) * float(x[0])
    _, tail = _head_tail(x, th)
    if tail < bar:
        return None
    i = int(np.argmax(x >= bar))
    return Finding(
        kind="divergence",
        metric=d.name,
        step=int(steps[i]),
        severity=1.0,
        evidence=f"{d.name} (a distance from the data, lower is better) rose from {_fmt(x[0])} at the start to {_fmt(x[i])} at step {steps[i]} and ended at {_fmt(tail)}: worse than untrained",
    )


def _distance_spike(
    d: Series, higher: bool, th: dict[str, Any], loss: Series | None = None
) -> Finding | None:
    """A distance from the data that jumped above its start and ``quality_worse`` × its best so
    far (the model got worse than untrained), then came back (otherwise: ``_distance_worse``).
    Not a return (``higher``): signed, it has no scale to judge a jump by."""
    if higher:
        return None
    fin = np.isfinite(d.values)
    x, steps = d.values[fin], d.steps[fin]
    if len(x) < 3 or not x[0] > 0 or _distance_worse(d, th) is not None:
        return None
    best = np.minimum.accumulate(x)
    up = (x[1:-1] >= th.get("quality_worse", 2.0) * best[:-2]) & (x[1:-1] > x[0])
    if not up.any():
        return None
    i = int(np.argmax(up)) + 1
    return Finding(
        kind="loss_spike",
        metric=d.name,
        step=int(steps[i]),
        severity=float(min(1.0, x[i] / best[i - 1] / 10)),
        context=("fixed_set",),
        evidence=f"{d.name} (a distance from the data, lower is better) jumped from its best {_fmt(best[i - 1])} to {_fmt(x[i])} at step {steps[i]}, above its start {_fmt(x[0])}, then came back to {_fmt(x[-1])}",
    )


def _quality_worse(
    q: Series, higher: bool, th: dict[str, Any], loss: Series | None
) -> Finding | None:
    """The run's measure of progress got worse than untrained: a distance by the bar of
    ``_distance_worse``, a return by that of ``_return_worse``."""
    return _return_worse(q, th, loss) if higher else _distance_worse(q, th)


def _return_worse(r: Series, th: dict[str, Any], loss: Series | None) -> Finding | None:
    """A positive episode return whose rolling median (over ``max(5, n / 10)`` points) fell
    by ``return_worse`` of its first 10 %'s level below it: the policy got worse than the
    untrained one it started as (which a step too large does, by collapsing onto a bad
    action; a rate too small leaves it where it was).  Judged from the learner's first update
    (its first loss point), as ``_quality_plateau``.  Onset: that window's first point that
    low."""
    if loss is None or not len(loss):
        return None
    fin = np.isfinite(r.values) & (r.steps >= loss.steps[0])
    x, steps = r.values[fin], r.steps[fin]
    n = len(x)
    if n < th.get("return_min_points", 12):
        return None
    head, tail = _head_tail(x, th)
    w = max(5, n // 10)
    med = _row_median(np.lib.stride_tricks.sliding_window_view(x, w))
    if not head > 0:
        # A cost (negative) can get worse while new behaviour is tried out, early; one that
        # had learned to a small cost and ends at ``cost_back`` times it or more was thrown
        # back (a policy update too large), where a healthy run ends near its best.
        b = int(np.argmax(med))
        best, worst = float(med[b]), float(np.min(med[: b + 1]))
        ratio = th.get("cost_back", 1.5)
        if not (best < 0 and worst <= ratio * best and tail <= ratio * best):
            return None
        k = b + int(np.argmax(med[b:] <= ratio * best))
        return Finding(
            kind="divergence",
            metric=r.name,
            step=int(steps[k]),
            severity=float(min(1.0, tail / best / (2 * ratio))),
            evidence=f"{r.name} (the episode return, a cost) had learned from {_fmt(worst)} to a median of {_fmt(best)} over the {w} points from step {steps[b]}, then fell back to {_fmt(float(med[k]))} by step {steps[k]} and ended at {_fmt(tail)}, {tail / best:.1f}x its best: thrown back",
        )
    bar = (1 - th.get("return_worse", 0.4)) * head
    low = np.flatnonzero(med <= bar)
    if not len(low):
        return None
    i = int(low[0])
    j = i + int(np.argmax(x[i : i + w] <= bar))  # its first point that low
    return Finding(
        kind="divergence",
        metric=r.name,
        step=int(steps[j]),
        severity=float(min(1.0, (head - med[i]) / head)),
        evidence=f"{r.name} (the episode return) fell to a median of {_fmt(float(med[i]))} over the {w} points from step {steps[i]}, {100 * (head - med[i]) / head:.0f}% below its start's {_fmt(head)}: worse than the untrained policy",
    )


def _on_quality(run: RunView, kind: str, fn: Any, th: dict[str, Any]) -> Finding | None:
    """``fn(series, higher, th, loss)`` on the run's measure of progress, kept only from where
    the incremental caller has not judged yet (a ``stable`` detector's promise)."""
    quality = run.quality
    q, higher = quality.series, quality.higher  # type: ignore[union-attr]
    f = fn(q, higher, th, run["train_loss"])
    i = run.start(kind, q)
    if f is None or i >= len(q) or f.step < int(q.steps[i]):
        return None  # (every point judged already, or the onset among them)
    return f


@detector("exploding_gradients", reads=("grad_norm",), stable=True, precursor=True)
def exploding_gradients(run: RunView, th: dict[str, Any]) -> Finding | None:
    clip = run.param("grad_clip")
    fn = partial(_exploding_gradients, clipped=None if clip is None else run.clipped)
    return _windowed(run, "exploding_gradients", "grad_norm", th, fn)


@detector("vanishing_gradients", reads=("grad_norm", "train_loss"), precursor=True)
def vanishing_gradients(run: RunView, th: dict[str, Any]) -> Finding | None:
    # Its reference (the early median) grows with the run: always the whole series.
    s = run["grad_norm"]
    return _vanishing_gradients(s, th, 0, loss=run["train_loss"]) if s is not None else None


@detector("overfitting", reads=("eval_loss", "eval_score", "train_loss"))
def overfitting(run: RunView, th: dict[str, Any]) -> Finding | None:
    ev, higher = run["eval_loss"], False
    if ev is None and run["eval_score"] is not None:
        # No eval loss: the held-out score (higher is better) is judged as one, sign turned
        ev, higher = run["eval_score"], True
    if ev is None:
        return None
    return _overfitting(ev, run["train_loss"], th, higher=higher) or (
        None if higher else _windows_rose(ev, run["train_loss"], th)
    )


def _windows_rose(ev: Series, tr: Series | None, th: dict[str, Any]) -> Finding | None:
    """An eval too noisy for its last points to tell (a small validation set, a likelihood):
    the medians of ``window`` consecutive evals, counted back from the last, turned up from
    their best (neither the first window nor one of the last two) by ``window_rise`` of it and
    ``window_z`` × the spread a difference of two such medians has, in each of the last two
    windows, while the train loss fell by ``train_drop`` from the best window to the end
    (memorisation, as the other rules)."""
    w = int(th.get("window", 0))
    x = _finite_prefix(ev.values)
    n = len(x)
    if not w or n < 4 * w or tr is None or not len(tr):
        return None
    starts = list(range(n % w, n - w + 1, w))  # whole windows, counted back from the last
    meds = np.array(_chunk_medians(x[n % w :], w))
    b = int(np.argmin(meds))
    best, last = float(meds[b]), float(meds[-1])
    if b == 0 or b > len(meds) - 3:
        return None  # the first window is the best (never learned), or too few windows since
    spread = 1.25 * _noise(x[n // 4 :]) * float(np.sqrt(2 / w))  # sd of a median's difference
    bar = max(th.get("window_rise", 0.1) * abs(best), th.get("window_z", 3.0) * spread)
    if min(meds[-2], last) - best < bar:
        return None  # (the last two windows both: a rise that held, not one window's luck)
    i_best = starts[b] + w - 1
    t_at, t_end = _train_at(tr, ev, i_best), _train_at(tr, ev, n - 1)
    if not _memorised(tr, t_at, t_end, th):
        return None
    return Finding(
        kind="overfitting",
        metric=ev.name,
        step=int(ev.steps[starts[b]]),
        severity=(last - best) / max(abs(best), 1e-12),
        evidence=f"{ev.name}'s median of {w} evals bottomed at {_fmt(best)} (steps {ev.steps[starts[b]]}-{ev.steps[i_best]}) and its last two sit at {_fmt(float(meds[-2]))}, {_fmt(last)}: {(last - best) / max(spread, 1e-12):.1f}× the spread such medians have; {tr.name} {_fmt(t_at or np.nan)} → {_fmt(t_end or np.nan)}",
    )


@detector("expert_collapse", reads=("moe_load", "moe_dead", "moe_entropy", "moe_aux"))
def expert_collapse(run: RunView, th: dict[str, Any]) -> Finding | None:
    # Warm-up and "still collapsed at the end" move with the run: the whole series.
    n = as_float(run.param("n_experts"))
    return _expert_collapse(
        run["moe_load"],
        run["moe_dead"],
        run["moe_entropy"],
        th,
        0,
        aux=run["moe_aux"],
        max_entropy=float(np.log(n)) if n and n > 1 else None,
    )


@detector(
    "throughput_drop",
    reads=("throughput", "step_time", "clock", "clock_start", "data_time", "update_time"),
)
def throughput_drop(run: RunView, th: dict[str, Any]) -> Finding | None:
    """The earlier of a throughput drop and a step-time rise ("slow until the end" is judged
    on the run's end: the whole series).  Without a step time, a logged clock's time per
    step between its points stands in, or the time from each start stamp to its end stamp
    (nnU-Net's epoch_start_timestamps, epoch_end_timestamps: the epoch without its pauses)."""
    tp, st, clock = run["throughput"], run["step_time"], run["clock"]
    if tp is not None and (tp.values < 0).any():
        # a negative rate is a placeholder (nanoGPT's mfu is -100 until it has measured one)
        tp = Series(tp.name, tp.steps, np.where(tp.values < 0, np.nan, tp.values), tp.timestamps)
    if st is not None and _is_clock(st):
        st = None  # elapsed time, not time per step
    from_clock = st is None and clock is not None and _is_clock(clock)
    if from_clock:
        st = _per_step(clock, run["clock_start"])  # type: ignore[arg-type]
    own_step = st  # the step's own time in seconds, where the run gave one
    averaged = False
    if st is None and tp is not None and (since_start := _rate_clock(tp, th)) is not None:
        # A rate since the start damps every change (it falls 2.9k -> 0.7k where the steps
        # after a slowdown run at 0.3k) and carries its first points' pace to the end (a
        # collection phase before any update: CleanRL's charts/SPS): judged only as the time
        # per step of its implied clock (per unit counted: no step time to weigh a data wait by)
        st, clock, from_clock, averaged = _per_step(since_start), tp, True, True
    # A gradual fall that goes deep counts only on a rate of the hardware's use (``_deep``)
    use = tp is not None and run.aliases is not None and run.aliases.is_utilization(tp.name)
    drops = [
        tp is not None and not averaged and _throughput_drop(tp, th, 0, utilization=use),
        st is not None and _throughput_drop(st, th, 0, higher_is_worse=True),
    ]
    found = [d for d in drops if d]
    if not found:
        # No drop: a time that grew through the whole run, the step's own or the wait for
        # its data (a loader that takes ever longer while the step's compute stays level).
        dt = run["data_time"]
        grown = [
            st is not None and _growing_time(st, th),
            dt is not None and not _is_clock(dt) and _growing_time(dt, th, step_time=own_step),
        ]
        found = [g for g in grown if g]
        if not found and tp is not None and not use:
            # a rate's time per unit (its inverse) that grew all run: the same cost
            with np.errstate(divide="ignore", invalid="ignore"):
                per_unit = Series(tp.name, tp.steps, 1.0 / tp.values, tp.timestamps)
            # (a rate of work units only: a curriculum's longer samples slow samples/s)
            work = run.aliases is not None and run.aliases.is_work_rate(tp.name)
            shown = f"1 / {tp.name} (its time per unit)"
            f = _growing_time(per_unit, th, shown=shown) if work else None
            f = f or _fell_deep(tp, th)
            found = [f] if f else []
        if not found:
            return None
    first = min(found, key=lambda f: f.step or 0)
    judged = {s.name: (s, s is st) for s in (tp, st) if s is not None}.get(first.metric or "")
    if judged is not None and _machine_slowed(first, *judged, run["update_time"], th):
        return None
    if from_clock and st is not None and first.metric == st.name:
        first = first.model_copy(update={"metric": clock.name})  # the metric the run logged
    return first


def _machine_slowed(
    f: Finding, s: Series, higher_is_worse: bool, update: Series | None, th: dict[str, Any]
) -> bool:
    """The model's update alone (no data, no environment: RL Games' rl_update_time, RLlib's
    learn_time_ms) slowed at the finding's onset by a material share of the step's own
    slowdown: the machine slowed (other processes' load), not the run's input pipeline, which
    leaves the update's time level."""
    if update is None or f.step is None:
        return False
    if _is_clock(update):
        update = _per_step(update)  # a time summed since the start: its time per point

    # (around the onset: load comes and goes, a slow stretch may end before the run does)
    n = int(th.get("persist", 16))

    def factor(x: Series, rising: bool) -> float:
        v = np.isfinite(x.values) & (x.values > 0)
        before = x.values[v & (x.steps < f.step)][-n:]
        after = x.values[v & (x.steps >= f.step)][:n]
        if min(len(before), len(after)) < th.get("machine_points", 4):
            return np.nan
        ratio = _median(after) / _median(before)
        return ratio if rising else 1.0 / ratio

    slowed, update_slowed = factor(s, higher_is_worse), factor(update, True)
    return bool(
        slowed > 1
        and update_slowed >= th.get("machine_min", 1.3)
        and update_slowed - 1 >= th.get("machine_share", 0.5) * (slowed - 1)
    )


def _growing_time(
    t: Series,
    th: dict[str, Any],
    *,
    step_time: Series | None = None,
    shown: str | None = None,
) -> Finding | None:
    """A time per unit (a step's, an epoch's, a data wait's) that grew through the whole run:
    within each half of its points (the second quarter's median ≥ ``grow_step`` × the
    first's, the fourth's ≥ ``grow_step`` × the third's, the third not below the second's by
    that much), the last quarter ``grow_ratio`` × the first or more, costing
    ``stretch_cost`` of the run's time.  A cost that grows with the run (a log or file
    rewritten whole at every step, a list scanned in full) does that; load from other
    processes comes and goes (a step up grows across the halves, not within them), and a
    curriculum's growing work levels off when it ends.  A data wait (``step_time`` given)
    must also end at ``data_share`` × the step's own time (its last quarter) or more to be
    a cost at all."""
    fin = np.isfinite(t.values) & (t.values > 0)
    x, steps = t.values[fin], t.steps[fin]
    if len(x) < th.get("grow_points", 8):
        return None
    q = [_median(c) for c in np.array_split(x, 4)]
    step = th.get("grow_step", 1.1)
    if not (q[1] >= step * q[0] and q[3] >= step * q[2] and q[2] * step >= q[1]):
        return None  # a ramp grows within each half (a step up from load grows only across)
    if q[3] < th.get("grow_ratio", 2.5) * q[0]:
        return None
    if step_time is not None:
        own = step_time.values[np.isfinite(step_time.values)]
        if len(own) >= 4 and q[3] < th.get("data_share", 0.5) * _median(np.array_split(own, 4)[-1]):
            return None
    cost = float(np.sum(np.maximum(x - q[0], 0.0)) / np.sum(x))
    if cost < th.get("stretch_cost", 0.25):
        return None
    j = int(np.argmax(x >= q[0] / th.get("drop", 0.6)))
    return Finding(
        kind="throughput_drop",
        metric=t.name,
        step=int(steps[j]),
        severity=float(min(1.0, 1 - q[0] / q[3])),
        evidence=f"{shown or t.name} grew through the run, quarter by quarter: {', '.join(_fmt(v) for v in q)} (medians; {q[3] / q[0]:.1f}× at the end, {100 * cost:.0f}% of the run's time lost): a cost that grows with every step",
        context=("growing",),
    )


def _fell_deep(tp: Series, th: dict[str, Any]) -> Finding | None:
    """A rate (samples, tokens per second) whose second half of at least ``grow_points``
    points runs, every point of it, at ``drop`` × its first points' median or less, and at
    ``fall_deep`` × it as a median: a reader that slows from its first points on leaves no
    level for the drop rules to measure from.  Load from other processes on the machine
    halves a rate (two jobs on two cores), it does not quarter it."""
    fin = np.isfinite(tp.values) & (tp.values > 0)
    x, steps = tp.values[fin], tp.steps[fin]
    if len(x) < th.get("grow_points", 8):
        return None
    head, late = _median(x[:3]), x[len(x) // 2 :]
    bar = th.get("drop", 0.6) * head
    if not (np.max(late) <= bar and _median(late) <= th.get("fall_deep", 0.25) * head):
        return None
    above = np.flatnonzero(x > bar)
    j = int(above[-1]) + 1 if len(above) else 0  # from here to the end: all slow
    return Finding(
        kind="throughput_drop",
        metric=tp.name,
        step=int(steps[j]),
        severity=float(min(1.0, 1 - _median(late) / head)),
        evidence=f"{tp.name} fell from {_fmt(head)} (its first points' median) to {_fmt(_median(late))} over the second half of the run ({head / _median(late):.1f}× slower), every point there below {_fmt(bar)}: slower from the start on, not a busy machine's halving",
        context=("growing",),
    )


def _rate_clock(tp: Series, th: dict[str, Any]) -> Series | None:
    """The clock implied by a rate since the start, or None where ``tp`` is no such rate.
    fastText's words/sec/thread and SB3's time/fps are the count so far over the time so far,
    logged at step = that count, so step / rate is the elapsed time: it rises at every one of
    ``rate_clock_points`` points or more, and agrees with the points' timestamps within
    ``rate_clock_agree``×.  A rate of the moment with its ordinary noise
    implies no such clock (step / rate steps back wherever the rate ticks up by more than
    one step's share of the steps so far)."""
    ok = np.isfinite(tp.values) & (tp.values > 0) & (tp.steps > 0)
    if int(ok.sum()) < th.get("rate_clock_points", 16):
        return None
    steps, ts = tp.steps[ok], tp.timestamps[ok]
    elapsed = steps / tp.values[ok]
    if not np.all(np.diff(elapsed) > 0):
        return None
    # and the points' own timestamps tell the same time (a rate of the moment that only falls,
    # a curriculum's, implies a rising "clock" too, but not the seconds the run took)
    wall = (float(ts[-1]) - float(ts[0])) / 1000.0
    agree = th.get("rate_clock_agree", 1.5)
    if not (ts[0] > 0 and wall > 0 and 1 / agree <= (elapsed[-1] - elapsed[0]) / wall <= agree):
        return None
    return Series(f"{tp.name} (a rate since the start)", steps, elapsed, tp.timestamps[ok])


def _per_step(clock: Series, start: Series | None = None) -> Series:
    """A clock's time per step between consecutive points (finite points only), or, with a
    start stamp at the very same steps, the time from each start to its end."""
    if start is not None and np.array_equal(start.steps, clock.steps):
        dur = clock.values - start.values
        if np.all(dur[np.isfinite(dur)] >= 0):
            return Series(f"{clock.name} - {start.name}", clock.steps, dur, clock.timestamps)
    ok = np.isfinite(clock.values)
    steps, values, ts = clock.steps[ok], clock.values[ok], clock.timestamps[ok]
    dt = np.diff(values) / np.maximum(np.diff(steps), 1)
    return Series(f"time per step from {clock.name}", steps[1:], dt, ts[1:])


def _is_clock(s: Series) -> bool:
    """A series that rises at (nearly) every point: a clock or a counter, not a step's time.
    A time per unit that a cost grows at every step (a file rewritten whole each batch) rises
    at every point too; where the points carry wall-clock stamps, the two part: a clock's
    rises keep pace with the time between its points, a time per unit its values do."""
    fin = np.isfinite(s.values)
    x = s.values[fin]
    d = np.diff(x)
    if not (len(d) >= 8 and float(np.mean(d > 0)) >= 0.95):
        return False
    gap = np.diff(s.timestamps[fin].astype(float))
    ok = gap > 0
    if int(ok.sum()) < 8:
        return True  # no stamps to tell them apart by
    return _relative_spread(d[ok] / gap[ok]) <= _relative_spread(x[1:][ok] / gap[ok])


def _relative_spread(r: np.ndarray) -> float:
    """A ratio's robust spread over its median (inf where the median is not positive)."""
    m = _median(r)
    return _mad(r) / m if m > 0 else np.inf


# ------------------------------------------------------------------------- status & log

_TRACEBACK = re.compile(r"Traceback \(most recent call last\)")
_ERROR_LINE = re.compile(
    r"^(?:[\w.]+\.)?([A-Z]\w*(?:Error|Exception|Interrupt))(?::\s*(.*))?$", re.M
)
# an exception line named otherwise: a dotted name (zipfile.BadZipFile) or a name and message
_RAISED_LINE = re.compile(r"^(?:(?:[a-z_]\w*\.)+[A-Z]\w*(?::\s.*)?|[A-Z]\w*:\s.*)$", re.M)


def last_error_line(log_text: str) -> str | None:
    """The exception line of the last traceback in the log (``None`` if there is none)."""
    tb = list(_TRACEBACK.finditer(log_text))
    if not tb:
        return None
    tail = log_text[tb[-1].end() :]
    m = list(_ERROR_LINE.finditer(tail))
    if m:
        return m[-1].group(0).strip()[:200]
    # An exception named otherwise (zipfile.BadZipFile): the traceback's first line back at
    # the margin after its indented frames.
    m2 = _RAISED_LINE.search(tail)
    return m2.group(0).strip()[:200] if m2 else "Traceback (exception line not found)"


def crash(
    status: str, log_text: str, last_step: int | None, th: dict[str, Any], points: int = 0
) -> Finding | None:
    """A failed run (or an exception in the log of one that did not finish).  ``points``: how
    many points its densest metric logged; from ``trained_points`` on, the context says
    ``after_training`` (the code ran many steps before something in the data stopped it)."""
    failed = status in th.get("statuses", ["FAILED"])
    err = last_error_line(log_text)
    if not failed and not (err and status != "FINISHED"):
        return None
    why = err or "no traceback in the log"
    trained = points >= th.get("trained_points", np.inf)
    return Finding(
        kind="crash",
        metric=None,
        step=last_step,
        severity=1.0,
        evidence=f"run status {status} after step {last_step}: {why}",
        context=("after_training",) if trained else (),
    )


def stopped_on_nonfinite(
    crash_finding: Finding, log_text: str, th: dict[str, Any]
) -> Finding | None:
    """A run its framework stopped because the loss went non-finite (Detectron2's
    "FloatingPointError: Loss became infinite or NaN", autograd's "returned nan values"): the
    NaN happened though no NaN was logged.  After the run had trained (the crash's
    ``after_training``), so is the NaN: it was fine, then non-finite in one go.  Without a
    traceback, the log's last line says it (MAE's main_pretrain.py prints "Loss is nan,
    stopping training" and exits 1)."""
    err = last_error_line(log_text)
    if err is None:
        err = log_text.rstrip().rpartition("\n")[2].strip()[:200] or None
    if not err or not any(re.search(rx, err) for rx in th.get("nonfinite", ())):
        return None
    return Finding(
        kind="nan_inf",
        metric=None,
        step=crash_finding.step,
        severity=1.0,
        evidence=f"the run stopped on a non-finite value after step {crash_finding.step}: {err}",
        context=tuple(c for c in crash_finding.context if c == "after_training"),
    )


def stalled(
    status: str,
    last_ts: int | None,
    cadence_ms: float | None,
    last_step: int | None,
    ref_ms: int,
    th: dict[str, Any],
) -> Finding | None:
    """No new point for far longer than the run's own cadence: ``ref_ms`` is now for a RUNNING
    run, its end time for one that was stopped (a hang that was later killed)."""
    if last_ts is None or status == "FAILED":
        return None
    gap_s = (ref_ms - last_ts) / 1000.0
    allowed = max(th.get("min_seconds", 60.0), th.get("factor", 20.0) * (cadence_ms or 0) / 1000.0)
    if gap_s <= allowed:
        return None
    return Finding(
        kind="stalled",
        metric=None,
        step=last_step,
        severity=float(min(1.0, gap_s / (4 * allowed))),
        evidence=f"no metric point for {gap_s:.0f}s after step {last_step} (usual interval {(cadence_ms or 0) / 1000:.2g}s, allowed {allowed:.0f}s); status {status}",
    )


# ------------------------------------------------------------------------- small utils


def _finite_prefix(x: np.ndarray) -> np.ndarray:
    fin = np.isfinite(x)
    return x if fin.all() else x[: int(np.argmin(fin))]


def _value_at(s: Series, step: int) -> float | None:
    """Median of the series' finite values within a few points of ``step``."""
    i = int(np.searchsorted(s.steps, step))
    lo, hi = max(0, i - 5), min(len(s), i + 6)
    seg = s.values[lo:hi]
    seg = seg[np.isfinite(seg)]
    return float(np.median(seg)) if len(seg) else None
