"""Per-token log-probs of RL samples from the policy model: merged (one pass over the prefix
tree) or unmerged (each sample on its own), with the LM head in fp32.

Both paths run the model's own decoder forward (``MiniMaxM2Model.forward``) and differ only in
the attention backend handed to it: causal per sample, or the tree mask (dense, the
block-skipping version in ``trainer.rl.tree``, or ``kernels.tree_attention``). Only the positions
that predict a trainable token go through the LM head -- in RL most tokens are context, and the
vocabulary projection is a large share of a small model's cost.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from model.modeling import AttentionFn, sdpa_attention
from trainer.rl.tree import PackedTree, tree_attention_blocked, tree_mask


def hidden_states(
    model, input_ids: torch.Tensor, position_ids: torch.Tensor, attention_fn: AttentionFn
) -> torch.Tensor:
    """Final-normed hidden states [B, T, H] of ``model`` (a MiniMaxM2ForCausalLM), its decoder
    run with ``attention_fn`` as the attention backend."""
    return model.model.norm(model.model(input_ids, position_ids, attention_fn))


def head_logprobs(model, hidden: torch.Tensor, pred_index: torch.Tensor, targets: torch.Tensor):
    """log p(target) at the flat positions ``pred_index`` of ``hidden`` [B, T, H], LM head in
    fp32. Positions shared by several targets go through the head once."""
    flat = hidden.reshape(-1, hidden.shape[-1])
    uniq, inv = torch.unique(pred_index, return_inverse=True)
    logits = F.linear(flat[uniq].float(), model.lm_head.weight.float())
    logp = torch.log_softmax(logits, dim=-1)
    return logp[inv, targets]


TREE_ATTENTION = ("auto", "blocked", "dense", "kernels")


def tree_logprobs(model, packed: PackedTree, attention: str = "auto", block: int = 256):
    """[N] log-probs of the packed targets from one forward pass over the tree.

    attention: ``blocked`` (PyTorch, skips hidden key blocks: the fast CPU path), ``dense``
    (SDPA with the full [T, T] tree mask), ``kernels`` (``kernels.tree_attention``: Triton on
    CUDA), ``auto`` (kernels on CUDA, blocked elsewhere)."""
    if attention == "auto":
        attention = "kernels" if packed.input_ids.is_cuda else "blocked"
    if attention == "kernels":
        from kernels.attention import tree_attention

        trees = [packed.prefix_tree(r) for r in range(packed.input_ids.shape[0])]

        def attend(q, k, v):
            return torch.cat(
                [
                    tree_attention(q[r : r + 1], k[r : r + 1], v[r : r + 1], t)
                    for r, t in enumerate(trees)
                ]
            )
    elif attention == "dense":
        mask = tree_mask(packed.subtree_end)

        def attend(q, k, v):
            return F.scaled_dot_product_attention(
                q, k, v, attn_mask=mask, enable_gqa=k.shape[1] != q.shape[1]
            )
    elif attention == "blocked":

        def attend(q, k, v):
            return tree_attention_blocked(q, k, v, packed.subtree_end, block=block)
    else:
        raise ValueError(f"unknown tree attention {attention!r}; expected one of {TREE_ATTENTION}")
    hidden = hidden_states(model, packed.input_ids, packed.position_ids, attend)
    return head_logprobs(model, hidden, packed.pred_index, packed.targets)


def unmerged_logprobs(
    model,
    sequences: Sequence[Sequence[int]],
    trainable: Sequence[Sequence[bool]],
    max_batch_tokens: int = 16384,
) -> torch.Tensor:
    """The same [N] log-probs (same order as ``build_tree``'s targets), computed the plain way:
    every sample a causal sequence of its own. Samples are batched by length (right-padded;
    with causal attention the padding never influences a real token)."""
    device = next(model.parameters()).device
    n_targets = [sum(1 for t in tr[1:] if t) for tr in trainable]
    out: list[torch.Tensor] = [torch.zeros(0, device=device)] * len(sequences)
    order = sorted(range(len(sequences)), key=lambda i: len(sequences[i]))
    i = 0
    while i < len(order):
        batch = [order[i]]
        i += 1
        while i < len(order) and len(sequences[order[i]]) * (len(batch) + 1) <= max_batch_tokens:
            batch.append(order[i])
            i += 1
        L = max(len(sequences[b]) for b in batch)
        ids = torch.zeros(len(batch), L, dtype=torch.long)
        pred, tgt = [], []
        for r, b in enumerate(batch):
            seq = sequences[b]
            ids[r, : len(seq)] = torch.as_tensor(list(seq))
            for j in range(1, len(seq)):
                if trainable[b][j]:
                    pred.append(r * L + j - 1)
                    tgt.append(int(seq[j]))
        if not pred:
            continue
        pos = torch.arange(L)[None].expand(len(batch), L)
        hidden = hidden_states(model, ids.to(device), pos.to(device), sdpa_attention)
        lp = head_logprobs(
            model, hidden, torch.tensor(pred, device=device), torch.tensor(tgt, device=device)
        )
        k = 0
        for b in batch:
            out[b] = lp[k : k + n_targets[b]]
            k += n_targets[b]
    return torch.cat(out)


@torch.no_grad()
def behaviour_logprobs(
    model, prompt: Sequence[int], completions: Sequence[Sequence[int]], temperature: float
) -> tuple[list[list[float]], list[list[float]]]:
    """Per completion token of ``prompt + completion``: (log mu, log pi) under ``model``, where
    pi is the raw policy and mu = softmax(logits / T) the behaviour policy that sampled at
    temperature T (T <= 0: greedy, scored as pi). CISPO's ratio r = pi_theta / pi_old must use
    mu as pi_old -- the distribution the tokens were actually drawn from. Identical completions
    (a group of G samples of a short answer repeats a few) are scored once."""
    model.eval()
    uniq = {tuple(int(t) for t in c) for c in completions}
    scored: dict[tuple[int, ...], tuple[list[float], list[float]]] = {}
    n = len(prompt)
    for c in uniq:
        if not c:
            scored[c] = ([], [])
            continue
        ids = torch.tensor([list(prompt) + list(c)])
        logits = model(ids).logits[0, n - 1 : n - 1 + len(c)].float()
        tgt = torch.tensor(c).unsqueeze(-1)
        raw = torch.log_softmax(logits, -1).gather(-1, tgt).squeeze(-1)
        beh = raw
        if temperature > 0:
            beh = torch.log_softmax(logits / temperature, -1).gather(-1, tgt).squeeze(-1)
        scored[c] = (beh.tolist(), raw.tolist())
    out = [scored[tuple(int(t) for t in c)] for c in completions]
    return [b for b, _ in out], [r for _, r in out]
