"""Kernel tests: Triton kernels run under the interpreter when there is no GPU.

TRITON_INTERPRET must be set before a kernel module is imported (the @triton.jit decorator reads
it), and kernels/ imports its Triton modules lazily, so setting it here is early enough.
"""

from __future__ import annotations

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
