"""Exit codes and output that tell the truth: bad configs and repos are refused up front, a
"no" is `cancelled` (exit 1, not Ctrl-C's 130), diffs and thread ids are never cut, files get
the user's umask. (`diagnose MISSING GOOD` and `no_data` are in tests/doctor/test_doctor_cli.py.)"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from workbench.cli.main import app
from workbench.errors import BadInputError
from workbench.supervisor.review import ReviewItem, ReviewQueue


def _console(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "workbench.cli.main", *args],
        capture_output=True,
        text=True,
        input=stdin,
    )


def _git(cwd: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@t", *args],
        cwd=cwd, check=True, capture_output=True, text=True,
    ).stdout.strip()  # fmt: skip


@pytest.mark.parametrize("text", ["", "# nothing but a comment\n", "[]\n", "- lr: 1\n"])
def test_an_empty_or_non_mapping_config_is_one_line_exit_2(tmp_path, text):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(text)
    res = CliRunner().invoke(app, ["train", "lm", "--config", str(cfg), "--tracking-uri",
                                   f"sqlite:///{tmp_path / 'm.db'}"])  # fmt: skip
    assert isinstance(res.exception, BadInputError), res.output
    assert str(cfg) in str(res.exception) and (
        "empty" in str(res.exception) or "mapping" in str(res.exception)
    )
    assert not (tmp_path / "m.db").exists()  # no run was started


def test_fix_refuses_a_non_repo_before_any_work(tmp_path):
    home = tmp_path / "home"
    (tmp_path / "plain").mkdir()
    res = CliRunner().invoke(app, [
        "fix", "0123456789abcdef0123456789abcdef", "--repo", str(tmp_path / "plain"),
        "--home", str(home), "--tracking-uri", f"sqlite:///{tmp_path / 'm.db'}",
    ])  # fmt: skip
    assert isinstance(res.exception, BadInputError) and "not a git repository" in str(res.exception)
    assert not home.exists()  # no episode state, no monitoring was done
    res = CliRunner().invoke(app, [
        "watch", "-e", "nope", "--once", "--fix", "--repo", str(tmp_path / "plain"),
        "--home", str(home), "--tracking-uri", f"sqlite:///{tmp_path / 'm.db'}",
    ])  # fmt: skip
    assert isinstance(res.exception, BadInputError) and "not a git repository" in str(res.exception)
    assert not (tmp_path / "m.db").exists()  # refused before the store was even opened


@pytest.fixture
def queued(tmp_path):
    """A real repo with a fix branch whose diff has a 200-column line, queued for review."""
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "train.yaml").write_text("lr: 2.5\n")
    _git(repo, "init", "-q", "-b", "main")
    _git(repo, "add", ".")
    _git(repo, "commit", "-q", "-m", "init")
    base = _git(repo, "rev-parse", "HEAD")
    _git(repo, "checkout", "-q", "-b", "workbench/fix/r1-1")
    long_line = "note: " + "x" * 194
    (repo / "train.yaml").write_text(f"lr: 0.25\n# {long_line}\n")
    _git(repo, "commit", "-qam", "fix")
    _git(repo, "checkout", "-q", "main")
    home = tmp_path / "home"
    item = ReviewItem(episode="e1", run_id="r1", repo=str(repo), branch="workbench/fix/r1-1",
                      base_sha=base, new_run_id="r2", verified=True)  # fmt: skip
    ReviewQueue(home / "review.db").upsert(item)
    return home, long_line


def test_a_declined_confirmation_is_cancelled_exit_1(queued):
    home, _ = queued
    for cmd in ("approve", "reject"):
        res = _console("review", cmd, "1", "--home", str(home), stdin="n\n")
        assert res.returncode == 1, (cmd, res.stderr)
        assert res.stderr.strip().splitlines()[-1] == "cancelled" and "aborted" not in res.stderr
    assert ReviewQueue(home / "review.db").get(1).status == "pending"


def test_review_show_never_cuts_a_diff_when_piped(queued):
    home, long_line = queued
    res = _console("review", "show", "1", "--home", str(home))
    assert res.returncode == 0, res.stderr
    assert f"+# {long_line}" in res.stdout.splitlines()


def test_the_fix_summary_prints_the_full_thread_id_on_its_own_line(capsys):
    from workbench.cli.fix import show_summary

    tid = "fix-0123456789ab-1764770000-a-rather-long-thread-name-to-resume"
    row = dict(thread_id=tid, run_id="0123456789abcdef", status="failed", diagnosis="lr_too_high",
               remedy="lower_lr", verified=False, before=1.0, after=None, review_id=None)  # fmt: skip
    show_summary([row], as_json=False)
    assert f"thread {tid}" in capsys.readouterr().out.splitlines()


def test_files_are_created_with_the_users_umask(tmp_path):
    import torch

    from model.checkpoint import atomic_save_safetensors
    from model.files import atomic_path, atomic_write_text

    old = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "config.json", "{}")
        atomic_save_safetensors({"w": torch.zeros(2)}, tmp_path / "model.safetensors")
        with atomic_path(tmp_path / "report.md") as p:  # how reports and plots are written
            p.write_text("# r\n")
        os.umask(0o027)
        atomic_write_text(tmp_path / "group.json", "{}")
    finally:
        os.umask(old)
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in tmp_path.iterdir()}
    assert modes == {
        "config.json": 0o644,
        "model.safetensors": 0o644,
        "report.md": 0o644,
        "group.json": 0o640,
    }
