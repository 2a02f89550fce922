"""`workbench serve` (an OpenAI-compatible server for a checkpoint) and `workbench gateway`
(a recording proxy in front of any OpenAI-compatible endpoint)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from workbench.cli.output import err_console
from workbench.errors import BadInputError

HostOpt = Annotated[str, typer.Option("--host", help="Interface to listen on.")]


def serve(
    model: Annotated[
        Path,
        typer.Option(
            "--model", help="Checkpoint directory (config.json, weights, tokenizer.json)."
        ),
    ],
    host: HostOpt = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", help="Port to listen on.")] = 8000,
    backend: Annotated[
        str, typer.Option("--backend", help="native (our engine) or vllm (GPU).")
    ] = "native",
    name: Annotated[
        str | None, typer.Option("--name", help="Model id clients use (default: folder name).")
    ] = None,
    max_batch: Annotated[
        int, typer.Option("--max-batch", help="Most sequences decoded together (native).")
    ] = 32,
    admin_token: Annotated[
        str | None,
        typer.Option(
            "--admin-token",
            envvar="WORKBENCH_ADMIN_TOKEN",
            help="Bearer token for /admin/reload (native); without one /admin is off.",
        ),
    ] = None,
) -> None:
    """Serve a checkpoint with /v1/chat/completions, /v1/completions, /v1/models, /health."""
    from model.serving import check_model_dir, exec_vllm
    from model.serving import serve as serve_native

    if backend not in ("native", "vllm"):
        raise BadInputError(f"--backend must be native or vllm, not {backend!r}")
    if not 0 < port < 65536:
        raise BadInputError(f"--port {port} is not a valid port")
    check_model_dir(model)
    if backend == "vllm":
        exec_vllm(model, host, port, name)
        return
    err_console.print(f"serving {model} on http://{host}:{port}/v1 (Ctrl-C to stop)")
    serve_native(
        model, host=host, port=port, model_name=name, max_batch=max_batch, admin_token=admin_token
    )


def gateway(
    upstream: Annotated[
        str, typer.Option("--upstream", help="Base URL of the OpenAI-compatible endpoint.")
    ],
    out: Annotated[Path, typer.Option("--out", help="Folder for the session JSONL files.")],
    host: HostOpt = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", help="Port to listen on.")] = 8100,
    capture_tokens: Annotated[
        bool,
        typer.Option(
            "--capture-tokens/--no-capture-tokens",
            help="Ask the upstream for token ids and logprobs.",
        ),
    ] = True,
) -> None:
    """Record every model call: agents use http://HOST:PORT/sessions/{id}/v1 as base URL."""
    from workbench.rl.gateway import serve_gateway

    if not upstream.startswith(("http://", "https://")):
        raise BadInputError(f"--upstream must be an http(s) URL, not {upstream!r}")
    if out.exists() and not out.is_dir():
        raise BadInputError(f"--out {out} exists and is not a directory")
    err_console.print(
        f"gateway on http://{host}:{port}/sessions/<id>/v1 -> {upstream}, recording to {out}"
    )
    serve_gateway(upstream, out, host=host, port=port, capture_tokens=capture_tokens)


def register(app: typer.Typer) -> None:
    app.command("serve")(serve)
    app.command("gateway")(gateway)
