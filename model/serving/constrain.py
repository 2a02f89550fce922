"""Structured output for tool calls: the names and enumerated values a tool schema allows.

A small policy writes the tool-call XML well but may misspell an identifier it copies from the
prompt (``overfit_io`` for ``overfit_capacity``). Serving engines answer this with structured
outputs; ours is a logits processor over the MiniMax-M2 XML. Inside one of three *slots* only
tokens that keep the slot's text a prefix of an allowed value (then its terminator) may be
sampled:

- ``<minimax:tool_call>`` … ``">``: a block opens with an invoke of a tool on offer (without
  this slot a model could close an empty block: an answer with no call in it);
- ``<invoke name="`` … ``">``: a tool on offer;
- ``<parameter name="`` … ``">``: a parameter of the tool being invoked, not written yet;
- between parameters: another parameter, or ``</invoke>`` once every required one is written
  (a call cannot close without them: ``submit_diagnosis`` without its ``cause``);
- ``<parameter name="P">`` … ``</parameter>``: one of P's ``enum`` values, where the schema has one
  or the caller names the values (e.g. the remedy ids a tool result just listed).

A tool whose required parameter the caller names *no* values for cannot be called validly, so
it is not on offer: once every listed remedy was tried, ``propose_config_patch`` by id is gone
(an empty list is information, not the absence of a constraint).

Everywhere else the model's distribution is untouched, and the engine's log-probs stay those of
the raw model (what RL's importance ratios need).

Masking token by token has one flaw where values share first tokens: the mass of a value not on
offer flows into an offered one with the same prefix. So where an answer opens with its call
(the local brain, thinking off), the tool is chosen whole first (``choose_option``: each
offered name's full log-prob, one cached forward), then the value of its first required
parameter that has named values (a remedy id), and only the rest is generated under the
slots above.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import torch

from model.chat import TOOL_CALL_BEGIN, TOOL_CALL_END
from model.modeling import KVCache

# a slot's text runs to the end of the generation; it may hold a partial terminator
_INVOKE = re.compile(r'<invoke name="((?:(?!">).)*)$', re.S)
_PARAM_NAME = re.compile(
    r'<invoke name="([^"]+)">(?:(?!</invoke>).)*<parameter name="((?:(?!">).)*)$', re.S
)
_IN_INVOKE = re.compile(r'<invoke name="([^"]+)">((?:(?!</invoke>).)*)$', re.S)
_WRITTEN = re.compile(r'<parameter name="([^"]+)">')
_PARAM_VALUE = re.compile(
    r'<invoke name="([^"]+)">(?:(?!</invoke>).)*<parameter name="([^"]+)">((?:(?!</parameter>).)*)$',
    re.S,
)


def _parameters(tools: Sequence[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Each tool's JSON-schema ``parameters`` by its name."""
    return {
        t.get("function", t)["name"]: t.get("function", t).get("parameters") or {} for t in tools
    }


# id(tokenizer) -> (tokenizer, pieces): the entry holds the tokenizer, so its id is not reused
# by another tokenizer (another vocabulary) while the pieces are cached
_PIECES: dict[int, tuple[Any, tuple[str, ...]]] = {}


def _pieces(tokenizer) -> tuple[str, ...]:
    """Each token's text, decoded once per tokenizer."""
    key = id(tokenizer)
    if key not in _PIECES or _PIECES[key][0] is not tokenizer:
        n = tokenizer.get_vocab_size()
        pieces = tuple(tokenizer.decode([i], skip_special_tokens=False) for i in range(n))
        _PIECES[key] = (tokenizer, pieces)
    return _PIECES[key][1]


class ToolSchemaConstraint:
    """A logits processor (``SamplingParams.logits_processor``) for the tools of one request."""

    def __init__(
        self,
        tokenizer,
        tools: Sequence[dict[str, Any]],
        values: dict[tuple[str, str], Sequence[str]] | None = None,
        prefix: str = "",
    ) -> None:
        self.tokenizer = tokenizer
        self.prefix = prefix  # answer text already chosen (``choose_option``), not generated
        params = _parameters(tools)
        self.schemas = {name: p.get("properties") or {} for name, p in params.items()}
        self.required = required = {
            name: set(p.get("required") or ()) for name, p in params.items()
        }
        values = values or {}
        closed = {t for (t, p), vs in values.items() if not vs and p in required.get(t, ())}
        self.offered = [name for name in self.schemas if name not in closed] or list(self.schemas)
        self.values = {k: [str(v) for v in vs] for k, vs in values.items() if vs}
        self.pieces = _pieces(tokenizer)

    def value_slot(self, tool: str) -> tuple[str, list[str], bool] | None:
        """(parameter, its allowed values, whether the caller named them) for ``tool``'s first
        required parameter (in schema order) whose values are listed, else None."""
        for p in self.schemas.get(tool, {}):
            if p not in self.required.get(tool, ()):
                continue
            if (tool, p) in self.values:
                return p, list(self.values[(tool, p)]), True
            enum = (self.schemas[tool].get(p) or {}).get("enum")
            if enum:
                return p, [str(v) for v in enum], False
        return None

    def slot(self, text: str) -> tuple[list[str], str, str] | None:
        """(allowed values, terminator, the value written so far) if ``text`` ends in a slot."""
        block = text.rfind(TOOL_CALL_BEGIN)
        if block >= 0:  # a block that has not begun an invoke yet: only one may follow
            head = text[block + len(TOOL_CALL_BEGIN) :]
            if '<invoke name="' not in head and TOOL_CALL_END not in head:
                return [f'\n<invoke name="{name}' for name in self.offered], '">', head
        m = _INVOKE.search(text)
        if m:
            return list(self.offered), '">', m.group(1)
        m = _PARAM_VALUE.search(text)
        if m:
            enum = self.values.get((m.group(1), m.group(2))) or (
                (self.schemas.get(m.group(1)) or {}).get(m.group(2), {}).get("enum")
            )
            if enum:
                return [str(v) for v in enum], "</parameter>", m.group(3)
            return None
        m = _PARAM_NAME.search(text)
        if m and m.group(1) in self.schemas:
            done = _WRITTEN.findall(text[text.rfind('<invoke name="') :])
            names = [p for p in self.schemas[m.group(1)] if p not in done]
            return names or list(self.schemas[m.group(1)]), '">', m.group(2)
        m = _IN_INVOKE.search(text)
        if m and m.group(1) in self.schemas:  # between parameters: another one, or the close
            body = m.group(2)
            cut = body.rfind("</parameter>")
            tail = body[cut + len("</parameter>") :] if cut >= 0 else body
            if '<parameter name="' in tail:
                return None
            done = set(_WRITTEN.findall(body))
            left = [p for p in self.schemas[m.group(1)] if p not in done]
            nxt = ['\n<parameter name="'] if left else []
            if not self.required.get(m.group(1), set()) - done:  # nothing required missing
                nxt.append("\n</invoke>")
            return nxt, "", tail
        return None

    def allowed(self, written: str, values: list[str], end: str) -> list[int]:
        targets = [v + end for v in values if (v + end).startswith(written)]
        ok = []
        for i, piece in enumerate(self.pieces):
            if not piece:
                continue
            s = written + piece
            if any(t.startswith(s) or s.startswith(t) for t in targets):
                ok.append(i)
        return ok

    def __call__(self, out_ids: list[int], logits: torch.Tensor) -> torch.Tensor:
        text = self.prefix + self.tokenizer.decode(out_ids, skip_special_tokens=False)
        found = self.slot(text)
        if found is None:
            return logits
        values, end, written = found
        ok = self.allowed(written, values, end)
        if not ok:  # already off every allowed value: leave the mistake to the caller's check
            return logits
        masked = torch.full_like(logits, float("-inf"))
        index = torch.tensor(ok, device=logits.device)
        masked[index] = logits[index]
        return masked


@torch.no_grad()
def choose_option(
    model,
    prompt_ids: list[int],
    options: Sequence[Sequence[int]],
    temperature: float = 0.0,
    generator: torch.Generator | None = None,
    explore: float = 0.0,
) -> tuple[int, list[int], list[float]]:
    """One of ``options`` (token ids that continue ``prompt_ids``) by the model's probability of
    the whole option, as structured-output engines choose among fixed strings. Masking token by
    token instead lets the mass of a value that is not on offer flow into one that shares its
    first tokens: with ``propose_config_patch`` closed, a policy that meant it wrote
    ``propose_co`` and was forced on to ``propose_code_patch`` (measured 2026-12-07: whole
    options scored -0.6 for the closed tool, -3.5 for ``give_up``, -29.1 for the code patch).

    Greedy at ``temperature`` 0, else sampled from the options' softmax at that temperature,
    or, with probability ``explore`` (sampling only), uniformly among them: RL's exploration of
    choices the policy has all but ruled out (an SFT policy that always names a playbook's
    first remedy gives the second 1e-4). Returns the index, the chosen option's ids and their
    raw log-probs (what RL records). The options' shared first tokens are run once, then the
    rest as one batch on copies of the cache.
    """
    options = [list(o) for o in options]
    if not options or any(not o for o in options):
        raise ValueError("every option needs at least one token")
    shared = 0
    while all(len(o) > shared + 1 and o[shared] == options[0][shared] for o in options):
        shared += 1  # (each option keeps one token of its own)
    device = next(model.parameters()).device
    cache = KVCache(model.config.num_hidden_layers)
    ctx = torch.tensor([list(prompt_ids) + options[0][:shared]], device=device)
    out = model(ctx, past_key_values=cache, use_cache=True, logits_to_keep=shared + 1)
    lp = torch.log_softmax(out.logits[0].float(), dim=-1)  # row j predicts the shared token j
    head = [float(lp[j, t]) for j, t in enumerate(options[0][:shared])]
    rest = [o[shared:] for o in options]
    width = max(len(r) for r in rest)
    cache.reorder(torch.zeros(len(rest), dtype=torch.long, device=device))
    # right padding: causal attention never lets an option's own tokens see its padding
    batch = torch.tensor([r + [r[-1]] * (width - len(r)) for r in rest], device=device)
    lp2 = torch.log_softmax(model(batch, past_key_values=cache, use_cache=True).logits.float(), -1)
    per = [
        [float(lp[shared, r[0]])] + [float(lp2[k, j - 1, r[j]]) for j in range(1, len(r))]
        for k, r in enumerate(rest)
    ]
    scores = torch.tensor([sum(p) for p in per])
    if temperature > 0 and explore > 0 and float(torch.rand(1, generator=generator)) < explore:
        k = int(torch.randint(len(options), (1,), generator=generator))
    elif temperature > 0:
        probs = torch.softmax(scores / temperature, dim=0)
        k = int(torch.multinomial(probs, 1, generator=generator))
    else:
        k = int(scores.argmax())
    return k, options[k], head + per[k]
