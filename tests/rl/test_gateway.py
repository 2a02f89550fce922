"""The recording gateway in front of our real server: sessions recorded token for token."""

from __future__ import annotations

import json
import threading

import pytest
from openai import OpenAI

from tests.model_fixtures import TOOL_MESSAGES, TOOLS, RunningServer
from workbench.rl.gateway import SessionLog, create_app, read_session

pytestmark = pytest.mark.usefixtures("torch_one_thread")


@pytest.fixture(scope="module")
def stack(ckpts, tmp_path_factory):
    """(our server on the tool checkpoint, a gateway in front of it, the gateway's out dir)."""
    from model.serving import build_app

    out = tmp_path_factory.mktemp("sessions")
    upstream = RunningServer(build_app(ckpts["tool"], model_name="tiny", max_batch=8))
    gateway = RunningServer(create_app(upstream.url + "/v1", out))
    yield upstream, gateway, out
    gateway.close()
    upstream.close()


def test_openai_client_session_is_recorded_exactly(stack):
    upstream, gateway, out = stack
    c = OpenAI(base_url=f"{gateway.url}/sessions/ep-1/v1", api_key="k", max_retries=0, timeout=120)
    assert [m.id for m in c.models.list().data] == ["tiny"]  # other routes pass through
    plain = [{"role": "user", "content": "hello"}]
    r1 = c.chat.completions.create(model="tiny", messages=plain, max_tokens=5, temperature=0)
    # The client did not ask for token data: the gateway asked for it, and hid it again.
    assert r1.choices[0].logprobs is None and "prompt_token_ids" not in (r1.model_extra or {})
    r2 = c.chat.completions.create(
        model="tiny",
        messages=TOOL_MESSAGES,
        tools=TOOLS,
        max_tokens=120,
        temperature=0,
        stream=True,
    )
    chunks = list(r2)
    streamed = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    assert all(ch.choices[0].logprobs is None for ch in chunks if ch.choices)

    recs = read_session(out / "ep-1.jsonl")
    assert [r["seq"] for r in recs] == [0, 1]
    first, second = recs
    assert first["request"] == {
        "model": "tiny",
        "messages": plain,
        "max_tokens": 5,
        "temperature": 0,
    }
    assert first["response"]["choices"][0]["message"]["content"] == r1.choices[0].message.content
    ids = first["completion_token_ids"][0]
    assert len(ids) == len(first["logprobs"][0]) == r1.usage.completion_tokens
    assert first["prompt_token_ids"] and all(lp <= 0 for lp in first["logprobs"][0])

    assert second["stream"] is True and second["request"]["tools"] == TOOLS
    msg = second["response"]["choices"][0]["message"]
    assert msg["content"] == streamed
    assert [
        (t["function"]["name"], json.loads(t["function"]["arguments"])) for t in msg["tool_calls"]
    ] == [("get_weather", {"city": "Paris", "days": 2})]
    assert second["response"]["choices"][0]["finish_reason"] == "tool_calls"
    assert len(second["completion_token_ids"][0]) == len(second["logprobs"][0]) > 20


def test_supervisor_brain_through_the_gateway(stack):
    """The supervisor's `openai` brain (LangChain ChatOpenAI + bind_tools) pointed at a session."""
    from langchain_core.messages import HumanMessage

    from workbench.supervisor.brains import make_brain

    _, gateway, out = stack
    brain = make_brain("openai", base_url=f"{gateway.url}/sessions/sup-7/v1", model="tiny")
    ai = brain.bind_tools(TOOLS).invoke([HumanMessage(TOOL_MESSAGES[0]["content"])], max_tokens=120)
    assert [(c["name"], c["args"]) for c in ai.tool_calls] == [
        ("get_weather", {"city": "Paris", "days": 2})
    ]
    (rec,) = read_session(out / "sup-7.jsonl")
    assert rec["request"]["messages"] == TOOL_MESSAGES
    assert (
        rec["response"]["choices"][0]["message"]["tool_calls"][0]["function"]["name"]
        == "get_weather"
    )
    assert rec["completion_token_ids"] and rec["prompt_token_ids"]


def test_session_log_appends_are_atomic_and_ids_are_checked(tmp_path):
    log = SessionLog(tmp_path)
    big = "x" * 200_000  # far larger than a pipe buffer: still one line per record

    def write(k: int) -> None:
        for i in range(10):
            log.append("s", {"k": k, "i": i, "pad": big})

    threads = [threading.Thread(target=write, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    with open(tmp_path / "s.jsonl", "a") as f:
        f.write('{"torn": ')  # a crash mid-write leaves at most a torn last line
    recs = read_session(tmp_path / "s.jsonl")
    assert len(recs) == 40 and sorted(r["seq"] for r in recs) == list(range(40))
    for bad in ("../x", "a/b", "", "."):
        with pytest.raises(ValueError):
            log.path(bad)
