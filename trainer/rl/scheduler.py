"""Windowed-FIFO consumption of rollouts (Forge).

Rollouts are launched in order (ids 0, 1, 2, ...) and finish in any order. A finished rollout
may be consumed by the trainer only while it lies inside the *window*: the W launch slots
starting at the oldest not-yet-consumed rollout (the head). Consuming the head moves the
window forward.

- W = 1: strict FIFO -- rollouts are consumed in launch order; one slow rollout stalls all.
- W >= number in flight: greedy -- whatever finishes first is consumed first; a slow rollout
  can be overtaken without limit, so its data gets ever more off-policy (and long, hard
  episodes are systematically under-sampled).
- In between: at most W-1 later rollouts can overtake any rollout, which bounds off-policy lag
  (see ``lag_bound``) while a few slow rollouts no longer block the trainer.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any


@dataclass
class WindowedFIFO:
    window: int
    launched: int = 0
    head: int = 0  # oldest not-yet-consumed id
    finished: dict[int, Any] = field(default_factory=dict)  # done, waiting to be consumed
    consumed: set[int] = field(default_factory=set)

    def __post_init__(self) -> None:
        if self.window < 1:
            raise ValueError("window must be >= 1")

    def launch(self) -> int:
        rid = self.launched
        self.launched += 1
        return rid

    def complete(self, rid: int, result: Any = None) -> None:
        if not 0 <= rid < self.launched or rid in self.consumed or rid in self.finished:
            raise ValueError(f"rollout {rid} is not in flight")
        self.finished[rid] = result

    @property
    def pending(self) -> int:
        """Launched and not yet consumed (in flight or waiting)."""
        return self.launched - len(self.consumed)

    def in_window(self, rid: int) -> bool:
        # The window is the W launch slots starting at the head (the oldest unconsumed): it only
        # moves when the head is consumed, so a stalled head lets at most W-1 younger ones by.
        return self.head <= rid < self.head + self.window and rid not in self.consumed

    def pop_ready(self) -> list[tuple[int, Any]]:
        """Consume every finished rollout inside the window (moving it as the head goes), in
        id order. Returns [(id, result)]."""
        out = []
        progress = True
        while progress:
            progress = False
            for rid in sorted(self.finished):
                if self.in_window(rid):
                    out.append((rid, self.finished.pop(rid)))
                    self.consumed.add(rid)
                    while self.head in self.consumed:
                        self.head += 1
                    progress = True
                    break
        return out


def lag_bound(window: int, max_pending: int, batch_size: int) -> int:
    """Max policy updates between a rollout's launch and its consumption, when at most
    ``max_pending`` rollouts are launched-but-unconsumed and the trainer updates after every
    ``batch_size`` consumed. At launch of id j at least j - max_pending + 1 rollouts were consumed;
    before j itself is consumed at most j (all older ones) + window - 1 (newer ones that overtook
    it) are: so at most max_pending + window - 2 consumptions, i.e. that many / batch_size
    updates (rounded up) in between."""
    return math.ceil((max_pending + window - 2) / batch_size)


def run_windowed(
    submit: Callable[[int], Any],
    wait_any: Callable[[list[Any]], list[Any]],
    total: int,
    window: int,
    max_pending: int,
) -> Iterator[tuple[int, Any]]:
    """Drive ``total`` rollouts through a windowed FIFO: keep ``max_pending`` launched, yield
    (id, result) as they become consumable. ``submit(id)`` starts rollout ``id`` and returns a
    handle; ``wait_any(handles)`` blocks until at least one is done and returns the done ones;
    a handle's ``result()`` gives its value. The caller may update the policy between yields:
    rollouts launched afterwards use the new one."""
    sched = WindowedFIFO(window)
    handles: dict[Any, int] = {}
    while len(sched.consumed) < total:
        while sched.launched < total and sched.pending < max_pending:
            rid = sched.launch()
            handles[submit(rid)] = rid
        for h in wait_any(list(handles)):
            sched.complete(handles.pop(h), h.result())
        yield from sched.pop_ready()
