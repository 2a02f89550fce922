"""Parameter counts (analytic vs a meta-device instance), the shipped tokenizer and corpus, and
the `workbench model` CLI including its one-line errors."""

from __future__ import annotations

import json
import sys

import pytest
import torch
from typer.testing import CliRunner

from model import MiniMaxM2Config, MiniMaxM2ForCausalLM
from model.data import corpus_path
from model.params import count_params
from model.tokenizer import (
    SPECIAL_TOKENS,
    load_tokenizer,
    special_token_ids,
    tokenize_corpus,
    train_tokenizer,
)
from workbench.cli.main import app, main
from workbench.errors import BadInputError


def _meta_count(cfg: MiniMaxM2Config) -> tuple[int, int]:
    with torch.device("meta"):
        m = MiniMaxM2ForCausalLM(cfg)
    total = m.num_parameters(exclude_mtp=True)
    return total, m.num_parameters(exclude_mtp=False) - total


@pytest.mark.parametrize("preset", ["tiny", "small", "minimax-m2"])
def test_analytic_counts_match_meta_instance(preset):
    cfg = MiniMaxM2Config.from_preset(preset, use_mtp=True)
    counts = count_params(cfg)
    total, mtp = _meta_count(cfg)
    assert counts.total_params == total
    assert counts.mtp_params == mtp
    assert sum(c.total for c in counts.components) == total


def test_minimax_m2_reproduces_the_report():
    c = count_params(MiniMaxM2Config.from_preset("minimax-m2"))
    assert abs(c.total_params / 229.9e9 - 1) < 0.01
    assert abs(c.active_params_non_embedding / 9.8e9 - 1) < 0.01
    assert c.active_params == c.active_params_non_embedding + 2 * 200064 * 3072


def test_small_and_tiny_sizes():
    assert 80e6 < count_params(MiniMaxM2Config.from_preset("small")).total_params < 130e6
    assert 1e6 < count_params(MiniMaxM2Config.from_preset("tiny")).total_params < 10e6


# ---------------------------------------------------------------------------- tokenizer / data
def test_shipped_tokenizer_and_corpus():
    assert corpus_path().stat().st_size > 200_000
    ids = tokenize_corpus()
    cfg = MiniMaxM2Config.from_preset("tiny")
    assert ids.dtype == torch.long and len(ids) > 50_000 and int(ids.max()) < cfg.vocab_size
    tok = load_tokenizer(corpus_path().parent)
    sid = special_token_ids(tok)
    assert sid["]~!b["] == cfg.bos_token_id and sid["[e~["] == cfg.eos_token_id
    assert tok.get_vocab_size() <= cfg.vocab_size
    text = "]~!b[]~b]user\nHello there.<think>why</think>[e~["
    enc = tok.encode(text)
    assert enc.ids[:2] == [sid["]~!b["], sid["]~b]"]] and enc.ids[-1] == sid["[e~["]
    assert tok.decode(enc.ids, skip_special_tokens=False) == text


def test_train_tokenizer_adds_special_tokens_first():
    tok = train_tokenizer(["the cat sat on the mat. " * 50, "a dog ran. " * 50], 300)
    assert [tok.token_to_id(t) for t in SPECIAL_TOKENS] == list(range(len(SPECIAL_TOKENS)))
    assert tok.decode(tok.encode("the cat ran").ids) == "the cat ran"
    with pytest.raises(BadInputError, match="no tokenizer"):
        load_tokenizer("/nonexistent/dir")


# ---------------------------------------------------------------------------- CLI
runner = CliRunner()


def test_info_json_for_the_full_model():
    res = runner.invoke(app, ["model", "info", "--preset", "minimax-m2", "--json"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    assert abs(data["total_params"] / 229.9e9 - 1) < 0.01
    assert abs(data["active_params_non_embedding"] / 9.8e9 - 1) < 0.01
    assert data["active_params"] > data["active_params_non_embedding"]
    assert data["mtp_params"] > 0


def test_init_writes_a_loadable_checkpoint(tmp_path):
    out = tmp_path / "tiny"
    res = runner.invoke(
        app, ["model", "init", "--preset", "tiny", "--out", str(out), "--seed", "5", "--json"]
    )
    assert res.exit_code == 0, res.output
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= set(
        json.loads(res.stdout)["files"]
    )
    m = MiniMaxM2ForCausalLM.from_pretrained(out)
    assert m.num_parameters() == count_params(m.config).total_params
    tok = load_tokenizer(out)
    ids = torch.tensor([tok.encode("Once upon a time").ids])
    assert m(ids).logits.shape == (1, ids.shape[1], m.config.vocab_size)
    res2 = runner.invoke(app, ["model", "info", "--config", str(out / "config.json"), "--json"])
    assert json.loads(res2.stdout)["total_params"] == m.num_parameters()
    # same seed, same weights
    out2 = tmp_path / "again"
    runner.invoke(app, ["model", "init", "--preset", "tiny", "--out", str(out2), "--seed", "5"])
    assert (out / "model.safetensors").read_bytes() == (out2 / "model.safetensors").read_bytes()


@pytest.mark.parametrize(
    "args, message",
    [
        (["model", "info", "--preset", "gigantic"], "unknown preset 'gigantic'"),
        (["model", "info"], "exactly one of --preset"),
        (["model", "info", "--config", "BADCFG"], "num_key_value_heads"),
        (["model", "init", "--preset", "minimax-m2", "--out", "OUT"], "too large"),
    ],
)
def test_bad_input_is_one_line_without_traceback(tmp_path, monkeypatch, capsys, args, message):
    bad = tmp_path / "config.json"
    bad.write_text(
        json.dumps({**MiniMaxM2Config.from_preset("tiny").to_dict(), "num_key_value_heads": 3})
    )
    args = [str(bad) if a == "BADCFG" else str(tmp_path / "o") if a == "OUT" else a for a in args]
    # the console script's own entry point, in-process (a subprocess costs ~10 s of imports)
    monkeypatch.setattr(sys, "argv", ["workbench", *args])
    with pytest.raises(SystemExit) as exc:
        main()
    assert exc.value.code != 0
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert message in " ".join(err.split()) and len(err.strip().splitlines()) == 1
