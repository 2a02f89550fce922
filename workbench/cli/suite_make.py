"""`workbench suite make faults --out DIR [--only IDS] [--jobs N] [--json]`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from workbench.cli.options import Json
from workbench.cli.output import console, err_console, print_json, print_table
from workbench.errors import BadInputError

SUITES = ("faults",)


def make(
    suite: Annotated[str, typer.Argument(help="Which suite to build (faults).")],
    out: Annotated[Path, typer.Option("--out", help="Directory for the MLflow store and logs.")],
    only: Annotated[
        str | None, typer.Option("--only", help="Comma-separated scenario ids.")
    ] = None,
    jobs: Annotated[int, typer.Option("--jobs", "-j", min=1, help="Parallel runs.")] = 2,
    as_json: Json = False,
    suite_file: Annotated[
        Path | None, typer.Option("--suite-file", help="A suite YAML other than the shipped one.")
    ] = None,
) -> None:
    """Run a suite's scenarios as real trainings into an MLflow store under OUT."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from experiments.faults.builder import build, tracking_uri
    from experiments.faults.suite import SUITE_FILE, SuiteError, load_suite, select

    if suite not in SUITES:
        raise BadInputError(f"unknown suite {suite!r} (known: {', '.join(SUITES)})")
    try:
        spec = load_suite(suite_file or SUITE_FILE)
        ids = [i.strip() for i in only.split(",") if i.strip()] if only else None
        scenarios = select(spec, ids)
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

        runs = build(spec, scenarios, out, jobs=jobs, on_done=on_done)

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
