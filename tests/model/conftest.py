"""Shared fixtures: a tiny transformers reference model and its per-expert checkpoint."""

from __future__ import annotations

import pytest
import torch
from m2_testlib import TINY_HF


@pytest.fixture(scope="module")
def hf_model():
    """transformers' MiniMaxM2ForCausalLM with random weights and a non-zero routing bias."""
    import transformers  # a dev dependency: the reference we did not write

    torch.manual_seed(0)
    cfg = transformers.MiniMaxM2Config(**TINY_HF)
    m = transformers.MiniMaxM2ForCausalLM(cfg).eval()
    with torch.no_grad():
        for name, buf in m.named_buffers():
            if "e_score_correction_bias" in name:
                buf.uniform_(-0.05, 0.05)
    return m
