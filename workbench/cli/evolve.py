"""``workbench evolve --suite faults [--generations N] [--children K] [--resume] [--json]``,
``workbench evolve archive [--json]`` and ``workbench init`` (the scaffold home)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from workbench.cli.options import DEFAULT_HOME, Home, Json
from workbench.cli.output import console, err_console, print_json, print_table

evolve_app = typer.Typer(
    help="Let the agent improve its own scaffold: edits on branches, proven on held-out runs.",
    invoke_without_command=True,
)


def _f(x) -> str:
    return "-" if x is None else f"{x:.3f}"


@evolve_app.callback()
def evolve(
    ctx: typer.Context,
    suite: Annotated[
        str, typer.Option("--suite", help="Benchmark suite: faults | mle.")
    ] = "faults",
    generations: Annotated[int, typer.Option("--generations", "-g", help="Generations.")] = 5,
    children: Annotated[int, typer.Option("--children", "-k", help="Children per generation.")] = 3,
    store: Annotated[
        Path | None,
        typer.Option("--store", help="The built suite (default HOME/suites/faults)."),
    ] = None,
    scaffold: Annotated[
        Path | None, typer.Option("--scaffold", help="Scaffold git repo (default HOME/scaffold).")
    ] = None,
    start_from: Annotated[
        Path | None,
        typer.Option("--from", help="Start from this scaffold folder instead of the repo HEAD."),
    ] = None,
    seed: Annotated[int, typer.Option("--seed", help="Random seed (parents, mutations).")] = 0,
    brain: Annotated[str, typer.Option("--brain", help="rules | openai | local")] = "rules",
    base_url: Annotated[
        str | None, typer.Option("--base-url", help="OpenAI-compatible endpoint.")
    ] = None,
    model: Annotated[str | None, typer.Option("--model", help="Model name or folder.")] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue an interrupted run.")] = False,
    restart: Annotated[
        bool, typer.Option("--restart", help="Discard the previous run (its branches) first.")
    ] = False,
    mle_steps: Annotated[
        int, typer.Option("--mle-steps", help="mle suite: search steps (nodes) per task run.")
    ] = 4,
    mle_seeds: Annotated[
        int, typer.Option("--mle-seeds", help="mle suite: seeds per task (cost × seeds).")
    ] = 1,
    mle_time_limit: Annotated[
        float, typer.Option("--mle-time-limit", help="mle suite: seconds per task run.")
    ] = 60.0,
    mle_workers: Annotated[
        int, typer.Option("--mle-workers", help="mle suite: task runs in parallel.")
    ] = 2,
    fixes: Annotated[
        bool,
        typer.Option(
            "--fixes/--no-fixes",
            help="faults suite: also score whether each run's top remedy really fixes it "
            "(reruns, measured once and cached).",
        ),
    ] = True,
    fix_cache: Annotated[
        Path | None,
        typer.Option(
            "--fix-cache", help="Remedy-outcome cache (default HOME/evolve/fix-outcomes)."
        ),
    ] = None,
    fix_jobs: Annotated[int, typer.Option("--fix-jobs", min=1, help="Reruns in parallel.")] = 1,
    home: Home = DEFAULT_HOME,
    as_json: Json = False,
) -> None:
    """Evolve the scaffold on a suite; winners go to `workbench review`."""
    if ctx.invoked_subcommand is not None:
        ctx.obj = {"home": home}  # `evolve --home X archive` works as well as `archive --home X`
        return
    from workbench.evolve import run_evolution

    out = err_console if as_json else console

    def log(msg: str) -> None:
        out.print(msg, markup=False, highlight=False)

    with out.status("evolving the scaffold") if not as_json else _null():
        res = run_evolution(
            home=home, store=store, suite=suite, generations=generations, children=children,
            seed=seed, brain=brain, brain_opts={"base_url": base_url, "model": model},
            scaffold=scaffold, start_from=start_from, resume=resume, restart=restart, log=log,
            mle_steps=mle_steps, mle_seeds=mle_seeds, mle_time_limit=mle_time_limit,
            mle_workers=mle_workers, fixes=fixes, fix_cache=fix_cache, fix_jobs=fix_jobs,
        )  # fmt: skip
    if as_json:
        print_json(res)
        return
    g0, best = res["gen0"], res["best"]
    console.print(
        f"gen 0: selection {_f(g0['selection']['fitness'])}, heldout {_f(g0['heldout']['fitness'])}"
        f"  →  best {best['id']}: selection {_f((best['selection'] or {}).get('fitness'))}, "
        f"heldout {_f((best['heldout'] or {}).get('fitness'))}",
        highlight=False,
    )
    if (g0["heldout"] or {}).get("fix_rate") is not None:
        console.print(
            f"heldout fix rate (top remedy verified by a rerun): {_f(g0['heldout']['fix_rate'])}"
            f" → {_f((best['heldout'] or {}).get('fix_rate'))}",
            highlight=False,
        )
    for w in res["winners"]:
        console.print(
            f"  review #{w['review_id']}: {w['id']} (from {w['parent']}) {w['description']}",
            markup=False,
        )
    if not res["winners"]:
        console.print("no child beat its parent on both splits; nothing queued for review")


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False


@evolve_app.command("archive")
def archive_cmd(
    ctx: typer.Context,
    home: Home = DEFAULT_HOME,
    as_json: Json = False,
) -> None:
    """The tree of scaffold variants with their scores."""
    from workbench.evolve import Archive

    given = getattr(ctx.get_parameter_source("home"), "name", None) == "COMMANDLINE"
    if ctx.obj and not given:
        home = ctx.obj["home"]  # `evolve --home X archive`: the group's --home (or its env)
    arch = Archive.load(home / "evolve" / "archive.json")
    if as_json:
        print_json({"config": arch.config, "nodes": [n.__dict__ for _, n in arch.tree()]})
        return
    rows = [
        (
            "  " * d + n.id,
            n.status,
            _f(n.fitness("selection")),
            _f(n.fitness("heldout")),
            n.review_id or "-",
            (n.description or n.error or "")[:90],
        )
        for d, n in arch.tree()
    ]
    print_table(
        f"evolution {arch.config.get('run_id')}",
        ["node", "status", "selection", "heldout", "review", "edit"],
        rows,
    )


def init_cmd(
    home: Home = DEFAULT_HOME,
    scaffold: Annotated[
        Path | None, typer.Option("--scaffold", help="Where (default HOME/scaffold).")
    ] = None,
    source: Annotated[
        Path | None, typer.Option("--from", help="Seed from this scaffold folder.")
    ] = None,
    as_json: Json = False,
) -> None:
    """Create the scaffold home: a git repo seeded from the packaged scaffold."""
    from workbench.evolve.home import init_scaffold

    path, sha, created = init_scaffold(scaffold or home / "scaffold", source)
    if as_json:
        print_json({"scaffold": str(path), "commit": sha, "created": created})
    else:
        what = "created" if created else "already there"
        console.print(f"scaffold repo {what}: {path} ({sha[:10]})", highlight=False)


def register(app: typer.Typer) -> None:
    app.add_typer(evolve_app, name="evolve")
    app.command("init")(init_cmd)
