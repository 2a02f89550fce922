"""Tiny checkpoints and a real server on a free port: fixtures shared by the serving, gateway and
local-brain tests (a pytest plugin loaded from ``tests/conftest.py``)."""

from __future__ import annotations

import contextlib
from pathlib import Path

import pytest
import torch

from model import MiniMaxM2Config, MiniMaxM2ForCausalLM
from model.chat import END_OF_TURN, render_messages
from model.serving import ThreadedServer
from model.tokenizer import default_tokenizer, save_tokenizer

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Weather forecast for a city",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
                "required": ["city"],
            },
        },
    }
]
TOOL_MESSAGES = [{"role": "user", "content": "Weather in Paris?"}]
# What the tool checkpoint learned to answer to TOOL_MESSAGES + TOOLS (the prompt ends in <think>).
TOOL_COMPLETION = (
    'short\n</think>\n\n<minimax:tool_call>\n<invoke name="get_weather">\n'
    '<parameter name="city">Paris</parameter>\n<parameter name="days">2</parameter>\n'
    "</invoke>\n</minimax:tool_call>"
)


def tiny_model(seed: int) -> MiniMaxM2ForCausalLM:
    cfg = MiniMaxM2Config.from_preset("tiny")
    with torch.device("meta"):
        model = MiniMaxM2ForCausalLM(cfg)
    model.to_empty(device="cpu")
    model.init_weights(torch.Generator().manual_seed(seed))
    return model.eval()


def save(model: MiniMaxM2ForCausalLM, out: Path) -> Path:
    model.save_pretrained(out)
    save_tokenizer(default_tokenizer(), out)
    return out


@torch.no_grad()
def fit_tool_head(model: MiniMaxM2ForCausalLM) -> MiniMaxM2ForCausalLM:
    """Refit only the lm_head so that, greedily, the model answers TOOL_MESSAGES + TOOLS with
    TOOL_COMPLETION. The trunk is untouched, so the hidden states along that exact token path
    are fixed; the head that maps them to the wanted next tokens is one least-squares solve.
    The server then really generates the tool call token by token through the whole network
    and parses it on its normal output path."""
    tok = default_tokenizer()
    prompt = tok.encode(render_messages(TOOL_MESSAGES, tools=TOOLS), add_special_tokens=False).ids
    target = tok.encode(TOOL_COMPLETION, add_special_tokens=False).ids + [
        tok.token_to_id(END_OF_TURN)
    ]
    h = model(torch.tensor([prompt + target[:-1]])).hidden_states[0, len(prompt) - 1 :]
    feats = model.model.norm(h).double()
    wanted = torch.nn.functional.one_hot(torch.tensor(target), model.config.vocab_size) * 20.0
    head = torch.linalg.lstsq(feats, wanted.double()).solution.T  # (V, H): margin 20 per step
    model.lm_head.weight.copy_(head.float())
    return model


@contextlib.contextmanager
def one_torch_thread():
    # The test machine has 2 cores shared by 2 xdist workers: oversubscribed intra-op
    # threads make small torch ops 10x slower.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@pytest.fixture(scope="module")
def torch_one_thread():
    with one_torch_thread():
        yield


@pytest.fixture(scope="session")
def ckpts(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("ckpts")
    with one_torch_thread():
        model = tiny_model(seed=0)
        a = save(model, root / "a")
        return {"a": a, "tool": save(fit_tool_head(model), root / "tool")}


RunningServer = ThreadedServer


@pytest.fixture
def serve_model():
    """serve_model(dir) -> RunningServer of our OpenAI-compatible server; closed at teardown."""
    from model.serving import build_app

    servers = []

    def start(path: Path, name: str = "tiny", admin_token: str | None = None) -> RunningServer:
        app = build_app(path, model_name=name, max_batch=8, admin_token=admin_token)
        servers.append(RunningServer(app))
        return servers[-1]

    yield start
    for s in servers:
        s.close()
