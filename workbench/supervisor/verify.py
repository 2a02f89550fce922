"""Verification: did the patched run really fix the original one? The answer is the reward.

A fix passes when the patched run
1. finished, and ran past the original run's failure step;
2. passes the doctor: none of the original finding kinds (nor NaN/divergence/crash/stall) recur;
3. reaches at least the original run's best eval metric (lower is better; a small relative
   ``tolerance`` absorbs run-to-run noise), or the given target when there is one.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

ALWAYS_BLOCKING = ("nan_inf", "divergence", "crash", "stalled")


def run_summary(tracking, run_id: str, scaffold=None) -> dict:
    """Status, last step and best eval metric of a run (metric names resolved via the scaffold)."""
    from scaffold.loader import load_scaffold
    from workbench.doctor.series import normalize, resolve_roles

    scaffold = scaffold or load_scaffold(None)
    info = tracking.run(run_id)
    hists = tracking.histories(run_id)
    roles = resolve_roles({k: len(h) for k, h in hists.items()}, scaffold.metrics)
    name = roles.get("eval_loss") or roles.get("train_loss")
    best = last = None
    if name:
        series = normalize(name, hists[name])
        finite = [float(v) for v in series.values if math.isfinite(v)]
        best = min(finite) if finite else None
    train = roles.get("train_loss") or name
    if train and len(hists[train]):
        last = int(max(hists[train].steps))
    return {
        "run_id": run_id,
        "status": info.status,
        "eval_metric": name,
        "best_eval": best,
        "last_step": last,
    }


@dataclass
class Outcome:
    passed: bool
    reward: float
    reasons: list[str]
    before: dict
    after: dict
    new_findings: list[dict]

    def to_json(self) -> dict:
        return asdict(self)


def judge(
    before: dict,
    after: dict,
    original_findings: list[dict],
    new_findings: list[dict],
    *,
    target: float | None = None,
    tolerance: float = 0.01,
) -> Outcome:
    """Pure: compare summaries and findings of the original and the patched run."""
    reasons: list[str] = []
    if after["status"] != "FINISHED":
        reasons.append(f"patched run ended {after['status']}")
    steps = [f["step"] for f in original_findings if f.get("step") is not None]
    failure_step = min(steps) if steps else None
    if failure_step is not None and (
        after["last_step"] is None or after["last_step"] <= failure_step
    ):
        reasons.append(f"patched run stopped at step {after['last_step']}, before {failure_step}")
    kinds = {f["kind"] for f in original_findings} | set(ALWAYS_BLOCKING)
    recurring = sorted({f["kind"] for f in new_findings if f["kind"] in kinds})
    if recurring:
        reasons.append("doctor still finds " + ", ".join(recurring))
    goal = target if target is not None else before.get("best_eval")
    got = after.get("best_eval")
    if got is None or not math.isfinite(got):  # a NaN would pass every comparison below
        reasons.append("patched run has no finite eval metric")
    elif goal is not None and math.isfinite(goal) and got > goal + abs(goal) * tolerance:
        reasons.append(f"best eval {got:.4g} does not reach {goal:.4g}")
    passed = not reasons
    return Outcome(
        passed, 1.0 if passed else 0.0, reasons or ["verified"], before, after, new_findings
    )
