"""`workbench train rl`: the RL loop's command, added to the `train` sub-app by ``add``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from workbench.cli.output import err_console, print_json, print_table


def add(train_app: typer.Typer) -> None:
    @train_app.command("rl")
    def train_rl(
        policy: Annotated[
            Path, typer.Option("--policy", help="Policy checkpoint folder (empty: fresh tiny).")
        ],
        suite: Annotated[str, typer.Option("--suite", help="Task suite.")] = "faults",
        iterations: Annotated[int, typer.Option("--iterations", help="RL iterations.")] = 6,
        window: Annotated[int, typer.Option("--window", help="Windowed-FIFO window W.")] = 4,
        seed: Annotated[int, typer.Option("--seed")] = 0,
        sft_steps: Annotated[int, typer.Option("--sft-steps", help="Warm-start steps.")] = 60,
        loss: Annotated[str, typer.Option("--loss", help="cispo | ppo | grpo")] = "cispo",
        out: Annotated[Path | None, typer.Option("--out", help="Checkpoints + results.")] = None,
        tracking_uri: Annotated[
            str | None, typer.Option("--tracking-uri", help="MLflow URI (default: no logging).")
        ] = None,
        server_url: Annotated[
            str | None, typer.Option("--server-url", help="Hot-reload this server per iteration.")
        ] = None,
        as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
    ) -> None:
        """CISPO updates of the local policy from its own fault-suite episodes."""
        from workbench.errors import BadInputError
        from workbench.rl import RLConfig, run_rl

        if iterations < 1 or window < 1 or sft_steps < 0:
            raise BadInputError("--iterations and --window must be >= 1, --sft-steps >= 0")
        if loss not in ("cispo", "ppo", "grpo"):
            raise BadInputError(f"--loss must be cispo, ppo or grpo, got {loss!r}")
        cfg = RLConfig(
            iterations=iterations, window=window, seed=seed, sft_steps=sft_steps, loss=loss
        )
        with err_console.status("RL: warm start, rollouts, CISPO updates..."):
            result = run_rl(
                policy,
                suite=suite,
                cfg=cfg,
                out_dir=out,
                tracking_uri=tracking_uri,
                server_url=server_url,
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
            f"held-out success: SFT {result['heldout_success_sft']:.2f} -> "
            f"RL {result['heldout_success_rl']:.2f}"
        )
