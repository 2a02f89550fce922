"""Pure patch logic: config patches (dotted-key ops on YAML) and SEARCH/REPLACE code blocks.

Everything here takes text and returns text, so it is checked before any file or branch is
touched: a patch that does not apply raises ``PatchError`` and nothing is written.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import PurePosixPath

import yaml

from workbench.doctor.types import PatchOp
from workbench.errors import BadInputError


class PatchError(BadInputError):
    """A patch that does not apply (missing key, SEARCH not found or ambiguous, bad path)."""


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


# ----------------------------------------------------------------------------- config ops


_KEY_OK = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")


def _number(value, key: str) -> float | int:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise PatchError(f"{key}: expected a number, got {value!r}")
    if not math.isfinite(value):
        raise PatchError(f"{key}: value must be finite")
    return value


def apply_ops(config: dict, ops: Iterable[PatchOp], defaults: dict | None = None) -> dict:
    """Apply dotted-key ops to a nested dict (returns a new dict; the input is untouched).

    ``defaults`` (the run's logged params, dotted keys) supply the current value of a key the
    file leaves at its default, so ``optimizer.lr *= 0.1`` works on a config without ``lr``.
    """
    defaults = defaults or {}
    out = yaml.safe_load(yaml.safe_dump(config)) or {}
    for op in ops:
        if not _KEY_OK.match(op.key):
            raise PatchError(f"refused config key {op.key!r}")
        *parents, leaf = op.key.split(".")
        node = out
        for part in parents:
            child = node.get(part)
            if child is None and (op.op in ("set", "add") or op.key in defaults):
                child = node[part] = {}
            if not isinstance(child, dict):
                raise PatchError(f"{op.key}: {part!r} is not a section of the config")
            node = child
        if op.op == "set":
            if isinstance(op.value, float) and not math.isfinite(op.value):
                raise PatchError(f"{op.key}: value must be finite")
            node[leaf] = op.value
        elif op.op == "delete":
            if leaf not in node:
                raise PatchError(f"{op.key}: no such key to delete")
            del node[leaf]
        elif op.op in ("mul", "add"):
            current = node.get(leaf, defaults.get(op.key))
            if current is None and op.op == "mul":
                raise PatchError(f"{op.key}: no such key to multiply")
            old = _number(_parse_number(current if current is not None else 0), op.key)
            delta = _number(op.value, op.key)
            new = old * delta if op.op == "mul" else old + delta
            node[leaf] = int(new) if isinstance(old, int) and float(new).is_integer() else new
        else:  # pragma: no cover - PatchOp validates op
            raise PatchError(f"unknown op {op.op!r}")
    return out


def _parse_number(v):
    if isinstance(v, str):
        try:
            return int(v) if v.strip().lstrip("-").isdigit() else float(v)
        except ValueError:
            return v
    return v


def _load_mapping(text: str) -> dict:
    try:
        config = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise PatchError(f"config is not valid YAML: {exc}") from None
    if not isinstance(config, dict):
        raise PatchError("config is not a mapping")
    return config


def patch_config_text(text: str, ops: Iterable[PatchOp], defaults: dict | None = None) -> str:
    return yaml.safe_dump(apply_ops(_load_mapping(text), list(ops), defaults), sort_keys=False)


def _flat(data, prefix: str = "") -> dict[str, object]:
    if isinstance(data, dict) and data:
        out: dict[str, object] = {}
        for k, v in data.items():
            out.update(_flat(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: data} if prefix else {}


def _same(a, b) -> bool:
    a, b = _parse_number(a), _parse_number(b)
    if isinstance(a, int | float) and isinstance(b, int | float) and not isinstance(a, bool):
        return not isinstance(b, bool) and math.isclose(a, b, rel_tol=1e-12, abs_tol=0.0)
    return a == b or (a is not None and b is not None and str(a) == str(b))


def config_changes(before: str, after: str, defaults: dict | None = None) -> list[str]:
    """The dotted keys whose *effective* value differs between two config texts.

    A key a text leaves out takes the run's logged value (``defaults``), so setting a key to
    the value the run already used is no change; re-formatting the file is none either.
    """
    defaults = defaults or {}
    old, new = _flat(_load_mapping(before)), _flat(_load_mapping(after))
    changed = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key, defaults.get(key)), new.get(key, defaults.get(key))
        if not _same(a, b):
            changed.append(key)
    return changed


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
    return out
