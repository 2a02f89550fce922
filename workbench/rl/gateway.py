"""Recording gateway: an OpenAI-compatible proxy that writes every model call to disk.

Point any agent at ``http://GATEWAY/sessions/{session_id}/v1`` instead of the model's base URL.
Each completion call is forwarded to the upstream unchanged and recorded as one JSON line in
``{out}/{session_id}.jsonl``: exactly the request body the agent sent, exactly the completion it
got back (a streamed answer is assembled from its chunks), and, when the upstream provides them,
prompt token ids, completion token ids and per-token logprobs. Those are what RL trains on, so a
black-box agent (it only sees an endpoint) yields the same data as our own graph.

Token capture: unless turned off, the gateway asks the upstream for token ids and logprobs
(``return_token_ids`` — understood by vLLM and by our server — and ``logprobs``) and strips
whatever it added before answering, so the agent sees the answer it asked for. An upstream
that rejects those fields is retried once without them, and not asked again.
"""

from __future__ import annotations

import json
import os
import re
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
from fastapi import FastAPI, HTTPException, Request, Response
from fastapi.responses import JSONResponse, StreamingResponse

SESSION_ID = re.compile(r"^[A-Za-z0-9_.\-]{1,128}$")
RECORDED = ("chat/completions", "completions")
_HOP_HEADERS = {"host", "content-length", "connection", "transfer-encoding", "accept-encoding"}


# ---------------------------------------------------------------- the session store


class SessionLog:
    """Append-only JSONL per session. One ``os.write`` of a whole line on an O_APPEND file:
    concurrent writers never interleave, and a crash can at worst tear the last line, which
    ``read_session`` skips."""

    def __init__(self, out_dir: Path) -> None:
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._seq: dict[str, int] = {}

    def path(self, session_id: str) -> Path:
        if not SESSION_ID.match(session_id) or session_id in (".", ".."):
            raise ValueError(f"invalid session id {session_id!r}")
        return self.out_dir / f"{session_id}.jsonl"

    def append(self, session_id: str, record: dict[str, Any]) -> None:
        path = self.path(session_id)
        with self._lock:
            seq = self._seq.get(session_id)
            if seq is None:
                seq = len(read_session(path)) if path.exists() else 0
            record = {"seq": seq, **record}
            line = (json.dumps(record, ensure_ascii=False) + "\n").encode()
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
            try:
                os.write(fd, line)
            finally:
                os.close(fd)
            self._seq[session_id] = seq + 1


def read_session(path: str | Path) -> list[dict[str, Any]]:
    """All complete records of a session file (a torn last line is ignored)."""
    records = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


# ---------------------------------------------------------------- request / response shaping


def _inject(body: dict[str, Any], kind: str) -> dict[str, Any]:
    """Fields we add to ask for tokens; returns {field: original presence} for stripping."""
    added: dict[str, Any] = {}
    if not body.get("return_token_ids"):
        body["return_token_ids"] = True
        added["return_token_ids"] = True
    if kind == "chat/completions" and not body.get("logprobs"):
        body["logprobs"] = True
        added["logprobs"] = True
    if kind == "completions" and body.get("logprobs") is None:
        body["logprobs"] = 0  # completions API: number of top alternatives; 0 = chosen token only
        added["logprobs"] = True
    return added


def _strip(obj: dict[str, Any], added: dict[str, Any]) -> dict[str, Any]:
    """Remove from a response (or stream chunk) what only our injected fields produced."""
    if not added:
        return obj
    obj = json.loads(json.dumps(obj))
    if "return_token_ids" in added:
        obj.pop("prompt_token_ids", None)
    for choice in obj.get("choices") or []:
        if "return_token_ids" in added:
            choice.pop("token_ids", None)
            choice.pop("prompt_token_ids", None)
        if "logprobs" in added and "logprobs" in choice:
            choice["logprobs"] = None
    return obj


def _tokens(resp: dict[str, Any]) -> dict[str, Any]:
    """Token ids and logprobs of a (non-streamed or assembled) completion, when present."""
    choices = resp.get("choices") or []
    ids = [c.get("token_ids") for c in choices]
    lps = []
    for c in choices:
        lp = c.get("logprobs") or {}
        if isinstance(lp, dict) and lp.get("content") is not None:
            lps.append([t.get("logprob") for t in lp["content"]])
        elif isinstance(lp, dict) and lp.get("token_logprobs") is not None:
            lps.append(lp["token_logprobs"])
        else:
            lps.append(None)
    prompt = resp.get("prompt_token_ids")
    if prompt is None and choices:
        prompt = choices[0].get("prompt_token_ids")
    return {
        "prompt_token_ids": prompt,
        "completion_token_ids": ids if any(i is not None for i in ids) else None,
        "logprobs": lps if any(lp is not None for lp in lps) else None,
    }


class _StreamAssembler:
    """Rebuilds the completion a client saw from its SSE chunks."""

    def __init__(self) -> None:
        self.head: dict[str, Any] = {}
        self.choices: dict[int, dict[str, Any]] = {}
        self.usage = None
        self.prompt_token_ids = None

    def add(self, chunk: dict[str, Any]) -> None:
        if not self.head:
            self.head = {k: chunk.get(k) for k in ("id", "created", "model")}
            self.head["object"] = str(chunk.get("object", "")).replace(".chunk", "")
        if chunk.get("usage"):
            self.usage = chunk["usage"]
        if chunk.get("prompt_token_ids") is not None:
            self.prompt_token_ids = chunk["prompt_token_ids"]
        for ch in chunk.get("choices") or []:
            i = ch.get("index", 0)
            acc = self.choices.setdefault(
                i, {"index": i, "text": "", "message": {"role": "assistant", "content": ""}}
            )
            if ch.get("finish_reason"):
                acc["finish_reason"] = ch["finish_reason"]
            if ch.get("token_ids") is not None:
                acc.setdefault("token_ids", []).extend(ch["token_ids"])
            if ch.get("prompt_token_ids") is not None:
                self.prompt_token_ids = ch["prompt_token_ids"]
            lp = ch.get("logprobs") or {}
            if isinstance(lp, dict) and lp.get("content"):
                acc.setdefault("logprobs", {"content": []})["content"].extend(lp["content"])
            if isinstance(lp, dict) and lp.get("tokens"):
                dst = acc.setdefault("logprobs", {"tokens": [], "token_logprobs": []})
                dst["tokens"].extend(lp["tokens"])
                dst["token_logprobs"].extend(lp.get("token_logprobs") or [])
            if "text" in ch:
                acc["text"] += ch.get("text") or ""
            delta = ch.get("delta") or {}
            msg = acc["message"]
            for key in ("content", "reasoning_content"):
                if delta.get(key):
                    msg[key] = (msg.get(key) or "") + delta[key]
            for tc in delta.get("tool_calls") or []:
                calls = msg.setdefault("tool_calls", [])
                j = tc.get("index", len(calls))
                while len(calls) <= j:
                    calls.append(
                        {"id": None, "type": "function", "function": {"name": "", "arguments": ""}}
                    )
                dst = calls[j]
                dst["id"] = tc.get("id") or dst["id"]
                fn = tc.get("function") or {}
                dst["function"]["name"] += fn.get("name") or ""
                dst["function"]["arguments"] += fn.get("arguments") or ""

    def result(self, kind: str) -> dict[str, Any]:
        choices = []
        for i in sorted(self.choices):
            c = dict(self.choices[i])
            if kind == "chat/completions":
                c.pop("text")
            else:
                c.pop("message")
            choices.append(c)
        out = {**self.head, "choices": choices, "usage": self.usage}
        if self.prompt_token_ids is not None:
            out["prompt_token_ids"] = self.prompt_token_ids
        return out


# ---------------------------------------------------------------- the app


def create_app(
    upstream: str,
    out_dir: str | Path,
    capture_tokens: bool = True,
    timeout_s: float = 600.0,
    transport: httpx.AsyncBaseTransport | None = None,
) -> FastAPI:
    base = upstream.rstrip("/")
    if not base.endswith("/v1"):
        base += "/v1"
    log = SessionLog(Path(out_dir))
    state = {"capture": capture_tokens}
    app = FastAPI(title="m2-workbench gateway")
    app.state.log = log

    def client() -> httpx.AsyncClient:
        return httpx.AsyncClient(timeout=timeout_s, transport=transport)

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "upstream": base}

    async def forward(session_id: str, path: str, request: Request) -> Response:
        try:
            log.path(session_id)
        except ValueError as exc:
            raise HTTPException(400, str(exc)) from exc
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP_HEADERS}
        url = f"{base}/{path}"
        raw = await request.body()
        if request.method != "POST" or path not in RECORDED:
            async with client() as c:
                r = await c.request(
                    request.method, url, content=raw, headers=headers, params=request.query_params
                )
            return Response(r.content, r.status_code, media_type=r.headers.get("content-type"))
        try:
            sent = json.loads(raw or b"{}")
        except json.JSONDecodeError as exc:
            raise HTTPException(400, f"request body is not JSON: {exc}") from exc
        body = json.loads(json.dumps(sent))
        added = _inject(body, path) if state["capture"] else {}
        record = {
            "ts": time.time(),
            "session": session_id,
            "endpoint": f"/v1/{path}",
            "request": sent,
        }
        t0 = time.perf_counter()
        if sent.get("stream"):
            return await _stream(url, headers, body, added, record, path, t0)
        async with client() as c:
            r = await c.post(url, json=body, headers=headers)
            if added and r.status_code in (400, 422):
                state["capture"], added = False, {}
                r = await c.post(url, json=sent, headers=headers)
        try:
            resp = r.json()
        except ValueError:
            resp = {"error": r.text}
        record.update(status=r.status_code, stream=False, latency_s=time.perf_counter() - t0)
        record["response"] = _strip(resp, added) if r.status_code == 200 else resp
        record.update(_tokens(resp) if r.status_code == 200 else {})
        log.append(session_id, record)
        return JSONResponse(record["response"], status_code=r.status_code)

    async def _stream(url, headers, body, added, record, path, t0) -> Response:
        c = client()
        resp = await c.send(c.build_request("POST", url, json=body, headers=headers), stream=True)
        if added and resp.status_code in (400, 422):
            await resp.aclose()
            state["capture"], added = False, {}
            resp = await c.send(
                c.build_request("POST", url, json=record["request"], headers=headers), stream=True
            )
        if resp.status_code != 200:
            content = await resp.aread()
            await resp.aclose()
            await c.aclose()
            record.update(status=resp.status_code, stream=True, latency_s=time.perf_counter() - t0)
            try:
                record["response"] = json.loads(content)
            except ValueError:
                record["response"] = {"error": content.decode(errors="replace")}
            log.append(record["session"], record)
            return Response(content, resp.status_code, media_type=resp.headers.get("content-type"))

        async def events() -> AsyncIterator[bytes]:
            asm = _StreamAssembler()
            full = _StreamAssembler()  # with the injected token data, for the record
            recorded = False

            def save(complete: bool) -> None:
                record.update(status=200, stream=True, latency_s=time.perf_counter() - t0)
                record["response"] = asm.result(path)
                record.update(_tokens(full.result(path)))
                if not complete:
                    record["incomplete"] = True  # the client or the upstream went away
                log.append(record["session"], record)

            try:
                async for line in resp.aiter_lines():
                    if not line.startswith("data:"):
                        continue
                    data = line[5:].strip()
                    if data == "[DONE]":
                        # Record before the client sees the end, so a finished call is on disk.
                        save(complete=True)
                        recorded = True
                        yield b"data: [DONE]\n\n"
                        continue
                    try:
                        chunk = json.loads(data)
                    except ValueError:
                        yield (line + "\n\n").encode()
                        continue
                    full.add(chunk)
                    shown = _strip(chunk, added)
                    asm.add(shown)
                    yield f"data: {json.dumps(shown, ensure_ascii=False)}\n\n".encode()
            finally:
                await resp.aclose()
                await c.aclose()
                if not recorded:
                    save(complete=False)

        return StreamingResponse(events(), media_type="text/event-stream")

    methods = ["GET", "POST", "PUT", "DELETE", "PATCH"]

    @app.api_route("/sessions/{session_id}/v1/{path:path}", methods=methods)
    async def session_route(session_id: str, path: str, request: Request) -> Response:
        return await forward(session_id, path, request)

    @app.api_route("/v1/{path:path}", methods=methods)
    async def default_route(path: str, request: Request) -> Response:
        return await forward("default", path, request)

    return app


def serve_gateway(
    upstream: str,
    out_dir: str | Path,
    host: str = "127.0.0.1",
    port: int = 8100,
    capture_tokens: bool = True,
) -> None:
    import uvicorn

    uvicorn.run(
        create_app(upstream, out_dir, capture_tokens), host=host, port=port, log_level="warning"
    )
