"""RL tests run many tiny ops: one intra-op thread is much faster than two on a shared CPU
(the test runner already uses one process per core)."""

from __future__ import annotations

import sys
from pathlib import Path

import torch

torch.set_num_threads(1)
sys.path.insert(0, str(Path(__file__).parent))  # rl_testlib
