"""``workbench mle prepare | run | eval | grade``: MLE-Bench-style autonomous experiments."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from workbench.cli.options import DEFAULT_TRACKING_URI, Json, TrackingUri
from workbench.cli.output import console, err_console, print_json, print_table
from workbench.errors import BadInputError
from workbench.mle.budget import EVAL_STEPS, EVAL_TIME_LIMIT_S

DataDir = Annotated[
    Path | None,
    typer.Option(
        "--data-dir", help="Prepared data (default: $WORKBENCH_MLE_DATA or .workbench/mle/data)."
    ),
]
NoTrack = Annotated[bool, typer.Option("--no-track", help="Do not log runs to MLflow.")]
ScaffoldPath = Annotated[
    Path | None,
    typer.Option("--scaffold", help="A scaffold folder (or mle.yaml) instead of the packaged one."),
]
Brain = Annotated[str, typer.Option("--brain", help="rules (default), openai or local.")]
BaseUrl = Annotated[
    str | None, typer.Option("--base-url", help="OpenAI-compatible endpoint (--brain openai).")
]
Model = Annotated[
    str | None, typer.Option("--model", help="Model name (openai) or checkpoint dir (local).")
]


def _progress(json_out: bool, label: str, total: int):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    prog = Progress(
        TextColumn(label),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.description}"),
        console=err_console if json_out else console,
        transient=True,
    )
    task = prog.add_task("", total=total)
    return prog, task


def _competition_error(fn):
    from experiments.mle.competition import CompetitionError

    def wrapped(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except CompetitionError as exc:
            raise BadInputError(str(exc)) from None

    return wrapped


def _brain_opts(base_url: str | None, model: str | None) -> dict:
    return {k: v for k, v in {"base_url": base_url, "model": model}.items() if v}


def prepare_cmd(
    tasks: Annotated[
        str, typer.Argument(help="lite, a task id, a competition dir or a folder of them.")
    ] = "lite",
    data_dir: DataDir = None,
    force: Annotated[bool, typer.Option("--force", help="Rebuild even if prepared.")] = False,
    json_out: Json = False,
) -> None:
    """Build competitions' public/private data locally (no network for the built-in tasks)."""
    from experiments.mle.competition import load_competition, prepare, task_dirs

    rows = []
    for d in _competition_error(task_dirs)(tasks):
        comp = _competition_error(load_competition)(d, data_dir)
        _competition_error(prepare)(comp, force=force)
        rows.append(
            {"task": comp.id, "public": str(comp.public_dir), "private": str(comp.private_dir)}
        )
    if json_out:
        print_json(rows)
    else:
        print_table(
            "prepared",
            ["task", "public", "private"],
            [(r["task"], r["public"], r["private"]) for r in rows],
        )


def run_cmd(
    task: Annotated[str, typer.Argument(help="A competition dir or a built-in task id.")],
    data_dir: DataDir = None,
    brain: Brain = "rules",
    steps: Annotated[
        int | None, typer.Option("--steps", min=1, help="Nodes to try (default: scaffold).")
    ] = None,
    time_limit: Annotated[
        float | None, typer.Option("--time-limit", min=1, help="Wall-clock seconds for the search.")
    ] = None,
    seed: Annotated[int, typer.Option("--seed")] = 0,
    scaffold: ScaffoldPath = None,
    tracking_uri: TrackingUri = DEFAULT_TRACKING_URI,
    no_track: NoTrack = False,
    out: Annotated[Path | None, typer.Option("--out", help="Run directory.")] = None,
    base_url: BaseUrl = None,
    model: Model = None,
    json_out: Json = False,
) -> None:
    """Search for a solution (AIDE-style tree of sandboxed scripts); grade the best one."""
    from workbench.mle.agent import run_task
    from workbench.mle.config import load_mle_scaffold

    sc = load_mle_scaffold(scaffold)
    total = steps or sc.search.steps
    prog, bar = _progress(json_out, f"mle run {task}", total)
    with prog:

        def on_node(n) -> None:
            score = f"{n.score:.5g}" if n.score is not None else n.status
            prog.update(bar, advance=1, description=f"node {n.id} {n.stage}: {score}")

        res = run_task(
            task,
            data_dir=data_dir,
            brain=brain,
            steps=steps,
            time_limit_s=time_limit,
            seed=seed,
            scaffold=sc,
            tracking_uri=tracking_uri,
            track=not no_track,
            out_dir=out,
            brain_opts=_brain_opts(base_url, model),
            on_node=on_node,
        )
    if json_out:
        print_json(res.to_dict())
        return
    print_table(
        f"mle run {res.task}",
        ["score", "medal", "validation", "nodes (buggy)", "time s", "run dir"],
        [
            (
                res.score,
                res.medal,
                res.validation_score,
                f"{res.nodes} ({res.buggy_nodes})",
                res.wall_s,
                res.run_dir,
            )
        ],
    )
    gaps = ", ".join(res.sandbox_uncovered)
    console.print(
        f"sandbox: {res.hiding}" + (f" (fallback; not covered: {gaps})" if gaps else ""),
        highlight=False,
        soft_wrap=True,
    )
    if res.grade_error:
        console.print(f"[yellow]grading:[/] {res.grade_error}")


def grade_cmd(
    task: Annotated[str, typer.Argument(help="A competition dir or a built-in task id.")],
    submission: Annotated[Path, typer.Argument(help="The submission CSV.")],
    data_dir: DataDir = None,
    json_out: Json = False,
) -> None:
    """Grade a submission CSV against the private answers and the leaderboard's medals."""
    from experiments.mle.competition import load_competition

    comp = _competition_error(load_competition)(task, data_dir)
    report = _competition_error(comp.grade)(submission)
    if json_out:
        print_json(report.to_dict())
        return
    print_table(
        f"grade {comp.id}",
        ["score", "medal", "gold ≥", "silver ≥", "bronze ≥", "median", "lower better", "teams"],
        [
            (
                report.score,
                report.medal,
                report.gold_threshold,
                report.silver_threshold,
                report.bronze_threshold,
                report.median_threshold,
                report.is_lower_better,
                report.num_teams,
            )
        ],
    )
    if report.error:
        console.print(f"[yellow]{report.error}[/]")


def eval_cmd(
    tasks: Annotated[
        str,
        typer.Option(
            "--tasks",
            help="lite, tune, heldout, a folder of competitions, or a competition dir.",
        ),
    ] = "lite",
    seeds: Annotated[int, typer.Option("--seeds", min=1)] = 3,
    data_dir: DataDir = None,
    brain: Brain = "rules",
    steps: Annotated[
        int | None, typer.Option("--steps", min=1, help="Nodes per run.")
    ] = EVAL_STEPS,
    time_limit: Annotated[
        float | None, typer.Option("--time-limit", min=1, help="Seconds per run.")
    ] = EVAL_TIME_LIMIT_S,
    workers: Annotated[int, typer.Option("--workers", min=1, help="Runs at once.")] = 2,
    scaffold: ScaffoldPath = None,
    tracking_uri: TrackingUri = DEFAULT_TRACKING_URI,
    no_track: NoTrack = False,
    base_url: BaseUrl = None,
    model: Model = None,
    json_out: Json = False,
) -> None:
    """Run the search on every task × seed; any-medal % (mean ± SEM over seeds) and per-task scores."""
    from experiments.mle.competition import task_dirs
    from workbench.mle.evaluate import evaluate

    n_runs = len(_competition_error(task_dirs)(tasks)) * seeds
    prog, bar = _progress(json_out, "mle eval", n_runs)
    with prog:
        rep = evaluate(
            scaffold,
            tasks,
            seeds,
            data_dir=data_dir,
            brain=brain,
            steps=steps,
            time_limit_s=time_limit,
            workers=workers,
            tracking_uri=tracking_uri,
            track=not no_track,
            brain_opts=_brain_opts(base_url, model),
            on_run=lambda r: prog.update(
                bar, advance=1, description=f"{r.task} s{r.seed}: {r.medal}"
            ),
        )
    if json_out:
        print_json(rep.to_dict())
        return
    rows = []
    for t in rep.per_task():
        scores = ", ".join("-" if s is None else f"{s:.4g}" for s in t["scores"])
        rows.append(
            (
                t["task"],
                scores,
                ", ".join(t["medals"]),
                f"{100 * t['any_medal_rate']:.0f}%",
                f"{t['mean_percentile']:.2f}",
            )
        )
    print_table("mle eval", ["task", "scores per seed", "medals", "any medal", "percentile"], rows)
    console.print(
        f"any medal: {rep.any_medal_pct:.1f} ± {rep.any_medal_sem:.1f} %, gold: {rep.gold_pct:.1f} "
        f"± {rep.gold_sem:.1f} % over {len(rep.seeds)} seeds ({rep.wall_s:.0f}s)"
    )


def register(app: typer.Typer) -> None:
    mle = typer.Typer(
        help="MLE-Bench-style autonomous experiments: prepare, run, eval, grade.",
        no_args_is_help=True,
    )
    mle.command("prepare")(prepare_cmd)
    mle.command("run")(run_cmd)
    mle.command("eval")(eval_cmd)
    mle.command("grade")(grade_cmd)
    app.add_typer(mle, name="mle")
