"""The ``openai`` brain: any OpenAI-compatible chat-completions endpoint (vLLM, our server).

For MiniMax-M2 under vLLM, serve with ``--tool-call-parser minimax_m2 --reasoning-parser
minimax_m2_append_think`` so tool calls arrive as structured ``tool_calls``.
"""

from __future__ import annotations

import os


def make_openai_brain(
    base_url: str | None = None,
    model: str | None = None,
    api_key: str | None = None,
    temperature: float = 0.0,
    timeout_s: float = 120.0,
):
    from langchain_openai import ChatOpenAI

    from workbench.errors import BadInputError

    if not model:
        raise BadInputError("--brain openai needs --model NAME")
    return ChatOpenAI(
        base_url=base_url or os.environ.get("OPENAI_BASE_URL"),
        model=model,
        api_key=api_key or os.environ.get("OPENAI_API_KEY") or "EMPTY",
        temperature=temperature,
        timeout=timeout_s,
        max_retries=1,  # the graph retries a bad answer itself, then falls back to rules
    )
