"""The archive of scaffold variants: a tree of nodes (parent → child) persisted as one JSON file.

Every write replaces the file atomically (temp file + ``os.replace``), so a killed run loses at
most the child in flight; that child is marked ``running`` before its branch is made, and a
resumed run discards and redoes it.  Parent selection follows the Darwin Gödel Machine: weight
= sigmoid(λ·(score − mid)) × 1/(1 + children), so good variants are expanded, and variants with
few children get their turn.
"""

from __future__ import annotations

import json
import math
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from model.files import atomic_write_text
from workbench.errors import BadInputError

# A node's status.  Only nodes with a full selection score can become parents.
SEED = "seed"
RUNNING = "running"  # in flight (a resumed run redoes it)
INVALID = "invalid"  # the edit failed validation: no branch was made
NO_CHANGE = "no_change"  # the edit changed nothing
LOST_SUBSET = "lost_subset"  # not promising on the small subset: never ran the full split
LOST_SELECTION = "lost_selection"
LOST_HELDOUT = "lost_heldout"  # beat its parent on selection, not on heldout
WINNER = "winner"  # won on both: queued for review
SCORED = (SEED, LOST_SELECTION, LOST_HELDOUT, WINNER)


@dataclass
class Node:
    id: str  # "<gen>-<k>"
    gen: int
    k: int
    parent: str | None
    branch: str | None = None
    commit: str | None = None
    status: str = RUNNING
    description: str = ""
    brain: str = "rules"
    diff: str = ""
    scores: dict[str, Any] = field(default_factory=dict)  # split → brief numbers (+ "subset")
    failures: list[dict[str, Any]] = field(default_factory=list)  # selection runs it got wrong
    error: str | None = None
    review_id: int | None = None
    created: float = field(default_factory=time.time)

    def fitness(self, split: str) -> float | None:
        s = self.scores.get(split)
        return None if s is None else s.get("fitness")


@dataclass
class Archive:
    path: Path
    config: dict[str, Any] = field(default_factory=dict)
    nodes: dict[str, Node] = field(default_factory=dict)

    # -------------------------------------------------------------- persistence
    @classmethod
    def load(cls, path: str | Path) -> Archive:
        path = Path(path)
        if not path.is_file():
            raise BadInputError(f"no evolution archive at {path} (run `workbench evolve` first)")
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise BadInputError(f"{path}: not a valid archive ({exc})") from None
        nodes = {n["id"]: Node(**n) for n in data.get("nodes", [])}
        return cls(path, data.get("config", {}), nodes)

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        data = {
            "version": 1,
            "config": self.config,
            "nodes": [asdict(n) for n in self.nodes.values()],
        }
        atomic_write_text(self.path, json.dumps(data, indent=1, default=str), fsync=True)

    def put(self, node: Node) -> Node:
        self.nodes[node.id] = node
        self.save()
        return node

    # -------------------------------------------------------------- queries
    def children(self, node_id: str) -> list[Node]:
        return [n for n in self.nodes.values() if n.parent == node_id]

    def seed(self) -> Node:
        return next(n for n in self.nodes.values() if n.status == SEED)

    def best(self, split: str = "selection") -> Node:
        """The node with the best score on ``split`` (earliest on ties): the run's answer."""
        scored = [
            n for n in self.nodes.values() if n.status in SCORED and n.fitness(split) is not None
        ]
        return max(scored, key=lambda n: (n.fitness(split), -n.gen, -n.k))

    def select_parent(self, rng: random.Random, lam: float = 10.0) -> Node:
        """DGM: weight = sigmoid(λ·(score − mid)) / (1 + children); mid = mean of the top 3."""
        pool = [n for n in self.nodes.values() if n.status in SCORED]
        fits = sorted((n.fitness("selection") or 0.0 for n in pool), reverse=True)
        mid = sum(fits[:3]) / len(fits[:3])
        weights = [
            (1 / (1 + math.exp(-lam * ((n.fitness("selection") or 0.0) - mid))))
            / (1 + len(self.children(n.id)))
            for n in pool
        ]
        return rng.choices(pool, weights=weights, k=1)[0]

    def tree(self) -> list[tuple[int, Node]]:
        """(depth, node) in depth-first order from the seed (for printing)."""
        out: list[tuple[int, Node]] = []

        def walk(n: Node, d: int) -> None:
            out.append((d, n))
            for c in sorted(self.children(n.id), key=lambda c: (c.gen, c.k)):
                walk(c, d + 1)

        for root in [n for n in self.nodes.values() if n.parent is None]:
            walk(root, 0)
        return out
