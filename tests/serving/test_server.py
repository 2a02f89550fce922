"""The real server on a free port with tiny checkpoints, driven by the `openai` client."""

from __future__ import annotations

import json
import threading

import httpx
import openai
import pytest
import torch
from openai import OpenAI

from model import MiniMaxM2ForCausalLM
from model.chat import parse_tool_calls, render_messages
from model.tokenizer import load_tokenizer
from tests.model_fixtures import TOOL_COMPLETION, TOOL_MESSAGES, TOOLS

HELLO = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hello there"}]


def client(server) -> OpenAI:
    return OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def server_a(ckpts):
    from model.serving import build_app
    from tests.model_fixtures import RunningServer

    s = RunningServer(build_app(ckpts["a"], model_name="tiny", max_batch=8))
    yield s
    s.close()


def test_health_models_and_plain_chat(server_a):
    assert httpx.get(server_a.url + "/health").json()["status"] == "ok"
    c = client(server_a)
    assert [m.id for m in c.models.list().data] == ["tiny"]
    r = c.chat.completions.create(model="tiny", messages=HELLO, max_tokens=6, temperature=0)
    choice = r.choices[0]
    assert choice.message.role == "assistant"
    # append-think convention (as vLLM's minimax_m2_append_think): the opened <think> is put back.
    assert choice.message.content.startswith("<think>\n") and len(choice.message.content) > 8
    assert choice.finish_reason in ("length", "stop")
    assert 0 < r.usage.completion_tokens <= 6 and r.usage.prompt_tokens > 10


def test_streaming_matches_non_streaming(server_a):
    c = client(server_a)
    full = c.chat.completions.create(model="tiny", messages=HELLO, max_tokens=8, temperature=0)
    chunks = list(
        c.chat.completions.create(
            model="tiny",
            messages=HELLO,
            max_tokens=8,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    assert len([ch for ch in chunks if ch.choices]) >= 3  # really incremental
    assert text == full.choices[0].message.content
    finals = [
        ch.choices[0].finish_reason for ch in chunks if ch.choices and ch.choices[0].finish_reason
    ]
    assert finals == [full.choices[0].finish_reason]
    assert chunks[-1].usage.completion_tokens == full.usage.completion_tokens


def test_text_completions_and_stop_strings(server_a):
    c = client(server_a)
    r = c.completions.create(model="tiny", prompt="The loss", max_tokens=6, temperature=0)
    text = r.choices[0].text
    assert r.object == "text_completion" and text
    cut = text[len(text) // 2 :][:2]
    if cut:
        s = c.completions.create(
            model="tiny", prompt="The loss", max_tokens=6, temperature=0, stop=[cut]
        )
        assert s.choices[0].text == text[: text.find(cut)] and s.choices[0].finish_reason == "stop"


def test_token_id_extension_matches_model_token_logprobs(server_a, ckpts):
    c = client(server_a)
    r = c.chat.completions.create(
        model="tiny",
        messages=HELLO,
        max_tokens=8,
        temperature=0.9,
        seed=3,
        logprobs=True,
        extra_body={"return_token_ids": True},
    )
    prompt_ids = r.model_extra["prompt_token_ids"]
    out_ids = r.choices[0].model_extra["token_ids"]
    served = [t.logprob for t in r.choices[0].logprobs.content]
    tok = load_tokenizer(ckpts["a"])
    assert prompt_ids == tok.encode(render_messages(HELLO), add_special_tokens=False).ids
    assert len(out_ids) == len(served) == r.usage.completion_tokens
    model = MiniMaxM2ForCausalLM.from_pretrained(ckpts["a"]).eval()
    seq = torch.tensor([prompt_ids + out_ids])
    with torch.no_grad():
        ref = model.token_logprobs(seq[:, :-1], seq[:, 1:])[0, len(prompt_ids) - 1 :]
    assert torch.allclose(ref, torch.tensor(served), atol=1e-4), (ref, served)


def test_eight_concurrent_requests_are_batched_and_exact(server_a):
    c = client(server_a)
    prompts = [[{"role": "user", "content": f"question {i} " * (1 + i % 3)}] for i in range(8)]
    engine = server_a.app.state.engine
    # Alone, one after the other: the reference answers.
    alone = [
        c.chat.completions.create(
            model="tiny", messages=m, max_tokens=8, temperature=0, extra_body={"ignore_eos": True}
        )
        for m in prompts
    ]
    engine.stats["max_batch_seen"] = 0
    results: dict[int, object] = {}

    def ask(i: int) -> None:
        results[i] = c.chat.completions.create(
            model="tiny",
            messages=prompts[i],
            max_tokens=8,
            temperature=0,
            extra_body={"ignore_eos": True},
        )

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert sorted(results) == list(range(8))
    assert engine.stats["max_batch_seen"] > 1  # they shared decode steps
    for i in range(8):
        assert results[i].choices[0].message.content == alone[i].choices[0].message.content
        assert results[i].usage.completion_tokens == 8


def test_bad_requests_get_openai_errors(server_a):
    c = client(server_a)
    with pytest.raises(openai.BadRequestError):
        c.chat.completions.create(model="tiny", messages=[], max_tokens=2)
    with pytest.raises(openai.BadRequestError):  # a tool result with no call before it
        c.chat.completions.create(
            model="tiny",
            messages=[
                {"role": "user", "content": "x"},
                {"role": "tool", "content": "y", "tool_call_id": "1"},
            ],
        )
    with pytest.raises(openai.BadRequestError):
        c.chat.completions.create(model="tiny", messages=HELLO, temperature=7)
    r = httpx.post(server_a.url + "/admin/reload", json={"path": "/nonexistent/ckpt"}, timeout=60)
    assert r.status_code == 404  # no admin token: the admin endpoints are off


def test_tool_call_round_trip(serve_model, ckpts):
    """The tool checkpoint generates the call XML; the server returns OpenAI tool_calls; the
    call and its result go back in the next request and are rendered into the prompt."""
    server = serve_model(ckpts["tool"])
    c = client(server)
    r = c.chat.completions.create(
        model="tiny", messages=TOOL_MESSAGES, tools=TOOLS, max_tokens=120, temperature=0
    )
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls"
    (call,) = choice.message.tool_calls
    assert call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"city": "Paris", "days": 2}  # typed by schema
    assert choice.message.content == "<think>\nshort\n</think>\n\n"

    # Streaming gives the same call and content.
    chunks = list(
        c.chat.completions.create(
            model="tiny",
            messages=TOOL_MESSAGES,
            tools=TOOLS,
            max_tokens=120,
            temperature=0,
            stream=True,
        )
    )
    content = "".join(ch.choices[0].delta.content or "" for ch in chunks)
    calls = [tc for ch in chunks for tc in (ch.choices[0].delta.tool_calls or [])]
    assert content == choice.message.content
    assert [(tc.function.name, json.loads(tc.function.arguments)) for tc in calls] == [
        ("get_weather", {"city": "Paris", "days": 2})
    ]
    assert chunks[-1].choices[0].finish_reason == "tool_calls"

    # Round trip: the assistant turn and the tool result are rendered into the next prompt.
    follow = TOOL_MESSAGES + [
        choice.message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": "sunny, 21C"},
    ]
    r2 = c.chat.completions.create(
        model="tiny",
        messages=follow,
        tools=TOOLS,
        max_tokens=4,
        temperature=0,
        extra_body={"return_token_ids": True},
    )
    prompt = load_tokenizer(ckpts["tool"]).decode(
        r2.model_extra["prompt_token_ids"], skip_special_tokens=False
    )
    assert prompt == render_messages(follow, tools=TOOLS)
    ai_turn = prompt.split("]~b]ai\n")[1]
    _, replayed, errors = parse_tool_calls(ai_turn, TOOLS)
    assert errors == [] and [(t.name, t.arguments) for t in replayed] == [
        ("get_weather", {"city": "Paris", "days": 2})
    ]
    assert (
        "<think>\nshort\n</think>\n\n" in ai_turn
    )  # the thought is replayed after the last user turn
    assert "]~b]tool\n<response>sunny, 21C</response>[e~[\n]~b]ai\n<think>\n" in prompt
    assert TOOL_COMPLETION.split("</think>")[1].strip() in prompt


def test_reload_changes_outputs_without_dropping_requests(serve_model, ckpts):
    server = serve_model(ckpts["a"], admin_token="t0ken")
    c = client(server)
    before = c.chat.completions.create(
        model="tiny", messages=TOOL_MESSAGES, tools=TOOLS, max_tokens=30, temperature=0
    )
    assert before.choices[0].finish_reason != "tool_calls"

    # A long request in flight while the reload happens must finish, on the old weights.
    inflight: dict[str, object] = {}

    def long_request() -> None:
        inflight["r"] = c.chat.completions.create(
            model="tiny",
            messages=HELLO,
            max_tokens=40,
            temperature=0,
            extra_body={"ignore_eos": True},
        )

    t = threading.Thread(target=long_request)
    t.start()
    engine = server.app.state.engine
    while not engine._running and t.is_alive():
        pass
    r = httpx.post(
        server.url + "/admin/reload",
        json={"path": str(ckpts["tool"])},
        headers={"Authorization": "Bearer t0ken"},
        timeout=120,
    )
    assert r.status_code == 200 and r.json()["weights_version"] == 1
    t.join(120)
    assert inflight["r"].usage.completion_tokens == 40
    assert inflight["r"].model_extra["weights_version"] == 0

    after = c.chat.completions.create(
        model="tiny", messages=TOOL_MESSAGES, tools=TOOLS, max_tokens=120, temperature=0
    )
    assert after.model_extra["weights_version"] == 1
    assert after.choices[0].finish_reason == "tool_calls"
    assert after.choices[0].message.content != before.choices[0].message.content
