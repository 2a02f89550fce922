"""The fault harness: world conditions a benchmark switches on from *outside* the repo.

A training repo's own defects (an LR too high, clipping off, fp16 with an overflowing loss
scale, a tiny train split, a router bias rate of 0) are plain settings of its config. What no
config of a real repo holds — a process that blocks, a device-memory budget, a slow reader,
outlier or corrupted batches in the data, a skewed router init, a planted code bug — is switched
on by the harness through the environment: ``WORKBENCH_HARNESS_FAULTS`` (a JSON list of fault
entries) or ``WORKBENCH_HARNESS_FAULTS_FILE`` (a path to such a JSON/YAML file), never through a
file the agent may edit. The one patch guard (``workbench.supervisor.patches.guard``) refuses
any patch that mentions these names or edits this module.

Nothing here draws a curve. A fault changes what the training loop really does — the
learning rate it applies, the batches it reads, the activations it computes, the memory a
step needs, the code path it runs — and the metrics show whatever follows from that.

The loop asks one ``FaultPlan`` at a few hook points; with no faults every hook is a no-op.
"""

from __future__ import annotations

import json
import os
import queue
import time
from pathlib import Path
from typing import Annotated, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

HARNESS_ENV = "WORKBENCH_HARNESS_FAULTS"
HARNESS_FILE_ENV = "WORKBENCH_HARNESS_FAULTS_FILE"


class _Fault(BaseModel):
    model_config = ConfigDict(extra="forbid")
    start_step: int = Field(0, ge=0)


class LrTooHigh(_Fault):
    """The applied learning rate is ``factor`` times the schedule's from ``start_step``."""

    kind: Literal["lr_too_high"] = "lr_too_high"
    factor: float = Field(30.0, gt=1)


class LrTooLow(_Fault):
    kind: Literal["lr_too_low"] = "lr_too_low"
    factor: float = Field(0.01, gt=0, lt=1)


class FpOverflow(_Fault):
    """An activation scale that compounds by ``growth`` each step until floats overflow."""

    kind: Literal["fp_overflow"] = "fp_overflow"
    growth: float = Field(8.0, gt=1)


class MissingGradClip(_Fault):
    """Every ``every``-th batch is an outlier whose gradient is ``scale`` times larger.

    Harmless with gradient clipping; without it one such batch wrecks AdamW's moments.
    """

    kind: Literal["missing_grad_clip"] = "missing_grad_clip"
    every: int = Field(25, ge=1)
    scale: float = Field(1e3, gt=1)


class BadData(_Fault):
    """From ``start_step`` a ``fraction`` of each batch is corrupted (garbage tokens/pixels)."""

    kind: Literal["bad_data"] = "bad_data"
    fraction: float = Field(0.5, gt=0, le=1)


class OverfitCapacity(_Fault):
    """The training set shrinks to ``train_items`` (tokens / examples): long runs overfit."""

    kind: Literal["overfit_capacity"] = "overfit_capacity"
    train_items: int = Field(512, ge=1)


class RouterImbalance(_Fault):
    """Skewed router init: ``experts`` experts get a head start of ``skew`` in selection."""

    kind: Literal["router_imbalance"] = "router_imbalance"
    skew: float = Field(1.0, gt=0)
    experts: int = Field(2, ge=1)


class Oom(_Fault):
    """A device-memory budget of ``budget_mb``; from ``start_step`` batches grow ×``growth``.

    The step's real activation memory (bytes saved for backward) is measured every step;
    exceeding the budget raises PyTorch's ``OutOfMemoryError``.
    """

    kind: Literal["oom"] = "oom"
    budget_mb: float = Field(64.0, gt=0)
    growth: int = Field(4, ge=1)


class CodeError(_Fault):
    """A bug in the training code from ``start_step``.

    ``bug: reshape`` raises (a batch reshaped to a hard-coded wrong shape): the run crashes.
    ``bug: zero_grad`` is silent: a ``zero_grad()`` placed between ``backward()`` and the
    optimizer step throws every gradient away, so the logged gradient norm is 0 and the
    weights stop moving while the loss is still high (vanishing gradients).
    """

    kind: Literal["code_error"] = "code_error"
    bug: Literal["reshape", "zero_grad"] = "reshape"


class HungProcess(_Fault):
    """At ``start_step`` a data read blocks forever (a producer that never delivers)."""

    kind: Literal["hung_process"] = "hung_process"


class SlowIO(_Fault):
    """From ``start_step`` every batch read takes ``delay_s`` longer (cold, remote storage)."""

    kind: Literal["slow_io"] = "slow_io"
    delay_s: float = Field(0.05, gt=0)


Fault = (
    LrTooHigh
    | LrTooLow
    | FpOverflow
    | MissingGradClip
    | BadData
    | OverfitCapacity
    | RouterImbalance
    | Oom
    | CodeError
    | HungProcess
    | SlowIO
)
FAULT_KINDS = tuple(f.model_fields["kind"].default for f in Fault.__args__)  # type: ignore[attr-defined]
_FAULTS = TypeAdapter(list[Annotated[Fault, Field(discriminator="kind")]])


class HarnessError(ValueError):
    """The harness's fault switch is set but invalid (one line)."""


def parse_faults(data) -> list:
    try:
        return _FAULTS.validate_python(data or [])
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise HarnessError(f"invalid harness faults: {where}: {first['msg']}") from None


def harness_faults(environ=None) -> list:
    """The faults the harness switched on for this process (none for a user's run)."""
    env = os.environ if environ is None else environ
    raw = env.get(HARNESS_ENV)
    if not raw and env.get(HARNESS_FILE_ENV):
        path = Path(env[HARNESS_FILE_ENV])
        try:
            import yaml

            raw_data = yaml.safe_load(path.read_text())
        except (OSError, ValueError) as err:
            raise HarnessError(f"harness faults file {path}: {err}") from None
        return parse_faults(raw_data)
    if not raw:
        return []
    try:
        return parse_faults(json.loads(raw))
    except json.JSONDecodeError as err:
        raise HarnessError(f"{HARNESS_ENV} is not JSON: {err}") from None


class FaultPlan:
    """The faults of one run, asked by the training loop at its hook points."""

    def __init__(self, faults: list[_Fault] | None = None) -> None:
        self.faults = list(faults or [])
        self._hung_once = False

    def _active(self, cls: type[_Fault], step: int) -> list:
        return [f for f in self.faults if isinstance(f, cls) and step >= f.start_step]

    def first(self, cls: type[_Fault]):
        return next((f for f in self.faults if isinstance(f, cls)), None)

    # ---------------------------------------------------------------- optimisation
    def lr_multiplier(self, step: int) -> float:
        mult = 1.0
        for f in self._active(LrTooHigh, step) + self._active(LrTooLow, step):
            mult *= f.factor
        return mult

    def activation_scale(self, step: int) -> float:
        scale = 1.0
        for f in self._active(FpOverflow, step):
            scale *= f.growth ** (step - f.start_step + 1)
        return scale

    def gradient_outlier_scale(self, step: int) -> float:
        """The loss multiplier of an outlier batch (1.0 for an ordinary batch)."""
        scale = 1.0
        for f in self._active(MissingGradClip, step):
            if (step - f.start_step) % f.every == 0:
                scale *= f.scale
        return scale

    # ---------------------------------------------------------------- data
    def corrupt_fraction(self, step: int) -> float:
        return max((f.fraction for f in self._active(BadData, step)), default=0.0)

    def train_items(self) -> int | None:
        f = self.first(OverfitCapacity)
        return f.train_items if f else None

    def batch_growth(self, step: int) -> int:
        return max((f.growth for f in self._active(Oom, step)), default=1)

    def before_read(self, step: int) -> None:
        """Runs inside a batch read: slow storage sleeps, a dead producer blocks forever."""
        for f in self._active(SlowIO, step):
            time.sleep(f.delay_s)
        if self._active(HungProcess, step) and not self._hung_once:
            self._hung_once = True  # one stuck read; a retry (read timeout) gets through
            queue.Queue().get()  # nobody will ever put: blocks, like a deadlocked worker

    # ---------------------------------------------------------------- memory / code
    def memory_budget_bytes(self) -> int | None:
        f = self.first(Oom)
        return int(f.budget_mb * 2**20) if f else None

    def maybe_code_error(self, step: int, batch: torch.Tensor) -> None:
        if any(f.bug == "reshape" for f in self._active(CodeError, step)):
            # A real bug, really executed: reshaping a batch to a hard-coded wrong shape.
            batch.view(batch.shape[0] + 1, -1)

    def drops_gradients(self, step: int) -> bool:
        """True where the loop runs the misplaced ``zero_grad()`` after ``backward()``."""
        return any(f.bug == "zero_grad" for f in self._active(CodeError, step))


class MemoryMeter:
    """Counts the bytes autograd saves for backward during a forward (activation memory)."""

    def __init__(self, budget_bytes: int | None, base_bytes: int = 0) -> None:
        self.budget = budget_bytes
        self.base = base_bytes  # parameters + gradients + optimizer state
        self.saved = 0
        self._seen: set[int] = set()

    def _pack(self, t: torch.Tensor):
        key = id(t.untyped_storage()) if t.layout == torch.strided else id(t)
        if key not in self._seen:
            self._seen.add(key)
            self.saved += t.numel() * t.element_size()
            if self.budget is not None and self.base + self.saved > self.budget:
                raise torch.OutOfMemoryError(
                    f"out of memory: tried to allocate {t.numel() * t.element_size() / 2**20:.2f} MiB "
                    f"({(self.base + self.saved) / 2**20:.1f} MiB in use, "
                    f"device memory budget {self.budget / 2**20:.1f} MiB)"
                )
        return t

    def hooks(self):
        self.saved = 0
        self._seen.clear()
        return torch.autograd.graph.saved_tensors_hooks(self._pack, lambda t: t)
