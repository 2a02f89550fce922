"""RL training data: supervisor trajectories and gateway sessions -> token-level samples.

A ``Sample`` is one model call of one episode: the context that was sent and the completion
that came back, as token ids, with the behaviour policy's log-probs of the completion tokens and
a mask of which tokens are trainable. Turn k+1's context extends turn k's context + completion,
so the samples of one episode (and of episodes sharing a system prompt) share long prefixes,
which ``trainer.rl.tree`` merges.

Two sources, read as files (their writers live in ``workbench/``; trainer never imports it):
- gateway sessions (``{session}.jsonl``, one record per completion call): ``prompt_token_ids``,
  ``completion_token_ids`` [choices][tokens], ``logprobs`` [choices][tokens] -- exact tokens,
  the preferred source;
- supervisor trajectories (one JSONL per episode, events ``message``/``tool``/``end``...):
  messages only, rendered with the MiniMax-M2 chat template and tokenized here. Used for the SFT
  warm start from ``rules``-brain episodes (no behaviour log-probs: ``old_logprobs`` None).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence
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


# ---------------------------------------------------------------- supervisor trajectories
def trajectory_events(path: str | Path) -> list[dict[str, Any]]:
    return _read_jsonl(path)


def trajectory_reward(events: Iterable[dict[str, Any]]) -> float:
    """The episode's reward: the ``end`` event's (last one wins), 0.0 when it never ended."""
    reward = 0.0
    for e in events:
        if e.get("type") == "end" and e.get("reward") is not None:
            try:
                reward = float(e["reward"])
            except (TypeError, ValueError):
                reward = 0.0
    return reward


_ROLES = {"human": "user", "ai": "assistant", "system": "system", "tool": "tool"}


def trajectory_messages(events: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """OpenAI-style messages of a trajectory (LangChain role names mapped to wire names)."""
    msgs = []
    for e in events:
        if e.get("type") != "message":
            continue
        role = _ROLES.get(e.get("role"), e.get("role"))
        msg: dict[str, Any] = {"role": role, "content": e.get("content") or ""}
        if e.get("tool_calls"):
            msg["tool_calls"] = [
                {
                    "id": c.get("id"),
                    "type": "function",
                    "function": {"name": c["name"], "arguments": json.dumps(c.get("args", {}))},
                }
                for c in e["tool_calls"]
            ]
        if e.get("tool_call_id"):
            msg["tool_call_id"] = e["tool_call_id"]
        msgs.append(msg)
    return msgs


def samples_from_messages(
    messages: Sequence[dict[str, Any]],
    encode: Callable[[str], list[int]],
    tools: Sequence[dict[str, Any]] | None = None,
    **kw: Any,
) -> list[Sample]:
    """One sample per assistant message: context = the conversation before it rendered with
    the generation prompt, completion = the rest of the rendering up to the end of its turn.
    Both are cut from one rendering, so context + completion tokens are exactly the prefix the
    next turn extends."""
    from model.chat import render_messages

    samples = []
    for i, m in enumerate(messages):
        if m.get("role") != "assistant":
            continue
        ctx = render_messages(messages[:i], tools=tools, add_generation_prompt=True)
        full = render_messages(messages[: i + 1], tools=tools, add_generation_prompt=False)
        if not full.startswith(ctx[: len(ctx)]):
            # The template re-renders earlier turns (e.g. drops old reasoning): fall back to
            # the longest common prefix so the sample stays self-consistent.
            k = 0
            while k < min(len(ctx), len(full)) and ctx[k] == full[k]:
                k += 1
            ctx = full[:k]
        c_ids, f_ids = encode(ctx), encode(full)
        n = len(c_ids) if f_ids[: len(c_ids)] == c_ids else 0
        if n == 0:
            # tokenization does not split at the boundary: encode the two parts separately
            f_ids = c_ids + encode(full[len(ctx) :])
            n = len(c_ids)
        samples.append(
            Sample(
                ids=f_ids,
                trainable=[False] * n + [True] * (len(f_ids) - n),
                step=len(samples),
                **kw,
            )
        )
    return samples


def samples_from_trajectory(
    path: str | Path,
    encode: Callable[[str], list[int]],
    tools: Sequence[dict[str, Any]] | None = None,
    group: str = "",
) -> list[Sample]:
    """Samples of a supervisor trajectory file, the episode reward on its last sample."""
    events = trajectory_events(path)
    msgs = trajectory_messages(events)
    if not group:
        start = next((e for e in events if e.get("type") == "start"), {})
        group = str(start.get("scenario") or start.get("run_id") or start.get("run") or "")
    samples = samples_from_messages(msgs, encode, tools, episode=Path(path).stem, group=group)
    if samples:
        samples[-1].reward = trajectory_reward(events)
    return samples
