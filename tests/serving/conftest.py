"""Serving tests run many tiny ops: one intra-op thread each (fixtures: tests/model_fixtures.py)."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread(torch_one_thread):
    yield
