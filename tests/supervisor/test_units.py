"""Fast checks: patches, refused model text, git worktrees, the sandbox, launching, the queue."""

from __future__ import annotations

import os
import socket
import sys
import time

import pytest
import yaml

from tests.supervisor.conftest import git, make_repo
from tests.waiting import wait_until
from workbench.doctor.types import PatchOp
from workbench.errors import BadInputError
from workbench.runs import gitops, sandbox
from workbench.runs.launch import launch_argv, read_repo_spec
from workbench.supervisor.patches import (
    PatchError,
    apply_blocks,
    check_repo_path,
    parse_blocks,
    patch_repo_config,
)
from workbench.supervisor.tools import PROPOSE_TOOLS, ToolCallError, validate_call
from workbench.supervisor.trajectory import Trajectory

EVIL_PATHS = ["../../etc/passwd", "--upload-pack=touch x", "/etc/passwd", "~/.bashrc", ".git/config",
              "a/../../b", "-rf", "a b; rm -rf ~", ""]  # fmt: skip


@pytest.mark.parametrize("path", EVIL_PATHS)
def test_model_paths_that_escape_or_look_like_options_are_refused(path):
    with pytest.raises(PatchError):
        check_repo_path(path)


@pytest.mark.parametrize("ref", ["--upload-pack=x", "-b", "a..b", "x y", "a/b", "main.lock", ""])
def test_model_ref_components_are_refused(ref):
    with pytest.raises(BadInputError):
        gitops.fix_branch(ref, 1)


def test_only_workbench_branches_are_writable():
    with pytest.raises(BadInputError):
        gitops.check_branch("main")
    assert gitops.fix_branch("abc123", 2) == "workbench/fix/abc123-2"


def _patch_text(text: str, ops, defaults=None) -> str:
    files = {"c.yaml": text}
    changed, _, _ = patch_repo_config(files, ops, config_rel="c.yaml", params=defaults)
    return changed.get("c.yaml", text)


def test_config_ops_and_defaults_from_params():
    text = "optimizer:\n  lr: 0.5\nsteps: 10\n"
    ops = [PatchOp(key="optimizer.lr", op="mul", value=0.1), PatchOp(key="optimizer.grad_clip", op="set", value=1.0),
           PatchOp(key="steps", op="add", value=5), PatchOp(key="model.dim", op="mul", value=2)]  # fmt: skip
    out = yaml.safe_load(_patch_text(text, ops, defaults={"model.dim": "64"}))
    assert out == {"optimizer": {"lr": 0.05, "grad_clip": 1.0}, "steps": 15, "model": {"dim": 128}}
    with pytest.raises(PatchError):  # nothing to multiply
        _patch_text(text, [PatchOp(key="optimizer.beta", op="mul", value=2)])
    with pytest.raises(PatchError):
        _patch_text(text, [PatchOp(key="steps.x", op="set", value=1)])


def test_search_replace_must_match_exactly_once():
    files = {"a.py": "x = 1\ny = 1\nx = 1\n", "b.py": "z = 2\n"}
    ok = parse_blocks("b.py\n<<<<<<< SEARCH\nz = 2\n=======\nz = 3\n>>>>>>> REPLACE\n")
    assert apply_blocks(files, ok)["b.py"] == "z = 3\n"
    twice = parse_blocks("a.py\n<<<<<<< SEARCH\nx = 1\n=======\nx = 2\n>>>>>>> REPLACE")
    with pytest.raises(PatchError, match="2 times"):
        apply_blocks(files, twice)
    with pytest.raises(PatchError, match="no such file"):
        apply_blocks(files, parse_blocks("c.py\n<<<<<<< SEARCH\na\n=======\nb\n>>>>>>> REPLACE"))
    with pytest.raises(PatchError):
        parse_blocks("../x.py\n<<<<<<< SEARCH\na\n=======\nb\n>>>>>>> REPLACE")


def test_tool_schema_refuses_bad_patch_args():
    with pytest.raises(ToolCallError, match="refused path"):
        validate_call(
            PROPOSE_TOOLS,
            "propose_code_patch",
            {"blocks": "--upload-pack=x\n<<<<<<< SEARCH\na\n=======\nb\n>>>>>>> REPLACE"},
        )
    with pytest.raises(ToolCallError, match="finite"):
        validate_call(
            PROPOSE_TOOLS,
            "propose_config_patch",
            {"remedy_id": "r", "ops": [{"key": "a", "op": "set", "value": float("nan")}]},
        )


def test_worktree_commit_is_idempotent_and_never_touches_main(tmp_path):
    repo = make_repo(tmp_path / "repo")
    base = gitops.head_sha(repo)
    wt = tmp_path / "wt" / "r-1"
    branch = gitops.fix_branch("r", 1)
    assert gitops.ensure_worktree(repo, wt, branch, base) == gitops.ensure_worktree(
        repo, wt, branch, base
    )
    c1 = gitops.commit_files(
        wt, {"configs/train.yaml": "optimizer:\n  lr: 0.1\n"}, "fix\n\nWorkbench-Episode: e/1"
    )
    c2 = gitops.commit_files(wt, {"configs/train.yaml": "optimizer:\n  lr: 0.1\n"}, "fix again")
    assert c1 == c2 != base
    assert git(repo, "rev-parse", "main") == base and git(repo, "status", "--porcelain") == ""
    assert "+  lr: 0.1" in gitops.diff(repo, base, branch)
    with pytest.raises(gitops.GitOpsError):  # the main checkout is not a workbench branch
        gitops.commit_files(repo, {"x.txt": "x"}, "nope")
    gitops.remove_fix(repo, branch, wt)
    assert not wt.exists() and not gitops.branch_exists(repo, branch)


def test_sandbox_timeout_kills_the_whole_process_group(tmp_path):
    marker = tmp_path / "grandchild.pid"
    code = f"import subprocess,sys,time; p=subprocess.Popen([sys.executable,'-c','import time; time.sleep(60)']); open({str(marker)!r},'w').write(str(p.pid)); time.sleep(60)"
    spec = sandbox.SandboxSpec([sys.executable, "-c", code], tmp_path, timeout_s=5, network=True)
    t0 = time.monotonic()
    res = sandbox.run_local(spec)
    assert res.timed_out and time.monotonic() - t0 < 30
    grandchild = int(marker.read_text())
    wait_until(lambda: not sandbox.pid_alive(grandchild), 10, "the grandchild to die")


def test_sandbox_scrubs_env_limits_files_and_cuts_network(tmp_path, monkeypatch):
    monkeypatch.setenv("SECRET_API_KEY", "hunter2")
    code = (
        "import os, socket, resource\n"
        "print('secret', os.environ.get('SECRET_API_KEY'))\n"
        "print('fsize', resource.getrlimit(resource.RLIMIT_FSIZE)[0])\n"
        "s = socket.socket()\n"
        "try:\n    s.connect(('127.0.0.1', int(os.environ['PORT']))); print('net ok')\n"
        "except OSError: print('net blocked')\n"
    )
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen()
    log = tmp_path / "out.log"
    spec = sandbox.SandboxSpec([sys.executable, "-c", code], tmp_path, env={"PORT": str(srv.getsockname()[1])},
                               timeout_s=60, file_size_mb=1, log_path=log)  # fmt: skip
    assert sandbox.run_local(spec).returncode == 0
    out = log.read_text()
    srv.close()
    assert "secret None" in out and f"fsize {1024 * 1024}" in out
    assert ("net blocked" if sandbox.can_unshare_net() else "net ok") in out


def test_docker_arguments_without_an_engine(tmp_path):
    spec = sandbox.SandboxSpec(
        ["python", "train.py"], tmp_path, env={"A": "1"}, memory_mb=512, cpus=1.5, pids=64
    )
    argv = sandbox.docker_argv(spec)
    joined = " ".join(argv)
    for part in ["--network none", "--read-only", "--memory 512m", "--cpus 1.5", "--pids-limit 64",
                 f"-v {tmp_path.resolve()}:/work:rw", "--cap-drop ALL", "-e A=1"]:  # fmt: skip
        assert part in joined
    assert argv[-3:] == ["python:3.11-slim", "python", "train.py"]


def test_launch_argv_from_workbench_yaml(tmp_path):
    (tmp_path / "workbench.yaml").write_text(
        'launch: "workbench train lm --config {config}"\nconfig: c.yaml\n'
    )
    spec = read_repo_spec(tmp_path)
    assert launch_argv(spec, "configs/x.yaml") == [
        sys.executable,
        "-m",
        "workbench.cli.main",
        "train",
        "lm",
        "--config",
        "configs/x.yaml",
    ]
    with pytest.raises(BadInputError):
        launch_argv(spec, "../../etc/passwd")


def test_trajectory_is_rewritten_atomically_and_reloads(tmp_path):
    t = Trajectory(tmp_path / "t.jsonl")
    t.add("start", run_id="r")
    t.add("outcome", value=float("nan"))
    again = Trajectory(tmp_path / "t.jsonl")
    assert [e["type"] for e in again.events] == ["start", "outcome"] and again.events[1][
        "value"
    ] == "nan"
    assert not [p for p in os.listdir(tmp_path) if "tmp" in p]
