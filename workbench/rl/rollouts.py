"""Rollout sources: the policy behind our server + recording gateway (the real path), or a
frozen in-process copy (tests, sweeps). Both return (prompt ids, completion ids, logprobs)."""

from __future__ import annotations

import copy
import os
import secrets
import time
from pathlib import Path

import torch

from model.serving import ADMIN_TOKEN_ENV
from workbench.errors import BadInputError
from workbench.rl.config import RLConfig
from workbench.rl.policy import Policy
from workbench.rl.tasks import Task, prompt_messages


class InProcessRollouts:
    """Fast path (tests, sweeps): a frozen in-process copy of the policy plays the server."""

    via = "inprocess"

    def __init__(self, policy: Policy, model, cfg: RLConfig, max_new: int) -> None:
        self.policy, self.cfg, self.max_new = policy, cfg, max_new
        self.served = copy.deepcopy(model).eval()
        self.version = 0
        self.gen = torch.Generator().manual_seed(cfg.seed)

    def group(self, task: Task, n: int, session: str) -> tuple[list[tuple[list, list, list]], int]:
        """n rollouts of ``task``: [(prompt ids, completion ids, logprobs)], weights version."""
        served, version = self.served, self.version
        prompt = self.policy.prompt_ids(task, task.menu)
        outs = self.policy.sample(served, prompt, n, self.cfg.temperature, self.max_new, self.gen)
        return [(prompt, ids, lps) for ids, lps in outs], version

    def publish(self, model, ckpt: Path, version: int) -> bool:
        self.served, self.version = copy.deepcopy(model).eval(), version
        return False

    def close(self) -> None:
        pass


class ServerRollouts:
    """The real path: ``workbench serve`` on the policy checkpoint, ``workbench gateway`` in
    front of it (both subprocesses on free ports). A rollout group is one chat completion with
    ``n`` choices in its own gateway session; its samples are read back from the session JSONL
    (exact token ids + the server's log-probs). ``publish`` = ``POST /admin/reload``."""

    via = "server"
    MAX_N = 16  # choices per chat completion the server accepts

    def __init__(self, ckpt: Path, sessions: Path, cfg: RLConfig, max_new: int) -> None:
        import subprocess
        import sys

        self.cfg, self.max_new = cfg, max_new
        self.sessions = sessions
        self.server_port, self.gateway_port = _free_port(), _free_port()
        self.server = f"http://127.0.0.1:{self.server_port}"
        # The server's /admin/reload answers only this token (handed over in the environment,
        # not argv, so other users' `ps` does not show it).
        self.admin_token = secrets.token_urlsafe(24)
        self.gateway = f"http://127.0.0.1:{self.gateway_port}"
        # The functions behind `workbench serve` / `workbench gateway`, without importing the
        # whole CLI (seconds saved per start on a busy machine).
        serve = (
            "import sys; from model.serving import serve; "
            "serve(sys.argv[1], port=int(sys.argv[2]), model_name='policy', max_batch=64)"
        )
        gateway = (
            "import sys; from workbench.rl.gateway import serve_gateway; "
            "serve_gateway(sys.argv[1], sys.argv[2], port=int(sys.argv[3]))"
        )
        logs = sessions.parent
        logs.mkdir(parents=True, exist_ok=True)
        self.procs = []
        for name, args in (
            ("serve", [serve, str(ckpt), str(self.server_port)]),
            ("gateway", [gateway, f"{self.server}/v1", str(sessions), str(self.gateway_port)]),
        ):
            log = open(logs / f"{name}.log", "ab")  # noqa: SIM115 (lives as long as the process)
            self.procs.append(
                (
                    subprocess.Popen(
                        [sys.executable, "-c", *args],
                        env={**os.environ, ADMIN_TOKEN_ENV: self.admin_token}
                        if name == "serve"
                        else None,
                        stdout=log,
                        stderr=subprocess.STDOUT,
                        preexec_fn=_die_with_parent,
                    ),
                    log,
                )
            )
        self._wait_healthy()
        self.versions = {self._health()["weights_version"]: 0}  # server version -> update count

    def _health(self) -> dict:
        import httpx

        return httpx.get(f"{self.server}/health", timeout=5).json()

    def _wait_healthy(self, timeout: float = 180.0) -> None:
        import httpx

        t0 = time.monotonic()
        for url in (self.server, self.gateway):
            while True:
                if any(p.poll() is not None for p, _ in self.procs):
                    self.close()
                    raise BadInputError(
                        f"the policy server or gateway exited; see {self.sessions.parent}/*.log"
                    )
                try:
                    if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if time.monotonic() - t0 > timeout:
                    self.close()
                    raise BadInputError(f"{url} did not come up within {timeout:.0f}s")
                time.sleep(0.3)

    def group(self, task: Task, n: int, session: str) -> tuple[list[tuple[list, list, list]], int]:
        import httpx

        from trainer.rl.data import samples_from_session

        out, versions = [], []
        for j, k in enumerate(range(0, n, self.MAX_N)):  # the server allows n <= 16 per call
            name = session if j == 0 else f"{session}-{j}"
            body = {
                "model": "policy",
                "messages": prompt_messages(task, task.menu, self.cfg.answer),
                "n": min(self.MAX_N, n - k),
                "temperature": self.cfg.temperature,
                "max_tokens": self.max_new,
                "chat_template_kwargs": {"enable_thinking": False},
            }
            r = httpx.post(
                f"{self.gateway}/sessions/{name}/v1/chat/completions", json=body, timeout=300
            )
            r.raise_for_status()
            samples = samples_from_session(self.sessions / f"{name}.jsonl")
            for s in samples:
                n_ctx = s.trainable.index(True)
                comp = s.ids[n_ctx:]
                lps = (s.old_logprobs or [0.0] * len(s.ids))[n_ctx:]
                out.append((s.ids[:n_ctx], comp, lps))
            if samples:
                versions.append(self.versions.get(samples[0].meta.get("weights_version"), 0))
        return out, min(versions, default=0)  # the stalest weights of the group

    def publish(self, model, ckpt: Path, version: int) -> bool:
        import httpx

        r = httpx.post(
            f"{self.server}/admin/reload",
            json={"path": str(ckpt)},
            headers={"Authorization": f"Bearer {self.admin_token}"},
            timeout=300,
        )
        if r.status_code != 200:
            return False
        self.versions[r.json()["weights_version"]] = version
        return True

    def close(self) -> None:
        for proc, log in self.procs:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=20)
                except Exception:  # noqa: BLE001 -- a server that ignores SIGTERM
                    proc.kill()
                    proc.wait()
            log.close()
        self.procs = []


def _die_with_parent() -> None:
    """Linux: the server and gateway get SIGTERM when the RL process dies, even when it is
    killed before ``close`` runs."""
    try:
        import ctypes
        import signal

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
