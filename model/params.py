"""Analytic parameter counts of a MiniMax-M2 config (checked against a meta-device instance).

- ``total_params``: every parameter of the model without MTP modules (embedding and LM head
  counted once each, since they are untied).
- ``active_params``: what one token touches: embedding + LM head + attention + norms + router +
  top-k of the experts in every layer.
- ``active_params_non_embedding``: ``active_params`` without the embedding and the LM head
  (the figure usually quoted as "activated parameters", 9.8B for MiniMax-M2).
- ``mtp_params``: the MTP modules (their LM head and embedding are shared, so not counted).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from model.config import MiniMaxM2Config


@dataclass(frozen=True)
class Component:
    name: str
    total: int
    active: int


@dataclass(frozen=True)
class ParamCount:
    total_params: int
    active_params: int
    active_params_non_embedding: int
    mtp_params: int
    components: list[Component] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {
            "total_params": self.total_params,
            "active_params": self.active_params,
            "active_params_non_embedding": self.active_params_non_embedding,
            "mtp_params": self.mtp_params,
            "components": [c.__dict__ for c in self.components],
        }


def layer_params(cfg: MiniMaxM2Config) -> tuple[list[Component], int]:
    """Components of one decoder layer (summed over all experts) and its active count."""
    H, I, E, k = (
        cfg.hidden_size,
        cfg.intermediate_size,
        cfg.num_local_experts,
        cfg.num_experts_per_tok,
    )
    attn = H * cfg.q_dim + 2 * H * cfg.kv_dim + cfg.q_dim * H
    qk_norm = cfg.q_dim + cfg.kv_dim
    norms = 2 * H
    router = E * H
    expert = 3 * H * I
    comps = [
        Component("attention (q,k,v,o)", attn, attn),
        Component("qk-norm", qk_norm, qk_norm),
        Component("layer norms", norms, norms),
        Component("router", router, router),
        Component("experts", E * expert, k * expert),
    ]
    return comps, sum(c.active for c in comps)


def count_params(cfg: MiniMaxM2Config) -> ParamCount:
    L, H, V = cfg.num_hidden_layers, cfg.hidden_size, cfg.vocab_size
    per_layer, _ = layer_params(cfg)
    comps = [Component("embedding", V * H, V * H)]
    comps += [Component(f"{c.name} x{L}", c.total * L, c.active * L) for c in per_layer]
    comps += [Component("final norm", H, H), Component("lm_head", V * H, V * H)]
    total = sum(c.total for c in comps)
    active = sum(c.active for c in comps)
    layer_total = sum(c.total for c in per_layer)
    # one MTP module: hnorm + enorm + eh_proj + one decoder layer + its final norm
    mtp_one = 2 * H + 2 * H * H + layer_total + H
    mtp = cfg.num_mtp_modules * mtp_one
    return ParamCount(
        total_params=total,
        active_params=active,
        active_params_non_embedding=active - 2 * V * H,
        mtp_params=mtp,
        components=comps,
    )


def human(n: int) -> str:
    for unit, div in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= div:
            return f"{n / div:.2f}{unit}"
    return str(n)
