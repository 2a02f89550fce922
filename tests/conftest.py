"""Shared pytest set-up: GPU-marked tests run only where CUDA is present."""

from __future__ import annotations

import pytest
import torch

# Tiny checkpoints and a served model, used by tests in several packages.
pytest_plugins = ["tests.model_fixtures"]


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs CUDA (no GPU on this machine)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)
