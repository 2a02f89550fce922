"""The layout of a DFS-packed prefix tree, as tree attention and position ids need it.

Nodes are numbered in DFS pre-order and their tokens are packed in that order, so a node's
subtree is one contiguous run of nodes (and of tokens). A token i may attend to token j iff
j <= i and node(j) is an ancestor-or-self of node(i). With pre-order numbering that is

    j <= i <= subtree_end[j]

where subtree_end[j] is the last token of the subtree of node(j) — one integer per key, which is
all the Triton kernel needs (no dense mask). Several roots are allowed (a forest = independent
sequences packed side by side).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import torch


@dataclass(frozen=True)
class PrefixTree:
    """``parent[n]`` (-1 for a root, else < n) and ``lengths[n]`` tokens per node, DFS order."""

    parent: tuple[int, ...]
    lengths: tuple[int, ...]

    def __post_init__(self):
        object.__setattr__(self, "parent", tuple(int(p) for p in self.parent))
        object.__setattr__(self, "lengths", tuple(int(n) for n in self.lengths))
        if len(self.parent) != len(self.lengths) or not self.parent:
            raise ValueError("parent and lengths must be non-empty and of equal length")
        if any(n < 1 for n in self.lengths):
            raise ValueError("every node needs at least one token")
        stack: list[int] = []  # the current root-to-node path while walking in DFS order
        for n, p in enumerate(self.parent):
            while stack and stack[-1] != p:
                stack.pop()
            if p != -1 and not stack:
                raise ValueError(f"node {n}: parent {p} is not on the DFS path (not DFS order)")
            stack.append(n)

    # -- constructors --------------------------------------------------------------------------
    @classmethod
    def chain(cls, num_tokens: int) -> PrefixTree:
        """One node: plain causal attention."""
        return cls(parent=(-1,), lengths=(num_tokens,))

    # -- per-node and per-token facts ----------------------------------------------------------
    @property
    def num_nodes(self) -> int:
        return len(self.parent)

    @property
    def num_tokens(self) -> int:
        return sum(self.lengths)

    @cached_property
    def node_exit(self) -> tuple[int, ...]:
        """Last node of each node's subtree (its DFS exit; its enter index is the node id)."""
        exit_ = list(range(self.num_nodes))
        for n in reversed(range(self.num_nodes)):
            p = self.parent[n]
            if p >= 0:
                exit_[p] = max(exit_[p], exit_[n])
        return tuple(exit_)

    @cached_property
    def _token_start(self) -> tuple[int, ...]:
        starts, total = [], 0
        for n in self.lengths:
            starts.append(total)
            total += n
        return tuple(starts)

    def node_of_token(self, device=None) -> torch.Tensor:
        return torch.repeat_interleave(
            torch.arange(self.num_nodes, device=device),
            torch.tensor(self.lengths, device=device),
        )

    def subtree_end(self, device=None) -> torch.Tensor:
        """Per token: index of the last token of its node's subtree (int32, inclusive)."""
        end = [self._token_start[e] + self.lengths[e] - 1 for e in self.node_exit]
        return torch.tensor(end, dtype=torch.int32, device=device)[self.node_of_token(device)]

    def position_ids(self, device=None) -> torch.Tensor:
        """Positions continue from the parent: a node starts at the depth of its prefix."""
        start = [0] * self.num_nodes
        for n, p in enumerate(self.parent):
            if p >= 0:
                start[n] = start[p] + self.lengths[p]
        node = self.node_of_token(device)
        within = (
            torch.arange(self.num_tokens, device=device)
            - torch.tensor(self._token_start, device=device)[node]
        )
        return torch.tensor(start, device=device)[node] + within

    def dense_mask(self, device=None) -> torch.Tensor:
        """[N, N] bool, True where query i may attend to key j (for the reference paths)."""
        i = torch.arange(self.num_tokens, device=device)
        end = self.subtree_end(device)
        return (i[None, :] <= i[:, None]) & (i[:, None] <= end[None, :])
