"""`workbench bench ...`: speed measurements printed side by side (never asserted in tests).

workbench bench prefix-tree [--episodes 16 --turns 8 ...] [--json]
"""

from __future__ import annotations

from typing import Annotated

import typer

from workbench.cli.options import Json
from workbench.cli.output import err_console, print_json, print_table
from workbench.errors import BadInputError

bench_app = typer.Typer(help="Benchmarks (ratios measured side by side in one run).")


@bench_app.command("prefix-tree")
def prefix_tree(
    episodes: Annotated[int, typer.Option(help="Episodes sharing one system prompt.")] = 16,
    turns: Annotated[int, typer.Option(help="Model calls (turns) per episode.")] = 8,
    system_tokens: Annotated[int, typer.Option(help="Shared system prompt length.")] = 128,
    observation_tokens: Annotated[int, typer.Option(help="Tool result tokens per turn.")] = 16,
    completion_tokens: Annotated[int, typer.Option(help="Completion tokens per turn.")] = 16,
    preset: Annotated[str, typer.Option(help="Model preset (tiny | small).")] = "tiny",
    repeats: Annotated[int, typer.Option(help="Timed steps per variant (median).")] = 2,
    threads: Annotated[int | None, typer.Option(help="torch intra-op threads.")] = None,
    as_json: Json = False,
) -> None:
    """One CISPO training step on multi-turn agent trajectories: prefix-tree merged vs
    unmerged (tokens, step times, their ratio and the ratio's limit)."""
    from trainer.rl.benchmark import BenchConfig, run

    if min(episodes, turns, system_tokens, observation_tokens, completion_tokens, repeats) < 1:
        raise BadInputError("every size must be >= 1")
    if preset not in ("tiny", "small"):
        raise BadInputError(f"preset must be tiny or small, got {preset!r}")
    cfg = BenchConfig(
        episodes=episodes,
        turns=turns,
        system_tokens=system_tokens,
        observation_tokens=observation_tokens,
        completion_tokens=completion_tokens,
        preset=preset,
        repeats=repeats,
        threads=threads,
    )
    with err_console.status("timing merged and unmerged training steps..."):
        result = run(cfg)
    if as_json:
        print_json(result)
        return
    keys = (
        "tokens_unmerged",
        "tokens_merged",
        "step_time_unmerged_s",
        "step_time_merged_s",
        "time_ratio",
        "token_ratio_limit",
        "fraction_of_limit",
    )
    print_table("prefix-tree merging", ["metric", "value"], [(k, result[k]) for k in keys])


def register(app: typer.Typer) -> None:
    app.add_typer(bench_app, name="bench")
