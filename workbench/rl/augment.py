"""More teacher episodes from the ones recorded: rewrite what should not matter, ask the teacher.

Eight recorded episodes teach a small policy eight prompts by heart (measured: it falls back on
every held-out decision). The ``rules`` teacher is a pure function of the conversation
(``rules_decision``), so a rewritten conversation has a known right answer: we rewrite the
evidence of a recorded episode and let the teacher answer it again. One rewrite is consistent
across the episode's turns (the turns still share their prefix) and changes:

- the run id, the config path, the numbers in the evidence (each scaled by its own factor);
- the metric names, to other names of the same role from the scaffold's alias map;
- the doctor's cause, to another cause of the playbook, with that cause's remedies (some
  dropped into ``skipped``, as the graph does when a repo lacks a knob, or all of them: then
  the teacher gives up): the answers become
  what the teacher says for that cause, so the policy learns to read the evidence it is shown
  rather than to recognise a prompt.

Only training episodes reach this module (the loop and ``train sft`` keep the split), and only
turns the teacher itself answered: an episode whose recorded answers the teacher would not
give again (a fallback after a policy's retry, an ``openai`` teacher) is kept as recorded.
"""

from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass, replace
from functools import cache

from jinja2.utils import htmlsafe_json_dumps

from workbench.rl.episodes import Episode, Turn

RUN_ID = re.compile(r"\b[0-9a-f]{32}\b")
NUMBER = re.compile(r"(?<![\w.])\d+\.\d+(?:e[+-]?\d+)?")
CONFIG_PATHS = ("config.yaml", "configs/train.yaml", "configs/train.json", "train.toml",
                "conf/config.yaml", "config.json", "configs/run.toml", "hparams.yaml")  # fmt: skip
LOSS_ROLES = ("train_loss", "eval_loss", "grad_norm", "lr", "throughput")


@cache
def _vocab() -> tuple[dict[str, tuple[str, ...]], dict]:
    """Plain metric names per role (glob and regex patterns left out) and the playbook."""
    from scaffold.loader import load_scaffold

    sc = load_scaffold()
    names = {
        role: tuple(p for p in pats if not p.startswith("re:") and not set(p) & set("*?[]"))
        for role, pats in sc.metrics.roles.items()
    }
    return {r: n for r, n in names.items() if len(n) > 1}, sc.playbook.causes


def _rules_answer(messages: tuple[dict, ...], tools: tuple[str, ...]) -> dict:
    from langchain_core.messages import ToolMessage

    from workbench.supervisor.brains.rules import rules_decision

    lc = [
        ToolMessage(content=m["content"], tool_call_id=m.get("tool_call_id") or "x",
                    name=_tool_name(m))
        for m in messages if m["role"] == "tool"
    ]  # fmt: skip
    name, args = rules_decision(lc, list(tools))
    return {"content": "", "tool_calls": [{"id": "aug", "name": name, "args": args}]}


def _same_answer(a: dict, b: dict) -> bool:
    def key(ans):
        return [(c["name"], c["args"]) for c in ans["tool_calls"]]

    return key(a) == key(b)


def replayable(ep: Episode) -> bool:
    """True when every recorded answer is what the rules teacher gives on that conversation
    (so a rewritten conversation's answers are the teacher's too)."""
    if not ep.turns:
        return False
    for t in ep.turns:
        if any(m["role"] == "tool" and _tool_name(m) != "read_findings" for m in t.messages):
            return False
        if not _same_answer(_rules_answer(t.messages, t.tools), t.answer):
            return False
    return True


def _tool_name(msg: dict) -> str:
    # parse_episode keeps the call id; the teacher's results are read_findings JSON objects
    try:
        data = json.loads(msg["content"])
    except (TypeError, json.JSONDecodeError):
        return "?"
    return "read_findings" if isinstance(data, dict) and "findings" in data else "?"


@dataclass(frozen=True)
class Rewrite:
    run_id: str
    config: str
    names: dict[str, str]  # metric name → another name of its role
    cause: str | None  # the doctor's new cause (None: keep)
    remedies: list[dict] | None
    skipped: list[str]
    scale: dict[str, str]  # number text → its rewrite

    def text(self, s: str) -> str:
        s = RUN_ID.sub(self.run_id, s)
        if self.names:  # one pass: a name rewritten is never rewritten again
            alt = "|".join(re.escape(n) for n in sorted(self.names, key=len, reverse=True))
            s = re.sub(rf"(?<![\w/.-])({alt})(?![\w/.-])", lambda m: self.names[m.group(1)], s)
        return NUMBER.sub(lambda m: self.scale.get(m.group(0), m.group(0)), s)

    def findings_json(self, content: str, old_config: str) -> str:
        data = json.loads(content)
        if self.cause is not None:
            for key in ("doctor_diagnosis", "diagnosis"):
                if isinstance(data.get(key), dict):
                    data[key]["cause"] = self.cause
            data["remedies"] = self.remedies
            data.pop("skipped", None)
            if self.skipped:
                data["skipped"] = self.skipped
        if data.get("config") == old_config:
            data["config"] = self.config
        for key in ("findings", "doctor_diagnosis"):  # the evidence; remedies stay as they are
            if key in data:
                data[key] = json.loads(self.text(json.dumps(data[key])))
        return RUN_ID.sub(self.run_id, json.dumps(data))

    def user(self, content: str, old_config: str, summaries: dict) -> str:
        s = content.replace(json.dumps(old_config), json.dumps(self.config))
        if self.cause is not None:
            m = re.search(r"diagnosis \(JSON\): (\{.*?\})\n", s)
            if m:
                d = json.loads(m.group(1))
                d["cause"] = self.cause
                d["summary"] = summaries[self.cause]
                new = str(htmlsafe_json_dumps(d, sort_keys=True))  # as the prompt's `tojson`
                s = s[: m.start(1)] + new + s[m.end(1) :]
        return self.text(s)


def _numbers(ep: Episode) -> list[str]:
    """The numbers of the doctor's findings (not the remedies' patch values)."""
    seen: set[str] = set()
    for t in ep.turns:
        for m in t.messages:
            if m["role"] == "tool" and _tool_name(m) == "read_findings":
                seen |= set(NUMBER.findall(json.dumps(json.loads(m["content"])["findings"])))
    return sorted(seen)


def _jitter(num: str, factor: float) -> str:
    v = float(num) * factor
    if "e" in num:
        return f"{v:.3e}"
    decimals = len(num.split(".")[1])
    return f"{v:.{decimals}f}"


def _config_of(ep: Episode) -> str | None:
    for t in ep.turns:
        for m in t.messages:
            if m["role"] == "tool":
                try:
                    cfg = json.loads(m["content"]).get("config")
                except (json.JSONDecodeError, AttributeError):
                    continue
                if isinstance(cfg, str):
                    return cfg
    return None


def sample_rewrite(ep: Episode, rng: random.Random, relabel: float = 0.75) -> Rewrite:
    roles, causes = _vocab()
    text = "\n".join(m["content"] for t in ep.turns for m in t.messages if m["role"] != "system")
    names = {}
    for role in LOSS_ROLES:
        for name in roles.get(role, ()):
            if re.search(rf"(?<![\w/.-]){re.escape(name)}(?![\w/.-])", text):
                names[name] = rng.choice([n for n in roles[role] if n != name])
    cause = remedies = None
    skipped: list[str] = []
    if rng.random() < relabel:
        cause = rng.choice([c for c in causes if any(r.patch for r in causes[c].remedies)])
        rems = [
            {"id": r.id, "description": r.description,
             "patch": [{"key": p.key, "op": p.op, "value": p.value} for p in r.patch]}
            for r in causes[cause].remedies
        ]  # fmt: skip
        if rng.random() < 0.15:  # every remedy tried or unusable here: the teacher gives up
            skipped, rems = [r["id"] for r in rems], []
        elif len(rems) > 1 and rng.random() < 0.3:  # a repo that lacks the first remedy's knob
            skipped = [rems.pop(0)["id"]]
        remedies = rems
    scale = {n: _jitter(n, rng.uniform(0.5, 2.0)) for n in _numbers(ep)}
    return Rewrite(
        run_id=f"{rng.getrandbits(128):032x}",
        config=rng.choice(CONFIG_PATHS),
        names=names,
        cause=cause,
        remedies=remedies,
        skipped=skipped,
        scale=scale,
    )


def augment_episode(ep: Episode, rng: random.Random, relabel: float = 0.75) -> Episode:
    """One rewritten copy of a replayable teacher episode, answered by the teacher again."""
    _, causes = _vocab()
    summaries = {c: spec.summary for c, spec in causes.items()}
    rw = sample_rewrite(ep, rng, relabel)
    old_config = _config_of(ep) or ""
    turns: list[Turn] = []
    for t in ep.turns:
        msgs = []
        for m in t.messages:
            if m["role"] == "system":
                msgs.append(m)
            elif m["role"] == "tool":
                msgs.append({**m, "content": rw.findings_json(m["content"], old_config)})
            elif m["role"] == "user":
                msgs.append({**m, "content": rw.user(m["content"], old_config, summaries)})
            else:
                msgs.append(m)
        msgs_t = tuple(msgs)
        turns.append(
            replace(t, messages=msgs_t, answer=_rules_answer(msgs_t, t.tools), tokens=None)
        )
    return replace(ep, turns=turns, thread_id=f"{ep.thread_id}~aug")


def relabel(ep: Episode) -> Episode:
    """DAgger: every answer of an episode (a policy's, mistakes and retries included) replaced
    by what the rules teacher answers in that very conversation, so the policy also learns to
    recover from the states its own mistakes lead to. Only for training-split episodes."""
    turns = [replace(t, answer=_rules_answer(t.messages, t.tools), tokens=None) for t in ep.turns]
    return replace(ep, turns=turns, thread_id=f"{ep.thread_id}~relabel")
