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


def _options(name: str):
    """(command path, click option) for every command's option called ``name``."""
    import typer

    from workbench.cli.main import app

    def walk(cmd, path):
        for p in cmd.params:
            if p.name == name:
                yield path, p
        for sub_name, sub in (getattr(cmd, "commands", None) or {}).items():
            yield from walk(sub, f"{path} {sub_name}")

    return list(walk(typer.main.get_command(app), "workbench"))


def test_shared_options_mean_the_same_on_every_command():
    homes, uris, jsons = _options("home"), _options("tracking_uri"), _options("as_json")
    assert len(homes) >= 7 and len(uris) >= 6  # fix, watch, review ×4, evolve ×2, init, …
    for where, opt in homes:
        assert (opt.envvar, str(opt.default)) == ("WORKBENCH_HOME", ".workbench"), where
    for where, opt in uris:
        if where == "workbench loop":  # logs only when asked
            assert opt.default is None and not opt.envvar, where
        else:
            assert (opt.envvar, opt.default) == ("MLFLOW_TRACKING_URI", "sqlite:///mlflow.db"), (
                where
            )
    helps = {opt.help for _, opt in jsons + _options("json_out")}
    assert len(helps) == 1 and len(jsons) >= 5
