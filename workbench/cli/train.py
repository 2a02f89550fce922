"""`workbench train lm|digits --config FILE`: one MLflow-tracked training run."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from workbench.cli.options import DEFAULT_TRACKING_URI, Json, TrackingUri
from workbench.cli.output import err_console, print_json
from workbench.errors import BadInputError, WorkbenchError

train_app = typer.Typer(help="Run MLflow-tracked training (with optional fault injection).")

ConfigOpt = Annotated[
    Path, typer.Option("--config", "-c", help="Training config (YAML).", show_default=False)
]
TagOpt = Annotated[
    list[str] | None,
    typer.Option("--tag", help="Extra run tag KEY=VALUE (repeatable).", show_default=False),
]
NoSysOpt = Annotated[
    bool, typer.Option("--no-system-metrics", help="Do not log MLflow system metrics.")
]


def _parse_tags(tags: list[str] | None) -> dict[str, str]:
    out = {}
    for item in tags or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise BadInputError(f"--tag must be KEY=VALUE, got {item!r}")
        out[key] = value
    return out


def _run(
    program: str,
    config: Path,
    tracking_uri: str | None,
    as_json: bool,
    sysm: bool,
    tags: list[str] | None,
) -> None:
    from trainer.config import ConfigError
    from trainer.tracking import TrackingError

    extra_tags = _parse_tags(tags)
    try:
        if program == "lm":
            from trainer.lm import main as run_main
        else:
            from trainer.digits import main as run_main
        result = run_main(
            config, tracking_uri=tracking_uri, system_metrics=sysm, extra_tags=extra_tags
        )
    except ConfigError as exc:
        raise BadInputError(str(exc)) from None
    except TrackingError as exc:
        raise WorkbenchError(str(exc)) from None
    if as_json:
        print_json({"run_id": result.run_id, "status": result.status, "error": result.error})
    else:
        err_console.print(f"run {result.run_id}: {result.status}")
    if result.status == "KILLED":
        raise WorkbenchError(f"run {result.run_id} KILLED", exit_code=130)
    if result.status != "FINISHED":
        raise WorkbenchError(f"run {result.run_id} {result.status}: {result.error}")


PROGRAMS = {
    "lm": "Train the MoE language model on the shipped corpus.",
    "digits": "Train a small MLP/CNN on scikit-learn's digits (HF-Trainer-style metric names).",
}


def _program_command(program: str, doc: str):
    def command(
        config: ConfigOpt,
        tracking_uri: TrackingUri = DEFAULT_TRACKING_URI,
        as_json: Json = False,
        no_system_metrics: NoSysOpt = False,
        tag: TagOpt = None,
    ) -> None:
        _run(program, config, tracking_uri, as_json, not no_system_metrics, tag)

    command.__doc__ = doc
    command.__name__ = f"train_{program}"
    return command


for _program, _doc in PROGRAMS.items():  # the two programs take exactly the same options
    train_app.command(_program)(_program_command(_program, _doc))


def register(app: typer.Typer) -> None:
    app.add_typer(train_app, name="train")
