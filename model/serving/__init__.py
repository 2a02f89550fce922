"""Serving our checkpoints: a batching engine, an OpenAI-compatible API, and the vLLM route.

    from model.serving import build_app
    app = build_app("ckpt/")            # FastAPI app; run it with uvicorn

``workbench serve --model DIR`` runs the native server; ``--backend vllm`` hands the same
checkpoint to ``vllm serve`` with our plugin and MiniMax-M2's tool and reasoning parsers.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import torch

from model.serving.engine import Engine, SamplingParams, load_model

__all__ = ["Engine", "SamplingParams", "build_app", "load_engine", "serve", "vllm_command"]


def _device_dtype(device: str | None) -> tuple[str, torch.dtype]:
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    return device, (torch.bfloat16 if device.startswith("cuda") else torch.float32)


def check_model_dir(path: str | Path) -> Path:
    from model.errors import BadInputError

    path = Path(path)
    if not (path / "config.json").is_file():
        raise BadInputError(f"{path} is not a checkpoint directory (no config.json)")
    if not (path / "tokenizer.json").is_file():
        raise BadInputError(f"{path} has no tokenizer.json; serving needs one")
    return path


def load_engine(
    model_dir: str | Path, device: str | None = None, max_batch: int = 32
) -> tuple[Engine, object]:
    """(started engine, tokenizer) for a checkpoint directory."""
    from model.tokenizer import load_tokenizer

    path = check_model_dir(model_dir)
    device, dtype = _device_dtype(device)
    model = load_model(path, device, dtype)
    engine = Engine(model, max_batch=max_batch, model_path=path, dtype=dtype).start()
    return engine, load_tokenizer(path)


ADMIN_TOKEN_ENV = "WORKBENCH_ADMIN_TOKEN"


def build_app(
    model_dir: str | Path,
    model_name: str | None = None,
    device: str | None = None,
    max_batch: int = 32,
    admin_token: str | None = None,
):
    """The server app; ``/admin/*`` is on only with an ``admin_token``."""
    from model.serving.api import create_app

    engine, tokenizer = load_engine(model_dir, device=device, max_batch=max_batch)
    name = model_name or Path(model_dir).resolve().name
    return create_app(engine, tokenizer, name, admin_token=admin_token or None)


def serve(
    model_dir: str | Path,
    host: str = "127.0.0.1",
    port: int = 8000,
    model_name: str | None = None,
    max_batch: int = 32,
    admin_token: str | None = None,
) -> None:
    """Serve until stopped; the admin token defaults to ``$WORKBENCH_ADMIN_TOKEN``."""
    import uvicorn

    token = admin_token or os.environ.get(ADMIN_TOKEN_ENV) or None
    app = build_app(model_dir, model_name=model_name, max_batch=max_batch, admin_token=token)
    try:
        uvicorn.run(app, host=host, port=port, log_level="warning")
    finally:
        app.state.engine.shutdown()


def vllm_command(
    model_dir: str | Path, host: str, port: int, model_name: str | None = None
) -> list[str]:
    """The `vllm serve` command line for a checkpoint (our plugin loads via its entry point)."""
    cmd = [
        "vllm",
        "serve",
        str(model_dir),
        "--host",
        host,
        "--port",
        str(port),
        "--enable-auto-tool-choice",
        "--tool-call-parser",
        "minimax_m2",
        "--reasoning-parser",
        "minimax_m2_append_think",
    ]
    if model_name:
        cmd += ["--served-model-name", model_name]
    return cmd


def exec_vllm(model_dir: str | Path, host: str, port: int, model_name: str | None = None) -> None:
    """Replace this process with `vllm serve` (GPU machines); one clear error without vLLM."""
    from model.errors import WorkbenchError

    check_model_dir(model_dir)
    exe = shutil.which("vllm")
    try:
        import vllm  # noqa: F401
    except ImportError:
        exe = None
    if exe is None:
        raise WorkbenchError(
            "vLLM is not installed; install it on a CUDA machine (pip install vllm) "
            "or use --backend native"
        )
    cmd = vllm_command(model_dir, host, port, model_name)
    # vLLM loads every `vllm.general_plugins` entry point (ours included) in each of its
    # processes unless VLLM_PLUGINS narrows the list.
    sys.stdout.flush()
    os.execvp(exe, cmd)


class ThreadedServer:
    """Run an ASGI app with uvicorn in a background thread on a free local port (tests,
    benchmarks, notebooks). ``close()`` stops it and the app's engine, if it has one."""

    def __init__(
        self, app, host: str = "127.0.0.1", port: int = 0, timeout_s: float = 60.0
    ) -> None:
        import socket
        import threading
        import time

        import uvicorn

        if port == 0:
            with socket.socket() as s:
                s.bind((host, 0))
                port = s.getsockname()[1]
        self.app, self.port = app, port
        self.url = f"http://{host}:{port}"
        self.server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + timeout_s
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError(f"server on port {port} did not start")
            time.sleep(0.02)

    def close(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
        engine = getattr(self.app.state, "engine", None)
        if engine is not None:
            engine.shutdown()
