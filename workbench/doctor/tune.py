"""Tuning aid: how the doctor does on the foreign suite's *selection* programs, run by run.

``python -m workbench.doctor.tune --store DIR [--scaffold PATH]`` prints, for each run of
the selection split only, the label, the findings (with their evidence) and the diagnosis —
what thresholds and playbook weights were tuned on.  It cannot be pointed at the held-out
programs: the split is fixed here, and ``evaluate_suite`` reads only that split's runs.
"""

from __future__ import annotations

import argparse
from typing import Any

TUNING_SPLIT = "selection"


def tuning_report(store: str, scaffold: Any = None) -> dict[str, Any]:
    from workbench.doctor.evaluate import evaluate_suite

    return evaluate_suite(store, split=TUNING_SPLIT, suite="foreign", scaffold=scaffold)


def main(argv: list[str] | None = None) -> None:
    from scaffold.loader import load_scaffold

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--store", required=True)
    ap.add_argument("--scaffold", default=None)
    a = ap.parse_args(argv)
    res = tuning_report(a.store, load_scaffold(a.scaffold))
    for s in res["scores"]:
        mark = "ok " if s["cause_ok"] and s["kinds_ok"] else "BAD"
        want = s["any_of"] or s["expected_kinds"]
        print(
            f"{mark} {s['scenario']:<24} want {want} / {s['expected_cause']:<16} "
            f"got {s['predicted_kinds']} / {s['predicted_cause']}"
        )
    f1 = {k: m["f1"] for k, m in res["per_kind"].items() if m["f1"] is not None}
    print(f"per-kind F1 {f1}")
    print(
        f"false alarms {res['false_alarms']}/{res['healthy']}, "
        f"cause accuracy {res['cause_accuracy']:.3f} (faulty {res['cause_accuracy_faulty']})"
    )


if __name__ == "__main__":
    main()
