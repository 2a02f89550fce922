"""`workbench suite …`: build a benchmark suite (make) and score the doctor on it (eval)."""

from __future__ import annotations

import importlib

import typer

suite_app = typer.Typer(help="Build and evaluate benchmark suites.", no_args_is_help=True)

# Each module defines ``add(suite_app)`` with its command(s).
_PARTS = ["workbench.cli.suite_make", "workbench.cli.suite_eval"]


def register(app: typer.Typer) -> None:
    for name in _PARTS:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name == name:
                continue
            raise
        module.add(suite_app)
    app.add_typer(suite_app, name="suite")
