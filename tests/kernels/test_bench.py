"""bench/kernels.py runs its CPU paths and prints one row per backend (timings not asserted)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch

# loaded by path: bench/ is a folder of scripts, not an installed package
_PATH = Path(__file__).resolve().parents[2] / "bench" / "kernels.py"
_spec = importlib.util.spec_from_file_location("bench_kernels_under_test", _PATH)
bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench)


def test_rl_tree_is_a_prompt_plus_branches():
    tree = bench.rl_tree(1000, branches=8)
    assert tree.num_tokens == 1000 and tree.lengths[0] == 250
    assert tree.parent == (-1,) + (0,) * 8


def test_bench_rows_print_ratios(capsys):
    cpu = torch.device("cpu")
    bench.bench_moe([(8, 16, 8, 4, 2)], ["reference", "torch"], torch.float32, cpu, 1, True)
    bench.bench_tree_attention([32], (2, 1), 16, ["reference", "torch"], torch.float32, cpu, 1, True)  # fmt: skip
    out = capsys.readouterr().out
    assert "fused MoE (forward+backward, float32)" in out
    rows = [line for line in out.splitlines() if line.startswith(("T=8", "N=32"))]
    assert len(rows) == 4
    assert all(line.rstrip().endswith("x") and "GFLOP/s" not in line for line in rows)
    assert any("sdpa dense mask" in line for line in rows)
