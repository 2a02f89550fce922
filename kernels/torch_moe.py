"""The PyTorch paths of the fused MoE (``kernels.moe.fused_moe`` dispatches to them): the
reference loop over experts, the grouped-matmul ``torch`` path with its hand-written backward
(the Triton path's backward recomputes through it too), the dense small-batch path, and FP8
block scales. Shapes and the FP8 convention: see kernels/moe.py.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

FP8_BLOCK = 128


# ---------------------------------------------------------------------------------------------
# FP8 block scales


def dequant_block_fp8(
    w: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype = torch.float32, block: int = FP8_BLOCK
) -> torch.Tensor:
    """w [..., R, C] (fp8) * scale [..., ceil(R/block), ceil(C/block)] -> [..., R, C] in dtype."""
    rows, cols = w.shape[-2:]
    s = scale.float().repeat_interleave(block, dim=-2)[..., :rows, :]
    s = s.repeat_interleave(block, dim=-1)[..., :cols]
    return (w.float() * s).to(dtype)


def quant_block_fp8(w: torch.Tensor, block: int = FP8_BLOCK) -> tuple[torch.Tensor, torch.Tensor]:
    """Inverse of dequant_block_fp8 (for tests and benchmarks): per-block absmax scaling."""
    rows, cols = w.shape[-2:]
    nr, nc = -(-rows // block), -(-cols // block)
    pad = F.pad(w.float(), (0, nc * block - cols, 0, nr * block - rows))
    blocks = pad.unflatten(-1, (nc, block)).unflatten(-3, (nr, block))  # [..., nr, b, nc, b]
    amax = blocks.abs().amax(dim=(-3, -1)).clamp_min(1e-12)  # [..., nr, nc]
    scale = amax / torch.finfo(torch.float8_e4m3fn).max
    s = scale.repeat_interleave(block, -2)[..., :rows, :].repeat_interleave(block, -1)[..., :cols]
    return (w.float() / s).to(torch.float8_e4m3fn), scale


def _weights(
    x: torch.Tensor,
    w_gate_up: torch.Tensor,
    w_down: torch.Tensor,
    w_gate_up_scale: torch.Tensor | None,
    w_down_scale: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Dequantise FP8 weights to the activation dtype (PyTorch paths)."""
    if w_gate_up_scale is not None:
        w_gate_up = dequant_block_fp8(w_gate_up, w_gate_up_scale, x.dtype)
    if w_down_scale is not None:
        w_down = dequant_block_fp8(w_down, w_down_scale, x.dtype)
    return w_gate_up, w_down


# ---------------------------------------------------------------------------------------------
# reference: loop over experts


def fused_moe_reference(
    x: torch.Tensor,
    w_gate_up: torch.Tensor,
    w_down: torch.Tensor,
    topk_weights: torch.Tensor,
    topk_ids: torch.Tensor,
    w_gate_up_scale: torch.Tensor | None = None,
    w_down_scale: torch.Tensor | None = None,
) -> torch.Tensor:
    """Loop over experts. x [T, H], w_gate_up [E, 2I, H] (gate rows first), w_down [E, H, I]."""
    w_gate_up, w_down = _weights(x, w_gate_up, w_down, w_gate_up_scale, w_down_scale)
    num_experts = w_gate_up.shape[0]
    inter = w_down.shape[-1]
    out = torch.zeros_like(x)
    for e in range(num_experts):
        token_idx, slot = torch.where(topk_ids == e)
        if token_idx.numel() == 0:
            continue
        h = x[token_idx] @ w_gate_up[e].t()  # (n, 2I)
        h = F.silu(h[:, :inter]) * h[:, inter:]
        y = h @ w_down[e].t()  # (n, H)
        y = y * topk_weights[token_idx, slot].unsqueeze(-1).to(y.dtype)
        out.index_add_(0, token_idx, y.to(out.dtype))
    return out


# ---------------------------------------------------------------------------------------------
# torch: tokens sorted by expert, grouped matmuls forward and backward


def _grouped_ok(*tensors: torch.Tensor) -> bool:
    """torch's grouped_mm wants 16-byte aligned strides; on CUDA it only takes bf16."""
    if not hasattr(F, "grouped_mm"):
        return False
    for t in tensors:
        if t.dtype not in (torch.float32, torch.bfloat16, torch.float16):
            return False
        if t.device.type == "cuda" and t.dtype != torch.bfloat16:
            return False
        if t.data_ptr() % 16:
            return False
        if any(s != 1 and (s * t.element_size()) % 16 for s in t.stride()):
            return False
    return True


def segment_mm(a: torch.Tensor, b: torch.Tensor, counts: list[int]) -> torch.Tensor:
    """Rows of a [M, K] in consecutive groups of counts[g] rows, times b[g] [K, N] -> [M, N]:
    one plain GEMM per non-empty group."""
    out = a.new_empty(a.shape[0], b.shape[-1])
    start = 0
    for g, n in enumerate(counts):
        if n:
            torch.mm(a[start : start + n], b[g], out=out[start : start + n])
        start += n
    return out


def _gmm(a: torch.Tensor, b: torch.Tensor, offs: torch.Tensor, counts: list[int]) -> torch.Tensor:
    """Rows of a [M, K] grouped by offs, times b[g] [K, N] -> [M, N]."""
    if _grouped_ok(a, b):
        return F.grouped_mm(a, b, offs=offs)
    return segment_mm(a, b, counts)


def _gmm_wgrad(
    a: torch.Tensor, b: torch.Tensor, offs: torch.Tensor, counts: list[int]
) -> torch.Tensor:
    """Per group a_g^T b_g for a [M, P], b [M, Q] -> [G, P, Q] (zeros for empty groups)."""
    at = a.t()
    if a.device.type == "cpu":
        # One mm per expert straight into a recycled buffer: the CPU's grouped_mm zero-fills a
        # fresh [G, P, Q] first, and fresh multi-MB buffers cost page faults on every step.
        out = _GRAD_POOL.take((len(counts), a.shape[1], b.shape[1]), a.dtype, a.device)
        start = 0
        for g, n in enumerate(counts):
            if n:
                torch.mm(at[:, start : start + n], b[start : start + n], out=out[g])
            else:
                out[g].zero_()
            start += n
        return out
    if _grouped_ok(at, b):
        return F.grouped_mm(at, b, offs=offs)
    out = a.new_zeros(len(counts), a.shape[1], b.shape[1])
    start = 0
    for g, n in enumerate(counts):
        if n:
            torch.mm(at[:, start : start + n], b[start : start + n], out=out[g])
        start += n
    return out


class _GradPool:
    """Recycled storages for the expert weight gradients on the CPU.

    The expert gradients are the largest tensors of a step (as big as the expert weights). The
    CPU allocator hands such blocks back to the OS when ``zero_grad(set_to_none=True)`` drops
    them, so every step pays page faults to get them again; here a storage is handed out again
    only once nothing but the pool refers to it (its use count is 1), so a gradient the caller
    still holds (accumulation, a saved copy) is never overwritten. ``clear()`` frees them all.
    """

    def __init__(self, max_per_shape: int = 32) -> None:
        self.max_per_shape = max_per_shape
        self._storages: dict[tuple, list[torch.UntypedStorage]] = {}

    def take(self, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device):
        key = (shape, dtype, device)
        pool = self._storages.setdefault(key, [])
        for st in pool:
            if torch._C._storage_Use_Count(st._cdata) == 1:
                return torch.empty(0, dtype=dtype, device=device).set_(st, 0, shape)
        out = torch.empty(shape, dtype=dtype, device=device)
        if len(pool) < self.max_per_shape:
            pool.append(out.untyped_storage())
        return out

    def clear(self) -> None:
        self._storages.clear()


_GRAD_POOL = _GradPool()


def sort_by_expert(topk_ids: torch.Tensor, num_experts: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Flattened (token, slot) pairs sorted by expert -> (order [T*k], counts [E])."""
    flat = topk_ids.reshape(-1)
    order = torch.argsort(flat, stable=True)
    counts = torch.bincount(flat, minlength=num_experts)
    return order, counts


class GroupedMoE(torch.autograd.Function):
    """The whole expert computation as one autograd node over tokens sorted by expert.

    Forward: gather rows by expert, grouped GEMM gate/up, SiLU(gate)*up scaled by the routing
    weight, grouped GEMM down, then un-permute and sum the k copies of each token (a gather +
    sum, cheaper on the CPU than a scatter-add). Backward is grouped matmuls too
    (dX_g = dY_g @ W_g, dW_g = dY_g^T X_g) because torch's own grouped_mm backward is missing on
    the CPU, and it skips the per-expert autograd bookkeeping of the reference loop.
    """

    @staticmethod
    def forward(ctx, x, topk_weights, w_gate_up, w_down, topk_ids):
        num_tokens, top_k = topk_ids.shape
        inter = w_down.shape[-1]
        order, counts = sort_by_expert(topk_ids, w_gate_up.shape[0])
        inverse = torch.empty_like(order)
        inverse[order] = torch.arange(order.numel(), device=order.device)
        offs = torch.cumsum(counts, 0).to(torch.int32)
        counts = counts.tolist()
        token = order // top_k
        ws = topk_weights.reshape(-1)[order].to(x.dtype).unsqueeze(-1)  # [M, 1]

        xs = x.index_select(0, token)  # [M, H], rows grouped by expert
        gu = _gmm(xs, w_gate_up.transpose(1, 2), offs, counts)  # [M, 2I]
        act = F.silu(gu[:, :inter]).mul_(gu[:, inter:]).mul_(ws)
        y = _gmm(act, w_down.transpose(1, 2), offs, counts)  # [M, H]
        out = y.index_select(0, inverse).view(num_tokens, top_k, y.shape[1]).sum(1)

        ctx.save_for_backward(xs, gu, ws, w_gate_up, w_down, order, inverse, offs)
        ctx.counts = counts
        ctx.weights_dtype = topk_weights.dtype
        return out

    @staticmethod
    def backward(ctx, d_out):
        xs, gu, ws, w_gate_up, w_down, order, inverse, offs = ctx.saved_tensors
        counts = ctx.counts
        top_k = order.numel() // d_out.shape[0]
        inter = w_down.shape[-1]
        gate, up = gu[:, :inter], gu[:, inter:]

        dy = d_out.contiguous().index_select(0, order // top_k)  # [M, H]
        silu = F.silu(gate)
        act = silu * up
        d_act = _gmm(dy, w_down, offs, counts)  # [M, I], still scaled by the routing weight
        d_w_gate_up = d_w_down = d_weights = d_x = None
        if ctx.needs_input_grad[3]:
            d_w_down = _gmm_wgrad(dy, act * ws, offs, counts)  # [E, H, I]
        if ctx.needs_input_grad[1]:
            d_ws = (d_act * act).sum(-1, dtype=torch.float32)
            d_weights = d_ws.index_select(0, inverse).view(-1, top_k).to(ctx.weights_dtype)
        d_act.mul_(ws)
        # fill d(gate|up) in place: fewer temporaries than the textbook formula
        d_gu = torch.empty_like(gu)
        torch.mul(d_act, silu, out=d_gu[:, inter:])
        d_gu[:, :inter] = torch.ops.aten.silu_backward(d_act.mul_(up), gate)
        if ctx.needs_input_grad[0]:
            d_xs = _gmm(d_gu, w_gate_up, offs, counts)  # [M, H]
            d_x = d_xs.index_select(0, inverse).view(-1, top_k, d_xs.shape[1]).sum(1)
        if ctx.needs_input_grad[2]:
            d_w_gate_up = _gmm_wgrad(d_gu, xs, offs, counts)  # [E, 2I, H]
        return d_x, d_weights, d_w_gate_up, d_w_down, None


def fused_moe_torch(
    x: torch.Tensor,
    w_gate_up: torch.Tensor,
    w_down: torch.Tensor,
    topk_weights: torch.Tensor,
    topk_ids: torch.Tensor,
    w_gate_up_scale: torch.Tensor | None = None,
    w_down_scale: torch.Tensor | None = None,
) -> torch.Tensor:
    w_gate_up, w_down = _weights(x, w_gate_up, w_down, w_gate_up_scale, w_down_scale)
    needs_grad = torch.is_grad_enabled() and any(
        t.requires_grad for t in (x, topk_weights, w_gate_up, w_down)
    )
    num_tokens, top_k = topk_ids.shape
    if not needs_grad and num_tokens <= SMALL_T and num_tokens * top_k >= w_gate_up.shape[0]:
        return fused_moe_small(x, w_gate_up, w_down, topk_weights, topk_ids)
    return GroupedMoE.apply(x.contiguous(), topk_weights, w_gate_up, w_down, topk_ids)


# Decode fast path: with at least as many routed slots as experts (a decode batch), running
# every expert densely on every token is three big ops instead of the sort / bincount /
# per-expert loop of the grouped path. Fewer slots: the grouped path touches fewer weights.
SMALL_T = 64


def fused_moe_small(
    x: torch.Tensor,
    w_gate_up: torch.Tensor,
    w_down: torch.Tensor,
    topk_weights: torch.Tensor,
    topk_ids: torch.Tensor,
) -> torch.Tensor:
    """Inference path for few tokens: every expert on every token (one mm + one bmm), the
    routing weights zero for the experts not chosen. Same sum as the sparse paths."""
    num_tokens = topk_ids.shape[0]
    E, two_i, H = w_gate_up.shape
    inter = two_i // 2
    gu = (x @ w_gate_up.reshape(E * two_i, H).t()).view(num_tokens, E, two_i)
    dense_w = x.new_zeros(num_tokens, E).scatter_(1, topk_ids, topk_weights.to(x.dtype))
    act = F.silu(gu[..., :inter]).mul_(gu[..., inter:]).mul_(dense_w.unsqueeze(-1))
    y = torch.bmm(act.transpose(0, 1), w_down.transpose(1, 2))  # [E, T, H]
    return y.sum(0)
