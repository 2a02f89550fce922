"""Request checks of the OpenAI-compatible API, and the constraint behind a forced tool call.

Pure functions over the decoded JSON body, so they are property-tested without a server:
the server says no (400, or 404 for an unknown model) where OpenAI / vLLM do, in one line
that names the field, instead of generating from whatever it was given.

``tool_choice`` ``"required"`` or ``{"type": "function", "function": {"name": F}}`` forces a
call: ``ToolCallForcer`` masks the logits so that the generation opens with
``<minimax:tool_call>`` / ``<invoke name="F">`` (for ``required``: the name of one of the
tools), and ``close_forced_call`` completes a call that ran out of tokens, so the answer
always carries a call of an allowed tool.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from model.chat import THINK_END, TOOL_CALL_BEGIN, TOOL_CALL_END

ROLES = ("system", "developer", "user", "assistant", "tool")


class APIError(Exception):
    def __init__(
        self,
        message: str,
        status: int = 400,
        kind: str = "invalid_request_error",
        code: str | int | None = None,
    ):
        super().__init__(message)
        self.status, self.kind = status, kind
        self.code = status if code is None else code


def check_model(body: Mapping[str, Any], served: str) -> None:
    """``model`` may be left out (the served one); any other name is 404 ``model_not_found``."""
    model = body.get("model")
    if model is None:
        return
    if not isinstance(model, str):
        raise APIError("'model' must be a string")
    if model != served:
        raise APIError(
            f"The model `{model[:200]}` does not exist (this server serves `{served}`)",
            404,
            code="model_not_found",
        )


def _text_parts(content: Any) -> bool:
    return isinstance(content, list) and all(
        isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str)
        for p in content
    )


def check_messages(messages: Any) -> list[dict]:
    """A non-empty list of messages with a known role and text content (string or text parts)."""
    if not isinstance(messages, list) or not messages:
        raise APIError("'messages' must be a non-empty list of message objects")
    for i, msg in enumerate(messages):
        if not isinstance(msg, dict):
            raise APIError(f"messages[{i}] must be an object")
        role = msg.get("role")
        if role not in ROLES:
            shown = role if isinstance(role, str) else type(role).__name__
            raise APIError(
                f"messages[{i}].role {str(shown)[:40]!r} is not one of {', '.join(ROLES)}"
            )
        content = msg.get("content")
        calls = msg.get("tool_calls")
        if content is None and role == "assistant":
            pass  # an assistant turn may carry only tool calls
        elif not isinstance(content, str) and not _text_parts(content):
            raise APIError(
                f"messages[{i}].content must be a string or a list of text parts "
                '({"type": "text", "text": "..."})'
            )
        if calls is not None:
            if role != "assistant":
                raise APIError(f"messages[{i}]: only assistant messages carry tool_calls")
            if not isinstance(calls, list) or not all(_is_call(c) for c in calls):
                raise APIError(
                    f"messages[{i}].tool_calls must be a list of "
                    '{"type": "function", "function": {"name": ..., "arguments": ...}}'
                )
    return messages


def _is_call(call: Any) -> bool:
    fn = call.get("function") if isinstance(call, dict) else None
    return (
        isinstance(fn, dict)
        and isinstance(fn.get("name"), str)
        and isinstance(fn.get("arguments", ""), str | dict)
    )


def tool_names(tools: Any) -> list[str]:
    """The function names of an OpenAI ``tools`` list (400 when it is not one)."""
    if tools is None:
        return []
    if not isinstance(tools, list):
        raise APIError("'tools' must be a list")
    names = []
    for i, tool in enumerate(tools):
        fn = tool.get("function") if isinstance(tool, dict) else None
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str) or not fn["name"]:
            raise APIError(
                f"tools[{i}] must be {{'type': 'function', 'function': {{'name': ...}}}}"
            )
        names.append(fn["name"])
    return names


@dataclass(frozen=True)
class ToolChoice:
    mode: str  # none | auto | required | named
    names: tuple[str, ...] = ()  # the tools a call may name (required / named)

    @property
    def forced(self) -> bool:
        return self.mode in ("required", "named")


def check_tool_choice(choice: Any, tools: Any) -> ToolChoice:
    names = tool_names(tools)
    if choice is None:
        return ToolChoice("auto" if names else "none")
    if choice in ("none", "auto"):
        return ToolChoice(choice)
    if choice == "required":
        if not names:
            raise APIError("tool_choice 'required' needs a non-empty 'tools' list")
        return ToolChoice("required", tuple(dict.fromkeys(names)))
    fn = choice.get("function") if isinstance(choice, dict) else None
    if isinstance(choice, dict) and choice.get("type") == "function" and isinstance(fn, dict):
        name = fn.get("name")
        if not isinstance(name, str) or name not in names:
            raise APIError(f"tool_choice names {str(name)[:80]!r}, which is not in 'tools'")
        return ToolChoice("named", (name,))
    raise APIError(
        "'tool_choice' must be 'none', 'auto', 'required' or "
        '{"type": "function", "function": {"name": ...}}'
    )


def call_opening(name: str, thinking: bool) -> str:
    """The text a forced call starts with (the thought the prompt opened is closed first)."""
    lead = f"{THINK_END}\n\n" if thinking else ""
    return f'{lead}{TOOL_CALL_BEGIN}\n<invoke name="{name}">\n'


class ToolCallForcer:
    """A logits processor: until the generation holds the opening of a call of one of the
    allowed tools, only the tokens that continue such an opening may be sampled."""

    def __init__(self, tokenizer, names: Sequence[str], thinking: bool) -> None:
        self.names = tuple(names)
        self.thinking = thinking
        self.openings = {
            n: tokenizer.encode(call_opening(n, thinking), add_special_tokens=False).ids
            for n in self.names
        }

    def __call__(self, out_ids: list[int], logits: torch.Tensor) -> torch.Tensor:
        k = len(out_ids)
        allowed = set()
        for ids in self.openings.values():
            if ids[: min(k, len(ids))] != out_ids[: min(k, len(ids))]:
                continue
            if k >= len(ids):
                return logits  # an opening is complete: the arguments are the model's
            allowed.add(ids[k])
        if not allowed:
            return logits
        masked = torch.full_like(logits, float("-inf"))
        index = torch.tensor(sorted(allowed), device=logits.device)
        masked[index] = logits[index]
        return masked

    def chosen(self, out_ids: list[int]) -> str:
        """The tool whose opening the generation follows (the first allowed one if none yet)."""
        for name, ids in self.openings.items():
            k = min(len(ids), len(out_ids))
            if ids[:k] == out_ids[:k]:
                return name
        return self.names[0]


def close_forced_call(text: str, name: str, thinking: bool) -> str:
    """Complete a forced call that stopped early: the opening, whole parameters, closing tags."""
    opening = call_opening(name, thinking)
    body = text[len(opening) :] if text.startswith(opening) else ""
    if "</invoke>" in body:
        head, _, rest = body.partition("</invoke>")
        tail = rest if TOOL_CALL_END in rest else rest + "\n" + TOOL_CALL_END
        return opening + head + "</invoke>" + tail
    last = body.rfind("</parameter>")
    body = body[: last + len("</parameter>")] + "\n" if last >= 0 else ""
    return opening + body + "</invoke>\n" + TOOL_CALL_END
