"""The sandbox a solution runs in: no network, capped memory, killed at the time limit, and
the private answers out of reach (scripts here import nothing heavy, so each runs in ~0.1 s)."""

from __future__ import annotations

import socket
import textwrap

import pytest

from workbench.mle.isolation import NodeLimits, copy_public, prepare_workdir, run_solution


@pytest.fixture()
def layout(tmp_path):
    public = tmp_path / "data" / "t" / "prepared" / "public"
    private = tmp_path / "data" / "t" / "prepared" / "private"
    public.mkdir(parents=True)
    private.mkdir(parents=True)
    (public / "train.csv").write_text("id,y\n1,2\n")
    (private / "test.csv").write_text("id,y\n7,SECRET\n")
    private.chmod(0o755)  # world-readable on purpose: hiding must not rest on permissions
    (private / "test.csv").chmod(0o644)
    run = tmp_path / "run"
    run.mkdir()
    run.chmod(0o755)
    inp = copy_public(public, run / "input")
    return {"private": private, "run": run, "input": inp, "tmp": tmp_path}


def _run(layout, code: str, hide=None, **limits):
    node = layout["run"] / "node"
    prepare_workdir(node, layout["input"], textwrap.dedent(code))
    return run_solution(
        node, hide if hide is not None else [layout["private"]], NodeLimits(**limits)
    )


def test_public_inputs_visible_and_answers_hidden(layout):
    answers = layout["private"] / "test.csv"
    res = _run(
        layout,
        f"""
        import os
        print("public:", open("input/train.csv").read().splitlines()[1])
        try:
            print("LEAKED", open({str(answers)!r}).read())
        except OSError as exc:
            print("hidden:", type(exc).__name__)
        print("home:", os.environ["HOME"] == os.getcwd(), "keys:", sorted(os.environ))
        """,
        timeout_s=30,
    )
    assert res.returncode == 0, res.log
    assert "public: 1,2" in res.log
    assert "hidden:" in res.log and "SECRET" not in res.log and "LEAKED" not in res.log
    assert "home: True" in res.log
    assert "MLFLOW" not in res.log and "API_KEY" not in res.log  # scrubbed environment
    assert res.hiding in ("bwrap", "mount-namespace", "workdir-only")


def test_child_cannot_unmount_the_cover(layout):
    res = _run(
        layout,
        f"""
        import subprocess
        try:  # under bwrap there is no umount binary at all (nothing outside the view)
            r = subprocess.run(["umount", {str(layout["private"])!r}], capture_output=True)
            print("umount rc", r.returncode)
        except OSError as exc:
            print("no umount", exc)
        caps = [ln for ln in open("/proc/self/status") if ln.startswith("CapEff")][0]
        print("caps", caps.split()[1])
        try:
            print("LEAKED", open({str(layout["private"] / "test.csv")!r}).read())
        except OSError as exc:
            print("still hidden", type(exc).__name__)
        """,
        timeout_s=30,
    )
    assert "still hidden" in res.log and "SECRET" not in res.log
    assert "caps 0000000000000000" in res.log


def test_network_is_refused(layout):
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    port = srv.getsockname()[1]
    try:
        res = _run(
            layout,
            f"""
            import socket
            try:
                socket.create_connection(("127.0.0.1", {port}), timeout=3)
                print("CONNECTED")
            except OSError as exc:
                print("refused:", exc)
            """,
            timeout_s=30,
        )
    finally:
        srv.close()
    assert "refused:" in res.log and "CONNECTED" not in res.log


def test_memory_is_capped(layout):
    res = _run(
        layout,
        """
        block = bytearray(1500 * 1024 * 1024)
        print("ALLOCATED", len(block))
        """,
        timeout_s=30,
        memory_mb=400,
    )
    assert res.returncode != 0 and "MemoryError" in res.log and "ALLOCATED" not in res.log


def test_killed_at_the_time_limit(layout):
    res = _run(layout, "import time\nprint('start', flush=True)\ntime.sleep(60)\n", timeout_s=2)
    assert res.timed_out and res.wall_s < 20
    assert "TimeoutError" in res.log


def test_workdir_inside_a_hidden_path_is_refused(layout):
    node = layout["private"] / "node"
    prepare_workdir(node, layout["input"], "print(1)\n")
    with pytest.raises(ValueError, match="inside a hidden path"):
        run_solution(node, [layout["private"]], NodeLimits(timeout_s=5))
