"""Generation throughput: our server (continuous batching, KV cache, HTTP included) vs
transformers' `generate` on the same tiny checkpoint, at batch 1 and 8, side by side.

    python -m bench.serving [--new-tokens 32] [--prompt-len 32] [--threads N] [--repeats 15]

Batch B for our server means B concurrent HTTP requests (each its own prompt, one client with
a kept-alive connection per worker, as the `openai` client keeps them); for transformers it is
one `generate` call on the B prompts (left-padded to one length if they differ; here they are
equal), with its KV cache. Both decode greedily exactly `--new-tokens` tokens per sequence
(ignore_eos / min_new_tokens), fp32, the same torch threads, and count generated tokens only.
The two sides alternate round by round (`--repeats` rounds; each row keeps its best round on
both sides), so a change in machine load hits both. A last row uses requests of mixed lengths:
our engine retires each as it finishes, a static `generate` batch runs to its longest member;
there only the wanted tokens count.
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


class OurServer:
    """`workbench serve` in its own process (as in use: the benchmark's client threads must not
    compete with the engine for one GIL), driven over HTTP by B concurrent clients."""

    def __init__(self, path: Path, max_batch: int) -> None:
        import os
        import socket
        import subprocess

        import httpx

        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        env = dict(os.environ)
        env["OMP_NUM_THREADS"] = str(torch.get_num_threads())
        cmd = [sys.executable, "-m", "workbench.cli.main", "serve", "--model", str(path)]
        cmd += ["--port", str(port), "--max-batch", str(max_batch), "--name", "tiny"]
        self.proc = subprocess.Popen(
            cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        base = f"http://127.0.0.1:{port}"
        self.url = base + "/v1/completions"
        # One client, a kept-alive connection per worker: what is timed is the server, not
        # TCP handshakes or client construction.
        self.client = httpx.Client(timeout=600, limits=httpx.Limits(max_connections=64))
        self.pool = cf.ThreadPoolExecutor(max_batch)
        deadline = time.monotonic() + 300
        while True:
            try:
                if self.client.get(base + "/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.close()
                raise RuntimeError("the server did not start")
            time.sleep(0.5)

    def _one(self, prompt: list[int], n: int) -> int:
        body = {"prompt": prompt, "max_tokens": n, "temperature": 0, "ignore_eos": True}
        r = self.client.post(self.url, json=body)
        r.raise_for_status()
        return r.json()["usage"]["completion_tokens"]

    def run(self, prompts: list[list[int]], lengths: list[int]) -> tuple[int, float]:
        """(generated tokens, seconds from the first request sent to the last answer)."""
        t0 = time.perf_counter()
        tokens = sum(self.pool.map(self._one, prompts, lengths))
        return tokens, time.perf_counter() - t0

    def close(self) -> None:
        self.pool.shutdown()
        self.client.close()
        self.proc.terminate()
        self.proc.wait(30)


class Transformers:
    """transformers' MiniMax-M2 with `generate`: one call per batch, KV cache, left padding."""

    def __init__(self, path: Path) -> None:
        from transformers import MiniMaxM2ForCausalLM as HFModel
        from transformers.utils import logging

        logging.set_verbosity_error()
        self.model = HFModel.from_pretrained(str(path), dtype=torch.float32).eval()
        self.pad = self.model.config.pad_token_id or 0

    def run(self, prompts: list[list[int]], lengths: list[int]) -> tuple[int, float]:
        """A static batch runs to its longest member; only the wanted tokens count."""
        P = max(len(p) for p in prompts)
        ids = torch.full((len(prompts), P), self.pad, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, p in enumerate(prompts):  # left padding
            ids[i, P - len(p) :] = torch.tensor(p)
            mask[i, P - len(p) :] = 1
        n = max(lengths)
        t0 = time.perf_counter()
        with torch.no_grad():
            out = self.model.generate(
                ids,
                attention_mask=mask,
                max_new_tokens=n,
                min_new_tokens=n,
                do_sample=False,
                pad_token_id=self.pad,
            )
        seconds = time.perf_counter() - t0
        assert out.shape[1] - P == n
        return sum(lengths), seconds


def main(argv: list[str]) -> None:
    ap = argparse.ArgumentParser(prog="bench.serving", description=__doc__.splitlines()[0])
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--prompt-len", type=int, default=32)
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: default)")
    ap.add_argument("--repeats", type=int, default=15, help="alternating rounds; best kept")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    B = max(args.batches)
    rows = [(b, _prompts(b, args.prompt_len), [args.new_tokens] * b) for b in args.batches]
    rows.append(("mixed", _prompts(B, args.prompt_len), _mixed(B, args.new_tokens)))
    best: dict[tuple[str, object], float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        path = _checkpoint(Path(tmp))
        sides = {"ours": OurServer(path, B), "hf": Transformers(path)}
        try:
            # Warm-up, both sides, one full untimed round: threads, connections, allocator and
            # first-call setup (the first full round runs ~2x slower on either side).
            for side in sides.values():
                for _, prompts, lengths in rows:
                    side.run(prompts, lengths)
            for _ in range(args.repeats):
                for key, prompts, lengths in rows:
                    for name, side in sides.items():
                        tokens, seconds = side.run(prompts, lengths)
                        rate = tokens / seconds
                        best[name, key] = max(best.get((name, key), 0.0), rate)
        finally:
            sides["ours"].close()
    print(
        f"tiny preset, prompt {args.prompt_len} tokens, {args.new_tokens} new tokens per sequence, "
        f"greedy, fp32, {torch.get_num_threads()} torch threads, best of {args.repeats} "
        "alternating rounds"
    )
    print(f"{'batch':>5}  {'ours (tok/s)':>13}  {'transformers (tok/s)':>21}  {'ratio':>6}")
    for b in args.batches:
        ours, hf = best["ours", b], best["hf", b]
        print(f"{b:>5}  {ours:>13.1f}  {hf:>21.1f}  {ours / hf:>5.2f}x")
    ours, hf = best["ours", "mixed"], best["hf", "mixed"]
    lengths = _mixed(B, args.new_tokens)
    print(
        f"{B:>5}  {ours:>13.1f}  {hf:>21.1f}  {ours / hf:>5.2f}x"
        f"   (mixed lengths {lengths[0]}..{lengths[-1]}: useful tokens/s)"
    )


if __name__ == "__main__":
    main(sys.argv[1:])
