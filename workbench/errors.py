"""Errors that the CLI turns into one clear line and a non-zero exit."""

from __future__ import annotations


class WorkbenchError(Exception):
    """A user-facing error: the message is printed as one line, exit code ``exit_code``."""

    exit_code = 1

    def __init__(self, message: str, exit_code: int | None = None) -> None:
        super().__init__(message)
        if exit_code is not None:
            self.exit_code = exit_code


class BadInputError(WorkbenchError):
    """Invalid user input (config, ids, paths): exit code 2."""

    exit_code = 2
