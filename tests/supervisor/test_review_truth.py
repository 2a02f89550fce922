"""Review items say what they are: an unverified fix is queued as `unverified` and merged only
with --unverified; a remedy that changes nothing here is skipped before any relaunch (`no_op`)."""

from __future__ import annotations

from typer.testing import CliRunner

from tests.supervisor.conftest import git
from tests.supervisor.test_graph import Scripted, _branches, _call
from workbench.cli.main import app
from workbench.errors import BadInputError
from workbench.supervisor.episode import fix_run, load_trajectory
from workbench.supervisor.review import ReviewQueue

DIAG = dict(cause="lr_too_high", confidence=0.9, summary="lr too high")


def test_a_fix_that_did_not_verify_is_unverified_and_needs_the_flag(workspace):
    repo, uri, run_id, home = workspace
    main_before = git(repo, "rev-parse", "main")
    brain = Scripted(script=[
        _call("submit_diagnosis", 1, **DIAG),  # 2.0 still diverges (lr > 1.54 does)
        _call("propose_config_patch", 2, remedy_id="lower_lr",
              ops=[{"key": "optimizer.lr", "op": "set", "value": 2.0}]),
    ])  # fmt: skip
    out = fix_run(run_id, repo=repo, tracking_uri=uri, home=home, thread_id="u1",
                  max_attempts=1, brain_model=brain)  # fmt: skip
    assert out["status"] == "failed" and not out["verified"] and out["review_id"], out
    queue = ReviewQueue(home / "review.db")
    (item,) = queue.list()
    assert (item.status, item.verified) == ("unverified", False)
    assert [i.id for i in queue.list("unverified")] == [item.id] and queue.list("pending") == []

    run = CliRunner().invoke
    listed = run(app, ["review", "list", "--home", str(home)])
    assert "unverified" in listed.output
    res = run(app, ["review", "approve", str(item.id), "--home", str(home), "--yes"])
    assert isinstance(res.exception, BadInputError) and "NOT verified" in str(res.exception)
    assert git(repo, "rev-parse", "main") == main_before
    res = run(app, ["review", "approve", str(item.id), "--home", str(home), "--unverified"],
              input="n\n")  # fmt: skip
    assert "NOT VERIFIED" in res.output and res.exit_code == 1
    res = run(app, ["review", "approve", str(item.id), "--home", str(home), "--unverified", "-y"])
    assert res.exit_code == 0, res.output
    assert git(repo, "rev-parse", "main") != main_before
    assert queue.get(item.id).status == "approved"


def test_a_remedy_that_changes_nothing_is_skipped_before_any_relaunch(workspace):
    repo, uri, run_id, home = workspace
    brain = Scripted(script=[
        _call("submit_diagnosis", 1, **DIAG),
        # grad_clip is 1.0 already (logged param; the file leaves it out), lr is 2.5 in the file
        _call("propose_config_patch", 2, remedy_id="clip_grads",
              ops=[{"key": "optimizer.grad_clip", "op": "set", "value": 1.0}]),
        _call("propose_config_patch", 3, remedy_id="same_lr",
              ops=[{"key": "optimizer.lr", "op": "mul", "value": 1.0}]),
    ])  # fmt: skip
    out = fix_run(run_id, repo=repo, tracking_uri=uri, home=home, thread_id="n1",
                  max_attempts=2, brain_model=brain)  # fmt: skip
    assert out["status"] == "failed" and out["review_id"] is None, out
    events = load_trajectory(home, "n1")
    types = [e["type"] for e in events]
    assert [e["remedy_id"] for e in events if e["type"] == "no_op"] == ["clip_grads", "same_lr"]
    assert "launch" not in types and "patch" not in types
    assert _branches(repo) == [] and ReviewQueue(home / "review.db").list() == []
