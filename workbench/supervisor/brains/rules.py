"""The ``rules`` brain: deterministic findings → playbook, as a chat model that emits tool calls.

It speaks the same protocol as a real model, so the graph runs one path for every brain: first
it calls ``read_findings``; given that result it submits the doctor's diagnosis (diagnose step)
or proposes the first untried playbook remedy that has a config patch (propose step), or gives
up when none is left. It reads only the JSON its own tool call returned, never log text.
"""

from __future__ import annotations

import json
from typing import Any

from langchain_core.language_models.chat_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage, ToolMessage
from langchain_core.outputs import ChatGeneration, ChatResult


def _tool_names(tools: list[Any]) -> list[str]:
    names = []
    for t in tools:
        if isinstance(t, dict):
            names.append(t.get("function", t).get("name"))
        else:
            names.append(getattr(t, "name", getattr(t, "__name__", str(t))))
    return names


def rules_decision(messages: list[BaseMessage], tool_names: list[str]) -> tuple[str, dict]:
    """The next tool call, from the latest ``read_findings`` result in the conversation."""
    data = None
    for msg in reversed(messages):
        if isinstance(msg, ToolMessage) and msg.name == "read_findings":
            data = json.loads(msg.content)
            break
    if data is None:
        return "read_findings", {}
    if "submit_diagnosis" in tool_names:
        # The bare cause: the graph takes the doctor's confidence and summary when they agree.
        # Teacher decisions stay as short as a decision can be, for a policy distilled from them.
        d = data.get("doctor_diagnosis") or {}
        return "submit_diagnosis", {"cause": d.get("cause", "unknown")}
    for remedy in data.get("remedies", []):
        if remedy.get("patch"):  # by id alone: the graph applies the remedy's own patch
            return "propose_config_patch", {"remedy_id": remedy["id"]}
    return "give_up", {"reason": "no untried playbook remedy with a config patch"}


class RulesChatModel(BaseChatModel):
    """Deterministic brain; ``bind_tools`` only records which tools are on offer."""

    @property
    def _llm_type(self) -> str:
        return "workbench-rules"

    def bind_tools(self, tools: list[Any], **kwargs: Any):
        return self.bind(tool_names=_tool_names(tools), **kwargs)

    def _generate(self, messages, stop=None, run_manager=None, tool_names=(), **kwargs):
        name, args = rules_decision(messages, list(tool_names))
        n = sum(isinstance(m, AIMessage) for m in messages)
        msg = AIMessage(content="", tool_calls=[{"name": name, "args": args, "id": f"rules-{n}"}])
        return ChatResult(generations=[ChatGeneration(message=msg)])
