"""``workbench suite eval faults|foreign --store DIR [--split heldout] [--json]``: score the doctor."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from workbench.cli.options import Json
from workbench.cli.output import console, print_json, print_table
from workbench.errors import BadInputError


def _pct(x) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def _num(x) -> str:
    return "-" if x is None else f"{x:.2f}"


def eval_cmd(
    suite: Annotated[str, typer.Argument(help="Which suite (faults or foreign).")],
    store: Annotated[Path, typer.Option("--store", help="The folder `suite make` wrote.")],
    split: Annotated[str, typer.Option("--split", help="selection, heldout or all.")] = "selection",
    suite_file: Annotated[
        Path | None, typer.Option("--suite-file", help="A suite YAML other than the shipped one.")
    ] = None,
    scaffold: Annotated[
        Path | None, typer.Option("--scaffold", help="A scaffold folder to evaluate.")
    ] = None,
    json_out: Json = False,
) -> None:
    """Per-kind precision/recall/F1, false alarms, cause accuracy and detection delay."""
    from scaffold.loader import ScaffoldError, load_scaffold
    from workbench.cli.doctor import _progress
    from workbench.doctor.evaluate import SUITES, TARGETS, evaluate_suite

    if suite not in SUITES:
        raise BadInputError(f"unknown suite {suite!r} (known: {', '.join(SUITES)})")
    if split not in ("selection", "heldout", "all"):
        raise BadInputError(f"--split must be selection, heldout or all, not {split!r}")
    try:
        sc = load_scaffold(scaffold)
    except ScaffoldError as exc:
        raise BadInputError(str(exc)) from exc
    prog, cb = _progress(json_out, "diagnosing the suite")
    with prog:
        res = evaluate_suite(
            store,
            split=split,  # type: ignore[arg-type]
            suite=suite,
            suite_file=suite_file,
            scaffold=sc,
            progress=cb,
        )
    if json_out:
        print_json(res)
        return
    rows = [
        (k, m["tp"], m["fp"], m["fn"], _num(m["precision"]), _num(m["recall"]), _num(m["f1"]))
        for k, m in res["per_kind"].items()
        if m["tp"] + m["fp"] + m["fn"]
    ]
    print_table(
        f"doctor on suite {suite} ({split}, {res['runs']} runs)",
        ["kind", "tp", "fp", "fn", "precision", "recall", "F1"],
        rows,
    )
    wrong = [s for s in res["scores"] if not (s["cause_ok"] and s["kinds_ok"])]
    for s in wrong:
        want = s["expected_kinds"] + ([f"any of {s['any_of']}"] if s["any_of"] else [])
        console.print(
            f"  {s['scenario']}: expected {want} / {s['expected_cause']}, "
            f"got {s['predicted_kinds']} / {s['predicted_cause']}",
            highlight=False,
        )
    console.print(
        f"min F1 {_num(res['min_f1'])} (target ≥ {TARGETS['f1']}), false alarms "
        f"{res['false_alarms']}/{res['healthy']} {_pct(res['false_alarm_rate'])} "
        f"(≤ {_pct(TARGETS['false_alarm_rate'])}), cause accuracy {_pct(res['cause_accuracy'])} "
        f"(≥ {_pct(TARGETS['cause_accuracy'])}), median delay {res['median_delay']} steps (≤ {TARGETS['median_delay']:.0f}) "
        f"→ {'PASS' if res['passed'] else 'FAIL'}",
        highlight=False,
    )


def add(suite_app: typer.Typer) -> None:
    suite_app.command("eval")(eval_cmd)
