"""MiniMax-M2 chat format: render conversations to prompt text, parse generations back.

The prompt format follows MiniMax-M2's published chat template:

    ]~!b[]~b]system\n{system}{tools block}[e~[\n
    ]~b]user\n{text}[e~[\n
    ]~b]ai\n<think>\n{reasoning}\n</think>\n\n{content}\n<minimax:tool_call>\n...</minimax:tool_call>[e~[\n
    ]~b]tool\n<response>{result}</response>\n<response>{result}</response>[e~[\n
    ]~b]ai\n<think>\n                                   <- generation prompt

Tool calls are XML:

    <minimax:tool_call>
    <invoke name="f">
    <parameter name="k">v</parameter>
    </invoke>
    </minimax:tool_call>

String arguments are written raw, everything else as JSON. Parsing is the inverse and is
tolerant: `parse_output` never raises; it returns the text, the reasoning, every *complete*
call it found and a list of problems (for a brain that wants to repair or retry).
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

# The special tokens, spelled here only (``model.tokenizer`` gives them their fixed ids).
BOS = "]~!b["
END_OF_TURN = "[e~["  # also the eos
ROLE_MARK = "]~b]"  # opens a turn: ]~b]system, ]~b]user, ]~b]ai, ]~b]tool
PAD = "]!p~["  # ours: the released tokenizer has no padding token
NAME_MARK = "]<]minimax[>["
THINK_BEGIN = "<think>"
THINK_END = "</think>"
TOOL_CALL_BEGIN = "<minimax:tool_call>"
TOOL_CALL_END = "</minimax:tool_call>"
RESPONSE_BEGIN = "<response>"
RESPONSE_END = "</response>"
SPECIAL_TOKENS = (
    BOS, END_OF_TURN, ROLE_MARK, PAD, NAME_MARK, THINK_BEGIN, THINK_END,
    TOOL_CALL_BEGIN, TOOL_CALL_END, RESPONSE_BEGIN, RESPONSE_END,
)  # fmt: skip
DEFAULT_SYSTEM = "You are a helpful assistant. Your name is MiniMax-M2 and is built by MiniMax."

# Wire role names (OpenAI) -> template role names.
_ROLE = {"system": "system", "user": "user", "assistant": "ai", "tool": "tool"}

_TOOLS_HEADER = (
    "\n\n# Tools\nYou may call one or more tools to assist with the user query.\n"
    "Here are the tools available in JSONSchema format:\n\n<tools>\n"
)
_TOOLS_FOOTER = (
    "</tools>\n\nWhen making tool calls, use XML format to invoke tools and pass parameters:\n"
    f"\n{TOOL_CALL_BEGIN}\n"
    '<invoke name="tool-name-1">\n'
    '<parameter name="param-key-1">param-value-1</parameter>\n'
    '<parameter name="param-key-2">param-value-2</parameter>\n'
    "...\n</invoke>\n"
    f"{TOOL_CALL_END}"
)


@dataclass
class ToolCall:
    """One function call: a name and its (decoded) arguments."""

    name: str
    arguments: dict[str, Any]
    id: str = field(default_factory=lambda: f"call_{uuid.uuid4().hex[:24]}")

    def to_openai(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "type": "function",
            "function": {
                "name": self.name,
                "arguments": json.dumps(self.arguments, ensure_ascii=False),
            },
        }


@dataclass
class ParsedOutput:
    """What a generation meant: visible text, reasoning, complete tool calls, problems."""

    content: str
    reasoning: str | None = None
    tool_calls: list[ToolCall] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


# ---------------------------------------------------------------- rendering


def _dumps(value: Any) -> str:
    # Jinja's tojson(ensure_ascii=False): json.dumps defaults otherwise.
    return json.dumps(value, ensure_ascii=False)


def visible_text(content: Any) -> str:
    """Message content as text: a string, or the text parts of an OpenAI content list."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, Sequence) and not isinstance(content, Mapping):
        parts = []
        for item in content:
            if isinstance(item, Mapping) and item.get("type") == "text":
                parts.append(str(item.get("text", "")))
            elif isinstance(item, str):
                parts.append(item)
        return "".join(parts)
    return str(content)


def _tool_function(tool: Mapping[str, Any]) -> Mapping[str, Any]:
    # OpenAI tools are {"type": "function", "function": {...}}; accept the bare function too.
    fn = tool.get("function")
    return fn if isinstance(fn, Mapping) else tool


def render_tools(tools: Sequence[Mapping[str, Any]]) -> str:
    """The tools block that the template appends to the system turn."""
    lines = "".join(f"<tool>{_dumps(dict(_tool_function(t)))}</tool>\n" for t in tools)
    return _TOOLS_HEADER + lines + _TOOLS_FOOTER


def _call_parts(call: Any) -> tuple[str, dict[str, Any]]:
    """(name, arguments dict) from a ToolCall, an OpenAI tool call, or a bare {name, arguments}."""
    if isinstance(call, ToolCall):
        return call.name, call.arguments
    fn = call.get("function") if isinstance(call.get("function"), Mapping) else call
    args = fn.get("arguments") or {}
    if isinstance(args, str):  # OpenAI wire format carries arguments as a JSON string
        try:
            args = json.loads(args) if args.strip() else {}
        except json.JSONDecodeError:
            args = {"arguments": args}
        if not isinstance(args, dict):
            args = {"arguments": args}
    return str(fn.get("name", "")), dict(args)


def render_tool_calls(calls: Iterable[Any]) -> str:
    """The XML block for a list of calls (without the newline the template puts before it)."""
    out = [TOOL_CALL_BEGIN, "\n"]
    for call in calls:
        name, args = _call_parts(call)
        out.append(f'<invoke name="{name}">\n')
        for key, value in args.items():
            text = value if isinstance(value, str) else _dumps(value)
            out.append(f'<parameter name="{key}">{text}</parameter>\n')
        out.append("</invoke>\n")
    out.append(TOOL_CALL_END)
    return "".join(out)


def _split_reasoning(message: Mapping[str, Any]) -> tuple[str, str]:
    content = visible_text(message.get("content"))
    reasoning = message.get("reasoning_content")
    if isinstance(reasoning, str):
        return reasoning, content
    if THINK_END in content:
        reasoning = content.split(THINK_END)[0].strip("\n").split(THINK_BEGIN)[-1].strip("\n")
        return reasoning, content.split(THINK_END)[-1].strip("\n")
    return "", content


def _tool_results(content: Any) -> str:
    if content is None or isinstance(content, str):
        return f"\n{RESPONSE_BEGIN}{content or ''}{RESPONSE_END}"
    out = []
    for item in content:
        if isinstance(item, Mapping) and "output" in item:
            text = item["output"]
        elif isinstance(item, Mapping) and item.get("type") == "text" and "text" in item:
            text = item["text"]
        else:
            text = item
        out.append(f"\n{RESPONSE_BEGIN}{text}\n{RESPONSE_END}")
    return "".join(out)


def render_messages(
    messages: Sequence[Mapping[str, Any]],
    tools: Sequence[Mapping[str, Any]] | None = None,
    add_generation_prompt: bool = True,
    enable_thinking: bool = True,
    model_identity: str = DEFAULT_SYSTEM,
) -> str:
    """Render an OpenAI-style conversation with MiniMax-M2's template.

    Raises ValueError only for a conversation the template itself rejects (a tool result
    with no earlier tool call); the server turns that into a 400.
    """
    messages = list(messages)
    system = None
    if messages and messages[0].get("role") in ("system", "developer"):
        system, messages = messages[0], messages[1:]
    last_user = max((i for i, m in enumerate(messages) if m.get("role") == "user"), default=-1)

    sys_text = visible_text(system.get("content")) if system else ""
    out = [BOS, ROLE_MARK, "system\n", sys_text or model_identity]
    if tools:
        out.append(render_tools(tools))
    out.append(END_OF_TURN + "\n")

    seen_call = False
    for i, msg in enumerate(messages):
        role = msg.get("role")
        if role == "assistant":
            out.append(f"{ROLE_MARK}ai\n")
            reasoning, content = _split_reasoning(msg)
            # Interleaved thinking: reasoning is kept only for turns after the last user turn.
            if reasoning and i > last_user:
                out.append(f"{THINK_BEGIN}\n{reasoning}\n{THINK_END}\n\n")
            out.append(content)
            calls = msg.get("tool_calls") or []
            if calls:
                out.append("\n" + render_tool_calls(calls))
            seen_call = bool(calls)
            out.append(END_OF_TURN + "\n")
        elif role == "tool":
            if not seen_call:
                raise ValueError(
                    "a tool message needs an earlier assistant message with tool_calls"
                )
            if i == 0 or messages[i - 1].get("role") != "tool":
                out.append(f"{ROLE_MARK}tool")
            out.append(_tool_results(msg.get("content")))
            if i == len(messages) - 1 or messages[i + 1].get("role") != "tool":
                out.append(END_OF_TURN + "\n")
        elif role == "user":
            out.append(f"{ROLE_MARK}user\n{visible_text(msg.get('content'))}{END_OF_TURN}\n")
        elif role in ("system", "developer"):
            # The template only knows a leading system turn; later ones are rendered as system
            # turns rather than dropped so that nothing the caller sent disappears silently.
            out.append(f"{ROLE_MARK}system\n{visible_text(msg.get('content'))}{END_OF_TURN}\n")
    if add_generation_prompt:
        out.append(f"{ROLE_MARK}ai\n")
        out.append(f"{THINK_BEGIN}\n" if enable_thinking else f"{THINK_BEGIN}\n{THINK_END}\n\n")
    return "".join(out)


# ---------------------------------------------------------------- parsing

_NAME_ATTR = r"""name\s*=\s*(?:"([^"]*)"|'([^']*)'|([^\s>]+))"""
_INVOKE_OPEN = re.compile(r"<invoke\s+" + _NAME_ATTR + r"\s*>")
_INVOKE_CLOSE = "</invoke>"
_PARAM_OPEN = re.compile(r"<parameter\s+" + _NAME_ATTR + r"\s*>")
_PARAM_CLOSE = "</parameter>"


def _attr(m: re.Match[str]) -> str:
    return next((g for g in m.groups() if g is not None), "")


def _schema_types(tools: Sequence[Mapping[str, Any]] | None) -> dict[str, dict[str, Any]]:
    """{function name: {param: declared JSON-schema type (str or list) or None}}."""
    out: dict[str, dict[str, Any]] = {}
    for tool in tools or []:
        try:
            fn = _tool_function(tool)
            props = (fn.get("parameters") or {}).get("properties") or {}
            out[str(fn.get("name"))] = {
                k: (v.get("type") if isinstance(v, Mapping) else None) for k, v in props.items()
            }
        except (AttributeError, TypeError):
            continue
    return out


def convert_value(raw: str, declared: Any) -> Any:
    """Decode one parameter value using the declared schema type.

    A string type keeps the raw text exactly (the template writes strings raw). Other types are
    JSON-decoded, falling back to the text when that fails. With no schema, only values that look
    like JSON objects/arrays are decoded: "42" might be a string, "{...}" almost never is.
    """
    types = declared if isinstance(declared, list) else [declared]
    if "string" in types:
        return raw
    text = raw.strip()
    if declared is None and not text.startswith(("{", "[")):
        return raw
    try:
        return json.loads(text)
    except (json.JSONDecodeError, ValueError):
        return raw


def _parse_invoke(body: str, name: str, types: dict[str, Any], errors: list[str]) -> ToolCall:
    args: dict[str, Any] = {}
    pos = 0
    while True:
        m = _PARAM_OPEN.search(body, pos)
        if not m:
            break
        end = body.find(_PARAM_CLOSE, m.end())
        key = _attr(m)
        if end < 0:
            errors.append(f"unterminated parameter {key!r} in call to {name!r}")
            break
        args[key] = convert_value(body[m.end() : end], types.get(key))
        pos = end + len(_PARAM_CLOSE)
    return ToolCall(name=name, arguments=args)


def _parse_block(
    block: str, schemas: dict[str, dict[str, Any]], errors: list[str]
) -> list[ToolCall]:
    calls = []
    pos = 0
    while True:
        m = _INVOKE_OPEN.search(block, pos)
        if not m:
            break
        name = _attr(m)
        end = block.find(_INVOKE_CLOSE, m.end())
        # An invoke ends at </invoke>; a following <invoke also ends it (a missing close tag).
        nxt = _INVOKE_OPEN.search(block, m.end())
        if end < 0 or (nxt and nxt.start() < end):
            errors.append(f"unterminated invoke {name!r}")
            pos = nxt.start() if nxt else len(block)
            continue
        if not name:
            errors.append("invoke without a name")
        else:
            calls.append(_parse_invoke(block[m.end() : end], name, schemas.get(name, {}), errors))
        pos = end + len(_INVOKE_CLOSE)
    return calls


def parse_tool_calls(
    text: str, tools: Sequence[Mapping[str, Any]] | None = None
) -> tuple[str, list[ToolCall], list[str]]:
    """Split text into (text outside tool-call blocks, complete calls, problems). Never raises."""
    errors: list[str] = []
    try:
        schemas = _schema_types(tools)
        kept, calls = [], []
        pos = 0
        while True:
            start = text.find(TOOL_CALL_BEGIN, pos)
            if start < 0:
                kept.append(text[pos:])
                break
            kept.append(text[pos:start])
            body_start = start + len(TOOL_CALL_BEGIN)
            end = text.find(TOOL_CALL_END, body_start)
            if end < 0:
                # Truncated generation: keep whatever calls completed, drop the partial markup.
                errors.append("unterminated <minimax:tool_call> block")
                calls += _parse_block(text[body_start:], schemas, errors)
                break
            found = _parse_block(text[body_start:end], schemas, errors)
            if not found:
                errors.append("tool-call block without a complete invoke")
            calls += found
            pos = end + len(TOOL_CALL_END)
        return "".join(kept), calls, errors
    except Exception as exc:  # a parser must never take a server or an episode down
        return text, [], [f"parser error: {type(exc).__name__}: {exc}"]


def parse_output(
    text: str,
    tools: Sequence[Mapping[str, Any]] | None = None,
    thinking_open: bool = True,
) -> ParsedOutput:
    """Parse a generation. `thinking_open`: the prompt ended inside `<think>` (the default
    generation prompt), so everything before `</think>` is reasoning. Never raises."""
    try:
        text = text.replace(END_OF_TURN, "")
        reasoning = None
        body = text
        if THINK_END in text:
            head, _, body = text.partition(THINK_END)
            reasoning = head.split(THINK_BEGIN)[-1].strip("\n")
            body = body.lstrip("\n")
        elif thinking_open:
            # Generation stopped before closing its thought: all of it is reasoning.
            reasoning, body = text.split(THINK_BEGIN)[-1].strip("\n"), ""
        elif text.lstrip().startswith(THINK_BEGIN):
            reasoning, body = text.lstrip()[len(THINK_BEGIN) :].strip("\n"), ""
        content, calls, errors = parse_tool_calls(body, tools)
        # Calls written inside an unterminated thought are still calls the model meant to make.
        if reasoning and TOOL_CALL_BEGIN in reasoning and not calls:
            reasoning, calls, errors = parse_tool_calls(reasoning, tools)
        content = content.strip("\n") if calls else content
        return ParsedOutput(content=content, reasoning=reasoning, tool_calls=calls, errors=errors)
    except Exception as exc:
        return ParsedOutput(content=text if isinstance(text, str) else "", errors=[repr(exc)])


def as_content(text: str, thinking_open: bool = True) -> str:
    """Assistant content in vLLM's `minimax_m2_append_think` style: the generation with the
    `<think>` the prompt opened put back, so that the thought is replayed in later turns."""
    return (THINK_BEGIN + "\n" + text) if thinking_open else text


def safe_stream_prefix(text: str) -> int:
    """How many characters of a growing generation can be streamed as plain content:
    everything before a tool-call block, minus a tail that might be the start of its tag."""
    start = text.find(TOOL_CALL_BEGIN)
    if start >= 0:
        return start
    for k in range(min(len(TOOL_CALL_BEGIN) - 1, len(text)), 0, -1):
        if TOOL_CALL_BEGIN.startswith(text[-k:]):
            return len(text) - k
    return len(text)


# ---------------------------------------------------------------- Jinja twin (for vLLM / HF)

# The same format as `render_messages`, as a Jinja chat template, for engines that render
# prompts themselves (vLLM's --chat-template, HF tokenizer_config.json). Tested to produce
# exactly what `render_messages` produces.
CHAT_TEMPLATE = (
    r"""
{%- macro text(c) -%}
{%- if c is none -%}{%- elif c is string -%}{{ c }}
{%- else -%}{%- for p in c -%}{%- if p is string -%}{{ p }}{%- elif p.type == 'text' -%}{{ p.text }}{%- endif -%}{%- endfor -%}{%- endif -%}
{%- endmacro -%}
{%- set msgs = messages -%}
{%- set sys = none -%}
{%- if msgs and msgs[0].role in ['system', 'developer'] -%}{%- set sys = msgs[0] -%}{%- set msgs = msgs[1:] -%}{%- endif -%}
{%- set ns = namespace(last_user=-1, seen_call=false) -%}
{%- for m in msgs -%}{%- if m.role == 'user' -%}{%- set ns.last_user = loop.index0 -%}{%- endif -%}{%- endfor -%}
{%- set sys_text = text(sys.content) if sys else '' -%}
{{- ']~!b[]~b]system\n' ~ (sys_text if sys_text else (model_identity | default('"""
    + DEFAULT_SYSTEM
    + r"""'))) -}}
{%- if tools -%}
{{- '\n\n# Tools\nYou may call one or more tools to assist with the user query.\nHere are the tools available in JSONSchema format:\n\n<tools>\n' -}}
{%- for t in tools -%}{{- '<tool>' ~ ((t.function if t.function is defined else t) | tojson) ~ '</tool>\n' -}}{%- endfor -%}
{{- '</tools>\n\nWhen making tool calls, use XML format to invoke tools and pass parameters:\n\n<minimax:tool_call>\n<invoke name="tool-name-1">\n<parameter name="param-key-1">param-value-1</parameter>\n<parameter name="param-key-2">param-value-2</parameter>\n...\n</invoke>\n</minimax:tool_call>' -}}
{%- endif -%}
{{- '[e~[\n' -}}
{%- for m in msgs -%}
{%- if m.role == 'assistant' -%}
{{- ']~b]ai\n' -}}
{%- set content = text(m.content) -%}
{%- set reasoning = '' -%}
{%- if m.reasoning_content is string -%}{%- set reasoning = m.reasoning_content -%}
{%- elif '</think>' in content -%}
{%- set reasoning = content.split('</think>')[0].strip('\n').split('<think>')[-1].strip('\n') -%}
{%- set content = content.split('</think>')[-1].strip('\n') -%}
{%- endif -%}
{%- if reasoning and loop.index0 > ns.last_user -%}{{- '<think>\n' ~ reasoning ~ '\n</think>\n\n' -}}{%- endif -%}
{{- content -}}
{%- if m.tool_calls -%}
{{- '\n<minimax:tool_call>\n' -}}
{%- for call in m.tool_calls -%}
{%- set f = call.function if call.function is defined else call -%}
{{- '<invoke name="' ~ f.name ~ '">\n' -}}
{%- if f.arguments is mapping -%}{%- for k, v in f.arguments.items() -%}
{{- '<parameter name="' ~ k ~ '">' ~ (v if v is string else (v | tojson)) ~ '</parameter>\n' -}}
{%- endfor -%}{%- endif -%}
{{- '</invoke>\n' -}}
{%- endfor -%}
{{- '</minimax:tool_call>' -}}
{%- endif -%}
{{- '[e~[\n' -}}
{%- elif m.role == 'tool' -%}
{%- if loop.first or msgs[loop.index0 - 1].role != 'tool' -%}{{- ']~b]tool' -}}{%- endif -%}
{%- if m.content is string or m.content is none -%}{{- '\n<response>' ~ (m.content or '') ~ '</response>' -}}
{%- else -%}{%- for r in m.content -%}{{- '\n<response>' ~ (r.output if r.output is defined else (r.text if r.type == 'text' else r)) ~ '\n</response>' -}}{%- endfor -%}{%- endif -%}
{%- if loop.last or msgs[loop.index0 + 1].role != 'tool' -%}{{- '[e~[\n' -}}{%- endif -%}
{%- elif m.role == 'user' -%}
{{- ']~b]user\n' ~ text(m.content) ~ '[e~[\n' -}}
{%- elif m.role in ['system', 'developer'] -%}
{{- ']~b]system\n' ~ text(m.content) ~ '[e~[\n' -}}
{%- endif -%}
{%- endfor -%}
{%- if add_generation_prompt -%}
{{- ']~b]ai\n' ~ ('<think>\n' if (enable_thinking | default(true)) else '<think>\n</think>\n\n') -}}
{%- endif -%}
"""
).strip()
