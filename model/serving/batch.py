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
        self.padded = False  # some row starts after lo (its mask has holes)
        self._alloc(cap)

    def _alloc(self, cap: int) -> None:
        # One tensor for all layers: (L, max_rows, n_kv, cap, D), so a step takes its views once.
        shape = (self.num_layers, self.max_rows, self.n_kv, cap, self.head_dim)
        self.k = torch.zeros(shape, dtype=self.dtype, device=self.device)
        self.v = torch.zeros(shape, dtype=self.dtype, device=self.device)
        self.mask = torch.zeros(self.max_rows, cap, dtype=torch.bool, device=self.device)
        self.cap = cap

    def _relayout(self, new_lo: int, cap: int) -> None:
        """Move the live columns to start at `new_lo`, in buffers of `cap` columns."""
        old_k, old_v, old_mask = self.k, self.v, self.mask
        lo, hi, B = self.lo, self.hi, self.rows
        self._alloc(cap)
        n = hi - lo
        if B and n:
            self.k[:, :B, :, new_lo : new_lo + n] = old_k[:, :B, :, lo:hi]
            self.v[:, :B, :, new_lo : new_lo + n] = old_v[:, :B, :, lo:hi]
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
        self._bounds()

    def _bounds(self) -> None:
        self.lo = min(self.start) if self.start else self.hi
        self.padded = any(s != self.lo for s in self.start)

    def remove_rows(self, gone: list[int]) -> None:
        """Drop rows; each is filled by the current last row (the caller mirrors the moves)."""
        for i in sorted(gone, reverse=True):
            last = self.rows - 1
            if i != last:
                self.k[:, i, :, self.lo : self.hi] = self.k[:, last, :, self.lo : self.hi]
                self.v[:, i, :, self.lo : self.hi] = self.v[:, last, :, self.lo : self.hi]
                self.mask[i] = self.mask[last]
                self.start[i] = self.start[last]
            self.start.pop()
            self.rows -= 1
        self._bounds()


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


def _linear(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """F.linear(x, weight) for a decode batch, computed as (weight @ x.T).T (a transposed view).
    Same products and sums; on the CPU, MKL runs the few-rows case (M = rows <= max_batch, a
    wide weight) far better this way round: the weight is the tall left operand, read once in
    its stored order. Measured inside the decode step at batch 8 (A/B, same process): gate/up
    this way and the down projection as F.linear, 6.0-8.2 -> 4.7-5.9 ms per step."""
    return torch.mm(weight, x.t()).t()


def _rms_fused(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """The same in one op; bit-identical to `_rms` for fp32 (checked in tests/serving)."""
    return F.rms_norm(x, weight.shape, weight, eps)


class Decoder:
    """One decode step for every row of a SlotCache, over a model's weights. Per layer it is
    ~30 tensor ops (the forward's module path is ~65): one fused q/k/v projection, RoPE as one
    small batched matmul per q and k, fused RMSNorm, the router inline and the experts as two
    grouped GEMMs. The fused q/k/v weight is a copy made here: a new Decoder per weight swap."""

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
        inner = model.model
        self.dtype = inner.embed_tokens.weight.dtype
        self.device = inner.embed_tokens.weight.device
        self._resolved = resolve_backend(self.backend, self.device, "MoE")
        self._rms = _rms_fused if self.dtype == torch.float32 else _rms
        # On the CPU torch path the experts run as two dense GEMMs (see dense_decode_moe).
        self._dense_moe = self._resolved == "torch" and self.device.type == "cpu"
        # RoPE tables for every position, built with the model's own formula (elementwise, so
        # equal). rope(x) = x * C + x[perm] * S: C is cos on the rotary dims and 1 elsewhere,
        # x[perm] * S is rotate_half(x_rot) * sin there and 0 elsewhere. As a matrix per row,
        # rope(x) = x @ R with R = diag(C) + P * S (P[j, i] = 1 where j == perm[i]).
        pos = torch.arange(cfg.max_position_embeddings, device=self.device)[None]
        cos, sin = inner.rotary_emb(pos, self.dtype)
        rd, D = cos.shape[-1], self.head_dim
        half = rd // 2
        ones = torch.ones(cos.shape[1], D - rd, dtype=self.dtype, device=self.device)
        self.rope_c = torch.cat([cos[0], ones], dim=-1)  # (max_pos, D)
        self.rope_s = torch.cat([-sin[0, :, :half], sin[0, :, half:rd], 0 * ones], dim=-1)
        perm = torch.cat([torch.arange(half, rd), torch.arange(half), torch.arange(rd, D)])
        self.rope_p = torch.zeros(D, D, dtype=self.dtype, device=self.device)
        self.rope_p[perm, torch.arange(D)] = 1
        self.layers = []
        for layer in inner.layers:
            attn, moe = layer.self_attn, layer.mlp
            qkv = torch.cat([attn.q_proj.weight, attn.k_proj.weight, attn.v_proj.weight])
            bias = moe.e_score_correction_bias.float() if moe.config.use_routing_bias else None
            self.layers.append(
                (
                    layer.input_layernorm.weight,
                    qkv,
                    attn.q_norm.weight,
                    attn.k_norm.weight,
                    attn.o_proj.weight,
                    layer.post_attention_layernorm.weight,
                    moe.gate.weight.float(),
                    bias,
                    moe.experts.gate_up_proj,
                    moe.experts.down_proj,
                    self._down_cat(moe.experts.down_proj),
                )
            )
        self.q_dim, self.kv_dim = cfg.q_dim, cfg.kv_dim

    def _down_cat(self, w_down: torch.Tensor) -> torch.Tensor | None:
        """(E, H, I) -> (H, E*I), a copy (dense path only)."""
        if not self._dense_moe:
            return None
        E, H, inter = w_down.shape
        return w_down.permute(1, 0, 2).reshape(H, E * inter).contiguous()

    def new_cache(self, max_rows: int, cap: int = 128) -> SlotCache:
        return SlotCache(
            len(self.layers), max_rows, self.n_kv, self.head_dim, self.dtype, self.device, cap
        )

    def step(self, cache: SlotCache, tokens: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """tokens, positions (B,) with B == cache.rows -> next-token logits (B, V)."""
        B, nh, nkv, D = cache.rows, self.n_heads, self.n_kv, self.head_dim
        eps, rms = self.eps, self._rms
        cache.reserve()
        col, lo = cache.hi, cache.lo
        cache.mask[:B, col] = True
        # Rows that all start at `lo` need no mask (the common case of a batch sent together).
        mask = cache.mask[:B, None, None, lo : col + 1] if cache.padded else None
        c = self.rope_c.index_select(0, positions)  # (B, D)
        s = self.rope_s.index_select(0, positions)
        rope = torch.diag_embed(c).addcmul_(self.rope_p, s[:, None, :])  # (B, D, D)
        x = F.embedding(tokens, self.model.model.embed_tokens.weight)  # (B, H)
        # This step's views of the cache, all layers at once: the column it writes, the window
        # it attends.
        k_col, v_col = cache.k[:, :B, :, col], cache.v[:, :B, :, col]  # (L, B, n_kv, D)
        k_win, v_win = cache.k[:, :B, :, lo : col + 1], cache.v[:, :B, :, lo : col + 1]
        sizes = [self.q_dim, self.kv_dim, self.kv_dim]
        for i, layer in enumerate(self.layers):
            w_in, w_qkv, w_qn, w_kn, w_o, w_post, w_gate, bias, w_gu, w_dn, w_dn_cat = layer
            q, k, v = _linear(rms(x, w_in, eps), w_qkv).split(sizes, dim=1)
            q = torch.bmm(rms(q, w_qn, eps).view(B, nh, D), rope)
            k_col[i].copy_(torch.bmm(rms(k, w_kn, eps).view(B, nkv, D), rope))
            v_col[i].copy_(v.reshape(B, nkv, D))
            y = F.scaled_dot_product_attention(
                q.unsqueeze(2), k_win[i], v_win[i], attn_mask=mask, enable_gqa=nkv != nh
            )  # (B, nh, 1, D)
            x = x + _linear(y.view(B, nh * D), w_o)
            h = rms(x, w_post, eps)
            x = x + self._moe(h, w_gate, bias, w_gu, w_dn, w_dn_cat)
        cache.hi = col + 1
        h = rms(x, self.model.model.norm.weight, eps)
        return _linear(h, self.model.lm_head.weight)

    def _moe(self, h, w_gate, bias, w_gu, w_down, w_down_cat) -> torch.Tensor:
        """modeling.SparseMoeBlock.forward without the training statistics."""
        logits = F.linear(h.float(), w_gate)
        if w_down_cat is None:  # Triton on CUDA, or another kernels backend: theirs
            weights, ids = sigmoid_topk(logits, bias, self.top_k, backend=self.backend)
            return fused_moe(h, w_gu, w_down, weights.to(h.dtype), ids, backend=self.backend)
        # kernels.routing.sigmoid_topk_reference, op for op (without its dispatch).
        scores = torch.sigmoid(logits)
        ids = torch.topk(scores if bias is None else scores + bias, self.top_k, dim=-1).indices
        weights = scores.gather(-1, ids)
        weights = (weights / weights.sum(dim=-1, keepdim=True)).to(h.dtype)
        if h.shape[0] * self.top_k <= w_gu.shape[0] // 2:  # few rows: most experts idle
            return sparse_decode_moe(h, w_gu, w_down, weights, ids)
        return dense_decode_moe(h, w_gu, w_down_cat, weights, ids)


def dense_decode_moe(
    h: torch.Tensor,
    w_gate_up: torch.Tensor,
    w_down_cat: torch.Tensor,
    weights: torch.Tensor,
    ids: torch.Tensor,
) -> torch.Tensor:
    """The experts for a decode batch as two plain GEMMs over all experts: gate/up of every
    expert for every row, SiLU(gate)*up scaled by the routing weight (0 for the experts not
    chosen), then one GEMM against the experts' down projections laid side by side
    (``w_down_cat`` (H, E*I)), which also sums over the experts. More FLOPs than routing rows
    to their k experts, but on the CPU a decode step is bound by streaming every expert's
    weights (a batch of 8 hits nearly all of them), and two large GEMMs stream them best:
    measured faster than grouped GEMMs or a bmm over experts at batch 8."""
    B = h.shape[0]
    E, two_i, H = w_gate_up.shape
    inter = two_i // 2
    gu = _linear(h, w_gate_up.view(E * two_i, H)).view(B, E, two_i)
    dense_w = h.new_zeros(B, E).scatter_(1, ids, weights)
    act = F.silu(gu[..., :inter]).mul_(gu[..., inter:]).mul_(dense_w.unsqueeze(-1))
    # The down GEMM is deep (K = E*I) and narrow: F.linear's own order runs it best (measured).
    return F.linear(act.view(B, E * inter), w_down_cat)


def sparse_decode_moe(
    h: torch.Tensor,
    w_gate_up: torch.Tensor,
    w_down: torch.Tensor,
    weights: torch.Tensor,
    ids: torch.Tensor,
) -> torch.Tensor:
    """The experts for a few rows (rows * k <= E / 2, e.g. batch 1): only the chosen experts,
    each on its own rows, their weights read as views. Cold caches make a decode step bound by
    the expert weights it reads, so reading k of E experts beats the dense GEMMs here, while
    the per-expert ops (~7 each) would cost more than they save once most experts are hit."""
    B = h.shape[0]
    inter = w_gate_up.shape[1] // 2
    groups: dict[int, list[int]] = {}  # expert -> flat (row * k + slot) indices
    for j, e in enumerate(ids.view(-1).tolist()):
        groups.setdefault(e, []).append(j)
    k = ids.shape[1]
    flat_w = weights.reshape(-1, 1)
    out = torch.zeros_like(h)
    for e, js in groups.items():
        if B == 1:  # one row: no gathers
            h_e, w_e, rows = h, flat_w[js[0] : js[0] + 1], None
        else:
            rows = torch.tensor([j // k for j in js], device=h.device)
            h_e, w_e = h.index_select(0, rows), flat_w[js]
        gu = _linear(h_e, w_gate_up[e])
        act = F.silu(gu[:, :inter]).mul_(gu[:, inter:])
        y = _linear(act, w_down[e]).mul(w_e)
        if rows is None:
            out.add_(y)
        else:
            out.index_add_(0, rows, y)
    return out
