"""The policy: our MoE (MiniMax-M2 blocks) sized to drive the supervisor, and its tokenizer.

``new_policy(DIR)`` writes a fresh checkpoint of the ``policy`` preset (``model.config``): GQA,
QK-norm, partial RoPE, sigmoid top-k router, a context that holds the supervisor's longest
episode with headroom, small enough to train on 2 CPU cores in minutes. Its tokenizer is a
byte-level BPE trained on the scaffold's own text (the supervisor prompts, the tool specs, the
playbook, the knob and metric maps, the doctor's finding kinds) and the shipped corpus — the
words every episode is made of, and nothing from any scenario, so held-out runs cannot leak
in through the vocabulary.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from workbench.errors import BadInputError

POLICY_VOCAB = 4096


def tokenizer_texts() -> list[str]:
    """What the policy tokenizer learns its merges from: the scaffold, the tool specs, the
    corpus. Deterministic: the same tokenizer on every machine."""
    from model.data import corpus_paragraphs
    from scaffold.loader import PACKAGED
    from workbench.supervisor.tools import DIAGNOSE_TOOLS, PROPOSE_TOOLS

    texts = [p.read_text() for p in sorted(PACKAGED.rglob("*.yaml"))]
    specs = [t.spec() for t in (*DIAGNOSE_TOOLS, *PROPOSE_TOOLS)]
    texts += [json.dumps(s) for s in specs] * 4  # tool specs are in every prompt: weigh them up
    return texts + list(corpus_paragraphs())


def policy_tokenizer():
    from model.tokenizer import train_tokenizer

    return train_tokenizer(tokenizer_texts(), POLICY_VOCAB)


def new_policy(path: Path, seed: int = 0, **overrides):
    """A fresh ``policy``-preset checkpoint with its tokenizer in ``path`` (created)."""
    from model.config import MiniMaxM2Config
    from model.modeling import MiniMaxM2ForCausalLM

    path = Path(path)
    if path.exists() and any(path.iterdir()):
        raise BadInputError(f"{path} is not empty; a new policy needs a new folder")
    tok = policy_tokenizer()
    torch.manual_seed(seed)
    cfg = MiniMaxM2Config.from_preset("policy", vocab_size=tok.get_vocab_size(), **overrides)
    model = MiniMaxM2ForCausalLM(cfg)
    save_policy(model, tok, path)
    return model, tok


def load_policy(path: Path):
    """(model, tokenizer) of a checkpoint folder; a clear error for anything else."""
    from model.modeling import MiniMaxM2ForCausalLM
    from model.tokenizer import load_tokenizer

    path = Path(path)
    if not (path / "config.json").exists():
        raise BadInputError(f"{path}: not a policy checkpoint (no config.json)")
    model = MiniMaxM2ForCausalLM.from_pretrained(path)
    model.set_moe_backend("grouped")
    return model, load_tokenizer(path)


def save_policy(model, tok, path: Path) -> None:
    from model.tokenizer import save_tokenizer

    model.save_pretrained(path)
    save_tokenizer(tok, path)


def context_of(path: Path) -> int:
    return int(json.loads((Path(path) / "config.json").read_text())["max_position_embeddings"])
