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
