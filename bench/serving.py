"""Generation throughput: our server (continuous batching, KV cache, HTTP included) vs
transformers' `generate` on the same tiny checkpoint, at batch 1 and 8, side by side.

    python -m bench.serving [--new-tokens 32] [--prompt-len 32] [--threads N]

Batch B for our server means B concurrent HTTP requests (each its own prompt); for
transformers it is one `generate` call on B prompts of equal length. Both decode greedily
exactly `--new-tokens` tokens per sequence (ignore_eos / min_new_tokens). A last row uses
requests of mixed lengths: our engine retires each as it finishes, a static `generate` batch
runs to its longest member; there only the wanted tokens count.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import sys
import tempfile
import time
from pathlib import Path

import torch


def _checkpoint(root: Path) -> Path:
    from model import MiniMaxM2Config, MiniMaxM2ForCausalLM
    from model.tokenizer import default_tokenizer, save_tokenizer

    with torch.device("meta"):
        model = MiniMaxM2ForCausalLM(MiniMaxM2Config.from_preset("tiny"))
    model.to_empty(device="cpu")
    model.init_weights(torch.Generator().manual_seed(0))
    model.save_pretrained(root / "tiny")
    save_tokenizer(default_tokenizer(), root / "tiny")
    return root / "tiny"


def _prompts(batch: int, length: int) -> list[list[int]]:
    g = torch.Generator().manual_seed(batch)
    return torch.randint(16, 2000, (batch, length), generator=g).tolist()


def _mixed(b: int, new_tokens: int) -> list[int]:
    """Per-request lengths for the mixed row: evenly from new_tokens/8 to 2*new_tokens."""
    lo, hi = max(1, new_tokens // 8), 2 * new_tokens
    return [lo + (hi - lo) * i // max(1, b - 1) for i in range(b)]


def bench_ours(
    path: Path, batches: list[int], prompt_len: int, new_tokens: int
) -> dict[int, float]:
    import os
    import socket
    import subprocess

    import httpx

    # The server runs in its own process, as it does in use: the client threads of this
    # benchmark must not compete with the engine for this process's GIL.
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = dict(os.environ)
    if torch.get_num_threads():
        env["OMP_NUM_THREADS"] = str(torch.get_num_threads())
    cmd = [sys.executable, "-m", "workbench.cli.main", "serve", "--model", str(path)]
    cmd += ["--port", str(port), "--max-batch", str(max(batches)), "--name", "tiny"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while True:
        try:
            if httpx.get(base + "/health", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError("the server did not start")
        time.sleep(0.5)
    url = base + "/v1/completions"

    def one(prompt: list[int], n: int) -> int:
        body = {"prompt": prompt, "max_tokens": n, "temperature": 0, "ignore_eos": True}
        r = httpx.post(url, json=body, timeout=600)
        r.raise_for_status()
        return r.json()["usage"]["completion_tokens"]

    out = {}
    try:
        one(_prompts(1, prompt_len)[0], 2)  # warm-up
        for b in batches:
            prompts = _prompts(b, prompt_len)
            t0 = time.perf_counter()
            with cf.ThreadPoolExecutor(b) as pool:
                tokens = sum(pool.map(lambda p: one(p, new_tokens), prompts))
            out[b] = tokens / (time.perf_counter() - t0)
        b = max(batches)
        prompts, lengths = _prompts(b, prompt_len), _mixed(b, new_tokens)
        t0 = time.perf_counter()
        with cf.ThreadPoolExecutor(b) as pool:
            tokens = sum(pool.map(one, prompts, lengths))
        out["mixed"] = tokens / (time.perf_counter() - t0)
    finally:
        proc.terminate()
        proc.wait(30)
    return out


def bench_transformers(
    path: Path, batches: list[int], prompt_len: int, new_tokens: int
) -> dict[int, float]:
    from transformers import MiniMaxM2ForCausalLM as HFModel
    from transformers.utils import logging

    logging.set_verbosity_error()
    model = HFModel.from_pretrained(str(path), dtype=torch.float32).eval()
    pad = model.config.pad_token_id or 0

    def run(ids: torch.Tensor, n: int) -> int:
        with torch.no_grad():
            out = model.generate(
                ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=n,
                min_new_tokens=n,
                do_sample=False,
                pad_token_id=pad,
            )
        return (out.shape[1] - ids.shape[1]) * ids.shape[0]

    run(torch.tensor(_prompts(1, prompt_len)), 2)  # warm-up
    out = {}
    for b in batches:
        ids = torch.tensor(_prompts(b, prompt_len))
        t0 = time.perf_counter()
        tokens = run(ids, new_tokens)
        out[b] = tokens / (time.perf_counter() - t0)
    # Mixed lengths: a static batch runs until its longest member; only wanted tokens count.
    b = max(batches)
    lengths = _mixed(b, new_tokens)
    ids = torch.tensor(_prompts(b, prompt_len))
    t0 = time.perf_counter()
    run(ids, max(lengths))
    out["mixed"] = sum(lengths) / (time.perf_counter() - t0)
    return out


def main(argv: list[str]) -> None:
    ap = argparse.ArgumentParser(prog="bench.serving", description=__doc__.splitlines()[0])
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--prompt-len", type=int, default=32)
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: default)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        path = _checkpoint(Path(tmp))
        ours = bench_ours(path, args.batches, args.prompt_len, args.new_tokens)
        hf = bench_transformers(path, args.batches, args.prompt_len, args.new_tokens)
    print(
        f"tiny preset, prompt {args.prompt_len} tokens, {args.new_tokens} new tokens per sequence, "
        f"greedy, {torch.get_num_threads()} torch threads"
    )
    print(f"{'batch':>5}  {'ours (tok/s)':>13}  {'transformers (tok/s)':>21}  {'ratio':>6}")
    for b in args.batches:
        print(f"{b:>5}  {ours[b]:>13.1f}  {hf[b]:>21.1f}  {ours[b] / hf[b]:>5.2f}x")
    b = max(args.batches)
    lengths = _mixed(b, args.new_tokens)
    print(
        f"{b:>5}  {ours['mixed']:>13.1f}  {hf['mixed']:>21.1f}  {ours['mixed'] / hf['mixed']:>5.2f}x"
        f"   (mixed lengths {lengths[0]}..{lengths[-1]}: useful tokens/s)"
    )


if __name__ == "__main__":
    main(sys.argv[1:])
