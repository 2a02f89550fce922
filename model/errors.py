"""User-facing errors, defined at the bottom of the dependency chain.

``model`` may not import ``workbench`` (dependencies point one way), yet a corrupt checkpoint
must reach the CLI as the same one-line error as any other bad input. So the base classes
live here and ``workbench.errors`` re-exports them.
"""

from __future__ import annotations


class WorkbenchError(Exception):
    """A user-facing error: the message is printed as one line, exit code ``exit_code``."""

    exit_code = 1

    def __init__(self, message: str, exit_code: int | None = None) -> None:
        super().__init__(message)
        if exit_code is not None:
            self.exit_code = exit_code


class BadInputError(WorkbenchError):
    """Invalid user input (config, ids, paths, checkpoints): exit code 2."""

    exit_code = 2
