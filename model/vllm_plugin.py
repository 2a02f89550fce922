"""vLLM plugin: serve our checkpoints with vLLM's MiniMax-M2 implementation.

vLLM loads every ``vllm.general_plugins`` entry point in each of its processes; ours is
``m2_workbench = "model.vllm_plugin:register"`` (pyproject.toml). vLLM's own MiniMax-M2 model
reads the *released* per-expert layout (``block_sparse_moe.experts.E.{w1,w2,w3}``); we save the
fused transformers >= 5 layout (``mlp.experts.{gate_up_proj,down_proj}``, ``mlp.gate``). So
`register` puts a subclass in vLLM's registry under the same architecture name whose
``load_weights`` first translates fused names and tensors into per-expert ones
(`to_vllm_weights`, a pure function tested without vLLM). Released checkpoints pass through
unchanged, so overriding the built-in costs nothing.

This module imports without vLLM; the subclass is built only when vLLM asks for it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from pathlib import Path

import torch

ARCHITECTURE = "MiniMaxM2ForCausalLM"
CLASS_NAME = "WorkbenchMiniMaxM2ForCausalLM"
_FUSED = re.compile(r"^(?P<layer>.*\.layers\.\d+)\.mlp\.experts\.(?P<proj>gate_up_proj|down_proj)$")
_MLP = re.compile(
    r"^(?P<layer>.*\.layers\.\d+)\.mlp\.(?P<rest>gate\.weight|e_score_correction_bias)$"
)


def to_vllm_weights(
    weights: Iterable[tuple[str, torch.Tensor]],
) -> Iterator[tuple[str, torch.Tensor]]:
    """Fused transformers-layout MoE tensors -> the released per-expert names vLLM loads.

    ``gate_up_proj`` [E, 2I, H] -> ``experts.e.w1`` (gate rows) and ``w3`` (up rows);
    ``down_proj`` [E, H, I] -> ``experts.e.w2``; ``mlp.gate`` / the routing bias move under
    ``block_sparse_moe``. Everything else is passed through.
    """
    for name, tensor in weights:
        m = _FUSED.match(name)
        if m:
            base = f"{m['layer']}.block_sparse_moe.experts"
            if m["proj"] == "gate_up_proj":
                inter = tensor.shape[1] // 2
                for e in range(tensor.shape[0]):
                    yield f"{base}.{e}.w1.weight", tensor[e, :inter]
                    yield f"{base}.{e}.w3.weight", tensor[e, inter:]
            else:
                for e in range(tensor.shape[0]):
                    yield f"{base}.{e}.w2.weight", tensor[e]
            continue
        m = _MLP.match(name)
        if m:
            yield f"{m['layer']}.block_sparse_moe.{m['rest']}", tensor
            continue
        yield name, tensor


def write_chat_template(checkpoint: str | Path) -> Path:
    """Write our MiniMax-M2 chat template next to a checkpoint (for ``--chat-template``)."""
    from model.chat import CHAT_TEMPLATE
    from model.files import atomic_write_text

    return atomic_write_text(Path(checkpoint) / "chat_template.jinja", CHAT_TEMPLATE + "\n")


def _build_class():
    from vllm.model_executor.models.minimax_m2 import MiniMaxM2ForCausalLM as VllmMiniMaxM2

    class WorkbenchMiniMaxM2ForCausalLM(VllmMiniMaxM2):
        """vLLM's MiniMax-M2 that also loads the fused transformers expert layout."""

        def load_weights(self, weights):
            return super().load_weights(to_vllm_weights(weights))

    return WorkbenchMiniMaxM2ForCausalLM


def __getattr__(name: str):
    # vLLM resolves "model.vllm_plugin:WorkbenchMiniMaxM2ForCausalLM" lazily, in its workers.
    if name == CLASS_NAME:
        cls = _build_class()
        globals()[name] = cls
        return cls
    raise AttributeError(name)


def register() -> bool:
    """The entry point. Returns False (and does nothing) where vLLM is not installed."""
    try:
        from vllm import ModelRegistry
    except ImportError:
        return False
    ModelRegistry.register_model(ARCHITECTURE, f"{__name__}:{CLASS_NAME}")
    return True
