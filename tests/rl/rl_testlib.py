"""Shared helpers for the RL tests: a tiny fp32 model and multi-level tree-shaped batches."""

from __future__ import annotations

import torch

from model.config import MiniMaxM2Config
from model.modeling import MiniMaxM2ForCausalLM
from trainer.rl.data import Sample


def tiny_model(seed: int = 0, layers: int = 2) -> MiniMaxM2ForCausalLM:
    torch.manual_seed(seed)
    cfg = MiniMaxM2Config.from_preset(
        "tiny", num_hidden_layers=layers, use_mtp=False, vocab_size=512, moe_backend="grouped"
    )
    model = MiniMaxM2ForCausalLM(cfg)
    # Larger weights than the init's 0.02 so that attention patterns (and so mistakes in the
    # tree mask) actually change the outputs.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" not in name:
                p.normal_(0.0, 0.2)
    return model


def tree_batch(
    episodes: int = 3, turns: int = 3, sys_len: int = 9, seed: int = 0, branch: bool = True
) -> list[Sample]:
    """Multi-turn episodes sharing a system prompt (level 1), each turn extending the previous
    one (levels 2..), and -- with ``branch`` -- two samples per last turn that share the context
    but differ in completion (siblings deep inside the tree). Plus one unrelated sequence (a
    second root)."""
    g = torch.Generator().manual_seed(seed)

    def rand(n: int) -> list[int]:
        return torch.randint(4, 500, (n,), generator=g).tolist()

    sysp = rand(sys_len)
    samples = []
    for e in range(episodes):
        ctx = list(sysp)
        for t in range(turns):
            user = rand(3 + t)
            comp = rand(4 + e)
            ids = ctx + user + comp
            n_ctx = len(ctx) + len(user)
            lp = torch.empty(len(comp)).uniform_(-3, -0.1, generator=g).tolist()
            samples.append(
                Sample(
                    ids=ids,
                    trainable=[False] * n_ctx + [True] * len(comp),
                    old_logprobs=[0.0] * n_ctx + lp,
                    reward=float(t == turns - 1) * (e % 2),
                    episode=f"ep{e}",
                    group="g",
                    step=t,
                )
            )
            if branch and t == turns - 1:
                alt = rand(3)
                samples.append(
                    Sample(
                        ids=ctx + user + alt,
                        trainable=[False] * n_ctx + [True] * 3,
                        old_logprobs=[0.0] * n_ctx + [-1.0] * 3,
                        reward=1.0,
                        episode=f"ep{e}b",
                        group="g",
                        step=0,
                    )
                )
            ctx = ids
    other = rand(7)
    samples.append(Sample(ids=other, trainable=[False, False] + [True] * 5, episode="x", group="h"))
    return samples
