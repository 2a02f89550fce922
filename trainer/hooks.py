"""A repo's own code, called by the training loop at fixed points (the config's ``hooks``).

Real training repos carry code of their own next to the framework they run on: a data
transform, a custom init, a loss weighting, a callback after ``backward()`` (HF
``TrainerCallback``, Lightning ``on_after_backward``). ``hooks: src/pipeline.py`` names such a
file (relative to the working directory, like ``data.corpus``); it may define any of

  ``on_batch(index, batch) -> batch``  inside the data read (so ``data.validate`` sees it);
                                      ``batch`` is a (B, T) token tensor (lm) or ``(x, y)``
  ``on_init(model) -> None``          once, after the model is built
  ``loss_weight(step, batch) -> float`` multiplies the step's loss before ``backward()``
  ``on_after_backward(step, model) -> None`` between ``backward()`` and the optimizer step

and a missing function is the identity. Whatever the file does really runs — a bug in it is a
bug of the repo, visible to (and fixable by) whoever may edit the repo.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

from trainer.config import ConfigError


class RepoHooks:
    """The hook functions of one repo file (no file: every hook is a no-op)."""

    def __init__(self, module: ModuleType | None = None) -> None:
        self.module = module

    def _fn(self, name: str) -> Any:
        return getattr(self.module, name, None) if self.module is not None else None

    def on_batch(self, index: int, batch: Any) -> Any:
        fn = self._fn("on_batch")
        return batch if fn is None else fn(index, batch)

    def on_init(self, model: Any) -> None:
        if fn := self._fn("on_init"):
            fn(model)

    def loss_weight(self, step: int, batch: Any) -> float:
        fn = self._fn("loss_weight")
        return 1.0 if fn is None else float(fn(step, batch))

    def on_after_backward(self, step: int, model: Any) -> None:
        if fn := self._fn("on_after_backward"):
            fn(step, model)


def load_hooks(path: str | None) -> RepoHooks:
    """Import the repo's hook file; a missing file is a config error (one line)."""
    if path is None:
        return RepoHooks()
    file = Path(path)
    if not file.is_file():
        raise ConfigError(f"hooks file not found: {path}")
    spec = importlib.util.spec_from_file_location(f"repo_hooks_{abs(hash(file))}", file)
    if spec is None or spec.loader is None:
        raise ConfigError(f"hooks file is not a Python module: {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # tracebacks and pickling find it like any module
    spec.loader.exec_module(module)
    return RepoHooks(module)
