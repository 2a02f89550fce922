"""The shipped English training corpus (written for this project) and its tokenizer file.
Plain data: the code that reads and trains tokenizers (``default_tokenizer``,
``tokenize_corpus``, ``build_shipped_tokenizer``) is model.tokenizer."""

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


def train_val_split(ids: torch.Tensor, val_fraction: float = 0.1):
    """Contiguous split: the last ``val_fraction`` of the tokens is validation."""
    n = int(len(ids) * (1 - val_fraction))
    return ids[:n], ids[n:]
