"""The supervisor graph end to end: real git repo, real MLflow store, real training subprocesses."""

from __future__ import annotations

import json

from langchain_core.language_models.chat_models import BaseChatModel
from langchain_core.messages import AIMessage, ToolMessage
from langchain_core.outputs import ChatGeneration, ChatResult

from tests.supervisor.conftest import git
from workbench.episode import fix_run, load_trajectory
from workbench.review import ReviewQueue


def _branches(repo) -> list[str]:
    out = git(repo, "for-each-ref", "--format=%(refname:short)", "refs/heads/")
    return sorted(b for b in out.splitlines() if b.startswith("workbench/"))


def test_rules_brain_fixes_divergence_on_a_branch_and_queues_it(workspace):
    repo, uri, run_id, home = workspace
    main_before = git(repo, "rev-parse", "main")
    out = fix_run(run_id, repo=repo, tracking_uri=uri, home=home, thread_id="t1")
    assert out["status"] == "fixed", out
    assert out["diagnosis"] == "lr_too_high"
    assert out["verified"] and out["reward"] == 1.0
    assert out["after"] < out["before"]
    # The fix lives on its own branch; main and the checked-out tree are untouched.
    assert _branches(repo) == [f"workbench/fix/{run_id}-1"]
    assert git(repo, "rev-parse", "main") == main_before
    assert git(repo, "status", "--porcelain") == ""
    diff = git(repo, "diff", "main", out["branch"])
    assert "-  lr: 2.5" in diff and "+  lr: 0.25" in diff
    msg = git(repo, "log", "-1", "--format=%B", out["branch"])
    assert run_id in msg and "lr_too_high" in msg and "divergence" in msg and "lower_lr" in msg
    items = ReviewQueue(home / "review.db").list()
    assert [(i.branch, i.verified, i.status) for i in items] == [(out["branch"], True, "pending")]
    events = load_trajectory(home, "t1")
    types = [e["type"] for e in events]
    for t in (
        "start",
        "findings",
        "message",
        "tool",
        "diagnosis",
        "proposal",
        "patch",
        "launch",
        "outcome",
        "end",
    ):
        assert t in types
    assert events[-1]["reward"] == 1.0
