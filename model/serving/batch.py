"""The engine's batch: a preallocated KV cache with one row per running sequence, and the decode
step that advances every row by one token in a single forward.

Layout: per layer, keys and values live in buffers (max_rows, n_kv, cap, D); row i is the i-th
running sequence. All rows share the column clock: each decode step writes every row's new
key/value at column ``hi`` and then attends over columns [lo, hi] (a view, no copy). A row that
joined later starts at a later column; the boolean mask (max_rows, cap) hides the columns before
its first token. So a step copies one column per layer, never the cache; a finished row is
replaced by the last row (one row copied); the buffers are re-laid out only when they fill up.

The decode step (`Decoder.step`) computes what `MiniMaxM2ForCausalLM.forward` computes for one
new token per row against the cache (same ops, same order, within fp32 rounding of the batched
GEMMs), with the per-call work hoisted out: RoPE tables are built once, the attention mask is a
view of the cache's, and there are no modules, hooks or mask construction per step.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from kernels import fused_moe, sigmoid_topk
from kernels.dispatch import resolve_backend
from kernels.moe import fused_moe_small
from model.modeling import KERNEL_BACKEND


class SlotCache:
    def __init__(
        self,
        num_layers: int,
        max_rows: int,
        n_kv: int,
        head_dim: int,
        dtype: torch.dtype,
        device: torch.device,
        cap: int = 128,
    ) -> None:
        self.num_layers, self.max_rows = num_layers, max_rows
        self.n_kv, self.head_dim, self.dtype, self.device = n_kv, head_dim, dtype, device
        self.rows = 0  # running rows: 0 .. rows-1
        self.lo = self.hi = 0  # live columns [lo, hi); the next token of every row goes at hi
        self.start: list[int] = []  # first real column of each row
        self._alloc(cap)

    def _alloc(self, cap: int) -> None:
        shape = (self.max_rows, self.n_kv, cap, self.head_dim)
        kw = {"dtype": self.dtype, "device": self.device}
        self.k = [torch.zeros(shape, **kw) for _ in range(self.num_layers)]
        self.v = [torch.zeros(shape, **kw) for _ in range(self.num_layers)]
        self.mask = torch.zeros(self.max_rows, cap, dtype=torch.bool, device=self.device)
        self.cap = cap

    def _relayout(self, new_lo: int, cap: int) -> None:
        """Move the live columns to start at `new_lo`, in buffers of `cap` columns."""
        old_k, old_v, old_mask = self.k, self.v, self.mask
        lo, hi, B = self.lo, self.hi, self.rows
        self._alloc(cap)
        n = hi - lo
        if B and n:
            for layer in range(self.num_layers):
                self.k[layer][:B, :, new_lo : new_lo + n] = old_k[layer][:B, :, lo:hi]
                self.v[layer][:B, :, new_lo : new_lo + n] = old_v[layer][:B, :, lo:hi]
            self.mask[:B, new_lo : new_lo + n] = old_mask[:B, lo:hi]
        self.start = [s - lo + new_lo for s in self.start]
        self.lo, self.hi = new_lo, new_lo + n

    def reserve(self, before: int = 0) -> None:
        """Make room for one more column at `hi` and `before` columns ahead of it."""
        shift = max(0, before - self.hi)
        if self.hi + shift < self.cap:
            if shift:
                self._relayout(self.lo + shift, self.cap)
            return
        live = self.hi - self.lo
        new_lo = max(before - live, 0)  # compact: live columns start as far left as allowed
        need = new_lo + live + 1
        cap = self.cap if need <= self.cap * 3 // 4 else max(2 * need, self.cap)
        self._relayout(new_lo, cap)

    def add_rows(self, keys: list[torch.Tensor], values: list[torch.Tensor], lengths: list[int]):
        """Append rows from a left-padded prefill cache: keys[layer] (n, n_kv, P, D), row j has
        lengths[j] real tokens at its right end. They end at column hi, like the running rows."""
        n, P = keys[0].shape[0], keys[0].shape[2]
        if self.rows == 0:
            self.lo = self.hi = 0
        self.reserve(before=P)
        r0, hi = self.rows, self.hi
        for layer in range(self.num_layers):
            self.k[layer][r0 : r0 + n, :, hi - P : hi] = keys[layer]
            self.v[layer][r0 : r0 + n, :, hi - P : hi] = values[layer]
        self.mask[r0 : r0 + n] = False
        for j, length in enumerate(lengths):
            self.mask[r0 + j, hi - length : hi] = True
            self.start.append(hi - length)
        self.rows += n
        self.lo = min(self.start)

    def remove_rows(self, gone: list[int]) -> None:
        """Drop rows; each is filled by the current last row (the caller mirrors the moves)."""
        for i in sorted(gone, reverse=True):
            last = self.rows - 1
            if i != last:
                for layer in range(self.num_layers):
                    self.k[layer][i, :, self.lo : self.hi] = self.k[layer][
                        last, :, self.lo : self.hi
                    ]
                    self.v[layer][i, :, self.lo : self.hi] = self.v[layer][
                        last, :, self.lo : self.hi
                    ]
                self.mask[i] = self.mask[last]
                self.start[i] = self.start[last]
            self.start.pop()
            self.rows -= 1
        self.lo = min(self.start) if self.start else self.hi


def move_last_into(items: list, gone: list[int]) -> list:
    """The same row moves as `SlotCache.remove_rows`, applied to a Python list."""
    items = list(items)
    for i in sorted(gone, reverse=True):
        last = items.pop()
        if i < len(items):
            items[i] = last
    return items


def _rms(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """modeling.RMSNorm.forward, op for op."""
    dtype = x.dtype
    x32 = x.float()
    x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)
    return weight * x32.to(dtype)


class Decoder:
    """One decode step for every row of a SlotCache, over a model's weights (read, not copied)."""

    def __init__(self, model) -> None:
        cfg = model.config
        self.model, self.config = model, cfg
        self.n_heads, self.n_kv, self.head_dim = (
            cfg.num_attention_heads,
            cfg.num_key_value_heads,
            cfg.head_dim,
        )
        self.eps = cfg.rms_norm_eps
        self.backend = KERNEL_BACKEND[cfg.moe_backend]
        self.top_k = cfg.num_experts_per_tok
        self._resolved = resolve_backend(self.backend, model.lm_head.weight.device, "MoE")
        # torch's grouped GEMM wants 16-byte aligned rows.
        align = 16 // torch.empty((), dtype=model.lm_head.weight.dtype).element_size()
        self._grouped = hasattr(F, "grouped_mm") and not (
            cfg.hidden_size % align or cfg.intermediate_size % align
        )
        inner = model.model
        self.dtype = inner.embed_tokens.weight.dtype
        self.device = inner.embed_tokens.weight.device
        # RoPE for every position, built with the model's own formula (elementwise, so equal).
        pos = torch.arange(cfg.max_position_embeddings, device=self.device)[None]
        cos, sin = inner.rotary_emb(pos, self.dtype)
        rd, D = cos.shape[-1], self.head_dim
        # rope(x) = x * C + x[perm] * S: C is cos on the rotary dims and 1 elsewhere; x[perm]*S
        # is rotate_half(x_rot) * sin on the rotary dims and 0 elsewhere.
        ones = torch.ones(cos.shape[1], D - rd, dtype=self.dtype, device=self.device)
        half = rd // 2
        self.rope_c = torch.cat([cos[0], ones], dim=-1)  # (max_pos, D)
        self.rope_s = torch.cat([-sin[0, :, :half], sin[0, :, half:rd], 0 * ones], dim=-1)
        self.rope_perm = torch.cat(
            [torch.arange(half, rd), torch.arange(half), torch.arange(rd, D)]
        ).to(self.device)
        self.layers = [
            (
                layer.input_layernorm.weight,
                layer.self_attn,
                layer.post_attention_layernorm.weight,
                layer.mlp,
            )
            for layer in inner.layers
        ]

    def new_cache(self, max_rows: int) -> SlotCache:
        return SlotCache(
            len(self.layers), max_rows, self.n_kv, self.head_dim, self.dtype, self.device
        )

    def _rope(self, x: torch.Tensor, c: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        return torch.addcmul(x * c, x.index_select(-1, self.rope_perm), s)

    def step(self, cache: SlotCache, tokens: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """tokens, positions (B,) with B == cache.rows -> next-token logits (B, V)."""
        B, nh, nkv, D = cache.rows, self.n_heads, self.n_kv, self.head_dim
        cache.reserve()
        col = cache.hi
        cache.mask[:B, col] = True
        mask = cache.mask[:B, None, None, cache.lo : col + 1]  # (B, 1, 1, S)
        c = self.rope_c.index_select(0, positions)[:, None]  # (B, 1, D)
        s = self.rope_s.index_select(0, positions)[:, None]
        x = F.embedding(tokens, self.model.model.embed_tokens.weight)  # (B, H)
        for i, (w_in, attn, w_post, moe) in enumerate(self.layers):
            h = _rms(x, w_in, self.eps)
            q = _rms(F.linear(h, attn.q_proj.weight), attn.q_norm.weight, self.eps)
            k = _rms(F.linear(h, attn.k_proj.weight), attn.k_norm.weight, self.eps)
            v = F.linear(h, attn.v_proj.weight)
            q = self._rope(q.view(B, nh, D), c, s)
            k = self._rope(k.view(B, nkv, D), c, s)
            cache.k[i][:B, :, col] = k
            cache.v[i][:B, :, col] = v.view(B, nkv, D)
            y = F.scaled_dot_product_attention(
                q[:, :, None],
                cache.k[i][:B, :, cache.lo : col + 1],
                cache.v[i][:B, :, cache.lo : col + 1],
                attn_mask=mask,
                enable_gqa=nkv != nh,
            )  # (B, nh, 1, D)
            x = x + F.linear(y.view(B, nh * D), attn.o_proj.weight)
            x = x + self._moe(_rms(x, w_post, self.eps), moe)
        cache.hi = col + 1
        h = _rms(x, self.model.model.norm.weight, self.eps)
        return F.linear(h, self.model.lm_head.weight)

    def _moe(self, h: torch.Tensor, moe) -> torch.Tensor:
        """modeling.SparseMoeBlock.forward without the training statistics."""
        logits = F.linear(h.float(), moe.gate.weight.float())
        bias = moe.e_score_correction_bias.float() if moe.config.use_routing_bias else None
        weights, ids = sigmoid_topk(logits, bias, self.top_k, backend=self.backend)
        w_gu, w_down = moe.experts.gate_up_proj, moe.experts.down_proj
        weights = weights.to(h.dtype)
        if self._resolved != "torch" or h.device.type != "cpu" or not self._grouped:
            return fused_moe(h, w_gu, w_down, weights, ids, backend=self.backend)
        if ids.numel() < w_gu.shape[0]:
            # Fewer routed slots than experts: all experts densely is 3 big ops, the fewest.
            return fused_moe_small(h, w_gu, w_down, weights, ids)
        return grouped_decode_moe(h, w_gu, w_down, weights, ids)


def grouped_decode_moe(
    h: torch.Tensor,
    w_gate_up: torch.Tensor,
    w_down: torch.Tensor,
    weights: torch.Tensor,
    ids: torch.Tensor,
) -> torch.Tensor:
    """The experts for a decode batch: the B*k routed (token, expert) rows sorted by expert and
    two grouped GEMMs, so each token pays for its k experts only (the dense path pays for all
    E, 4x the FLOPs for the tiny preset at batch 8), in ~12 ops."""
    B, k = ids.shape
    inter = w_down.shape[-1]
    flat = ids.reshape(-1)
    order = flat.argsort()
    offs = torch.bincount(flat, minlength=w_gate_up.shape[0]).cumsum(0).to(torch.int32)
    token = order // k
    gu = F.grouped_mm(h.index_select(0, token), w_gate_up.transpose(1, 2), offs=offs)
    act = F.silu(gu[:, :inter]).mul_(gu[:, inter:]).mul_(weights.reshape(-1)[order, None])
    y = F.grouped_mm(act, w_down.transpose(1, 2), offs=offs)
    return h.new_zeros(B, h.shape[1]).index_add_(0, token, y)
