"""MiniMax-M2 in PyTorch: config + presets, modeling, checkpoint I/O, generation, tokenizer."""

from model.config import MiniMaxM2Config
from model.modeling import KVCache, MiniMaxM2ForCausalLM, router_bias_update

__all__ = ["KVCache", "MiniMaxM2Config", "MiniMaxM2ForCausalLM", "router_bias_update"]
