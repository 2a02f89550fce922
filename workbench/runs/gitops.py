"""Git operations for fixes: worktrees on ``workbench/fix/<run>-<n>`` branches, commits, diffs.

Rules: the agent writes only inside a worktree on a ``workbench/`` branch — never the checked-out
branch, never main; every ref and path is validated before it reaches git (so model text cannot
become an option such as ``--upload-pack=…`` or a path such as ``../../etc``); repos are closed
after use (``with open_repo(...)``).
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import git

from model.files import file_lock
from workbench.errors import BadInputError, WorkbenchError
from workbench.supervisor.patches import check_repo_path

BRANCH_PREFIX = "workbench/"
_REF_PART = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")
_SHA = re.compile(r"^[0-9a-f]{7,40}$")
_IDENTITY = {
    "GIT_AUTHOR_NAME": "workbench supervisor",
    "GIT_AUTHOR_EMAIL": "workbench@localhost",
    "GIT_COMMITTER_NAME": "workbench supervisor",
    "GIT_COMMITTER_EMAIL": "workbench@localhost",
}


class GitOpsError(WorkbenchError):
    pass


def check_ref_part(text: str) -> str:
    """A run id or other ref component: alphanumerics, ``_ . -``, never a leading ``-``."""
    if not isinstance(text, str) or not _REF_PART.match(text) or ".." in text:
        raise BadInputError(f"refused ref component {text!r}")
    if text.endswith((".lock", ".")):
        raise BadInputError(f"refused ref component {text!r}")
    return text


def check_branch(branch: str) -> str:
    if not branch.startswith(BRANCH_PREFIX):
        raise BadInputError(f"refused branch {branch!r}: the agent only writes workbench/ branches")
    for part in branch.split("/"):
        check_ref_part(part)
    return branch


def check_sha(sha: str) -> str:
    if not isinstance(sha, str) or not _SHA.match(sha):
        raise BadInputError(f"refused commit id {sha!r}")
    return sha


def fix_branch(run_id: str, n: int) -> str:
    return check_branch(f"{BRANCH_PREFIX}fix/{check_ref_part(run_id)}-{int(n)}")


@contextmanager
def open_repo(path: str | Path) -> Iterator[git.Repo]:
    try:
        repo = git.Repo(str(path))
    except (git.InvalidGitRepositoryError, git.NoSuchPathError):
        raise BadInputError(f"not a git repository: {path}") from None
    try:
        yield repo
    finally:
        repo.close()


def head_sha(repo_path: Path) -> str:
    with open_repo(repo_path) as repo:
        return repo.head.commit.hexsha


def check_repo(repo_path: Path) -> str:
    """The HEAD commit of a repository to branch fixes from; one clear error otherwise."""
    try:
        return head_sha(repo_path)
    except ValueError:  # a repository without a commit
        raise BadInputError(f"{repo_path}: the repository has no commit to branch from") from None


def current_branch(repo_path: Path) -> str | None:
    with open_repo(repo_path) as repo:
        return None if repo.head.is_detached else repo.active_branch.name


def branch_exists(repo_path: Path, branch: str) -> bool:
    with open_repo(repo_path) as repo:
        return f"refs/heads/{check_branch(branch)}" in {r.path for r in repo.references}


def show_file(repo_path: Path, sha: str, rel: str) -> str:
    """The text of ``rel`` at commit ``sha`` (the version the run used, not the working tree)."""
    with open_repo(repo_path) as repo:
        try:
            blob = repo.commit(check_sha(sha)).tree / check_repo_path(rel)
        except KeyError:
            raise GitOpsError(f"{rel}: not in commit {sha[:10]}") from None
        return blob.data_stream.read().decode()


def _common_dir(repo_path: Path) -> Path:
    with open_repo(repo_path) as repo:
        common = Path(repo.git.rev_parse("--git-common-dir"))
        return common if common.is_absolute() else Path(repo.working_tree_dir) / common


def claims_dir(repo_path: Path) -> Path:
    """Where fix-branch claims of this repo live (inside its git metadata, shared by homes)."""
    path = _common_dir(repo_path) / "workbench-claims"
    path.mkdir(exist_ok=True)
    return path


@contextmanager
def repo_lock(repo_path: Path) -> Iterator[None]:
    """Serialise our worktree/branch bookkeeping on one repo: several episodes on the same repo
    (RL groups, parallel evaluations; threads, processes or Ray tasks on one machine) would
    otherwise race ``git worktree add``/``prune`` on shared metadata."""
    with file_lock(_common_dir(repo_path) / "workbench.lock"):
        yield


def exclude_path(repo_path: Path, pattern: str) -> None:
    """Keep our own folder (``.workbench/``) out of ``git status`` via ``.git/info/exclude``."""
    with open_repo(repo_path) as repo:
        info = Path(repo.git_dir) / "info"
    info.mkdir(parents=True, exist_ok=True)
    exclude = info / "exclude"
    with repo_lock(repo_path):
        lines = exclude.read_text().splitlines() if exclude.exists() else []
        if pattern not in lines:
            exclude.write_text("\n".join([*lines, pattern]) + "\n")


def ensure_worktree(repo_path: Path, worktree: Path, branch: str, base_sha: str) -> Path:
    """Create (or find again) the worktree of ``branch`` at ``worktree``, based on ``base_sha``.

    Idempotent: a resumed step that already created the branch or worktree reuses it.
    """
    check_branch(branch)
    check_sha(base_sha)
    worktree = Path(worktree).resolve()
    with repo_lock(repo_path), open_repo(repo_path) as repo:
        repo.git.worktree("prune")
        listed = repo.git.worktree("list", "--porcelain")
        if f"worktree {worktree}" in listed.splitlines() and worktree.exists():
            return worktree
        if worktree.exists():
            shutil.rmtree(worktree)  # a half-created folder from a killed process
        worktree.parent.mkdir(parents=True, exist_ok=True)
        heads = {h.name for h in repo.heads}
        if branch in heads:
            repo.git.worktree("add", str(worktree), branch)
        else:
            repo.git.worktree("add", "-b", branch, str(worktree), base_sha)
    return worktree


def commit_files(worktree: Path, files: dict[str, str], message: str) -> str:
    """Write ``files`` (relative paths) in the worktree and commit; returns the commit id.

    If the files already hold that content (a resumed step), no new commit is made.
    """
    with open_repo(worktree) as repo:
        if repo.head.is_detached or not repo.active_branch.name.startswith(BRANCH_PREFIX):
            raise GitOpsError("refused to commit outside a workbench/ branch")
        root = Path(repo.working_tree_dir).resolve()
        rels = [check_repo_path(rel) for rel in files]
        for rel in rels:
            target = (root / rel).resolve()
            if root not in target.parents:
                raise GitOpsError(f"refused path {rel!r}: outside the worktree")
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(files[rel])
        repo.git.add("--", *rels)
        if not repo.index.diff("HEAD"):
            return repo.head.commit.hexsha
        with repo.git.custom_environment(**_IDENTITY):
            repo.git.commit("-q", "-m", message)
        return repo.head.commit.hexsha


def diff(repo_path: Path, base_sha: str, branch: str) -> str:
    with open_repo(repo_path) as repo:
        return repo.git.diff(check_sha(base_sha), check_branch(branch), "--")


def remove_fix(repo_path: Path, branch: str, worktree: Path | None) -> None:
    """Remove the worktree and delete the branch (both may already be gone)."""
    check_branch(branch)
    with repo_lock(repo_path), open_repo(repo_path) as repo:
        if worktree is not None and Path(worktree).exists():
            try:
                repo.git.worktree("remove", "--force", str(Path(worktree).resolve()))
            except git.GitCommandError:
                shutil.rmtree(worktree, ignore_errors=True)
        repo.git.worktree("prune")
        if branch in {h.name for h in repo.heads}:
            repo.git.branch("-D", branch)


def merge(repo_path: Path, branch: str, message: str) -> str:
    """Merge ``branch`` into the repo's current branch (a person's decision); returns the new HEAD."""
    check_branch(branch)
    with open_repo(repo_path) as repo:
        if repo.head.is_detached:
            raise GitOpsError("the repository has a detached HEAD; check out a branch first")
        if repo.is_dirty(untracked_files=False):
            raise GitOpsError("the repository has uncommitted changes; commit or stash them first")
        if branch not in {h.name for h in repo.heads}:
            raise GitOpsError(f"branch {branch} no longer exists")
        try:
            with repo.git.custom_environment(**_IDENTITY):
                repo.git.merge("--no-ff", "-m", message, branch)
        except git.GitCommandError as exc:
            try:
                repo.git.merge("--abort")
            except git.GitCommandError:
                pass
            raise GitOpsError(f"merge of {branch} failed: {exc.stderr.strip()[:200]}") from None
        return repo.head.commit.hexsha


def remove_fix_worktree_only(repo_path: Path, worktree: Path) -> None:
    """After a merge: drop the worktree folder, keep the (now merged) branch for history."""
    with open_repo(repo_path) as repo:
        if Path(worktree).exists():
            try:
                repo.git.worktree("remove", "--force", str(Path(worktree).resolve()))
            except git.GitCommandError:
                shutil.rmtree(worktree, ignore_errors=True)
        repo.git.worktree("prune")
