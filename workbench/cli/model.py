"""`workbench model …`: parameter counts of a config (info) and random checkpoints (init)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from workbench.cli.options import Json
from workbench.cli.output import console, print_json, print_table
from workbench.errors import BadInputError

model_app = typer.Typer(help="MiniMax-M2 configs and checkpoints.", no_args_is_help=True)

PresetOpt = Annotated[
    str | None, typer.Option("--preset", help="Preset name: minimax-m2, small or tiny.")
]
ConfigOpt = Annotated[
    Path | None, typer.Option("--config", help="A config.json (or a checkpoint directory).")
]

# Initialising more than this on a CPU machine would only exhaust memory.
MAX_INIT_PARAMS = 5_000_000_000


def resolve_config(preset: str | None, config: Path | None):
    from model.checkpoint import read_config
    from model.config import MiniMaxM2Config

    if (preset is None) == (config is None):
        raise BadInputError("give exactly one of --preset NAME or --config FILE")
    if preset is not None:
        try:
            return MiniMaxM2Config.from_preset(preset)
        except ValueError as exc:
            raise BadInputError(str(exc)) from exc
    if config.is_dir():
        return read_config(config)[0]
    if not config.is_file():
        raise BadInputError(f"config file not found: {config}")
    # a bare config.json: read it through the same validation as a checkpoint directory
    import json

    from model.config import MiniMaxM2Config

    try:
        return MiniMaxM2Config.from_dict(json.loads(config.read_text()))
    except json.JSONDecodeError as exc:
        raise BadInputError(f"{config} is not valid JSON: {exc}") from exc
    except (ValueError, TypeError, AttributeError) as exc:
        raise BadInputError(f"{config}: {exc}") from exc


@model_app.command("info")
def info(preset: PresetOpt = None, config: ConfigOpt = None, json_out: Json = False) -> None:
    """Total, active and MTP parameter counts, with a per-component table."""
    from model.params import count_params, human

    cfg = resolve_config(preset, config)
    counts = count_params(cfg)
    if json_out:
        print_json({"preset": preset, **counts.to_dict()})
        return
    print_table(
        f"MiniMax-M2 parameters ({preset or config})",
        ["component", "total", "active per token"],
        [(c.name, human(c.total), human(c.active)) for c in counts.components],
    )
    console.print(
        f"total (without MTP):        {human(counts.total_params)} ({counts.total_params})"
    )
    console.print(f"active per token:           {human(counts.active_params)}")
    console.print(f"active without emb/lm_head: {human(counts.active_params_non_embedding)}")
    console.print(f"MTP modules ({cfg.num_mtp_modules}):            {human(counts.mtp_params)}")


@model_app.command("init")
def init(
    out: Annotated[Path, typer.Option("--out", help="Checkpoint directory to write.")],
    preset: PresetOpt = None,
    config: ConfigOpt = None,
    seed: Annotated[int, typer.Option("--seed", help="Random seed of the weights.")] = 0,
    json_out: Json = False,
) -> None:
    """Write a randomly initialised checkpoint (config, weights, tokenizer.json)."""
    import torch

    from model.modeling import MiniMaxM2ForCausalLM
    from model.params import count_params
    from model.tokenizer import default_tokenizer, save_tokenizer

    cfg = resolve_config(preset, config)
    n = count_params(cfg).total_params
    if n > MAX_INIT_PARAMS:
        raise BadInputError(f"{n:,} parameters is too large to initialise on this machine")
    tok = default_tokenizer()
    if tok.get_vocab_size() > cfg.vocab_size:
        raise BadInputError(
            f"vocab_size {cfg.vocab_size} is smaller than the tokenizer's {tok.get_vocab_size()}"
        )
    if out.exists() and not out.is_dir():
        raise BadInputError(f"--out {out} exists and is not a directory")
    with console.status("initialising", spinner="dots") if not json_out else _null():
        with torch.device("meta"):
            model = MiniMaxM2ForCausalLM(cfg)
        model.to_empty(device="cpu")
        model.init_weights(torch.Generator().manual_seed(seed))
        model.save_pretrained(out)
        save_tokenizer(tok, out)
    result = {"out": str(out), "total_params": n, "seed": seed, "files": sorted(os.listdir(out))}
    if json_out:
        print_json(result)
    else:
        console.print(f"wrote {out} ({n:,} parameters, seed {seed})")


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False


def register(app: typer.Typer) -> None:
    app.add_typer(model_app, name="model")
