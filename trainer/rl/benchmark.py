"""Prefix-tree merging benchmark: one CISPO training step on multi-turn agent trajectories,
merged (one pass over the prefix tree) vs unmerged (every turn's sample on its own).

The workload mimics agent episodes: E episodes of K turns share one system prompt; turn k's
context is the system prompt plus k-1 earlier (tool result + completion) exchanges, so the
unmerged batch re-reads every prefix once per later turn. The token limit of the speed-up is
tokens_unmerged / tokens_merged; the step time ratio approaches it when the per-token work
(embedding, QKV/O projections, MoE experts, norms) dominates and attention over the tree costs
no more than causal attention per sample (the blocked tree attention skips hidden key blocks).
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass

import torch

from trainer.rl.advantages import compute_advantages
from trainer.rl.data import Sample
from trainer.rl.update import UpdateConfig, make_optimizer, rl_step


@dataclass(frozen=True)
class BenchConfig:
    episodes: int = 16
    turns: int = 8
    system_tokens: int = 128
    observation_tokens: int = 16  # tool result / user turn before each completion
    completion_tokens: int = 16
    preset: str = "tiny"
    repeats: int = 2
    seed: int = 0
    threads: int | None = None


def agent_batch(cfg: BenchConfig, vocab: int) -> list[Sample]:
    g = torch.Generator().manual_seed(cfg.seed)

    def rand(n: int) -> list[int]:
        return torch.randint(4, vocab, (n,), generator=g).tolist()

    system = rand(cfg.system_tokens)
    samples = []
    for e in range(cfg.episodes):
        ctx = list(system)
        for k in range(cfg.turns):
            obs, comp = rand(cfg.observation_tokens), rand(cfg.completion_tokens)
            n_ctx = len(ctx) + len(obs)
            old = torch.empty(len(comp)).uniform_(-4.0, -0.5, generator=g).tolist()
            samples.append(
                Sample(
                    ids=ctx + obs + comp,
                    trainable=[False] * n_ctx + [True] * len(comp),
                    old_logprobs=[0.0] * n_ctx + old,
                    reward=float((e + k) % 3 == 0) if k == cfg.turns - 1 else 0.0,
                    episode=f"ep{e}",
                    group="bench",
                    step=k,
                )
            )
            ctx = ctx + obs + comp
    return samples


def _time_steps(model, samples, adv, ucfg: UpdateConfig, repeats: int) -> tuple[float, dict]:
    # lr 0: the weights stay put, so every repeat times the same computation
    opt = make_optimizer(model, lr=0.0)
    rl_step(model, opt, samples, adv, ucfg)  # warm-up (allocator, kernels)
    times, stats = [], {}
    for _ in range(repeats):
        t0 = time.perf_counter()
        stats = rl_step(model, opt, samples, adv, ucfg)
        times.append(time.perf_counter() - t0)
    return statistics.median(times), stats


def run(cfg: BenchConfig = BenchConfig()) -> dict:
    from model.config import MiniMaxM2Config
    from model.modeling import MiniMaxM2ForCausalLM

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    mcfg = MiniMaxM2Config.from_preset(cfg.preset, use_mtp=False)
    model = MiniMaxM2ForCausalLM(mcfg)
    samples = agent_batch(cfg, mcfg.vocab_size)
    adv = compute_advantages(samples)
    t_unmerged, s_un = _time_steps(model, samples, adv, UpdateConfig(merge=False), cfg.repeats)
    t_merged, s_m = _time_steps(model, samples, adv, UpdateConfig(merge=True), cfg.repeats)
    limit = s_m["tokens_unmerged"] / s_m["tokens_merged"]
    ratio = t_unmerged / t_merged
    return {
        "workload": {
            "episodes": cfg.episodes,
            "turns": cfg.turns,
            "samples": len(samples),
            "system_tokens": cfg.system_tokens,
            "observation_tokens": cfg.observation_tokens,
            "completion_tokens": cfg.completion_tokens,
            "trainable_tokens": s_m["trainable_tokens"],
        },
        "preset": cfg.preset,
        "threads": torch.get_num_threads(),
        "device": "cpu",
        "tokens_unmerged": s_m["tokens_unmerged"],
        "tokens_merged": s_m["tokens_merged"],
        "step_time_unmerged_s": round(t_unmerged, 4),
        "step_time_merged_s": round(t_merged, 4),
        "time_ratio": round(ratio, 3),
        "token_ratio_limit": round(limit, 3),
        "fraction_of_limit": round(ratio / limit, 3),
        "loss_unmerged": s_un["loss"],
        "loss_merged": s_m["loss"],
    }
