"""Windowed FIFO: ordering at W=1 and W=N, the window invariant and the off-policy-lag bound
under random completion times, and the driver over real thread/process pools."""

from __future__ import annotations

import random
import threading

import pytest

from trainer.rl.rollout import RolloutPool, windowed_rollouts
from trainer.rl.scheduler import WindowedFIFO, lag_bound


def simulate(window, total, max_pending, batch_size, seed):
    """Event simulation: rollouts take random (heavy-tailed) times; at most ``max_pending`` are
    launched-but-unconsumed; the trainer updates the policy after every ``batch_size``
    consumed. Returns the consumption log and per-rollout staleness."""
    rng = random.Random(seed)
    s = WindowedFIFO(window)
    now, version, consumed_n = 0.0, 0, 0
    running = {}  # id -> (finish time, version at launch)
    launch_version, log, finish_order, staleness, overtakes = {}, [], [], {}, {}
    while consumed_n < total:
        while s.launched < total and s.pending < max_pending:
            rid = s.launch()
            running[rid] = now + rng.expovariate(1.0) ** 2 * 5  # heavy tail: some very slow
            launch_version[rid] = version
        rid = min(running, key=running.get)
        now = running.pop(rid)
        finish_order.append(rid)
        s.complete(rid)
        for got, _ in s.pop_ready():
            head_before = min(i for i in range(total) if i not in s.consumed or i == got)
            log.append((got, head_before))
            overtakes[got] = sum(1 for c, _ in log if c > got)
            staleness[got] = version - launch_version[got]
            consumed_n += 1
            if consumed_n % batch_size == 0:
                version += 1
    return log, finish_order, staleness, overtakes


def test_strict_fifo_and_greedy_orders():
    log, _, _, _ = simulate(window=1, total=40, max_pending=8, batch_size=4, seed=0)
    assert [rid for rid, _ in log] == list(range(40))
    log, finish, _, _ = simulate(window=40, total=40, max_pending=8, batch_size=4, seed=0)
    assert [rid for rid, _ in log] == finish  # greedy: completion order
    assert finish != sorted(finish)  # and that really differs from launch order


@pytest.mark.parametrize("window", [1, 2, 3, 5, 8])
def test_window_invariant_and_lag_bound_under_random_times(window):
    max_pending, batch = 8, 4
    for seed in range(15):
        log, _, staleness, overtakes = simulate(window, 60, max_pending, batch, seed)
        assert sorted(rid for rid, _ in log) == list(range(60))  # each consumed exactly once
        for rid, head in log:
            assert 0 <= rid - head < window  # inside the window of the W oldest unconsumed
        for rid in range(60):
            # consumed after its younger rollouts at most W-1 times ...
            younger_first = sum(1 for r, _ in log[: [x for x, _ in log].index(rid)] if r > rid)
            assert younger_first <= window - 1
            # ... which bounds the policy versions it lags behind
            assert staleness[rid] <= lag_bound(window, max_pending, batch)
        del overtakes


def test_larger_window_lets_fast_rollouts_through():
    # rollout 0 is very slow: W=1 waits for it, W=3 consumes two others first
    for window, expect in [(1, [0, 1, 2]), (3, [1, 2, 0])]:
        s = WindowedFIFO(window)
        for _ in range(4):
            s.launch()
        s.complete(1, "b")
        s.complete(2, "c")
        s.complete(3, "d")  # outside a window of 3 while 0 is pending
        first = [rid for rid, _ in s.pop_ready()]
        s.complete(0, "a")
        rest = [rid for rid, _ in s.pop_ready()]
        assert (first + rest)[:3] == expect and sorted(first + rest) == [0, 1, 2, 3]
    with pytest.raises(ValueError):
        WindowedFIFO(0)
    s = WindowedFIFO(2)
    with pytest.raises(ValueError):
        s.complete(0)  # never launched


def _echo(rid: int) -> tuple[int, int]:
    return rid, rid


def test_driver_over_a_thread_pool_respects_the_window():
    one_consumed = threading.Event()

    def rollout(rid: int) -> tuple[int, int]:
        if rid == 0:  # the slow one: it finishes only once rollout 1 has been consumed
            assert one_consumed.wait(timeout=60), "rollout 1 was not consumed before 0 finished"
        return rid, rid

    got = []
    with RolloutPool(workers=4, kind="thread") as pool:
        for rid, res in windowed_rollouts(pool, lambda i: (rollout, (i,)), 8, 2, 4):
            got.append((rid, res))
            if rid == 1:
                one_consumed.set()
    ids = [rid for rid, _ in got]
    assert sorted(ids) == list(range(8)) and [r for _, (r, _) in got] == ids
    order = {rid: k for k, rid in enumerate(ids)}
    # with W=2 nothing younger than 1 may be consumed before the slow rollout 0
    assert all(order[0] < order[j] for j in range(2, 8))
    assert order[1] < order[0]  # but 1 (inside the window) overtook it


def test_process_pool_runs_rollouts():
    with RolloutPool(workers=2, kind="process") as pool:
        got = list(windowed_rollouts(pool, lambda i: (_echo, (i,)), 4, 4, 4))
    assert sorted(r for r, _ in got) == [0, 1, 2, 3]


def test_greedy_breaks_the_small_window_bound():
    # the bound is the window's doing: greedy consumption lets slow rollouts go staler
    worst = max(max(simulate(60, 60, 8, 4, seed)[2].values()) for seed in range(15))
    assert worst > lag_bound(2, 8, 4)
