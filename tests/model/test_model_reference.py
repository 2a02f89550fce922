"""Our logits against transformers' MiniMaxM2ForCausalLM on the same weights: the fused layout,
the released per-expert layout and FP8 block-quantised weights; and checkpoint bad input."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from model import MiniMaxM2ForCausalLM
from model.checkpoint import dequantize_fp8_blocks, quantize_fp8_blocks
from workbench.errors import BadInputError

TOL = 1e-4


def _ids(n=2, t=13, seed=1):
    return torch.randint(0, 256, (n, t), generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def ckpts(hf_model, tmp_path_factory):
    root = tmp_path_factory.mktemp("ckpt")
    per_expert = root / "per_expert"
    hf_model.save_pretrained(per_expert)  # transformers writes the released per-expert names
    fused = root / "fused"
    fused.mkdir()
    shutil.copy(per_expert / "config.json", fused)
    save_file(
        {k: v.contiguous() for k, v in hf_model.state_dict().items()}, fused / "model.safetensors"
    )
    return root


def _logits(model, ids):
    with torch.no_grad():
        return model(ids).logits


def test_per_expert_checkpoint_matches_transformers(hf_model, ckpts):
    keys = load_file(ckpts / "per_expert" / "model.safetensors").keys()
    assert any(".block_sparse_moe.experts.3.w1.weight" in k for k in keys)  # really per-expert
    ours = MiniMaxM2ForCausalLM.from_pretrained(ckpts / "per_expert")
    assert ours.loaded_keys == set(keys)
    ids = _ids()
    assert (_logits(ours, ids) - _logits(hf_model, ids)).abs().max() <= TOL


def test_fused_checkpoint_matches_transformers_all_expert_paths(hf_model, ckpts):
    ids = _ids()
    ref = _logits(hf_model, ids)
    for backend in ("reference", "grouped", "auto"):
        ours = MiniMaxM2ForCausalLM.from_pretrained(ckpts / "fused", moe_backend=backend)
        assert any("experts.gate_up_proj" in k for k in ours.loaded_keys)
        assert (_logits(ours, ids) - ref).abs().max() <= TOL, backend


def test_fp8_block_checkpoint_matches_dequantised_reference(hf_model, ckpts, tmp_path):
    import transformers

    sd = load_file(ckpts / "per_expert" / "model.safetensors")
    quant, dequant = {}, {}
    for k, v in sd.items():
        # gate, bias, lm_head, norms and embeddings stay unquantised (as in the release)
        if v.ndim == 2 and not any(s in k for s in ("gate.weight", "lm_head", "embed", "norm")):
            q, s = quantize_fp8_blocks(v)  # dims < 128: one partial block per matrix
            quant[k], quant[k + "_scale_inv"] = q, s
            dequant[k] = dequantize_fp8_blocks(q, s)
            assert q.dtype == torch.float8_e4m3fn
        else:
            quant[k] = dequant[k] = v
    for name, tensors in (("fp8", quant), ("deq", dequant)):
        (tmp_path / name).mkdir()
        shutil.copy(ckpts / "per_expert" / "config.json", tmp_path / name)
        save_file(tensors, tmp_path / name / "model.safetensors")
    ref = transformers.MiniMaxM2ForCausalLM.from_pretrained(tmp_path / "deq").eval()
    ours = MiniMaxM2ForCausalLM.from_pretrained(tmp_path / "fp8")
    ids = _ids()
    r = _logits(ref, ids)
    assert (_logits(ours, ids) - r).abs().max() <= TOL
    # and the quantisation really changed the weights (the test would notice a skipped scale)
    assert (r - _logits(hf_model, ids)).abs().max() > 1e-3


def test_fp8_partial_blocks_roundtrip():
    w = torch.randn(3, 200, 130)
    q, s = quantize_fp8_blocks(w)
    assert s.shape == (3, 2, 2)
    err = (dequantize_fp8_blocks(q, s) - w).abs().max()
    assert err < 0.1 * w.abs().max()


def test_transformers_loads_what_we_save(hf_model, ckpts, tmp_path):
    import transformers

    ours = MiniMaxM2ForCausalLM.from_pretrained(ckpts / "fused")
    ours.save_pretrained(tmp_path / "ours")
    back = transformers.MiniMaxM2ForCausalLM.from_pretrained(tmp_path / "ours").eval()
    ids = _ids()
    assert (_logits(back, ids) - _logits(ours, ids)).abs().max() <= TOL


def test_sharded_save_roundtrip(ckpts, tmp_path):
    ours = MiniMaxM2ForCausalLM.from_pretrained(ckpts / "fused")
    ours.save_pretrained(tmp_path / "s", max_shard_bytes=100_000)
    index = json.loads((tmp_path / "s" / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1
    back = MiniMaxM2ForCausalLM.from_pretrained(tmp_path / "s")
    ids = _ids()
    assert torch.equal(_logits(back, ids), _logits(ours, ids))


# ---------------------------------------------------------------------------- bad input
def _copy(ckpts, tmp_path, name="per_expert"):
    dst = tmp_path / "c"
    shutil.copytree(ckpts / name, dst)
    return dst


def _edit(path, fn):
    sd = load_file(path)
    fn(sd)
    save_file(sd, path)


def test_missing_tensor_is_named(ckpts, tmp_path):
    d = _copy(ckpts, tmp_path)
    key = "model.layers.1.block_sparse_moe.experts.5.w3.weight"
    _edit(d / "model.safetensors", lambda sd: sd.pop(key))
    with pytest.raises(BadInputError, match=r"missing tensor .*layers\.1.*experts\.5\.w3"):
        MiniMaxM2ForCausalLM.from_pretrained(d)


def test_missing_plain_tensor_is_named(ckpts, tmp_path):
    d = _copy(ckpts, tmp_path, "fused")
    _edit(d / "model.safetensors", lambda sd: sd.pop("model.layers.0.self_attn.k_norm.weight"))
    with pytest.raises(BadInputError, match=r"missing tensor model\.layers\.0\.self_attn\.k_norm"):
        MiniMaxM2ForCausalLM.from_pretrained(d)


def test_extra_tensor_is_named(ckpts, tmp_path):
    d = _copy(ckpts, tmp_path)
    _edit(d / "model.safetensors", lambda sd: sd.update({"model.foo.weight": torch.zeros(2)}))
    with pytest.raises(BadInputError, match=r"unexpected tensor .*model\.foo\.weight"):
        MiniMaxM2ForCausalLM.from_pretrained(d)


def test_wrong_shape_is_named(ckpts, tmp_path):
    d = _copy(ckpts, tmp_path)
    key = "model.layers.0.self_attn.q_proj.weight"
    _edit(d / "model.safetensors", lambda sd: sd.update({key: torch.zeros(3, 64)}))
    with pytest.raises(BadInputError, match=r"q_proj\.weight has shape \[3, 64\], expected"):
        MiniMaxM2ForCausalLM.from_pretrained(d)


def test_corrupt_safetensors(ckpts, tmp_path):
    d = _copy(ckpts, tmp_path)
    (d / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    with pytest.raises(BadInputError, match="corrupt safetensors file model.safetensors"):
        MiniMaxM2ForCausalLM.from_pretrained(d)


def test_truncated_safetensors(ckpts, tmp_path):
    d = _copy(ckpts, tmp_path)
    data = (d / "model.safetensors").read_bytes()
    (d / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(BadInputError, match="corrupt safetensors file"):
        MiniMaxM2ForCausalLM.from_pretrained(d)


def test_missing_shard(ckpts, tmp_path):
    ours = MiniMaxM2ForCausalLM.from_pretrained(ckpts / "fused")
    ours.save_pretrained(tmp_path / "s", max_shard_bytes=100_000)
    shard = sorted((tmp_path / "s").glob("model-*.safetensors"))[1]
    shard.unlink()
    with pytest.raises(BadInputError, match=f"missing shard {shard.name}"):
        MiniMaxM2ForCausalLM.from_pretrained(tmp_path / "s")


def test_directory_without_config(tmp_path):
    with pytest.raises(BadInputError, match="no config.json"):
        MiniMaxM2ForCausalLM.from_pretrained(tmp_path)


def test_inconsistent_config(ckpts, tmp_path):
    d = _copy(ckpts, tmp_path)
    cfg = json.loads((d / "config.json").read_text())
    cfg["num_key_value_heads"] = 3
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(BadInputError, match="num_key_value_heads"):
        MiniMaxM2ForCausalLM.from_pretrained(d)
