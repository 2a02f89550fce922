"""The console script itself: version, usage errors as one line with a non-zero exit."""

from __future__ import annotations

import subprocess
import sys

from workbench import __version__


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "workbench.cli.main", *args], capture_output=True, text=True
    )


def test_version_prints_package_version():
    res = _run("--version")
    assert res.returncode == 0
    assert res.stdout.strip() == f"workbench {__version__}"


def test_unknown_command_is_a_usage_error_without_traceback():
    res = _run("no-such-command")
    assert res.returncode == 2
    assert "Traceback" not in res.stderr
    assert "No such command" in res.stderr
