"""Run one solution script in the sandbox, with the competition's private files out of reach.

Built on ``workbench.runs.sandbox`` (scrubbed environment, rlimits incl. address space and CPU
seconds, own process group killed at the timeout). The strong path is bubblewrap: the script
sees its work folder (read-write), the run's copy of the public data (read-only), the
interpreter and its libraries (read-only; scikit-learn's bundled datasets and any other
install's packages covered), a private ``/tmp``, ``/dev`` and ``/proc`` of its own PID
namespace, no network and no host socket. Docker, when asked for, mounts the work folder only.

The fallback (no usable bwrap) is the ``unshare`` path below; it does not give a fresh
filesystem view, so a run that falls back records, key by key, what it does not cover
(``GAPS``; ``NodeRun.uncovered``). Per node:

* the script runs in a fresh work dir that holds only copies of the *public* files
  (``input/``), with ``cwd``, ``HOME`` and ``TMPDIR`` inside it; the private answers are never
  copied into or under it;
* when we are root and mount namespaces work (``unshare -m``), the child gets its own mount
  namespace in which every hidden path (the competition's ``private/`` dir, its competition
  folder with ``prepare.py``, scikit-learn's bundled dataset files) is covered by an empty,
  read-only, mode-000 tmpfs; it then drops every capability (``setpriv``; and becomes user
  ``nobody`` when the work dir is reachable by others), so it can neither unmount the cover
  nor bypass its mode;
* ``RLIMIT_CPU`` (``ulimit -t``) caps CPU seconds; thread pools are pinned by env vars.

Without root (or without ``unshare -m``/``setpriv``) the hiding falls back to "never in the
work dir" only; ``hiding_level()`` says which guarantee holds, and the run reports it.
"""

from __future__ import annotations

import functools
import os
import shutil
import stat
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from workbench.errors import BadInputError
from workbench.runs import sandbox

NOBODY = 65534
HIDE_EXIT = 97  # the wrapper's exit code when a path could not be hidden

# Runs inside the new mount namespace, before the solution: cover each hidden path, cap CPU,
# then exec the (privilege-dropping) command. Paths arrive as positional args — never parsed
# as shell text.
_WRAPPER = r"""
cpu="$1"; shift
while [ "$#" -gt 0 ] && [ "$1" != "--" ]; do
  if [ -d "$1" ]; then
    mount -t tmpfs -o ro,size=4k,mode=000 mle-hidden "$1" || { echo "sandbox: cannot hide $1" >&2; exit 97; }
  elif [ -e "$1" ]; then
    mount --bind -o ro /dev/null "$1" || { echo "sandbox: cannot hide $1" >&2; exit 97; }
  fi
  shift
done
shift
ulimit -t "$cpu" || exit 97
exec "$@"
"""


# What the unshare fallback leaves open, by key (a probe in tests/mle checks each one).
GAPS = {
    "hidden_paths": "the private answers, raw data and competition folders are only kept out "
    "of the work dir; they stay readable by path",
    "filesystem": "every other file the user can read is readable: other Python installs' "
    "data, other runs' folders, home directories",
    "unix_sockets": "Unix sockets on the host filesystem (Docker, agents, local daemons) can be "
    "connected to",
    "proc": "the host's PID namespace: /proc and ps show the host's processes",
    "tmp": "/tmp is the host's, shared with other programs",
    "network": "the network is reachable (unshare -n is not allowed here)",
}


def gaps(level: str) -> tuple[str, ...]:
    """The ``GAPS`` keys a hiding level leaves open (none for bwrap and docker)."""
    if level in ("bwrap", "docker"):
        return ()
    keys = ["filesystem", "unix_sockets", "proc", "tmp"]
    if level != "mount-namespace":
        keys.insert(0, "hidden_paths")
    if not sandbox.can_unshare_net():
        keys.append("network")
    return tuple(keys)


def choose_level(backend: str) -> str:
    """``bwrap`` | ``docker`` | ``mount-namespace`` | ``workdir-only`` for a scaffold backend.

    ``local`` and ``auto`` take bwrap when it works here (``auto`` then tries Docker); the
    ``unshare`` backend forces the fallback; asking for ``bwrap`` where it does not work is an
    error rather than a silent downgrade.
    """
    if backend == "docker":
        return "docker"
    if backend == "bwrap":
        if not sandbox.bwrap_available():
            raise BadInputError(
                "sandbox backend bwrap: bubblewrap is missing or cannot create namespaces here"
            )
        return "bwrap"
    if backend in ("local", "auto") and sandbox.bwrap_available():
        return "bwrap"
    if backend == "auto" and sandbox.docker_available():
        return "docker"
    return hiding_level()


@functools.cache
def hiding_level() -> str:
    """``mount-namespace`` (paths covered, child unprivileged) or ``workdir-only``."""
    if os.geteuid() != 0:
        return "workdir-only"
    unshare, setpriv = shutil.which("unshare"), shutil.which("setpriv")
    if not (unshare and setpriv):
        return "workdir-only"
    try:
        res = subprocess.run(
            [unshare, "-m", "--propagation", "private", "--", "true"],
            capture_output=True,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return "workdir-only"
    return "mount-namespace" if res.returncode == 0 else "workdir-only"


def sklearn_data_dirs() -> list[Path]:
    """scikit-learn's bundled datasets: a solution must not look the test rows up there."""
    try:
        import sklearn.datasets as ds
    except ImportError:
        return []
    root = Path(ds.__file__).resolve().parent
    return [p for p in (root / "data", root / "descr", root / "images") if p.is_dir()]


@dataclass(frozen=True)
class NodeLimits:
    timeout_s: float = 90.0
    cpu_s: int = 180
    memory_mb: int = 4096
    threads: int = 1
    backend: str = "local"  # local | auto | bwrap | unshare | docker
    image: str = "python:3.11-slim"


@dataclass(frozen=True)
class NodeRun:
    returncode: int
    timed_out: bool
    wall_s: float
    log: str
    hiding: str  # bwrap | docker | mount-namespace | workdir-only
    uncovered: tuple[str, ...] = ()  # GAPS keys the sandbox did not cover


def world_traversable(path: Path) -> bool:
    """True when every folder down to ``path`` lets others in (so ``nobody`` can work there)."""
    p = Path(path).resolve()
    for d in [p, *p.parents]:
        try:
            if not d.stat().st_mode & stat.S_IXOTH:
                return False
        except OSError:
            return False
    return True


def _is_under(child: Path, parent: Path) -> bool:
    try:
        child.resolve().relative_to(parent.resolve())
        return True
    except ValueError:
        return False


def prepare_workdir(node_dir: Path, input_dir: Path, script: str, link_inputs: bool = True) -> None:
    """``node_dir/{solution.py, input -> shared public copy, working/, submission/}``.

    ``link_inputs=False`` copies the inputs instead (Docker mounts only the work dir).
    """
    node_dir.mkdir(parents=True, exist_ok=True)
    (node_dir / "working").mkdir(exist_ok=True)
    (node_dir / "submission").mkdir(exist_ok=True)
    link = node_dir / "input"
    if not link.exists() and not link.is_symlink():
        if link_inputs:
            link.symlink_to(os.path.relpath(input_dir, node_dir))
        else:
            shutil.copytree(input_dir, link)
    (node_dir / "solution.py").write_text(script)
    # The child runs as `nobody` under the mount-namespace level: it writes only here.
    for d in (node_dir, node_dir / "working", node_dir / "submission"):
        os.chmod(d, 0o777)
    os.chmod(node_dir / "solution.py", 0o644)


def copy_public(public_dir: Path, dest: Path) -> Path:
    """One read-only copy of the public files per run, shared by its nodes."""
    if dest.exists():
        return dest
    shutil.copytree(public_dir, dest)
    for root, dirs, files in os.walk(dest):
        for d in dirs:
            os.chmod(Path(root) / d, 0o755)
        for f in files:
            os.chmod(Path(root) / f, 0o444)
    os.chmod(dest, 0o755)
    return dest


def run_solution(
    node_dir: Path,
    hide: list[Path],
    limits: NodeLimits,
    python: str | None = None,
    script_name: str = "solution.py",
) -> NodeRun:
    """Run ``python solution.py`` in ``node_dir`` under the limits; the log is returned too."""
    node_dir = Path(node_dir).resolve()
    hide = [Path(h).resolve() for h in hide if Path(h).exists()]
    for h in hide:
        if _is_under(node_dir, h):
            raise ValueError(f"the work dir {node_dir} lies inside a hidden path {h}")
    python = python or sys.executable
    log_path = node_dir / "run.log"
    log_path.unlink(missing_ok=True)
    threads = str(limits.threads)
    env = {
        "HOME": str(node_dir),
        "TMPDIR": str(node_dir / "working"),
        "MPLCONFIGDIR": str(node_dir / "working"),
        "PYTHONNOUSERSITE": "1",
        "PYTHONDONTWRITEBYTECODE": "1",
        "OMP_NUM_THREADS": threads,
        "OPENBLAS_NUM_THREADS": threads,
        "MKL_NUM_THREADS": threads,
        "LOKY_MAX_CPU_COUNT": threads,
    }
    level = choose_level(limits.backend)
    argv = [python, script_name]
    if level == "mount-namespace":
        # Drop every capability (no unmounting the covers, no bypassing file modes) and, when
        # the work dir is reachable by others, become `nobody` too (no writing our files).
        drop = [shutil.which("setpriv") or "setpriv"]
        if world_traversable(node_dir):
            drop += [f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"]
        drop += ["--inh-caps=-all", "--bounding-set=-all", "--no-new-privs"]
        argv = [
            shutil.which("unshare") or "unshare",
            "-m",
            "--propagation",
            "private",
            "--",
            "/bin/sh",
            "-c",
            _WRAPPER,
            "mle-sandbox",
            str(limits.cpu_s),
            *[str(h) for h in hide],
            "--",
            *drop,
            *argv,
        ]
    if level == "docker":  # only the work dir is mounted; the image must carry sklearn
        argv = ["python", script_name]
    public = (node_dir / "input").resolve()
    spec = sandbox.SandboxSpec(
        argv=argv,
        cwd=node_dir,
        env=env,
        timeout_s=limits.timeout_s,
        memory_mb=limits.memory_mb,
        cpus=float(limits.threads),
        log_path=log_path,
        image=limits.image,
        cpu_s=limits.cpu_s if level != "mount-namespace" else None,  # the wrapper sets it there
        ro_paths=(public,) if public.is_dir() and not _is_under(public, node_dir) else (),
        hidden=tuple(hide),
    )
    backend = {"bwrap": "bwrap", "docker": "docker"}.get(level, "local")
    res = sandbox.run(spec, backend=backend)
    log = log_path.read_text(errors="replace") if log_path.exists() else ""
    if res.timed_out:
        log += (
            f"\nTimeoutError: the script ran past its {limits.timeout_s:g}s limit and was killed\n"
        )
    elif res.returncode in (-9, 137, 152, -24):  # SIGKILL / SIGXCPU
        log += f"\nKilled: the script hit a resource limit (exit {res.returncode})\n"
    return NodeRun(res.returncode, res.timed_out, res.wall_s, log, level, gaps(level))
