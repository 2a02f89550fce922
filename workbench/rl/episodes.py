"""Episodes as training data: a supervisor trajectory → the turns a policy learns from.

Every brain decision in a trajectory starts with an ``ask`` event (phase, tools on offer, which
brain), then the system and user messages, then the brain's answers (``message`` events with
role ``ai``), the read tools' results (``tool``) and a ``decision``. ``turns`` rebuilds, for
each answer, the conversation the brain saw before it and the answer as the tool-call text it
is: exactly what ``LocalChatModel`` renders (``model.chat`` with our template, thinking off).

- A **teacher** episode (the ``rules`` brain, or an ``openai`` brain) gives SFT samples: the
  prompt tokens and the teacher's answer tokens.
- A **policy** episode (the ``local`` brain) also carries, per answer, the exact prompt and
  completion token ids and the sampler's log-probs (``tokens`` on the ``message`` event): RL
  trains on those, never on a re-rendering.
Held-out episodes never reach this module's callers in training: ``workbench.rl.scenarios``
keeps the split, and a test checks that no held-out prompt or scenario name is in a sample.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from workbench.errors import BadInputError


@dataclass(frozen=True)
class Turn:
    """One answer of a brain: the conversation before it and what it answered."""

    episode: str  # the trajectory's thread id
    phase: str  # diagnose | propose
    brain: str  # "brain" (the configured one) or "rules" (the fallback or the rules brain)
    messages: tuple[dict, ...]  # OpenAI wire format, system first
    tools: tuple[str, ...]
    answer: dict  # {"content": str, "tool_calls": [{"name", "args"}]}
    tokens: dict | None = None  # {"prompt", "completion", "logprobs", "weights_version"}


@dataclass
class Episode:
    """A trajectory's turns and its outcome."""

    thread_id: str
    run_id: str | None  # the failing run the episode fixed
    scenario: str | None
    status: str
    reward: float
    attempts: int
    fallbacks: int
    turns: list[Turn] = field(default_factory=list)


def read_events(path: Path) -> list[dict]:
    try:
        lines = path.read_text().splitlines()
    except OSError as exc:
        raise BadInputError(f"{path}: cannot read ({exc.strerror})") from None
    events = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            events.append(json.loads(line))
        except json.JSONDecodeError:
            raise BadInputError(f"{path}:{n}: not a trajectory line (bad JSON)") from None
    return events


def parse_episode(path: Path) -> Episode:
    """The turns of one trajectory file (``<home>/trajectories/<thread>.jsonl``)."""
    events = read_events(path)
    start = next((e for e in events if e.get("type") == "start"), {})
    end = next((e for e in reversed(events) if e.get("type") == "end"), {})
    ep = Episode(
        thread_id=path.stem,
        run_id=start.get("run_id"),
        scenario=None,
        status=end.get("status", "running"),
        reward=float(end.get("reward", 0.0)),
        attempts=sum(e.get("type") in ("outcome", "attempt_failed", "no_op") for e in events),
        fallbacks=sum(e.get("type") == "fallback" for e in events),
    )
    ask: dict | None = None
    convo: list[dict] = []
    for e in events:
        kind = e.get("type")
        if kind == "ask":
            ask, convo = e, []
        elif ask is None:
            continue
        elif kind == "message" and e.get("role") in ("system", "human"):
            role = "system" if e["role"] == "system" else "user"
            convo.append({"role": role, "content": e.get("content") or ""})
        elif kind == "message" and e.get("role") == "ai":
            calls = [
                {"id": c.get("id") or f"call-{i}", "name": c["name"], "args": c.get("args") or {}}
                for i, c in enumerate(e.get("tool_calls") or [])
            ]
            ep.turns.append(
                Turn(
                    episode=ep.thread_id,
                    phase=ask["phase"],
                    brain=ask.get("brain", "brain"),
                    messages=tuple(convo),
                    tools=tuple(ask["tools"]),
                    answer={"content": e.get("content") or "", "tool_calls": calls},
                    tokens=e.get("tokens"),
                )
            )
            convo.append(_assistant(e.get("content") or "", calls))
        elif kind == "tool":
            convo.append(
                {
                    "role": "tool",
                    "tool_call_id": e.get("call_id") or e["name"],
                    "content": e.get("result", ""),
                }
            )
        elif kind == "retry":  # a malformed answer was shown its error
            convo.append({"role": "user", "content": e.get("content", "")})
        elif kind in ("decision", "fallback"):
            ask = None
    return ep


def _assistant(content: str, calls: list[dict]) -> dict:
    msg: dict[str, Any] = {"role": "assistant", "content": content}
    if calls:
        msg["tool_calls"] = [
            {
                "id": c["id"],
                "type": "function",
                "function": {"name": c["name"], "arguments": json.dumps(c["args"])},
            }
            for c in calls
        ]
    return msg


def load_episodes(dirs: Iterable[Path], scenario_of: dict[str, str] | None = None) -> list[Episode]:
    """Every trajectory under each folder (a home, its ``trajectories/``, or files).
    ``scenario_of``: failing run id → scenario name (a scenario manifest's)."""
    out = []
    for d in dirs:
        d = Path(d)
        if not d.exists():
            raise BadInputError(f"--episodes {d}: no such file or folder")
        files = [d] if d.is_file() else sorted(d.rglob("trajectories/*.jsonl"))
        if not files:
            raise BadInputError(f"--episodes {d}: no trajectory (trajectories/*.jsonl) in it")
        for f in files:
            ep = parse_episode(f)
            ep.scenario = (scenario_of or {}).get(ep.run_id or "")
            out.append(ep)
    return out


# ----------------------------------------------------------------------------- rendering


def tool_specs(names: Iterable[str]) -> list[dict]:
    from workbench.supervisor.tools import DIAGNOSE_TOOLS, PROPOSE_TOOLS

    by_name = {t.name: t for t in (*DIAGNOSE_TOOLS, *PROPOSE_TOOLS)}
    missing = [n for n in names if n not in by_name]
    if missing:
        raise BadInputError(f"trajectory names unknown tools: {', '.join(missing)}")
    return [by_name[n].spec() for n in names]


def answer_text(answer: dict) -> str:
    """The answer as the policy writes it: the tool-call XML (content first, if any)."""
    from model.chat import render_tool_calls

    calls = [{"name": c["name"], "arguments": c["args"]} for c in answer["tool_calls"]]
    body = answer.get("content") or ""
    return body + (render_tool_calls(calls) if calls else "")


def turn_prompt(turn: Turn) -> str:
    from workbench.supervisor.brains.local import prompt_text

    return prompt_text(list(turn.messages), tool_specs(turn.tools))
