"""The shipped English training corpus (written for this project) and its tokenizer."""

from __future__ import annotations

from pathlib import Path

import torch

DATA_DIR = Path(__file__).resolve().parent
DEFAULT_VOCAB_SIZE = 2048


def corpus_path() -> Path:
    return DATA_DIR / "corpus.txt"


def tokenizer_path() -> Path:
    return DATA_DIR / "tokenizer.json"


def load_corpus() -> str:
    return corpus_path().read_text(encoding="utf-8")


def corpus_paragraphs() -> list[str]:
    return [p.strip() + "\n" for p in load_corpus().split("\n\n") if p.strip()]


def tokenize_corpus(tokenizer=None) -> torch.Tensor:
    """The whole corpus as one 1-D LongTensor of token ids (shipped tokenizer by default)."""
    from model.tokenizer import default_tokenizer

    tok = tokenizer if tokenizer is not None else default_tokenizer()
    return torch.tensor(tok.encode(load_corpus()).ids, dtype=torch.long)


def train_val_split(ids: torch.Tensor, val_fraction: float = 0.1):
    """Contiguous split: the last ``val_fraction`` of the tokens is validation."""
    n = int(len(ids) * (1 - val_fraction))
    return ids[:n], ids[n:]


def build_shipped_tokenizer() -> None:
    """Retrain tokenizer.json from corpus.txt (after regenerating the corpus):
    ``python -c "from model.data import build_shipped_tokenizer as b; b()"``."""
    from model.tokenizer import train_tokenizer

    tok = train_tokenizer(corpus_paragraphs(), DEFAULT_VOCAB_SIZE)
    tokenizer_path().write_text(tok.to_str(), encoding="utf-8")
