"""Run a command in a sandbox: bubblewrap, Docker, or (fallback) a limited subprocess.

Every path puts the child in its own process group (so a timeout kills the whole tree),
applies rlimits, and scrubs the environment down to an allow-list.

* **bwrap** (bubblewrap, when it can create namespaces here): a fresh filesystem view that
  holds only the interpreter and the libraries it links (read-only), the paths the caller
  lists (read-only), the work folder (read-write), a private ``/tmp``, ``/dev`` and ``/proc``
  of a new PID namespace; no network, no host sockets, no capabilities.
* **docker** (when an engine answers): no network, memory / CPU / pids limits, a read-only
  root and only the work directory mounted.
* **local** (the fallback): cuts the network with ``unshare -n`` where the OS allows it, but
  the child sees the host's filesystem, sockets, ``/tmp`` and processes; callers that need
  more record what it does not cover (see ``workbench.mle.isolation``).

Commands are always argv lists — nothing here goes through a shell.
"""

from __future__ import annotations

import functools
import json
import os
import resource
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass, field, replace
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
    cpu_s: int | None = None  # CPU seconds (RLIMIT_CPU)
    ro_paths: tuple[Path, ...] = ()  # bwrap: host paths shown read-only at the same place
    hidden: tuple[Path, ...] = ()  # bwrap: covered (empty) even inside a shown path


@dataclass(frozen=True)
class SandboxResult:
    returncode: int
    timed_out: bool
    wall_s: float
    log_path: Path | None
    backend: str  # "local" | "bwrap" | "docker"


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
        if spec.cpu_s:
            resource.setrlimit(resource.RLIMIT_CPU, (spec.cpu_s, spec.cpu_s))

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


# ------------------------------------------------------------------------------------ bwrap


@functools.cache
def bwrap_available() -> bool:
    """True when bubblewrap is installed *and* can build a sandbox here (namespaces allowed)."""
    if not shutil.which("bwrap") or not shutil.which("true"):
        return False
    with tempfile.TemporaryDirectory(prefix="bwrap-probe-") as tmp:
        argv = bwrap_argv(SandboxSpec([shutil.which("true")], Path(tmp)))
        try:
            return subprocess.run(argv, capture_output=True, timeout=10).returncode == 0
        except (OSError, subprocess.SubprocessError):
            return False


def _resolve(path: Path) -> tuple[list[tuple[str, str]], Path]:
    """The symlinks met on the way to ``path`` (target, link) and the real path at the end."""
    links: list[tuple[str, str]] = []
    p = Path(os.path.abspath(path))
    for _ in range(40):
        cur = Path("/")
        parts = p.parts[1:]
        for i, part in enumerate(parts):
            nxt = cur / part
            if nxt.is_symlink():
                target = os.readlink(nxt)
                links.append((target, str(nxt)))
                p = Path(os.path.normpath(cur / target)).joinpath(*parts[i + 1 :])
                break
            cur = nxt
        else:
            return links, p
    raise OSError(f"too many symbolic links on the way to {path}")


@functools.cache
def _python_runtime(executable: str) -> tuple[tuple[Path, ...], tuple[Path, ...]]:
    """(paths to show, paths to hide) for a Python interpreter to start and import its packages.

    Shown: a venv's ``pyvenv.cfg``, the stdlib and import path, and the folders of the shared
    libraries the interpreter links. Hidden: the base install's ``site-packages`` when the
    interpreter does not import from it (another install's packages and their data files).
    """
    code = (
        "import json, sys, sysconfig; print(json.dumps({'prefix': sys.prefix, "
        "'base': sys.base_prefix, 'path': [p for p in sys.path if p], "
        "'paths': sysconfig.get_paths(), 'exe': sys.executable}))"
    )
    try:
        out = subprocess.run(
            [executable, "-I", "-c", code], capture_output=True, text=True, timeout=30, check=True
        ).stdout
        info = json.loads(out)
    except (OSError, subprocess.SubprocessError, ValueError):
        return (), ()
    # Not the whole prefix (for a system Python that is all of /usr): a venv needs its
    # pyvenv.cfg; the interpreter's link chain is added by the caller.
    shown = {Path(info["prefix"]) / "pyvenv.cfg"}
    shown.update(Path(p) for p in info["path"])
    shown.update(Path(info["paths"][k]) for k in ("stdlib", "platstdlib", "purelib", "platlib"))
    libs = _linked_library_dirs(str(_resolve(Path(executable))[1]))
    shown.update(libs)
    used = {Path(p) for p in info["path"]} | {
        Path(info["paths"][k]) for k in ("purelib", "platlib")
    }
    hidden = set()
    for root in {Path(info["base"]), Path(info["prefix"])}:
        for site in (
            *root.glob("lib/python*/site-packages"),
            *root.glob("lib/python*/dist-packages"),
        ):
            if site not in used:
                hidden.add(site)
    return tuple(sorted(p for p in shown if p.exists())), tuple(sorted(hidden))


def _linked_library_dirs(binary: str) -> set[Path]:
    """Folders of the shared libraries ``binary`` links (from ``ldd``), incl. the loader's."""
    ldd = shutil.which("ldd")
    if not ldd:
        return {Path(p) for p in ("/lib", "/lib64", "/usr/lib", "/usr/lib64") if Path(p).exists()}
    try:
        out = subprocess.run([ldd, binary], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return set()
    dirs: set[Path] = set()
    for line in out.splitlines():
        for word in line.split():
            if word.startswith("/"):
                dirs.add(Path(word).parent)
    return dirs


def _bind_args(
    links: list[tuple[str, str]], binds: list[tuple[Path, str]], hidden: list[Path]
) -> list[str]:
    """bwrap options: parents before children, symlinks outside bound folders, covers last."""
    args: list[str] = []
    done: list[Path] = []

    def covered(p: Path) -> bool:
        return any(p == d or d in p.parents for d in done)

    for path, mode in sorted(set(binds), key=lambda b: (len(b[0].parts), str(b[0]))):
        if mode == "ro" and covered(path):
            continue
        args += ["--bind" if mode == "rw" else "--ro-bind", str(path), str(path)]
        done.append(path)
    made: set[str] = set()
    for target, link in links:
        if link not in made and not covered(Path(link)):
            args += ["--symlink", target, link]
            made.add(link)
    for path in hidden:
        if not covered(path) or not path.exists():
            continue  # not in the view at all
        if path.is_dir():
            args += ["--tmpfs", str(path), "--remount-ro", str(path)]
        else:
            args += ["--ro-bind", "/dev/null", str(path)]
    return args


def bwrap_argv(spec: SandboxSpec) -> list[str]:
    """The ``bwrap`` argv: only the interpreter, the listed paths and the work folder exist."""
    exe = spec.argv[0]
    if not os.path.isabs(exe):
        exe = shutil.which(exe) or exe
    links, real_exe = _resolve(Path(exe))
    binds: list[tuple[Path, str]] = [(real_exe, "ro")]
    hidden = list(spec.hidden)
    shown, base_hidden = _python_runtime(exe) if "python" in real_exe.name else ((), ())
    if not shown:
        shown = tuple(_linked_library_dirs(str(real_exe)))
    hidden += base_hidden
    for path in (*shown, *spec.ro_paths):
        more, real = _resolve(Path(path))
        links += more
        binds.append((real, "ro"))
    cwd = Path(spec.cwd).resolve()
    binds.append((cwd, "rw"))
    argv = [shutil.which("bwrap") or "bwrap", "--unshare-all", "--die-with-parent"]
    argv += ["--new-session", "--cap-drop", "ALL"]
    if spec.network:
        argv += ["--share-net"]
    argv += ["--tmpfs", "/tmp", "--proc", "/proc", "--dev", "/dev"]
    if os.path.exists("/etc/ld.so.cache"):
        argv += ["--ro-bind", "/etc/ld.so.cache", "/etc/ld.so.cache"]
    argv += _bind_args(links, binds, [Path(h).resolve() for h in hidden])
    argv += ["--chdir", str(cwd), "--", exe, *spec.argv[1:]]
    return argv


def run_bwrap(spec: SandboxSpec) -> SandboxResult:
    t0 = time.monotonic()
    box = replace(spec, argv=bwrap_argv(spec), network=True)
    proc = start_local(box)  # bwrap is the group leader; --die-with-parent takes the rest down
    rc, timed_out = wait_pid(proc.pid, spec.timeout_s, proc)
    return SandboxResult(rc, timed_out, time.monotonic() - t0, spec.log_path, "bwrap")


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


def pick_backend(backend: str = "auto") -> str:
    """``auto``: bwrap when it works here, else Docker when an engine answers, else local."""
    if backend == "auto":
        if bwrap_available():
            return "bwrap"
        return "docker" if docker_available() else "local"
    if backend not in ("bwrap", "docker", "local"):
        raise ValueError(f"unknown sandbox backend {backend!r} (auto, bwrap, docker, local)")
    return backend


def run(spec: SandboxSpec, backend: str = "auto") -> SandboxResult:
    """Run under the backend asked for (``auto``: the strongest one that works here)."""
    chosen = pick_backend(backend)
    if chosen == "docker":
        return run_docker(spec)
    if chosen == "bwrap":
        return run_bwrap(spec)
    return run_local(spec)
