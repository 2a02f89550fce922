"""RL training data: supervisor trajectories and gateway sessions -> token-level samples.

A ``Sample`` is one model call of one episode: the context that was sent and the completion
that came back, as token ids, with the behaviour policy's log-probs of the completion tokens and
a mask of which tokens are trainable. Turn k+1's context extends turn k's context + completion,
so the samples of one episode (and of episodes sharing a system prompt) share long prefixes,
which ``trainer.rl.tree`` merges.

Sources: gateway sessions (``{session}.jsonl``, one record per completion call, read here:
``prompt_token_ids``, ``completion_token_ids`` [choices][tokens], ``logprobs`` [choices][tokens]
-- exact tokens), and supervisor trajectories, whose format belongs to ``workbench`` and is read
there (``workbench.rl.episodes``), which builds samples with ``completion_sample``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class Sample:
    ids: list[int]
    trainable: list[bool]  # per token: its log-prob enters the loss (completion tokens)
    old_logprobs: list[float] | None = None  # per token (0.0 on context tokens); None unknown
    reward: float = 0.0  # this step's reward (episodes usually reward only the last step)
    episode: str = ""
    group: str = ""  # episodes of the same task/scenario: the baseline group
    step: int = 0  # turn index inside its episode
    policy_version: int = 0  # which policy sampled it (for staleness)
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if len(self.ids) != len(self.trainable):
            raise ValueError("ids and trainable differ in length")
        if self.old_logprobs is not None and len(self.old_logprobs) != len(self.ids):
            raise ValueError("ids and old_logprobs differ in length")

    @property
    def num_trainable(self) -> int:
        return sum(1 for j in range(1, len(self.ids)) if self.trainable[j])


def completion_sample(
    prompt_ids: Sequence[int],
    completion_ids: Sequence[int],
    logprobs: Sequence[float] | None = None,
    **kw: Any,
) -> Sample:
    """One call: prompt tokens (context) + completion tokens (trainable)."""
    ids = [int(t) for t in prompt_ids] + [int(t) for t in completion_ids]
    trainable = [False] * len(prompt_ids) + [True] * len(completion_ids)
    old = None
    if logprobs is not None:
        if len(logprobs) != len(completion_ids):
            raise ValueError("logprobs and completion ids differ in length")
        old = [0.0] * len(prompt_ids) + [float(x) for x in logprobs]
    return Sample(ids=ids, trainable=trainable, old_logprobs=old, **kw)


def _read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    out = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # a torn last line of a killed writer
    return out


def samples_from_session(
    path: str | Path, reward: float = 0.0, group: str = "", episode: str | None = None
) -> list[Sample]:
    """Samples of a gateway session file. Records without token ids (an upstream that does not
    return them) or with errors are skipped. ``reward`` goes to the session's last sample.

    A call that asked for several choices (``n > 1``: a group of rollouts of one prompt) gives
    one sample per choice, each its own one-step episode ``{episode}#{k}`` (``meta["choice"]``);
    ``meta["weights_version"]`` is the server's weights version when it reported one."""
    samples: list[Sample] = []
    for rec in _read_jsonl(path):
        if rec.get("status", 200) != 200:
            continue
        ep = episode or str(rec.get("session", Path(path).stem))
        prompt = rec.get("prompt_token_ids")
        comps = rec.get("completion_token_ids") or []
        if prompt is None or not comps:
            continue
        lps = rec.get("logprobs") or []
        version = (rec.get("response") or {}).get("weights_version")
        multi = len(comps) > 1
        for k, ids in enumerate(comps):
            if not ids:
                continue
            lp = lps[k] if k < len(lps) and lps[k] is not None else None
            if lp is not None and (len(lp) != len(ids) or any(x is None for x in lp)):
                lp = None
            samples.append(
                completion_sample(
                    prompt,
                    ids,
                    lp,
                    episode=f"{ep}#{k}" if multi else ep,
                    group=group,
                    step=0 if multi else len(samples),
                    meta={"choice": k, "weights_version": version},
                )
            )
            if not multi:
                break
    if samples:
        samples[-1].reward = float(reward)
    return samples
