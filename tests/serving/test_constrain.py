"""Structured output for tool calls: inside a name or enum slot only the schema's values can be
written; a random model, constrained, still names only real tools and enum values."""

from __future__ import annotations

import torch

from model.serving.constrain import ToolSchemaConstraint
from model.tokenizer import default_tokenizer

TOOLS = [
    {"type": "function", "function": {"name": "read_findings", "parameters": {"properties": {}}}},
    {"type": "function", "function": {"name": "submit_diagnosis", "parameters": {"properties": {
        "cause": {"enum": ["lr_too_high", "lr_too_low", "overfit_capacity"]},
        "summary": {"type": "string"}}}}},
    {"type": "function", "function": {"name": "propose_config_patch", "parameters": {
        "properties": {"remedy_id": {"type": "string"}}}}},
]  # fmt: skip


def _generate(c: ToolSchemaConstraint, tok, start: str, steps: int, seed: int) -> str:
    """Greedy decoding of random logits under the constraint (a stand-in for a bad model)."""
    ids = tok.encode(start, add_special_tokens=False).ids
    g = torch.Generator().manual_seed(seed)
    out: list[int] = []
    for _ in range(steps):
        logits = torch.randn(tok.get_vocab_size(), generator=g)
        out.append(int(c(ids + out, logits).argmax()))
        written = tok.decode(out, skip_special_tokens=False)
        if '">' in written or "</parameter>" in written:  # the slot is closed
            break
    return tok.decode(ids + out, skip_special_tokens=False)


def test_slots_hold_only_the_schemas_values():
    tok = default_tokenizer()
    c = ToolSchemaConstraint(tok, TOOLS, {("propose_config_patch", "remedy_id"): ["more_data"]})
    head = "<minimax:tool_call>\n"
    assert c.slot(head) is None  # outside a slot: the model's own distribution
    assert c.slot(head + '<invoke name="sub') == (
        ["read_findings", "submit_diagnosis", "propose_config_patch"],
        '">',
        "sub",
    )
    call = head + '<invoke name="submit_diagnosis">\n<parameter name="'
    assert c.slot(call)[0] == ["cause", "summary"]
    assert c.slot(call + 'cause">lr_')[0] == ["lr_too_high", "lr_too_low", "overfit_capacity"]
    assert c.slot(call + 'summary">the lr') is None  # free text stays free
    prop = head + '<invoke name="propose_config_patch">\n<parameter name="remedy_id">'
    assert c.slot(prop) == (["more_data"], "</parameter>", "")  # the listed remedy ids
    for seed in range(5):  # random logits still spell a real tool, cause and remedy
        name = _generate(c, tok, head + '<invoke name="', 40, seed)
        assert any(f'<invoke name="{t["function"]["name"]}">' in name for t in TOOLS), name
        cause = _generate(c, tok, call + 'cause">', 40, seed)
        assert any(f'cause">{v}</parameter>' in cause for v in ("lr_too_high", "lr_too_low",
                                                               "overfit_capacity")), cause  # fmt: skip
        remedy = _generate(c, tok, prop, 40, seed)
        assert 'remedy_id">more_data</parameter>' in remedy, remedy
    # unconstrained logits pass through untouched outside slots
    logits = torch.randn(tok.get_vocab_size())
    ids = tok.encode(head, add_special_tokens=False).ids
    assert torch.equal(c(ids, logits), logits)
