"""HF-format checkpoint I/O for MiniMax-M2: config.json + safetensors shards (+ index).

Loads both expert layouts (the released per-expert ``block_sparse_moe.experts.E.{w1,w2,w3}`` and
transformers >= 5's fused ``mlp.experts.{gate_up_proj,down_proj}``) and FP8 block-quantised
weights (float8_e4m3fn with a fp32 ``weight_scale_inv`` per 128x128 block, dequantised as
``w * scale``). The model is built on the meta device and filled shard by shard, so peak memory
stays near one copy of the weights. Every checkpoint tensor must land somewhere and every model
tensor must be filled: otherwise a one-line error names the tensor.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from model.config import MiniMaxM2Config
from model.errors import BadInputError
from model.files import atomic_path, atomic_write_text

CONFIG_FILE = "config.json"
SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
FP8_DTYPES = tuple(getattr(torch, n) for n in ("float8_e4m3fn", "float8_e5m2") if hasattr(torch, n))


# ---------------------------------------------------------------------------- atomic writes
def atomic_save_safetensors(tensors: dict[str, torch.Tensor], path: Path, metadata=None) -> None:
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)


# ---------------------------------------------------------------------------- FP8 blocks
def quantize_fp8_blocks(w: torch.Tensor, block: int = 128) -> tuple[torch.Tensor, torch.Tensor]:
    """Block-quantise the last two dims of ``w`` to float8_e4m3fn. Returns (q, scale_inv) with
    scale_inv [..., ceil(R/block), ceil(C/block)] such that ``w ~= q * scale_inv`` blockwise.
    Edge blocks are partial (dims need not be multiples of the block)."""
    R, C = w.shape[-2:]
    nr, nc = math.ceil(R / block), math.ceil(C / block)
    padded = torch.zeros(*w.shape[:-2], nr * block, nc * block, dtype=torch.float32)
    padded[..., :R, :C] = w.float()
    blocks = padded.unflatten(-2, (nr, block)).unflatten(-1, (nc, block))  # [..., nr, b, nc, b]
    amax = blocks.abs().amax(dim=(-3, -1))  # [..., nr, nc]
    scale = (amax / torch.finfo(torch.float8_e4m3fn).max).clamp_min(1e-12)
    q = blocks / scale[..., :, None, :, None]
    q = q.flatten(-4, -3).flatten(-2, -1)[..., :R, :C].to(torch.float8_e4m3fn)
    return q.contiguous(), scale.float().contiguous()


def dequantize_fp8_blocks(
    q: torch.Tensor, scale_inv: torch.Tensor, block: tuple[int, int] = (128, 128)
) -> torch.Tensor:
    """fp32 ``q * scale_inv`` with each scale covering a block (partial at the edges)."""
    R, C = q.shape[-2:]
    br, bc = block
    want = (math.ceil(R / br), math.ceil(C / bc))
    if tuple(scale_inv.shape[-2:]) != want or scale_inv.shape[:-2] != q.shape[:-2]:
        raise BadInputError(
            f"FP8 scale of shape {list(scale_inv.shape)} does not fit a weight of shape "
            f"{list(q.shape)} with {br}x{bc} blocks"
        )
    s = scale_inv.float().repeat_interleave(br, dim=-2).repeat_interleave(bc, dim=-1)
    return q.float() * s[..., :R, :C]


def scale_key(key: str) -> str:
    """The scale tensor name for a quantised weight (``x.weight`` -> ``x.weight_scale_inv``)."""
    return key + "_scale_inv"


# ---------------------------------------------------------------------------- key mapping
@dataclass(frozen=True)
class Target:
    """Where a checkpoint tensor goes: our parameter/buffer ``name``, and for per-expert
    tensors the expert index and the row slice (``part``: 'gate', 'up' or 'down')."""

    name: str
    expert: int | None = None
    part: str | None = None


_PER_EXPERT = re.compile(r"^(model\.layers\.\d+)\.mlp\.experts\.(\d+)\.(w1|w2|w3)\.weight$")
_LAYER = re.compile(r"^model\.layers\.(\d+)\.")
_PART = {"w1": "gate", "w3": "up", "w2": "down"}


def map_key(key: str) -> Target:
    """Checkpoint key -> our target (names not recognised map to themselves and are then
    reported as unexpected by the loader)."""
    key = key.replace(".block_sparse_moe.", ".mlp.")
    m = _PER_EXPERT.match(key)
    if m:
        prefix, e, w = m.groups()
        proj = "down_proj" if w == "w2" else "gate_up_proj"
        return Target(f"{prefix}.mlp.experts.{proj}", int(e), _PART[w])
    return Target(key)


def is_mtp_key(key: str, config: MiniMaxM2Config) -> bool:
    """MTP weights: ours (``model.mtp.``) or DeepSeek-style extra layers past the last one."""
    if ".mtp." in key or key.startswith("mtp."):
        return True
    m = _LAYER.match(key)
    return bool(m) and int(m.group(1)) >= config.num_hidden_layers


# ---------------------------------------------------------------------------- saving
def save_pretrained(model, path: str | Path, max_shard_bytes: int = 2 * 1024**3) -> None:
    """config.json + model.safetensors (or shards + index) in the fused transformers layout."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for k, v in state.items():
        nbytes = v.numel() * v.element_size()
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][k] = v
        size += nbytes
    meta = {"format": "pt"}
    if len(shards) == 1:
        atomic_save_safetensors(shards[0], path / SINGLE_FILE, meta)
        (path / INDEX_FILE).unlink(missing_ok=True)
    else:
        weight_map = {}
        for i, shard in enumerate(shards, start=1):
            fname = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
            atomic_save_safetensors(shard, path / fname, meta)
            weight_map.update(dict.fromkeys(shard, fname))
        total = sum(v.numel() * v.element_size() for v in state.values())
        index = {"metadata": {"total_size": total}, "weight_map": weight_map}
        atomic_write_text(path / INDEX_FILE, json.dumps(index, indent=2) + "\n")
        (path / SINGLE_FILE).unlink(missing_ok=True)
    atomic_write_text(path / CONFIG_FILE, model.config.to_json_string())


# ---------------------------------------------------------------------------- loading
def read_config(path: str | Path) -> tuple[MiniMaxM2Config, dict]:
    path = Path(path)
    if not path.is_dir():
        raise BadInputError(f"checkpoint directory not found: {path}")
    cfg_file = path / CONFIG_FILE
    if not cfg_file.is_file():
        raise BadInputError(f"{path} is not a checkpoint: it has no {CONFIG_FILE}")
    try:
        raw = json.loads(cfg_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BadInputError(f"{cfg_file} is not valid JSON: {exc}") from exc
    if not isinstance(raw, dict):
        raise BadInputError(f"{cfg_file} must hold a JSON object")
    try:
        return MiniMaxM2Config.from_dict(raw), raw
    except (ValueError, TypeError) as exc:
        raise BadInputError(f"{cfg_file}: {exc}") from exc


def shard_files(path: Path) -> dict[str, Path | None]:
    """key -> file from the index (None: the file must be opened to learn its keys)."""
    index = path / INDEX_FILE
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise BadInputError(f"{index} is not a valid safetensors index: {exc}") from exc
        for fname in sorted(set(weight_map.values())):
            if not (path / fname).is_file():
                raise BadInputError(f"missing shard {fname} (listed in {INDEX_FILE})")
        return {k: path / f for k, f in weight_map.items()}
    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise BadInputError(f"{path} has no safetensors weights")
    return {f"__file__{f.name}": f for f in files}


def _open(file: Path):
    try:
        return safe_open(str(file), framework="pt", device="cpu")
    except Exception as exc:  # SafetensorError, OSError: say which file, one line
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise BadInputError(f"corrupt safetensors file {file.name}: {msg}") from exc


def iter_checkpoint(path: Path) -> Iterator[tuple[str, Path]]:
    """(key, file) for every tensor, grouped file by file."""
    mapping = shard_files(path)
    by_file: dict[Path, list[str]] = {}
    for key, file in mapping.items():
        by_file.setdefault(file, []).append(key)
    for file in sorted(by_file):
        keys = by_file[file]
        if keys[0].startswith("__file__"):
            with _open(file) as f:
                keys = list(f.keys())
        for key in keys:
            yield key, file


def expected_shape(param: torch.Tensor, target: Target) -> tuple[int, ...]:
    if target.expert is None:
        return tuple(param.shape)
    if target.part == "down":
        return tuple(param.shape[1:])
    return (param.shape[1] // 2, param.shape[2])


def load_pretrained(model_cls, path: str | Path, dtype: torch.dtype = torch.float32, **overrides):
    """Build ``model_cls(config)`` on meta, fill it shard by shard, check coverage (the causal LM's
    ``from_pretrained`` calls this with its class). Returns the model; the set of checkpoint keys
    it loaded is ``model.loaded_keys`` (skipped MTP keys: ``model.skipped_keys``)."""
    path = Path(path)
    config, raw = read_config(path)
    qcfg = raw.get("quantization_config") or {}
    block = tuple(qcfg.get("weight_block_size") or (128, 128))
    if overrides:
        try:
            config = config.replace(**overrides)
        except (ValueError, TypeError) as exc:
            raise BadInputError(str(exc)) from exc
    entries = list(iter_checkpoint(path))  # validates the index and shard files first

    with torch.device("meta"):
        model = model_cls(config)
    model.to(dtype)
    model.to_empty(device="cpu")
    for blk in model.moe_blocks:  # the router and its bias stay fp32
        blk.gate.weight.data = blk.gate.weight.data.float()
        blk.e_score_correction_bias = torch.zeros_like(
            blk.e_score_correction_bias, dtype=torch.float32
        )
    model.init_buffers()

    params = dict(model.state_dict(keep_vars=True))
    # slots still to fill: name -> set of (expert, part) or {None} for whole tensors
    todo: dict[str, set] = {}
    for name, p in params.items():
        if name.endswith("experts.gate_up_proj"):
            todo[name] = {(e, part) for e in range(p.shape[0]) for part in ("gate", "up")}
        elif name.endswith("experts.down_proj"):
            todo[name] = {(e, "down") for e in range(p.shape[0])}
        else:
            todo[name] = {None}

    keys = {k for k, _ in entries}
    file_of = dict(entries)
    loaded: set[str] = set()
    skipped: set[str] = set()
    handles: dict[Path, object] = {}

    def get(key: str) -> torch.Tensor:
        file = file_of[key]
        if file not in handles:
            handles[file] = _open(file).__enter__()
        try:
            return handles[file].get_tensor(key)
        except Exception as exc:
            raise BadInputError(f"corrupt safetensors file {file.name}: cannot read {key}") from exc

    try:
        for key, _file in entries:
            if key.endswith("_scale_inv"):
                continue  # consumed with its weight below
            if not config.use_mtp and is_mtp_key(key, config):
                skipped.add(key)
                continue
            target = map_key(key)
            if target.name not in params:
                raise BadInputError(f"unexpected tensor in checkpoint: {key}")
            param = params[target.name]
            t = get(key)
            if t.dtype in FP8_DTYPES:
                sk = scale_key(key)
                if sk not in keys:
                    raise BadInputError(f"FP8 tensor {key} has no {sk}")
                try:
                    t = dequantize_fp8_blocks(t, get(sk), block)
                except BadInputError as exc:
                    raise BadInputError(f"tensor {key}: {exc}") from exc
                loaded.add(sk)
            want = expected_shape(param, target)
            if tuple(t.shape) != want:
                raise BadInputError(
                    f"tensor {key} has shape {list(t.shape)}, expected {list(want)}"
                )
            with torch.no_grad():
                if target.expert is None:
                    param.copy_(t)
                    todo[target.name].discard(None)
                    todo[target.name] -= {s for s in todo[target.name] if s is not None}
                elif target.part == "down":
                    param[target.expert].copy_(t)
                    todo[target.name].discard((target.expert, "down"))
                else:
                    half = param.shape[1] // 2
                    rows = slice(0, half) if target.part == "gate" else slice(half, 2 * half)
                    param[target.expert, rows].copy_(t)
                    todo[target.name].discard((target.expert, target.part))
            loaded.add(key)
    finally:
        for h in handles.values():
            h.__exit__(None, None, None)

    unused_scales = {k for k in keys if k.endswith("_scale_inv")} - loaded
    if unused_scales and config.use_mtp:
        raise BadInputError(f"unexpected tensor in checkpoint: {sorted(unused_scales)[0]}")
    unused_scales = {k for k in unused_scales if not is_mtp_key(k, config)}
    if unused_scales:
        raise BadInputError(f"unexpected tensor in checkpoint: {sorted(unused_scales)[0]}")
    for name in sorted(todo):
        if todo[name]:
            slot = sorted(todo[name], key=str)[0]
            if slot is None:
                raise BadInputError(f"checkpoint is missing tensor {name}")
            e, part = slot
            w = {"gate": "w1", "up": "w3", "down": "w2"}[part]
            layer = name.rsplit(".mlp.", 1)[0]
            raise BadInputError(
                f"checkpoint is missing tensor {layer}.block_sparse_moe.experts.{e}.{w}.weight "
                f"(or the fused {name})"
            )
    model.loaded_keys = loaded
    model.skipped_keys = skipped
    return model
