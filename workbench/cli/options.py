"""The options every command shares, declared once as ``Annotated`` aliases.

``--home`` (the workbench state folder: checkpoints, review queue, archive, trajectories)
defaults to ``$WORKBENCH_HOME``, else ``.workbench``; ``--tracking-uri`` to
``$MLFLOW_TRACKING_URI``, else ``sqlite:///mlflow.db``; ``--json`` prints JSON for scripts
instead of the table or text meant for people.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from trainer.tracking import DEFAULT_TRACKING_URI
from workbench import DEFAULT_HOME

__all__ = ["DEFAULT_HOME", "DEFAULT_TRACKING_URI", "Home", "Json", "LogTo", "TrackingUri"]

Home = Annotated[
    Path,
    typer.Option(
        "--home",
        envvar="WORKBENCH_HOME",
        help="Workbench state folder (checkpoints, review queue, archive).",
    ),
]
TrackingUri = Annotated[
    str, typer.Option("--tracking-uri", envvar="MLFLOW_TRACKING_URI", help="MLflow tracking URI.")
]
# A run that logs only when asked (``workbench train rl``): the same flag, no default store.
LogTo = Annotated[
    str | None,
    typer.Option("--tracking-uri", help="Log to this MLflow tracking URI (default: no logging)."),
]
Json = Annotated[
    bool, typer.Option("--json", help="Print JSON (for scripts) instead of a table or text.")
]
