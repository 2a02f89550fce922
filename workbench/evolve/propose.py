"""Proposals: a scaffold edit (new text for some data files) chosen from the parent's failures.

* ``rules`` brain — targeted mutation: pick one failed selection run and change what it
  implicates (a false finding → that detector's threshold made stricter; a missed finding →
  looser; a wrong cause → a signal weight of the expected or the predicted cause in the
  playbook, or a new signal).  Edits are made on the text, so comments and layout survive and
  the diff a reviewer reads is one or two lines.  A run whose cause was right but whose first
  remedy did not fix it (measured by rerunning, ``workbench.rl.outcomes``) changes that
  remedy: one numeric value a rung along a discrete ladder, or a lower-ranked remedy first.
* any chat-model brain — the same evidence rendered into a prompt; the answer's SEARCH/REPLACE
  blocks are applied and validated (``workbench.supervisor.query``: retried once with the error
  shown; then the rules brain).

Every proposal is validated before any branch exists: only data files may change (no code can
enter the scaffold) and the result must load with ``scaffold.loader``.
"""

from __future__ import annotations

import fnmatch
import json
import random
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from scaffold.loader import ScaffoldError, load_scaffold
from workbench.supervisor.patches import PatchError, apply_blocks, guard, parse_blocks

EDITABLE = (
    "detectors.yaml", "playbook.yaml", "metrics.yaml", "knobs.yaml", "prompts/*.yaml", "mle.yaml",
)  # fmt: skip
PROMPTS = Path(__file__).with_name("prompts.yaml")


class InvalidEdit(ValueError):
    """A proposed edit that may not be applied (the message says why)."""


@dataclass
class Proposal:
    files: dict[str, str]  # relative path → new text (only changed files)
    description: str
    brain: str = "rules"


# ------------------------------------------------------------------ validation
def editable(rel: str) -> bool:
    return any(fnmatch.fnmatchcase(rel, p) for p in EDITABLE) and ".." not in rel


def validate(parent_files: dict[str, str], proposal: Proposal) -> None:
    """Raise ``InvalidEdit`` unless the edit touches only data files and loads cleanly."""
    if not proposal.files:
        raise InvalidEdit("the edit changes no file")
    for rel in proposal.files:
        if not editable(rel):
            raise InvalidEdit(f"{rel}: not an editable scaffold data file ({', '.join(EDITABLE)})")
    try:  # the one patch guard: no scaffold edit may touch the fault harness's switches
        guard(parent_files, proposal.files)
    except PatchError as exc:
        raise InvalidEdit(str(exc)) from None
    merged = {**parent_files, **proposal.files}
    with tempfile.TemporaryDirectory(prefix="wb-scaffold-check-") as tmp:
        for rel, text in merged.items():
            (Path(tmp) / rel).parent.mkdir(parents=True, exist_ok=True)
            (Path(tmp) / rel).write_text(text)
        for rel in proposal.files:
            if rel.startswith("prompts/"):
                try:
                    yaml.safe_load(proposal.files[rel])
                except yaml.YAMLError as exc:
                    raise InvalidEdit(f"{rel}: not valid YAML") from exc
        try:
            load_scaffold(tmp)
        except ScaffoldError as exc:
            raise InvalidEdit(str(exc).replace(tmp + "/", "")) from None
        if "mle.yaml" in proposal.files:  # the MLE search's knobs have their own validator
            from workbench.errors import BadInputError
            from workbench.mle.config import load_mle_scaffold

            try:
                load_mle_scaffold(tmp)
            except BadInputError as exc:
                raise InvalidEdit(str(exc).replace(tmp + "/", "")) from None


# ------------------------------------------------------------------ number formatting
def fmt(value: float, like: str) -> str:
    """A YAML number in the style of the original token (int stays int; floats keep a dot)."""
    if re.fullmatch(r"-?\d+", like.strip()):
        return str(max(1, int(round(value))) if value > 0 else int(round(value)))
    s = f"{value:.4g}"
    if "e" in s:
        mant, exp = s.split("e")
        s = f"{mant if '.' in mant else mant + '.0'}e{exp}"  # PyYAML needs the dot
    elif "." not in s:
        s += ".0"
    return s


# ------------------------------------------------------------------ detectors.yaml (text edits)
# +1: a larger value makes the detector stricter (fires less); -1: a smaller value does.
STRICTER = {
    "divergence": {"ratio": 1, "min_delta": 1, "persist": 1, "megatron_ratio": 1},
    "loss_spike": {"z": 1, "min_rel": 1, "rel_floor": 1},
    "plateau": {"min_improvement": -1, "min_points": 1},
    "exploding_gradients": {"z": 1, "ratio": 1, "abs_max": 1},
    "vanishing_gradients": {"ratio": -1, "abs_min": -1, "persist": 1},
    "overfitting": {"rise": 1, "persist": 1, "train_drop": 1},
    "expert_collapse": {"load_ratio": 1, "dead": 1, "entropy_frac": -1, "persist": 1},
    "throughput_drop": {"drop": -1, "persist": 1},
    "stalled": {"factor": 1, "min_seconds": 1},
}
_KEY_LINE = re.compile(
    r"^(?P<pre>\s+(?P<key>[A-Za-z_]+):\s*(?:&\w+\s+)?)(?P<val>-?[0-9][0-9.eE+-]*)(?P<post>.*)$"
)


def _section(lines: list[str], name: str) -> tuple[int, int]:
    """Line range of the top-level mapping ``name:`` (header excluded)."""
    start = next((i for i, ln in enumerate(lines) if ln.startswith(f"{name}:")), None)
    if start is None:
        raise InvalidEdit(f"no section {name!r}")
    end = next(
        (
            j
            for j in range(start + 1, len(lines))
            if lines[j] and not lines[j][0].isspace() and not lines[j].startswith("#")
        ),
        len(lines),
    )
    return start + 1, end


def set_threshold(text: str, kind: str, key: str, new: float) -> tuple[str, str, str]:
    """Replace ``kind.key`` in detectors.yaml text; returns (text, old token, new token)."""
    lines = text.splitlines(keepends=True)
    a, b = _section(lines, kind)
    for i in range(a, b):
        m = _KEY_LINE.match(lines[i].rstrip("\n"))
        if m and m["key"] == key:
            tok = fmt(new, m["val"])
            lines[i] = f"{m['pre']}{tok}{m['post']}\n"
            return "".join(lines), m["val"], tok
    raise InvalidEdit(f"detectors.yaml: no threshold {kind}.{key}")


def mutate_threshold(text: str, kind: str, stricter: bool, rng: random.Random) -> tuple[str, str]:
    data = yaml.safe_load(text) or {}
    keys = [
        k for k in STRICTER.get(kind, {}) if isinstance((data.get(kind) or {}).get(k), int | float)
    ]
    if not keys:
        raise InvalidEdit(f"detector {kind} has no tunable threshold")
    key = rng.choice(keys)
    factor = rng.choice([1.25, 1.5, 2.0])
    up = (STRICTER[kind][key] > 0) == stricter
    old = float(data[kind][key])
    new_text, a, b = set_threshold(text, kind, key, old * factor if up else old / factor)
    if a == b and isinstance(data[kind][key], int):  # an int that rounding kept: step by one
        new_text, a, b = set_threshold(text, kind, key, old + (1 if up else -1))
    return (
        new_text,
        f"detectors.yaml: {kind}.{key} {a} → {b} ({'stricter' if stricter else 'looser'})",
    )


# ------------------------------------------------------------------ playbook.yaml (text edits)
_SIGNAL = re.compile(r"^(?P<ind>\s+)- \{(?P<body>.*)\}\s*$")


def _cause_signals(lines: list[str], cause: str) -> tuple[int, list[int]]:
    """(index of the cause's ``signals:`` line, indices of its flow-style signal lines)."""
    start = next(
        (i for i, ln in enumerate(lines) if re.match(rf"^  {re.escape(cause)}:\s*$", ln)), None
    )
    if start is None:
        raise InvalidEdit(f"playbook.yaml: no cause {cause!r}")
    sig = None
    for i in range(start + 1, len(lines)):
        if re.match(r"^  \S", lines[i]) or re.match(r"^\S", lines[i]):
            break
        if lines[i].strip() == "signals:":
            sig = i
            break
    if sig is None:
        raise InvalidEdit(f"playbook.yaml: cause {cause} has no signals block")
    out = []
    for j in range(sig + 1, len(lines)):
        if _SIGNAL.match(lines[j].rstrip("\n")):
            out.append(j)
        elif lines[j].strip():
            break
    return sig, out


def mutate_playbook(text: str, failure: dict[str, Any], rng: random.Random) -> tuple[str, str]:
    """A wrong cause: strengthen the expected cause or weaken the one that won by mistake."""
    exp, got = failure["expected_cause"], failure["predicted_cause"]
    seen = set(failure["predicted_kinds"])
    lines = text.splitlines(keepends=True)
    data = yaml.safe_load(text)
    causes = data.get("causes", {})
    options = []
    if exp in causes:
        options += ["raise", "add"]
    if got in causes:
        options.append("lower")
    if got == "unknown":
        options.append("min_score")
    if not options:
        raise InvalidEdit(f"nothing in the playbook to change for {exp} vs {got}")
    what = rng.choice(options)
    if what == "min_score":
        old = float(data.get("min_score", 1.0))
        new = fmt(old / rng.choice([1.25, 1.5]), "1.0")
        for i, ln in enumerate(lines):
            if ln.startswith("min_score:"):
                lines[i] = re.sub(r"min_score:\s*[0-9.eE+-]+", f"min_score: {new}", ln, count=1)
                return "".join(
                    lines
                ), f"playbook.yaml: min_score {old:g} → {new} (runs left unknown)"
        raise InvalidEdit("playbook.yaml: no min_score line")
    cause = exp if what in ("raise", "add") else got
    sig, idx = _cause_signals(lines, cause)
    if what == "add":
        have = {(s.get("finding") or s.get("absent")) for s in causes[cause]["signals"]}
        kinds = sorted(k for k in seen if k not in have)
        if not kinds:
            what = "raise"
        else:
            kind = rng.choice(kinds)
            w = rng.choice([1, 2, 3])
            ind = _SIGNAL.match(lines[idx[0]].rstrip("\n"))["ind"] if idx else " " * 6
            new_line = f"{ind}- {{finding: {kind}, weight: {w}}}\n"
            pos = (idx[-1] if idx else sig) + 1
            lines.insert(pos, new_line)
            return "".join(
                lines
            ), f"playbook.yaml: {cause} gains signal finding {kind} (weight {w})"
    # raise/lower: a weight of a signal that held on this run (a present finding)
    cands = []
    for j in idx:
        body = _SIGNAL.match(lines[j].rstrip("\n"))["body"]
        m = re.search(r"\bfinding:\s*(\w+)", body)
        if m and m.group(1) in seen or (what == "lower" and "finding" not in body):
            cands.append(j)
    cands = cands or idx
    if not cands:
        raise InvalidEdit(f"playbook.yaml: cause {cause} has no flow-style signal to change")
    j = rng.choice(cands)
    m = re.search(r"weight:\s*(-?[0-9.eE+-]+)", lines[j])
    if not m:
        raise InvalidEdit(f"playbook.yaml: no weight on line {j + 1}")
    old = float(m.group(1))
    factor = rng.choice([1.5, 2.0]) if what == "raise" else 1 / rng.choice([1.5, 2.0])
    new = fmt(old * factor, m.group(1))
    if new == m.group(1):
        new = fmt(old + (1 if what == "raise" else -1), m.group(1))
    lines[j] = lines[j][: m.start(1)] + new + lines[j][m.end(1) :]
    sig_text = _SIGNAL.match(lines[j].rstrip("\n"))["body"]
    return (
        "".join(lines),
        f"playbook.yaml: {cause} signal {{{sig_text.split(', weight')[0]}}} weight {m.group(1)} → {new}",
    )


# ------------------------------------------------------------------ playbook remedies
# Discrete ladders: a value moves one rung at a time, so different seeds propose the same
# patches and the measured outcomes (workbench.rl.outcomes) are reused, not rerun.
MUL_LADDER = (0.01, 0.03, 0.1, 0.3, 0.5, 2.0, 3.0, 10.0, 30.0, 100.0)
SET_LADDER = (0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0, 30.0, 100.0)
_REMEDY = re.compile(r"^(?P<ind>\s+)- id:\s*(?P<id>[\w.-]+)\s*$")


def _cause_lines(lines: list[str], cause: str) -> tuple[int, int]:
    start = next(
        (i for i, ln in enumerate(lines) if re.match(rf"^  {re.escape(cause)}:\s*$", ln)), None
    )
    if start is None:
        raise InvalidEdit(f"playbook.yaml: no cause {cause!r}")
    end = next(
        (j for j in range(start + 1, len(lines)) if re.match(r"^ {0,2}\S", lines[j])), len(lines)
    )
    return start, end


def _remedy_blocks(lines: list[str], cause: str) -> list[tuple[str, int, int]]:
    """(remedy id, first line, end line) of each remedy of ``cause``, in playbook order."""
    start, end = _cause_lines(lines, cause)
    heads = [(j, _REMEDY.match(lines[j].rstrip("\n"))) for j in range(start + 1, end)]
    heads = [(j, m) for j, m in heads if m]
    out = []
    for n, (j, m) in enumerate(heads):
        stop = heads[n + 1][0] if n + 1 < len(heads) else end
        k = j + 1
        while k < stop and (
            not lines[k].strip() or len(lines[k]) - len(lines[k].lstrip()) > len(m["ind"])
        ):
            k += 1
        while k > j + 1 and not lines[k - 1].strip():  # trailing blank lines stay outside
            k -= 1
        out.append((m["id"], j, k))
    return out


def step_value(op: str, value: float, stronger: bool, is_int: bool) -> float:
    """The next rung of the value's ladder; ``stronger``: further from doing nothing."""
    if is_int and op == "set":
        return max(1, round(value * 2 if stronger else value / 2))
    ladder = MUL_LADDER if op == "mul" else SET_LADDER
    if op == "mul":  # a multiplier grows stronger away from 1, on its own side of 1
        side = [v for v in ladder if (v < 1) == (value < 1)]
        up = (value > 1) == stronger
    else:
        side, up = list(ladder), stronger
    nxt = [v for v in side if v > value * 1.0001] if up else [v for v in side if v < value * 0.9999]
    if not nxt:
        raise InvalidEdit(f"{value:g} is at the end of its ladder")
    return min(nxt) if up else max(nxt)


def mutate_remedy(text: str, failure: dict[str, Any], rng: random.Random) -> tuple[str, str]:
    """The right cause, but its first remedy did not fix the run: change that remedy.

    Either one numeric value of its patch moves a rung along its ladder (further when the
    original findings recurred, else either way), or a lower-ranked remedy is promoted.  When
    the failure says how the lower remedies did on this very run (``alternatives``, measured
    outcomes on the selection run), one known to fix it is promoted for sure; otherwise
    unmeasured ones are preferred over ones known to fail.
    """
    cause, rem = failure["expected_cause"], failure.get("remedy") or {}
    lines = text.splitlines(keepends=True)
    blocks = _remedy_blocks(lines, cause)
    if not blocks or blocks[0][0] != rem.get("id"):
        raise InvalidEdit(f"playbook.yaml: {cause}'s first remedy is not {rem.get('id')!r}")
    spec = yaml.safe_load(text)["causes"][cause]["remedies"][0]
    numeric = [
        {**p, "key": p.get("key", p.get("knob"))} for p in spec.get("patch") or []
        if p.get("op") in ("mul", "scale", "set")
        and isinstance(p.get("value"), int | float) and not isinstance(p.get("value"), bool)
    ]  # fmt: skip
    known = {a["id"]: a.get("fixed") for a in failure.get("alternatives") or []}
    fixing = [blk for blk in blocks[1:] if known.get(blk[0]) is True]
    untried = [blk for blk in blocks[1:] if known.get(blk[0]) is None]
    pool = fixing or untried or blocks[1:]
    moves = (["scale"] * 2 if numeric else []) + (["promote"] if len(blocks) > 1 else [])
    if fixing:
        moves = ["promote"]  # a measured fix of this run beats any guess on the ladder
    if not moves:
        raise InvalidEdit(f"playbook.yaml: nothing to change in {cause}'s remedy {rem.get('id')}")
    rid, a, b = blocks[0]
    if rng.choice(moves) == "promote":
        oid, c, d = rng.choice(pool)
        body = lines[c:d]
        del lines[c:d]
        lines[a:a] = body
        why = " (measured: it fixes this run)" if fixing else ""
        return "".join(lines), f"playbook.yaml: {cause} tries remedy {oid} before {rid}{why}"
    p = rng.choice(numeric)
    recurred = "still finds" in str(failure.get("reason", ""))
    stronger = rng.random() < (0.75 if recurred else 0.5)
    old = p["value"]
    op = "mul" if p["op"] == "scale" else p["op"]  # a knob's scale is a multiplication
    new = step_value(op, float(old), stronger, isinstance(old, int) and op == "set")
    pat = re.compile(
        rf"(\{{\s*(?:key|knob):\s*{re.escape(p['key'])}\s*,\s*op:\s*{p['op']}\s*,\s*value:\s*)([^,}}\s]+)"
    )
    for j in range(a, b):
        m = pat.search(lines[j])
        if m:
            is_int = isinstance(old, int) and op == "set"
            tok = str(int(new)) if is_int else fmt(new, "1.0")
            lines[j] = lines[j][: m.start(2)] + tok + lines[j][m.end(2) :]
            break
    else:
        raise InvalidEdit(f"playbook.yaml: {cause}.{rid}: patch of {p['key']} is not one flow line")
    if len(spec.get("patch") or []) == 1:  # keep the description true to the patch
        verb = f"multiply {p['key']} by {tok}" if op == "mul" else f"set {p['key']} to {tok}"
        for j in range(a, b):
            m = re.match(r"^(\s+description:\s*).*$", lines[j].rstrip("\n"))
            if m:
                lines[j] = f"{m.group(1)}{verb}\n"
                break
    return "".join(lines), f"playbook.yaml: {cause}.{rid} {p['key']} {p['op']} {old} → {tok}"


# ------------------------------------------------------------------ the rules brain
def rules_proposal(
    parent_files: dict[str, str], failures: list[dict[str, Any]], rng: random.Random
) -> Proposal:
    """Targeted mutation of what one failed run implicates (a few tries for a valid edit)."""
    if not failures:
        raise InvalidEdit("the parent fails no selection run: nothing to target")
    last: Exception | None = None
    for _ in range(12):
        f = rng.choice(failures)
        fp = sorted(set(f["predicted_kinds"]) - set(f["expected_kinds"]))
        # a kind absorbed into another finding (its run-up) was found: not a miss
        found = set(f["predicted_kinds"]) | set(f.get("absorbed", ()))
        fn = sorted(set(f["expected_kinds"]) - found)
        moves = [("fp", k) for k in fp if k in STRICTER] + [("fn", k) for k in fn if k in STRICTER]
        if f["predicted_cause"] != f["expected_cause"] and f["expected_cause"] != "healthy":
            moves.append(("cause", None))
        if f.get("fixed") is False and f.get("remedy"):
            moves.append(("remedy", None))
        if not moves:
            continue
        move, kind = rng.choice(moves)
        try:
            if move == "remedy":
                text, what = mutate_remedy(parent_files["playbook.yaml"], f, rng)
                got = "no finite eval" if f.get("best_eval") is None else f"{f['best_eval']:.4g}"
                ref = "?" if f.get("original_best") is None else f"{f['original_best']:.4g}"
                return Proposal(
                    {"playbook.yaml": text},
                    f"{what} — {f['scenario']}: {f['remedy']['id']} did not fix it "
                    f"(best eval {got} vs original {ref})",
                )
            if move == "cause":
                text, what = mutate_playbook(parent_files["playbook.yaml"], f, rng)
                return Proposal(
                    {"playbook.yaml": text},
                    f"{what} — {f['scenario']}: expected {f['expected_cause']}, got {f['predicted_cause']}",
                )
            text, what = mutate_threshold(parent_files["detectors.yaml"], kind, move == "fp", rng)
            why = "false" if move == "fp" else "missed"
            return Proposal({"detectors.yaml": text}, f"{what} — {why} {kind} on {f['scenario']}")
        except InvalidEdit as exc:
            last = exc
    raise InvalidEdit(f"no targeted edit found ({last})")


# ------------------------------------------------------------------ an LLM brain
def _prompts() -> dict[str, str]:
    return {str(k): str(v) for k, v in yaml.safe_load(PROMPTS.read_text()).items()}


def llm_proposal(
    brain: Any, parent_files: dict[str, str], failures: list[dict[str, Any]], name: str = "llm"
) -> Proposal:
    """Ask a chat model for SEARCH/REPLACE blocks; one retry with the error shown."""
    from langchain_core.messages import HumanMessage, SystemMessage

    from workbench.supervisor.brains.base import render
    from workbench.supervisor.query import FormatError, NoAnswer, query

    p = _prompts()
    files = {k: v for k, v in parent_files.items() if editable(k)}
    messages: list[Any] = [
        SystemMessage(p["system"]),
        HumanMessage(
            render(
                p["propose"],
                failures=json.dumps(failures, indent=1),
                files=files,
                editable=", ".join(EDITABLE),
            )
        ),
    ]

    def step(ai: Any) -> Proposal:
        text = ai.content if isinstance(ai.content, str) else json.dumps(ai.content)
        try:
            blocks = parse_blocks(text)
            for b in blocks:
                if not editable(b.path):
                    raise InvalidEdit(f"{b.path}: not an editable scaffold data file")
            new = apply_blocks(files, blocks)
            changed = {k: v for k, v in new.items() if v != files[k]}
            prop = Proposal(changed, _summary(text) or "scaffold edit proposed by " + name, name)
            validate(parent_files, prop)
            return prop
        except (PatchError, InvalidEdit) as exc:
            raise FormatError(str(exc)) from None

    try:
        return query(brain, messages, step, retry=lambda error: render(p["retry"], error=error))
    except NoAnswer as exc:  # the caller falls back to the rules brain
        raise InvalidEdit(f"the {name} brain {exc}") from None


def _summary(text: str) -> str:
    m = re.search(r"^SUMMARY:\s*(.+)$", text, re.M)
    return m.group(1).strip()[:200] if m else ""
