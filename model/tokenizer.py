"""Byte-level BPE tokenizers with the MiniMax-M2 special tokens, trained with `tokenizers`.

The special tokens come first, so their ids are fixed in every tokenizer we train:
``]~!b[`` 0 (bos), ``[e~[`` 1 (end of turn / eos), ``]~b]`` 2 (turn opener), ``]!p~[`` 3 (pad).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from model import chat
from model.data import DEFAULT_VOCAB_SIZE, corpus_paragraphs, load_corpus, tokenizer_path
from model.errors import BadInputError

SPECIAL_TOKENS = list(chat.SPECIAL_TOKENS)  # ids 0.. in this order
TOKENIZER_FILE = "tokenizer.json"


def train_tokenizer(texts: Iterable[str], vocab_size: int) -> Tokenizer:
    """Byte-level BPE over ``texts`` with the special tokens added first (ids 0..)."""
    if vocab_size < 256 + len(SPECIAL_TOKENS):
        raise ValueError(f"vocab_size must be >= {256 + len(SPECIAL_TOKENS)} for byte-level BPE")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return tok


def special_token_ids(tok: Tokenizer) -> dict[str, int]:
    return {t: tok.token_to_id(t) for t in SPECIAL_TOKENS}


def save_tokenizer(tok: Tokenizer, directory: str | Path) -> None:
    """tokenizer.json plus a small tokenizer_config.json naming bos/eos/pad."""
    from model.files import atomic_write_text

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    atomic_write_text(directory / TOKENIZER_FILE, tok.to_str())
    cfg = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": chat.BOS,
        "eos_token": chat.END_OF_TURN,
        "pad_token": chat.PAD,
        "added_tokens": SPECIAL_TOKENS,
        "model_max_length": 196608,
    }
    atomic_write_text(directory / "tokenizer_config.json", json.dumps(cfg, indent=2) + "\n")


def load_tokenizer(directory: str | Path) -> Tokenizer:
    path = Path(directory)
    if path.is_dir():
        path = path / TOKENIZER_FILE
    if not path.is_file():
        raise BadInputError(f"no tokenizer found: {path} does not exist")
    try:
        return Tokenizer.from_file(str(path))
    except Exception as exc:  # tokenizers raises a bare Exception on bad JSON
        raise BadInputError(f"cannot read tokenizer {path}: {str(exc).splitlines()[0]}") from exc


def default_tokenizer() -> Tokenizer:
    """The tokenizer shipped with the corpus (vocab 2048), the one the tiny preset uses."""
    return Tokenizer.from_file(str(tokenizer_path()))


def tokenize_corpus(tokenizer=None) -> torch.Tensor:
    """The whole corpus as one 1-D LongTensor of token ids (shipped tokenizer by default)."""
    tok = tokenizer if tokenizer is not None else default_tokenizer()
    return torch.tensor(tok.encode(load_corpus()).ids, dtype=torch.long)


def build_shipped_tokenizer() -> None:
    """Retrain tokenizer.json from corpus.txt (after regenerating the corpus):
    ``python -c "from model.tokenizer import build_shipped_tokenizer as b; b()"``."""
    tok = train_tokenizer(corpus_paragraphs(), DEFAULT_VOCAB_SIZE)
    tokenizer_path().write_text(tok.to_str(), encoding="utf-8")
