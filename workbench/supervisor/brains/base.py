"""The brain loop shared by every backend: ask, run read tools, stop at a decision.

A brain is any LangChain chat model with ``bind_tools``. ``decide`` sends the conversation,
runs the read tools the brain calls (their JSON results go back as tool messages) and returns
the first *decision* tool call (``submit_diagnosis``, ``propose_*``, ``give_up``). A malformed
answer gets the error shown once (``workbench.supervisor.query``); a second one (or an exception
from the endpoint) returns ``None`` and the caller falls back to the ``rules`` brain — an episode
never crashes on a model.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jinja2
import yaml
from langchain_core.messages import BaseMessage, HumanMessage, SystemMessage, ToolMessage

from scaffold.loader import PACKAGED
from workbench.supervisor.query import FormatError, NoAnswer, query
from workbench.supervisor.tools import EpisodeContext, Tool, ToolCallError, run_tool, validate_call
from workbench.supervisor.trajectory import Trajectory, message_event

_ENV = jinja2.Environment(
    undefined=jinja2.StrictUndefined, autoescape=False, keep_trailing_newline=True
)
_ENV.filters["tojson"] = lambda v: json.dumps(v, default=str, sort_keys=True)


def load_prompts(scaffold_dir: str | Path | None = None) -> dict[str, str]:
    """``scaffold/prompts/supervisor.yaml`` (or the one in a scaffold copy) as name → template."""
    root = Path(scaffold_dir) if scaffold_dir else PACKAGED
    data = yaml.safe_load((root / "prompts" / "supervisor.yaml").read_text())
    return {str(k): str(v) for k, v in data.items()}


def render(template: str, **values: Any) -> str:
    return _ENV.from_string(template).render(**values)


def decide(
    brain,
    tools: list[Tool],
    messages: list[BaseMessage],
    ctx: EpisodeContext,
    traj: Trajectory,
    *,
    retry_template: str,
    check: Callable[[str, Any], None] | None = None,
    max_steps: int = 10,
) -> tuple[str, Any] | None:
    """Run the brain until it makes a decision; None when it failed twice (→ fall back)."""

    def step(ai) -> tuple[str, Any] | None:
        traj.add("message", **message_event(ai))
        problem = None
        for bad in getattr(ai, "invalid_tool_calls", None) or []:
            problem = f"malformed tool call {bad.get('name')!r}: {bad.get('error') or 'bad JSON'}"
            if bad.get("id"):  # an endpoint's call with an id wants its answer; XML calls have none
                messages.append(_tool_msg({"error": problem}, bad["id"], bad.get("name")))
        if not ai.tool_calls and problem is None:
            problem = "no tool call in the answer"
        for call in ai.tool_calls:
            try:
                tool, args = validate_call(tools, call["name"], call["args"])
                if tool.fn is None:
                    if check:
                        check(tool.name, args)
                    traj.add("decision", name=tool.name, args=args.model_dump(mode="json"))
                    return tool.name, args
                result = run_tool(ctx, tool, args)
            except ToolCallError as exc:
                problem = str(exc)
                result = json.dumps({"error": problem})
            messages.append(
                ToolMessage(result, tool_call_id=call["id"] or call["name"], name=call["name"])
            )
            # the whole result: a trajectory rebuilds exactly what the brain read
            traj.add("tool", name=call["name"], args=call["args"], result=result,
                     call_id=call["id"] or call["name"])  # fmt: skip
        if problem:
            raise FormatError(problem)
        return None

    try:
        return query(
            brain.bind_tools([t.spec() for t in tools]),
            messages,
            step,
            retry=lambda error: render(retry_template, error=error),
            log=traj.add,
            max_steps=max_steps,
        )
    except NoAnswer:
        return None


def _tool_msg(data: dict, call_id: str, name: str | None) -> ToolMessage:
    return ToolMessage(json.dumps(data), tool_call_id=call_id, name=name or "invalid")


def start_messages(prompts: dict[str, str], phase: str, **values: Any) -> list[BaseMessage]:
    return [SystemMessage(prompts["system"]), HumanMessage(render(prompts[phase], **values))]
