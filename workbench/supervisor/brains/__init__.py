"""Brains: chat models with ``bind_tools`` that drive the supervisor graph.

``make_brain("rules")`` (default, deterministic), ``make_brain("openai", base_url=…, model=…)``,
``make_brain("local", model=DIR)`` (our own checkpoint in-process; imported lazily).
"""

from __future__ import annotations

from typing import Any

from workbench.errors import BadInputError

BRAINS = ("rules", "openai", "local")


def make_brain(name: str = "rules", **opts: Any):
    if name == "rules":
        from workbench.supervisor.brains.rules import RulesChatModel

        return RulesChatModel()
    if name == "openai":
        from workbench.supervisor.brains.openai import make_openai_brain

        return make_openai_brain(
            base_url=opts.get("base_url"), model=opts.get("model"), api_key=opts.get("api_key")
        )
    if name == "local":
        model_dir = opts.get("model") or opts.get("model_dir")
        if not model_dir:
            raise BadInputError("--brain local needs --model DIR (a checkpoint folder)")
        try:
            from workbench.supervisor.brains.local import LocalChatModel
        except ModuleNotFoundError as exc:
            raise BadInputError(f"the local brain is not available: {exc}") from None
        # the sampling settings travel with it (RL rollouts sample at T; without them every
        # episode of a group decoded greedily and was token-identical)
        keys = ("temperature", "top_p", "seed", "max_new_tokens", "explore")
        return LocalChatModel(model_dir, **{k: opts[k] for k in keys if opts.get(k) is not None})
    raise BadInputError(f"unknown brain {name!r} (known: {', '.join(BRAINS)})")
