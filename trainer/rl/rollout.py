"""Where rollouts run: a local process pool by default, Ray tasks with ``use_ray`` (``--ray``).

Both hand back ``concurrent.futures.Future``s, so the windowed-FIFO driver does not care which
one runs them. The rollout function must be importable (module-level) so worker processes can
pickle it.
"""

from __future__ import annotations

import concurrent.futures as cf
import multiprocessing as mp
from collections.abc import Callable, Iterator
from typing import Any

from trainer.rl.scheduler import run_windowed


def ray_available() -> bool:
    try:
        import ray  # noqa: F401
    except ImportError:
        return False
    return True


class RolloutPool:
    """``submit(fn, *args) -> Future``. kind: ``process`` (spawned workers: no forked torch
    threads), ``thread`` (in-process, for cheap or GIL-releasing work), ``ray``."""

    def __init__(self, workers: int = 2, kind: str = "process") -> None:
        self.kind = kind
        if kind == "process":
            self._ex = cf.ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn"))
        elif kind == "thread":
            self._ex = cf.ThreadPoolExecutor(workers)
        elif kind == "ray":
            if not ray_available():
                raise RuntimeError("--ray needs the `ray` package: pip install 'm2-workbench[ray]'")
            import ray

            if not ray.is_initialized():
                ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False)
            self._ray = ray
            self._remote: dict[Callable, Any] = {}
        else:
            raise ValueError(f"unknown pool kind {kind!r} (process | thread | ray)")

    def submit(self, fn: Callable, *args: Any) -> cf.Future:
        if self.kind == "ray":
            remote = self._remote.get(fn)
            if remote is None:
                remote = self._remote[fn] = self._ray.remote(fn)
            return remote.remote(*args).future()
        return self._ex.submit(fn, *args)

    def close(self) -> None:
        if self.kind != "ray":
            self._ex.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> RolloutPool:
        return self

    def __exit__(self, *exc) -> None:
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
