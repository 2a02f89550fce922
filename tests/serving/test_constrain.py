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
    assert c.slot("The run diverged.") is None  # outside a slot: the model's own distribution
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
    ids = tok.encode("The run diverged.", add_special_tokens=False).ids
    assert torch.equal(c(ids, logits), logits)


def test_a_tool_call_block_opens_with_an_invoke():
    """Measured 2026-12-04: after a rejected remedy the policy answered the retry with an empty
    block (``<minimax:tool_call>\n</minimax:tool_call>``, unparsable) and the rules brain took
    over. Once a block opens, its first invoke is a slot: a tool on offer, written whole."""
    tok = default_tokenizer()
    c = ToolSchemaConstraint(tok, TOOLS)
    names = [t["function"]["name"] for t in TOOLS]
    assert c.slot("<minimax:tool_call>") == ([f'\n<invoke name="{n}' for n in names], '">', "")
    assert c.slot('<minimax:tool_call>\n<invoke name="give') is not None
    done = '<minimax:tool_call>\n<invoke name="read_findings">\n</invoke>\n</minimax:tool_call>'
    assert c.slot(done) is None and c.slot(done + "\nok") is None  # a closed block: free again
    ids = tok.encode("<minimax:tool_call>", add_special_tokens=False).ids
    close = tok.encode("</minimax:tool_call>", add_special_tokens=False).ids[0]
    logits = torch.zeros(tok.get_vocab_size())
    logits[close] = 100.0  # a model that wants to close the block at once
    assert c(ids, logits)[close] == float("-inf")
    for seed in range(5):  # random logits right after the block opens still name a real tool
        text = _generate(c, tok, "<minimax:tool_call>", 60, seed)
        assert any(f'<minimax:tool_call>\n<invoke name="{n}">' in text for n in names), text


class _Vocab:
    def __init__(self, pieces):
        self.pieces = pieces

    def get_vocab_size(self):
        return len(self.pieces)

    def decode(self, ids, skip_special_tokens=False):
        return "".join(self.pieces[i] for i in ids)


def test_token_texts_are_never_another_tokenizers():
    """The token texts were cached by ``id(tokenizer)``: once a tokenizer was freed, a new one
    (another vocabulary) could get its id and be read with the old texts."""
    from model.serving.constrain import _pieces

    for n in range(2, 40):  # a freed tokenizer's id is soon another's
        vocab = _Vocab([f"t{i}" for i in range(n)])
        assert len(_pieces(vocab)) == n


def test_a_tool_with_no_allowed_value_for_a_required_parameter_is_off_the_menu():
    """Measured 2026-12-05: once every listed remedy was tried, the policy still wrote a
    ``propose_config_patch`` (an unlisted id, then none) and rules took over. An empty list of
    remedy ids is not "no constraint": the tool cannot be called validly, so it is not offered."""
    tok = default_tokenizer()
    tools = [dict(t) for t in TOOLS]
    tools[2] = {"type": "function", "function": {"name": "propose_config_patch", "parameters": {
        "properties": {"remedy_id": {"type": "string"}}, "required": ["remedy_id"]}}}  # fmt: skip
    tools.append({"type": "function", "function": {"name": "give_up", "parameters": {
        "properties": {"reason": {"type": "string"}}, "required": ["reason"]}}})  # fmt: skip
    none_left = ToolSchemaConstraint(tok, tools, {("propose_config_patch", "remedy_id"): []})
    names = none_left.slot('<minimax:tool_call>\n<invoke name="')[0]
    assert names == ["read_findings", "submit_diagnosis", "give_up"]
    for seed in range(5):
        text = _generate(none_left, tok, "<minimax:tool_call>", 60, seed)
        assert "propose_config_patch" not in text, text
    # one listed remedy: the tool is on offer, its id is the listed one
    one = ToolSchemaConstraint(tok, tools, {("propose_config_patch", "remedy_id"): ["raise_lr"]})
    assert "propose_config_patch" in one.slot('<minimax:tool_call>\n<invoke name="')[0]
    # an optional parameter with no values closes nothing (it can be left out)
    optional = ToolSchemaConstraint(tok, tools, {("submit_diagnosis", "summary"): []})
    assert "submit_diagnosis" in optional.slot('<minimax:tool_call>\n<invoke name="')[0]


def test_a_tool_is_chosen_by_the_whole_names_probability(ckpts):
    """Token by token, a closed tool's mass flows into an open one that shares its first
    tokens (``propose_co`` → ``propose_code_patch``). ``choose_option`` scores each option
    whole: the pick is the argmax of full log-probs computed by a plain forward pass, and the
    log-probs it returns for the chosen tokens are the model's own (what RL records)."""
    from model import MiniMaxM2ForCausalLM
    from model.serving.constrain import choose_option

    model = MiniMaxM2ForCausalLM.from_pretrained(ckpts["a"]).eval()
    tok = default_tokenizer()
    prompt = tok.encode("Run 7 is failing. Pick one tool.", add_special_tokens=False).ids
    names = ["read_findings", "propose_config_patch", "propose_code_patch", "give_up"]
    options = [
        tok.encode(f'<minimax:tool_call>\n<invoke name="{n}">', add_special_tokens=False).ids
        for n in names
    ]

    def whole(o: list[int]) -> torch.Tensor:
        seq = torch.tensor([prompt + o])
        with torch.no_grad():
            return model.token_logprobs(seq[:, :-1], seq[:, 1:])[0, len(prompt) - 1 :]

    ref = [whole(o) for o in options]
    sums = torch.stack([r.sum() for r in ref])
    for subset in ([0, 1, 2, 3], [0, 2, 3], [2, 3]):  # e.g. propose_config_patch closed
        k, ids, lps = choose_option(model, prompt, [options[i] for i in subset])
        assert subset[k] == subset[int(sums[subset].argmax())]
        assert ids == options[subset[k]]
        assert torch.allclose(torch.tensor(lps), ref[subset[k]], atol=1e-4)
    # sampled at temperature 1: the options' own softmax (seeded, so repeatable)
    probs = torch.softmax(sums, 0)
    g = torch.Generator().manual_seed(0)
    picks = [choose_option(model, prompt, options, 1.0, g)[0] for _ in range(200)]
    freq = torch.bincount(torch.tensor(picks), minlength=4).float() / 200
    assert torch.allclose(freq, probs, atol=0.1), (freq, probs)
    again = torch.Generator().manual_seed(0)
    assert picks[:20] == [choose_option(model, prompt, options, 1.0, again)[0] for _ in range(20)]


def test_a_call_closes_only_once_its_required_parameters_are_written():
    """Measured 2026-12-07: after RL one policy answered ``submit_diagnosis`` without its
    ``cause`` twice, and rules took over. Between parameters the next one or the close is a
    slot: ``</invoke>`` only once every required parameter is written, and no parameter twice."""
    tok = default_tokenizer()
    tools = [{"type": "function", "function": {"name": "submit_diagnosis", "parameters": {
        "properties": {"cause": {"enum": ["lr_too_high", "lr_too_low"]},
                       "summary": {"type": "string"}}, "required": ["cause"]}}},
             {"type": "function", "function": {"name": "read_findings",
                                               "parameters": {"properties": {}}}}]  # fmt: skip
    c = ToolSchemaConstraint(tok, tools)
    call = '<minimax:tool_call>\n<invoke name="submit_diagnosis">'
    assert c.slot(call) == (['\n<parameter name="'], "", "")
    assert c.slot(call + '\n<parameter name="')[0] == ["cause", "summary"]
    one = call + '\n<parameter name="summary">the lr</parameter>'
    assert c.slot(one) == (['\n<parameter name="'], "", "")  # cause still missing
    assert c.slot(one + '\n<parameter name="')[0] == ["cause"]  # not summary again
    both = one + '\n<parameter name="cause">lr_too_low</parameter>'
    assert c.slot(both) == (["\n</invoke>"], "", "")  # nothing left but the close
    cause = call + '\n<parameter name="cause">lr_too_high</parameter>'
    assert c.slot(cause) == (['\n<parameter name="', "\n</invoke>"], "", "")
    assert c.slot(call + '\n<parameter name="summary">free text') is None  # a value is free
    assert c.slot('<minimax:tool_call>\n<invoke name="read_findings">') == (
        ["\n</invoke>"], "", "")  # fmt: skip
    only = ToolSchemaConstraint(tok, [{"type": "function", "function": {
        "name": "submit_diagnosis", "parameters": {"properties": {
            "cause": {"enum": ["lr_too_high", "lr_too_low"]}}, "required": ["cause"]}}}])  # fmt: skip
    g = torch.Generator().manual_seed(1)
    close = tok.encode("\n</invoke>", add_special_tokens=False).ids
    for _ in range(3):  # random logits that want to close at once still write the cause
        ids = tok.encode(call, add_special_tokens=False).ids
        out: list[int] = []
        for _ in range(80):
            logits = torch.randn(tok.get_vocab_size(), generator=g)
            logits[close[0]] += 50.0
            out.append(int(only(ids + out, logits).argmax()))
            if "</invoke>" in tok.decode(out, skip_special_tokens=False):
                break
        text = tok.decode(out, skip_special_tokens=False)
        assert '<parameter name="cause">lr_too_' in text and text.endswith("</invoke>"), text


def test_the_value_slot_of_a_tool_and_uniform_exploration(ckpts):
    """``value_slot``: a tool's first required parameter with values, the caller's (listed:
    explorable) before a schema enum. ``choose_option(explore=1)`` samples the options
    uniformly whatever the model prefers, and returns the model's own log-probs."""
    from model import MiniMaxM2ForCausalLM
    from model.serving.constrain import choose_option

    tok = default_tokenizer()
    tools = [
        {"type": "function", "function": {"name": "propose_config_patch", "parameters": {
            "properties": {"rationale": {"type": "string"}, "remedy_id": {"type": "string"}},
            "required": ["remedy_id"]}}},
        {"type": "function", "function": {"name": "submit_diagnosis", "parameters": {
            "properties": {"cause": {"type": "string", "enum": ["a", "b"]}},
            "required": ["cause"]}}},
        {"type": "function", "function": {"name": "read_findings", "parameters": {}}},
    ]  # fmt: skip
    c = ToolSchemaConstraint(tok, tools, {("propose_config_patch", "remedy_id"): ["x", "y"]})
    assert c.value_slot("propose_config_patch") == ("remedy_id", ["x", "y"], True)
    assert c.value_slot("submit_diagnosis") == ("cause", ["a", "b"], False)
    assert c.value_slot("read_findings") is None

    model = MiniMaxM2ForCausalLM.from_pretrained(ckpts["a"]).eval()
    prompt = tok.encode("Pick one.", add_special_tokens=False).ids
    options = [tok.encode(w, add_special_tokens=False).ids for w in ("alpha", "beta", "gamma")]
    g = torch.Generator().manual_seed(0)
    picks = [choose_option(model, prompt, options, 1.0, g, explore=1.0) for _ in range(300)]
    freq = torch.bincount(torch.tensor([k for k, _, _ in picks]), minlength=3).float() / 300
    assert torch.allclose(freq, torch.full((3,), 1 / 3), atol=0.08), freq
    k, ids, lps = picks[0]
    seq = torch.tensor([prompt + ids])
    with torch.no_grad():
        ref = model.token_logprobs(seq[:, :-1], seq[:, 1:])[0, len(prompt) - 1 :]
    assert torch.allclose(torch.tensor(lps), ref, atol=1e-4)
    # greedy ignores explore
    assert (
        choose_option(model, prompt, options, 0.0, g, explore=1.0)[0]
        == choose_option(model, prompt, options)[0]
    )
