"""Autoregressive generation with the KV cache: greedy, temperature and top-p, stop tokens.

Batched prompts are left-padded (attention_mask 0 on the left); every row keeps its own
positions, so a padded row generates exactly what it would alone.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def sample_next(
    logits: torch.Tensor,
    temperature: float = 0.0,
    top_p: float = 1.0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """logits [B, V] -> next ids [B]. temperature 0 means greedy."""
    if temperature <= 0.0:
        return logits.argmax(dim=-1)
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    if top_p < 1.0:
        sorted_p, order = probs.sort(dim=-1, descending=True)
        # Keep the smallest prefix whose mass reaches top_p (always at least the top token).
        drop = sorted_p.cumsum(-1) - sorted_p >= top_p
        sorted_p = sorted_p.masked_fill(drop, 0.0)
        probs = torch.zeros_like(probs).scatter(-1, order, sorted_p)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


@torch.no_grad()
def generate(
    model,
    input_ids: torch.Tensor,
    max_new_tokens: int = 32,
    temperature: float = 0.0,
    top_p: float = 1.0,
    stop_token_ids: Sequence[int] = (),
    attention_mask: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    pad_token_id: int | None = None,
) -> torch.Tensor:
    """Returns [B, T + n] with n <= max_new_tokens: generation ends early once every row has
    produced a stop token; rows that stopped earlier are filled with the pad id afterwards."""
    if max_new_tokens < 0:
        raise ValueError("max_new_tokens must be >= 0")
    if not 0.0 < top_p <= 1.0:
        raise ValueError("top_p must be in (0, 1]")
    was_training = model.training
    model.eval()
    try:
        B = input_ids.shape[0]
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        attention_mask = attention_mask.to(input_ids.device).long()
        if pad_token_id is None:
            pad_token_id = model.config.pad_token_id
            if pad_token_id is None:
                pad_token_id = model.config.eos_token_id or 0
        stops = torch.tensor(list(stop_token_ids), dtype=torch.long, device=input_ids.device)
        finished = torch.zeros(B, dtype=torch.bool, device=input_ids.device)
        tokens = input_ids
        out = model(input_ids, attention_mask=attention_mask, use_cache=True, logits_to_keep=1)
        cache = out.past_key_values
        for _ in range(max_new_tokens):
            nxt = sample_next(out.logits[:, -1], temperature, top_p, generator)
            nxt = torch.where(finished, torch.full_like(nxt, pad_token_id), nxt)
            tokens = torch.cat([tokens, nxt[:, None]], dim=1)
            if stops.numel():
                finished = finished | torch.isin(nxt, stops)
                if bool(finished.all()):
                    break
            attention_mask = torch.cat([attention_mask, attention_mask.new_ones(B, 1)], dim=1)
            if tokens.shape[1] - input_ids.shape[1] == max_new_tokens:
                break  # no need to run the model for a token we will not sample
            out = model(
                nxt[:, None],
                attention_mask=attention_mask,
                past_key_values=cache,
                use_cache=True,
                logits_to_keep=1,
            )
        return tokens
    finally:
        model.train(was_training)
