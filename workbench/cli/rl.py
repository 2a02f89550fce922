"""`workbench train rl`: the RL loop's command (a verb of the `train` sub-app)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from workbench.cli.options import Json, LogTo
from workbench.cli.output import err_console, print_json, print_table


def train_rl(
    policy: Annotated[
        Path, typer.Option("--policy", help="Policy checkpoint folder (empty: fresh tiny).")
    ],
    suite: Annotated[str, typer.Option("--suite", help="Task suite.")] = "faults",
    iterations: Annotated[int, typer.Option("--iterations", help="RL iterations.")] = 32,
    window: Annotated[int, typer.Option("--window", help="Windowed-FIFO window W.")] = 4,
    seed: Annotated[int, typer.Option("--seed")] = 0,
    sft_steps: Annotated[
        int, typer.Option("--sft-steps", help="Most warm-start steps (stops on imitation).")
    ] = 200,
    loss: Annotated[str, typer.Option("--loss", help="cispo | ppo | grpo")] = "cispo",
    lr: Annotated[float, typer.Option("--lr", help="RL learning rate (AdamW).")] = 1e-4,
    temperature: Annotated[
        float, typer.Option("--temperature", help="Rollout sampling temperature.")
    ] = 1.5,
    group_size: Annotated[int, typer.Option("--group-size", help="Rollouts per task.")] = 32,
    sft_smoothing: Annotated[
        float,
        typer.Option("--sft-smoothing", help="Warm start: the non-teacher answers' share."),
    ] = 0.3,
    menu: Annotated[
        str,
        typer.Option("--menu", help="cause: the diagnosed cause's remedies | all: every remedy."),
    ] = "cause",
    answer: Annotated[
        str,
        typer.Option(
            "--answer",
            help="code: remedy letter (fixed per remedy) | letter: menu position | id: remedy id.",
        ),
    ] = "code",
    ratio: Annotated[
        str,
        typer.Option(
            "--ratio",
            help="CISPO's old policy: behaviour (tempered, what sampled) | raw (untempered).",
        ),
    ] = "behaviour",
    adv_norm: Annotated[
        bool,
        typer.Option(
            "--adv-norm/--no-adv-norm", help="Scale each group's advantages by 1 / reward std."
        ),
    ] = True,
    tie_penalty: Annotated[
        float,
        typer.Option(
            "--tie-penalty",
            help="Reward cut for a working fix when the playbook's higher-ranked one works.",
        ),
    ] = 0.1,
    miss_penalty: Annotated[
        float,
        typer.Option(
            "--miss-penalty",
            help="Reward of no_action on a broken run, or of no remedy named: -this.",
        ),
    ] = 0.1,
    via: Annotated[
        str, typer.Option("--via", help="server (serve + gateway) | inprocess (fast path).")
    ] = "server",
    store: Annotated[
        Path | None,
        typer.Option(
            "--store", help="Built fault-suite store: prompts show the doctor's verdicts."
        ),
    ] = None,
    fix_cache: Annotated[
        Path | None,
        typer.Option("--fix-cache", help="Measure rewards by rerunning fixes (cached here)."),
    ] = None,
    fix_cached_only: Annotated[
        bool,
        typer.Option(
            "--fix-cached-only",
            help="With --fix-cache: no new reruns; unmeasured fixes use the suite stand-in.",
        ),
    ] = False,
    threads: Annotated[
        int,
        typer.Option("--threads", help="Torch intra-op threads (tiny policy: 1 is fastest)."),
    ] = 1,
    out: Annotated[Path | None, typer.Option("--out", help="Checkpoints + results.")] = None,
    tracking_uri: LogTo = None,
    as_json: Json = False,
) -> None:
    """CISPO updates of the local policy from its own fault-suite episodes."""
    from workbench.errors import BadInputError
    from workbench.rl.config import RLConfig
    from workbench.rl.loop import run_rl
    from workbench.rl.reward import fix_outcomes_measure, suite_verified

    cfg = RLConfig(  # checks every setting (one-line BadInputError) before any work
        iterations=iterations, window=window, seed=seed, sft_steps=sft_steps, loss=loss,
        lr=lr, temperature=temperature, group_size=group_size, via=via,
        sft_smoothing=sft_smoothing, menu=menu, ratio=ratio,
        adv_norm=adv_norm, tie_penalty=tie_penalty,
        miss_penalty=miss_penalty, answer=answer,
    )  # fmt: skip
    import torch

    torch.set_num_threads(max(1, threads))
    measure = suite_verified
    if fix_cache is not None:
        try:
            measure = fix_outcomes_measure(fix_cache, store=store, measure_new=not fix_cached_only)
        except ImportError as exc:
            raise BadInputError(f"--fix-cache needs workbench.rl.outcomes: {exc}") from None
    with err_console.status("RL: warm start, rollouts, CISPO updates..."):
        result = run_rl(
            policy,
            suite=suite,
            cfg=cfg,
            out_dir=out,
            tracking_uri=tracking_uri,
            store=store,
            measure=measure,
            progress=lambda msg: err_console.print(msg),
        )
    if as_json:
        print_json(result)
        return
    rows = [
        (h["iteration"], f"{h['reward']:.2f}", f"{h['kl_to_start']:.4f}", h["staleness_max"])
        for h in result["iterations"]
    ]
    print_table("RL iterations", ["iter", "reward", "KL to start", "max staleness"], rows)
    err_console.print(
        f"held-out success: rules teacher {result['teacher_success']['heldout']:.2f}, "
        f"SFT {result['heldout_success_sft']:.2f} -> RL {result['heldout_success_rl']:.2f} "
        f"(rollouts via {result['rollouts_via']})"
    )


def register(app: typer.Typer) -> None:
    """``rl`` is a verb of the ``train`` noun: added to the sub-app ``workbench.cli.train`` owns."""
    from workbench.cli.train import train_app

    train_app.command("rl")(train_rl)
