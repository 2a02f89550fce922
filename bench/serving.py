"""Generation throughput: our server (continuous batching, KV cache, HTTP included) vs
transformers' `generate` on the same tiny checkpoint, at batch 1 and 8, side by side.

    python -m bench.serving [--new-tokens 32] [--prompt-len 32] [--threads N]

Batch B for our server means B concurrent HTTP requests (each its own prompt); for
transformers it is one `generate` call on B left-padded-free prompts of equal length. Both
decode greedily exactly `--new-tokens` tokens per sequence (ignore_eos / min_new_tokens).
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


def bench_ours(
    path: Path, batches: list[int], prompt_len: int, new_tokens: int
) -> dict[int, float]:
    import httpx

    from model.serving import ThreadedServer, build_app

    server = ThreadedServer(build_app(path, model_name="tiny", max_batch=max(batches)))
    url = server.url + "/v1/completions"

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
    finally:
        server.close()
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


if __name__ == "__main__":
    main(sys.argv[1:])
