"""The LLM brain writes whole scripts: they run in the same sandbox; a bad one is debugged
once by the model, then the rules brain takes the step — scripted, and through our own
OpenAI-compatible server (a tiny random checkpoint: it writes no script, so the format retry
and the rules fallback are what the path shows)."""

from __future__ import annotations

import json

import pytest
from langchain_core.language_models.fake_chat_models import FakeListChatModel

from experiments.mle.competition import load_competition, prepare
from workbench.mle.agent import run_task
from workbench.mle.brains import LlmBrain
from workbench.mle.config import load_mle_scaffold

BAD = "Plan: read the data.\n```python\nraise ValueError('columns mismatch')\n```"
STILL_BAD = "The columns were wrong.\n```python\nraise KeyError('target')\n```"


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("data")
    prepare(load_competition("wine-cultivar", d))
    return d


def _run(brain, data_dir, tmp_path, **search):
    sc = load_mle_scaffold(None).with_search(num_drafts=1, **search)
    out = tmp_path / "run"
    res = run_task(
        "wine-cultivar", data_dir=data_dir, brain=brain, scaffold=sc, track=False, out_dir=out
    )
    return res, json.loads((out / "journal.json").read_text())["nodes"]


def test_bad_script_is_debugged_once_then_rules_take_the_step(data_dir, tmp_path):
    seen: list[str] = []

    class Recording(FakeListChatModel):
        def invoke(self, messages, *a, **k):  # what the model was shown
            seen.append("\n".join(str(m.content) for m in messages))
            return super().invoke(messages, *a, **k)

    brain = LlmBrain(Recording(responses=[BAD, STILL_BAD, BAD]), seed=0, name="openai")
    res, nodes = _run(brain, data_dir, tmp_path, steps=3, debug_prob=0.0)
    assert [(n["stage"], n["brain"], n["status"]) for n in nodes[:2]] == [
        ("draft", "openai", "buggy"),
        ("debug", "openai", "buggy"),
    ]
    assert nodes[1]["parent"] == 0 and "ValueError: columns mismatch" in nodes[0]["error"]
    assert nodes[2]["brain"] == "rules" and nodes[2]["plan"].startswith("(the model's script")
    assert nodes[2]["status"] == "ok" and res.valid_submission
    assert len(seen) == 2  # the third step never asked the model
    assert "Wine" in seen[0] and "train.csv: columns" in seen[0]  # description and schema
    assert "columns mismatch" in seen[1]  # the debug prompt shows the failure


def test_llm_brain_through_our_own_server(serve_model, ckpts, data_dir, tmp_path, monkeypatch):
    from langchain_openai import ChatOpenAI

    from workbench.mle import agent

    full = agent.data_preview  # the tiny model's context is 2,048 tokens: a narrower schema
    monkeypatch.setattr(agent, "data_preview", lambda p: full(p, max_cols=3))

    server = serve_model(ckpts["a"])
    chat = ChatOpenAI(
        base_url=server.url + "/v1",
        api_key="none",
        model="tiny",
        temperature=0.0,
        max_tokens=24,
        timeout=60,
        max_retries=0,
    )
    brain = LlmBrain(chat, seed=0, name="openai")
    res, (node,) = _run(brain, data_dir, tmp_path, steps=1)
    # The prompt went out and an answer came back (twice: the format retry), then rules.
    assert [e.get("parsed") for e in brain.events] == [False, False], brain.events
    assert res.nodes == 1 and res.valid_submission
    assert node["brain"] == "rules" and node["plan"].startswith("(model answer unusable")
