"""kill -9 in the middle of a relaunch, then --resume; then the reviewer's approve / reject."""

from __future__ import annotations

import os
import subprocess
import sys
import time

from typer.testing import CliRunner

from tests.supervisor.conftest import git
from workbench.cli.main import app
from workbench.supervisor.episode import fix_run
from workbench.supervisor.review import ReviewQueue


def _branches(repo) -> list[str]:
    out = git(repo, "for-each-ref", "--format=%(refname:short)", "refs/heads/")
    return sorted(b for b in out.splitlines() if b.startswith("workbench/"))


def test_kill_during_relaunch_then_resume_then_reject(workspace):
    from mlflow.tracking import MlflowClient

    repo, uri, run_id, home = workspace
    cmd = [sys.executable, "-m", "workbench.cli.main", "fix", run_id, "--repo", str(repo),
           "--tracking-uri", uri, "--home", str(home), "--thread", "k1"]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    record = home / "launches" / "k1_1.json"
    deadline = time.monotonic() + 120
    while not record.exists() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
    assert record.exists(), "the supervisor never reached the relaunch"
    proc.kill()  # SIGKILL: no cleanup of any kind
    proc.wait()
    import json

    child = json.loads(record.read_text())["pid"]
    assert _branches(repo) == [f"workbench/fix/{run_id}-1"]

    out = fix_run(None, resume="k1", tracking_uri=uri, home=home)
    assert out["status"] == "fixed" and out["verified"], out
    assert _branches(repo) == [f"workbench/fix/{run_id}-1"]  # exactly one fix branch
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("fixes").experiment_id
    runs = client.search_runs([exp], filter_string="tags.`workbench.episode` = 'k1/1'")
    assert len(runs) == 1 and runs[0].info.run_id == out["new_run_id"]  # the orphan was adopted
    assert _exits_soon(child)  # the adopted child ran to its end, it was not left running
    items = ReviewQueue(home / "review.db").list()
    assert len(items) == 1 and items[0].verified and items[0].episode == "k1"

    # Resuming a finished episode again changes nothing.
    assert fix_run(None, resume="k1", tracking_uri=uri, home=home)["review_id"] == items[0].id

    runner = CliRunner()
    res = runner.invoke(app, ["review", "list", "--home", str(home), "--json"])
    assert res.exit_code == 0 and '"verified": true' in res.output
    res = runner.invoke(app, ["review", "reject", str(items[0].id), "--home", str(home),
                              "--reason", "prefer a schedule change", "--yes"])  # fmt: skip
    assert res.exit_code == 0, res.output
    assert _branches(repo) == []
    assert not os.path.exists(items[0].worktree)
    kept = ReviewQueue(home / "review.db").get(items[0].id)
    assert kept.status == "rejected" and kept.reason == "prefer a schedule change"


def _alive(pid: int) -> bool:
    """True while the process runs; a zombie (exited, not yet reaped by init) counts as gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False
    return state != "Z"


def _exits_soon(pid: int, timeout: float = 15.0) -> bool:
    # The run is FINISHED in MLflow slightly before its process has flushed and exited.
    deadline = time.monotonic() + timeout
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    return not _alive(pid)


def test_episodes_starting_together_on_a_fresh_home_all_get_the_checkpoint_store(tmp_path):
    """The loop starts its rollouts at once on one home: each creates the checkpoint schema on
    the same new state.db, where SQLite refuses the switch to WAL without waiting ("database is
    locked", about one start in a few hundred). Every start must get a working store."""
    import sqlite3
    import threading

    from workbench.supervisor.episode import _checkpoints

    errors: list[str] = []

    def start(path):
        try:
            conn = sqlite3.connect(path, check_same_thread=False, timeout=30)
            try:
                saver = _checkpoints(conn)
                assert saver.get_tuple({"configurable": {"thread_id": "t"}}) is None
            finally:
                conn.close()
        except Exception as exc:  # noqa: BLE001 — collected and asserted below
            errors.append(repr(exc))

    for k in range(600):
        path = tmp_path / f"home{k}" / "state.db"
        path.parent.mkdir()
        threads = [threading.Thread(target=start, args=(path,)) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert not errors, errors[:3]
