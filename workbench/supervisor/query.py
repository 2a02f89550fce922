"""Asking a brain: one small loop, errors as messages (the mini-swe-agent idea).

``query`` sends the conversation to a chat model and hands each answer to ``step``, which
returns the result, returns ``None`` to go on (it appended observations, such as tool
results), or raises ``FormatError`` for a malformed answer. The error goes back to the model
as a message once; a second malformed answer, an exception from the endpoint or no result in
``max_steps`` answers is ``NoAnswer``, and ``fallback`` (the rules brain) answers instead: a
model never crashes an episode, an evolution step or an MLE run. Used by the supervisor
(``brains.base.decide``), evolve (``evolve.propose.llm_proposal``) and the MLE agent
(``mle.brains.LlmBrain``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from langchain_core.messages import BaseMessage, HumanMessage

T = TypeVar("T")


class FormatError(Exception):
    """A malformed answer; the message is what the model is shown."""


class NoAnswer(Exception):
    """The model gave no usable answer; the message says why (reads after "the brain …")."""


def _no_log(event: str, **data: Any) -> None:
    pass


def query(
    model: Any,
    messages: list[BaseMessage],
    step: Callable[[Any], T | None],
    *,
    retry: Callable[[str], str],
    fallback: Callable[[NoAnswer], T] | None = None,
    log: Callable[..., None] = _no_log,
    max_errors: int = 2,
    max_steps: int = 10,
) -> T:
    """``step``'s result for the model's answers (``messages`` grows with the conversation).

    ``retry(error)`` is the text that shows the model its error; ``log(event, **data)`` hears
    ``brain_error`` (the endpoint raised) and ``brain_mistake`` (a malformed answer, counted).
    Without ``fallback`` a failure raises ``NoAnswer``.
    """
    try:
        errors = 0
        for _ in range(max_steps):
            try:
                answer = model.invoke(messages)
            except Exception as exc:  # endpoint down, bad JSON from the server, …
                error = f"{type(exc).__name__}: {str(exc)[:300]}"
                log("brain_error", error=error)
                raise NoAnswer(f"failed: {error}") from None
            messages.append(answer)
            try:
                result = step(answer)
            except FormatError as exc:
                errors += 1
                log("brain_mistake", error=str(exc), count=errors)
                if errors >= max_errors:
                    raise NoAnswer(f"gave no valid answer: {exc}") from None
                text = retry(str(exc))
                messages.append(HumanMessage(text))
                log("retry", content=text)  # part of what the model sees next
                continue
            if result is not None:
                return result
        log("brain_mistake", error=f"no answer in {max_steps} steps", count=errors + 1)
        raise NoAnswer(f"gave no answer in {max_steps} steps")
    except NoAnswer as exc:
        if fallback is None:
            raise
        return fallback(exc)
