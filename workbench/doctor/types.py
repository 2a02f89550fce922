"""The doctor's vocabulary: findings, diagnoses and remedies (shared by reports, graph, suites)."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from scaffold.loader import CAUSES as _PLAYBOOK_CAUSES
from scaffold.loader import FINDING_KINDS

# The taxonomy lives with the scaffold loader (scaffold imports nothing of ours); the doctor adds
# `unknown`, the cause of a failing run that no playbook entry explains.
CAUSES = (*_PLAYBOOK_CAUSES, "unknown")
HEALTHY = "healthy"
# A verdict, not a finding kind: the run logged no metric point at all, so nothing can be judged.
NO_DATA = "no_data"

FindingKind = Literal[FINDING_KINDS]  # type: ignore[valid-type]
Cause = Literal[CAUSES]  # type: ignore[valid-type]


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Finding(_Frozen):
    kind: FindingKind
    metric: str | None  # the metric name as logged (None for status/log-based findings)
    step: int | None  # onset step
    severity: float = Field(ge=0.0, le=1.0)
    evidence: str  # one line, with numbers
    after: tuple[str, ...] = ()  # kinds that were its run-up (absorbed into it), in order
    # What the detector measured of the finding's setting that a cause may read, e.g.
    # `lr_decayed`: the learning rate at the onset was well below its peak before it;
    # `recovered`: the run came back below its level before the onset, at its rate.
    # `fixed_set`: measured on a fixed sample set (a FID), so the model moved, not a batch;
    # `untrained`: far above the untrained model's loss before any baseline: the model moved.
    context: tuple[str, ...] = ()
    # The wall clock (ms) of the onset point, where the run logged one: steps of different
    # metrics may count different things (batches, epochs), the clock orders them all.
    at_ms: int | None = None

    @field_validator("severity", mode="before")
    @classmethod
    def _clip(cls, v: float) -> float:
        """A severity is a soft score of the run's own numbers, clipped to [0, 1]: a loss that
        runs negative (a Gaussian NLL, an ELBO) can take a detector's ratio below 0 or past 1
        without the finding being any less one (NaN: no score, 0.5)."""
        v = float(v)
        return 0.5 if math.isnan(v) else min(1.0, max(0.0, v))


def onset_order(findings: Sequence[Finding]) -> Callable[[Finding], tuple]:
    """The key of when each of ``findings`` happened (equal keys: at the same moment): by the
    wall clock when every metric finding has one (a status finding without one, a crash or a
    stall, comes last), else by step; findings without a step last of all."""
    timed = all(f.at_ms is not None for f in findings if f.metric and f.step is not None)

    def key(f: Finding) -> tuple:
        clock = (f.at_ms if f.at_ms is not None else float("inf")) if timed else 0
        return (f.step is None, clock, f.step or 0)

    return key


class Diagnosis(_Frozen):
    cause: Cause
    confidence: float = Field(ge=0.0, le=1.0)
    summary: str  # one line
    explanation: str = ""  # plain language, a few sentences
    evidence: tuple[str, ...] = ()  # the signals that held, each named (finding, param, log…)


class PatchOp(_Frozen):
    """One edit of the run's config: ``key`` is a dotted path, e.g. ``optimizer.lr``."""

    key: str
    op: Literal["set", "mul", "add", "delete"]
    value: float | int | str | bool | None = None


class Remedy(_Frozen):
    id: str
    description: str
    patch: tuple[PatchOp, ...]


class RunVerdict(_Frozen):
    """What ``workbench diagnose --json`` prints for one run."""

    run_id: str
    status: Literal["healthy", "failing", "no_data"]
    findings: tuple[Finding, ...]
    diagnosis: Diagnosis | None
    remedies: tuple[Remedy, ...]
    note: str = ""  # why a run with metrics is no_data (no metric the doctor reads as a loss)
