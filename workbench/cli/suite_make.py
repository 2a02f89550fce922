"""`workbench suite make faults|foreign --out DIR [--only IDS] [--split S] [--jobs N] [--json]`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from workbench.cli.options import Json
from workbench.cli.output import console, err_console, print_json, print_table
from workbench.errors import BadInputError

SUITES = ("faults", "foreign")


def make(
    suite: Annotated[str, typer.Argument(help="Which suite to build (faults or foreign).")],
    out: Annotated[Path, typer.Option("--out", help="Directory for the MLflow store and logs.")],
    only: Annotated[
        str | None, typer.Option("--only", help="Comma-separated scenario ids.")
    ] = None,
    jobs: Annotated[int, typer.Option("--jobs", "-j", min=1, help="Parallel runs.")] = 2,
    as_json: Json = False,
    suite_file: Annotated[
        Path | None, typer.Option("--suite-file", help="A suite YAML other than the shipped one.")
    ] = None,
    split: Annotated[
        str, typer.Option("--split", help="Only this split (foreign): selection, heldout, all.")
    ] = "all",
) -> None:
    """Run a suite's scenarios as real trainings into an MLflow store under OUT."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from experiments.faults.builder import tracking_uri
    from experiments.faults.suite import SuiteError

    if suite not in SUITES:
        raise BadInputError(f"unknown suite {suite!r} (known: {', '.join(SUITES)})")
    if split not in ("selection", "heldout", "all"):
        raise BadInputError(f"--split must be selection, heldout or all, not {split!r}")
    ids = [i.strip() for i in only.split(",") if i.strip()] if only else None
    try:
        if suite == "faults":
            from experiments.faults.builder import build
            from experiments.faults.suite import SUITE_FILE, load_suite, select

            spec = load_suite(suite_file or SUITE_FILE)
            scenarios = [s for s in select(spec, ids) if split in ("all", s.split)]
        else:
            from experiments.foreign.builder import build  # type: ignore[assignment]
            from experiments.foreign.suite import SUITE_FILE as FOREIGN_FILE
            from experiments.foreign.suite import load_suite as load_foreign
            from experiments.foreign.suite import select as select_foreign

            spec = load_foreign(suite_file or FOREIGN_FILE)  # type: ignore[assignment]
            scenarios = select_foreign(spec, ids, split)  # type: ignore[arg-type, assignment]
    except SuiteError as exc:
        raise BadInputError(str(exc)) from None

    progress = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TimeElapsedColumn(),
        TextColumn("{task.fields[last]}"),
        console=err_console if as_json else console,
    )
    with progress:
        task = progress.add_task(f"suite {suite}", total=len(scenarios), last="")

        def on_done(run) -> None:
            progress.update(task, advance=1, last=f"{run.scenario} ({run.seconds:.0f}s)")

        runs = build(spec, scenarios, out, jobs=jobs, on_done=on_done)  # type: ignore[arg-type]

    if as_json:
        print_json(
            {
                "suite": suite,
                "tracking_uri": tracking_uri(out),
                "runs": [r.to_dict() for r in runs],
                "run_ids": [r.run_id for r in runs if r.run_id],
            }
        )
    else:
        print_table(
            f"suite {suite} → {tracking_uri(out)}",
            ["scenario", "program", "run id", "status", "seconds"],
            [(r.scenario, r.program, r.run_id, r.status, f"{r.seconds:.1f}") for r in runs],
        )


def add(suite_app: typer.Typer) -> None:
    suite_app.command("make")(make)
