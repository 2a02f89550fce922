"""The ``rules`` brain's diagnosis: findings + params + log → cause, confidence, remedies.

All knowledge is in ``scaffold/playbook.yaml``: each cause lists weighted signals; the best
scoring cause whose required findings are present wins.  No model, fully deterministic.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from scaffold.loader import CauseSpec, MetricAliases, Playbook, Signal
from workbench.doctor.series import as_float, param_name, param_value, setting_off
from workbench.doctor.types import Diagnosis, Finding, PatchOp, Remedy, onset_order


def _param_holds(
    role: str, op: str, value: Any, params: Mapping[str, str], aliases: MetricAliases | None
) -> bool:
    raw = param_value(params, aliases, role) if aliases is not None else params.get(role)
    if op == "missing":
        return raw is None
    if op == "present":
        return raw is not None
    if op == "falsy":  # logged and off (an unlogged setting proves nothing)
        return raw is not None and setting_off(role, raw)
    if op == "truthy":
        return not setting_off(role, raw)
    if raw is None:
        return False
    if op == "in":
        return str(raw).lower() in [str(v).lower() for v in (value or [])]
    if op in ("eq", "ne"):
        same = str(raw).lower() == str(value).lower() or (
            as_float(raw) is not None and as_float(str(value)) == as_float(raw)
        )
        return same if op == "eq" else not same
    x, v = as_float(raw), as_float(str(value))
    if x is None or v is None:
        return False
    return {"gt": x > v, "ge": x >= v, "lt": x < v, "le": x <= v}[op]


def _in_log(pattern: str, log_text: str) -> bool:
    return bool(log_text) and re.search(pattern, log_text) is not None


def _signal_holds(
    sig: Signal,
    findings: Sequence[Finding],
    params: Mapping[str, str],
    log_text: str,
    status: str | None,
    roles_of: Mapping[str, str],
    aliases: MetricAliases | None,
) -> bool:
    if sig.finding:
        hits = [f for f in findings if f.kind == sig.finding]
        if sig.metric_role:
            hits = [f for f in hits if f.metric and roles_of.get(f.metric) == sig.metric_role]
        if sig.after:
            hits = [f for f in hits if sig.after in f.after]
        if sig.context:
            hits = [f for f in hits if sig.context in f.context]
        if sig.alone:
            hits = [f for f in hits if not f.after]
        if not hits:
            return False
        if sig.first:
            key = onset_order(findings)
            first = min((key(f) for f in findings if f.step is not None), default=None)
            if not any(key(f) == first for f in hits):
                return False
        return not sig.log or _in_log(sig.log, log_text)
    if sig.absent:
        return not any(f.kind == sig.absent or sig.absent in f.after for f in findings)
    if sig.log:
        return _in_log(sig.log, log_text)
    if sig.status:
        return status is not None and status in sig.status
    if sig.param:
        return _param_holds(sig.param, sig.op or "present", sig.value, params, aliases)
    return False


def _describe(
    sig: Signal,
    findings: Sequence[Finding],
    params: Mapping[str, str],
    log_text: str,
    status: str | None,
    aliases: MetricAliases | None,
) -> str:
    """One line naming the evidence a held signal stands for."""
    if sig.finding:
        f = next(
            f
            for f in findings
            if f.kind == sig.finding
            and (not sig.after or sig.after in f.after)
            and (not sig.context or sig.context in f.context)
            and not (sig.alone and f.after)
        )
        run_up = f" after {', '.join(f.after)}" if f.after else ""
        facts = f" ({', '.join(f.context)})" if f.context else ""
        m = re.search(sig.log, log_text) if sig.log else None
        said = f", log: {m.group(0).strip()[:80]!r}" if m else ""
        return f"finding {f.kind}{run_up}{facts} on {f.metric or 'the run'} at step {f.step}{said}"
    if sig.absent:
        return f"no {sig.absent}"
    if sig.log:
        m = re.search(sig.log, log_text)
        return f"log: {m.group(0)[:80]!r}" if m else "log"
    if sig.status:
        return f"status {status}"
    raw = param_value(params, aliases, sig.param or "") if aliases else params.get(sig.param or "")
    name = (param_name(params, aliases, sig.param or "") if aliases else None) or sig.param
    return f"param {sig.param} ({name}={raw}) {sig.op} {sig.value if sig.value is not None else ''}".rstrip()


def score_causes(
    findings: Sequence[Finding],
    params: Mapping[str, str],
    log_text: str,
    playbook: Playbook,
    *,
    aliases: MetricAliases | None = None,
    status: str | None = None,
    roles_of: Mapping[str, str] | None = None,
) -> dict[str, float]:
    """cause → score (only causes whose ``requires`` are met)."""
    kinds = {f.kind for f in findings}
    scores: dict[str, float] = {}
    for cause, spec in playbook.causes.items():
        if spec.requires and not kinds.intersection(spec.requires):
            continue
        scores[cause] = sum(
            s.weight
            for s in spec.signals
            if _signal_holds(s, findings, params, log_text, status, roles_of or {}, aliases)
        )
    return scores


def _remedies(
    spec: CauseSpec, params: Mapping[str, str], aliases: MetricAliases | None
) -> list[Remedy]:
    out = []
    for r in spec.remedies:
        if r.when and not _param_holds(
            r.when.get("param", ""),
            r.when.get("op", "present"),
            r.when.get("value"),
            params,
            aliases,
        ):
            continue
        out.append(
            Remedy(
                id=r.id,
                description=r.description,
                patch=tuple(PatchOp(key=p.key, op=p.op, value=p.value) for p in r.patch),
            )
        )
    return out


def diagnose(
    findings: Sequence[Finding],
    params: Mapping[str, str],
    log_text: str,
    playbook: Playbook,
    *,
    aliases: MetricAliases | None = None,
    status: str | None = None,
    roles_of: Mapping[str, str] | None = None,
) -> tuple[Diagnosis | None, list[Remedy]]:
    """The most likely cause of the findings, with ranked remedies (None for a healthy run)."""
    if not findings:
        return None, []
    scores = score_causes(
        findings, params, log_text, playbook, aliases=aliases, status=status, roles_of=roles_of
    )
    ranked = sorted(scores.items(), key=lambda kv: -kv[1])  # stable: playbook order breaks ties
    lead = sorted(findings, key=lambda f: (f.step is None, f.step or 0))[0]
    if not ranked or ranked[0][1] < playbook.min_score:
        spec = playbook.unknown
        summary = spec.summary if spec else "unknown cause"
        return (
            Diagnosis(
                cause="unknown",
                confidence=0.2,
                summary=f"{summary}; first finding: {lead.kind} at step {lead.step}",
                explanation=(spec.explanation if spec else "") + " " + lead.evidence,
                evidence=(
                    f"finding {lead.kind} on {lead.metric or 'the run'} at step {lead.step}",
                    "no cause scored "
                    + (f"{ranked[0][1]:g} ({ranked[0][0]})" if ranked else "at all")
                    + f" of the {playbook.min_score:g} needed",
                ),
            ),
            _remedies(spec, params, aliases) if spec else [],
        )
    cause, best = ranked[0]
    second = ranked[1][1] if len(ranked) > 1 else 0.0
    spec = playbook.causes[cause]
    confidence = round(min(0.99, best / (best + max(second, 0.0) + 0.5)), 2)
    evidence = "; ".join(f.evidence for f in findings[:3])
    used = tuple(
        f"{_describe(s, findings, params, log_text, status, aliases)} (+{s.weight:g})"
        for s in spec.signals
        if s.weight > 0
        and _signal_holds(s, findings, params, log_text, status, roles_of or {}, aliases)
    )
    return (
        Diagnosis(
            cause=cause,  # type: ignore[arg-type]
            confidence=confidence,
            summary=f"{spec.summary} ({lead.kind} at step {lead.step})",
            explanation=f"{spec.explanation} Evidence: {evidence}",
            evidence=used,
        ),
        _remedies(spec, params, aliases),
    )
