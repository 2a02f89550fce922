"""Continuous-batching generation engine over one in-process checkpoint.

One background thread owns the model. Each iteration it (1) admits waiting requests: their
prompts are left-padded and prefilled together in one forward (`Decoder.prefill`) that writes
their keys/values into free rows of the running batch's preallocated cache (`SlotCache`),
then (2) runs one decode step for every running sequence at once (`Decoder.step`: one forward,
one column written per layer), and (3) retires the sequences that finished (the last row moves
into the freed one). So requests that arrive while others are generating join the batch at the
next step instead of waiting for it to drain.

Invariant of the running batch: the cache holds every token of every row except the last
sampled one ("pending"), which is the next step's input. Rows carry their own positions, so a
row computes what it would alone (up to fp32 rounding of batched GEMMs).

Events: a sequence submitted with ``stream=True`` gets ("token", id, logprob) per token; every
sequence gets one ("done", reason) or ("error", message) at the end. Non-streaming callers
read ``out_ids``/``logprobs`` then, so the loop makes no per-token cross-thread calls for them.

Reload: `reload(path)` loads the new weights off the loop thread, then the loop stops admitting,
lets the running sequences finish on the weights they started with (so every token of a
completion comes from one policy), swaps, and resumes. Nothing in flight is dropped.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from model.generation import sample_next
from model.serving.batch import Decoder, SlotCache, move_last_into

Emit = Callable[[tuple], None]  # ("token", id, logprob) | ("done", reason) | ("error", message)


# (tokens generated so far, next-token logits (V,)) -> logits to sample from
LogitsProcessor = Callable[[list[int], torch.Tensor], torch.Tensor]


@dataclass
class SamplingParams:
    max_new_tokens: int = 256
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None
    stop_token_ids: tuple[int, ...] = ()
    ignore_eos: bool = False
    logits_processor: LogitsProcessor | None = None  # constrains sampling (forced tool calls)


@dataclass
class Sequence:
    prompt_ids: list[int]
    params: SamplingParams
    emit: Emit
    id: int = 0
    out_ids: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    finish_reason: str | None = None
    weights_version: int = 0
    cancelled: bool = False
    generator: torch.Generator | None = None
    stream: bool = True  # per-token events; False: only the final one

    @property
    def position(self) -> int:  # position of the pending token
        return len(self.prompt_ids) + len(self.out_ids) - 1

    def cancel(self) -> None:
        self.cancelled = True


def load_model(path: str | Path, device: str | torch.device, dtype: torch.dtype):
    from model import MiniMaxM2ForCausalLM

    model = MiniMaxM2ForCausalLM.from_pretrained(str(path), dtype=dtype)
    return model.to(device).eval()


class Engine:
    def __init__(
        self,
        model,
        *,
        max_batch: int = 32,
        model_path: str | Path | None = None,
        dtype: torch.dtype | None = None,
        admit_window_s: float = 0.01,
        admit_max_s: float = 0.05,
    ) -> None:
        self.model = model.eval()
        self.device = next(model.parameters()).device
        self.dtype = dtype or next(model.parameters()).dtype
        self.max_batch = max_batch
        self.admit_window_s, self.admit_max_s = admit_window_s, admit_max_s
        self.model_path = str(model_path) if model_path else None
        self.version = 0
        self.max_positions = int(model.config.max_position_embeddings)
        self.vocab_size = int(model.config.vocab_size)
        self._ids = itertools.count(1)
        self._waiting: list[Sequence] = []
        self._running: list[Sequence] = []  # row i of the cache is _running[i]
        self._decoder = Decoder(self.model)
        self._cache: SlotCache = self._decoder.new_cache(max_batch)
        self._cond = threading.Condition()
        self._pending_swap: tuple[Any, str, threading.Event] | None = None
        self._stop = False
        self._thread: threading.Thread | None = None
        self.stats = {"steps": 0, "tokens": 0, "prefills": 0, "max_batch_seen": 0}

    # ------------------------------------------------------------ public API (any thread)
    def start(self) -> Engine:
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="m2-engine", daemon=True)
            self._thread.start()
        return self

    def shutdown(self) -> None:
        with self._cond:
            self._stop = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def submit(
        self, prompt_ids: list[int], params: SamplingParams, emit: Emit, stream: bool = True
    ) -> Sequence:
        """Queue a request. ``stream=False``: no per-token events, only the final one."""
        if not prompt_ids:
            raise ValueError("the prompt is empty")
        if any(not 0 <= t < self.vocab_size for t in prompt_ids):
            raise ValueError(f"prompt token ids must be in [0, {self.vocab_size})")
        room = self.max_positions - len(prompt_ids)
        if room <= 0:
            raise ValueError(
                f"the prompt has {len(prompt_ids)} tokens; the model's context is {self.max_positions}"
            )
        params.max_new_tokens = max(0, min(params.max_new_tokens, room))
        seq = Sequence(list(prompt_ids), params, emit, id=next(self._ids), stream=stream)
        if params.seed is not None:
            seq.generator = torch.Generator(device=self.device).manual_seed(int(params.seed))
        with self._cond:
            self._waiting.append(seq)
            self._cond.notify_all()
        return seq

    def reload(self, path: str | Path, timeout: float | None = None) -> int:
        """Load weights from `path` and swap them in once in-flight sequences finish."""
        model = load_model(path, self.device, self.dtype)
        if int(model.config.vocab_size) != self.vocab_size:
            raise ValueError(
                f"{path} has vocab {model.config.vocab_size}; the served tokenizer has {self.vocab_size}"
            )
        done = threading.Event()
        with self._cond:
            self._pending_swap = (model, str(path), done)
            self._cond.notify_all()
        if not done.wait(timeout):
            raise TimeoutError("weights were loaded but in-flight requests did not finish in time")
        return self.version

    # ------------------------------------------------------------ the loop (engine thread)
    def _loop(self) -> None:
        with torch.inference_mode():
            while self._iteration():
                pass

    def _iteration(self) -> bool:
        with self._cond:
            while not (self._stop or self._waiting or self._running or self._pending_swap):
                self._cond.wait()
            if self._stop:
                return False
            if self._pending_swap and not self._running:
                self._swap()
                return True
            if self._waiting and not self._running:
                self._gather_arrivals()
            admit: list[Sequence] = []
            if not self._pending_swap:
                room = self.max_batch - len(self._running)
                admit, self._waiting = self._waiting[:room], self._waiting[room:]
        try:
            self._drop_cancelled()
            if admit:
                self._admit(admit)
            if self._running:
                self._step()
        except Exception as exc:  # fail what is in flight, keep serving
            for seq in self._running + admit:
                if seq.finish_reason is None:
                    seq.finish_reason = "error"
                    seq.emit(("error", f"{type(exc).__name__}: {exc}"))
            self._running = []
            self._cache = self._decoder.new_cache(self.max_batch)
        return True

    def _gather_arrivals(self) -> None:
        """Idle engine (lock held): requests sent together arrive a few ms apart; wait until
        none came for admit_window_s (at most admit_max_s) so they share one prefill and every
        decode step from the first."""
        if self.admit_window_s <= 0:
            return
        deadline = time.monotonic() + self.admit_max_s
        seen = -1
        while len(self._waiting) != seen and len(self._waiting) < self.max_batch:
            seen = len(self._waiting)
            left = deadline - time.monotonic()
            if left <= 0 or self._stop or self._pending_swap:
                return
            self._cond.wait(min(self.admit_window_s, left))

    def _swap(self) -> None:
        model, path, done = self._pending_swap
        self.model, self.model_path = model, path
        self.max_positions = int(model.config.max_position_embeddings)
        self._decoder = Decoder(model)
        self._cache = self._decoder.new_cache(self.max_batch)
        self.version += 1
        self._pending_swap = None
        done.set()

    def _sample(self, logits: torch.Tensor, seqs: list[Sequence]) -> tuple[list[int], list[float]]:
        """One token per row with each request's own settings; logprobs are of the raw model
        distribution (temperature 1), the quantity RL needs for importance ratios."""
        logits = raw = logits.float()
        constrained = [i for i, s in enumerate(seqs) if s.params.logits_processor is not None]
        if constrained:
            logits = logits.clone()
            for i in constrained:
                logits[i] = seqs[i].params.logits_processor(seqs[i].out_ids, logits[i])
        ids = logits.argmax(-1)
        sampled = [i for i, s in enumerate(seqs) if s.params.temperature > 0]
        if sampled:  # each request has its own generator (seed), so these go one by one
            ids = ids.clone()
            for i in sampled:
                p = seqs[i].params
                ids[i] = sample_next(logits[i : i + 1], p.temperature, p.top_p, seqs[i].generator)[
                    0
                ]
        lps = torch.log_softmax(raw, dim=-1).gather(-1, ids[:, None])[:, 0]
        return ids.tolist(), lps.tolist()

    def _record(self, seq: Sequence, tok: int, lp: float) -> bool:
        """Append a sampled token; returns True when the sequence is finished."""
        seq.out_ids.append(tok)
        seq.logprobs.append(lp)
        if seq.stream:
            seq.emit(("token", tok, lp))
        if not seq.params.ignore_eos and tok in seq.params.stop_token_ids:
            seq.finish_reason = "stop"
        elif len(seq.out_ids) >= seq.params.max_new_tokens:
            seq.finish_reason = "length"
        elif seq.cancelled:
            seq.finish_reason = "cancelled"
        if seq.finish_reason:
            seq.emit(("done", seq.finish_reason))
            return True
        return False

    def _admit(self, seqs: list[Sequence]) -> None:
        for s in seqs:
            s.weights_version = self.version
        for s in seqs:
            if s.params.max_new_tokens == 0:
                s.finish_reason = "length"
                s.emit(("done", "length"))
        seqs = [s for s in seqs if s.params.max_new_tokens > 0]
        if not seqs:
            return
        # One forward for all of them, written straight into new rows of the running cache.
        logits = self._decoder.prefill(self._cache, [s.prompt_ids for s in seqs])
        self.stats["prefills"] += 1
        self.stats["tokens"] += len(seqs)
        toks, lps = self._sample(logits, seqs)
        first = len(self._running)
        self._running = self._running + seqs
        done = [first + i for i, s in enumerate(seqs) if self._record(s, toks[i], lps[i])]
        if done:
            self._retire(done)

    def _step(self) -> None:
        seqs = self._running
        B = len(seqs)
        self.stats["max_batch_seen"] = max(self.stats["max_batch_seen"], B)
        tokens = torch.tensor([s.out_ids[-1] for s in seqs], device=self.device)
        pos = torch.tensor([s.position for s in seqs], device=self.device)
        logits = self._decoder.step(self._cache, tokens, pos)
        self.stats["steps"] += 1
        self.stats["tokens"] += B
        toks, lps = self._sample(logits, seqs)
        done = [i for i, s in enumerate(seqs) if self._record(s, toks[i], lps[i])]
        if done:
            self._retire(done)

    def _retire(self, rows: list[int]) -> None:
        self._cache.remove_rows(rows)
        self._running = move_last_into(self._running, rows)

    def _drop_cancelled(self) -> None:
        gone = [i for i, s in enumerate(self._running) if s.cancelled]
        for i in gone:
            s = self._running[i]
            if s.finish_reason is None:
                s.finish_reason = "cancelled"
                s.emit(("done", "cancelled"))
        if gone:
            self._retire(gone)


def wait_idle(engine: Engine, timeout: float = 10.0) -> None:
    """Block until the engine has nothing in flight (for tests and benchmarks)."""
    end = time.monotonic() + timeout
    while (engine._running or engine._waiting) and time.monotonic() < end:
        time.sleep(0.01)
