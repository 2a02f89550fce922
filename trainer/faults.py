"""The fault harness: world conditions a benchmark switches on from *outside* the repo.

A training repo's own defects are the repo's: settings of its config (an LR too high, clipping
off, fp16 with an overflowing loss scale, a tiny train split, a router bias rate of 0) or its
own code (``trainer.hooks``: a data bug, a skewed init, a misplaced ``zero_grad``). What only a
harness can cause — a process that blocks, a device-memory budget, a slow reader — is switched
on through the environment: ``WORKBENCH_HARNESS_FAULTS`` (a JSON list of fault
entries) or ``WORKBENCH_HARNESS_FAULTS_FILE`` (a path to such a JSON/YAML file), never through a
file the agent may edit. The one patch guard (``workbench.supervisor.patches.guard``) refuses
any patch that mentions these names or edits this module.

Nothing here draws a curve. A fault changes what the training loop really does — how long a
read takes, whether it returns, the memory a step needs — and the metrics show whatever
follows from that.

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


class Oom(_Fault):
    """A device-memory budget of ``budget_mb``; from ``start_step`` batches grow ×``growth``.

    The step's real activation memory (bytes saved for backward) is measured every step;
    exceeding the budget raises PyTorch's ``OutOfMemoryError``.
    """

    kind: Literal["oom"] = "oom"
    budget_mb: float = Field(64.0, gt=0)
    growth: int = Field(4, ge=1)


class HungProcess(_Fault):
    """At ``start_step`` a data read blocks forever (a producer that never delivers)."""

    kind: Literal["hung_process"] = "hung_process"


class SlowIO(_Fault):
    """From ``start_step`` every batch read takes ``delay_s`` longer (cold, remote storage)."""

    kind: Literal["slow_io"] = "slow_io"
    delay_s: float = Field(0.05, gt=0)


Fault = Oom | HungProcess | SlowIO
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

    # ---------------------------------------------------------------- data
    def batch_growth(self, step: int) -> int:
        return max((f.growth for f in self._active(Oom, step)), default=1)

    def before_read(self, step: int) -> None:
        """Runs inside a batch read: slow storage sleeps, a dead producer blocks forever."""
        for f in self._active(SlowIO, step):
            time.sleep(f.delay_s)
        if self._active(HungProcess, step) and not self._hung_once:
            self._hung_once = True  # one stuck read; a retry (read timeout) gets through
            queue.Queue().get()  # nobody will ever put: blocks, like a deadlocked worker

    # ---------------------------------------------------------------- memory
    def memory_budget_bytes(self) -> int | None:
        f = self.first(Oom)
        return int(f.budget_mb * 2**20) if f else None


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
