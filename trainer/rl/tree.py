"""Prefix-tree merging: many token sequences that share prefixes become one packed tree.

A batch of RL samples repeats itself: every episode starts with the same system prompt, and
turn k+1's context *is* turn k's context plus its completion. We build a token trie over the
batch, lay it out in DFS order, and run the model once over the trie's nodes instead of once
over every sample:

- position id of a node = its depth (so it continues from its parent, as in the sample),
- attention: a node sees its ancestors and itself, nothing else. In DFS order the subtree of
  node q is the contiguous range [q, end[q]), so "q is an ancestor-or-self of p" is simply
  ``q <= p < end[q]`` -- that one array, ``end``, describes the whole tree mask,
- per-sample log-probs are recovered by gathering: sample token j is predicted by the node of
  its token j-1, so we gather ``logp[node(j-1), ids[j]]``.

Every node's hidden state equals the hidden state of the same token inside each sample that
contains it (same tokens, same positions, same visible context), so the loss and gradients equal
the unmerged computation up to float rounding (tests/rl/test_tree.py checks fp32 <= 1e-5).
Top-level subtrees (samples that share nothing) can be spread over several rows to bound the
row length; a row is padded with isolated nodes that see only themselves.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch


@dataclass
class PackedTree:
    """A batch of sequences packed as a forest, ready for one forward pass.

    input_ids, position_ids, subtree_end, parent, valid: [R, T] (R rows of T packed nodes;
    subtree_end exclusive, parent = the packed index of the node's parent or -1).
    The trainable targets of all samples, flattened in sample order, come as:
    pred_index [N] (flat index r*T + t of the node whose logits predict the target),
    targets [N] (token ids), sample_index [N] (which sample the target belongs to).
    """

    input_ids: torch.Tensor
    position_ids: torch.Tensor
    subtree_end: torch.Tensor
    parent: torch.Tensor
    valid: torch.Tensor
    pred_index: torch.Tensor
    targets: torch.Tensor
    sample_index: torch.Tensor
    tokens_unmerged: int
    tokens_merged: int

    @property
    def compression(self) -> float:
        return self.tokens_unmerged / max(self.tokens_merged, 1)

    def attention_mask(self) -> torch.Tensor:
        """Dense boolean tree mask [R, 1, T, T]: True where query p may attend key q."""
        return tree_mask(self.subtree_end)

    def prefix_tree(self, row: int = 0):
        """Row ``row`` as a ``kernels.tree.PrefixTree`` (the kernels' layout: chains of
        single-child tokens become one node)."""
        from kernels.tree import PrefixTree

        par = self.parent[row].tolist()
        T = len(par)
        n_children = [0] * T
        for p in par:
            if p >= 0:
                n_children[p] += 1
        node_parent: list[int] = []
        lengths: list[int] = []
        node_of = [0] * T
        for t in range(T):
            p = par[t]
            if t > 0 and p == t - 1 and n_children[p] == 1:
                node_of[t] = node_of[t - 1]
                lengths[-1] += 1
            else:
                node_of[t] = len(lengths)
                node_parent.append(node_of[p] if p >= 0 else -1)
                lengths.append(1)
        return PrefixTree(parent=tuple(node_parent), lengths=tuple(lengths))

    def to(self, device) -> PackedTree:
        fields = {k: getattr(self, k) for k in self.__dataclass_fields__}
        for k, v in fields.items():
            if isinstance(v, torch.Tensor):
                fields[k] = v.to(device)
        return PackedTree(**fields)


def tree_mask(subtree_end: torch.Tensor) -> torch.Tensor:
    """[R, T] subtree ends -> [R, 1, T, T] bool mask, allowed[p, q] = q <= p < end[q]."""
    T = subtree_end.shape[-1]
    idx = torch.arange(T, device=subtree_end.device)
    p, q = idx[:, None], idx[None, :]
    return ((q <= p) & (p < subtree_end[:, None, :]))[:, None]


def _trainable_targets(trainable: Sequence[bool]) -> list[int]:
    # Target j needs a predictor j-1: the first token of a sequence is never a target.
    return [j for j in range(1, len(trainable)) if trainable[j]]


def build_tree(
    sequences: Sequence[Sequence[int]],
    trainable: Sequence[Sequence[bool]],
    merge: bool = True,
    max_row_tokens: int | None = None,
) -> PackedTree:
    """Pack ``sequences`` (token id lists) as a DFS-ordered forest.

    ``trainable[i][j]`` marks the tokens of sequence i whose log-prob enters the loss.
    ``merge=False`` gives the unmerged layout (one chain per sequence) through the same code,
    which is what the equivalence tests compare against. ``max_row_tokens`` spreads top-level
    trees over rows (first-fit decreasing); a single tree larger than it gets its own row.
    """
    if len(sequences) != len(trainable):
        raise ValueError("sequences and trainable differ in length")
    # ---- the trie: children[n] maps token -> child node; node 0.. are real nodes
    token: list[int] = []
    children: list[dict[int, int]] = []
    roots: dict[int, int] = {}
    root_list: list[int] = []  # top-level nodes in insertion order (unmerged: one per sequence)
    paths: list[list[int]] = []
    for seq, tr in zip(sequences, trainable, strict=True):
        if len(seq) != len(tr):
            raise ValueError("a sequence and its trainable mask differ in length")
        if len(seq) == 0:
            raise ValueError("empty sequence")
        path = []
        level = roots if merge else {}
        for t in seq:
            t = int(t)
            node = level.get(t)
            if node is None:
                node = len(token)
                token.append(t)
                children.append({})
                level[t] = node
                if not path:
                    root_list.append(node)
            path.append(node)
            level = children[node]
        paths.append(path)

    # ---- DFS order per top-level tree (iterative: trees are deep)
    def dfs(root: int) -> tuple[list[int], list[int], list[int], list[int]]:
        order: list[int] = []
        depth: list[int] = []
        parent: list[int] = []  # local packed index of the parent, -1 for the root
        stack = [(root, 0, -1, False)]
        local_end: dict[int, int] = {}
        while stack:
            node, d, par, done = stack.pop()
            if done:
                local_end[node] = len(order)
                continue
            me = len(order)
            order.append(node)
            depth.append(d)
            parent.append(par)
            stack.append((node, d, par, True))
            # reversed so that children are visited in insertion order
            for child in reversed(list(children[node].values())):
                stack.append((child, d + 1, me, False))
        end = [local_end[n] for n in order]
        return order, depth, end, parent

    trees = [dfs(r) for r in root_list]
    # ---- rows: first-fit decreasing by size
    rows: list[list[int]] = []  # tree indices per row
    sizes: list[int] = []
    limit = max_row_tokens or sum(len(t[0]) for t in trees)
    for ti in sorted(range(len(trees)), key=lambda i: -len(trees[i][0])):
        n = len(trees[ti][0])
        for r, s in enumerate(sizes):
            if s + n <= limit:
                rows[r].append(ti)
                sizes[r] += n
                break
        else:
            rows.append([ti])
            sizes.append(n)
    R, T = len(rows), max(sizes)
    input_ids = torch.zeros(R, T, dtype=torch.long)
    position_ids = torch.zeros(R, T, dtype=torch.long)
    # padding nodes see only themselves: end = own index + 1
    subtree_end = (torch.arange(T) + 1).repeat(R, 1)
    parent = torch.full((R, T), -1, dtype=torch.long)
    valid = torch.zeros(R, T, dtype=torch.bool)
    flat_of_node = [0] * len(token)
    for r, tree_ids in enumerate(rows):
        offset = 0
        for ti in sorted(tree_ids):  # keep insertion order inside a row
            order, depth, end, par = trees[ti]
            n = len(order)
            input_ids[r, offset : offset + n] = torch.tensor([token[x] for x in order])
            position_ids[r, offset : offset + n] = torch.tensor(depth)
            subtree_end[r, offset : offset + n] = torch.tensor(end) + offset
            parent[r, offset : offset + n] = torch.tensor(
                [x + offset if x >= 0 else -1 for x in par]
            )
            valid[r, offset : offset + n] = True
            for i, node in enumerate(order):
                flat_of_node[node] = r * T + offset + i
            offset += n

    pred, tgt, smp = [], [], []
    for i, (seq, tr, path) in enumerate(zip(sequences, trainable, paths, strict=True)):
        for j in _trainable_targets(tr):
            pred.append(flat_of_node[path[j - 1]])
            tgt.append(int(seq[j]))
            smp.append(i)
    return PackedTree(
        input_ids=input_ids,
        position_ids=position_ids,
        subtree_end=subtree_end,
        parent=parent,
        valid=valid,
        pred_index=torch.tensor(pred, dtype=torch.long),
        targets=torch.tensor(tgt, dtype=torch.long),
        sample_index=torch.tensor(smp, dtype=torch.long),
        tokens_unmerged=sum(len(s) for s in sequences),
        tokens_merged=len(token),
    )


# ---------------------------------------------------------------------------- attention
def tree_attention_blocked(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    subtree_end: torch.Tensor,
    block: int = 256,
) -> torch.Tensor:
    """Tree attention that skips what the tree mask hides, in plain PyTorch.

    q (B, nh, T, D), k/v (B, nkv, T, D), subtree_end (B, T). For a block of queries [a, b) in
    DFS order, the keys any of them may see are the ancestors of a plus the block itself (an
    ancestor q < a of a node p in the block has a <= p < end[q], so it is an ancestor of a too).
    So each block attends over depth(a) + block keys instead of all T: near-linear cost for a
    wide, shallow-ish tree, where a dense T x T mask would be quadratic in the merged length.
    """
    B, nh, T, D = q.shape
    rep = nh // k.shape[1]
    if rep > 1:
        k = k.repeat_interleave(rep, dim=1)
        v = v.repeat_interleave(rep, dim=1)
    idx = torch.arange(T, device=q.device)
    rows = []
    for b in range(B):
        end = subtree_end[b]
        parts = []
        for a in range(0, T, block):
            e = min(a + block, T)
            # ancestors of a: nodes q < a whose subtree still contains a
            anc = idx[:a][end[:a] > a]
            keys = torch.cat([anc, idx[a:e]])
            qp = idx[a:e, None]
            allowed = (keys[None, :] <= qp) & (qp < end[keys][None, :])
            y = torch.nn.functional.scaled_dot_product_attention(
                q[b : b + 1, :, a:e],
                k[b : b + 1, :, keys],
                v[b : b + 1, :, keys],
                attn_mask=allowed[None, None],
            )
            parts.append(y)
        rows.append(torch.cat(parts, dim=2))
    return torch.cat(rows, dim=0)
