"""The one patch path: knob edits of a repo's config / launch command, SEARCH/REPLACE code
blocks, and the one guard that refuses any patch touching the fault harness's switches.

Remedies speak in knobs (``lr``, ``grad_clip``, ...); ``resolve`` finds where a knob lives in
*this* repo through the scaffold's knob map, and ``configedit`` edits it in the file's own format.
Everything here takes text and returns text, so it is checked before any file or branch is
touched: a patch that does not apply raises ``PatchError`` and nothing is written. Used by
``fix`` (the graph), ``evolve`` (scaffold edits), ``train rl`` (remedy outcomes) and the MLE
agent (its solution code).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any

from workbench.doctor.types import PatchOp
from workbench.errors import BadInputError
from workbench.supervisor import configedit
from workbench.supervisor.configedit import PatchError

# ----------------------------------------------------------------------------- paths


_PATH_OK = re.compile(r"^[A-Za-z0-9_.][A-Za-z0-9_./-]*$")


def check_repo_path(rel: str) -> str:
    """Refuse anything that is not a plain relative path inside the repo.

    Model text never becomes a git option or escapes the worktree: no leading ``-``, no ``..``,
    no absolute paths, no ``~``, no ``.git``, only a conservative character set.
    """
    if not isinstance(rel, str) or not rel or len(rel) > 300:
        raise PatchError(f"refused path {rel!r}: empty or too long")
    if rel.startswith(("-", "/", "~")) or not _PATH_OK.match(rel):
        raise PatchError(f"refused path {rel!r}: not a plain relative path")
    parts = PurePosixPath(rel).parts
    if any(p in ("..", ".git") or p.startswith("-") for p in parts):
        raise PatchError(f"refused path {rel!r}: escapes the repository or touches .git")
    return str(PurePosixPath(*parts))


# ----------------------------------------------------------------------------- the harness guard

# What only a harness may flip: the legacy in-config ``faults:`` entry, the environment
# variables / file through which the fault suite injects its switches, and the code that reads
# them. No patch of any caller (fix, evolve, train rl, the MLE agent) may touch these.
HARNESS_KEYS = ("faults",)
HARNESS_PATHS = ("trainer/faults.py", "trainer/harness.py")


class HarnessGuardError(PatchError):
    """A patch that touches the fault harness's switches."""


def _markers() -> tuple[str, ...]:
    from trainer.faults import HARNESS_ENV, HARNESS_FILE_ENV

    return (HARNESS_ENV, HARNESS_FILE_ENV)


def touches_harness(patch: Iterable[Any]) -> bool:
    """True when a config patch (ops or dicts with ``key``) edits a harness switch."""
    for op in patch:
        key = str(op["key"] if isinstance(op, dict) else op.key)
        if key.split(".")[0] in HARNESS_KEYS or any(m in key for m in _markers()):
            return True
    return False


def guard(before: dict[str, str], after: dict[str, str], ops: Iterable[Any] = ()) -> None:
    """Refuse a patch that touches the harness's switches (the one guard of the one patch path:
    ``apply_blocks``, ``patch_repo_config`` and ``apply_ops`` all end here)."""
    if touches_harness(ops):
        raise HarnessGuardError("refused: the patch edits the fault harness's `faults` switch")
    markers = _markers()
    for path, new in after.items():
        old = before.get(path)
        if old == new:
            continue
        norm = str(PurePosixPath(path))
        if any(norm == p or norm.endswith("/" + p) for p in HARNESS_PATHS):
            raise HarnessGuardError(f"refused: {path} is the fault harness's code")
        changed = set(new.splitlines()).symmetric_difference((old or "").splitlines())
        hit = next((m for m in markers for line in changed if m in line), None)
        if hit:
            raise HarnessGuardError(
                f"refused: the patch to {path} touches the harness switch {hit}"
            )


# ----------------------------------------------------------------------------- knobs


class KnobMissing(PatchError):
    """The remedy's knob is nowhere in this repo: the remedy is skipped (with this reason)."""


class KnobAmbiguous(BadInputError):
    """The knob has two candidate locations: the episode stops and names both."""


@dataclass(frozen=True)
class Location:
    kind: str  # config (a key in the file) | new (a key the program reads, absent) | flag
    name: str  # dotted config key or flag name
    current: Any


def _knob_map(knobs=None):
    if knobs is not None:
        return knobs
    from scaffold.loader import load_scaffold

    return load_scaffold(None).knobs


def resolve(
    key: str,
    config: dict,
    flags: dict[str, str] | None = None,
    *,
    knobs=None,
    params: dict | None = None,
    config_name: str = "the config",
    op: str = "set",
) -> Location:
    """Where knob ``key`` lives: exactly one config key or launch flag (see scaffold/knobs.yaml).

    A name that is no knob is a literal dotted config key (what an LLM brain may propose).
    """
    flags = flags or {}
    spec = _knob_map(knobs).knobs.get(key)
    if spec is None and not _KEY_OK.match(key):
        raise PatchError(f"refused config key {key!r}")
    names = spec.config if spec else (key,)
    hits = [
        Location("config", c, v)
        for c in names
        if (v := configedit.get(config, c)) is not configedit.MISSING and not isinstance(v, dict)
    ]
    hits += [
        Location("flag", f, flags[f]) for f in (*(spec.flags if spec else ()), *names) if f in flags
    ]
    if len(hits) > 1:
        where = " and ".join(
            f"{h.name} in {config_name}"
            if h.kind == "config"
            else f"{h.name} in the launch command"
            for h in hits[:2]
        )
        what = f"the {spec.description} setting" if spec else f"key {key}"
        raise KnobAmbiguous(
            f"{what} has two candidate locations: {where}; keep one in the repo, or remove the "
            "other alias from the knob map (scaffold/knobs.yaml)"
        )
    if hits:
        return hits[0]
    known = [c for c in names if c in (params or {})]
    if len(known) == 1:  # the program reads (and logged) this key; the file leaves its default
        return Location("new", known[0], (params or {})[known[0]])
    if spec is None and op in ("set", "add"):
        return Location("new", key, None)
    what = f"{spec.description} setting" if spec else f"key {key}"
    raise KnobMissing(
        f"no {what} in {config_name} or the launch command; add an alias in the knob map "
        "(scaffold/knobs.yaml)"
    )


def new_value(loc: Location, op: str, value: Any, key: str) -> Any:
    if op == "set":
        if isinstance(value, float) and not math.isfinite(value):
            raise PatchError(f"{key}: value must be finite")
        return value
    if op in ("mul", "add"):
        old = configedit.number(
            loc.current if loc.current is not None else (0 if op == "add" else None)
        )
        if old is None:
            raise PatchError(f"{key}: cannot {op} {loc.name} = {loc.current!r} (not a number)")
        delta = _number(value, key)
        new = old * delta if op == "mul" else old + delta
        if isinstance(old, int) and float(new).is_integer():
            return int(new)
        return float(f"{new:.12g}")  # 0.003 * 0.1 is 0.0003 in the file, not 0.00030000000000000003
    raise PatchError(f"unknown op {op!r}")


def patch_repo_config(
    files: dict[str, str],
    ops: Iterable[PatchOp],
    *,
    config_rel: str,
    launch: str = "",
    launch_rel: str | None = None,
    params: dict | None = None,
    knobs=None,
) -> tuple[dict[str, str], str, list[str]]:
    """Apply knob ops to the repo's config file and launch command, each in its own format.

    ``files``: path → text of the config and (when the launch lives in a file) ``launch_rel``.
    Returns (changed files, the new launch command, one line per change). Raises
    ``KnobMissing`` (skip the remedy), ``KnobAmbiguous``/``EditError`` (stop: bad input),
    ``PatchError`` (the patch does not apply) or ``HarnessGuardError``.
    """
    ops = list(ops)
    guard({}, {}, ops)
    fmt = configedit.config_format(config_rel)
    out = dict(files)
    text = out[config_rel]
    changes: list[str] = []
    for op in ops:
        config = configedit.parse_config(text, fmt, config_rel)
        flags = configedit.parse_flags(launch)
        loc = resolve(
            op.key, config, flags, knobs=knobs, params=params, config_name=config_rel, op=op.op
        )
        if op.op == "delete":
            if loc.kind != "config":
                raise PatchError(f"{op.key}: nothing to delete in {config_rel}")
            text = configedit.delete_value(text, fmt, loc.name, config_rel)
            changes.append(f"{op.key}: {loc.name} deleted ({config_rel})")
            continue
        value = new_value(loc, op.op, op.value, op.key)
        if loc.kind == "new" and _same_value(value, loc.current):
            continue  # the file leaves it out and the run already used this value: no change
        if loc.kind == "flag":
            launch = configedit.set_flag(launch, loc.name, value)
            if launch_rel:
                out[launch_rel] = configedit.set_flag(out[launch_rel], loc.name, value, launch_rel)
            changes.append(f"{op.key}: {loc.name} {loc.current} -> {value} (launch command)")
        else:
            text = configedit.set_value(text, fmt, loc.name, value, config_rel)
            changes.append(f"{op.key}: {loc.name} {loc.current} -> {value} ({config_rel})")
    out[config_rel] = text
    changed = {p: t for p, t in out.items() if files.get(p) != t}
    guard(files, changed, ops)
    return changed, launch, changes


def _same_value(a: Any, b: Any) -> bool:
    a, b = _parse_number(a), _parse_number(b)
    if isinstance(a, int | float) and isinstance(b, int | float):
        return math.isclose(a, b, rel_tol=1e-12, abs_tol=0.0)
    return a == b or (a is not None and b is not None and str(a) == str(b))


# ----------------------------------------------------------------------------- config dicts


_KEY_OK = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")


def _number(value, key: str) -> float | int:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise PatchError(f"{key}: expected a number, got {value!r}")
    if not math.isfinite(value):
        raise PatchError(f"{key}: value must be finite")
    return value


def apply_ops(
    config: dict, ops: Iterable[PatchOp], defaults: dict | None = None, knobs=None
) -> dict:
    """Apply knob / dotted-key ops to a nested config dict (a new dict; the input is untouched):
    how a remedy changes a run of our own trainer (the fault suite's reruns).

    ``defaults`` (the run's logged params, dotted keys) supply the current value of a key the
    config leaves at its default.
    """
    ops = list(ops)
    guard({}, {}, ops)
    defaults = defaults or {}
    out = json.loads(json.dumps(config))
    for op in ops:
        loc = resolve(op.key, out, knobs=knobs, params=defaults, op=op.op)
        *parents, leaf = loc.name.split(".")
        node = out
        for part in parents:
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise PatchError(f"{op.key}: {part!r} is not a section of the config")
            node = child
        if op.op == "delete":
            if leaf not in node:
                raise PatchError(f"{op.key}: no such key to delete")
            del node[leaf]
        else:
            current = _parse_number(loc.current)
            node[leaf] = new_value(Location(loc.kind, loc.name, current), op.op, op.value, op.key)
    return out


def _parse_number(v):
    n = configedit.number(v) if isinstance(v, str) else None
    return v if n is None else n


# ----------------------------------------------------------------------------- SEARCH/REPLACE


@dataclass(frozen=True)
class EditBlock:
    path: str
    search: str
    replace: str


_BLOCK = re.compile(
    r"^(?P<path>[^\n]+)\n<<<<<<< SEARCH\n(?P<search>.*?)\n?=======\n(?P<replace>.*?)\n?>>>>>>> REPLACE",
    re.S | re.M,
)


def parse_blocks(text: str) -> list[EditBlock]:
    """Parse aider-style blocks: a path line, then SEARCH / ======= / REPLACE markers."""
    blocks = [
        EditBlock(check_repo_path(m["path"].strip().strip("`")), m["search"], m["replace"])
        for m in _BLOCK.finditer(text)
    ]
    if not blocks:
        raise PatchError("no SEARCH/REPLACE blocks found")
    return blocks


def apply_blocks(files: dict[str, str], blocks: Iterable[EditBlock]) -> dict[str, str]:
    """Apply blocks to ``{path: text}``; every SEARCH must match exactly once."""
    out = dict(files)
    for b in blocks:
        if b.path not in out:
            raise PatchError(f"{b.path}: no such file in the repository")
        count = out[b.path].count(b.search) if b.search else 0
        if count != 1:
            where = "not found" if count == 0 else f"matches {count} times"
            raise PatchError(f"{b.path}: SEARCH block {where} (must match exactly once)")
        out[b.path] = out[b.path].replace(b.search, b.replace, 1)
    guard(files, out)
    return out
