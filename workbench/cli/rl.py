"""The model-in-the-loop commands: ``workbench scenarios build``, ``workbench train sft``,
``workbench loop`` (teacher episodes → SFT → RL → held-out evaluation).

``train sft`` and ``loop`` are the two halves a person uses: distil any recorded episodes
into a policy, or run the whole loop on a scenario set and read one row per generation.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from workbench.cli.options import Json, LogTo
from workbench.cli.output import err_console, print_json, print_table


def scenarios_build(
    out: Annotated[Path, typer.Option("--out", help="A new folder for repos, runs, manifest.")],
    split: Annotated[str, typer.Option("--split", help="train | heldout | all")] = "all",
    workers: Annotated[int, typer.Option("--workers", min=1, max=8)] = 2,
    as_json: Json = False,
) -> None:
    """Build the fix scenarios: one repo with a real defect and its failing run each."""
    from workbench.rl.scenarios import build_scenarios

    m = build_scenarios(
        out, split, workers, progress=lambda s: err_console.print(s, highlight=False)
    )
    if as_json:
        print_json(m)
        return
    print_table(
        f"scenarios in {out}",
        ["scenario", "split", "run", "doctor", "findings"],
        [[r["name"], r["split"], r["run_id"][:8], r["doctor_cause"] or "-", ", ".join(r["findings"])]
         for r in m["scenarios"]],
    )  # fmt: skip


def train_sft(
    episodes: Annotated[
        list[Path],
        typer.Option(
            "--episodes", help="Teacher episodes: a home or trajectory folder (repeatable)."
        ),
    ],
    policy: Annotated[
        Path, typer.Option("--policy", help="Policy checkpoint (new folder: a fresh policy).")
    ],
    out: Annotated[
        Path | None, typer.Option("--out", help="Where to save (default: --policy).")
    ] = None,
    steps: Annotated[int, typer.Option("--steps", min=1)] = 300,
    lr: Annotated[float, typer.Option("--lr")] = 2e-3,
    seed: Annotated[int, typer.Option("--seed")] = 0,
    stop_at_p: Annotated[
        float | None,
        typer.Option(
            "--stop-at-p",
            help="Stop early once every teacher token has at least this probability.",
        ),
    ] = None,
    augment: Annotated[
        float,
        typer.Option(
            "--augment",
            help="Share of episodes per step replaced by a rewrite the teacher answers again.",
        ),
    ] = 0.0,
    relabel: Annotated[
        bool,
        typer.Option(
            "--relabel",
            help="DAgger: every recorded answer replaced by the rules teacher's in that context.",
        ),
    ] = False,
    exclude_scenarios: Annotated[
        Path | None,
        typer.Option(
            "--heldout-manifest",
            help="A scenario manifest: its held-out runs' episodes are refused.",
        ),
    ] = None,
    as_json: Json = False,
) -> None:
    """Distil teacher episodes (rules or an openai brain) into the policy."""
    from workbench.errors import BadInputError
    from workbench.rl.episodes import load_episodes
    from workbench.rl.policy import load_policy, new_policy, save_policy
    from workbench.rl.scenarios import load_manifest
    from workbench.rl.sft import SFTConfig, train_sft

    cfg = SFTConfig(
        steps=steps, lr=lr, seed=seed, stop_at_p=stop_at_p, augment=augment, relabel=relabel
    )
    scenario_of, held = {}, set()
    if exclude_scenarios is not None:
        m = load_manifest(exclude_scenarios)
        scenario_of = {r["run_id"]: r["name"] for r in m["scenarios"]}
        held = {r["run_id"] for r in m["scenarios"] if r["split"] == "heldout"}
    eps = load_episodes(episodes, scenario_of)
    leaked = [e.thread_id for e in eps if e.run_id in held]
    if leaked:
        raise BadInputError(
            f"episodes of held-out runs given as training data: {', '.join(leaked[:3])}"
        )
    fresh = not (policy / "config.json").exists()
    model, tok = new_policy(policy, seed=seed) if fresh else load_policy(policy)
    res = train_sft(model, tok, eps, cfg, progress=lambda s: err_console.print(s, highlight=False))
    save_policy(model, tok, out or policy)
    res["policy"] = str(out or policy)
    if as_json:
        print_json(res)
        return
    err_console.print(json.dumps(res, indent=1), highlight=False)


def loop(
    scenarios: Annotated[
        Path, typer.Option("--scenarios", help="A scenario set (workbench scenarios build).")
    ],
    out: Annotated[Path, typer.Option("--out", help="Folder for episodes and checkpoints.")],
    generations: Annotated[int, typer.Option("--generations", min=1)] = 1,
    sft_steps: Annotated[int, typer.Option("--sft-steps", min=1)] = 300,
    sft_augment: Annotated[
        float,
        typer.Option("--augment", help="Share of SFT episodes that are rewritten copies."),
    ] = 0.75,
    rl_iterations: Annotated[int, typer.Option("--rl-iterations", min=0)] = 2,
    group_size: Annotated[int, typer.Option("--group-size", min=2)] = 4,
    temperature: Annotated[float, typer.Option("--temperature")] = 1.0,
    explore: Annotated[
        float,
        typer.Option(
            "--explore",
            help="RL rollouts: share of listed-remedy choices made uniformly at random.",
        ),
    ] = 0.5,
    workers: Annotated[int, typer.Option("--workers", min=1, max=16)] = 2,
    ray: Annotated[bool, typer.Option("--ray", help="Run episodes as Ray tasks.")] = False,
    ray_address: Annotated[
        str | None, typer.Option("--ray-address", help="Ray cluster (default: a local instance).")
    ] = None,
    seed: Annotated[int, typer.Option("--seed")] = 0,
    policy: Annotated[
        Path | None,
        typer.Option("--policy", help="Start RL from this (SFT'd) checkpoint; skips SFT."),
    ] = None,
    tracking_uri: LogTo = None,
    as_json: Json = False,
) -> None:
    """Teacher episodes → SFT → RL iterations → held-out evaluation, a row per generation."""
    from workbench.rl.loop import LoopConfig, run_loop

    cfg = LoopConfig(
        generations=generations, sft_steps=sft_steps, sft_augment=sft_augment, rl_iterations=rl_iterations,
        group_size=group_size, temperature=temperature, explore=explore, workers=workers, ray=ray,
        ray_address=ray_address, seed=seed,
    )  # fmt: skip
    res = run_loop(
        scenarios, out, cfg, tracking_uri, start=policy,
        progress=lambda s: err_console.print(s, highlight=False),
    )  # fmt: skip
    if as_json:
        print_json(res)
        return
    t = res["teacher"]["heldout"]
    rows = [
        [
            "teacher (rules)",
            "-",
            t["verified_fix_rate"],
            t["own_verified_fix_rate"],
            t["mean_attempts_to_fix"],
            "-",
            "-",
            t["wall_s"],
        ]
    ]
    rows += [
        [r["stage"], r["generation"], r["verified_fix_rate"], r["own_verified_fix_rate"],
         r["mean_attempts_to_fix"],
         f"{r['fallbacks']}/{r['brain_calls']}", r["tokens"]["longest_turn"], r["wall_s"]]
        for r in res["rows"]
    ]  # fmt: skip
    print_table(
        "held-out fix episodes",
        [
            "policy",
            "gen",
            "verified-fix rate",
            "own (no fallback)",
            "attempts to fix",
            "fallbacks/calls",
            "longest turn (tok)",
            "wall s",
        ],
        rows,
    )


def register(app: typer.Typer) -> None:
    """``sft`` joins the ``train`` noun; ``loop`` and ``scenarios`` are top-level commands."""
    from workbench.cli.train import train_app

    train_app.command("sft")(train_sft)
    app.command("loop")(loop)
    scen = typer.Typer(help="Fix scenarios for the model-in-the-loop.", no_args_is_help=True)
    scen.command("build")(scenarios_build)
    app.add_typer(scen, name="scenarios")
