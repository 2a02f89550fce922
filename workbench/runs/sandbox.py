"""Run a command in a sandbox: Docker when an engine is reachable, else a limited subprocess.

The subprocess path puts the child in its own process group (so a timeout kills the whole
tree), applies rlimits, scrubs the environment down to an allow-list, and cuts the network
with ``unshare -n`` where the OS allows it. The Docker path runs with no network, memory /
CPU / pids limits, a read-only root and only the work directory mounted. Commands are always
argv lists — nothing here goes through a shell.
"""

from __future__ import annotations

import os
import resource
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

# Environment variables a training run legitimately needs; everything else is dropped so
# secrets in the supervisor's environment (API keys, tokens) never reach agent-written code.
SAFE_ENV_KEYS = ("PATH", "HOME", "LANG", "LC_ALL", "TZ", "TMPDIR", "PYTHONPATH", "TRITON_INTERPRET")


@dataclass(frozen=True)
class SandboxSpec:
    argv: list[str]
    cwd: Path
    env: dict[str, str] = field(default_factory=dict)  # added on top of the scrubbed env
    timeout_s: float = 600.0
    memory_mb: int | None = None  # address-space limit (subprocess) / --memory (docker)
    cpus: float | None = None  # docker only
    pids: int = 512
    file_size_mb: int = 2048  # largest file the child may write
    network: bool = False
    log_path: Path | None = None  # stdout+stderr go here
    image: str = "python:3.11-slim"  # docker only
    mounts: tuple[tuple[Path, str], ...] = ()  # extra read-only mounts (host, container)


@dataclass(frozen=True)
class SandboxResult:
    returncode: int
    timed_out: bool
    wall_s: float
    log_path: Path | None
    backend: str  # "local" | "docker"


def scrubbed_env(extra: dict[str, str]) -> dict[str, str]:
    env = {k: os.environ[k] for k in SAFE_ENV_KEYS if k in os.environ}
    env.setdefault("PATH", "/usr/local/bin:/usr/bin:/bin")
    env["PYTHONUNBUFFERED"] = "1"
    env.update({str(k): str(v) for k, v in extra.items()})
    return env


_UNSHARE_OK: bool | None = None


def can_unshare_net() -> bool:
    """True when ``unshare -n`` works here (root or user namespaces enabled)."""
    global _UNSHARE_OK
    if _UNSHARE_OK is None:
        exe = shutil.which("unshare")
        ok = False
        if exe:
            try:
                res = subprocess.run([exe, "-n", "true"], capture_output=True, timeout=5)
                ok = res.returncode == 0
            except (OSError, subprocess.SubprocessError):
                ok = False
            if not ok:  # unprivileged users may still map themselves to root in a new userns
                try:
                    res = subprocess.run([exe, "-rn", "true"], capture_output=True, timeout=5)
                    ok = res.returncode == 0
                except (OSError, subprocess.SubprocessError):
                    ok = False
        _UNSHARE_OK = ok
    return _UNSHARE_OK


def _limits(spec: SandboxSpec):
    def apply() -> None:  # runs in the child between fork and exec
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        fsize = spec.file_size_mb * 1024 * 1024
        resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))
        if spec.memory_mb:
            mem = spec.memory_mb * 1024 * 1024
            resource.setrlimit(resource.RLIMIT_AS, (mem, mem))

    return apply


def local_argv(spec: SandboxSpec) -> list[str]:
    argv = list(spec.argv)
    if not spec.network and can_unshare_net():
        unshare = shutil.which("unshare") or "unshare"
        flags = "-n" if os.geteuid() == 0 else "-rn"
        argv = [unshare, flags, "--", *argv]
    return argv


def start_local(spec: SandboxSpec) -> subprocess.Popen:
    """Start the command in its own session/process group; the caller waits or detaches."""
    log = open(spec.log_path, "ab") if spec.log_path else subprocess.DEVNULL  # noqa: SIM115
    try:
        return subprocess.Popen(
            local_argv(spec),
            cwd=str(spec.cwd),
            env=scrubbed_env(spec.env),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # own process group: survives our death, killable as a tree
            preexec_fn=_limits(spec),
        )
    finally:
        if spec.log_path:
            log.close()


def kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child of ours counts as dead.
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return True


def wait_pid(pid: int, timeout_s: float, proc: subprocess.Popen | None = None) -> tuple[int, bool]:
    """Wait for a process (ours or one started by a previous, killed supervisor).

    Returns (returncode, timed_out). For a process we did not start the return code is unknown
    and reported as 0; callers read the run's own status from the tracking store instead.
    """
    deadline = time.monotonic() + timeout_s
    if proc is not None:
        try:
            return proc.wait(timeout=max(0.0, timeout_s)), False
        except subprocess.TimeoutExpired:
            kill_group(proc.pid)
            proc.wait()
            return -9, True
    while pid_alive(pid):
        if time.monotonic() > deadline:
            kill_group(pid)
            return -9, True
        time.sleep(0.2)
    return 0, False


def run_local(spec: SandboxSpec) -> SandboxResult:
    t0 = time.monotonic()
    proc = start_local(spec)
    rc, timed_out = wait_pid(proc.pid, spec.timeout_s, proc)
    return SandboxResult(rc, timed_out, time.monotonic() - t0, spec.log_path, "local")


# ------------------------------------------------------------------------------------ docker


def docker_available() -> bool:
    """True when a Docker engine answers a ping (the CLI alone is not enough)."""
    try:
        import docker

        client = docker.from_env(timeout=3)
        try:
            return bool(client.ping())
        finally:
            client.close()
    except Exception:  # no socket, no permission, no package: all mean "no engine"
        return False


def docker_argv(spec: SandboxSpec, name: str | None = None) -> list[str]:
    """The ``docker run`` argv for a spec: the work dir mounted at /work, nothing else writable."""
    argv = ["docker", "run", "--rm", "--init"]
    if name:
        argv += ["--name", name]
    argv += ["--network", "bridge" if spec.network else "none"]
    argv += ["--read-only", "--tmpfs", "/tmp:rw,size=512m", "--security-opt", "no-new-privileges"]
    argv += ["--cap-drop", "ALL", "--pids-limit", str(spec.pids)]
    if spec.memory_mb:
        argv += ["--memory", f"{spec.memory_mb}m", "--memory-swap", f"{spec.memory_mb}m"]
    if spec.cpus:
        argv += ["--cpus", f"{spec.cpus:g}"]
    argv += ["--user", f"{os.getuid()}:{os.getgid()}"]
    argv += ["-v", f"{Path(spec.cwd).resolve()}:/work:rw", "-w", "/work"]
    for host, target in spec.mounts:
        argv += ["-v", f"{Path(host).resolve()}:{target}:ro"]
    for key, value in sorted(scrubbed_env(spec.env).items()):
        if key in ("PATH", "HOME", "PYTHONPATH"):
            continue  # the image's own
        argv += ["-e", f"{key}={value}"]
    argv += [spec.image, *spec.argv]
    return argv


def run_docker(spec: SandboxSpec) -> SandboxResult:
    t0 = time.monotonic()
    name = f"workbench-{os.getpid()}-{int(t0 * 1000)}"
    docker_spec = SandboxSpec(
        argv=docker_argv(spec, name=name),
        cwd=spec.cwd,
        timeout_s=spec.timeout_s,
        network=True,  # the docker CLI talks to the engine; the container has --network none
        log_path=spec.log_path,
        file_size_mb=spec.file_size_mb,
    )
    proc = start_local(docker_spec)
    rc, timed_out = wait_pid(proc.pid, spec.timeout_s, proc)
    if timed_out:
        subprocess.run(["docker", "rm", "-f", name], capture_output=True, check=False)
    return SandboxResult(rc, timed_out, time.monotonic() - t0, spec.log_path, "docker")


def run(spec: SandboxSpec, backend: str = "auto") -> SandboxResult:
    """Run in Docker if asked (or ``auto`` and an engine answers), else as a local subprocess."""
    if backend == "docker" or (backend == "auto" and docker_available()):
        return run_docker(spec)
    return run_local(spec)
