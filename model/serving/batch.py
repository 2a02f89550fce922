"""The engine's batch: a preallocated KV cache with one row per running sequence, and the decode
step that advances every row by one token in a single forward.

Why a second decoder forward (the model's is `MiniMaxM2ForCausalLM.forward`): speed -- serving
decode is a hot loop of tiny ops, written here with folded weights and no per-step modules or
masks. What keeps it equal: tests/serving/test_batch.py checks `prefill` and `step` against the
model's own forward and KV cache, token by token (`test_decode_step_matches_each_sequence_...`).

Layout: per layer, keys and values live in buffers (max_rows, n_kv, cap, D); row i is the i-th
running sequence. All rows share the column clock: each decode step writes every row's new
key/value at column ``hi`` and then attends over columns [lo, hi] (a view, no copy). A row that
joined later starts at a later column; the boolean mask (max_rows, cap) hides the columns before
its first token. So a step copies one column per layer, never the cache; a finished row is
replaced by the last row (one row copied); the buffers are re-laid out only when they fill up.

`Decoder.prefill` (the admitted prompts in one forward, their keys/values written straight into
new rows) and `Decoder.step` (one new token per row against the cache) compute what
`MiniMaxM2ForCausalLM.forward` computes (within fp32 rounding: the RMSNorm weights are folded
into the following projections and the GEMMs are batched differently), with the per-call work
hoisted out: RoPE tables are built once, the attention mask is a view of the cache's, and
there are no modules, hooks or mask construction per step. On the CPU a small op costs ~10x its
hot-loop time inside a step (the weight-streaming GEMMs evict it from the caches), so the step
is written for few ops.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from kernels import fused_moe
from kernels.dispatch import resolve_backend
from kernels.torch_moe import segment_mm
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

    def open_rows(self, lengths: list[int], width: int) -> tuple[int, int]:
        """Claim rows for new sequences whose keys/values (left-padded to `width` columns, row j
        with lengths[j] real tokens at its right end) go at columns [hi - width, hi) of rows
        r0 .. r0 + len(lengths) - 1; returns (r0, hi). The caller writes them (`add_rows`, or
        `Decoder.prefill` straight from its forward)."""
        n = len(lengths)
        if self.rows == 0:
            self.lo = self.hi = 0
        self.reserve(before=width)
        r0, hi = self.rows, self.hi
        self.mask[r0 : r0 + n] = False
        for j, length in enumerate(lengths):
            self.mask[r0 + j, hi - length : hi] = True
            self.start.append(hi - length)
        self.rows += n
        self._bounds()
        return r0, hi

    def add_rows(self, keys: list[torch.Tensor], values: list[torch.Tensor], lengths: list[int]):
        """Append rows from a left-padded prefill cache: keys[layer] (n, n_kv, P, D), row j has
        lengths[j] real tokens at its right end. They end at column hi, like the running rows."""
        n, P = keys[0].shape[0], keys[0].shape[2]
        r0, hi = self.open_rows(lengths, P)
        for layer in range(self.num_layers):
            self.k[layer][r0 : r0 + n, :, hi - P : hi] = keys[layer]
            self.v[layer][r0 : r0 + n, :, hi - P : hi] = values[layer]

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


def _rms_fused(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """modeling.RMSNorm.forward in one op; bit-identical for fp32 (checked in tests/serving)."""
    return F.rms_norm(x, weight.shape, weight, eps)


def _linear(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """F.linear(x, weight) for a decode batch, computed as (weight @ x.T).T (a transposed view).
    Same products and sums; on the CPU, MKL runs the few-rows case (M = rows <= max_batch, a
    wide weight) better this way round when the weight is cold in the cache (as it is inside
    a decode step, which streams every layer's weights): the weight is the tall left operand,
    read once in its stored order."""
    return torch.mm(weight, x.t()).t()


@dataclass
class LayerWeights:
    """One decoder layer's weights as the lean step uses them. The RMSNorm weights that feed
    a projection are folded into it (norm(x) @ W.T == (x * r) @ (W * w).T, r the per-row
    1/rms), so a norm is one weightless `F.rms_norm`; q_norm and k_norm (one scale per row for
    all q heads, one for all k heads) become two tiny matmuls on the squared q|k columns."""

    qkv: torch.Tensor  # (q_dim + 2 kv_dim, H), input_layernorm folded in
    qk_mean: torch.Tensor  # (q_dim + kv_dim, 2): column means of q^2 and of k^2
    qk_weight: torch.Tensor  # (2, q_dim + kv_dim): q_norm / k_norm weights spread per segment
    o_t: torch.Tensor  # (q_dim, H), a transposed view of o_proj's weight
    gate: torch.Tensor  # (E, H) fp32 router, post_attention_layernorm folded in
    bias: torch.Tensor | None  # (E,) fp32 routing bias
    gate_up: torch.Tensor  # (E, 2I, H), post_attention_layernorm folded in
    router_gate_up: torch.Tensor | None  # (E + E*2I, H): gate's rows then gate_up's (CPU fp32)
    down: torch.Tensor  # (E, H, I), as stored
    gate_up_t: torch.Tensor | None  # (E, H, 2I) contiguous (CPU torch path only)
    down_t: torch.Tensor | None  # (E, I, H) contiguous (CPU torch path only)


class Decoder:
    """The engine's forwards over a model's weights: `prefill` (new prompts, written straight
    into free rows of a SlotCache) and `step` (one token for every row). Per layer a step is
    ~30 small tensor ops (the forward's module path is ~65): q/k/v as one GEMM with the input
    norm folded in, q/k norms as two tiny matmuls, RoPE elementwise, the residual adds fused
    into the output GEMMs (addmm), and on the CPU the router plus every expert's gate/up as one
    GEMM and the down projections as another. The folded and transposed weights are copies
    made here: a new Decoder per weight swap."""

    @torch.no_grad()  # the folded / transposed copies are plain tensors, not graph nodes
    def __init__(self, model) -> None:
        cfg = model.config
        self.model, self.config = model, cfg
        self.n_heads, self.n_kv, self.head_dim = (
            cfg.num_attention_heads,
            cfg.num_key_value_heads,
            cfg.head_dim,
        )
        self.hidden = cfg.hidden_size
        self.eps = cfg.rms_norm_eps
        self.backend = KERNEL_BACKEND[cfg.moe_backend]
        self.top_k = cfg.num_experts_per_tok
        inner = model.model
        self.embed = inner.embed_tokens.weight
        self.dtype = self.embed.dtype
        self.device = self.embed.device
        self._resolved = resolve_backend(self.backend, self.device, "MoE")
        # On the CPU torch path the experts run as two dense GEMMs at decode (see
        # dense_decode_moe) and as per-expert GEMMs over sorted rows at prefill.
        self._cpu = self._resolved == "torch" and self.device.type == "cpu"
        # RoPE tables for every position, built with the model's own formula (elementwise, so
        # equal). rope(x) = x * C + x[perm] * S per head: C is cos on the rotary dims and 1
        # elsewhere, x[perm] * S is rotate_half(x_rot) * sin there and 0 elsewhere. The tables
        # are tiled over the q and k heads, so RoPE of a row's q|k columns is three elementwise
        # ops (a batched (D, D) matmul per row was ~10x slower at decode sizes on the CPU).
        nq = self.n_heads + self.n_kv
        pos = torch.arange(cfg.max_position_embeddings, device=self.device)[None]
        cos, sin = inner.rotary_emb(pos, self.dtype)
        rd, D = cos.shape[-1], self.head_dim
        half = rd // 2
        ones = torch.ones(cos.shape[1], D - rd, dtype=self.dtype, device=self.device)
        rope_c = torch.cat([cos[0], ones], dim=-1)  # (max_pos, D)
        rope_s = torch.cat([-sin[0, :, :half], sin[0, :, half:rd], 0 * ones], dim=-1)
        self.rope_c, self.rope_s = rope_c.repeat(1, nq), rope_s.repeat(1, nq)  # (max_pos, nq*D)
        perm = torch.cat([torch.arange(half, rd), torch.arange(half), torch.arange(rd, D)])
        self.rope_perm = (perm + D * torch.arange(nq)[:, None]).reshape(-1).to(self.device)
        self.q_dim, self.kv_dim = cfg.q_dim, cfg.kv_dim
        self._eps = torch.full((1, 1), self.eps, dtype=torch.float32, device=self.device)
        self.layers = [self._layer(layer) for layer in inner.layers]
        self.lm_head = self._fold(model.lm_head.weight, inner.norm.weight)

    def _fold(self, weight: torch.Tensor, norm_weight: torch.Tensor) -> torch.Tensor:
        """weight (..., H) with a preceding RMSNorm's weight (H,) multiplied in (fp32 math)."""
        return (weight.float() * norm_weight.float()).to(weight.dtype).contiguous()

    def _layer(self, layer) -> LayerWeights:
        attn, moe = layer.self_attn, layer.mlp
        qd, kvd = self.q_dim, self.kv_dim
        qkv = torch.cat([attn.q_proj.weight, attn.k_proj.weight, attn.v_proj.weight])
        f32 = dict(dtype=torch.float32, device=self.device)
        qk_mean = torch.zeros(qd + kvd, 2, **f32)
        qk_mean[:qd, 0], qk_mean[qd:, 1] = 1 / qd, 1 / kvd
        qk_weight = torch.zeros(2, qd + kvd, **f32)
        qk_weight[0, :qd], qk_weight[1, qd:] = attn.q_norm.weight, attn.k_norm.weight
        w_post = layer.post_attention_layernorm.weight
        gate_up = self._fold(moe.experts.gate_up_proj, w_post)
        gate = moe.gate.weight.float() * w_post.float()
        down = moe.experts.down_proj
        router_gate_up = None
        if self._cpu and self.dtype == torch.float32:
            # The dense decode path runs the router and every expert's gate/up on the same
            # rows: one GEMM for both (gate and gate_up become views of it).
            E = gate.shape[0]
            router_gate_up = torch.cat([gate, gate_up.view(-1, gate_up.shape[-1])])
            gate, gate_up = router_gate_up[:E], router_gate_up[E:].view(gate_up.shape)
        return LayerWeights(
            qkv=self._fold(qkv, layer.input_layernorm.weight),
            qk_mean=qk_mean,
            qk_weight=qk_weight,
            o_t=attn.o_proj.weight.t(),
            gate=gate,
            bias=moe.e_score_correction_bias.float() if moe.config.use_routing_bias else None,
            gate_up=gate_up,
            router_gate_up=router_gate_up,
            down=down,
            gate_up_t=gate_up.transpose(1, 2).contiguous() if self._cpu else None,
            down_t=down.transpose(1, 2).contiguous() if self._cpu else None,
        )

    def new_cache(self, max_rows: int, cap: int = 128) -> SlotCache:
        return SlotCache(
            len(self.layers), max_rows, self.n_kv, self.head_dim, self.dtype, self.device, cap
        )

    # ------------------------------------------------------------------ shared pieces
    def _norm(self, x: torch.Tensor) -> torch.Tensor:
        """x / rms(x): an RMSNorm whose weight is folded into the next projection. For fp32,
        4 small ops (norm, eps + norm^2 / H, rsqrt, scale) instead of `F.rms_norm`'s ~7 on the
        CPU (hot: 14 vs 25 us at 8 x 128); the same value up to rounding."""
        if x.dtype != torch.float32:
            return F.rms_norm(x, (self.hidden,), None, self.eps)
        n = torch.linalg.vector_norm(x, dim=-1, keepdim=True)
        return x * torch.addcmul(self._eps, n, n, value=1 / self.hidden).rsqrt_()

    def _qk(self, qkv: torch.Tensor, lw: LayerWeights, rope: tuple) -> torch.Tensor:
        """q_norm, k_norm and RoPE for N rows of q|k|v -> (N, (n_heads + n_kv) * D), q first."""
        qk = qkv[:, : self.q_dim + self.kv_dim]
        if qk.dtype != torch.float32:
            qk = qk.float()
        r = torch.addmm(self._eps, qk.square(), lw.qk_mean).rsqrt_()  # (N, 2)
        qk = qk.mul(torch.mm(r, lw.qk_weight))
        if qk.dtype != self.dtype:
            qk = qk.to(self.dtype)
        c, s = rope
        return torch.addcmul(qk * c, qk.index_select(1, self.rope_perm), s)

    def _rope(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(N,) positions -> the RoPE tables' rows (N, (n_heads + n_kv) * D), C and S."""
        return self.rope_c.index_select(0, positions), self.rope_s.index_select(0, positions)

    def _route(self, h: torch.Tensor, lw: LayerWeights) -> tuple[torch.Tensor, torch.Tensor]:
        """kernels.routing.sigmoid_topk_reference, op for op (without its dispatch)."""
        return self._route_logits(
            F.linear(h if h.dtype == torch.float32 else h.float(), lw.gate), lw
        )

    def _route_logits(
        self, logits: torch.Tensor, lw: LayerWeights
    ) -> tuple[torch.Tensor, torch.Tensor]:
        scores = torch.sigmoid(logits)
        if lw.bias is None:
            weights, ids = torch.topk(scores, self.top_k, dim=-1)
        else:
            ids = torch.topk(scores + lw.bias, self.top_k, dim=-1).indices
            weights = scores.gather(-1, ids)
        weights = weights / weights.sum(dim=-1, keepdim=True)
        return (weights if weights.dtype == self.dtype else weights.to(self.dtype)), ids

    # ------------------------------------------------------------------ decode
    def step(self, cache: SlotCache, tokens: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """tokens, positions (B,) with B == cache.rows -> next-token logits (B, V)."""
        B, nh, nkv, D = cache.rows, self.n_heads, self.n_kv, self.head_dim
        cache.reserve()
        col, lo = cache.hi, cache.lo
        cache.mask[:B, col] = True
        # Rows that all start at `lo` need no mask (the common case of a batch sent together).
        mask = cache.mask[:B, None, None, lo : col + 1] if cache.padded else None
        rope = self._rope(positions)
        x = F.embedding(tokens, self.embed)  # (B, H)
        # This step's views of the cache, all layers at once: the column it writes, the window
        # it attends.
        k_col = cache.k[:, :B, :, col].unbind(0)  # per layer (B, n_kv, D)
        v_col = cache.v[:, :B, :, col].unbind(0)
        k_win = cache.k[:, :B, :, lo : col + 1].unbind(0)  # per layer (B, n_kv, S, D)
        v_win = cache.v[:, :B, :, lo : col + 1].unbind(0)
        qk_end = self.q_dim + self.kv_dim
        for i, lw in enumerate(self.layers):
            # q/k/v's weight is small enough to stay cached: F.linear's order is the faster
            # one for it (in-step A/B at batch 8, ~3%), unlike the wide, cold GEMMs below.
            qkv = F.linear(self._norm(x), lw.qkv)
            qk = self._qk(qkv, lw, rope).view(B, nh + nkv, D)
            k_col[i].copy_(qk[:, nh:])
            v_col[i].copy_(qkv[:, qk_end:].view(B, nkv, D))
            # GQA with one new token: the g = nh / nkv query heads that share a kv head are
            # that head's g queries (heads are grouped in that order), so plain SDPA over
            # (B, nkv, g, D) queries without a causal mask (hot: 38 vs 61 us with enable_gqa).
            y = F.scaled_dot_product_attention(
                qk[:, :nh].view(B, nkv, nh // nkv, D), k_win[i], v_win[i], attn_mask=mask
            )  # (B, nkv, g, D) == (B, nh, D)
            x = torch.addmm(x, y.view(B, nh * D), lw.o_t)  # x + o_proj(y)
            x = self._decode_moe(self._norm(x), x, lw)
        cache.hi = col + 1
        return _linear(self._norm(x), self.lm_head)

    def _decode_moe(self, h: torch.Tensor, x: torch.Tensor, lw: LayerWeights) -> torch.Tensor:
        """x + modeling.SparseMoeBlock(h) without the training statistics."""
        B, E = h.shape[0], lw.gate.shape[0]
        if lw.router_gate_up is not None and B * self.top_k > E // 2:
            both = _linear(h, lw.router_gate_up)  # (B, E + E*2I): router logits, then gate/up
            weights, ids = self._route_logits(both[:, :E], lw)
            gu = both[:, E:].view(B, E, -1)
            return dense_experts(gu, lw.down_t, weights, ids, out=x)
        weights, ids = self._route(h, lw)
        if not self._cpu:  # Triton on CUDA, or another kernels backend: theirs
            return x + fused_moe(h, lw.gate_up, lw.down, weights, ids, backend=self.backend)
        if h.shape[0] * self.top_k <= lw.gate_up.shape[0] // 2:  # few rows: most experts idle
            return sparse_decode_moe(h, lw.gate_up, lw.down_t, weights, ids, out=x)
        return dense_decode_moe(h, lw.gate_up, lw.down_t, weights, ids, out=x)

    # ------------------------------------------------------------------ prefill
    def prefill(self, cache: SlotCache, prompts: list[list[int]]) -> torch.Tensor:
        """Run new prompts (left-padded to one length, in one forward) and write their keys and
        values straight into new rows of `cache`, ending at its column clock like the running
        rows. Returns each prompt's next-token logits (n, V). Computes what the model's forward
        computes for those prompts (same ops up to fp32 rounding), as `step` does."""
        n, nh, nkv, D, H = len(prompts), self.n_heads, self.n_kv, self.head_dim, self.hidden
        lengths = [len(p) for p in prompts]
        P = max(lengths)
        # Left padding: pad id 0 at position 0 (hidden by the mask, as in the model's forward).
        ids = torch.tensor([[0] * (P - len(p)) + p for p in prompts], device=self.device)
        pos = torch.tensor([[0] * (P - m) + list(range(m)) for m in lengths], device=self.device)
        mask = None  # equal lengths: plain causal attention
        if min(lengths) < P:  # a query sees the real keys up to itself (and always itself)
            cols = torch.arange(P, device=self.device)
            real = (
                cols[None, :] >= torch.tensor([P - m for m in lengths], device=self.device)[:, None]
            )
            causal = cols[None, :] <= cols[:, None]
            mask = (causal[None] & real[:, None]) | torch.eye(
                P, dtype=torch.bool, device=self.device
            )
            mask = mask[:, None]  # (n, 1, P, P)
        r0, hi = cache.open_rows(lengths, P)
        rope = self._rope(pos.view(-1))
        x = F.embedding(ids.view(-1), self.embed)  # (n*P, H)
        qk_end, last = self.q_dim + self.kv_dim, len(self.layers) - 1
        for i, lw in enumerate(self.layers):
            qkv = F.linear(self._norm(x), lw.qkv)
            qk = self._qk(qkv, lw, rope).view(n, P, nh + nkv, D).transpose(1, 2)
            q, k = qk[:, :nh], qk[:, nh:]  # (n, heads, P, D)
            v = qkv[:, qk_end:].view(n, P, nkv, D).transpose(1, 2)
            cache.k[i, r0 : r0 + n, :, hi - P : hi] = k
            cache.v[i, r0 : r0 + n, :, hi - P : hi] = v
            if i == last:
                # Only each prompt's last position feeds the logits, and no later layer reads
                # this one's outputs: the rest of the last layer runs on those n rows alone.
                q, x = q[:, :, -1:], x.view(n, P, H)[:, -1]
                mask = None if mask is None else mask[:, :, -1:]
            y = F.scaled_dot_product_attention(
                q, k, v, attn_mask=mask, is_causal=mask is None and i != last, enable_gqa=nkv != nh
            )  # (n, nh, P or 1, D)
            x = torch.addmm(x, y.transpose(1, 2).reshape(x.shape[0], nh * D), lw.o_t)
            h = self._norm(x)
            weights, topk_ids = self._route(h, lw)
            if self._cpu:
                x = grouped_prefill_moe(h, lw.gate_up_t, lw.down_t, weights, topk_ids, out=x)
            else:
                x = x + fused_moe(h, lw.gate_up, lw.down, weights, topk_ids, backend=self.backend)
        return F.linear(self._norm(x), self.lm_head)


def dense_decode_moe(
    h: torch.Tensor,
    w_gate_up: torch.Tensor,
    w_down_t: torch.Tensor,
    weights: torch.Tensor,
    ids: torch.Tensor,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """The experts for a decode batch as two plain GEMMs over all experts: gate/up of every
    expert for every row, SiLU(gate)*up scaled by the routing weight (0 for the experts not
    chosen), then one GEMM against the experts' down projections stacked (``w_down_t``
    (E, I, H), contiguous, read as (E*I, H)), which also sums over the experts. More FLOPs
    than routing rows to their k experts, but on the CPU a decode step is bound by streaming
    every expert's weights (a batch of 8 hits nearly all of them), and two large GEMMs stream
    them best: measured faster than grouped GEMMs or a bmm over experts at batch 8. With
    ``out``, returns out + experts(h) (the residual add fused into the GEMM)."""
    B = h.shape[0]
    E, two_i, H = w_gate_up.shape
    gu = _linear(h, w_gate_up.view(E * two_i, H)).view(B, E, two_i)
    return dense_experts(gu, w_down_t, weights, ids, out)


def dense_experts(
    gu: torch.Tensor,
    w_down_t: torch.Tensor,
    weights: torch.Tensor,
    ids: torch.Tensor,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """`dense_decode_moe` from its gate/up GEMM's output gu (B, E, 2I) on."""
    B, E, two_i = gu.shape
    inter, H = two_i // 2, w_down_t.shape[-1]
    dense_w = gu.new_zeros(B, E).scatter_(1, ids, weights)
    act = F.silu(gu[..., :inter]).mul_(gu[..., inter:]).mul_(dense_w.unsqueeze(-1))
    w = w_down_t.view(E * inter, H)
    if out is None:
        return torch.mm(act.view(B, E * inter), w)
    return torch.addmm(out, act.view(B, E * inter), w)


def sparse_decode_moe(
    h: torch.Tensor,
    w_gate_up: torch.Tensor,
    w_down_t: torch.Tensor,
    weights: torch.Tensor,
    ids: torch.Tensor,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """The experts for a few rows (rows * k <= E / 2, e.g. batch 1): only the chosen experts,
    each on its own rows, their weights read as views. Cold caches make a decode step bound by
    the expert weights it reads, so reading k of E experts beats the dense GEMMs here, while
    the per-expert ops (~7 each) would cost more than they save once most experts are hit.
    ``w_down_t`` (E, I, H). Adds into ``out`` in place when given (else into zeros)."""
    B = h.shape[0]
    inter = w_gate_up.shape[1] // 2
    groups: dict[int, list[int]] = {}  # expert -> flat (row * k + slot) indices
    for j, e in enumerate(ids.view(-1).tolist()):
        groups.setdefault(e, []).append(j)
    k = ids.shape[1]
    flat_w = weights.reshape(-1, 1)
    out = torch.zeros_like(h) if out is None else out
    for e, js in groups.items():
        if B == 1:  # one row: no gathers
            gu = _linear(h, w_gate_up[e])
            act = F.silu(gu[:, :inter]).mul_(gu[:, inter:]).mul_(flat_w[js[0] : js[0] + 1])
            out.addmm_(act, w_down_t[e])
        else:
            rows = torch.tensor([j // k for j in js], device=h.device)
            gu = _linear(h.index_select(0, rows), w_gate_up[e])
            act = F.silu(gu[:, :inter]).mul_(gu[:, inter:]).mul_(flat_w[js])
            out.index_add_(0, rows, torch.mm(act, w_down_t[e]))
    return out


def grouped_prefill_moe(
    h: torch.Tensor,
    w_gate_up_t: torch.Tensor,
    w_down_t: torch.Tensor,
    weights: torch.Tensor,
    ids: torch.Tensor,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """The experts for a prefill (many rows): (row, slot) pairs sorted by expert, one GEMM pair
    per expert over its rows into preallocated outputs, against weights transposed once
    (``w_gate_up_t`` (E, H, 2I), ``w_down_t`` (E, I, H)), so each GEMM is a plain
    row-major product. The same sums as kernels' grouped path; on the CPU ~1.5x faster than
    its `grouped_mm` at 8x32 rows (measured 2.0-2.8 vs 3.0-3.3 ms per layer, tiny preset).
    Adds into ``out`` in place when given."""
    N, k = ids.shape
    E, H, two_i = w_gate_up_t.shape
    inter = two_i // 2
    flat = ids.reshape(-1)
    order = torch.argsort(flat, stable=True)
    counts = torch.bincount(flat, minlength=E).tolist()
    token = order // k
    xs = h.index_select(0, token)
    gu = segment_mm(xs, w_gate_up_t, counts)
    act = F.silu(gu[:, :inter]).mul_(gu[:, inter:]).mul_(weights.reshape(-1)[order][:, None])
    y = segment_mm(act, w_down_t, counts)
    out = torch.zeros_like(h) if out is None else out
    return out.index_add_(0, token, y)
