"""Score a scaffold variant on an already-built fault suite — cheaply and many times.

Evolution re-runs only the doctor (detect + diagnose) with each variant over the suite's stored
runs; nothing is retrained.  Histories, params and logs are read from MLflow once into a
``SuiteCache``; metric findings are memoised per (detector thresholds, metric aliases, run), so
a playbook-only edit costs one diagnosis per run.

With a ``FixOutcomes`` attached (``SuiteCache.fixes``), the score also asks whether the doctor's
*top remedy* really fixes each run: for every run whose cause the variant names correctly, the
first remedy of its verdict is looked up in (or measured once into) the shared outcome cache —
the scenario retrained with that config patch and verified against the original run.  Only
patches a variant actually proposes are ever measured.

This module, the answer key (``workbench.expected`` tags, the suite YAML) and the split of
scenarios into ``selection``/``heldout`` all live outside the editable scaffold: a variant can
change what the doctor *says*, never how it is graded.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from scaffold.loader import Scaffold, load_scaffold
from trainer.tags import Tag
from workbench.doctor.core import detect_metrics, judge, series_of
from workbench.doctor.evaluate import RunScore, score_run, summarize
from workbench.doctor.series import Series
from workbench.errors import BadInputError


@dataclass
class SuiteRun:
    """One scenario's run, held in memory: what the doctor sees plus its answer key."""

    scenario: str
    split: str  # selection | heldout
    info: Any  # RunInfo-like: run_id, status, end_time, params
    series: dict[str, Series]
    log: str
    expected: dict[str, Any]  # {"findings": [...], "cause": ...} — never shown to the doctor
    onset: int | None


@dataclass
class SuiteCache:
    """All runs of a suite plus a memo of metric findings per detector configuration."""

    runs: list[SuiteRun]
    now_ms: int = field(default_factory=lambda: int(time.time() * 1000))
    _memo: dict[tuple[str, str], list] = field(default_factory=dict, repr=False)
    subset_extra: int = 2  # the loop's stage 1 adds this many runs the parent gets right
    fixes: Any = None  # a workbench.rl.outcomes.FixOutcomes (not pickled): adds ``fix_rate``

    name = "faults"

    # ---- the suite protocol the evolve loop uses (see also workbench/evolve/mle_suite.py)
    def load(self, folder: str | Path) -> Scaffold:
        return load_scaffold(folder)

    @staticmethod
    def brief(summary: dict[str, Any]) -> dict[str, Any]:
        return brief(summary)

    def failures(self, summary: dict[str, Any]) -> list[dict[str, Any]]:
        return failures(summary, self.fixes)

    @staticmethod
    def propose_rules(files: dict[str, str], fails: list[dict[str, Any]], rng: Any) -> Any:
        from workbench.evolve.propose import rules_proposal

        return rules_proposal(files, fails, rng)

    def __getstate__(self) -> dict[str, Any]:
        # The outcome cache holds locks and a path: it is attached after loading, never pickled.
        return {**self.__dict__, "fixes": None}

    # ``judge`` asks its client for the log only when it can matter; we answer from memory.
    def log_text(self, run_id: str, *_: Any, **__: Any) -> str:
        return next(r.log for r in self.runs if r.info.run_id == run_id)

    def ids(self, split: str) -> list[str]:
        return [r.scenario for r in self.runs if split == "all" or r.split == split]

    def score(
        self, sc: Scaffold, split: str = "selection", only: Iterable[str] | None = None
    ) -> dict[str, Any]:
        """The doctor's summary (evaluate.summarize) plus the evolution ``fitness``."""
        chosen = set(only) if only is not None else None
        key = _detector_key(sc)
        scores: list[RunScore] = []
        rems: list[list[Any]] = []  # the verdict's remedies per run, first = the top one
        for r in self.runs:
            if (split != "all" and r.split != split) or (
                chosen is not None and r.scenario not in chosen
            ):
                continue
            memo = (key, r.info.run_id)
            if memo not in self._memo:
                self._memo[memo] = detect_metrics(r.series, sc.detectors, sc.metrics)
            v = judge(
                self, r.info, r.series, sc, now_ms=self.now_ms, metric_findings=self._memo[memo]
            )
            scores.append(score_run(v, r.scenario, r.split, r.expected, r.onset))
            rems.append(list(v.remedies))
        if not scores:
            raise BadInputError(f"no suite runs in split {split!r}")
        summary = summarize(scores)
        if self.fixes is not None:
            add_fix_outcomes(summary, rems, self.fixes)
        return with_fitness(summary)


def add_fix_outcomes(summary: dict[str, Any], rems: list[list[Any]], fixes: Any) -> None:
    """Per run: was it fixed by the doctor's top remedy?  Adds ``fix_rate`` to ``summary``.

    ``rems``: per run, the verdict's remedies (first = its top one; empty: none proposed).
    A faulty run counts as fixed only when the cause is right *and* its first remedy, rerun,
    verifies; a healthy run counts as fixed when nothing is proposed for it.  Outcomes of the
    runs that need one are measured together (``fixes.jobs`` at a time), cached forever.  The
    lower-ranked remedies are only named (``alternatives``), never measured here.
    """
    from workbench.rl.outcomes import canonical_patch

    scores = summary["scores"]
    tops = [r[0] if r else None for r in rems]
    need = [
        (s["scenario"], list(top.patch))
        for s, top in zip(scores, tops, strict=True)
        if top is not None
        and s["expected_cause"] != "healthy"
        and s["predicted_cause"] == s["expected_cause"]
    ]
    got = {(o.scenario, o.patch): o for o in fixes.outcomes(need)} if need else {}
    for s, top, ranked in zip(scores, tops, rems, strict=True):
        if s["expected_cause"] == "healthy":
            s["fixed"], s["remedy"] = top is None, None
            continue
        s["remedy"] = (
            None
            if top is None
            else {"id": top.id, "patch": [p.model_dump(mode="json") for p in top.patch]}
        )
        s["alternatives"] = [
            {"id": r.id, "patch": [p.model_dump(mode="json") for p in r.patch]} for r in ranked[1:]
        ]
        o = got.get((s["scenario"], canonical_patch(top.patch))) if top is not None else None
        s["fixed"] = bool(o and o.fixed)
        if o is not None:
            s["fix"] = {
                "best_eval": o.best_eval,
                "original_best": o.original_best,
                "reason": o.reason,
            }
    summary["fix_rate"] = sum(s["fixed"] for s in scores) / len(scores)


def _detector_key(sc: Scaffold) -> str:
    blob = json.dumps(
        [sc.detectors, sc.metrics.model_dump(mode="json")], sort_keys=True, default=str
    )
    return hashlib.sha1(blob.encode()).hexdigest()


def with_fitness(summary: dict[str, Any]) -> dict[str, Any]:
    """Add the one number evolution maximises, and the counts it must never trade away.

    Without remedy outcomes: fitness = 0.4·cause accuracy + 0.4·micro-F1 over finding kinds
    + 0.2·(1 − false-alarm rate).  With them (``fix_rate`` in the summary, see
    ``add_fix_outcomes``): fitness = 0.3·cause + 0.3·micro-F1 + 0.1·(1 − false alarms)
    + 0.3·fix rate.  Micro-F1 = 2tp / (2tp + fp + fn) counts every missed kind (fn) against the
    variant, so a doctor that goes silent (everything "healthy") or loses a detector scores low
    — and fixes nothing, as a fix needs the right cause.  ``missed`` (faulty runs judged healthy)
    is reported separately: a child may not raise it (see loop).
    """
    pk = summary["per_kind"].values()
    tp, fp, fn = (sum(m[k] for m in pk) for k in ("tp", "fp", "fn"))
    micro_f1 = 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 1.0
    scores = summary["scores"]
    missed = sum(s["expected_cause"] != "healthy" and not s["predicted_kinds"] for s in scores)
    fa = summary["false_alarm_rate"] or 0.0
    cause = summary["cause_accuracy"] or 0.0
    fix_rate = summary.get("fix_rate")
    if fix_rate is None:
        fitness = 0.4 * cause + 0.4 * micro_f1 + 0.2 * (1.0 - fa)
    else:
        fitness = 0.3 * cause + 0.3 * micro_f1 + 0.1 * (1.0 - fa) + 0.3 * fix_rate
    return {
        **summary,
        "micro_f1": micro_f1,
        "missed": missed,
        "fn": fn,
        "fp": fp,
        "fix_rate": fix_rate,
        "fitness": round(fitness, 6),
    }


def brief(summary: dict[str, Any]) -> dict[str, Any]:
    """The numbers kept in the archive for one split (no per-run detail)."""
    keys = (
        "fitness",
        "cause_accuracy",
        "micro_f1",
        "false_alarm_rate",
        "fix_rate",
        "missed",
        "fn",
        "fp",
        "runs",
    )
    return {k: summary.get(k) for k in keys}


def failures(summary: dict[str, Any], fixes: Any = None) -> list[dict[str, Any]]:
    """Runs the doctor got wrong: the evidence a brain reads (selection split only).

    Wrong findings or cause; or — with remedy outcomes — the right cause whose top remedy did
    not fix the run (then with ``remedy``, ``fixed: false``, the rerun's ``best_eval``, the
    original's ``original_best`` and the verifier's ``reason``, and the cause's lower-ranked
    ``alternatives`` with ``fixed`` true/false where the outcome cache already holds a
    measurement *on this same run*, else null — looked up, never measured).  Callers pass
    only the selection summary, so no held-out outcome reaches a brain.
    """
    keys = (
        "scenario",
        "expected_kinds",
        "predicted_kinds",
        "absorbed",
        "expected_cause",
        "predicted_cause",
    )
    out = []
    for s in summary["scores"]:
        # kinds as the scorer judges them (a kind absorbed into another finding was found)
        wrong = not s["kinds_ok"] or s["predicted_cause"] != s["expected_cause"]
        unfixed = (
            s.get("fixed") is False
            and s["expected_cause"] != "healthy"
            and s["predicted_cause"] == s["expected_cause"]
        )
        if not (wrong or unfixed):
            continue
        entry = {k: s[k] for k in keys}
        if unfixed:  # the right cause, but its first remedy did not fix the run
            fix = s.get("fix") or {}
            entry.update(
                remedy=s.get("remedy"),
                fixed=False,
                best_eval=fix.get("best_eval"),
                original_best=fix.get("original_best"),
                reason=fix.get("reason", "no remedy proposed"),
                alternatives=[
                    {**a, "fixed": _known(fixes, s["scenario"], a["patch"])}
                    for a in s.get("alternatives") or []
                ],
            )
        out.append(entry)
    return out


def _known(fixes: Any, scenario: str, patch: list[dict[str, Any]]) -> bool | None:
    hit = fixes.lookup(scenario, patch) if fixes is not None else None
    return None if hit is None else bool(hit.fixed)


def load_suite_cache(
    store: str | Path,
    *,
    suite_file: str | Path | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> SuiteCache:
    """Read every scenario run of a built fault suite (the newest run per scenario) once."""
    from experiments.faults.builder import EXPERIMENT
    from experiments.faults.suite import SUITE_FILE, load_suite
    from workbench.runs.tracking import TrackingClient

    db = Path(store) / "mlflow.db"
    if not db.is_file():
        raise BadInputError(
            f"no suite store at {store} (build it with `workbench suite make faults --out {store}`)"
        )
    suite = load_suite(suite_file or SUITE_FILE)
    scenarios = {s.id: s for s in suite.scenarios}
    client = TrackingClient(f"sqlite:///{db.resolve()}")
    newest: dict[str, Any] = {}
    for info in client.runs(EXPERIMENT):
        sid = info.tags.get(Tag.SCENARIO)
        if sid in scenarios and (
            sid not in newest or (info.start_time or 0) > (newest[sid].start_time or 0)
        ):
            newest[sid] = info
    if not newest:
        raise BadInputError(f"no scenario runs in {store}")
    runs = []
    for i, (sid, info) in enumerate(sorted(newest.items())):
        sc = scenarios[sid]
        expected = sc.expected.model_dump()  # the suite file's label is the label of record
        onset = int((sc.fault or {}).get("start_step", 0)) if sc.fault else None
        runs.append(
            SuiteRun(
                sid,
                sc.split,
                info,
                series_of(client.histories(info.run_id)),
                client.log_text(info.run_id),
                expected,
                onset,
            )
        )
        if progress:
            progress(i + 1, len(newest))
    return SuiteCache(runs)
