"""The `local` brain: a LangChain chat model over an in-process checkpoint."""

from __future__ import annotations

import pytest
import torch
from langchain_core.messages import HumanMessage, ToolMessage

from model import MiniMaxM2ForCausalLM
from model.tokenizer import default_tokenizer
from tests.model_fixtures import TOOL_MESSAGES, TOOLS
from workbench.errors import BadInputError
from workbench.supervisor.brains.local import LocalChatModel

pytestmark = pytest.mark.usefixtures("torch_one_thread")


def _assert_record_is_the_models(ai, ckpt) -> None:
    """The answer's token record is the model's own: one log-prob per completion token, equal to
    a fresh forward pass over prompt + completion."""
    meta = ai.response_metadata
    completion = meta["completion_token_ids"]
    assert len(completion) == len(meta["logprobs"]) == ai.usage_metadata["output_tokens"]
    model = MiniMaxM2ForCausalLM.from_pretrained(ckpt).eval()
    seq = torch.tensor([meta["prompt_token_ids"] + completion])
    with torch.no_grad():
        ref = model.token_logprobs(seq[:, :-1], seq[:, 1:])[0, len(meta["prompt_token_ids"]) - 1 :]
    assert torch.allclose(ref, torch.tensor(meta["logprobs"]), atol=1e-4)


def test_bind_tools_and_parse_a_generated_call(ckpts):
    # the fixture model was fitted to answer with thinking on (a short thought, then the call)
    brain = LocalChatModel(ckpts["tool"], thinking=True, temperature=0.0, max_new_tokens=120)
    ai = brain.bind_tools(TOOLS).invoke([HumanMessage(TOOL_MESSAGES[0]["content"])])
    assert [(c["name"], c["args"]) for c in ai.tool_calls] == [
        ("get_weather", {"city": "Paris", "days": 2})
    ]
    assert ai.invalid_tool_calls == []
    meta = ai.response_metadata
    assert meta["finish_reason"] == "tool_calls" and meta["reasoning"] == "short"
    _assert_record_is_the_models(ai, ckpts["tool"])

    # The call and a tool result go back in: the conversation renders and generation continues.
    follow = [
        HumanMessage(TOOL_MESSAGES[0]["content"]),
        ai,
        ToolMessage("sunny", tool_call_id=ai.tool_calls[0]["id"]),
    ]
    nxt = brain.bind_tools(TOOLS).invoke(follow, max_tokens=4)
    assert isinstance(nxt.content, str) and nxt.usage_metadata["input_tokens"] > len(
        meta["prompt_token_ids"]
    )


def test_plain_answer_and_make_brain(ckpts):
    from workbench.supervisor.brains import make_brain

    brain = make_brain("local", model=str(ckpts["a"]))
    assert isinstance(brain, LocalChatModel)
    # the loop's rollout settings reach the brain (an option dropped here is silently off)
    opts = {"temperature": 1.0, "seed": 5, "explore": 0.5, "max_new_tokens": 7}
    rollout = make_brain("local", model=str(ckpts["a"]), **opts)
    assert {k: getattr(rollout, k) for k in opts} == opts
    ai = brain.invoke("hello", max_tokens=5)
    # thinking off by default: the answer is the text itself, no thought put back in front
    assert not ai.content.startswith("<think>") and ai.tool_calls == []
    assert 0 < ai.usage_metadata["output_tokens"] <= 5
    thinking = LocalChatModel(ckpts["a"], thinking=True).invoke("hello", max_tokens=5)
    assert thinking.content.startswith("<think>\n")


def test_missing_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(BadInputError, match="not a checkpoint directory"):
        LocalChatModel(tmp_path / "nope")


def test_thinking_off_the_tool_is_chosen_whole_and_recorded_as_the_models_tokens(ckpts):
    """Without a thought the answer opens with the call: its tool is chosen whole among those
    on offer (``choose_option``), the rest generated; the token record covers both, and its
    log-probs are the model's own over the whole completion."""
    brain = LocalChatModel(ckpts["a"], temperature=0.0, max_new_tokens=24)
    ai = brain.bind_tools(TOOLS).invoke([HumanMessage(TOOL_MESSAGES[0]["content"])])
    meta = ai.response_metadata
    names = [t["function"]["name"] for t in TOOLS]

    text = default_tokenizer().decode(meta["completion_token_ids"], skip_special_tokens=False)
    assert any(text.startswith(f'<minimax:tool_call>\n<invoke name="{n}">') for n in names), text
    _assert_record_is_the_models(ai, ckpts["a"])


def test_a_listed_value_is_chosen_whole_and_explored_on_request(ckpts):
    """After the tool, the value of its first required parameter that a tool result listed
    (a remedy id) is chosen whole as well; the record is still the model's own. With
    ``explore`` (sampling) that choice is sometimes uniform: every listed id comes up, where
    the policy alone would keep to its favourite."""
    import json

    from langchain_core.messages import AIMessage

    propose = {"type": "function", "function": {"name": "propose_config_patch", "parameters": {
        "type": "object", "properties": {"remedy_id": {"type": "string"},
                                         "rationale": {"type": "string"}},
        "required": ["remedy_id"]}}}  # fmt: skip
    ids = ["raise_lr", "raise_lr_100x", "clip_grads"]
    listed = {"remedies": [{"id": i, "patch": [{"knob": "lr"}]} for i in ids]}
    msgs = [
        HumanMessage("Run 7 is failing. Propose one fix."),
        AIMessage("", tool_calls=[{"name": "read_findings", "args": {}, "id": "c1"}]),
        ToolMessage(json.dumps(listed), tool_call_id="c1"),
    ]

    def opening(brain=None, **kw):
        brain = brain or LocalChatModel(ckpts["a"], max_new_tokens=16, **kw)
        ai = brain.bind_tools([propose]).invoke(msgs)
        meta = ai.response_metadata
        text = default_tokenizer().decode(meta["completion_token_ids"], skip_special_tokens=False)
        head = '<minimax:tool_call>\n<invoke name="propose_config_patch">\n<parameter name="remedy_id">'
        assert text.startswith(head), text
        return ai, text[len(head) :].split("</parameter>")[0]

    ai, greedy = opening(temperature=0.0)
    assert greedy in ids
    _assert_record_is_the_models(ai, ckpts["a"])
    assert opening(temperature=0.0, explore=1.0)[1] == greedy  # (greedy: nothing explored)

    # one seeded brain (one episode): each answer draws anew, yet the episode repeats
    def draws():
        brain = LocalChatModel(ckpts["a"], max_new_tokens=16, temperature=1.0, explore=1.0, seed=3)
        return [opening(brain)[1] for _ in range(12)]

    first = draws()
    assert set(first) == set(ids), first
    assert draws() == first
