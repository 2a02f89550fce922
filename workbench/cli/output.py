"""All CLI output goes through here: a rich table/text for people, or ``--json`` for scripts."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable, Sequence
from typing import Any, NoReturn

import typer
from rich.console import Console
from rich.table import Table

console = Console()
err_console = Console(stderr=True)


def _default(obj: Any) -> Any:
    if hasattr(obj, "model_dump"):
        return obj.model_dump()
    if hasattr(obj, "__dataclass_fields__"):
        import dataclasses

        return dataclasses.asdict(obj)
    if hasattr(obj, "tolist"):
        return obj.tolist()
    return str(obj)


def print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, default=_default, allow_nan=False) + "\n")
    sys.stdout.flush()


def print_table(title: str, columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    table = Table(title=title)
    for col in columns:
        table.add_column(col)
    for row in rows:
        table.add_row(*[str(v) for v in row])
    console.print(table)


def print_diff(diff: str) -> None:
    """A diff, never cut: coloured and wrapped on a terminal, the exact text when piped."""
    if not console.is_terminal:
        sys.stdout.write(diff if diff.endswith("\n") else diff + "\n")
        sys.stdout.flush()
        return
    from rich.syntax import Syntax

    console.print(Syntax(diff, "diff", theme="ansi_dark", word_wrap=True))


def cancelled() -> NoReturn:
    """A person answered no: say so, exit 1 (130 is Ctrl-C's code, not a "no")."""
    err_console.print("cancelled", highlight=False)
    raise typer.Exit(1)


def error(message: str) -> None:
    # One line, no traceback: the message is already written for a person.
    first = str(message).strip().splitlines()[0] if str(message).strip() else "error"
    err_console.print(f"[bold red]error:[/] {first}", highlight=False, soft_wrap=True)
