"""Metric series as the detectors see them: one value per step, and each metric's role.

``normalize`` turns a history *as logged* into sorted unique steps: when a run restarts from
a checkpoint and logs old steps again, the last write of a step wins.  ``resolve_roles`` maps
logged names to roles (``train_loss``, ``grad_norm``, …) through the scaffold's alias map.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from scaffold.loader import MetricAliases
from workbench.errors import BadInputError


@dataclass(frozen=True)
class Series:
    name: str
    steps: np.ndarray  # int64, strictly increasing
    values: np.ndarray  # float64 (NaN/inf kept)
    timestamps: np.ndarray  # int64 ms (zeros when unknown)

    def __len__(self) -> int:
        return len(self.steps)


def _as_arrays(name: str, h: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Accept a tracking ``History``, a (steps, values[, timestamps]) tuple, or a dict."""
    if hasattr(h, "steps") and hasattr(h, "values"):
        steps, values, ts = h.steps, h.values, getattr(h, "timestamps", None)
    elif isinstance(h, Mapping):
        steps, values, ts = h.get("steps"), h.get("values"), h.get("timestamps")
    else:
        steps, values, *rest = h
        ts = rest[0] if rest else None
    try:
        values = np.asarray(values, dtype=np.float64)
        raw_steps = np.asarray(steps)
        steps_f = raw_steps.astype(np.float64)
    except (TypeError, ValueError) as exc:
        raise BadInputError(f"metric {name!r}: steps and values must be numbers") from exc
    if steps_f.shape != values.shape or values.ndim != 1:
        raise BadInputError(f"metric {name!r}: steps and values differ in length")
    if len(steps_f) and (not np.all(np.isfinite(steps_f)) or np.any(steps_f != np.round(steps_f))):
        raise BadInputError(f"metric {name!r}: steps must be whole numbers")
    ts_arr = (
        np.zeros(len(values), np.int64)
        if ts is None
        else np.asarray(ts, dtype=np.float64).astype(np.int64)
    )
    return steps_f.astype(np.int64), values, ts_arr


def normalize(name: str, h: Any) -> Series:
    """One value per step, sorted by step; a re-logged step keeps its last write."""
    steps, values, ts = _as_arrays(name, h)
    if len(steps) > 1 and np.any(np.diff(steps) <= 0):
        # Steps went back (a resume) or repeat: keep the last write of each step.
        rev = steps[::-1]
        uniq, first_in_rev = np.unique(rev, return_index=True)
        idx = len(steps) - 1 - first_in_rev
        steps, values, ts = uniq, values[idx], ts[idx]
    return Series(name, steps, values, ts)


# ------------------------------------------------------------------------- roles
_MATCH_CACHE: dict[tuple[int, str], dict[str, int]] = {}


def _matches(aliases: MetricAliases, name: str) -> dict[str, int]:
    key = (id(aliases), name)
    hit = _MATCH_CACHE.get(key)
    if hit is None:
        hit = {}
        for role in aliases.roles:
            idx = aliases.matches(role, name)
            if idx is not None:
                hit[role] = idx
        if len(_MATCH_CACHE) > 100_000:
            _MATCH_CACHE.clear()
        _MATCH_CACHE[key] = hit
    return hit


def resolve_roles(counts: Mapping[str, int], aliases: MetricAliases) -> dict[str, str]:
    """role → logged name.  Among names matching a role the longest history wins, then the
    earlier pattern (so a per-step ``loss`` beats an end-of-run ``train_loss`` summary)."""
    best: dict[str, tuple[int, int, str]] = {}
    for name, n in counts.items():
        for role, idx in _matches(aliases, name).items():
            cand = (-n, idx, name)
            if role not in best or cand < best[role]:
                best[role] = cand
    return {role: c[2] for role, c in best.items()}


def param_name(params: Mapping[str, str], aliases: MetricAliases, role: str) -> str | None:
    """The logged parameter that plays ``role``: the first of the role's names present, a
    ``re:`` pattern matching the whole name (case-insensitive) where a name is listed."""
    for name in aliases.params.get(role, (role,)):
        if name.startswith("re:"):
            rx = re.compile(name[3:], re.IGNORECASE)
            hit = next((k for k in sorted(params) if rx.fullmatch(k)), None)
            if hit is not None:
                return hit
        elif name in params:
            return name
    return None


def param_value(params: Mapping[str, str], aliases: MetricAliases, role: str) -> str | None:
    """The value of the parameter that plays ``role`` (None when none is logged), or of a
    derived role (``DERIVED``: ``compute_precision``, ``adaptive_lr``)."""
    if role in DERIVED:
        return DERIVED[role](params, aliases)
    name = param_name(params, aliases, role)
    return None if name is None else params[name]


# How the precision role's values read (Lightning's "16-mixed", HF's "fp16", Keras's policy
# "mixed_float16", JAX's "bfloat16", PyTorch's "torch.float32", ...).
_HALF = re.compile(r"(?i)(?!.*int\d).*(16|half).*")  # (uint16 is a storage type, no precision)
_FULL = re.compile(r"(?i).*(32|64|full|double|single).*|no|none|false")


def compute_precision(params: Mapping[str, str], aliases: MetricAliases) -> str | None:
    """``half`` when the run computes in 16 bits (a half precision value, or an fp16/bf16
    switch on) or holds its data or weights in them (any ``stored_dtype`` param half: a value
    above 65,504 overflows there whatever the compute's precision), ``full`` when what it
    logged says it does not, None when it logged neither."""
    values = [param_value(params, aliases, r) for r in ("precision", "fp16", "bf16")]
    precision, switches = values[0], [v for v in values[1:] if v is not None]
    if (
        (precision is not None and _HALF.fullmatch(precision.strip()))
        or any(not is_falsy(v) for v in switches)
        or any(_HALF.fullmatch(params[k].strip()) for k in _stored_dtypes(params, aliases))
    ):
        return "half"
    if (precision is not None and _FULL.fullmatch(precision.strip())) or switches:
        return "full"
    return None


def _stored_dtypes(params: Mapping[str, str], aliases: MetricAliases) -> list[str]:
    """Every logged parameter that names a storage dtype (``stored_dtype`` patterns)."""
    out = []
    for name in aliases.params.get("stored_dtype", ()):
        rx = re.compile(name[3:] if name.startswith("re:") else re.escape(name), re.IGNORECASE)
        out += [k for k in sorted(params) if rx.fullmatch(k) and k not in out]
    return out


def as_float(text: str | None) -> float | None:
    if text is None:
        return None
    try:
        return float(text)
    except (TypeError, ValueError):
        return None


def is_falsy(text: str | None) -> bool:
    """A logged param meaning "off": missing, None/null, false, 0, empty."""
    if text is None:
        return True
    t = str(text).strip().lower()
    # (o0: Apex's and Paddle's mixed-precision level zero, fp32 throughout)
    if t in ("", "none", "null", "false", "off", "no", "o0"):
        return True
    f = as_float(t)
    return f is not None and f == 0.0


def stepped_params(
    params: Mapping[str, str], lr: Series | None, aliases: MetricAliases, *, scale: float = 0.1
) -> Mapping[str, str]:
    """``params`` as the logged rate shows them (detection and verdict both read them so): the
    optimizer its name gives where none is logged (``_optimizer_named_by_lr``), and the
    configured learning rate replaced by the peak of the logged one where that peak stayed
    below ``scale`` × it: the configured number is then a multiplier of a schedule (OpenNMT's
    noam ``learning_rate`` 2 steps at 0.006), not the step the optimizer took, and judging the
    run by it calls a sane rate far too high."""
    params = _optimizer_named_by_lr(params, lr, aliases)
    name = param_name(params, aliases, "lr")
    conf = as_float(params.get(name)) if name else None
    if lr is None or conf is None or not conf > 0:
        return params
    fin = lr.values[np.isfinite(lr.values)]
    if not len(fin) or not 0 < float(np.max(fin)) < scale * conf:
        return params
    return {**params, name: repr(float(np.max(fin)))}  # type: ignore[dict-item]


# Lightning's LearningRateMonitor names its metric after the optimizer's class (lr-AdamW, lr-SGD)
_LR_OF_OPTIMIZER = re.compile(r"(?i)(?:.*[/_.-])?lr-(?P<opt>[a-z][a-z0-9]*)(?:[/_.-].*)?")


def _optimizer_named_by_lr(
    params: Mapping[str, str], lr: Series | None, aliases: MetricAliases
) -> Mapping[str, str]:
    """``params`` with the optimizer the lr metric's name gives (Lightning's ``lr-AdamW``),
    where no optimizer is logged: what an adaptive rate is judged by."""
    m = _LR_OF_OPTIMIZER.fullmatch(lr.name) if lr is not None else None
    if m is None or param_name(params, aliases, "optimizer") is not None:
        return params
    return {**params, "optimizer": m.group("opt")}


# Thresholds that an infinite value turns off: ESPnet's `--grad_clip inf` clips nothing.
_INFINITE_MEANS_OFF = frozenset({"grad_clip"})


def setting_off(role: str, text: str | None) -> bool:
    """A logged setting of ``role`` meaning "off": falsy, or a threshold set to infinity."""
    if is_falsy(text):
        return True
    f = as_float(text)
    return role in _INFINITE_MEANS_OFF and f is not None and math.isinf(f)


# Optimizers that scale each weight's step to about the learning rate itself (so their working
# range, 1e-5 to 1e-2, does not depend on the gradients' scale as SGD's does).
_ADAPTIVE = re.compile(
    r"(?i).*(adam|adagrad|adadelta|rmsprop|adafactor|lamb|lion|novograd|adabelief).*"
)


def adaptive_lr(params: Mapping[str, str], aliases: MetricAliases) -> str | None:
    """The learning rate when the run's optimizer is an adaptive one (Adam and kin), else None:
    named so, or not named and the run logged Adam's second-moment decay (``adam_beta2``)."""
    opt = param_value(params, aliases, "optimizer")
    if opt:
        adaptive = _ADAPTIVE.fullmatch(opt) is not None
    else:
        adaptive = param_name(params, aliases, "adam_beta2") is not None
    return param_value(params, aliases, "lr") if adaptive else None


DERIVED = {"compute_precision": compute_precision, "adaptive_lr": adaptive_lr}
