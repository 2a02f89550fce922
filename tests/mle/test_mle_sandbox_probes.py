"""The sandbox probe set, run against the strong path (bubblewrap) and the unshare fallback.

Each probe is a solution that tries to reach one thing it must not: the competition's raw
labelled data, scikit-learn's bundled datasets, another Python install's dataset files,
another run's folder, a Unix socket on the host filesystem, the host's processes (/proc),
the host's /tmp, the network. On the strong path every probe is denied. On the fallback a
probe gets through exactly when the run's record lists its gap (``NodeRun.uncovered``).

``make setup`` installs bubblewrap (scripts/ensure_bwrap.sh), so the strong path is always
exercised for real: where it cannot build a sandbox the test fails, it is never skipped.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import textwrap
import threading
import uuid
from pathlib import Path

import pytest

from workbench.mle.isolation import (
    GAPS,
    NodeLimits,
    copy_public,
    prepare_workdir,
    run_solution,
    sklearn_data_dirs,
)
from workbench.runs import sandbox

# probe -> the GAPS key under which the fallback admits it
PROBES = {
    "raw_data": "hidden_paths",
    "sklearn_data": "hidden_paths",
    "other_install_data": "filesystem",
    "other_runs": "filesystem",
    "host_unix_socket": "unix_sockets",
    "host_processes": "proc",
    "host_tmp": "tmp",
    "network": "network",
}


def _require_bwrap() -> None:
    if not sandbox.bwrap_available():
        pytest.fail("bubblewrap cannot build a sandbox here (make setup installs it as root)")


@pytest.fixture()
def world(request):
    """A world-traversable tree (so the fallback's `nobody` could read it if not hidden)."""
    base = Path(tempfile.mkdtemp(prefix="wb-probe-"))
    marker = f"SECRET-{uuid.uuid4().hex[:10]}"
    tmp_marker = Path(tempfile.gettempdir()) / f"wb-probe-marker-{uuid.uuid4().hex[:10]}"
    data = base / "data" / "comp"
    files = {
        "raw_data": data / "raw" / "labelled.csv",
        "answers": data / "prepared" / "private" / "test.csv",
        "public": data / "prepared" / "public" / "train.csv",
        "other_install_data": base
        / "otherpy/lib/python3.11/site-packages/sklearn/datasets/data/iris.csv",
        "other_runs": base / "runs" / "old-run" / "nodes" / "000" / "submission.csv",
    }
    for name, path in files.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"id,y\n1,{marker}-{name}\n")
    tmp_marker.write_text(marker)
    for p in [base, *base.rglob("*")]:
        p.chmod(0o755 if p.is_dir() else 0o644)

    sock_path = base / "agent.sock"
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(str(sock_path))
    os.chmod(sock_path, 0o777)
    srv.listen(4)

    def serve() -> None:
        while True:
            try:
                conn, _ = srv.accept()
            except OSError:
                return
            with conn:
                conn.sendall(f"{marker}-socket".encode())

    threading.Thread(target=serve, daemon=True).start()
    tcp = socket.socket()
    tcp.bind(("127.0.0.1", 0))
    tcp.listen(4)
    host_proc = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(300)", f"{marker}-proc"]
    )
    run_dir = base / "runs" / "this"
    run_dir.mkdir(parents=True)
    os.chmod(run_dir, 0o755)
    inp = copy_public(data / "prepared" / "public", run_dir / "input")
    sk = [p for d in sklearn_data_dirs() for p in sorted(d.glob("*.csv*"))[:1]]
    try:
        yield {
            "base": base,
            "marker": marker,
            "files": files,
            "sock": sock_path,
            "port": tcp.getsockname()[1],
            "tmp_marker": tmp_marker,
            "run": run_dir,
            "input": inp,
            "sklearn_file": sk[0] if sk else None,
            "hide": [base / "data", *sklearn_data_dirs()],
        }
    finally:
        host_proc.kill()
        host_proc.wait()
        srv.close()
        tcp.close()
        tmp_marker.unlink(missing_ok=True)
        shutil.rmtree(base, ignore_errors=True)


PROBE_SCRIPT = r"""
import os, socket, zlib

def read(path):
    try:
        with open(path, "rb") as fh:
            data = fh.read()
        if path.endswith(".gz"):
            data = zlib.decompress(data, 47)
        return data.decode(errors="replace")
    except Exception as exc:
        return "denied " + type(exc).__name__

def report(name, got):
    print(f"PROBE {name} {'LEAK' if got else 'denied'}", flush=True)

report("raw_data", MARKER in read(FILES["raw_data"]))
report("other_install_data", MARKER in read(FILES["other_install_data"]))
report("other_runs", MARKER in read(FILES["other_runs"]))
if SKLEARN_FILE:
    text = read(SKLEARN_FILE)
    report("sklearn_data", not text.startswith("denied") and len(text) > 10)
try:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(3)
    s.connect(SOCK)
    report("host_unix_socket", MARKER in s.recv(100).decode())
except OSError:
    report("host_unix_socket", False)
seen = False
for pid in os.listdir("/proc"):
    if pid.isdigit():
        try:
            seen |= MARKER in open(f"/proc/{pid}/cmdline", "rb").read().decode(errors="replace")
        except OSError:
            pass
report("host_processes", seen)
report("host_tmp", os.path.exists(TMP_MARKER))
try:
    socket.create_connection(("127.0.0.1", PORT), timeout=3).close()
    report("network", True)
except OSError:
    report("network", False)
print("input:", open("input/train.csv").read().splitlines()[1])
"""


def _probe(world, backend: str):
    node = world["run"] / "nodes" / "000"
    header = textwrap.dedent(
        f"""
        MARKER = {world["marker"]!r}
        FILES = { ({k: str(v) for k, v in world["files"].items()})!r}
        SKLEARN_FILE = {str(world["sklearn_file"]) if world["sklearn_file"] else ""!r}
        SOCK = {str(world["sock"])!r}
        TMP_MARKER = {str(world["tmp_marker"])!r}
        PORT = {world["port"]}
        """
    )
    prepare_workdir(node, world["input"], header + PROBE_SCRIPT)
    res = run_solution(node, world["hide"], NodeLimits(timeout_s=60, backend=backend))
    assert res.returncode == 0, res.log
    results = {}
    for line in res.log.splitlines():
        if line.startswith("PROBE "):
            _, name, verdict = line.split()
            results[name] = verdict == "LEAK"
    assert f"input: 1,{world['marker']}-public" in res.log  # the public data stays readable
    expected = set(PROBES) - ({"sklearn_data"} if world["sklearn_file"] is None else set())
    assert set(results) == expected, res.log
    return res, results


def test_strong_path_denies_every_probe(world):
    _require_bwrap()
    res, results = _probe(world, "bwrap")
    assert res.hiding == "bwrap" and res.uncovered == ()
    assert [name for name, leaked in results.items() if leaked] == [], res.log


def test_local_backend_prefers_bwrap(world):
    _require_bwrap()
    res, _ = _probe(world, "local")
    assert res.hiding == "bwrap"


def test_fallback_record_lists_exactly_what_it_leaves_open(world):
    res, results = _probe(world, "unshare")
    assert res.hiding in ("mount-namespace", "workdir-only")
    assert set(res.uncovered) <= set(GAPS)
    admitted = {name: PROBES[name] in res.uncovered for name in results}
    assert results == admitted, (res.uncovered, res.log)
    # whatever else holds, the fallback never shows the host's sockets/processes as covered
    assert {"filesystem", "unix_sockets", "proc", "tmp"} <= set(res.uncovered)


def test_asking_for_bwrap_where_it_cannot_run_is_one_clear_error(world, monkeypatch):
    from workbench.errors import BadInputError

    monkeypatch.setattr(sandbox, "bwrap_available", lambda: False)
    node = world["run"] / "nodes" / "001"
    prepare_workdir(node, world["input"], "print(1)\n")
    with pytest.raises(BadInputError, match="bubblewrap"):
        run_solution(node, world["hide"], NodeLimits(timeout_s=5, backend="bwrap"))
    # `local` falls back instead, and says what it does not cover
    res = run_solution(node, world["hide"], NodeLimits(timeout_s=30, backend="local"))
    assert res.returncode == 0 and res.hiding != "bwrap" and "filesystem" in res.uncovered
