"""Errors that the CLI turns into one clear line and a non-zero exit.

The classes are defined in ``model.errors`` so that lower layers (model, trainer) raise the
same errors without importing ``workbench``.
"""

from __future__ import annotations

from model.errors import BadInputError, WorkbenchError

__all__ = ["BadInputError", "WorkbenchError"]
