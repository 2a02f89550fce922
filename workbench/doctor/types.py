"""The doctor's vocabulary: findings, diagnoses and remedies (shared by reports, graph, suites)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

FINDING_KINDS = (
    "nan_inf",
    "divergence",
    "loss_spike",
    "plateau",
    "exploding_gradients",
    "vanishing_gradients",
    "overfitting",
    "expert_collapse",
    "throughput_drop",
    "crash",
    "stalled",
)
CAUSES = (
    "lr_too_high",
    "lr_too_low",
    "missing_grad_clip",
    "fp_overflow",
    "bad_data",
    "overfit_capacity",
    "router_imbalance",
    "oom",
    "code_error",
    "hung_process",
    "slow_io",
    "unknown",
)
HEALTHY = "healthy"

FindingKind = Literal[
    "nan_inf",
    "divergence",
    "loss_spike",
    "plateau",
    "exploding_gradients",
    "vanishing_gradients",
    "overfitting",
    "expert_collapse",
    "throughput_drop",
    "crash",
    "stalled",
]
Cause = Literal[
    "lr_too_high",
    "lr_too_low",
    "missing_grad_clip",
    "fp_overflow",
    "bad_data",
    "overfit_capacity",
    "router_imbalance",
    "oom",
    "code_error",
    "hung_process",
    "slow_io",
    "unknown",
]


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Finding(_Frozen):
    kind: FindingKind
    metric: str | None  # the metric name as logged (None for status/log-based findings)
    step: int | None  # onset step
    severity: float = Field(ge=0.0, le=1.0)
    evidence: str  # one line, with numbers


class Diagnosis(_Frozen):
    cause: Cause
    confidence: float = Field(ge=0.0, le=1.0)
    summary: str  # one line
    explanation: str = ""  # plain language, a few sentences


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
    status: Literal["healthy", "failing"]
    findings: tuple[Finding, ...]
    diagnosis: Diagnosis | None
    remedies: tuple[Remedy, ...]
