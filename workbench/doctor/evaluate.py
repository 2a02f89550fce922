"""Score the doctor on a built fault suite: per-kind precision/recall/F1, false alarms on
healthy runs, cause accuracy and detection delay.

This is the *only* code that reads the answer key: the ``workbench.expected`` tag and each
scenario's fault onset (``start_step``) from the suite YAML.  The doctor itself never does.
"""

from __future__ import annotations

import json
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from scaffold.loader import Scaffold
from trainer.tags import Tag
from workbench.doctor.types import FINDING_KINDS, RunVerdict
from workbench.errors import BadInputError

Split = Literal["selection", "heldout", "all"]

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
    delays: dict[str, int] = {}
    if onset is not None:
        for kind in expected.get("findings", []):
            steps = [f.step for f in v.findings if f.kind == kind and f.step is not None]
            if steps:
                delays[kind] = min(steps) - onset
    return RunScore(
        scenario=scenario,
        run_id=v.run_id,
        split=split,
        expected_kinds=sorted(expected.get("findings", [])),
        expected_cause=expected.get("cause", "healthy"),
        predicted_kinds=kinds,
        predicted_cause=v.diagnosis.cause if v.diagnosis else "healthy",
        onset=onset,
        delays=delays,
    )


def summarize(scores: list[RunScore]) -> dict[str, Any]:
    per_kind = {}
    for kind in FINDING_KINDS:
        tp = sum(kind in s.expected_kinds and kind in s.predicted_kinds for s in scores)
        fp = sum(kind not in s.expected_kinds and kind in s.predicted_kinds for s in scores)
        fn = sum(kind in s.expected_kinds and kind not in s.predicted_kinds for s in scores)
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
        "cause_accuracy": (sum(s.cause_ok for s in scores) / len(scores)) if scores else None,
        "cause_accuracy_faulty": (sum(s.cause_ok for s in faulty) / len(faulty))
        if faulty
        else None,
        "median_delay": statistics.median(delays) if delays else None,
        "delays": delays,
        "scores": [s.__dict__ for s in scores],
    }
    out["passed"] = bool(
        out["min_f1"] is not None
        and out["min_f1"] >= TARGETS["f1"]
        and (out["false_alarm_rate"] or 0.0) <= TARGETS["false_alarm_rate"]
        and (out["cause_accuracy"] or 0.0) >= TARGETS["cause_accuracy"]
        and out["median_delay"] is not None
        and abs(out["median_delay"]) <= TARGETS["median_delay"]
    )
    return out


def evaluate_suite(
    store: str | Path,
    *,
    split: Split = "selection",
    suite_file: str | Path | None = None,
    scaffold: Scaffold | None = None,
    progress: Any = None,
) -> dict[str, Any]:
    """Diagnose every run of a built fault suite and score the verdicts."""
    from experiments.faults.builder import EXPERIMENT
    from experiments.faults.suite import SUITE_FILE, load_suite
    from scaffold.loader import load_scaffold
    from workbench.doctor.watch import diagnose_experiment
    from workbench.runs.tracking import TrackingClient

    store = Path(store)
    db = store / "mlflow.db"
    if not db.is_file():
        raise BadInputError(
            f"no suite store at {store} (expected {db}; build it with `workbench suite make faults --out {store}`)"
        )
    suite = load_suite(suite_file or SUITE_FILE)
    scenarios = {s.id: s for s in suite.scenarios}
    client = TrackingClient(f"sqlite:///{db.resolve()}")
    verdicts = diagnose_experiment(
        client, EXPERIMENT, scaffold or load_scaffold(None), progress=progress
    )
    infos = {r.run_id: r for r in client.runs(EXPERIMENT)}
    newest: dict[str, tuple[int, RunVerdict]] = {}
    for v in verdicts:
        info = infos.get(v.run_id)
        sid = info.tags.get(Tag.SCENARIO) if info else None
        if sid in scenarios and (sid not in newest or (info.start_time or 0) > newest[sid][0]):
            newest[sid] = (info.start_time or 0, v)  # a rebuilt scenario: the newest run counts
    scores = []
    for sid, (_, v) in sorted(newest.items()):
        sc = scenarios[sid]
        if split != "all" and sc.split != split:
            continue
        expected = (
            json.loads(infos[v.run_id].tags.get(Tag.EXPECTED) or "{}") or sc.expected.model_dump()
        )
        onset = int((sc.fault or {}).get("start_step", 0)) if sc.fault else None
        scores.append(score_run(v, sid, sc.split, expected, onset))
    if not scores:
        raise BadInputError(f"no runs of the {split!r} split in {store}")
    result = summarize(scores)
    result["split"] = split
    result["store"] = str(store)
    return result
