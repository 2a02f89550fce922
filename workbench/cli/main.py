"""The ``workbench`` console script: wires one sub-app per noun and maps errors to one line."""

from __future__ import annotations

import importlib
import sys

import typer

from workbench import __version__
from workbench.cli.output import error
from workbench.errors import WorkbenchError

app = typer.Typer(
    name="workbench",
    help="m2-workbench: diagnose, fix and learn from ML training runs.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

# Each module defines ``register(app)``; listed here so the root only wires sub-apps.
COMMAND_MODULES = [
    "model",
    "train",
    "rl",  # `train rl`: after `train`, whose sub-app it joins
    "suite",
    "doctor",
    "fix",
    "review",
    "serve",
    "evolve",
    "mle",
    "bench",
    "demo",
]


def _version(value: bool) -> None:
    if value:
        typer.echo(f"workbench {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """m2-workbench: diagnose, fix and learn from ML training runs."""


def _register_all() -> None:
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(f"workbench.cli.{name}")
        except ModuleNotFoundError as exc:
            # Only a command module that does not exist yet is tolerated, never a broken import.
            if exc.name == f"workbench.cli.{name}":
                continue
            raise
        module.register(app)


_register_all()


def main() -> None:
    try:
        # Without standalone mode click *returns* a command's `typer.Exit(code)` as its exit
        # code instead of raising it: pass it on, or `diagnose MISSING GOOD` would exit 0.
        code = app(standalone_mode=False)
        if isinstance(code, int) and not isinstance(code, bool) and code:
            sys.exit(code)
    except WorkbenchError as exc:
        error(str(exc))
        sys.exit(exc.exit_code)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except typer.Abort:  # Ctrl-C or end of input at a prompt (a typed "no" is `cancelled`)
        error("aborted")
        sys.exit(130)
    except KeyboardInterrupt:
        error("interrupted")
        sys.exit(130)
    except Exception as exc:  # usage errors and anything unexpected: still one line
        if hasattr(exc, "show") and hasattr(exc, "exit_code"):  # click/typer usage errors
            if type(exc).__name__ == "NoArgsIsHelpError":
                exc.show()
                sys.exit(0)
            exc.show()
            sys.exit(exc.exit_code)
        error(f"{type(exc).__name__}: {exc}")
        sys.exit(1)


if __name__ == "__main__":
    main()
