"""Distil teacher episodes into the policy: ``workbench train sft --episodes DIR``.

A teacher is any brain whose episodes we recorded: the ``rules`` brain, or an ``openai`` brain
such as a MiniMax-M2 endpoint. Each of its answers becomes one sample: the prompt exactly as
the local brain renders it (``workbench.rl.episodes.turn_prompt``) as context, the teacher's
tool call as the text it is (MiniMax-M2 ``<minimax:tool_call>`` XML) plus the end of turn as
the trainable completion. The turns of one episode share their prefix (system prompt, tool
specs, the run's evidence), so each step packs them into one prefix tree
(``trainer.rl.update``): the shared tokens are computed once.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from trainer.rl.data import Sample, completion_sample
from workbench.errors import BadInputError
from workbench.rl.episodes import Episode, Turn, answer_text, turn_prompt


@dataclass(frozen=True)
class SFTConfig:
    steps: int = 300
    lr: float = 2e-3
    batch_episodes: int = 4  # episodes per step (all their turns)
    seed: int = 0
    threads: int = 2
    # Stop early once the policy reproduces every teacher answer under greedy decoding with
    # margin: each teacher token at least this probable (checked every ``check_every`` steps).
    # A low mean loss is not enough: one wrong token breaks a tool call's XML.
    stop_at_p: float | None = None
    check_every: int = 20
    # The chance that an episode of a batch is a fresh rewrite of itself, answered by the
    # teacher again (``workbench.rl.augment``; rules-teacher episodes only), not the recording.
    augment: float = 0.0
    # Replace every recorded answer by the rules teacher's answer in that conversation (DAgger
    # over a policy's own episodes; a no-op on the rules teacher's).
    relabel: bool = False

    def __post_init__(self) -> None:
        if self.steps < 1 or self.batch_episodes < 1 or self.check_every < 1:
            raise BadInputError("steps, batch episodes and check interval must be >= 1")
        if not 0 <= self.augment <= 1:
            raise BadInputError(f"augment must be in [0, 1], not {self.augment}")
        if self.stop_at_p is not None and not 0 < self.stop_at_p < 1:
            raise BadInputError(f"stop-at probability must be in (0, 1), not {self.stop_at_p}")
        if not 0 < self.lr < 1:
            raise BadInputError(f"lr must be in (0, 1), not {self.lr}")


def encode(tok, text: str) -> list[int]:
    return tok.encode(text, add_special_tokens=False).ids


def turn_sample(tok, turn: Turn, group: str = "") -> Sample:
    from model.chat import END_OF_TURN

    prompt = encode(tok, turn_prompt(turn))
    answer = encode(tok, answer_text(turn.answer)) + [tok.token_to_id(END_OF_TURN)]
    return completion_sample(
        prompt, answer, episode=turn.episode, group=group, meta={"phase": turn.phase}
    )


def teacher_samples(tok, episodes: list[Episode]) -> list[list[Sample]]:
    """Per episode, one sample per answer the teacher gave (fallback turns included: those
    are the rules brain's answers, a teacher too)."""
    out = []
    for ep in episodes:
        samples = [turn_sample(tok, t, ep.scenario or "") for t in ep.turns]
        if samples:
            out.append(samples)
    return out


@torch.no_grad()
def answer_minima(model, groups: list[list[Sample]]) -> list[float]:
    """Per answer, the smallest probability the policy gives any of its tokens (teacher
    forcing, eval mode). Above 0.5 everywhere, greedy decoding of that prompt reproduces the
    answer exactly."""
    from trainer.rl.update import UpdateConfig, sample_logprobs

    was_training = model.training
    model.eval()
    out = []
    for g in groups:
        flat = sample_logprobs(model, g, UpdateConfig()).float().cpu()
        at = 0
        for s in g:  # targets come sample by sample
            n = s.num_trainable
            out.append(math.exp(float(flat[at : at + n].min())))
            at += n
    model.train(was_training)
    return out


def worst_token_p(model, groups: list[list[Sample]]) -> float:
    return min(answer_minima(model, groups))


def train_sft(
    model,
    tok,
    episodes: list[Episode],
    cfg: SFTConfig = SFTConfig(),
    log: Callable[[dict], None] = lambda row: None,
    progress: Callable[[str], None] = lambda msg: None,
) -> dict:
    """Fit the policy to the teacher's answers; returns the figures of the run."""
    from trainer.rl.update import UpdateConfig, make_optimizer, sft_step
    from workbench.rl.augment import augment_episode, relabel, replayable

    episodes = [relabel(ep) if cfg.relabel else ep for ep in episodes if ep.turns]
    groups = teacher_samples(tok, episodes)
    if not groups:
        raise BadInputError("no teacher answers in the episodes given (is it a healthy-run set?)")
    context = model.config.max_position_embeddings
    longest = max(len(s.ids) for g in groups for s in g)  # rewrites are checked per step
    if longest > context:
        raise BadInputError(
            f"the longest teacher turn has {longest} tokens; the policy's context is {context}"
        )
    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    rng = random.Random(cfg.seed)
    opt = make_optimizer(model, cfg.lr)
    ucfg = UpdateConfig()
    can_rewrite = [cfg.augment > 0 and replayable(ep) for ep in episodes]
    # rewrites no step trains on (another seed): does imitation hold beyond the recordings?
    check_rng = random.Random(cfg.seed + 10_007)
    unseen = [
        teacher_samples(tok, [augment_episode(ep, check_rng)])[0]
        for ep, ok in zip(episodes, can_rewrite, strict=True)
        if ok
    ]
    t0, unmerged, merged, losses, worst = time.perf_counter(), 0, 0, [], None
    rewritten = 0
    for step in range(cfg.steps):
        batch = []
        for i in rng.sample(range(len(groups)), min(cfg.batch_episodes, len(groups))):
            fresh = None
            if can_rewrite[i] and rng.random() < cfg.augment:
                fresh = teacher_samples(tok, [augment_episode(episodes[i], rng)])[0]
                if max(len(s.ids) for s in fresh) > context:
                    fresh = None
            rewritten += fresh is not None
            batch += fresh or groups[i]
        out = sft_step(model, opt, batch, ucfg)
        unmerged += out["tokens_unmerged"]
        merged += out["tokens_merged"]
        losses.append(out["sft_loss"])
        log({"step": step, "sft_loss": out["sft_loss"]})
        if (step + 1) % 25 == 0 or step + 1 == cfg.steps:
            progress(f"sft step {step + 1}/{cfg.steps}: loss {out['sft_loss']:.4f}")
        if cfg.stop_at_p is not None and (step + 1) % cfg.check_every == 0:
            worst = worst_token_p(model, groups)
            if worst >= cfg.stop_at_p:
                progress(f"sft step {step + 1}: every teacher token has p >= {worst:.3f}; done")
                break
    if worst is None or (step + 1) % cfg.check_every:
        worst = worst_token_p(model, groups)
    return {
        "steps": step + 1,
        "episodes": len(groups),
        "samples": sum(len(g) for g in groups),
        "longest_turn_tokens": longest,
        "context": context,
        "rewritten_episodes": rewritten,
        "replayable_episodes": sum(can_rewrite),
        "final_loss": losses[-1],
        # answers greedy decoding reproduces (every token p > 0.5) on rewrites never trained on
        "unseen_rewrites_held": (
            round(sum(p > 0.5 for p in answer_minima(model, unseen)) / sum(map(len, unseen)), 3)
            if unseen
            else None
        ),
        "worst_token_p": worst,
        "tree_compression": unmerged / max(merged, 1),
        "wall_s": round(time.perf_counter() - t0, 1),
    }
