"""Backend choice shared by every kernel entry point.

``auto`` means: Triton on CUDA, the fastest correct PyTorch path elsewhere. The environment
variable ``M2_KERNEL_BACKEND`` (``reference`` | ``torch`` | ``triton``) forces a backend for
every call that asked for ``auto`` — a switch for debugging and benchmarks that needs no code.
"""

from __future__ import annotations

import os

import torch

BACKENDS = ("auto", "reference", "torch", "triton")
ENV_VAR = "M2_KERNEL_BACKEND"


def triton_usable(device: torch.device) -> bool:
    """Triton runs on CUDA tensors, or anywhere under the interpreter (TRITON_INTERPRET=1)."""
    if os.environ.get("TRITON_INTERPRET") == "1":
        return True
    return device.type == "cuda"


def resolve_backend(backend: str, device: torch.device, kind: str) -> str:
    """Turn ``backend`` into one of reference/torch/triton for a tensor on ``device``."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown {kind} backend {backend!r}; expected one of {BACKENDS}")
    if backend == "auto":
        forced = os.environ.get(ENV_VAR, "").strip()
        if forced:
            if forced not in BACKENDS[1:]:
                raise ValueError(f"{ENV_VAR}={forced!r}; expected reference, torch or triton")
            backend = forced
        else:
            backend = "triton" if device.type == "cuda" else "torch"
    if backend == "triton" and not triton_usable(device):
        raise ValueError(
            f"{kind} backend 'triton' needs a CUDA tensor (or TRITON_INTERPRET=1 on the CPU); "
            f"got a tensor on {device}"
        )
    return backend
