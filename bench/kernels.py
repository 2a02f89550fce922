"""Kernel benchmark: fused MoE, router and tree attention, each against its baselines.

    python bench/kernels.py            # GPU: MiniMax-M2 layer shapes (`make bench-gpu`)
    python bench/kernels.py --tiny     # CPU smoke run in well under a minute (`make bench`)

Every row is timed in the same process, side by side, and printed with TFLOP/s and its speed
ratio to the row's baseline (the reference loop for the MoE, PyTorch for the router, SDPA with
a dense mask for tree attention). Nothing here asserts a speed.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from collections.abc import Callable

if __name__ == "__main__":  # run as a script: bench/ would shadow the `kernels` package
    _here = os.path.dirname(os.path.abspath(__file__))
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != _here]
    sys.path.insert(0, os.path.dirname(_here))

import torch

from kernels import PrefixTree, fused_moe, sigmoid_topk, tree_attention

# ---------------------------------------------------------------------------------------------
# timing


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench_ms(fn: Callable[[], object], device: torch.device, reps: int, warmup: int = 1) -> float:
    """Median wall time of ``fn`` in milliseconds (after warm-up; GPU work synchronised)."""
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    times.sort()
    return times[len(times) // 2] * 1e3


class Table:
    """Rows of one comparison; the first backend of each case is the baseline (1.00x)."""

    def __init__(self, title: str, device: torch.device):
        # TFLOP/s on the GPU; GFLOP/s on the CPU, where TFLOP/s would print as zeros
        self.unit, self.scale = ("TFLOP/s", 1e12) if device.type == "cuda" else ("GFLOP/s", 1e9)
        print(f"\n## {title}")
        print(f"{'case':<28} {'backend':<18} {'ms':>10} {self.unit:>9} {'vs base':>8}")

    def row(self, case: str, backend: str, ms: float | None, flops: float, base: float | None):
        if ms is None:
            print(f"{case:<28} {backend:<18} {'-':>10} {'-':>9} {'-':>8}")
            return
        tflops = flops / (ms * 1e-3) / self.scale
        ratio = f"{base / ms:.2f}x" if base else "1.00x"
        print(f"{case:<28} {backend:<18} {ms:>10.3f} {tflops:>9.3f} {ratio:>8}", flush=True)

    def note(self, case: str, backend: str, why: str):
        print(f"{case:<28} {backend:<18} {why}", flush=True)


# ---------------------------------------------------------------------------------------------
# fused MoE


def _moe_inputs(T, H, I, E, K, dtype, device, grad=False):
    g = torch.Generator(device="cpu").manual_seed(0)
    x = torch.randn(T, H, generator=g).to(device, dtype)
    w_gate_up = (torch.randn(E, 2 * I, H, generator=g) / math.sqrt(H)).to(device, dtype)
    w_down = (torch.randn(E, H, I, generator=g) / math.sqrt(I)).to(device, dtype)
    logits = torch.randn(T, E, generator=g).to(device)
    weights, ids = sigmoid_topk(logits, None, K, backend="reference")
    if grad:
        for t in (x, w_gate_up, w_down, weights):
            t.requires_grad_()
    return x, w_gate_up, w_down, weights, ids


def _vllm_moe() -> Callable | None:
    try:
        from vllm.model_executor.layers.fused_moe import fused_experts
    except Exception:  # vLLM absent or not importable here
        return None

    def run(x, w_gate_up, w_down, weights, ids):
        return fused_experts(x, w_gate_up, w_down, weights, ids.to(torch.int32), inplace=False)

    return run


def bench_moe(shapes, backends, dtype, device, reps, train: bool) -> None:
    mode = "forward+backward" if train else "forward"
    table = Table(f"fused MoE ({mode}, {str(dtype).removeprefix('torch.')})", device)
    vllm = _vllm_moe() if device.type == "cuda" and not train else None
    for T, H, I, E, K in shapes:
        case = f"T={T} H={H} I={I} E={E} k={K}"
        flops = 6.0 * T * K * H * I * (3 if train else 1)
        inputs = _moe_inputs(T, H, I, E, K, dtype, device, grad=train)
        base = None
        for name in backends:

            def step(name=name, inputs=inputs):
                out = fused_moe(*inputs, backend=name)
                if train:
                    out.float().sum().backward()
                return out

            with torch.set_grad_enabled(train):
                ms = bench_ms(step, device, reps)
            base = base or ms
            table.row(case, name, ms, flops, base)
        if vllm is not None:
            try:
                with torch.no_grad():
                    ms = bench_ms(lambda inputs=inputs: vllm(*inputs), device, reps)
                table.row(case, "vllm fused_experts", ms, flops, base)
            except Exception as exc:  # a vLLM API drift must not hide our own numbers
                table.note(case, "vllm fused_experts", f"failed: {type(exc).__name__}: {exc}")
        elif device.type == "cuda" and not train:
            table.note(case, "vllm fused_experts", "vLLM not installed")


# ---------------------------------------------------------------------------------------------
# router


def bench_router(shapes, backends, device, reps) -> None:
    table = Table("sigmoid top-k router", device)
    for T, E, K in shapes:
        g = torch.Generator(device="cpu").manual_seed(1)
        logits = torch.randn(T, E, generator=g).to(device)
        bias = (torch.randn(E, generator=g) * 0.1).to(device)
        flops = 4.0 * T * E  # sigmoid + bias + a compare per score: bandwidth-bound anyway
        base = None
        for name in backends:
            ms = bench_ms(
                lambda n=name, a=(logits, bias, K): sigmoid_topk(*a, backend=n), device, reps
            )
            base = base or ms
            table.row(f"T={T} E={E} k={K}", name, ms, flops, base)


# ---------------------------------------------------------------------------------------------
# tree attention


def rl_tree(num_tokens: int, branches: int) -> PrefixTree:
    """A shared prompt (1/4 of the tokens) followed by ``branches`` sampled continuations."""
    prompt = num_tokens // 4
    each = (num_tokens - prompt) // branches
    lengths = [prompt] + [each] * (branches - 1) + [num_tokens - prompt - each * (branches - 1)]
    return PrefixTree(parent=(-1,) + (0,) * branches, lengths=tuple(lengths))


def bench_tree_attention(sizes, heads, head_dim, backends, dtype, device, reps, train) -> None:
    mode = "forward+backward" if train else "forward"
    table = Table(f"tree attention ({mode}, {str(dtype).removeprefix('torch.')})", device)
    hq, hkv = heads
    for n in sizes:
        tree = rl_tree(n, branches=8)
        visible = int(tree.dense_mask().sum())
        flops = 4.0 * hq * head_dim * visible * (3.5 if train else 1.0)
        g = torch.Generator(device="cpu").manual_seed(2)
        q = torch.randn(1, hq, n, head_dim, generator=g).to(device, dtype)
        k = torch.randn(1, hkv, n, head_dim, generator=g).to(device, dtype)
        v = torch.randn(1, hkv, n, head_dim, generator=g).to(device, dtype)
        if train:
            for t in (q, k, v):
                t.requires_grad_()
        base = None
        case = f"N={n} heads={hq}/{hkv} D={head_dim}"
        for name in backends:

            def step(name=name, qkv=(q, k, v), tree=tree):
                out = tree_attention(*qkv, tree, backend=name)
                if train:
                    out.float().sum().backward()

            try:
                with torch.set_grad_enabled(train):
                    ms = bench_ms(step, device, reps)
            except torch.OutOfMemoryError:
                table.note(case, name, "out of memory")
                if device.type == "cuda":
                    torch.cuda.empty_cache()
                continue
            base = base or ms
            table.row(case, "sdpa dense mask" if name == "torch" else name, ms, flops, base)


# ---------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="bench/kernels.py", description=__doc__)
    parser.add_argument("--tiny", action="store_true", help="small CPU shapes (CI smoke run)")
    parser.add_argument("--reps", type=int, default=None)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    args = parser.parse_args(argv)
    if args.threads or args.tiny:
        # --tiny: one thread by default; on a shared, oversubscribed CPU two spinning OpenMP
        # threads made every row 5-10x slower and the ratios noise
        torch.set_num_threads(args.threads or 1)

    cuda = torch.cuda.is_available() and not args.tiny
    device = torch.device("cuda" if cuda else "cpu")
    print(f"# kernels benchmark on {torch.cuda.get_device_name() if cuda else 'CPU'}"
          f" (torch {torch.__version__}, {torch.get_num_threads()} CPU threads)")  # fmt: skip
    if cuda:
        reps = args.reps or 20
        moe_shapes = [(t, 3072, 1536, 256, 8) for t in (1, 16, 128, 512, 1024, 4096, 8192)]
        bench_moe(moe_shapes, ["reference", "torch", "triton"], torch.bfloat16, device, reps, False)
        bench_moe(moe_shapes[-3:-1], ["reference", "torch", "triton"], torch.bfloat16, device, 5, True)  # fmt: skip
        bench_router(
            [(t, 256, 8) for t in (1, 1024, 8192, 65536)], ["torch", "triton"], device, reps
        )
        sizes = [1024, 2048, 4096, 8192, 16384]
        for train in (False, True):
            bench_tree_attention(sizes, (48, 8), 128, ["torch", "triton"], torch.bfloat16, device, 5 if train else reps, train)  # fmt: skip
        return

    # CPU: the PyTorch paths only (Triton needs a GPU, or the far-too-slow interpreter)
    reps = args.reps or 3
    shapes = [(2048, 256, 128, 16, 4), (256, 128, 64, 64, 8)]
    for train in (False, True):
        bench_moe(shapes, ["reference", "torch"], torch.float32, device, reps, train)
    bench_router([(2048, 64, 8)], ["reference"], device, reps)
    bench_tree_attention([512], (4, 2), 64, ["reference", "torch"], torch.float32, device, reps, True)  # fmt: skip
    print("\n(triton rows need CUDA: run `make bench-gpu` on a GPU machine)")


if __name__ == "__main__":
    main(sys.argv[1:])
