"""Batch reading shared by both programs: prefetch workers, read timeouts, validation.

A program gives a ``read(index) -> batch`` function (deterministic in ``index``) and a
``is_valid(batch) -> bool`` check; ``BatchReader`` hands the loop one valid batch per step.
Harness faults run *inside* a read, where real I/O would stall: slow storage sleeps, a dead
producer blocks. The loader knobs are the real remedies: ``num_workers`` overlaps slow reads
with compute, ``read_timeout_s`` retries a stuck read, ``validate`` drops corrupted batches.
"""

from __future__ import annotations

import queue
import sys
import threading
from collections.abc import Callable
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any

from trainer.config import DataConfig
from trainer.faults import FaultPlan

READ_RETRIES = 3
MAX_SKIPPED = 1000  # consecutive invalid batches before giving up


class DataReadTimeout(TimeoutError):
    pass


class BatchReader:
    def __init__(
        self,
        read: Callable[[int], Any],
        cfg: DataConfig,
        faults: FaultPlan,
        is_valid: Callable[[Any], bool] | None = None,
    ) -> None:
        self._read_raw, self.cfg, self.faults = read, cfg, faults
        self.is_valid = is_valid or (lambda batch: True)
        self.index = 0  # the next data index (runs ahead of the step when batches are dropped)
        self.skipped = 0
        self._futures: dict[int, Future] = {}
        self._tasks: queue.Queue[tuple[int, Future]] = queue.Queue()
        self._next_submit = 0
        for _ in range(cfg.num_workers):
            threading.Thread(target=self._worker, daemon=True, name="data-worker").start()

    def _read(self, index: int) -> Any:
        self.faults.before_read(index)
        return self._read_raw(index)

    def _worker(self) -> None:
        while True:
            index, fut = self._tasks.get()
            if not fut.set_running_or_notify_cancel():
                continue
            try:
                fut.set_result(self._read(index))
            except BaseException as exc:  # handed to the loop, which raises it
                fut.set_exception(exc)

    def _read_once(self, index: int) -> Any:
        """One read, in a daemon thread when a timeout is set (a stuck read can't be killed)."""
        timeout = self.cfg.read_timeout_s
        if timeout is None:
            return self._read(index)
        fut: Future = Future()

        def target() -> None:
            try:
                fut.set_result(self._read(index))
            except BaseException as exc:
                fut.set_exception(exc)

        threading.Thread(target=target, daemon=True, name="data-read").start()
        return fut.result(timeout=timeout)

    def _read_retrying(self, index: int, first: Future | None = None) -> Any:
        timeout = self.cfg.read_timeout_s
        for attempt in range(READ_RETRIES):
            try:
                if first is not None and attempt == 0:
                    return first.result(timeout=timeout)
                return self._read_once(index)
            except FutureTimeout:
                print(
                    f"warning: data read {index} timed out after {timeout}s, retrying",
                    file=sys.stderr,
                    flush=True,
                )
        raise DataReadTimeout(f"data read {index} timed out {READ_RETRIES} times ({timeout}s each)")

    def _fetch(self, index: int) -> Any:
        if self.cfg.num_workers == 0:
            return self._read_retrying(index)
        ahead = self.cfg.num_workers * self.cfg.prefetch
        while self._next_submit < index + ahead:
            fut: Future = Future()
            self._futures[self._next_submit] = fut
            self._tasks.put((self._next_submit, fut))
            self._next_submit += 1
        return self._read_retrying(index, self._futures.pop(index))

    def next(self) -> Any:
        for _ in range(MAX_SKIPPED):
            batch = self._fetch(self.index)
            self.index += 1
            if not self.cfg.validate_batches or self.is_valid(batch):
                return batch
            self.skipped += 1
            print(f"warning: dropped corrupted batch {self.index - 1}", file=sys.stderr, flush=True)
        raise RuntimeError(f"{MAX_SKIPPED} consecutive batches failed validation")
