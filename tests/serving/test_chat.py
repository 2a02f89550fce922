"""Chat format: exact rendering, tolerant parsing (fuzzed), round trips of tool calls."""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from model.chat import (
    DEFAULT_SYSTEM,
    TOOL_CALL_BEGIN,
    TOOL_CALL_END,
    ToolCall,
    parse_output,
    parse_tool_calls,
    render_messages,
    render_tool_calls,
    safe_stream_prefix,
)

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather for a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
        },
    },
}


def test_plain_conversation_renders_exact_template_text():
    text = render_messages(
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    )
    assert text == "]~!b[]~b]system\nBe brief.[e~[\n]~b]user\nHi[e~[\n]~b]ai\n<think>\n"


def test_default_system_and_no_thinking_prompt():
    text = render_messages([{"role": "user", "content": "x"}], enable_thinking=False)
    assert text.startswith(f"]~!b[]~b]system\n{DEFAULT_SYSTEM}[e~[\n")
    assert text.endswith("]~b]ai\n<think>\n</think>\n\n")


def test_tools_are_declared_in_the_system_turn():
    text = render_messages([{"role": "user", "content": "x"}], tools=[WEATHER])
    system = text.split("[e~[")[0]
    assert "# Tools" in system and "<tools>\n<tool>" in system
    declared = system.split("<tool>")[1].split("</tool>")[0]
    assert json.loads(declared) == WEATHER["function"]
    assert system.endswith(f"</invoke>\n{TOOL_CALL_END}")


def test_tool_call_turn_and_grouped_tool_results():
    messages = [
        {"role": "user", "content": "weather?"},
        {
            "role": "assistant",
            "content": "<think>\nneed data\n</think>\n\nChecking.",
            "tool_calls": [
                {
                    "id": "c1",
                    "type": "function",
                    "function": {
                        "name": "get_weather",
                        "arguments": '{"city": "Paris", "days": 2}',
                    },
                }
            ],
        },
        {"role": "tool", "tool_call_id": "c1", "content": "sunny"},
        {"role": "tool", "tool_call_id": "c2", "content": "rain"},
    ]
    text = render_messages(messages, add_generation_prompt=False)
    assert text.endswith(
        "]~b]ai\n<think>\nneed data\n</think>\n\nChecking.\n"
        '<minimax:tool_call>\n<invoke name="get_weather">\n'
        '<parameter name="city">Paris</parameter>\n<parameter name="days">2</parameter>\n'
        "</invoke>\n</minimax:tool_call>[e~[\n"
        "]~b]tool\n<response>sunny</response>\n<response>rain</response>[e~[\n"
    )


def test_reasoning_before_the_last_user_turn_is_dropped():
    messages = [
        {"role": "user", "content": "a"},
        {"role": "assistant", "content": "<think>\nold\n</think>\n\nanswer"},
        {"role": "user", "content": "b"},
    ]
    text = render_messages(messages)
    assert "old" not in text and "]~b]ai\nanswer[e~[\n" in text


def test_tool_message_without_a_call_is_rejected():
    with pytest.raises(ValueError):
        render_messages([{"role": "user", "content": "a"}, {"role": "tool", "content": "x"}])


def test_parse_generation_with_reasoning_content_and_calls():
    gen = (
        'let me look\n</think>\n\nOne moment.\n<minimax:tool_call>\n<invoke name="get_weather">\n'
        '<parameter name="city">New York</parameter>\n<parameter name="days">3</parameter>\n'
        "</invoke>\n</minimax:tool_call>"
    )
    out = parse_output(gen, tools=[WEATHER])
    assert out.reasoning == "let me look"
    assert out.content == "One moment."
    assert [(c.name, c.arguments) for c in out.tool_calls] == [
        ("get_weather", {"city": "New York", "days": 3})
    ]
    assert out.errors == []


def test_truncated_output_keeps_complete_calls_and_reports_the_rest():
    gen = (
        "</think>\n<minimax:tool_call>\n<invoke name='a'><parameter name=\"x\">1</parameter></invoke>"
        '<invoke name="b"><parameter name="y">2'
    )
    out = parse_output(gen)
    assert [c.name for c in out.tool_calls] == ["a"]
    assert out.errors  # the unterminated parts are reported, not raised


def test_unfinished_thought_is_all_reasoning():
    out = parse_output("still thinking about it")
    assert out.reasoning == "still thinking about it" and out.content == "" and not out.tool_calls


def test_safe_stream_prefix_holds_back_a_possible_tag():
    assert safe_stream_prefix("hello <mini") == len("hello ")
    assert safe_stream_prefix("hello <b>") == len("hello <b>")
    assert safe_stream_prefix("x" + TOOL_CALL_BEGIN + "...") == 1


# ---------------------------------------------------------------- property tests

_MARKUP = ("<", ">", "[e~[", "]~b]", "]~!b[")
_text = st.text(min_size=0, max_size=30).filter(lambda s: not any(m in s for m in _MARKUP))
_name = st.from_regex(r"[A-Za-z_][A-Za-z0-9_\-.]{0,15}", fullmatch=True)
_json_leaf = st.one_of(
    st.integers(), st.booleans(), st.floats(allow_nan=False, allow_infinity=False), st.none()
)
_json = st.recursive(
    _json_leaf | _text,
    lambda c: st.lists(c, max_size=3) | st.dictionaries(_text, c, max_size=3),
    max_leaves=6,
)
_value = st.one_of(_text, _json)
_call = st.builds(lambda n, a: ToolCall(n, a), _name, st.dictionaries(_name, _value, max_size=4))


def _schema_for(calls: list[ToolCall]) -> list[dict]:
    # The schema tells the parser which values are strings; that is what makes parsing exact.
    tools = {}
    for c in calls:
        props = tools.setdefault(c.name, {})
        for k, v in c.arguments.items():
            props[k] = {
                "type": "string"
                if isinstance(v, str)
                else ["object", "array", "number", "boolean", "null"]
            }
    return [
        {
            "type": "function",
            "function": {"name": n, "parameters": {"type": "object", "properties": p}},
        }
        for n, p in tools.items()
    ]


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_call, min_size=1, max_size=3), _text)
def test_every_rendered_call_round_trips(calls, prefix):
    # Consistent types per (function, key) across calls, as a real schema would have.
    seen: dict = {}
    calls = [
        c
        for c in calls
        if all(
            seen.setdefault((c.name, k), type(v) is str) == (type(v) is str)
            for k, v in c.arguments.items()
        )
    ]
    if not calls:
        return
    text = prefix + "\n" + render_tool_calls(calls)
    content, parsed, errors = parse_tool_calls(text, tools=_schema_for(calls))
    assert errors == []
    assert content == prefix + "\n"
    assert [(c.name, c.arguments) for c in parsed] == [(c.name, c.arguments) for c in calls]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_call, min_size=1, max_size=2))
def test_round_trip_through_a_rendered_conversation(calls):
    msg = {"role": "assistant", "content": "", "tool_calls": [c.to_openai() for c in calls]}
    text = render_messages([{"role": "user", "content": "go"}, msg], add_generation_prompt=False)
    turn = text.split("]~b]ai\n")[1]
    out = parse_output(turn, tools=_schema_for(calls), thinking_open=False)
    assert [c.name for c in out.tool_calls] == [c.name for c in calls]
    assert [json.loads(c.to_openai()["function"]["arguments"]) for c in out.tool_calls] == [
        json.loads(c.to_openai()["function"]["arguments"]) for c in calls
    ]


_pieces = st.sampled_from(
    [
        TOOL_CALL_BEGIN,
        TOOL_CALL_END,
        '<invoke name="f">',
        "<invoke name=",
        "</invoke>",
        '<parameter name="k">',
        "</parameter>",
        "<think>",
        "</think>",
        "[e~[",
        "\n",
        "<",
        ">",
        '"',
        "x",
    ]
)


@settings(max_examples=250, deadline=None)
@given(st.lists(st.one_of(_pieces, st.text(max_size=8)), max_size=40), st.booleans())
def test_parser_never_raises_on_fuzzed_markup(parts, thinking_open):
    out = parse_output("".join(parts), tools=[WEATHER], thinking_open=thinking_open)
    assert isinstance(out.content, str)
    assert all(
        isinstance(c.name, str) and c.name and isinstance(c.arguments, dict) for c in out.tool_calls
    )
    for c in out.tool_calls:
        json.dumps(c.arguments)  # always serialisable into an OpenAI tool call


@settings(max_examples=150, deadline=None)
@given(st.text(max_size=200))
def test_parser_never_raises_on_arbitrary_text(text):
    parse_output(text)
    safe_stream_prefix(text)
