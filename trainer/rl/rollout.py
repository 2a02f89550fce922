"""Where rollouts run: a local process pool by default, Ray tasks with ``kind="ray"`` (``--ray``).

Every pool hands back ``concurrent.futures.Future``s, so the windowed-FIFO driver does not care
which one runs them. The rollout function must be importable (module-level) so worker processes
can unpickle it. ``run_tasks`` is the one-call form: "each fix episode is one task".
"""

from __future__ import annotations

import concurrent.futures as cf
import multiprocessing as mp
import os
import socket
import sys
import tempfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from model.errors import BadInputError, WorkbenchError
from model.files import file_lock
from trainer.rl.scheduler import run_windowed

KINDS = ("process", "thread", "ray")
REPO_ROOT = Path(__file__).resolve().parents[2]  # holds workbench/, trainer/, model/, ...
# How long to wait for a cluster address to accept a TCP connection: Ray's own connect retries
# for minutes on an address where nothing listens, so we probe first and fail in seconds.
CONNECT_TIMEOUT_S = 5.0
LOCAL_START_ATTEMPTS = 2
START_LOCK = Path(tempfile.gettempdir()) / "m2-workbench-ray-start.lock"


def _check_pool_args(workers: int, kind: str) -> None:
    if kind not in KINDS:
        raise BadInputError(f"unknown pool kind {kind!r} ({' | '.join(KINDS)})")
    if workers < 1:
        raise BadInputError(f"workers must be >= 1, got {workers}")


def ray_available() -> bool:
    try:
        import ray  # noqa: F401
    except ImportError:
        return False
    return True


def _import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise BadInputError(
            "--ray needs the `ray` package: pip install 'm2-workbench[ray]'"
        ) from None
    return ray


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def _check_reachable(address: str) -> None:
    """Fail fast, in one line, on an address nothing answers at. ``auto`` is resolved by Ray
    itself (the cluster this machine joined), so only ``host:port`` forms are probed."""
    if address == "auto":
        return
    host, _, port = address.split("://", 1)[-1].rpartition(":")
    if not host or not port.isdigit():
        raise BadInputError(
            f"bad Ray address {address!r}: expected 'auto', 'host:port' or 'ray://host:port'"
        )
    try:
        socket.create_connection((host, int(port)), timeout=CONNECT_TIMEOUT_S).close()
    except OSError as e:
        raise BadInputError(
            f"cannot reach the Ray cluster at {address!r}: {e.strerror or e}"
        ) from None


def _driver_paths() -> list[str]:
    """The repo root and the driver's own import roots (a test folder pytest put on sys.path),
    not the interpreter's: workers run the same Python, so they need only what the driver added.
    The repo root comes first so a cluster node with a shared checkout finds our packages even
    where they are not installed."""
    prefixes = {os.path.abspath(sys.prefix), os.path.abspath(sys.base_prefix)}

    def interpreter_owned(p: str) -> bool:
        return any(p == pre or p.startswith(pre + os.sep) for pre in prefixes)

    roots = [str(REPO_ROOT)] + [os.path.abspath(p or ".") for p in sys.path]
    return [p for p in dict.fromkeys(roots) if os.path.isdir(p) and not interpreter_owned(p)]


@contextmanager
def _start_lock() -> Iterator[None]:
    """Serialise local Ray starts across this machine's processes (test workers, two CLI runs):
    two starts at once on a small box starve each other's agents past the raylet's fixed 15 s
    wait (ray-project/ray#65983), and both fail where one after the other succeed."""
    with file_lock(START_LOCK):
        yield


@contextmanager
def _environ(**values: str) -> Iterator[None]:
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


class RolloutPool:
    """``submit(fn, *args) -> Future``. kind: ``process`` (spawned workers: no forked torch
    threads), ``thread`` (in-process, for cheap or GIL-releasing work), ``ray`` (Ray tasks on
    the cluster at ``address``, e.g. ``"auto"`` or ``"ray://host:10001"``; by default a local
    instance of ``workers`` CPUs). ``close()`` shuts Ray down only if this pool started it."""

    def __init__(self, workers: int = 2, kind: str = "process", address: str | None = None) -> None:
        _check_pool_args(workers, kind)
        if address is not None and kind != "ray":
            raise BadInputError(f"a Ray address needs kind='ray', not {kind!r}")
        self.kind = kind
        self._owns_ray = False
        if kind == "process":
            self._ex = cf.ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn"))
        elif kind == "thread":
            self._ex = cf.ThreadPoolExecutor(workers)
        else:
            self._ray = _import_ray()
            self._remote: dict[Callable, Any] = {}
            if address is not None:
                _check_reachable(address)
            if not self._ray.is_initialized():  # else: join what this process already uses
                self._init_ray(workers, address)
                self._owns_ray = True

    def _init_ray(self, workers: int, address: str | None) -> None:
        ray = self._ray
        paths = os.pathsep.join(_driver_paths())
        common = {"include_dashboard": False, "log_to_driver": False}
        if address is not None:
            # On a cluster the driver's paths must exist on every node (a shared checkout);
            # env_vars are a working-dir-free way to hand them over.
            try:
                ray.init(address=address, runtime_env={"env_vars": {"PYTHONPATH": paths}}, **common)
            except Exception as e:  # Ray raises bare Exceptions too; each becomes one line
                raise BadInputError(
                    f"cannot join the Ray cluster at {address!r}: {_first_line(e)}"
                ) from None
            return
        # A local instance's workers inherit the environment of the processes ray.init starts,
        # so PYTHONPATH set here reaches the workers Ray prestarts; a runtime_env would make Ray
        # start fresh workers for it (~10 s more on a busy 2-core box).
        for attempt in range(1, LOCAL_START_ATTEMPTS + 1):
            try:
                with _start_lock(), _environ(PYTHONPATH=paths):
                    ray.init(address="local", num_cpus=workers, **common)
                return
            except Exception as e:
                # The raylet exits when its agents take over a fixed 15 s to start
                # (ray-project/ray#65983), which a CPU-starved box hits now and then; the
                # retry starts from a clean slate.
                ray.shutdown()
                if attempt == LOCAL_START_ATTEMPTS:
                    raise WorkbenchError(
                        f"could not start a local Ray instance ({attempt} tries): {_first_line(e)}"
                    ) from None

    def submit(self, fn: Callable, *args: Any) -> cf.Future:
        if self.kind == "ray":
            remote = self._remote.get(fn)
            if remote is None:
                remote = self._remote[fn] = self._ray.remote(fn)
            # A task's exception comes back as RayTaskError(<its class>): still an instance of
            # the original class, so callers catch it as they would from the other pools.
            return remote.remote(*args).future()
        return self._ex.submit(fn, *args)

    def close(self) -> None:
        if self.kind != "ray":
            self._ex.shutdown(wait=True, cancel_futures=True)
        elif self._owns_ray:
            self._ray.shutdown()
            self._owns_ray = False

    def __enter__(self) -> RolloutPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _wait_any(futures: list[cf.Future]) -> list[cf.Future]:
    done, _ = cf.wait(futures, return_when=cf.FIRST_COMPLETED)
    return list(done)


def windowed_rollouts(
    pool: RolloutPool,
    make_args: Callable[[int], tuple[Callable, tuple]],
    total: int,
    window: int,
    max_pending: int,
) -> Iterator[tuple[int, Any]]:
    """Run ``total`` rollouts on ``pool`` in windowed-FIFO order. ``make_args(id)`` is called at
    launch time (so it can read the current policy version) and returns (fn, args)."""

    def submit(rid: int) -> cf.Future:
        fn, args = make_args(rid)
        return pool.submit(fn, *args)

    return run_windowed(submit, _wait_any, total, window, max_pending)


def run_tasks(
    fn: Callable,
    args_list: Sequence[tuple],
    *,
    workers: int = 2,
    kind: str = "process",
    address: str | None = None,
    window: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> Iterator[tuple[int, Any]]:
    """Run ``fn(*args_list[i])`` for every i on a fresh pool; yield ``(i, result)`` in
    windowed-FIFO order (``window`` None: greedy, as they finish). ``fn`` must be module-level
    for the process and Ray kinds. ``progress(done, total)`` is called after each result. The
    pool starts at the first ``next()`` and closes when the iterator is exhausted or closed; a
    task's exception propagates from it. Bad arguments raise here, before any pool starts."""
    total = len(args_list)
    window = (total or 1) if window is None else window
    if window < 1:
        raise BadInputError(f"window must be >= 1, got {window}")
    _check_pool_args(workers, kind)
    # workers + window - 1 launched-but-unconsumed: while a slow head holds back up to
    # window - 1 finished results, the workers still have tasks to run.
    max_pending = workers + window - 1

    def stream() -> Iterator[tuple[int, Any]]:
        with RolloutPool(workers, kind, address) as pool:
            results = windowed_rollouts(
                pool, lambda i: (fn, args_list[i]), total, window, max_pending
            )
            for done, (i, result) in enumerate(results, 1):
                if progress is not None:
                    progress(done, total)
                yield i, result

    return stream()
