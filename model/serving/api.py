"""OpenAI-compatible HTTP API over the batching engine (FastAPI).

Endpoints: ``/v1/chat/completions`` and ``/v1/completions`` (streamed as SSE or not),
``/v1/models``, ``/health``, ``POST /admin/reload {"path": DIR}``. The admin endpoint exists
only when the app is given an admin token, and then answers only ``Authorization: Bearer
TOKEN``; its errors never say whether a path exists. Requests are checked as OpenAI / vLLM
check them (``model.serving.validation``): an unknown model is 404 ``model_not_found``, a
message needs a known role and text content, ``tool_choice`` is honoured (``required`` and a
named function force a call of an allowed tool).

Chat follows vLLM serving MiniMax-M2 with ``--tool-call-parser minimax_m2 --reasoning-parser
minimax_m2_append_think``: the prompt is MiniMax-M2's template (it opens ``<think>``), the
message content is the generation with that ``<think>`` put back, and ``<minimax:tool_call>``
blocks become OpenAI ``tool_calls``. So an agent sees the same answers from either server.

Extensions (opt-in, vLLM-compatible names): ``return_token_ids: true`` adds
``prompt_token_ids`` (top level) and ``choices[i].token_ids``; ``logprobs: true`` gives each
completion token's log-probability under the model; ``ignore_eos: true`` generates exactly
``max_tokens``; ``chat_template_kwargs: {"enable_thinking": false}`` closes the thought in the
prompt. Responses carry ``weights_version`` (bumped by each reload), for RL bookkeeping.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import threading
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse

from model.chat import (
    END_OF_TURN,
    as_content,
    parse_tool_calls,
    render_messages,
    safe_stream_prefix,
)
from model.serving.engine import Engine, SamplingParams, Sequence
from model.serving.validation import (
    APIError,
    ToolCallForcer,
    check_messages,
    check_model,
    check_tool_choice,
    close_forced_call,
)

log = logging.getLogger(__name__)


def _error(message: str, status: int, kind: str, code: str | int | None = None) -> JSONResponse:
    body = {"message": message, "type": kind, "code": status if code is None else code}
    return JSONResponse({"error": body}, status)


class Detokenizer:
    """Incremental text of a growing token list; holds back an incomplete UTF-8 tail."""

    def __init__(self, tokenizer) -> None:
        self.tokenizer = tokenizer

    def text(self, ids: list[int], final: bool = False) -> str:
        text = self.tokenizer.decode(ids, skip_special_tokens=False).replace(END_OF_TURN, "")
        if not final:
            text = text.rstrip("\ufffd")
        return text

    def piece(self, tok: int) -> str:
        return self.tokenizer.decode([tok], skip_special_tokens=False)


class _Stream:
    """Bridges engine events (engine thread) to an asyncio queue (server loop). Events that
    arrive while a hand-over is already scheduled ride along with it: one loop wake-up per
    batch of events, not per token."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.queue: asyncio.Queue = asyncio.Queue()
        self._box: list[tuple] = []
        self._lock = threading.Lock()

    def emit(self, event: tuple) -> None:
        with self._lock:
            self._box.append(event)
            if len(self._box) > 1:
                return  # a hand-over is already on its way
        self.loop.call_soon_threadsafe(self._hand_over)

    def _hand_over(self) -> None:
        with self._lock:
            events, self._box = self._box, []
        for event in events:
            self.queue.put_nowait(event)


def _num(body: dict, key: str, default: float, lo: float, hi: float) -> float:
    value = body.get(key)
    if value is None:
        return default
    if not isinstance(value, int | float) or isinstance(value, bool) or not lo <= value <= hi:
        raise APIError(f"'{key}' must be a number in [{lo}, {hi}]")
    return float(value)


def _stops(body: dict) -> list[str]:
    stop = body.get("stop")
    if stop is None:
        return []
    stop = [stop] if isinstance(stop, str) else stop
    if not isinstance(stop, list) or not all(isinstance(s, str) and s for s in stop):
        raise APIError("'stop' must be a non-empty string or a list of them")
    return stop


def _cut_at_stop(text: str, stops: list[str]) -> tuple[str, bool]:
    hits = [text.find(s) for s in stops if s in text]
    return (text[: min(hits)], True) if hits else (text, False)


def create_app(
    engine: Engine, tokenizer, model_name: str = "m2-workbench", admin_token: str | None = None
) -> FastAPI:
    """The app; ``admin_token`` turns ``/admin/*`` on (off, i.e. 404, without one)."""
    app = FastAPI(title="m2-workbench server")
    app.state.engine = engine
    detok = Detokenizer(tokenizer)
    eos = tokenizer.token_to_id(END_OF_TURN)
    stop_ids = tuple(t for t in {eos, engine.model.config.eos_token_id} if t is not None)

    @app.exception_handler(APIError)
    async def _api_error(_: Request, exc: APIError) -> JSONResponse:
        return _error(str(exc), exc.status, exc.kind, exc.code)

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {
            "status": "ok",
            "model": model_name,
            "weights_version": engine.version,
            "path": engine.model_path,
        }

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        card = {"id": model_name, "object": "model", "created": 0, "owned_by": "m2-workbench"}
        return {"object": "list", "data": [card]}

    def _admin(request: Request) -> None:
        if not admin_token:
            raise APIError("Not Found", 404, "not_found_error")  # the endpoint is off
        given = request.headers.get("authorization", "")
        scheme, _, token = given.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            token.strip().encode(), admin_token.encode()
        ):
            raise APIError("a valid admin token is required", 401, "authentication_error")

    @app.post("/admin/reload")
    async def reload(request: Request) -> dict[str, Any]:
        _admin(request)
        body = await _json(request)
        path = body.get("path")
        if not isinstance(path, str) or not path:
            raise APIError("'path' (a checkpoint directory) is required")
        try:
            version = await asyncio.to_thread(engine.reload, path)
        except Exception as exc:  # missing, unreadable or invalid: one answer for all
            # The reason stays in the server's log: the answer must not tell a caller whether
            # (or what) a path holds.
            log.warning("admin reload from %r failed: %s: %s", path, type(exc).__name__, exc)
            raise APIError("cannot reload: no loadable checkpoint at that path") from None
        return {"status": "ok", "weights_version": version, "path": path}

    async def _json(request: Request) -> dict[str, Any]:
        try:
            body = await request.json()
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise APIError(f"request body is not JSON: {exc}") from exc
        if not isinstance(body, dict):
            raise APIError("request body must be a JSON object")
        return body

    def _params(body: dict, default_max: int = 256, processor=None) -> SamplingParams:
        max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
        if max_tokens is None:
            max_tokens = default_max
        if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 0:
            raise APIError("'max_tokens' must be a non-negative integer")
        seed = body.get("seed")
        if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool)):
            raise APIError("'seed' must be an integer")
        return SamplingParams(
            max_new_tokens=max_tokens,
            temperature=_num(body, "temperature", 1.0, 0.0, 2.0),
            top_p=_num(body, "top_p", 1.0, 1e-9, 1.0),
            seed=seed,
            stop_token_ids=stop_ids,
            ignore_eos=bool(body.get("ignore_eos", False)),
            logits_processor=processor,
        )

    def _submit(
        prompt_ids: list[int], body: dict, params: SamplingParams, stream: bool = True
    ) -> list[tuple[Sequence, _Stream]]:
        """One engine sequence per choice. ``stream=False``: the engine sends only the final
        event (the caller reads the sequence's tokens then)."""
        n = body.get("n", 1)
        if not isinstance(n, int) or not 1 <= n <= 16:
            raise APIError("'n' must be an integer in [1, 16]")
        loop = asyncio.get_running_loop()
        out = []
        for i in range(n):
            p = SamplingParams(
                **{**params.__dict__, "seed": None if params.seed is None else params.seed + i}
            )
            bridge = _Stream(loop)
            try:
                seq = engine.submit(prompt_ids, p, bridge.emit, stream=stream)
                out.append((seq, bridge))
            except ValueError as exc:
                raise APIError(str(exc)) from exc
        return out

    async def _collect(seq: Sequence, stream: _Stream, stops: list[str]) -> tuple[str, str]:
        """Wait for a sequence to finish; (text, finish_reason), the text cut at a stop string."""
        while True:
            event = await stream.queue.get()
            if event[0] == "error":
                raise APIError(f"generation failed: {event[1]}", 500, "server_error")
            if event[0] == "token" and stops:
                text, hit = _cut_at_stop(detok.text(seq.out_ids), stops)
                if hit:
                    seq.cancel()
                    return text, "stop"
            if event[0] == "done":
                text, hit = _cut_at_stop(detok.text(seq.out_ids, final=True), stops)
                return text, "stop" if hit or event[1] == "cancelled" else event[1]

    def _logprobs_chat(seq: Sequence) -> dict[str, Any]:
        content = []
        for tok, lp in zip(seq.out_ids, seq.logprobs, strict=False):
            piece = detok.piece(tok)
            content.append(
                {"token": piece, "logprob": lp, "bytes": list(piece.encode()), "top_logprobs": []}
            )
        return {"content": content}

    def _usage(prompt_ids: list[int], seqs: list[Sequence]) -> dict[str, int]:
        completion = sum(len(s.out_ids) for s in seqs)
        return {
            "prompt_tokens": len(prompt_ids),
            "completion_tokens": completion,
            "total_tokens": len(prompt_ids) + completion,
        }

    def _response(obj, rid, created, choices, prompt_ids, runs, want_ids) -> dict[str, Any]:
        """The non-streaming envelope shared by chat and text completions."""
        resp: dict[str, Any] = {
            "id": rid,
            "object": obj,
            "created": created,
            "model": model_name,
            "choices": choices,
            "usage": _usage(prompt_ids, [s for s, _ in runs]),
            "weights_version": runs[0][0].weights_version,
        }
        if want_ids:
            resp["prompt_token_ids"] = prompt_ids
        return resp

    # ------------------------------------------------------------ chat completions
    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        body = await _json(request)
        check_model(body, model_name)
        messages = check_messages(body.get("messages"))
        tools = body.get("tools") or None
        choice = check_tool_choice(body.get("tool_choice"), tools)
        use_tools = tools if choice.mode != "none" else None
        kwargs = body.get("chat_template_kwargs") or {}
        if not isinstance(kwargs, dict):
            raise APIError("'chat_template_kwargs' must be an object")
        thinking = bool(kwargs.get("enable_thinking", True))
        forcer = ToolCallForcer(tokenizer, choice.names, thinking) if choice.forced else None
        try:
            prompt = render_messages(messages, tools=tools, enable_thinking=thinking)
        except (ValueError, TypeError, AttributeError) as exc:
            raise APIError(f"cannot render messages: {exc}") from exc
        prompt_ids = tokenizer.encode(prompt, add_special_tokens=False).ids
        params = _params(body, processor=forcer)
        stops = _stops(body)
        # Per-token events only where they are read: streaming, or stop strings to watch.
        runs = _submit(prompt_ids, body, params, stream=bool(body.get("stream") or stops))
        rid = f"chatcmpl-{uuid.uuid4().hex}"
        created = int(time.time())
        want_ids, want_lp = bool(body.get("return_token_ids")), bool(body.get("logprobs"))

        def finish(seq: Sequence, text: str, reason: str) -> tuple[dict[str, Any], str]:
            if forcer is not None:  # the call the constraint opened, closed if it ran short
                name = forcer.chosen(seq.out_ids)
                text = close_forced_call(text, name, thinking)
            rest, calls, _errors = (
                parse_tool_calls(text, use_tools) if use_tools else (text, [], [])
            )
            if forcer is not None:
                calls = [c for c in calls if c.name in forcer.names]
                reason = "stop" if reason == "length" and calls else reason
            msg: dict[str, Any] = {"role": "assistant", "content": as_content(rest, thinking)}
            if calls:
                msg["tool_calls"] = [c.to_openai() for c in calls]
                reason = "tool_calls" if reason == "stop" else reason
            return msg, reason

        if not body.get("stream"):
            choices = []
            try:
                results = await asyncio.gather(*(_collect(s, st, stops) for s, st in runs))
            finally:
                for s, _ in runs:
                    s.cancel()
            for i, ((seq, _), (text, reason)) in enumerate(zip(runs, results, strict=True)):
                msg, reason = finish(seq, text, reason)
                c: dict[str, Any] = {"index": i, "message": msg, "finish_reason": reason}
                c["logprobs"] = _logprobs_chat(seq) if want_lp else None
                if want_ids:
                    c["token_ids"] = list(seq.out_ids)
                choices.append(c)
            return _response("chat.completion", rid, created, choices, prompt_ids, runs, want_ids)

        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))

        def chunk(choices: list[dict], **extra) -> bytes:
            obj = {
                "id": rid,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model_name,
                "choices": choices,
                **extra,
            }
            return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n".encode()

        async def one(i: int, seq: Sequence, stream: _Stream, out: asyncio.Queue) -> None:
            """Stream choice i: content as it becomes safe, tool calls once complete."""
            sent = as_content("", thinking)
            await out.put(
                [
                    {
                        "index": i,
                        "delta": {"role": "assistant", "content": sent},
                        "finish_reason": None,
                    }
                ]
            )
            sent_toks = 0
            reason = None
            while reason is None:
                event = await stream.queue.get()
                if event[0] == "error":
                    raise APIError(f"generation failed: {event[1]}", 500, "server_error")
                final = event[0] == "done"
                text = detok.text(seq.out_ids, final=final)
                text, hit = _cut_at_stop(text, stops)
                if hit and not final:
                    seq.cancel()
                if final or hit:
                    reason = "stop" if hit or event[1] == "cancelled" else event[1]
                    break
                safe = as_content(text[: safe_stream_prefix(text)] if use_tools else text, thinking)
                delta: dict[str, Any] = {}
                if len(safe) > len(sent) and safe.startswith(sent):
                    delta["content"] = safe[len(sent) :]
                    sent = safe
                c: dict[str, Any] = {"index": i, "delta": delta, "finish_reason": None}
                if want_ids:
                    c["token_ids"] = seq.out_ids[sent_toks:]
                if want_lp:
                    c["logprobs"] = {"content": _logprobs_chat(seq)["content"][sent_toks:]}
                sent_toks = len(seq.out_ids)
                if delta or want_ids or want_lp:
                    await out.put([c])
            msg, reason = finish(seq, text, reason)
            delta = {}
            if msg["content"].startswith(sent) and len(msg["content"]) > len(sent):
                delta["content"] = msg["content"][len(sent) :]
            if msg.get("tool_calls"):
                delta["tool_calls"] = [{"index": j, **tc} for j, tc in enumerate(msg["tool_calls"])]
            c = {"index": i, "delta": delta, "finish_reason": reason}
            if want_ids:
                c["token_ids"] = seq.out_ids[sent_toks:]
            if want_lp:
                c["logprobs"] = {"content": _logprobs_chat(seq)["content"][sent_toks:]}
            await out.put([c])

        async def events() -> AsyncIterator[bytes]:
            out: asyncio.Queue = asyncio.Queue()
            tasks = [asyncio.create_task(one(i, s, st, out)) for i, (s, st) in enumerate(runs)]
            first = {"prompt_token_ids": prompt_ids} if want_ids else {}
            first["weights_version"] = runs[0][0].weights_version
            try:
                pending = set(tasks)
                while pending:
                    getter = asyncio.create_task(out.get())
                    done, _ = await asyncio.wait(
                        pending | {getter}, return_when=asyncio.FIRST_COMPLETED
                    )
                    if getter in done:
                        yield chunk(getter.result(), **first)
                        first = {}
                    else:
                        getter.cancel()
                    for t in done - {getter}:
                        pending.discard(t)
                        if t.exception() is not None:
                            msg = {"error": {"message": str(t.exception()), "type": "server_error"}}
                            yield f"data: {json.dumps(msg)}\n\n".encode()
                while not out.empty():
                    yield chunk(out.get_nowait(), **first)
                    first = {}
                if include_usage:
                    yield chunk([], usage=_usage(prompt_ids, [s for s, _ in runs]))
                yield b"data: [DONE]\n\n"
            finally:
                for s, _ in runs:
                    s.cancel()  # a client that went away stops its generation
                for t in tasks:
                    t.cancel()

        return StreamingResponse(events(), media_type="text/event-stream")

    # ------------------------------------------------------------ text completions
    @app.post("/v1/completions")
    async def completions(request: Request):
        body = await _json(request)
        check_model(body, model_name)
        prompt = body.get("prompt")
        if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str | list):
            prompt = prompt[0]
        if isinstance(prompt, str) and prompt:
            prompt_ids = tokenizer.encode(prompt, add_special_tokens=False).ids
        elif isinstance(prompt, list) and prompt and all(isinstance(t, int) for t in prompt):
            prompt_ids = list(prompt)
        else:
            raise APIError("'prompt' must be a non-empty string or a list of token ids")
        params = _params(body, default_max=16)
        stops = _stops(body)
        # Per-token events only where they are read: streaming, or stop strings to watch.
        runs = _submit(prompt_ids, body, params, stream=bool(body.get("stream") or stops))
        rid = f"cmpl-{uuid.uuid4().hex}"
        created = int(time.time())
        want_ids = bool(body.get("return_token_ids"))
        want_lp = body.get("logprobs") is not None and body.get("logprobs") is not False

        def lp_block(seq: Sequence, start: int = 0) -> dict[str, Any]:
            pieces = [detok.piece(t) for t in seq.out_ids[start:]]
            return {
                "tokens": pieces,
                "token_logprobs": seq.logprobs[start:],
                "top_logprobs": None,
                "text_offset": [],
            }

        if not body.get("stream"):
            try:
                results = await asyncio.gather(*(_collect(s, st, stops) for s, st in runs))
            finally:
                for s, _ in runs:
                    s.cancel()
            choices = []
            for i, ((seq, _), (text, reason)) in enumerate(zip(runs, results, strict=True)):
                c: dict[str, Any] = {"index": i, "text": text, "finish_reason": reason}
                c["logprobs"] = lp_block(seq) if want_lp else None
                if want_ids:
                    c["token_ids"] = list(seq.out_ids)
                choices.append(c)
            return _response("text_completion", rid, created, choices, prompt_ids, runs, want_ids)

        if len(runs) != 1:
            raise APIError("streaming completions support n=1 only")
        seq, stream = runs[0]

        async def events() -> AsyncIterator[bytes]:
            sent, sent_toks, first = "", 0, True
            try:
                while True:
                    event = await stream.queue.get()
                    if event[0] == "error":
                        yield f"data: {json.dumps({'error': {'message': event[1]}})}\n\n".encode()
                        break
                    final = event[0] == "done"
                    text, hit = _cut_at_stop(detok.text(seq.out_ids, final=final), stops)
                    reason = (
                        ("stop" if hit or event[1] == "cancelled" else event[1])
                        if final or hit
                        else None
                    )
                    if hit:
                        seq.cancel()
                    c: dict[str, Any] = {
                        "index": 0,
                        "text": text[len(sent) :] if text.startswith(sent) else "",
                        "finish_reason": reason,
                    }
                    sent = text if text.startswith(sent) else sent
                    if want_lp:
                        c["logprobs"] = lp_block(seq, sent_toks)
                    if want_ids:
                        c["token_ids"] = seq.out_ids[sent_toks:]
                    sent_toks = len(seq.out_ids)
                    obj = {
                        "id": rid,
                        "object": "text_completion",
                        "created": created,
                        "model": model_name,
                        "choices": [c],
                    }
                    if first and want_ids:
                        obj["prompt_token_ids"] = prompt_ids
                    first = False
                    yield f"data: {json.dumps(obj, ensure_ascii=False)}\n\n".encode()
                    if reason:
                        break
                yield b"data: [DONE]\n\n"
            finally:
                seq.cancel()

        return StreamingResponse(events(), media_type="text/event-stream")

    return app
