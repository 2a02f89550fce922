"""`workbench review list|show|approve|reject`: the queue of proposed fixes."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from workbench.cli.options import DEFAULT_HOME, Home, Json
from workbench.cli.output import cancelled, console, print_diff, print_json, print_table

review_app = typer.Typer(help="Review the fixes the supervisor proposed.", no_args_is_help=True)


def _queue(home: Path):
    from workbench.errors import BadInputError
    from workbench.supervisor.review import ReviewQueue

    if not (home / "review.db").exists():
        raise BadInputError(f"no review queue in {home} (run `workbench fix` first)")
    return ReviewQueue(home / "review.db")


@review_app.command("list")
def list_cmd(
    home: Home = DEFAULT_HOME,
    status: Annotated[
        str | None, typer.Option("--status", help="pending|unverified|approved|rejected")
    ] = None,
    as_json: Json = False,
) -> None:
    """List review items."""
    items = _queue(home).list(status)
    if as_json:
        print_json([i.to_json() for i in items])
        return
    rows = []
    for i in items:
        d = i.data
        rows.append([
            i.id, i.status, i.run_id[:12], (d.get("diagnosis") or {}).get("cause"),
            (d.get("remedy") or {}).get("remedy_id"), i.branch, "yes" if i.verified else "no",
        ])  # fmt: skip
    print_table(
        "review queue", ["id", "status", "run", "cause", "remedy", "branch", "verified"], rows
    )


@review_app.command("show")
def show_cmd(item_id: int, home: Home = DEFAULT_HOME, as_json: Json = False) -> None:
    """Show one item: diff, diagnosis, evidence, before/after numbers, report and plots."""
    from workbench.runs import gitops

    item = _queue(home).get(item_id)
    diff = ""
    if item.branch and item.base_sha and item.status in ("pending", "unverified"):
        diff = gitops.diff(Path(item.repo), item.base_sha, item.branch)
    if as_json:
        print_json({**item.to_json(), "diff": diff})
        return
    d = item.data
    diag = d.get("diagnosis") or {}
    console.print(f"[bold]#{item.id}[/] {item.status} — run {item.run_id} → {item.new_run_id}")
    console.print(f"branch {item.branch}  verified: {'yes' if item.verified else 'no'}")
    console.print(
        f"diagnosis: {diag.get('cause')} ({diag.get('confidence', 0):.2f}) {diag.get('summary', '')}",
        markup=False,
        soft_wrap=True,
    )
    for f in d.get("findings", []):
        console.print(
            f"  finding {f['kind']} @ {f.get('step')}: {f['evidence']}",
            markup=False,
            highlight=False,
        )
    b, a = d.get("before") or {}, d.get("after") or {}
    console.print(f"best {b.get('eval_metric')}: {b.get('best_eval')} → {a.get('best_eval')}; "
                  f"last step {b.get('last_step')} → {a.get('last_step')}")  # fmt: skip
    console.print(f"checks: {'; '.join(d.get('reasons') or [])}", markup=False, soft_wrap=True)
    plots = ", ".join(d.get("plots") or []) or "-"
    console.print(f"report: {d.get('report')}  plots: {plots}", markup=False, soft_wrap=True)
    if item.reason:
        console.print(f"reason: {item.reason}", markup=False, soft_wrap=True)
    if diff:
        print_diff(diff)


@review_app.command("approve")
def approve_cmd(
    item_id: int,
    home: Home = DEFAULT_HOME,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
    as_json: Json = False,
    unverified: Annotated[
        bool, typer.Option("--unverified", help="Merge even though the fix did not verify.")
    ] = False,
) -> None:
    """Merge the item's branch into the repo's current branch (asks first unless --yes)."""
    from workbench.runs import gitops

    queue = _queue(home)
    item = queue.get(item_id)
    queue.check_approvable(item, unverified)  # before asking anything
    if not yes:
        target = gitops.current_branch(Path(item.repo))
        what = "the NOT VERIFIED fix " if item.status == "unverified" else ""
        question = f"merge {what}{item.branch} into {target} of {item.repo}?"
        if not typer.confirm(question, default=False):
            cancelled()
    sha = queue.approve(item_id, unverified=unverified)
    if as_json:
        print_json({"id": item_id, "status": "approved", "merge_commit": sha})
    else:
        console.print(f"#{item_id} approved: merged {item.branch} ({sha[:10]})")


@review_app.command("reject")
def reject_cmd(
    item_id: int,
    home: Home = DEFAULT_HOME,
    reason: Annotated[
        str | None, typer.Option("--reason", help="Why (kept with the record).")
    ] = None,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
    as_json: Json = False,
) -> None:
    """Delete the item's branch and worktree; the record stays with its reason."""
    queue = _queue(home)
    item = queue.get(item_id)
    if not yes and not typer.confirm(f"delete branch {item.branch}?", default=False):
        cancelled()
    queue.reject(item_id, reason)
    if as_json:
        print_json({"id": item_id, "status": "rejected", "reason": reason})
    else:
        console.print(f"#{item_id} rejected: {item.branch} deleted")


def register(app: typer.Typer) -> None:
    app.add_typer(review_app, name="review")
