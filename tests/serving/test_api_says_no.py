"""The API says no where OpenAI / vLLM do: unknown model, bad content, unknown role, tool_choice
honoured (named / required force a call), admin behind a token and silent about paths.

Request validation is property-tested on the pure checks (hypothesis); the server tests run the
real app on the tiny checkpoints."""

from __future__ import annotations

import json

import httpx
import openai
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from openai import OpenAI

from model.chat import render_messages
from model.serving.validation import (
    ROLES,
    APIError,
    check_messages,
    check_model,
    check_tool_choice,
    close_forced_call,
)
from tests.model_fixtures import TOOL_MESSAGES, TOOLS

TOKEN = "s3cret-admin-token"
HELLO = [{"role": "user", "content": "hello there"}]
TWO_TOOLS = TOOLS + [
    {
        "type": "function",
        "function": {
            "name": "get_time",
            "parameters": {"type": "object", "properties": {"zone": {"type": "string"}}},
        },
    }
]


@pytest.fixture(scope="module")
def server(ckpts):
    from model.serving import build_app
    from tests.model_fixtures import RunningServer

    s = RunningServer(build_app(ckpts["a"], model_name="tiny", max_batch=8, admin_token=TOKEN))
    yield s
    s.close()


def client(server) -> OpenAI:
    return OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=120)


# ------------------------------------------------------------------ property-based checks

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=8,
)
text_parts = st.lists(
    st.fixed_dictionaries({"type": st.just("text"), "text": st.text(max_size=20)}), max_size=3
)
good_content = st.text(max_size=40) | text_parts
good_message = st.builds(
    lambda role, content: {"role": role, "content": content},
    st.sampled_from(["system", "developer", "user", "assistant"]),
    good_content,
)


def _is_text_content(v) -> bool:
    return isinstance(v, str) or (
        isinstance(v, list)
        and all(
            isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str)
            for p in v
        )
    )


@settings(max_examples=150, deadline=None)
@given(st.lists(good_message, min_size=1, max_size=5))
def test_valid_conversations_pass_and_render(messages):
    assert check_messages(messages) is messages
    assert render_messages(messages).startswith("]~!b[")


@settings(max_examples=200, deadline=None)
@given(st.lists(good_message, min_size=1, max_size=4), json_values, st.integers(0, 3))
def test_any_non_text_content_is_a_400(messages, content, at):
    if _is_text_content(content) or content is None:
        content = 5  # the example
    at = at % len(messages)
    messages[at] = {"role": "user", "content": content}
    with pytest.raises(APIError) as exc:
        check_messages(messages)
    assert exc.value.status == 400 and f"messages[{at}].content" in str(exc.value)


@settings(max_examples=200, deadline=None)
@given(json_values)
def test_any_unknown_role_is_a_400(role):
    if role in ROLES:
        role = "wizard"
    with pytest.raises(APIError) as exc:
        check_messages([{"role": role, "content": "hi"}])
    assert exc.value.status == 400 and "role" in str(exc.value)


@settings(max_examples=200, deadline=None)
@given(json_values)
def test_tool_choice_is_one_of_the_four_forms(choice):
    try:
        parsed = check_tool_choice(choice, TWO_TOOLS)
    except APIError as exc:
        assert exc.status == 400
        assert choice not in (None, "none", "auto", "required")
        return
    assert parsed.mode in ("none", "auto", "required", "named")
    if parsed.mode == "named":
        assert parsed.names[0] in ("get_weather", "get_time")


@settings(max_examples=100, deadline=None)
@given(st.text(min_size=1, max_size=30))
def test_any_other_model_name_is_404_model_not_found(name):
    if name == "tiny":
        return
    with pytest.raises(APIError) as exc:
        check_model({"model": name}, "tiny")
    assert exc.value.status == 404 and exc.value.code == "model_not_found"
    check_model({"model": "tiny"}, "tiny")
    check_model({}, "tiny")  # left out: the served model (as vLLM)


@settings(max_examples=150, deadline=None)
@given(st.text(max_size=60), st.booleans())
def test_a_forced_call_is_always_closed_into_a_parseable_call(tail, thinking):
    from model.chat import parse_tool_calls
    from model.serving.validation import call_opening

    text = close_forced_call(call_opening("get_weather", thinking) + tail, "get_weather", thinking)
    _, calls, _ = parse_tool_calls(text, TOOLS)
    assert calls and calls[0].name == "get_weather"


# ------------------------------------------------------------------ the server


def test_unknown_model_is_404_model_not_found(server):
    with pytest.raises(openai.NotFoundError) as exc:
        client(server).chat.completions.create(model="gpt-4o", messages=HELLO, max_tokens=2)
    assert exc.value.code == "model_not_found"
    r = httpx.post(server.url + "/v1/completions", json={"model": "x", "prompt": "a"}, timeout=60)
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"


def test_bad_content_and_unknown_roles_are_400(server):
    c = client(server)
    with pytest.raises(openai.BadRequestError, match="content"):
        c.chat.completions.create(model="tiny", messages=[{"role": "user", "content": 5}])
    with pytest.raises(openai.BadRequestError, match="role"):
        c.chat.completions.create(model="tiny", messages=[{"role": "wizard", "content": "hi"}])
    with pytest.raises(openai.BadRequestError, match="tool_choice"):
        c.chat.completions.create(
            model="tiny",
            messages=HELLO,
            tools=TOOLS,
            tool_choice={"type": "function", "function": {"name": "rm_rf"}},
        )


@pytest.mark.parametrize("stream", [False, True])
def test_named_tool_choice_forces_that_call(server, stream):
    """The untrained checkpoint never writes a call by itself; named tool_choice makes it."""
    c = client(server)
    kw = dict(model="tiny", messages=TOOL_MESSAGES, max_tokens=24, temperature=0)
    plain = c.chat.completions.create(tools=TOOLS, **kw)
    assert not plain.choices[0].message.tool_calls
    forced = {"type": "function", "function": {"name": "get_time"}}
    if not stream:
        r = c.chat.completions.create(tools=TWO_TOOLS, tool_choice=forced, **kw)
        choice = r.choices[0]
        names = [tc.function.name for tc in choice.message.tool_calls]
        reason = choice.finish_reason
    else:
        chunks = list(
            c.chat.completions.create(tools=TWO_TOOLS, tool_choice=forced, stream=True, **kw)
        )
        names = [tc.function.name for ch in chunks for tc in (ch.choices[0].delta.tool_calls or [])]
        reason = chunks[-1].choices[0].finish_reason
    assert names == ["get_time"] and reason == "tool_calls"


def test_required_forces_a_call_of_one_of_the_tools(server):
    r = client(server).chat.completions.create(
        model="tiny",
        messages=TOOL_MESSAGES,
        tools=TWO_TOOLS,
        tool_choice="required",
        max_tokens=24,
        temperature=0.9,
        seed=3,
        n=3,
    )
    for choice in r.choices:
        assert choice.finish_reason == "tool_calls"
        assert choice.message.tool_calls
        assert {tc.function.name for tc in choice.message.tool_calls} <= {"get_weather", "get_time"}
        for tc in choice.message.tool_calls:
            assert isinstance(json.loads(tc.function.arguments), dict)


def test_tool_choice_none_is_honoured(serve_model, ckpts):
    """The tool checkpoint answers TOOL_MESSAGES with a call; with `none` it may not."""
    server = serve_model(ckpts["tool"])
    c = client(server)
    kw = dict(model="tiny", messages=TOOL_MESSAGES, tools=TOOLS, max_tokens=120, temperature=0)
    assert c.chat.completions.create(**kw).choices[0].message.tool_calls
    r = c.chat.completions.create(tool_choice="none", **kw)
    assert not r.choices[0].message.tool_calls and r.choices[0].finish_reason != "tool_calls"


def test_admin_is_off_without_a_token(serve_model, ckpts):
    server = serve_model(ckpts["a"])  # built without admin_token
    r = httpx.post(server.url + "/admin/reload", json={"path": str(ckpts["tool"])}, timeout=60)
    assert r.status_code == 404
    assert server.app.state.engine.version == 0


def test_admin_needs_the_token_and_never_tells_whether_a_path_exists(server, ckpts, tmp_path):
    url = server.url + "/admin/reload"
    body = {"path": str(ckpts["a"])}
    assert httpx.post(url, json=body, timeout=60).status_code == 401
    bad = {"Authorization": "Bearer wrong"}
    assert httpx.post(url, json=body, headers=bad, timeout=60).status_code == 401
    auth = {"Authorization": f"Bearer {TOKEN}"}
    (tmp_path / "config.json").write_text("{}")  # exists, but is no checkpoint
    answers = [
        httpx.post(url, json={"path": p}, headers=auth, timeout=60)
        for p in ("/nonexistent/ckpt", str(tmp_path), "/etc/shadow", "/root")
    ]
    assert {r.status_code for r in answers} == {400}
    assert len({r.text for r in answers}) == 1  # the same words for every path
    assert "nonexistent" not in answers[0].text and "No such" not in answers[0].text
    ok = httpx.post(url, json=body, headers=auth, timeout=120)
    assert ok.status_code == 200 and ok.json()["weights_version"] >= 1
