"""Score the doctor on a built suite (``faults`` or ``foreign``): per-kind precision/recall/F1,
false alarms on healthy runs, cause accuracy and detection delay.

This is the *only* code that reads the answer key: the ``workbench.expected`` tag and each
scenario's label (and fault onset) from the suite YAML.  The doctor itself never does.
A label lists kinds that must all be found (``findings``), kinds of which one must be found
(``any_of``: the first is charged when none is) and kinds that may be found (``allowed``).
Runs of the split not asked for are never read, let alone diagnosed.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from scaffold.loader import Scaffold
from trainer.tags import Tag
from workbench.doctor.types import FINDING_KINDS, RunVerdict
from workbench.errors import BadInputError

Split = Literal["selection", "heldout", "all"]
SUITES = ("faults", "foreign")

TARGETS = {"f1": 0.95, "false_alarm_rate": 0.02, "cause_accuracy": 0.90, "median_delay": 10.0}


@dataclass
class RunScore:
    scenario: str
    run_id: str
    split: str
    expected_kinds: list[str]
    expected_cause: str
    predicted_kinds: list[str]
    predicted_cause: str
    onset: int | None
    delays: dict[str, int] = field(default_factory=dict)  # kind → reported − true onset
    any_of: list[str] = field(default_factory=list)
    allowed: list[str] = field(default_factory=list)
    # kinds found as another finding's run-up (its `after`): detected, but one problem, one finding
    absorbed: list[str] = field(default_factory=list)

    @property
    def cause_ok(self) -> bool:
        return self.predicted_cause == self.expected_cause


def _prf(tp: int, fp: int, fn: int) -> dict[str, float | int | None]:
    p = tp / (tp + fp) if tp + fp else None
    r = tp / (tp + fn) if tp + fn else None
    f1 = None
    if tp + fp + fn:
        f1 = 2 * tp / (2 * tp + fp + fn)
    return {"tp": tp, "fp": fp, "fn": fn, "precision": p, "recall": r, "f1": f1}


def score_run(
    v: RunVerdict, scenario: str, split: str, expected: dict[str, Any], onset: int | None
) -> RunScore:
    kinds = sorted({f.kind for f in v.findings})
    absorbed = sorted({k for f in v.findings for k in f.after} - set(kinds))
    delays: dict[str, int] = {}
    if onset is not None:
        for kind in expected.get("findings", []) + expected.get("any_of", []):
            steps = [
                f.step
                for f in v.findings
                if (f.kind == kind or kind in f.after) and f.step is not None
            ]
            if steps:
                delays[kind] = min(steps) - onset
    return RunScore(
        scenario=scenario,
        run_id=v.run_id,
        split=split,
        expected_kinds=sorted(expected.get("findings", [])),
        expected_cause=expected.get("cause", "healthy"),
        predicted_kinds=kinds,
        # a run the doctor could not judge (no_data) is not a healthy verdict
        predicted_cause=v.diagnosis.cause if v.diagnosis else v.status,
        onset=onset,
        delays=delays,
        any_of=list(expected.get("any_of", [])),
        allowed=list(expected.get("allowed", [])),
        absorbed=absorbed,
    )


def _counts(s: RunScore, kind: str) -> tuple[int, int, int]:
    """(tp, fp, fn) of one run for one kind.  A kind absorbed into another finding (a NaN's
    run-up, a divergence's spike) was detected: it counts where the label asks for it, and is
    no extra alarm where the label does not (it is not a finding of its own)."""
    found = kind in s.predicted_kinds
    credited = found or kind in s.absorbed
    if kind in s.expected_kinds:
        return int(credited), 0, int(not credited)
    if kind in s.any_of:
        missed = not set(s.any_of) & (set(s.predicted_kinds) | set(s.absorbed))
        return int(credited), 0, int(missed and kind == s.any_of[0])
    if kind in s.allowed:
        return 0, 0, 0
    return 0, int(found), 0


def summarize(scores: list[RunScore]) -> dict[str, Any]:
    per_kind = {}
    for kind in FINDING_KINDS:
        tp, fp, fn = (sum(c) for c in zip(*(_counts(s, kind) for s in scores), strict=True))
        per_kind[kind] = _prf(tp, fp, fn)
    healthy = [s for s in scores if s.expected_cause == "healthy"]
    faulty = [s for s in scores if s.expected_cause != "healthy"]
    delays = [d for s in scores for d in s.delays.values()]
    f1s = [m["f1"] for m in per_kind.values() if m["f1"] is not None]
    out = {
        "runs": len(scores),
        "per_kind": per_kind,
        "min_f1": min(f1s) if f1s else None,
        "false_alarm_rate": (sum(bool(s.predicted_kinds) for s in healthy) / len(healthy))
        if healthy
        else None,
        "false_alarms": sum(bool(s.predicted_kinds) for s in healthy),
        "healthy": len(healthy),
        "cause_accuracy": (sum(s.cause_ok for s in scores) / len(scores)) if scores else None,
        "cause_accuracy_faulty": (sum(s.cause_ok for s in faulty) / len(faulty))
        if faulty
        else None,
        "median_delay": statistics.median(delays) if delays else None,
        "delays": delays,
        "scores": [
            {
                **s.__dict__,
                "cause_ok": s.cause_ok,
                "kinds_ok": not any(
                    fp or fn for _, fp, fn in (_counts(s, k) for k in FINDING_KINDS)
                ),
            }
            for s in scores
        ],
    }
    out["passed"] = bool(
        out["min_f1"] is not None
        and out["min_f1"] >= TARGETS["f1"]
        and (out["false_alarm_rate"] or 0.0) <= TARGETS["false_alarm_rate"]
        and (out["cause_accuracy"] or 0.0) >= TARGETS["cause_accuracy"]
        # (a suite without fault onsets has no delays to judge)
        and (not any(s.onset is not None for s in faulty) or out["median_delay"] is not None)
        and abs(out["median_delay"] or 0) <= TARGETS["median_delay"]
    )
    return out


def _labels(suite: str, suite_file: str | Path | None) -> tuple[str, dict[str, tuple]]:
    """(experiment, scenario id → (split, expected, onset)) of a suite."""
    if suite == "faults":
        from experiments.faults.builder import EXPERIMENT
        from experiments.faults.suite import SUITE_FILE, load_suite

        spec = load_suite(suite_file or SUITE_FILE)
        return EXPERIMENT, {
            s.id: (
                s.split,
                s.expected.model_dump(),
                int((s.fault or {}).get("start_step", 0)) if s.fault else None,
            )
            for s in spec.scenarios
        }
    if suite == "foreign":
        from experiments.foreign.builder import EXPERIMENT as FOREIGN
        from experiments.foreign.suite import SUITE_FILE as FOREIGN_FILE
        from experiments.foreign.suite import load_suite as load_foreign

        fspec = load_foreign(suite_file or FOREIGN_FILE)
        return FOREIGN, {r.id: (fspec.split_of(r), r.label.model_dump(), None) for r in fspec.runs}
    raise BadInputError(f"unknown suite {suite!r} (known: {', '.join(SUITES)})")


def evaluate_suite(
    store: str | Path,
    *,
    split: Split = "selection",
    suite: str = "faults",
    suite_file: str | Path | None = None,
    scaffold: Scaffold | None = None,
    progress: Any = None,
) -> dict[str, Any]:
    """Diagnose every run of one split of a built suite and score the verdicts."""
    from experiments.faults.suite import SuiteError
    from scaffold.loader import load_scaffold
    from workbench.doctor.watch import diagnose_experiment
    from workbench.runs.tracking import TrackingClient

    store = Path(store)
    db = store / "mlflow.db"
    if not db.is_file():
        raise BadInputError(
            f"no suite store at {store} (expected {db}; build it with `workbench suite make {suite} --out {store}`)"
        )
    try:
        experiment, labels = _labels(suite, suite_file)
    except SuiteError as exc:
        raise BadInputError(str(exc)) from None
    client = TrackingClient(f"sqlite:///{db.resolve()}")
    # Only the runs of the split asked for are read (held-out runs never reach tuning).
    where = "" if split == "all" else f"tags.`{Tag.SPLIT}` = '{split}'"
    verdicts = diagnose_experiment(
        client,
        experiment,
        scaffold or load_scaffold(None),
        progress=progress,
        filter_string=where,
    )
    infos = {r.run_id: r for r in client.runs(experiment, filter_string=where)}
    newest: dict[str, tuple[int, RunVerdict]] = {}
    for v in verdicts:
        info = infos.get(v.run_id)
        sid = info.tags.get(Tag.SCENARIO) if info else None
        if sid in labels and (sid not in newest or (info.start_time or 0) > newest[sid][0]):
            newest[sid] = (info.start_time or 0, v)  # a rebuilt scenario: the newest run counts
    scores = []
    for sid, (_, v) in sorted(newest.items()):
        sc_split, expected, onset = labels[sid]
        if split != "all" and sc_split != split:
            continue
        # The suite file's label is the label of record: a foreign run's label is written from
        # its raw history after the build, so the tag the build wrote may be a provisional one.
        scores.append(score_run(v, sid, sc_split, expected, onset))
    if not scores:
        raise BadInputError(f"no runs of the {split!r} split in {store}")
    result = summarize(scores)
    result["suite"] = suite
    result["split"] = split
    result["store"] = str(store)
    return result
