"""MiniMax-M2 in PyTorch: config + presets, modeling, checkpoint I/O, generation, tokenizer.

The names below load on first use, so a light module (``model.files``) imports without torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from model.config import MiniMaxM2Config
    from model.modeling import KVCache, MiniMaxM2ForCausalLM, router_bias_update

_WHERE = {
    "KVCache": "model.modeling",
    "MiniMaxM2Config": "model.config",
    "MiniMaxM2ForCausalLM": "model.modeling",
    "router_bias_update": "model.modeling",
}
__all__ = ["KVCache", "MiniMaxM2Config", "MiniMaxM2ForCausalLM", "router_bias_update"]


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(importlib.import_module(_WHERE[name]), name)
    raise AttributeError(f"module 'model' has no attribute {name!r}")
