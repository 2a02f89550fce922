"""The scaffold home: ``.workbench/scaffold/``, a git repository of the agent's editable scaffold.

``workbench init`` seeds it from the packaged ``scaffold/`` — data files only (YAML, prompts,
templates): the loader stays in the package, so nothing in the home can be imported or run by
the evaluation.  Evolution branches (``workbench/evolve/<gen>-<k>``) live in this repository;
approving a review item merges one into its ``main``.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import git

from scaffold.loader import PACKAGED, ScaffoldError, load_scaffold
from workbench import DEFAULT_HOME
from workbench.errors import BadInputError
from workbench.runs.gitops import _IDENTITY, open_repo

CODE_SUFFIXES = (".py", ".pyc", ".so")


def scaffold_dir(home: str | Path = DEFAULT_HOME) -> Path:
    return Path(home) / "scaffold"


def data_files(root: Path) -> list[Path]:
    """The scaffold's data files under ``root`` (relative), code and caches left out."""
    out = []
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root)
        if p.is_file() and p.suffix not in CODE_SUFFIXES and "__pycache__" not in rel.parts:
            out.append(rel)
    return out


def init_scaffold(dest: str | Path, source: str | Path | None = None) -> tuple[Path, str, bool]:
    """Create the scaffold repo at ``dest`` (idempotent); returns (path, HEAD commit, created)."""
    dest = Path(dest).resolve()
    if (dest / ".git").exists():
        with open_repo(dest) as repo:
            return dest, repo.head.commit.hexsha, False
    if dest.exists() and any(dest.iterdir()):
        raise BadInputError(f"{dest} exists and is not a scaffold repository")
    src = Path(source).resolve() if source else PACKAGED
    try:
        load_scaffold(src)  # refuse to seed from an invalid scaffold
    except ScaffoldError as exc:
        raise BadInputError(str(exc)) from None
    dest.mkdir(parents=True, exist_ok=True)
    files = data_files(src)
    for rel in files:
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src / rel, dest / rel)
    repo = git.Repo.init(dest)
    try:
        with repo.git.custom_environment(**_IDENTITY):
            repo.git.checkout("-q", "-b", "main")
            repo.git.add("--", *[str(r) for r in files])
            repo.git.commit("-q", "-m", f"scaffold seeded from {src}")
        return dest, repo.head.commit.hexsha, True
    finally:
        repo.close()


def read_files(repo_path: Path, sha: str) -> dict[str, str]:
    """Every data file of the scaffold at commit ``sha`` (relative path → text)."""
    with open_repo(repo_path) as repo:
        tree = repo.commit(sha).tree
        return {
            b.path: b.data_stream.read().decode()
            for b in tree.traverse()
            if b.type == "blob" and Path(b.path).suffix not in CODE_SUFFIXES
        }


def materialise(repo_path: Path, sha: str, dest: Path) -> Path:
    """Write the scaffold at ``sha`` into ``dest`` (a plain folder the loader can read)."""
    for rel, text in read_files(repo_path, sha).items():
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        (dest / rel).write_text(text)
    return dest
