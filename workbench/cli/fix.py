"""`workbench fix RUN_ID`: diagnose a failing run, fix it on a branch, verify, queue for review."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from trainer.tags import Tag
from workbench.cli.options import DEFAULT_HOME, DEFAULT_TRACKING_URI, Home, Json, TrackingUri
from workbench.cli.output import cancelled, console, err_console, print_json, print_table


def fix_cmd(
    run_id: Annotated[str | None, typer.Argument(help="The failing run's id.")] = None,
    repo: Annotated[Path, typer.Option("--repo", help="The training repo (git).")] = Path("."),
    tracking_uri: TrackingUri = DEFAULT_TRACKING_URI,
    home: Home = DEFAULT_HOME,
    brain: Annotated[str, typer.Option("--brain", help="rules | openai | local")] = "rules",
    base_url: Annotated[
        str | None, typer.Option("--base-url", help="OpenAI-compatible URL.")
    ] = None,
    model: Annotated[
        str | None, typer.Option("--model", help="Model name (openai) or dir (local).")
    ] = None,
    approve: Annotated[bool, typer.Option("--approve", help="Ask before relaunching.")] = False,
    answer: Annotated[
        str | None, typer.Option("--answer", help="Answer a pending approval (yes/no).")
    ] = None,
    resume: Annotated[
        str | None, typer.Option("--resume", help="Resume episode THREAD_ID.")
    ] = None,
    thread: Annotated[str | None, typer.Option("--thread", help="Id for a new episode.")] = None,
    max_attempts: Annotated[int, typer.Option("--max-attempts", min=1, max=10)] = 3,
    backend: Annotated[str, typer.Option("--backend", help="local | docker")] = "local",
    as_json: Json = False,
    launch: Annotated[
        str | None,
        typer.Option(
            "--launch",
            help='How to start a run, e.g. "python train.py --config {config}" '
            "(instead of the repo's workbench.yaml).",
        ),
    ] = None,
    config: Annotated[
        str | None, typer.Option("--config", help="The config file the run reads (repo path).")
    ] = None,
) -> None:
    """Fix a failing run on a workbench/fix branch, verify the fix, and queue it for review."""
    out = fix_episode(
        run_id, repo=repo, tracking_uri=tracking_uri, home=home, brain=brain, base_url=base_url,
        model=model, approve=approve, answer=answer, resume=resume, thread=thread,
        max_attempts=max_attempts, backend=backend, as_json=as_json, launch_cmd=launch, config_path=config,
    )  # fmt: skip
    show_summary([out], as_json)
    if out["status"] == "declined":
        cancelled()


def fix_episode(
    run_id, *, as_json: bool = False, base_url=None, model=None, thread=None, **kw
) -> dict:
    """``fix_run`` with progress on stderr and an interactive approval prompt (for watch --fix)."""
    from workbench.supervisor.episode import fix_run

    def progress(msg: str) -> None:
        err_console.print(f"[dim]·[/] {msg}", highlight=False)

    opts = {"base_url": base_url, "model": model}
    out = fix_run(run_id, brain_opts=opts, thread_id=thread, progress=progress, **kw)
    if out["status"] == "waiting_approval" and not as_json and kw.get("answer") is None:
        err_console.print(out["question"]["question"])
        console.print(out["question"]["diff"], markup=False, highlight=False)
        reply = "yes" if typer.confirm("relaunch with this change?", default=False) else "no"
        kw = {**kw, "resume": out["thread_id"], "answer": reply}
        out = fix_run(None, brain_opts=opts, progress=progress, **kw)
    return out


def fix_failing(
    verdicts, *, tracking_uri: str, repo: Path, home: Path, done: set[str], **kw
) -> list[dict]:
    """For ``workbench watch --fix``: fix every failing run of a watch pass, once each.

    Runs that are themselves fixes (tagged ``workbench.parent_run``) are left to the episode
    that launched them, so the watcher never fixes a fix.
    """
    from workbench.runs.launch import absolute_tracking_uri
    from workbench.runs.tracking import TrackingClient

    client = TrackingClient(absolute_tracking_uri(tracking_uri))
    out = []
    for v in verdicts:
        if v.status != "failing" or v.run_id in done:
            continue
        done.add(v.run_id)
        if Tag.PARENT_RUN in client.tags(v.run_id):
            continue
        out.append(
            fix_episode(
                v.run_id, tracking_uri=tracking_uri, repo=repo, home=home, as_json=True, **kw
            )
        )
    return out


def show_summary(rows: list[dict], as_json: bool) -> None:
    if as_json:
        print_json(rows if len(rows) != 1 else rows[0])
        return
    print_table(
        "fix episodes",
        ["thread", "run", "status", "diagnosis", "remedy", "verified", "before", "after", "review"],
        [
            [r["thread_id"], (r["run_id"] or "")[:12], r["status"], r["diagnosis"], r["remedy"],
             r["verified"], _fmt(r["before"]), _fmt(r["after"]), r["review_id"] or "-"]
            for r in rows
        ],
    )  # fmt: skip
    for r in rows:  # in full, on a line of its own: the table may cut it, --resume needs it
        console.print(f"thread {r['thread_id']}", highlight=False, soft_wrap=True)


def _fmt(v) -> str:
    return "-" if v is None else f"{v:.4g}"


def register(app: typer.Typer) -> None:
    app.command("fix")(fix_cmd)
