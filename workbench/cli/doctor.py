"""``workbench diagnose | watch | report``: the run doctor on any MLflow store."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer

from trainer.tags import Tag
from workbench.cli.options import DEFAULT_HOME, DEFAULT_TRACKING_URI, Home, Json, TrackingUri
from workbench.cli.output import console, err_console, error, print_json, print_table
from workbench.errors import BadInputError, WorkbenchError

ScaffoldPath = Annotated[
    Path | None,
    typer.Option("--scaffold", help="A scaffold folder to use instead of the packaged one."),
]


def _scaffold(path: Path | None):
    from scaffold.loader import ScaffoldError, load_scaffold

    try:
        return load_scaffold(path)
    except ScaffoldError as exc:
        raise BadInputError(str(exc)) from exc


def _client(uri: str):
    from workbench.runs.tracking import TrackingClient

    return TrackingClient(uri)


def _progress(json_out: bool, total_hint: str):
    """A rich progress bar (on stderr when --json); returns (context, callback)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    prog = Progress(
        TextColumn(total_hint),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err_console if json_out else console,
        transient=True,
    )
    task = prog.add_task(total_hint, total=None)

    def cb(done: int, total: int) -> None:
        prog.update(task, completed=done, total=total)

    return prog, cb


def _first(v) -> str:
    if not v.findings:
        return "-"
    f = v.findings[0]
    return f"{f.kind} @ {f.step if f.step is not None else '-'}"


def _rows(verdicts):
    for v in verdicts:
        d = v.diagnosis
        yield (
            v.run_id[:12],
            v.status,
            _first(v),
            f"{d.cause} ({d.confidence:.2f})" if d else "-",
            v.remedies[0].id if v.remedies else "-",
        )


def diagnose_cmd(
    run_ids: Annotated[list[str] | None, typer.Argument(help="Run ids to diagnose.")] = None,
    experiment: Annotated[
        str | None, typer.Option("--experiment", "-e", help="Every run of this experiment.")
    ] = None,
    tracking_uri: TrackingUri = DEFAULT_TRACKING_URI,
    scaffold: ScaffoldPath = None,
    json_out: Json = False,
) -> None:
    """Diagnose runs: findings, the likely cause and ranked remedies (exit 0 whatever the verdict)."""
    from workbench.doctor.core import diagnose_run
    from workbench.doctor.watch import diagnose_experiment

    if bool(run_ids) == bool(experiment):
        raise BadInputError("give run ids or --experiment NAME (not both)")
    sc = _scaffold(scaffold)
    client = _client(tracking_uri)
    verdicts = []
    failures = 0
    if experiment:
        prog, cb = _progress(json_out, f"diagnosing {experiment}")
        with prog:
            verdicts = diagnose_experiment(client, experiment, sc, progress=cb)
    else:
        for rid in run_ids or []:
            try:
                verdicts.append(diagnose_run(client, rid, sc))
            except WorkbenchError as exc:
                if len(run_ids or []) == 1:
                    raise
                failures += 1
                error(f"run {rid}: {exc}")
    if json_out:
        data = [v.model_dump(mode="json") for v in verdicts]
        print_json(data[0] if len(data) == 1 and run_ids and len(run_ids) == 1 else data)
    else:
        print_table(
            "run doctor",
            ["run", "verdict", "first finding", "cause", "top remedy"],
            _rows(verdicts),
        )
        for v in verdicts:
            for f in v.findings:
                console.print(
                    f"  {v.run_id[:12]} {f.kind}: {f.evidence}", highlight=False, soft_wrap=True
                )
            if v.note:
                console.print(
                    f"  {v.run_id[:12]} [yellow]not judged[/]: {v.note}",
                    highlight=False,
                    soft_wrap=True,
                )
    if failures:
        raise typer.Exit(2)


def _tag(client, v, written: dict[str, tuple[str, str]]) -> None:
    cause = v.diagnosis.cause if v.diagnosis else v.status  # healthy | no_data
    text = v.diagnosis.summary if v.diagnosis else v.status
    if written.get(v.run_id) == (text, cause):
        return
    client.set_tag(v.run_id, Tag.DIAGNOSIS, text[:5000])
    client.set_tag(v.run_id, Tag.CAUSE, cause)
    written[v.run_id] = (text, cause)


def _watch_table(verdicts, experiment: str, polls: int):
    from rich.table import Table

    t = Table(title=f"watch {experiment} — poll {polls} at {time.strftime('%H:%M:%S')}")
    for col in ("run", "verdict", "newest finding", "onset step", "cause"):
        t.add_column(col)
    for v in verdicts:
        newest = (
            max(v.findings, key=lambda f: (f.step is not None, f.step or 0)) if v.findings else None
        )
        style = {"failing": "red", "no_data": "yellow"}.get(v.status, "green")
        t.add_row(
            v.run_id[:12],
            f"[{style}]{v.status}[/]",
            newest.kind if newest else "-",
            str(newest.step) if newest and newest.step is not None else "-",
            v.diagnosis.cause if v.diagnosis else "-",
        )
    return t


def watch_cmd(
    experiment: Annotated[str, typer.Option("--experiment", "-e", help="The experiment to watch.")],
    interval: Annotated[
        float, typer.Option("--interval", help="Seconds between polls.", min=0.1)
    ] = 30.0,
    once: Annotated[bool, typer.Option("--once", help="One pass, then exit.")] = False,
    tag_runs: Annotated[
        bool, typer.Option("--tag-runs", help="Write workbench.diagnosis/cause tags.")
    ] = False,
    state: Annotated[
        Path | None,
        typer.Option("--state", help="Keep the incremental state in this file between runs."),
    ] = None,
    tracking_uri: TrackingUri = DEFAULT_TRACKING_URI,
    scaffold: ScaffoldPath = None,
    json_out: Json = False,
    fix: Annotated[
        bool, typer.Option("--fix", help="Fix failing runs (see `workbench fix`).")
    ] = False,
    repo: Annotated[Path, typer.Option("--repo", help="Training repo for --fix.")] = Path("."),
    home: Home = DEFAULT_HOME,
) -> None:
    """Poll an experiment incrementally and show every run's health (a live table)."""
    from rich.live import Live

    from workbench.doctor.watch import Watcher

    if fix:  # --repo is checked before any polling
        from workbench.runs.gitops import check_repo

        check_repo(repo)
    sc = _scaffold(scaffold)
    client = _client(tracking_uri)
    w = Watcher(client, experiment, sc)
    if state is not None:
        w.load(state)
    written: dict[str, tuple[str, str]] = {}

    fixed: set[str] = set()

    def fix_pass(vs) -> None:  # supervisor hook: workbench.cli.fix.fix_failing
        if fix:
            from workbench.cli.fix import fix_failing

            fix_failing(vs, tracking_uri=client.uri, repo=repo, home=home, done=fixed)

    def one_pass():
        vs = w.poll()
        fix_pass(vs)
        if tag_runs:
            for v in vs:
                _tag(client, v, written)
        if state is not None:
            w.save(state)
        return vs

    if once:
        prog, cb = _progress(json_out, f"watching {experiment}")
        with prog:
            vs = w.poll(progress=cb)
        fix_pass(vs)
        if tag_runs:
            for v in vs:
                _tag(client, v, written)
        if state is not None:
            w.save(state)
        if json_out:
            print_json([v.model_dump(mode="json") for v in vs])
        else:
            console.print(_watch_table(vs, experiment, 1))
        return
    polls = 0
    try:
        if json_out:
            while True:
                vs = one_pass()
                polls += 1
                print_json({"poll": polls, "runs": [v.model_dump(mode="json") for v in vs]})
                time.sleep(interval)
        with Live(console=console, refresh_per_second=2) as live:
            while True:
                vs = one_pass()
                polls += 1
                live.update(_watch_table(vs, experiment, polls))
                time.sleep(interval)
    except KeyboardInterrupt:
        return


def report_cmd(
    run_id: Annotated[str, typer.Argument(help="The run to report on.")],
    out: Annotated[Path, typer.Option("--out", help="Folder for report.md and the plots.")],
    log_to_mlflow: Annotated[
        bool, typer.Option("--log-to-mlflow", help="Attach the report to the run.")
    ] = False,
    tracking_uri: TrackingUri = DEFAULT_TRACKING_URI,
    scaffold: ScaffoldPath = None,
    json_out: Json = False,
) -> None:
    """Write a markdown report with plots of the implicated metrics, onset marked."""
    from workbench.doctor.report import write_report

    sc = _scaffold(scaffold)
    path, v = write_report(_client(tracking_uri), run_id, out, sc, log_to_mlflow=log_to_mlflow)
    if json_out:
        print_json({"report": str(path), "verdict": v.model_dump(mode="json")})
    else:
        console.print(f"report written to {path} ({v.status})", highlight=False)


def register(app: typer.Typer) -> None:
    app.command("diagnose")(diagnose_cmd)
    app.command("watch")(watch_cmd)
    app.command("report")(report_cmd)


__all__ = ["register", "print_table"]
