"""Training-step speed on the CPU: our MiniMax-M2 vs transformers' MiniMaxM2ForCausalLM holding
identical weights, measured side by side in one run; and the MoE layer alone (grouped vs loop).

    python -m bench.model_step [--steps N] [--presets tiny,small]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from model import MiniMaxM2Config, MiniMaxM2ForCausalLM

# (batch, seq) per preset: small stays short so `make bench` finishes in a couple of minutes.
SHAPES = {"tiny": (4, 128), "small": (1, 64)}


# CPU time of this process, not wall time: on a shared machine other processes' load inflates
# wall time at random, while the CPU seconds a step needs stay comparable between the models.
clock = time.process_time


def _time_step(model, ids, steps: int) -> float:
    """Median CPU seconds of forward + backward (+ zeroing grads), after one warm-up step."""
    times = []
    for i in range(steps + 1):
        t0 = clock()
        out = model(input_ids=ids, labels=ids)
        out.loss.backward()
        model.zero_grad(set_to_none=True)
        if i:
            times.append(clock() - t0)
    return statistics.median(times)


def _hf_twin(ours: MiniMaxM2ForCausalLM, experts: str):
    """transformers' model with our weights; ``experts`` is its experts implementation:
    "grouped_mm" (its default in transformers 5.x) or "eager" (a Python loop over experts)."""
    import transformers

    cfg = transformers.MiniMaxM2Config(**ours.config.to_dict())
    cfg._experts_implementation = experts
    hf = transformers.MiniMaxM2ForCausalLM(cfg)
    missing, unexpected = hf.load_state_dict(ours.state_dict(), strict=False)
    if missing or unexpected:
        raise RuntimeError(f"weights differ: missing {missing}, unexpected {unexpected}")
    return hf.train()


def bench_model(preset: str, steps: int, repeats: int) -> dict[str, float]:
    torch.manual_seed(0)
    cfg = MiniMaxM2Config.from_preset(preset, moe_backend="grouped")
    ours = MiniMaxM2ForCausalLM(cfg).train()
    rivals = {f"transformers[{impl}]": _hf_twin(ours, impl) for impl in ("grouped_mm", "eager")}
    B, T = SHAPES[preset]
    ids = torch.randint(0, cfg.vocab_size, (B, T), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():  # same weights, same answer
        ref = ours(ids).logits
        diffs = {k: (m(input_ids=ids).logits - ref).abs().max().item() for k, m in rivals.items()}
    # interleave the models so background load hits all alike; keep each one's best median
    times: dict[str, float] = {}
    for _ in range(repeats):
        for name, m in [("ours", ours), *rivals.items()]:
            times[name] = min(times.get(name, float("inf")), _time_step(m, ids, steps))
    a = times["ours"]
    print(f"{preset} train step (fwd+bwd) B={B} T={T}: ours[grouped] {a * 1e3:.1f} ms", flush=True)
    ratios = {}
    for name in rivals:
        ratios[name] = times[name] / a
        print(
            f"  vs {name:26s} {times[name] * 1e3:9.1f} ms  ratio x{ratios[name]:.2f}"
            f"  (max|dlogits| {diffs[name]:.1e})",
            flush=True,
        )
    return ratios


def bench_moe_layer(steps: int) -> float:
    from kernels import fused_moe, sigmoid_topk

    torch.manual_seed(0)
    cfg = MiniMaxM2Config.from_preset("small")
    T, H, I, E, k = 512, cfg.hidden_size, cfg.intermediate_size, cfg.num_local_experts, 2
    x = torch.randn(T, H, requires_grad=True)
    wgu = (torch.randn(E, 2 * I, H) * 0.02).requires_grad_()
    wd = (torch.randn(E, H, I) * 0.02).requires_grad_()
    w, ids = sigmoid_topk(torch.randn(T, E), torch.zeros(E), k)
    res = {}
    for backend in ("reference", "torch"):
        times = []
        for i in range(steps + 1):
            t0 = clock()
            fused_moe(x, wgu, wd, w, ids, backend=backend).square().mean().backward()
            x.grad = wgu.grad = wd.grad = None
            if i:
                times.append(clock() - t0)
        res[backend] = statistics.median(times)
    ratio = res["reference"] / res["torch"]
    print(
        f"MoE layer fwd+bwd T={T} H={H} I={I} E={E} k={k}: grouped {res['torch'] * 1e3:.1f} ms | "
        f"reference loop {res['reference'] * 1e3:.1f} ms | speed-up x{ratio:.2f}",
        flush=True,
    )
    return ratio


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="bench.model_step")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--presets", default="tiny,small")
    args = parser.parse_args(argv)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; times are CPU ms/step")
    for preset in args.presets.split(","):
        bench_model(preset, args.steps, args.repeats)
    bench_moe_layer(args.steps)


if __name__ == "__main__":
    import sys

    main(sys.argv[1:])
