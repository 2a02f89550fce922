"""Episode trajectories: one readable JSONL file per episode, rewritten atomically per event.

Each line is one event: ``{"t": time, "type": ..., ...}``. Types: ``start``, ``message``
(role/content/tool_calls as sent to or returned by the brain), ``tool`` (name, args, result),
``findings``, ``diagnosis``, ``patch``, ``launch``, ``outcome``, ``end`` (reward). A killed
episode leaves a complete file up to its last event; a resumed one appends to it.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from model.files import atomic_write_text


class Trajectory:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.events: list[dict] = []
        if self.path.exists():
            self.events = [json.loads(line) for line in self.path.read_text().splitlines() if line]

    def add(self, type_: str, **data: Any) -> None:
        self.events.append({"t": round(time.time(), 3), "type": type_, **data})
        self._write()

    def _write(self) -> None:
        text = "".join(
            json.dumps(e, default=str, allow_nan=False) + "\n" for e in _clean(self.events)
        )
        atomic_write_text(self.path, text)

    def of_type(self, type_: str) -> list[dict]:
        return [e for e in self.events if e["type"] == type_]


def _clean(events: list[dict]) -> list[dict]:
    # NaN/Inf are legal metric values but not JSON: write them as strings.
    def fix(v):
        if isinstance(v, float) and (v != v or v in (float("inf"), float("-inf"))):
            return str(v)
        if isinstance(v, dict):
            return {k: fix(x) for k, x in v.items()}
        if isinstance(v, list | tuple):
            return [fix(x) for x in v]
        return v

    return [fix(e) for e in events]


def message_event(msg) -> dict:
    """A LangChain message as a plain dict (role, content, tool calls)."""
    data: dict[str, Any] = {"role": getattr(msg, "type", "unknown"), "content": msg.content}
    if getattr(msg, "tool_calls", None):
        data["tool_calls"] = [
            {"id": c.get("id"), "name": c["name"], "args": c["args"]} for c in msg.tool_calls
        ]
    if getattr(msg, "tool_call_id", None):
        data["tool_call_id"] = msg.tool_call_id
    meta = getattr(msg, "response_metadata", None) or {}
    if meta.get("completion_token_ids") is not None:  # a local policy's answer: what RL needs
        data["tokens"] = {
            "prompt": list(meta.get("prompt_token_ids") or []),
            "completion": list(meta["completion_token_ids"]),
            "logprobs": [round(float(x), 6) for x in meta.get("logprobs") or []],
            "weights_version": meta.get("weights_version"),
        }
    return data
