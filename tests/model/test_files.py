"""The one atomic-write helper: the file appears whole, with the user's umask, or not at all."""

from __future__ import annotations

import os
import stat

import pytest

from model.files import atomic_path, atomic_write_bytes, atomic_write_text


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_mode_follows_the_umask_like_open(tmp_path, umask):
    old = os.umask(umask)
    try:
        atomic_write_text(tmp_path / "a.json", "{}")
        atomic_write_bytes(tmp_path / "b.pkl", b"\x00", fsync=True)
        (tmp_path / "plain.txt").write_text("x")
    finally:
        os.umask(old)
    want = 0o666 & ~umask
    for name in ("a.json", "b.pkl", "plain.txt"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == want, name


def test_replaces_whole_and_leaves_no_temp_file(tmp_path):
    path = tmp_path / "sub" / "state.json"
    atomic_write_text(path, "old")
    assert atomic_write_text(path, "new") == path and path.read_text() == "new"
    with pytest.raises(RuntimeError):
        with atomic_path(path) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed mid-write")
    assert path.read_text() == "new"
    assert sorted(p.name for p in path.parent.iterdir()) == ["state.json"]
