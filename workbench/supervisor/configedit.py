"""Format-preserving edits of one value: a YAML / JSON / TOML config key, or a launch flag.

Each format is written back in its own format with everything else as it was: YAML is edited
on the value's own line (ruamel.yaml finds it; comments, order and flow style stay), TOML through
tomlkit's round trip, JSON re-dumped with the file's own indentation and key order. Every edit
is checked by parsing the result: only the edited key may differ. A file that does not parse in
its own format, a flag given twice, or an edit that would change more raises ``EditError``.
"""

from __future__ import annotations

import io
import json
import math
import re
import shlex
from typing import Any

from workbench.errors import BadInputError

MISSING = object()


class EditError(BadInputError):
    """A config or launch command that cannot be read (bad input: the episode stops)."""


class PatchError(BadInputError):
    """A patch that does not apply (missing key, SEARCH not found or ambiguous, bad path)."""


# ----------------------------------------------------------------------------- reading


def config_format(path: str) -> str:
    low = path.lower()
    if low.endswith((".yaml", ".yml")):
        return "yaml"
    if low.endswith(".json"):
        return "json"
    if low.endswith(".toml"):
        return "toml"
    raise EditError(f"{path}: unknown config format (YAML, JSON or TOML by its suffix)")


def _yaml():
    from ruamel.yaml import YAML

    y = YAML(typ="rt")
    y.preserve_quotes = True
    return y


def parse_config(text: str, fmt: str, name: str = "config") -> dict:
    """The config as a plain nested dict; ``EditError`` naming the file when it does not parse."""
    try:
        if fmt == "yaml":
            data = _yaml().load(text)
        elif fmt == "json":
            data = json.loads(text)
        elif fmt == "toml":
            import tomlkit

            data = tomlkit.parse(text).unwrap()
        else:
            raise EditError(f"{name}: unknown config format {fmt!r}")
    except EditError:
        raise
    except Exception as exc:  # each parser has its own error types
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise EditError(f"{name} is not valid {fmt.upper()}: {first[:200]}") from None
    data = {} if data is None else data
    if not isinstance(data, dict):
        raise EditError(f"{name}: the top level is not a mapping")
    return _plain(data)


def _plain(v: Any) -> Any:
    if isinstance(v, dict):
        return {str(k): _plain(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [_plain(x) for x in v]
    if isinstance(v, bool) or v is None:
        return v
    if isinstance(v, int):
        return int(v)
    if isinstance(v, float):
        return float(v)
    return str(v) if not isinstance(v, str) else str(v)


def flatten(data: dict, prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` → ``{"a.b": 1}``; sections are kept too (``{"a": {...}}``)."""
    out: dict[str, Any] = {}
    for k, v in data.items():
        name = f"{prefix}{k}"
        out[name] = v
        if isinstance(v, dict):
            out.update(flatten(v, name + "."))
    return out


def get(data: dict, dotted: str) -> Any:
    node: Any = data
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return MISSING
        node = node[part]
    return node


# ----------------------------------------------------------------------------- writing


def yaml_scalar(value: Any) -> str:
    """A YAML 1.1/1.2 scalar that PyYAML and ruamel both read back as ``value``."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return _float_text(value)
    text = str(value)
    plain = re.fullmatch(r"[A-Za-z_][A-Za-z0-9_./-]*", text)
    if plain and text.lower() not in ("true", "false", "null", "yes", "no", "on", "off", "~"):
        return text
    return json.dumps(text)


def _float_text(v: float) -> str:
    if not math.isfinite(v):
        raise PatchError(f"value {v!r} is not finite")
    text = repr(float(v))
    if "e" in text:  # PyYAML reads 3e-05 as a string: it needs a dot in the mantissa
        mant, exp = text.split("e")
        mant = mant if "." in mant else mant + ".0"
        text = f"{mant}e{exp}"
    return text


def set_value(text: str, fmt: str, dotted: str, value: Any, name: str = "config") -> str:
    """``text`` with ``dotted`` set to ``value`` (created when absent; removed when ``value`` is
    ``MISSING``), all else unchanged."""
    before = parse_config(text, fmt, name)
    if fmt == "yaml":
        out = (
            _yaml_delete(text, dotted) if value is MISSING else _yaml_set(text, dotted, value, name)
        )
    elif fmt == "json":
        out = _json_set(text, dotted, value, name)
    else:
        out = _toml_set(text, dotted, value, name)
    _check_only(before, parse_config(out, fmt, name), dotted, value, name)
    return out


def _check_only(before: dict, after: dict, dotted: str, value: Any, name: str) -> None:
    expect = json.loads(json.dumps(before))
    node = expect
    *parents, leaf = dotted.split(".")
    for p in parents:
        node = node.setdefault(p, {})
    if value is MISSING:
        node.pop(leaf, None)
    else:
        node[leaf] = _plain(value)
    if json.loads(json.dumps(after)) != expect:
        raise PatchError(f"{name}: editing {dotted} would change other settings; refused")


# --- YAML: edit the value's own line


def _yaml_set(text: str, dotted: str, value: Any, name: str) -> str:
    y = _yaml()
    doc = y.load(text) or {}
    lines = text.splitlines(keepends=True)
    *parents, leaf = dotted.split(".")
    node = doc
    for i, part in enumerate(parents):
        child = node.get(part) if hasattr(node, "get") else None
        if child is None:
            return _yaml_insert(lines, node, parents[:i], parents[i:] + [leaf], value, name)
        if not hasattr(child, "lc"):
            raise PatchError(f"{name}: {'.'.join(parents[: i + 1])} is not a section")
        node = child
    if leaf not in node:
        return _yaml_insert(lines, node, parents, [leaf], value, name)
    old = node[leaf]
    if hasattr(old, "lc") and not isinstance(old, str):
        raise PatchError(f"{name}: {dotted} is a section, not a value")
    line, col = node.lc.value(leaf)
    src = lines[line]
    m = re.compile(
        r"""("(?:[^"\\]|\\.)*"|'(?:[^']|'')*'|[^,\]}#\n]*?)(\s*(?:[,\]}]|#|\r?\n|$))"""
    ).match(src, col)
    if not m or not m.group(1).strip():
        raise PatchError(f"{name}: cannot edit {dotted} in place (a multi-line value)")
    lines[line] = src[: m.start(1)] + yaml_scalar(value) + src[m.end(1) :]
    return "".join(lines)


def _yaml_insert(lines, node, have: list[str], missing: list[str], value, name) -> str:
    """Add ``missing`` (sections then a key) under the block mapping ``node`` at path ``have``."""
    if getattr(node, "fa", None) is not None and node.fa.flow_style():
        raise PatchError(f"{name}: cannot add {'.'.join(have + missing)} to a flow mapping")
    keys = list(node.keys()) if hasattr(node, "keys") else []
    if have and keys:
        indent = node.lc.key(keys[0])[1]
    elif have:
        raise PatchError(f"{name}: cannot add to the empty section {'.'.join(have)}")
    else:
        indent = 0
    end = _block_end(lines, node, have)
    new = []
    for depth, part in enumerate(missing):
        pad = " " * (indent + 2 * depth)
        tail = f" {yaml_scalar(value)}" if depth == len(missing) - 1 else ""
        new.append(f"{pad}{part}:{tail}\n")
    if end > 0 and not lines[end - 1].endswith("\n"):
        lines[end - 1] += "\n"
    return "".join(lines[:end] + new + lines[end:])


def _block_end(lines: list[str], node, have: list[str]) -> int:
    """The line after the last line of the block mapping ``node`` (the whole file for root)."""
    if not have:
        end = len(lines)
        while end > 0 and not lines[end - 1].strip():
            end -= 1
        return end
    first = node.lc.line
    indent = node.lc.key(next(iter(node.keys())))[1]
    i = first + 1
    last = first
    while i < len(lines):
        s = lines[i]
        if s.strip() and not s.lstrip().startswith("#"):
            if len(s) - len(s.lstrip()) < indent:
                break
            last = i
        i += 1
    return last + 1


# --- JSON: the same indentation and key order


def _json_indent(text: str) -> int | str | None:
    for line in text.splitlines()[1:]:
        stripped = line.lstrip(" \t")
        if stripped and len(stripped) != len(line):
            ws = line[: len(line) - len(stripped)]
            return "\t" if ws.startswith("\t") else len(ws)
    return None


def _json_set(text: str, dotted: str, value: Any, name: str) -> str:
    data = json.loads(text)
    node = data
    *parents, leaf = dotted.split(".")
    for p in parents:
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise PatchError(f"{name}: {p} is not a section")
    if value is MISSING:
        node.pop(leaf, None)
    else:
        node[leaf] = value
    indent = _json_indent(text)
    out = json.dumps(data, indent=indent, ensure_ascii=False)
    if indent is None and ", " not in text and ": " not in text:
        out = json.dumps(data, separators=(",", ":"), ensure_ascii=False)
    return out + ("\n" if text.endswith("\n") else "")


# --- TOML: tomlkit's round trip


def _toml_set(text: str, dotted: str, value: Any, name: str) -> str:
    import tomlkit

    doc = tomlkit.parse(text)
    node = doc
    *parents, leaf = dotted.split(".")
    for p in parents:
        if p not in node:
            node[p] = tomlkit.table()
        node = node[p]
        if not hasattr(node, "keys"):
            raise PatchError(f"{name}: {p} is not a table")
    if value is MISSING:
        node.pop(leaf, None)
    elif value is None:  # TOML has no null: leaving a limit unset is removing it
        node.pop(leaf, None)
    else:
        node[leaf] = value
    return tomlkit.dumps(doc)


def _yaml_delete(text: str, dotted: str) -> str:
    y = _yaml()
    doc = y.load(text)
    *parents, leaf = dotted.split(".")
    node = doc
    for p in parents:
        node = node[p]
    del node[leaf]
    buf = io.StringIO()
    y.dump(doc, buf)
    return buf.getvalue()


def delete_value(text: str, fmt: str, dotted: str, name: str = "config") -> str:
    if get(parse_config(text, fmt, name), dotted) is MISSING:
        raise PatchError(f"{name}: no {dotted} to delete")
    return set_value(text, fmt, dotted, MISSING, name)


# ----------------------------------------------------------------------------- launch flags

_HYDRA = re.compile(r"^\+{0,2}([A-Za-z_][A-Za-z0-9_.]*)=(.*)$")
_NUMBER = re.compile(r"^-?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$")


def parse_flags(launch: str) -> dict[str, str]:
    """``{name: value}`` of a launch command's ``--flag value``, ``--flag=value`` and Hydra
    ``key=value`` words. A flag given twice raises ``EditError`` (which one would count?)."""
    try:
        words = shlex.split(launch)
    except ValueError as exc:
        raise EditError(f"launch command does not parse: {exc}") from None
    out: dict[str, str] = {}
    i = 0
    while i < len(words):
        w = words[i]
        name = value = None
        if w.startswith("-") and not _NUMBER.match(w) and w not in ("-", "--"):
            if "=" in w:
                name, value = w.split("=", 1)
            elif i + 1 < len(words) and (
                not words[i + 1].startswith("-") or _NUMBER.match(words[i + 1])
            ):
                name, value = w, words[i + 1]
                i += 1
            else:
                name, value = w, ""
        elif (m := _HYDRA.match(w)) and "{" not in w:
            name, value = m.group(1), m.group(2)
        if name is not None:
            if name in out:
                raise EditError(f"launch command gives {name} twice; keep one")
            out[name] = value
        i += 1
    return out


def set_flag(text: str, flag: str, value: Any, where: str = "launch command") -> str:
    """``text`` (a launch command, or a file holding one) with ``flag``'s value replaced."""
    v = _flag_text(value)
    esc = re.escape(flag)
    if flag.startswith("-"):
        pat = re.compile(rf"(?<![\w-]){esc}(=|\s+)(\"[^\"]*\"|'[^']*'|[^\s\"']+)")
    else:  # Hydra override
        pat = re.compile(rf"(?<![\w.+-])(\+{{0,2}}{esc})(=)(\"[^\"]*\"|'[^']*'|[^\s\"']+)")
    found = list(pat.finditer(text))
    if len(found) != 1:
        what = "not found" if not found else "given twice"
        raise PatchError(f"{where}: flag {flag} {what}")
    m = found[0]
    return text[: m.start(m.lastindex)] + v + text[m.end(m.lastindex) :]


def _flag_text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return _float_text(value)
    if value is None:
        raise PatchError("a launch flag cannot be unset by a value; remove it from the command")
    text = str(value)
    return text if re.fullmatch(r"[A-Za-z0-9_./:+-]+", text) else shlex.quote(text)


def number(text: Any) -> float | int | None:
    """A flag's or a config's value as a number (None when it is not one)."""
    if isinstance(text, bool):
        return None
    if isinstance(text, int | float):
        return text
    if isinstance(text, str) and _NUMBER.match(text.strip()):
        t = text.strip()
        return int(t) if re.fullmatch(r"-?\d+", t) else float(t)
    return None
