"""vLLM plugin glue, tested without vLLM: entry point, weight translation, registration."""

from __future__ import annotations

import importlib
import importlib.metadata
import json
import sys
import types

import jinja2
import pytest
import torch

from model import vllm_plugin
from model.chat import CHAT_TEMPLATE, render_messages
from tests.model_fixtures import TOOLS, tiny_model


def test_entry_point_is_declared_and_importable_without_vllm():
    eps = importlib.metadata.entry_points(group="vllm.general_plugins")
    (ep,) = [e for e in eps if e.name == "m2_workbench"]
    assert ep.value == "model.vllm_plugin:register"
    assert ep.load() is vllm_plugin.register
    if importlib.util.find_spec("vllm") is None:
        assert vllm_plugin.register() is False


def test_fused_weights_translate_to_the_released_per_expert_layout():
    model = tiny_model(seed=1)
    cfg = model.config
    state = model.state_dict()
    out = dict(vllm_plugin.to_vllm_weights(state.items()))
    assert not any(".mlp." in k for k in out)
    E, inter = cfg.num_local_experts, cfg.intermediate_size
    for layer in range(cfg.num_hidden_layers):
        p = f"model.layers.{layer}"
        fused = state[f"{p}.mlp.experts.gate_up_proj"]
        for e in range(E):
            w1 = out[f"{p}.block_sparse_moe.experts.{e}.w1.weight"]
            w3 = out[f"{p}.block_sparse_moe.experts.{e}.w3.weight"]
            assert w1.shape == (inter, cfg.hidden_size)
            assert torch.equal(torch.cat([w1, w3]), fused[e])
            assert torch.equal(
                out[f"{p}.block_sparse_moe.experts.{e}.w2.weight"],
                state[f"{p}.mlp.experts.down_proj"][e],
            )
        assert torch.equal(out[f"{p}.block_sparse_moe.gate.weight"], state[f"{p}.mlp.gate.weight"])
        assert f"{p}.block_sparse_moe.e_score_correction_bias" in out
    # Released-layout names pass through untouched.
    released = [("model.layers.0.block_sparse_moe.experts.3.w2.weight", torch.zeros(1))]
    assert [k for k, _ in vllm_plugin.to_vllm_weights(released)] == [released[0][0]]


def test_register_puts_a_translating_subclass_in_the_registry(monkeypatch):
    """A stand-in for the two vLLM names the plugin touches (vLLM is not installable here)."""
    registered = {}
    loaded = []

    class Registry:
        @staticmethod
        def register_model(arch, target):
            registered[arch] = target

    class Base:
        def load_weights(self, weights):
            loaded.extend(name for name, _ in weights)
            return set(loaded)

    vllm = types.ModuleType("vllm")
    vllm.ModelRegistry = Registry
    mm = types.ModuleType("vllm.model_executor.models.minimax_m2")
    mm.MiniMaxM2ForCausalLM = Base
    for name in ("vllm.model_executor", "vllm.model_executor.models"):
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    monkeypatch.setitem(sys.modules, "vllm", vllm)
    monkeypatch.setitem(sys.modules, "vllm.model_executor.models.minimax_m2", mm)
    monkeypatch.delitem(vllm_plugin.__dict__, vllm_plugin.CLASS_NAME, raising=False)

    assert vllm_plugin.register() is True
    module, cls_name = registered["MiniMaxM2ForCausalLM"].split(":")
    cls = getattr(importlib.import_module(module), cls_name)
    assert issubclass(cls, Base)
    fused = torch.zeros(2, 6, 4)
    cls().load_weights([("model.layers.0.mlp.experts.gate_up_proj", fused)])
    assert loaded == [
        f"model.layers.0.block_sparse_moe.experts.{e}.{w}.weight"
        for e in (0, 1)
        for w in ("w1", "w3")
    ]
    monkeypatch.delitem(vllm_plugin.__dict__, vllm_plugin.CLASS_NAME, raising=False)


CONVERSATIONS = [
    [{"role": "user", "content": "hi"}],
    [
        {"role": "system", "content": "S"},
        {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
    ],
    [
        {"role": "user", "content": "q"},
        {
            "role": "assistant",
            "content": "<think>\nr\n</think>\n\nc",
            "tool_calls": [
                {
                    "id": "1",
                    "type": "function",
                    "function": {"name": "f", "arguments": {"a": "x", "n": [1, {"b": "é"}]}},
                }
            ],
        },
        {"role": "tool", "content": "r1"},
        {"role": "tool", "content": "r2"},
    ],
    [
        {"role": "user", "content": "q"},
        {"role": "assistant", "content": "<think>\nold\n</think>\n\nans"},
        {"role": "user", "content": "q2"},
    ],
]


@pytest.mark.parametrize("conv", CONVERSATIONS)
def test_jinja_template_matches_render_messages(conv, tmp_path):
    # transformers/vLLM render with these settings and a non-ASCII-escaping tojson.
    env = jinja2.Environment(trim_blocks=True, lstrip_blocks=True)
    env.filters["tojson"] = lambda x, **_: json.dumps(x, ensure_ascii=False)
    template = env.from_string(vllm_plugin.write_chat_template(tmp_path).read_text().rstrip("\n"))
    for tools in (None, TOOLS):
        for gen in (True, False):
            want = render_messages(conv, tools=tools, add_generation_prompt=gen)
            assert template.render(messages=conv, tools=tools, add_generation_prompt=gen) == want
    assert CHAT_TEMPLATE.startswith("{%- macro")


def test_vllm_backend_command_and_clear_error_without_vllm(ckpts):
    from model.serving import vllm_command
    from workbench.cli.serve import serve
    from workbench.errors import WorkbenchError

    cmd = vllm_command(ckpts["a"], "0.0.0.0", 9000, "tiny")
    assert cmd[:3] == ["vllm", "serve", str(ckpts["a"])]
    joined = " ".join(cmd)
    assert "--tool-call-parser minimax_m2" in joined
    assert "--reasoning-parser minimax_m2_append_think" in joined
    assert "--enable-auto-tool-choice" in joined and "--served-model-name tiny" in joined
    if importlib.util.find_spec("vllm") is None:
        with pytest.raises(WorkbenchError, match="vLLM is not installed"):
            serve(model=ckpts["a"], backend="vllm")
