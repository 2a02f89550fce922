"""Waiting in tests: on an event or a condition with a deadline, never on a fixed sleep."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def wait_until(condition: Callable[[], T], timeout: float, what: str, poll: float = 0.05) -> T:
    """The first truthy value of ``condition()``, polled until ``timeout`` seconds have passed
    (then an ``AssertionError`` naming ``what``)."""
    deadline = time.monotonic() + timeout
    while True:
        got = condition()
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(poll)


def blocked_on_a_lock(pid: int) -> bool:
    """Whether the main thread of ``pid`` sleeps in a futex (a lock, a queue, a condition);
    True where ``/proc`` does not say."""
    try:
        with open(f"/proc/{pid}/wchan") as fh:
            return "futex" in fh.read()
    except OSError:
        return True
