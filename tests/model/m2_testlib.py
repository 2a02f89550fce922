"""Helpers shared by the model tests (a uniquely named module: tests/ has no packages)."""

from __future__ import annotations

from model import MiniMaxM2Config

# Small enough to be fast, big enough to exercise GQA, partial RoPE and top-k routing.
TINY_HF = dict(
    vocab_size=256,
    hidden_size=64,
    intermediate_size=48,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=16,
    num_local_experts=8,
    num_experts_per_tok=2,
    rotary_dim=8,
    bos_token_id=0,
    eos_token_id=1,
)


def tiny_config(**overrides) -> MiniMaxM2Config:
    return MiniMaxM2Config(**{**TINY_HF, **overrides})
