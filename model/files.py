"""Atomic file writes: a temp file in the same folder, then ``os.replace``.

A reader, or a crash, sees the old file or the new one, never half of one. The temp file is
created like ``open(path, "w")`` creates a file (mode 0o666 less the umask), so the result has
the permissions the user expects; ``tempfile.mkstemp`` would leave it 0600. Standard library
only and no torch, so every package may import it (model, trainer, experiments, workbench).
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_path(path: str | Path, *, fsync: bool = False) -> Iterator[Path]:
    """A fresh temp path beside ``path`` to write; it replaces ``path`` when the block ends
    without an exception, and is removed when it raises."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _new_temp(path)
    try:
        yield tmp
        if fsync:
            fd = os.open(tmp, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        os.chmod(tmp, _new_file_mode())  # a writer that recreated the file (safetensors) got 0600
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | Path, text: str, *, fsync: bool = False) -> Path:
    with atomic_path(path, fsync=fsync) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def atomic_write_bytes(path: str | Path, data: bytes, *, fsync: bool = False) -> Path:
    with atomic_path(path, fsync=fsync) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def _new_file_mode() -> int:
    """The mode ``open()`` gives a new file: 0666 less the umask (read without changing it,
    which ``os.umask`` cannot do thread-safely)."""
    try:
        with open("/proc/self/status") as fh:
            mask = next(int(ln.split()[1], 8) for ln in fh if ln.startswith("Umask:"))
    except (OSError, StopIteration, ValueError):
        mask = os.umask(0o022)
        os.umask(mask)
    return 0o666 & ~mask


def _new_temp(path: Path) -> Path:
    flags = os.O_CREAT | os.O_EXCL | os.O_WRONLY | getattr(os, "O_CLOEXEC", 0)
    while True:
        tmp = path.with_name(f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp")
        try:
            os.close(os.open(tmp, flags, 0o666))  # the kernel applies the umask
            return tmp
        except FileExistsError:
            continue


@contextmanager
def file_lock(path: str | Path) -> Iterator[None]:
    """An exclusive ``flock`` on ``path`` (created): held across threads and processes of this
    machine, since each ``open`` is its own file description."""
    import fcntl

    with open(path, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)
