"""MiniMax-M2 configuration: a frozen, validated dataclass with presets.

Field names follow transformers' ``MiniMaxM2Config`` (HF ``config.json``), so a config
written by us loads in transformers and the other way round.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

MOE_BACKENDS = ("reference", "grouped", "triton", "auto")

# Token ids of the shipped tiny tokenizer (model/data/tokenizer.json): special tokens come first.
TINY_BOS, TINY_EOS, TINY_PAD = 0, 1, 3


@dataclass(frozen=True)
class MiniMaxM2Config:
    model_type: str = field(default="minimax_m2", init=False)
    vocab_size: int = 200064
    hidden_size: int = 3072
    intermediate_size: int = 1536  # per expert
    num_hidden_layers: int = 62
    num_attention_heads: int = 48
    num_key_value_heads: int = 8
    head_dim: int = 128
    rotary_dim: int = 64  # partial RoPE: the first rotary_dim dims of each head
    hidden_act: str = "silu"
    max_position_embeddings: int = 196608
    initializer_range: float = 0.02
    rms_norm_eps: float = 1e-6
    rope_theta: float = 5e6
    bos_token_id: int | None = 200034
    eos_token_id: int | None = 200020
    pad_token_id: int | None = None
    tie_word_embeddings: bool = False
    num_local_experts: int = 256
    num_experts_per_tok: int = 8
    scoring_func: str = "sigmoid"
    use_routing_bias: bool = True
    use_qk_norm: bool = True
    qk_norm_type: str = "per_layer"  # one RMSNorm over all heads together
    # Multi-token prediction (DeepSeek-V3 style): present in the config, built only if use_mtp.
    num_mtp_modules: int = 3
    mtp_transformer_layers: int = 1
    use_mtp: bool = False
    mtp_loss_weight: float = 0.3
    # Ours (not in HF): which expert path the MoE layers use.
    moe_backend: str = "auto"

    def __post_init__(self) -> None:
        self.validate()

    # ------------------------------------------------------------------ validation
    def validate(self) -> None:
        def need(cond: bool, msg: str) -> None:
            if not cond:
                raise ValueError(f"invalid MiniMaxM2Config: {msg}")

        for name in (
            "vocab_size",
            "hidden_size",
            "intermediate_size",
            "num_hidden_layers",
            "num_attention_heads",
            "num_key_value_heads",
            "head_dim",
            "num_local_experts",
            "num_experts_per_tok",
            "max_position_embeddings",
        ):
            value = getattr(self, name)
            need(
                isinstance(value, int) and value > 0,
                f"{name} must be a positive int, got {value!r}",
            )
        need(
            self.num_attention_heads % self.num_key_value_heads == 0,
            f"num_key_value_heads ({self.num_key_value_heads}) must divide "
            f"num_attention_heads ({self.num_attention_heads})",
        )
        need(
            self.num_experts_per_tok <= self.num_local_experts,
            f"num_experts_per_tok ({self.num_experts_per_tok}) must be <= "
            f"num_local_experts ({self.num_local_experts})",
        )
        need(
            0 < self.rotary_dim <= self.head_dim and self.rotary_dim % 2 == 0,
            f"rotary_dim ({self.rotary_dim}) must be even and in (0, head_dim={self.head_dim}]",
        )
        need(self.head_dim % 2 == 0, f"head_dim ({self.head_dim}) must be even")
        need(self.rms_norm_eps > 0, "rms_norm_eps must be > 0")
        need(self.rope_theta > 0, "rope_theta must be > 0")
        need(self.hidden_act == "silu", f"hidden_act must be 'silu', got {self.hidden_act!r}")
        need(self.scoring_func == "sigmoid", "scoring_func must be 'sigmoid'")
        need(not self.tie_word_embeddings, "MiniMax-M2 has untied embeddings")
        need(self.use_qk_norm, "MiniMax-M2 uses QK-norm (use_qk_norm must be true)")
        need(self.qk_norm_type == "per_layer", "qk_norm_type must be 'per_layer'")
        need(self.num_mtp_modules >= 0, "num_mtp_modules must be >= 0")
        need(self.mtp_transformer_layers == 1, "mtp_transformer_layers must be 1")
        need(self.moe_backend in MOE_BACKENDS, f"moe_backend must be one of {MOE_BACKENDS}")
        for name in ("bos_token_id", "eos_token_id", "pad_token_id"):
            tid = getattr(self, name)
            need(
                tid is None or (isinstance(tid, int) and 0 <= tid < self.vocab_size),
                f"{name} ({tid}) must be in [0, vocab_size={self.vocab_size})",
            )

    # ------------------------------------------------------------------ derived
    @property
    def q_dim(self) -> int:
        return self.num_attention_heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        return self.num_key_value_heads * self.head_dim

    @property
    def partial_rotary_factor(self) -> float:
        return self.rotary_dim / self.head_dim

    def replace(self, **changes: Any) -> MiniMaxM2Config:
        return dataclasses.replace(self, **changes)

    # ------------------------------------------------------------------ presets
    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> MiniMaxM2Config:
        if name not in PRESETS:
            raise ValueError(f"unknown preset {name!r} (known: {', '.join(PRESETS)})")
        return cls(**{**PRESETS[name], **overrides})

    # ------------------------------------------------------------------ HF config.json
    def to_dict(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        d["architectures"] = ["MiniMaxM2ForCausalLM"]
        # transformers >= 5 expresses RoPE through rope_parameters; keep the legacy fields too.
        d["rope_parameters"] = {
            "rope_type": "default",
            "rope_theta": self.rope_theta,
            "partial_rotary_factor": self.partial_rotary_factor,
        }
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MiniMaxM2Config:
        data = dict(data)
        if data.get("model_type", "minimax_m2") != "minimax_m2":
            raise ValueError(f"model_type must be 'minimax_m2', got {data.get('model_type')!r}")
        rope = data.get("rope_parameters") or {}
        if "rope_theta" not in data and "rope_theta" in rope:
            data["rope_theta"] = rope["rope_theta"]
        head_dim = data.get("head_dim") or (
            data.get("hidden_size", 3072) // data.get("num_attention_heads", 48)
        )
        data["head_dim"] = head_dim
        if "rotary_dim" not in data:
            factor = rope.get("partial_rotary_factor", data.get("partial_rotary_factor", 1.0))
            data["rotary_dim"] = int(head_dim * factor)
        if isinstance(data.get("eos_token_id"), list):
            data["eos_token_id"] = data["eos_token_id"][0] if data["eos_token_id"] else None
        if "num_experts" in data and "num_local_experts" not in data:
            data["num_local_experts"] = data["num_experts"]
        known = {f.name for f in dataclasses.fields(cls) if f.init}
        kwargs = {k: v for k, v in data.items() if k in known}
        # HF writes floats like 5000000 as ints; normalise.
        for k in ("rope_theta", "rms_norm_eps", "initializer_range", "mtp_loss_weight"):
            if k in kwargs and kwargs[k] is not None:
                kwargs[k] = float(kwargs[k])
        return cls(**kwargs)

    def to_json_string(self) -> str:
        """config.json's text (model.checkpoint writes it beside the weights)."""
        return json.dumps(self.to_dict(), indent=2) + "\n"

    @classmethod
    def load(cls, path: str | Path) -> MiniMaxM2Config:
        return cls.from_dict(json.loads(Path(path).read_text()))


PRESETS: dict[str, dict[str, Any]] = {
    # The released model: 62 layers, 256 experts, top-8 (229.9B total, 9.8B activated).
    "minimax-m2": {},
    # ~100M total parameters: a real MoE that still runs on a laptop CPU.
    "small": dict(
        vocab_size=8192,
        hidden_size=512,
        intermediate_size=640,
        num_hidden_layers=6,
        num_attention_heads=8,
        num_key_value_heads=2,
        head_dim=64,
        rotary_dim=32,
        num_local_experts=16,
        num_experts_per_tok=2,
        max_position_embeddings=4096,
        bos_token_id=TINY_BOS,
        eos_token_id=TINY_EOS,
        pad_token_id=TINY_PAD,
        num_mtp_modules=1,
    ),
    # A few million parameters: trains on the shipped corpus on a CPU in seconds.
    "tiny": dict(
        vocab_size=2048,
        hidden_size=128,
        intermediate_size=192,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=32,
        rotary_dim=16,
        num_local_experts=8,
        num_experts_per_tok=2,
        max_position_embeddings=2048,
        bos_token_id=TINY_BOS,
        eos_token_id=TINY_EOS,
        pad_token_id=TINY_PAD,
        num_mtp_modules=1,
    ),
}
# The supervisor's policy (workbench.rl.policy): the tiny shape (~3M parameters, trains on 2
# CPU cores in minutes) with a context that holds the longest fix episode with headroom (about
# 2,200 tokens, docs/rl.md) and no MTP head. vocab_size is the policy tokenizer's, set when a
# policy is created.
PRESETS["policy"] = {**PRESETS["tiny"], "vocab_size": 4096, "max_position_embeddings": 4096,
                     "use_mtp": False}  # fmt: skip
