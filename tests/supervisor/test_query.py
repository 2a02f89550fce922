"""The one agent query loop, driven by a scripted model: errors go back as messages once, then
the fallback answers."""

from __future__ import annotations

import pytest
from langchain_core.messages import AIMessage, HumanMessage

from workbench.supervisor.query import FormatError, NoAnswer, query


class Scripted:
    """A chat model that answers from a script (an exception in the script is raised)."""

    def __init__(self, *answers) -> None:
        self.answers = list(answers)
        self.seen: list[list] = []

    def invoke(self, messages):
        self.seen.append(list(messages))
        got = self.answers.pop(0)
        if isinstance(got, Exception):
            raise got
        return AIMessage(got)


def number(ai) -> int:
    try:
        return int(ai.content)
    except ValueError:
        raise FormatError(f"{ai.content!r} is not a number") from None


def _run(model, **kw):
    events: list[tuple[str, dict]] = []
    got = query(
        model,
        [HumanMessage("a number, please")],
        number,
        retry=lambda error: f"try again: {error}",
        log=lambda event, **data: events.append((event, data)),
        **kw,
    )
    return got, events


def test_malformed_then_good_shows_the_error_once():
    model = Scripted("seven", "7")
    got, events = _run(model)
    assert got == 7
    second = model.seen[1]
    assert [m.content for m in second] == [
        "a number, please",
        "seven",
        "try again: 'seven' is not a number",
    ]
    # the mistake is counted, and the retry text is logged: part of what the model saw next
    assert events == [
        ("brain_mistake", {"error": "'seven' is not a number", "count": 1}),
        ("retry", {"content": "try again: 'seven' is not a number"}),
    ]


def test_malformed_twice_falls_back():
    model = Scripted("seven", "eight", "9")
    got, events = _run(model, fallback=lambda exc: f"rules ({exc})")
    assert got == "rules (gave no valid answer: 'eight' is not a number)"
    assert len(model.seen) == 2
    assert [e for e, _ in events] == ["brain_mistake", "retry", "brain_mistake"]
    with pytest.raises(NoAnswer, match="no valid answer"):
        _run(Scripted("seven", "eight"))


def test_an_exception_from_the_model_falls_back_at_once():
    model = Scripted(ConnectionError("endpoint down"), "7")
    got, events = _run(model, fallback=lambda exc: str(exc))
    assert got == "failed: ConnectionError: endpoint down" and len(model.seen) == 1
    assert events == [("brain_error", {"error": "ConnectionError: endpoint down"})]


def test_a_step_may_go_on_without_an_error_until_max_steps():
    model = Scripted("a", "b", "c")
    calls = []

    def observe(ai):  # never decides, never errs: a brain that only reads
        calls.append(ai.content)
        return None

    with pytest.raises(NoAnswer, match="no answer in 3 steps"):
        query(model, [HumanMessage("go")], observe, retry=str, max_steps=3)
    assert calls == ["a", "b", "c"]
