"""The review queue: a persistent SQLite table of proposed fixes waiting for a person.

Each write is one transaction (atomic). Items are keyed by episode, so a resumed episode that
reports twice updates its item instead of adding a second one. ``approve`` merges the branch
into the repo's current branch; ``reject`` deletes branch and worktree but keeps the record.

A fix whose patched run did not verify is queued as ``unverified``, not ``pending``: it is
listed and can be reviewed, but ``approve`` merges it only when asked to explicitly.
"""

from __future__ import annotations

import json
import sqlite3
import time
from contextlib import closing, contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

from workbench.errors import BadInputError, WorkbenchError
from workbench.runs import gitops

_SCHEMA = """
CREATE TABLE IF NOT EXISTS items (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    episode TEXT UNIQUE NOT NULL,
    kind TEXT NOT NULL DEFAULT 'fix',
    run_id TEXT NOT NULL,
    new_run_id TEXT,
    repo TEXT NOT NULL,
    branch TEXT,
    base_sha TEXT,
    worktree TEXT,
    verified INTEGER NOT NULL DEFAULT 0,
    status TEXT NOT NULL DEFAULT 'pending',
    data TEXT NOT NULL DEFAULT '{}',
    reason TEXT,
    created REAL NOT NULL,
    updated REAL NOT NULL
)
"""


@dataclass
class ReviewItem:
    episode: str
    run_id: str
    repo: str
    branch: str | None = None
    base_sha: str | None = None
    worktree: str | None = None
    new_run_id: str | None = None
    verified: bool = False
    kind: str = "fix"
    status: str = "pending"  # pending | unverified | approved | rejected
    data: dict = field(default_factory=dict)  # diagnosis, findings, remedy, numbers, report
    reason: str | None = None
    id: int | None = None
    created: float = 0.0
    updated: float = 0.0

    def to_json(self) -> dict:
        return asdict(self)


class ReviewQueue:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._tx() as db:
            db.execute(_SCHEMA)

    @contextmanager
    def _tx(self):
        with closing(sqlite3.connect(self.path, timeout=30)) as db:
            db.row_factory = sqlite3.Row
            with db:  # one transaction: committed on success, rolled back on error
                yield db

    def upsert(self, item: ReviewItem) -> int:
        """Add an item, or update the one of the same episode (idempotent on resume)."""
        now = time.time()
        with self._tx() as db:
            db.execute(
                """INSERT INTO items (episode, kind, run_id, new_run_id, repo, branch, base_sha,
                       worktree, verified, status, data, created, updated)
                   VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)
                   ON CONFLICT(episode) DO UPDATE SET new_run_id=excluded.new_run_id,
                       branch=excluded.branch, base_sha=excluded.base_sha,
                       worktree=excluded.worktree, verified=excluded.verified,
                       data=excluded.data, updated=excluded.updated,
                       status=CASE WHEN items.status IN ('pending', 'unverified')
                                   THEN excluded.status ELSE items.status END""",
                (
                    item.episode,
                    item.kind,
                    item.run_id,
                    item.new_run_id,
                    item.repo,
                    item.branch,
                    item.base_sha,
                    item.worktree,
                    int(item.verified),
                    item.status,
                    json.dumps(item.data, default=str),
                    now,
                    now,
                ),
            )
            row = db.execute("SELECT id FROM items WHERE episode=?", (item.episode,)).fetchone()
        return int(row["id"])

    @staticmethod
    def _item(row: sqlite3.Row) -> ReviewItem:
        d = dict(row)
        d["verified"] = bool(d["verified"])
        d["data"] = json.loads(d["data"] or "{}")
        return ReviewItem(**d)

    def list(self, status: str | None = None) -> list[ReviewItem]:
        with self._tx() as db:
            if status:
                rows = db.execute("SELECT * FROM items WHERE status=? ORDER BY id", (status,))
            else:
                rows = db.execute("SELECT * FROM items ORDER BY id")
            return [self._item(r) for r in rows.fetchall()]

    def get(self, item_id: int) -> ReviewItem:
        with self._tx() as db:
            row = db.execute("SELECT * FROM items WHERE id=?", (int(item_id),)).fetchone()
        if row is None:
            raise BadInputError(f"no review item {item_id}")
        return self._item(row)

    def by_episode(self, episode: str) -> ReviewItem | None:
        with self._tx() as db:
            row = db.execute("SELECT * FROM items WHERE episode=?", (episode,)).fetchone()
        return self._item(row) if row else None

    def _set_status(self, item_id: int, status: str, reason: str | None) -> None:
        with self._tx() as db:
            db.execute(
                "UPDATE items SET status=?, reason=?, updated=? WHERE id=?",
                (status, reason, time.time(), int(item_id)),
            )

    @staticmethod
    def check_approvable(item: ReviewItem, unverified: bool = False) -> None:
        """An ``unverified`` item (its fix did not verify) is merged only with ``unverified``."""
        if item.status == "unverified" and not unverified:
            raise BadInputError(
                f"review item {item.id} is NOT verified (its patched run did not pass); "
                "approve it with --unverified to merge it anyway"
            )
        if item.status not in ("pending", "unverified"):
            raise BadInputError(f"review item {item.id} is already {item.status}")

    def approve(self, item_id: int, unverified: bool = False) -> str:
        """Merge the item's branch into the repo's current branch; returns the merge commit."""
        item = self.get(item_id)
        self.check_approvable(item, unverified)
        if not item.branch:
            raise WorkbenchError(f"review item {item_id} has no branch to merge")
        message = f"Merge {item.branch}: workbench fix for run {item.run_id} (review #{item.id})"
        sha = gitops.merge(Path(item.repo), item.branch, message)
        if item.worktree:
            gitops.remove_fix_worktree_only(Path(item.repo), Path(item.worktree))
        self._set_status(item_id, "approved", None)
        return sha

    def reject(self, item_id: int, reason: str | None = None) -> None:
        """Delete the branch and worktree; the record stays, with its reason."""
        item = self.get(item_id)
        if item.status not in ("pending", "unverified"):
            raise BadInputError(f"review item {item_id} is already {item.status}")
        if item.branch:
            wt = Path(item.worktree) if item.worktree else None
            gitops.remove_fix(Path(item.repo), item.branch, wt)
        self._set_status(item_id, "rejected", reason or "rejected by reviewer")
