"""MiniMax-M2 in PyTorch, read top to bottom: norm and RoPE helpers, the KV cache, attention,
the sparse MoE block, the decoder layer, MTP modules, the model and the causal-LM wrapper.

Module names follow the transformers >= 5 checkpoint keys (``model.layers.N.mlp.experts.gate_up_proj``
...), so a state dict saved by transformers loads here without renaming.
Shapes: B batch, T new tokens, S keys (past + new), H hidden, E experts, k experts per token.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from kernels import fused_moe, sigmoid_topk
from model import checkpoint
from model.config import MiniMaxM2Config

# Our expert-path names -> the kernels package's backend names.
KERNEL_BACKEND = {"reference": "reference", "grouped": "torch", "triton": "triton", "auto": "auto"}


# ---------------------------------------------------------------------------- helpers
class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Normalise in fp32, scale in the input dtype (as the reference does).
        dtype = x.dtype
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x32.to(dtype)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_partial_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x (B, nh, T, D); cos/sin (B, T, rd). Rotates the first rd dims, passes the rest."""
    rd = cos.shape[-1]
    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
    x_rot, x_pass = x[..., :rd], x[..., rd:]
    return torch.cat((x_rot * cos + rotate_half(x_rot) * sin, x_pass), dim=-1)


class RotaryEmbedding(nn.Module):
    def __init__(self, config: MiniMaxM2Config) -> None:
        super().__init__()
        self.register_buffer("inv_freq", self.compute_inv_freq(config), persistent=False)

    @staticmethod
    def compute_inv_freq(config: MiniMaxM2Config, device=None) -> torch.Tensor:
        rd = config.rotary_dim
        steps = torch.arange(0, rd, 2, dtype=torch.float32, device=device)
        return 1.0 / (config.rope_theta ** (steps / rd))

    def forward(self, position_ids: torch.Tensor, dtype: torch.dtype):
        freqs = position_ids[..., None].float() * self.inv_freq.float()  # (B, T, rd/2)
        emb = torch.cat((freqs, freqs), dim=-1)
        return emb.cos().to(dtype), emb.sin().to(dtype)


# ---------------------------------------------------------------------------- KV cache
class KVCache:
    """Per-layer keys/values (B, n_kv, S, D) in preallocated buffers: new tokens are written in
    place and the buffer grows geometrically, so a decode step copies one token, not the whole
    cache. ``keys[i]`` / ``values[i]`` are views of the filled part. The caller keeps the
    attention mask of all positions so far (see ``generate``)."""

    def __init__(self, num_layers: int) -> None:
        self._k: list[torch.Tensor | None] = [None] * num_layers
        self._v: list[torch.Tensor | None] = [None] * num_layers
        self._len = [0] * num_layers

    @property
    def keys(self) -> list[torch.Tensor | None]:
        return [None if b is None else b[:, :, :n] for b, n in zip(self._k, self._len, strict=True)]

    @property
    def values(self) -> list[torch.Tensor | None]:
        return [None if b is None else b[:, :, :n] for b, n in zip(self._v, self._len, strict=True)]

    def get_seq_length(self) -> int:
        return self._len[0]

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor):
        n, T = self._len[layer], k.shape[2]
        buf_k, buf_v = self._k[layer], self._v[layer]
        if torch.is_grad_enabled() and (k.requires_grad or v.requires_grad):
            # Differentiable use: in-place writes would clobber tensors autograd saved.
            if n:
                k = torch.cat([buf_k[:, :, :n], k], dim=2)
                v = torch.cat([buf_v[:, :, :n], v], dim=2)
            self.set(layer, k, v)
            return k, v
        if buf_k is None or n + T > buf_k.shape[2]:
            cap = max(2 * (n + T), 64)
            shape = (*k.shape[:2], cap, k.shape[3])
            new_k, new_v = k.new_empty(shape), v.new_empty(shape)
            if n:
                new_k[:, :, :n] = buf_k[:, :, :n]
                new_v[:, :, :n] = buf_v[:, :, :n]
            self._k[layer], self._v[layer] = buf_k, buf_v = new_k, new_v
        buf_k[:, :, n : n + T] = k
        buf_v[:, :, n : n + T] = v
        self._len[layer] = n + T
        return buf_k[:, :, : n + T], buf_v[:, :, : n + T]

    def set(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> None:
        """Replace one layer's contents (e.g. after merging batches); later updates append."""
        self._k[layer], self._v[layer], self._len[layer] = k, v, k.shape[2]

    def reorder(self, index: torch.Tensor) -> None:
        """Keep only the batch rows in ``index`` (e.g. to drop finished sequences)."""
        for i, n in enumerate(self._len):
            if self._k[i] is not None:
                self.set(i, self._k[i][index, :, :n], self._v[i][index, :, :n])

    def crop_left(self, lead: int) -> None:
        """Drop the first ``lead`` positions of every layer (padding no row needs any more)."""
        for i, n in enumerate(self._len):
            if self._k[i] is not None:
                self.set(i, self._k[i][:, :, lead:n], self._v[i][:, :, lead:n])


# ---------------------------------------------------------------------------- attention
# The attention backend: softmax(q k^T / sqrt(D)) v under some visibility rule, as
# attention_fn(q, k, v) -> y with q (B, nh, T, D), k and v (B, n_kv, S, D) (GQA: nh % n_kv == 0),
# y (B, nh, T, D). The model's forward uses `sdpa_attention` under the mask it builds from
# `attention_mask`; a caller may pass its own (the RL prefix-tree forward passes tree attention).
AttentionFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def sdpa_attention(q, k, v, mask: torch.Tensor | None = None) -> torch.Tensor:
    """The default backend. mask None: plain causal over T == S (training), or decode of one
    token against the cache; else a boolean (B, 1, T, S) mask (see build_attention_mask)."""
    is_causal = mask is None and q.shape[2] > 1
    return F.scaled_dot_product_attention(
        q, k, v, attn_mask=mask, is_causal=is_causal, enable_gqa=k.shape[1] != q.shape[1]
    )


class Attention(nn.Module):
    """GQA with QK-norm over all heads together (before RoPE) and partial RoPE; the score
    computation itself is the backend ``attend`` the forward is handed."""

    def __init__(self, config: MiniMaxM2Config, layer_idx: int) -> None:
        super().__init__()
        self.layer_idx = layer_idx
        self.n_heads = config.num_attention_heads
        self.n_kv = config.num_key_value_heads
        self.head_dim = config.head_dim
        H = config.hidden_size
        self.q_proj = nn.Linear(H, config.q_dim, bias=False)
        self.k_proj = nn.Linear(H, config.kv_dim, bias=False)
        self.v_proj = nn.Linear(H, config.kv_dim, bias=False)
        self.o_proj = nn.Linear(config.q_dim, H, bias=False)
        self.q_norm = RMSNorm(config.q_dim, config.rms_norm_eps)
        self.k_norm = RMSNorm(config.kv_dim, config.rms_norm_eps)

    def forward(self, x, cos, sin, attend: AttentionFn, cache: KVCache | None):
        B, T, _ = x.shape
        q = self.q_norm(self.q_proj(x)).view(B, T, self.n_heads, self.head_dim).transpose(1, 2)
        k = self.k_norm(self.k_proj(x)).view(B, T, self.n_kv, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(B, T, self.n_kv, self.head_dim).transpose(1, 2)
        q, k = apply_partial_rope(q, cos, sin), apply_partial_rope(k, cos, sin)
        if cache is not None:
            k, v = cache.update(self.layer_idx, k, v)
        y = attend(q, k, v)  # (B, nh, T, D)
        return self.o_proj(y.transpose(1, 2).reshape(B, T, -1))


# ---------------------------------------------------------------------------- MoE
def router_bias_update(bias: torch.Tensor, load: torch.Tensor, rate: float) -> torch.Tensor:
    """DeepSeek-V3 aux-loss-free balancing: raise the bias of under-loaded experts, lower the
    over-loaded ones by a fixed step. ``load`` is the fraction of routed slots per expert."""
    load = load.to(bias.dtype)
    return bias + rate * torch.sign(load.mean() - load)


def router_stats(
    scores: torch.Tensor, topk_ids: torch.Tensor, num_experts: int, token_mask=None
) -> dict[str, torch.Tensor]:
    """Cheap, detached training metrics: expert load fractions (from bincount of the chosen ids)
    and the mean entropy of the normalised sigmoid scores. ``token_mask`` [T] drops padding."""
    with torch.no_grad():
        k = topk_ids.shape[-1]
        weights = None if token_mask is None else token_mask.float().repeat_interleave(k)
        counts = torch.bincount(topk_ids.reshape(-1), weights=weights, minlength=num_experts)
        load = counts.float() / counts.sum().clamp_min(1)
        p = scores / scores.sum(-1, keepdim=True)
        ent = -(p * torch.log(p.clamp_min(1e-20))).sum(-1)
        if token_mask is not None:
            m = token_mask.float()
            ent = (ent * m).sum() / m.sum().clamp_min(1)
        else:
            ent = ent.mean()
    return {"load": load, "entropy": ent}


class Experts(nn.Module):
    """All experts' SwiGLU weights in the fused layout the kernels take directly."""

    def __init__(self, config: MiniMaxM2Config) -> None:
        super().__init__()
        E, H, I = config.num_local_experts, config.hidden_size, config.intermediate_size
        self.gate_up_proj = nn.Parameter(torch.empty(E, 2 * I, H))  # gate rows, then up rows
        self.down_proj = nn.Parameter(torch.empty(E, H, I))


class SparseMoeBlock(nn.Module):
    """fp32 sigmoid router; experts chosen by score + bias, weighted by the unbiased scores
    renormalised to sum 1; SwiGLU experts; no shared expert."""

    def __init__(self, config: MiniMaxM2Config) -> None:
        super().__init__()
        self.config = config
        self.top_k = config.num_experts_per_tok
        self.num_experts = config.num_local_experts
        self.gate = nn.Linear(config.hidden_size, config.num_local_experts, bias=False)
        self.experts = Experts(config)
        self.register_buffer("e_score_correction_bias", torch.zeros(config.num_local_experts))
        self.last_stats: dict[str, torch.Tensor] | None = None

    def forward(
        self, x: torch.Tensor, token_mask: torch.Tensor | None = None, stats: bool = True
    ) -> torch.Tensor:
        B, T, H = x.shape
        flat = x.reshape(-1, H)
        logits = F.linear(flat.float(), self.gate.weight.float())  # the router runs in fp32
        bias = self.e_score_correction_bias.float() if self.config.use_routing_bias else None
        backend = KERNEL_BACKEND[self.config.moe_backend]
        topk_weights, topk_ids = sigmoid_topk(logits, bias, self.top_k, backend=backend)
        out = fused_moe(
            flat,
            self.experts.gate_up_proj,
            self.experts.down_proj,
            topk_weights.to(flat.dtype),
            topk_ids,
            backend=backend,
        )
        if not stats or torch.is_inference_mode_enabled():
            self.last_stats = None  # generation / serving: nobody reads them, skip the small ops
        else:
            self.last_stats = router_stats(
                torch.sigmoid(logits.detach()), topk_ids, self.num_experts, token_mask
            )
        return out.view(B, T, H)


# ---------------------------------------------------------------------------- layers
class DecoderLayer(nn.Module):
    def __init__(self, config: MiniMaxM2Config, layer_idx: int) -> None:
        super().__init__()
        self.self_attn = Attention(config, layer_idx)
        self.mlp = SparseMoeBlock(config)
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)

    def forward(self, x, cos, sin, attend, cache, token_mask=None, stats: bool = True):
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, attend, cache)
        return x + self.mlp(self.post_attention_layernorm(x), token_mask, stats)


class MTPModule(nn.Module):
    """DeepSeek-V3 multi-token prediction depth: [norm(h) ; norm(embed(next token))] -> linear ->
    one decoder layer -> final norm -> the shared LM head (held by the causal-LM wrapper)."""

    def __init__(self, config: MiniMaxM2Config, layer_idx: int) -> None:
        super().__init__()
        H = config.hidden_size
        self.hnorm = RMSNorm(H, config.rms_norm_eps)
        self.enorm = RMSNorm(H, config.rms_norm_eps)
        self.eh_proj = nn.Linear(2 * H, H, bias=False)
        self.layer = DecoderLayer(config, layer_idx)
        self.final_norm = RMSNorm(H, config.rms_norm_eps)

    def forward(self, h, emb, cos, sin, attend):
        x = self.eh_proj(torch.cat([self.hnorm(h), self.enorm(emb)], dim=-1))
        return self.layer(x, cos, sin, attend, None)


def build_attention_mask(
    attention_mask: torch.Tensor | None, T: int, past: int
) -> torch.Tensor | None:
    """Boolean (B, 1, T, S) mask for SDPA, or None when plain causal attention suffices.
    Queries sit at positions past..past+T-1 of the S = past + T keys. A query always sees itself,
    so fully padded rows stay finite (their outputs are ignored)."""
    if attention_mask is None or bool(attention_mask.all()):
        if past == 0 or T == 1:
            return None
        attention_mask = None
    S = past + T
    device = attention_mask.device if attention_mask is not None else None
    q_pos = torch.arange(past, S, device=device)[:, None]
    k_pos = torch.arange(S, device=device)[None, :]
    allowed = k_pos <= q_pos  # (T, S)
    if attention_mask is None:
        return allowed[None, None]
    allowed = allowed[None] & attention_mask[:, None, -S:].bool()  # (B, T, S)
    allowed = allowed | (k_pos == q_pos)[None]
    return allowed[:, None]


# ---------------------------------------------------------------------------- model
class MiniMaxM2Model(nn.Module):
    def __init__(self, config: MiniMaxM2Config) -> None:
        super().__init__()
        self.config = config
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(
            [DecoderLayer(config, i) for i in range(config.num_hidden_layers)]
        )
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.rotary_emb = RotaryEmbedding(config)
        if config.use_mtp and config.num_mtp_modules > 0:
            L = config.num_hidden_layers
            self.mtp = nn.ModuleList(
                [MTPModule(config, L + i) for i in range(config.num_mtp_modules)]
            )
        else:
            self.mtp = None

    def forward(
        self,
        input_ids: torch.Tensor,
        position_ids: torch.Tensor,
        attention_fn: AttentionFn = sdpa_attention,
        cache: KVCache | None = None,
        token_mask: torch.Tensor | None = None,
        stats: bool = True,
    ) -> torch.Tensor:
        """The decoder: embeddings -> layers -> the residual stream (B, T, H), before the final
        norm. ``attention_fn`` is every layer's attention backend (default: plain causal SDPA)."""
        x = self.embed_tokens(input_ids)
        cos, sin = self.rotary_emb(position_ids, x.dtype)
        for layer in self.layers:
            x = layer(x, cos, sin, attention_fn, cache, token_mask, stats)
        return x


@dataclass
class CausalLMOutput:
    logits: torch.Tensor
    loss: torch.Tensor | None = None
    router_stats: list[dict[str, torch.Tensor]] = field(default_factory=list)
    past_key_values: KVCache | None = None
    hidden_states: torch.Tensor | None = None  # final hidden states, before the final norm
    mtp_logits: list[torch.Tensor] = field(default_factory=list)
    mtp_loss: torch.Tensor | None = None


def shifted_cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean next-token CE: position t predicts labels[t+1]; -100 is ignored."""
    V = logits.shape[-1]
    # Shift the labels, not the logits: no copy of the [B, T-1, V] slice (the last position
    # gets the ignored label, so the mean runs over the same targets).
    shifted = F.pad(labels[:, 1:], (0, 1), value=-100)
    return F.cross_entropy(logits.reshape(-1, V).float(), shifted.reshape(-1), ignore_index=-100)


class MiniMaxM2ForCausalLM(nn.Module):
    def __init__(self, config: MiniMaxM2Config) -> None:
        super().__init__()
        self.config = config
        self.model = MiniMaxM2Model(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.loaded_keys: set[str] = set()
        if not any(p.is_meta for p in self.parameters()):
            self.init_weights()

    # -------------------------------------------------------------- init
    @torch.no_grad()
    def init_weights(self, generator: torch.Generator | None = None) -> None:
        std = self.config.initializer_range
        for name, p in self.named_parameters():
            if name.endswith("norm.weight"):
                p.fill_(1.0)
            else:
                p.normal_(0.0, std, generator=generator)
        for mod in self.modules():
            if isinstance(mod, SparseMoeBlock):
                mod.e_score_correction_bias.zero_()
        self.init_buffers()

    def init_buffers(self) -> None:
        """The RoPE inverse frequencies, in fp32 (not in checkpoints: a model built on the meta
        device or cast to another dtype gets them from here)."""
        for mod in self.modules():
            if isinstance(mod, RotaryEmbedding):
                mod.inv_freq = RotaryEmbedding.compute_inv_freq(self.config, mod.inv_freq.device)

    # -------------------------------------------------------------- config helpers
    def set_moe_backend(self, backend: str) -> None:
        """Switch the expert path on a live model (the config is frozen, so replace it)."""
        self.config = self.config.replace(moe_backend=backend)
        self.model.config = self.config
        for mod in self.modules():
            if isinstance(mod, SparseMoeBlock):
                mod.config = self.config

    @property
    def moe_blocks(self) -> list[SparseMoeBlock]:
        return [layer.mlp for layer in self.model.layers]

    # -------------------------------------------------------------- forward
    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        past_key_values: KVCache | None = None,
        use_cache: bool = False,
        labels: torch.Tensor | None = None,
        logits_to_keep: int = 0,
        attention_fn: AttentionFn | None = None,
    ) -> CausalLMOutput:
        """``logits_to_keep`` > 0: compute the LM head on the last that many positions only
        (generation needs the last one); ignored when ``labels`` asks for the loss.
        ``attention_fn``: an attention backend replacing the causal / ``attention_mask`` one
        (e.g. tree attention over packed sequences: pass the ``position_ids`` that go with it;
        no ``attention_mask``, no cache, and the MTP modules, causal by design, are skipped)."""
        B, T = input_ids.shape
        custom = attention_fn is not None
        if custom and (attention_mask is not None or past_key_values is not None or use_cache):
            raise ValueError("attention_fn replaces attention_mask and the KV cache; pass neither")
        cache = past_key_values
        if use_cache and cache is None:
            cache = KVCache(self.config.num_hidden_layers)
        past = cache.get_seq_length() if cache is not None else 0
        if attention_mask is not None and attention_mask.shape[1] not in (T, past + T):
            raise ValueError(
                f"attention_mask has {attention_mask.shape[1]} columns; expected {T} or {past + T}"
            )
        if attention_mask is not None and attention_mask.shape[1] == T and past > 0:
            # Only the new tokens' mask was given: the cached positions count as real.
            ones = attention_mask.new_ones(B, past)
            attention_mask = torch.cat([ones, attention_mask], dim=1)
        if position_ids is None:
            if attention_mask is not None:
                # Left padding: the first real token of each row sits at position 0.
                pos = (attention_mask.long().cumsum(-1) - 1).clamp_min(0)
                position_ids = pos[:, -T:]
            else:
                position_ids = torch.arange(past, past + T, device=input_ids.device)[None]
                position_ids = position_ids.expand(B, T)

        if attention_fn is None:
            attention_fn = partial(
                sdpa_attention, mask=build_attention_mask(attention_mask, T, past)
            )
        token_mask = None if attention_mask is None else attention_mask[:, -T:].reshape(-1)
        # Router stats are training metrics: skip them when decoding against a KV cache.
        x = self.model(
            input_ids, position_ids, attention_fn, cache, token_mask, stats=cache is None
        )
        h = x if logits_to_keep <= 0 or labels is not None else x[:, -logits_to_keep:]
        logits = self.lm_head(self.model.norm(h))

        out = CausalLMOutput(
            logits=logits,
            router_stats=[blk.last_stats for blk in self.moe_blocks if blk.last_stats is not None],
            past_key_values=cache if use_cache else None,
            hidden_states=x,
        )
        if labels is not None:
            out.loss = shifted_cross_entropy(logits, labels)
        if self.model.mtp is not None and cache is None and past == 0 and not custom:
            self._mtp_forward(out, input_ids, position_ids, attention_mask, labels)
        return out

    def _mtp_forward(self, out, input_ids, position_ids, attention_mask, labels) -> None:
        """Depth k predicts token t+k+1 from the depth k-1 hidden state at t and the embedding of
        token t+k. Their mean CE is added to the loss with weight mtp_loss_weight."""
        h = out.hidden_states
        T = input_ids.shape[1]
        losses = []
        for k, mod in enumerate(self.model.mtp, start=1):
            if T - k < 2:
                break
            emb = self.model.embed_tokens(input_ids[:, k:])
            pos = position_ids[:, : T - k]
            cos, sin = self.model.rotary_emb(pos, h.dtype)
            am = None if attention_mask is None else attention_mask[:, : T - k]
            attend = partial(sdpa_attention, mask=build_attention_mask(am, T - k, 0))
            h = mod(h[:, : T - k], emb, cos, sin, attend)
            logits = self.lm_head(mod.final_norm(h))
            out.mtp_logits.append(logits)
            if labels is not None:
                losses.append(shifted_cross_entropy(logits, labels[:, k:]))
        if losses:
            out.mtp_loss = torch.stack(losses).mean()
            out.loss = out.loss + self.config.mtp_loss_weight * out.mtp_loss

    # -------------------------------------------------------------- RL / training helpers
    def token_logprobs(
        self,
        input_ids: torch.Tensor,
        targets: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """[B, T] log p(targets[t] | input_ids[:t+1]); targets < 0 (ignored) give 0."""
        logits = self(input_ids, attention_mask=attention_mask).logits
        logp = torch.log_softmax(logits.float(), dim=-1)
        safe = targets.clamp_min(0)
        out = logp.gather(-1, safe.unsqueeze(-1)).squeeze(-1)
        return out.masked_fill(targets < 0, 0.0)

    @torch.no_grad()
    def update_router_bias(self, rate: float) -> None:
        """Aux-loss-free load balancing from the loads of the last forward."""
        for blk in self.moe_blocks:
            if blk.last_stats is None:
                continue
            new = router_bias_update(blk.e_score_correction_bias, blk.last_stats["load"], rate)
            blk.e_score_correction_bias.copy_(new)

    # -------------------------------------------------------------- generation / checkpoints
    def generate(
        self,
        input_ids: torch.Tensor,
        max_new_tokens: int = 32,
        temperature: float = 0.0,
        top_p: float = 1.0,
        stop_token_ids=(),
        attention_mask: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        pad_token_id: int | None = None,
    ) -> torch.Tensor:
        """Greedy (temperature 0) or nucleus sampling with the KV cache; see model.generation."""
        from model.generation import generate

        return generate(
            self,
            input_ids,
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            top_p=top_p,
            stop_token_ids=stop_token_ids,
            attention_mask=attention_mask,
            generator=generator,
            pad_token_id=pad_token_id,
        )

    @classmethod
    def from_pretrained(cls, path, dtype: torch.dtype = torch.float32, **overrides):
        return checkpoint.load_pretrained(cls, path, dtype=dtype, **overrides)

    def save_pretrained(self, path, max_shard_bytes: int = 2 * 1024**3) -> None:
        checkpoint.save_pretrained(self, path, max_shard_bytes=max_shard_bytes)

    def num_parameters(self, exclude_mtp: bool = True) -> int:
        return sum(
            p.numel()
            for n, p in self.named_parameters()
            if not (exclude_mtp and n.startswith("model.mtp."))
        )
