"""The Ray rollout pool against a real local Ray instance (one per module: starting one costs
seconds): tasks run in other processes, the windowed-FIFO driver keeps its order guarantees as
on the thread pool, a task's exception reaches its future, and bad set-ups (no ray, an address
nothing answers at) are one-line errors. ``run_tasks`` is checked on the thread and Ray kinds."""

from __future__ import annotations

import fcntl
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import ray

from model.errors import BadInputError, WorkbenchError
from trainer.rl.rollout import START_LOCK, RolloutPool, run_tasks, windowed_rollouts


@pytest.fixture(scope="module")
def ray_pool():
    assert not ray.is_initialized()
    pool = RolloutPool(workers=2, kind="ray")
    yield pool
    pool.close()
    # the pool started this instance, so closing it shuts Ray down
    assert not ray.is_initialized()


# Task functions live at module level: Ray workers import this module by name to unpickle them.
def _pid_and_square(x: int) -> tuple[int, int]:
    return os.getpid(), x * x


def _slow_head(rid: int, flag: str) -> tuple[int, int]:
    """Rollout 0 finishes only once the driver has consumed rollout 1 (it writes ``flag``): the
    cross-process twin of the thread test's Event."""
    if rid == 0:
        deadline = time.monotonic() + 60
        while not Path(flag).exists():
            assert time.monotonic() < deadline, "rollout 1 was not consumed before 0 finished"
            time.sleep(0.02)
    return rid, os.getpid()


def _fail_on_three(x: int) -> int:
    if x == 3:
        raise ValueError(f"task {x} failed")
    return x


def test_tasks_run_in_other_processes_and_all_results_return(ray_pool):
    got = list(windowed_rollouts(ray_pool, lambda i: (_pid_and_square, (i,)), 6, 6, 4))
    assert sorted(rid for rid, _ in got) == list(range(6))
    assert all(sq == rid * rid for rid, (_, sq) in got)
    pids = {pid for _, (pid, _) in got}
    assert os.getpid() not in pids


def test_a_worker_imports_our_packages(ray_pool):
    def probe() -> list[str]:
        import model
        import trainer
        import workbench

        return [m.__name__ for m in (workbench, trainer, model)]

    assert ray_pool.submit(probe).result(timeout=60) == ["workbench", "trainer", "model"]


@pytest.mark.parametrize("kind", ["thread", "ray"])
def test_window_and_max_pending_hold_on_each_pool(kind, tmp_path, ray_pool):
    flag = tmp_path / "one-consumed"
    total, window, max_pending = 8, 2, 4
    launched, got, in_flight_peak = [], [], 0

    def make_args(i: int):
        nonlocal in_flight_peak
        launched.append(i)
        in_flight_peak = max(in_flight_peak, len(launched) - len(got))
        return _slow_head, (i, str(flag))

    # the thread kind gets its own pool; the Ray kind joins the module's instance
    pool = RolloutPool(workers=4, kind=kind)
    try:
        for rid, res in windowed_rollouts(pool, make_args, total, window, max_pending):
            got.append((rid, res))
            if rid == 1:
                flag.touch()
    finally:
        pool.close()
    assert ray.is_initialized()  # a pool that joined Ray leaves it running
    ids = [rid for rid, _ in got]
    assert sorted(ids) == list(range(total)) and [r for _, (r, _) in got] == ids
    assert launched == list(range(total)) and in_flight_peak <= max_pending
    order = {rid: k for k, rid in enumerate(ids)}
    # with W=2 nothing younger than 1 may be consumed before the slow rollout 0 ...
    assert all(order[0] < order[j] for j in range(2, total))
    assert order[1] < order[0]  # ... but 1, inside the window, overtook it
    pids = {pid for _, (_, pid) in got}
    assert (os.getpid() in pids) == (kind == "thread")


def test_a_task_exception_is_that_futures_exception(ray_pool):
    ok, bad = ray_pool.submit(_fail_on_three, 2), ray_pool.submit(_fail_on_three, 3)
    assert ok.result(timeout=60) == 2
    err = bad.exception(timeout=60)
    assert isinstance(err, ValueError) and "task 3 failed" in str(err)
    with pytest.raises(ValueError, match="task 3 failed"):
        list(windowed_rollouts(ray_pool, lambda i: (_fail_on_three, (i,)), 5, 5, 5))


@pytest.mark.parametrize("kind", ["thread", "ray"])
def test_run_tasks_returns_every_indexed_result(kind, ray_pool):
    seen = []
    args = [(x,) for x in (5, 1, 4, 2, 3)]
    got = dict(
        run_tasks(
            _pid_and_square,
            args,
            workers=2,
            kind=kind,
            window=2,
            progress=lambda d, t: seen.append((d, t)),
        )
    )
    assert sorted(got) == list(range(5))
    assert [got[i][1] for i in range(5)] == [25, 1, 16, 4, 9]
    assert seen == [(d, 5) for d in range(1, 6)]
    pids = {pid for pid, _ in got.values()}
    assert (pids == {os.getpid()}) == (kind == "thread")
    with pytest.raises(ValueError, match="task 3 failed"):
        list(run_tasks(_fail_on_three, [(x,) for x in range(5)], workers=2, kind=kind))


# A second driver, as on a cluster: it joins by address and brings its own import root (this
# test folder) that the cluster's workers only learn of through the pool's runtime_env.
_CLUSTER_DRIVER = """
import json, os, sys
sys.path.insert(0, sys.argv[2])
import ray
import test_ray_pool
from trainer.rl.rollout import run_tasks
got = dict(run_tasks(test_ray_pool._pid_and_square, [(x,) for x in range(4)], kind="ray",
                     address=sys.argv[1]))
print(json.dumps({"driver": os.getpid(), "got": got, "joined_left": ray.is_initialized()}))
"""


@pytest.mark.slow
def test_a_driver_joins_the_instance_by_address_and_leaves_it_running(ray_pool):
    address = ray.get_runtime_context().gcs_address
    proc = subprocess.run(
        [sys.executable, "-c", _CLUSTER_DRIVER, address, str(Path(__file__).parent)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert sorted(out["got"]) == ["0", "1", "2", "3"]
    assert [out["got"][str(x)][1] for x in range(4)] == [0, 1, 4, 9]
    pids = {pid for pid, _ in out["got"].values()}
    assert out["driver"] not in pids and os.getpid() not in pids
    assert out["joined_left"] is False  # its pool disconnected on close ...
    assert ray_pool.submit(_pid_and_square, 7).result(timeout=60)[1] == 49  # ... not shut down


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("address", ["127.0.0.1:{port}", "ray://127.0.0.1:{port}", "no-port"])
def test_an_unreachable_or_malformed_address_is_a_one_line_error(address):
    address = address.format(port=_free_port())  # bound then released: nothing listens there
    start = time.monotonic()
    with pytest.raises(BadInputError, match="Ray") as info:
        RolloutPool(workers=2, kind="ray", address=address)
    assert "\n" not in str(info.value) and repr(address) in str(info.value)
    assert time.monotonic() - start < 10  # fails fast, not after Ray's minutes of retries
    with pytest.raises(BadInputError, match="kind='ray'"):
        RolloutPool(workers=2, kind="thread", address=address)


def test_missing_ray_is_a_one_line_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now raises ImportError
    with pytest.raises(BadInputError, match="needs the `ray` package") as info:
        RolloutPool(workers=2, kind="ray")
    assert "\n" not in str(info.value)
    with pytest.raises(BadInputError, match="unknown pool kind"):
        run_tasks(_pid_and_square, [(1,)], kind="dask")
    with pytest.raises(BadInputError, match="window must be"):
        run_tasks(_pid_and_square, [(1,)], kind="thread", window=0)


def test_a_local_start_holds_the_lock_and_is_retried_once_then_a_one_line_error(monkeypatch):
    calls = []

    def failing_init(**kwargs):
        calls.append(("init", kwargs["address"], os.environ.get("PYTHONPATH", "")))
        with open(START_LOCK) as f, pytest.raises(BlockingIOError):  # starts are serialised
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        raise Exception("The current node timed out during startup.\nsecond line")

    # Ray is faked here: the module's real instance must neither be joined nor shut down.
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", failing_init)
    monkeypatch.setattr(ray, "shutdown", lambda: calls.append(("shutdown",)))
    with pytest.raises(WorkbenchError, match=r"\(2 tries\): The current node timed out") as info:
        RolloutPool(workers=2, kind="ray")
    assert "\n" not in str(info.value)
    assert [c[0] for c in calls] == ["init", "shutdown", "init", "shutdown"]
    # each try hands the workers this test's folder as an import root
    assert all(
        str(Path(__file__).parent) in c[2].split(os.pathsep) for c in calls if c[0] == "init"
    )
