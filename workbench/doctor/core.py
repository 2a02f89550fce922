"""The doctor's entry points: ``detect`` (arrays → findings), ``diagnose`` (findings → cause),
``diagnose_run`` (a run in MLflow → ``RunVerdict``)."""

from __future__ import annotations

import time
from collections.abc import Collection, Mapping
from typing import Any

import numpy as np

from scaffold.loader import MetricAliases, Playbook, Scaffold, load_scaffold
from workbench.doctor import detectors as D
from workbench.doctor import rules
from workbench.doctor.registry import REGISTRY, RunView, precursors
from workbench.doctor.series import Series, normalize, resolve_roles, stepped_params
from workbench.doctor.types import Diagnosis, Finding, Remedy, RunVerdict, onset_order


def _get(run_info: Any, key: str, default: Any = None) -> Any:
    if run_info is None:
        return default
    if isinstance(run_info, Mapping):
        return run_info.get(key, default)
    return getattr(run_info, key, default)


def _scaffold(scaffold: Scaffold | str | None) -> Scaffold:
    return scaffold if isinstance(scaffold, Scaffold) else load_scaffold(scaffold)


def series_of(histories: Mapping[str, Any]) -> dict[str, Series]:
    """Normalise every history (empty ones are dropped)."""
    out = {}
    for name, h in histories.items():
        s = normalize(name, h)
        if len(s):
            out[name] = s
    return out


def detect_metrics(
    series: Mapping[str, Series],
    thresholds: Mapping[str, Mapping[str, Any]],
    aliases: MetricAliases,
    *,
    since: Mapping[str, int] | None = None,
    whole: Collection[tuple[str, str]] = (),
    roles: Mapping[str, str] | None = None,
    final: bool = True,
    params: Mapping[str, str] | None = None,
) -> list[Finding]:
    """Findings from metric histories only (no status, no log).  ``final=False`` for a live
    run: a trend still being confirmed at the end of the series does not count yet.

    Every detector of the registry runs whose roles the run logged.  ``since`` (metric →
    index) is a promise from an incremental caller: no onset of this metric's *prefix-stable*
    detectors (registered ``stable``: ``nan_inf``, ``divergence`` without an eval loss,
    ``loss_spike``, ``exploding_gradients``) lies before that index, because the points there
    were judged already and found nothing.  Those detectors only look from there on; the
    others (whose verdict on old points can change with new ones: an onset confirmed later,
    a warm-up or reference that grows with the run) always see the whole series, so the
    result equals a pass with ``since`` empty.  ``whole``: (kind, metric) pairs judged from
    the start all the same (a finding already there, whose counts and peaks must be those of
    the whole series)."""
    roles = (
        dict(roles)
        if roles is not None
        else resolve_roles({k: len(v) for k, v in series.items()}, aliases)
    )
    by_role = _population_sense({r: series[n] for r, n in roles.items() if n in series})
    by_role, since = _running_total(by_role, since or {})
    params = stepped_params(params or {}, by_role.get("lr"), aliases)
    if aliases.partial_first:
        by_role, since = _drop_partial_first(by_role, since or {}, aliases)
    out: list[Finding] = []
    for d in REGISTRY.values():
        th = dict(thresholds.get(d.kind, {}))
        if not final:
            th["_final"] = False
        view = RunView(
            {r: by_role[r] for r in d.roles(th) if r in by_role},
            params or {},
            aliases,
            since or {},
            whole,
            final,
        )
        if not view.series:
            continue
        found = d.fn(view, th)
        out += found if isinstance(found, list) else [found] if found else []
    return _clocked(out, series)


def _population_sense(by_role: dict[str, Series]) -> dict[str, Series]:
    """An evolution strategy logs its population's mean fitness and its best (evosax's
    log_gen_mean and log_gen_1, EvoTorch's mean_eval and pop_best_eval) in whichever sense its
    problem has: where the best sits below the mean the fitness is minimised, a loss; above
    it, maximised, a return.  Where the run names neither a loss nor a return of its own, the
    mean plays the role its sense gives it; with no best logged the sense is unknown."""
    mean, best = by_role.get("population_mean"), by_role.get("population_best")
    if mean is None or best is None or "train_loss" in by_role or "reward" in by_role:
        return by_role
    m, b = mean.values[np.isfinite(mean.values)], best.values[np.isfinite(best.values)]
    if not len(m) or not len(b) or (mid := float(np.median(m))) == (top := float(np.median(b))):
        return by_role
    return {**by_role, ("train_loss" if top < mid else "reward"): mean}


def _running_total(
    by_role: dict[str, Series], since: Mapping[str, int]
) -> tuple[dict[str, Series], dict[str, int]]:
    """A train loss logged as a running total (gensim's ``get_latest_training_loss``: the sum
    since training began) rises at every point by about its own first value; its increments
    are the loss of each interval, and they are what is judged.  Recognised from the first
    five points (each above the last, the first step up at least half the first value: a
    loss that diverges from its first point climbs by a share of itself) and climbing to the
    end by at least ``0.05`` × that first value (its last quarter's median step); where the
    series breaks that, it is the loss itself after all, judged whole."""
    since = dict(since)
    s = by_role.get("train_loss")
    if s is None or len(s) < 5:
        return by_role, since
    x = s.values
    head = x[:5]
    up = np.diff(head)
    if not (np.isfinite(head).all() and head[0] > 0 and (up > 0).all() and up[0] >= 0.5 * head[0]):
        return by_role, since
    steps_up = np.diff(x, prepend=0.0)
    late = steps_up[-max(1, len(x) // 4) :]
    if not (np.isfinite(x).all() and (steps_up[1:] > 0).all() and np.median(late) >= 0.05 * x[0]):
        # (nor a climb whose steps die away: a KL penalty's share of a loss rising from 0 to
        # where it settles; a running total climbs by a loss's worth to the end)
        since.pop(s.name, None)  # (judged as increments before this point broke the climb)
        return by_role, since
    inc = Series(s.name, s.steps, steps_up, s.timestamps)
    return {**by_role, "train_loss": inc}, since


def _drop_partial_first(
    by_role: dict[str, Series], since: Mapping[str, int], aliases: MetricAliases
) -> tuple[dict[str, Series], dict[str, int]]:
    """Without the first point of the series the alias map names ``partial_first`` (a sum
    since the last log, whose first log covers one step: spaCy's ``loss_<component>``); an
    incremental caller's ``since`` index moves with it."""
    since = dict(since)
    out = {}
    for role, s in by_role.items():
        if len(s) > 1 and aliases.first_is_partial(s.name):
            s = Series(s.name, s.steps[1:], s.values[1:], s.timestamps[1:])
            if s.name in since:
                since[s.name] = max(0, since[s.name] - 1)
        out[role] = s
    return out, since


def cadence_series(series: Mapping[str, Series]) -> Series | None:
    """The series whose logging interval is the run's cadence: the densest of its own metrics
    (MLflow's ``system/…`` sampler thread keeps ticking while a training loop hangs)."""
    own = {k: v for k, v in series.items() if not k.startswith("system/")}
    series = own or series
    return max(series.values(), key=len) if series else None


def median_of_sorted(d: np.ndarray) -> float:
    """``np.median`` of an already sorted array (the same float, without the partition)."""
    m = len(d)
    return float(d[m // 2]) if m % 2 else float(np.mean(d[m // 2 - 1 : m // 2 + 1]))


def _last_point(
    series: Mapping[str, Series], cadence: float | None | bool = False
) -> tuple[int | None, int | None, float | None]:
    """(last step, last timestamp, median logging interval in ms) over all metrics.
    ``cadence``: the interval when the caller already knows it."""
    own = {k: v for k, v in series.items() if not k.startswith("system/")}
    series = own or series
    if not series:
        return None, None, None
    last_step = max(int(s.steps[-1]) for s in series.values())
    last_ts = max(int(s.timestamps.max()) for s in series.values())
    if cadence is False:
        ts = np.sort(cadence_series(series).timestamps)  # type: ignore[union-attr]
        cadence = float(np.median(np.diff(ts))) if len(ts) > 2 else None
    return last_step, (last_ts or None), cadence  # type: ignore[return-value]


def detect_status(
    series: Mapping[str, Series],
    run_info: Any,
    log_text: str | None,
    thresholds: Mapping[str, Mapping[str, Any]],
    now_ms: int | None = None,
    last: tuple[int | None, int | None, float | None] | None = None,
) -> list[Finding]:
    """``crash`` (status + log) and ``stalled`` (silence longer than the run's cadence).
    ``last``: ``_last_point(series)`` when the caller keeps it up to date itself."""
    status = _get(run_info, "status", "FINISHED") or "FINISHED"
    last_step, last_ts, cadence = last if last is not None else _last_point(series)
    out = []
    # how far the run got (only a run that did not finish can have crashed)
    dense = cadence_series(series) if status != "FINISHED" else None
    points = len(dense) if dense is not None else 0
    crashed = D.crash(status, log_text or "", last_step, thresholds.get("crash", {}), points)
    ref = stall_reference_ms(run_info, now_ms)
    hung = (
        D.stalled(status, last_ts, cadence, last_step, ref, thresholds.get("stalled", {}))
        if ref is not None
        else None
    )
    if crashed and hung and status != "FAILED":
        # The process lives on, silent, after an exception: a worker (a reader thread) died
        # and the loop waits for it for ever.  The hang is the finding; the error its evidence.
        err = D.last_error_line(log_text or "")
        hung = hung.model_copy(update={"evidence": f"{hung.evidence}; the log's last error: {err}"})
        crashed = None
    if crashed:
        out.append(crashed)
        nan = D.stopped_on_nonfinite(crashed, log_text or "", thresholds.get("crash", {}))
        if nan:
            out.append(nan)
    if hung:
        out.append(hung)
    return out


def stall_reference_ms(run_info: Any, now_ms: int | None) -> int | None:
    """When silence is measured to for ``stalled``: now for a RUNNING run, the end time for a
    KILLED one (a hang that was later killed); None when a stall is not judged at all."""
    status = _get(run_info, "status", "FINISHED") or "FINISHED"
    if status not in ("RUNNING", "KILLED"):
        return None
    end = _get(run_info, "end_time")
    if status != "RUNNING" and end:
        return int(end)
    return int(now_ms if now_ms is not None else time.time() * 1000)


def order(findings: list[Finding]) -> list[Finding]:
    """Findings in the order they happened (``onset_order``), by kind at the same moment."""
    key = onset_order(findings)
    return sorted(findings, key=lambda f: (key(f), f.kind))


def _clocked(found: list[Finding], series: Mapping[str, Series]) -> list[Finding]:
    """Each metric finding with the wall clock of its onset point (``Finding.at_ms``)."""
    out = []
    for f in found:
        s = series.get(f.metric) if f.metric else None
        if s is not None and f.step is not None and f.at_ms is None:
            i = min(int(np.searchsorted(s.steps, f.step)), len(s) - 1)
            if s.timestamps[i] > 0:
                f = f.model_copy(update={"at_ms": int(s.timestamps[i])})
        out.append(f)
    return out


def consolidate(findings: list[Finding], window: int | None = None) -> list[Finding]:
    """One problem, one finding: when the run went non-finite, the anomalies that led up to
    it (a spike, a rise, exploding or vanishing gradients shortly before) are its onset, not
    separate problems.  The earliest ``nan_inf`` absorbs them: its step becomes the first
    precursor's, its evidence names them."""
    findings = _absorb_divergence(findings)
    nans = [f for f in findings if f.kind == "nan_inf" and f.step is not None]
    if not nans:
        return findings
    key = onset_order(findings)
    first_nan = min(nans, key=key)
    lo = -1 << 62 if window is None else first_nan.step - window  # type: ignore[operator]
    pre = [
        f
        for f in findings
        if f.kind in precursors()
        and f.step is not None
        and lo <= f.step
        and key(f) <= key(first_nan)
    ]
    if not pre:
        return findings
    onset = min(pre, key=key).step
    what = ", ".join(sorted({f"{f.kind} at step {f.step}" for f in pre}))
    return _absorb(findings, first_nan, pre, f"first went wrong at step {onset} ({what})")


def _absorb(
    findings: list[Finding], into: Finding, parts: list[Finding], why: str
) -> list[Finding]:
    """``findings`` with ``parts`` merged into ``into``: one finding whose step is the earliest,
    whose evidence adds ``why``, whose ``after`` lists the absorbed kinds in order, each after
    its own run-up (no repeats), and whose ``context`` keeps what was measured of them (a rise
    that came late in the run is still late once it ran on into NaN)."""
    key = onset_order(findings)
    parts = sorted(parts, key=key)
    kinds = (*into.after, *(k for f in parts for k in (*f.after, f.kind)))
    lead = min((into, *parts), key=key)
    merged = into.model_copy(
        update={
            "step": lead.step,
            "at_ms": lead.at_ms,
            "evidence": f"{into.evidence}; {why}",
            "after": tuple(dict.fromkeys(kinds)),
            "context": tuple(
                dict.fromkeys((*into.context, *(c for f in parts for c in f.context)))
            ),
        }
    )
    drop = {id(f) for f in parts} | {id(into)}
    return order([merged] + [f for f in findings if id(f) not in drop])


def _absorb_divergence(findings: list[Finding], window: int = 50) -> list[Finding]:
    """Consequences are not causes: a loss that rises right after a gradient blow-up, and
    experts that die after the loss blew up, belong to the earlier finding.  A divergence is
    a loss that rose and stayed up, so a spike of that same loss from shortly before its rise
    on (its onset, or a jump of the diverged loss against a baseline that still holds the
    good steps) is part of it: recorded in its ``after``, not a second problem."""
    boom = [f.step for f in findings if f.kind == "exploding_gradients" and f.step is not None]
    blown = [
        f.step
        for f in findings
        if f.kind in ("divergence", "nan_inf", "exploding_gradients") and f.step is not None
    ]
    out = []
    for f in findings:
        if (
            f.step is not None
            and f.kind == "divergence"
            and any(0 <= f.step - b <= window for b in boom)
        ):
            continue
        if f.step is not None and f.kind == "expert_collapse" and any(b <= f.step for b in blown):
            continue
        out.append(f)
    divs = [f for f in out if f.kind == "divergence" and f.step is not None]
    for d in divs:
        spikes = [
            f
            for f in out
            if f.kind == "loss_spike"
            and f.metric == d.metric
            and f.step is not None
            and f.step >= d.step - window  # type: ignore[operator]
        ]
        if not spikes:
            continue
        first = min(f.step for f in spikes)  # type: ignore[type-var]
        out = _absorb(out, d, spikes, f"with a spike of {d.metric} at step {first}")
    return [
        _as_spike(f) if f.kind == "divergence" and _SPIKE_CONTEXTS & set(f.context) else f
        for f in out
    ]


# A divergence the run learned its way back down from (``setback``) or that the eval loss did
# not follow (``eval_held``): reported as the spike it was.
_SPIKE_CONTEXTS = frozenset({"setback", "eval_held"})


def _as_spike(d: Finding) -> Finding:
    """A late rise the run learned its way back down from (``setback``) did not stay up, and
    one the eval loss did not follow (``eval_held``) was the batches': either was a spike of
    the loss, one that took the run a while to work off.  (Not a throw of an
    untrained model, whatever a spike it absorbed said: the run had trained for a long while;
    on a sparse log a late point can still be one of the first few.)"""
    return d.model_copy(
        update={
            "kind": "loss_spike",
            "after": tuple(k for k in d.after if k != "loss_spike"),
            "context": tuple(c for c in d.context if c != "untrained"),
        }
    )


def detect(
    histories: Mapping[str, Any],
    run_info: Any = None,
    log_text: str | None = "",
    thresholds: Mapping[str, Mapping[str, Any]] | None = None,
    *,
    aliases: MetricAliases | None = None,
    now_ms: int | None = None,
) -> list[Finding]:
    """All findings of one run, earliest first.

    ``histories``: metric name → tracking ``History`` or ``(steps, values[, timestamps])``;
    ``run_info``: anything with ``status``/``end_time`` (a ``RunInfo`` or a dict);
    ``thresholds``: the scaffold's detectors section (packaged defaults when None).
    """
    sc = load_scaffold(None) if thresholds is None or aliases is None else None
    thresholds = thresholds if thresholds is not None else sc.detectors  # type: ignore[union-attr]
    aliases = aliases if aliases is not None else sc.metrics  # type: ignore[union-attr]
    series = series_of(histories)
    found = detect_metrics(series, thresholds, aliases, params=_get(run_info, "params", None))
    found += detect_status(series, run_info, log_text, thresholds, now_ms)
    return order(consolidate(found))


def diagnose(
    findings: list[Finding],
    params: Mapping[str, str],
    log_text: str | None,
    playbook: Playbook | None = None,
    *,
    aliases: MetricAliases | None = None,
    status: str | None = None,
) -> tuple[Diagnosis | None, list[Remedy]]:
    """Findings + params + log → (diagnosis or None when healthy, ranked remedies)."""
    if playbook is None or aliases is None:
        sc = load_scaffold(None)
        playbook = playbook or sc.playbook
        aliases = aliases or sc.metrics
    return rules.diagnose(
        findings, params, log_text or "", playbook, aliases=aliases, status=status
    )


LOSS_ROLES = ("train_loss", "eval_loss")
# an evolution strategy's mean and best fitness: read as a loss or a return (``_population_sense``)
POPULATION_ROLES = ("population_mean", "population_best")


def unread_losses(
    series: Mapping[str, Series],
    aliases: MetricAliases,
    roles: Mapping[str, str] | None = None,
) -> str:
    """Why the doctor cannot judge a run that logged metrics ("" when it can): none of them
    plays a loss role, so "no finding" would say nothing about its training.  ``roles``: the
    run's resolved roles when the caller has them already (a watcher's poll)."""
    names = [n for n, s in series.items() if len(s) and not n.startswith("system/")]
    if not names:
        return ""
    if roles is None:
        roles = resolve_roles({n: len(series[n]) for n in names}, aliases)
    if any(r in roles for r in LOSS_ROLES) or all(r in roles for r in POPULATION_ROLES):
        return ""
    shown = ", ".join(repr(n) for n in sorted(names)[:8]) + (" …" if len(names) > 8 else "")
    return (
        f"no logged metric is read as a training or eval loss ({shown}); add its name under "
        "roles: train_loss (or eval_loss) in the scaffold's metrics.yaml"
    )


def verdict(
    run_id: str,
    findings: list[Finding],
    params: Mapping[str, str],
    log_text: str | None,
    scaffold: Scaffold,
    status: str | None = None,
    has_data: bool = True,
    unread: str = "",
    lr: Series | None = None,
) -> RunVerdict:
    """``has_data=False``: the run has no metric point; without findings that is ``no_data``,
    and so is a run none of whose metrics the doctor reads as a loss (``unread``, from
    ``unread_losses``): not judged is not healthy.  ``lr``: the run's logged learning rate,
    where it logs one (``stepped_params``)."""
    findings = order(consolidate(list(findings)))
    params = stepped_params(params, lr, scaffold.metrics)
    diag, remedies = diagnose(
        findings, params, log_text, scaffold.playbook, aliases=scaffold.metrics, status=status
    )
    healthy = has_data and not unread
    return RunVerdict(
        run_id=run_id,
        status="failing" if findings else ("healthy" if healthy else "no_data"),
        findings=tuple(findings),
        diagnosis=diag,
        remedies=tuple(remedies),
        note="" if findings else unread,
    )


def needs_log(status: str, findings: list[Finding]) -> bool:
    """The log is read only when it can matter (a stopped run, or something found)."""
    return bool(findings) or status in ("FAILED", "KILLED")


def diagnose_run(
    client_or_uri: Any,
    run_id: str,
    scaffold: Scaffold | str | None = None,
    *,
    now_ms: int | None = None,
) -> RunVerdict:
    """Read one run from MLflow and judge it.  ``client_or_uri``: a ``TrackingClient`` or a URI."""
    from workbench.runs.tracking import TrackingClient

    sc = _scaffold(scaffold)
    client = (
        client_or_uri
        if isinstance(client_or_uri, TrackingClient)
        else TrackingClient(client_or_uri)
    )
    info = client.run(run_id)
    series = series_of(client.histories(run_id))
    return judge(client, info, series, sc, now_ms=now_ms)


def judge(
    client: Any,
    info: Any,
    series: Mapping[str, Series],
    sc: Scaffold,
    *,
    now_ms: int | None = None,
    metric_findings: list[Finding] | None = None,
) -> RunVerdict:
    """Findings → verdict for a run whose series are already in hand (reads the log if needed)."""
    roles = resolve_roles({k: len(v) for k, v in series.items()}, sc.metrics)
    found = (
        metric_findings
        if metric_findings is not None
        else detect_metrics(series, sc.detectors, sc.metrics, roles=roles, params=info.params)
    )
    status = info.status
    pre = found + detect_status(series, info, None, sc.detectors, now_ms)
    log = client.log_text(info.run_id) if needs_log(status, pre) else ""
    found = order(found + detect_status(series, info, log, sc.detectors, now_ms))
    has_data = any(len(s) for s in series.values())
    unread = unread_losses(series, sc.metrics, roles)
    lr = series.get(roles["lr"]) if "lr" in roles else None
    return verdict(info.run_id, found, info.params, log, sc, status, has_data, unread, lr)
