"""Training configs: one YAML file per run, validated with pydantic.

Key names are chosen so that a doctor's remedy is a natural dotted edit of this file:
``optimizer.lr *= 0.1``, ``optimizer.grad_clip = 1.0``, ``moe.bias_update_rate = 0.01``,
``batch_size *= 0.5``, ``data.validate = true``, ``data.num_workers = 4``. A config holds only
settings of the run (a defect included: an LR too high, clipping off); a repo's own code is a
file named by ``hooks``; switches only a harness can flip are ``trainer.faults``'s, never here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError


class ConfigError(ValueError):
    """An invalid config: the message names the bad key and value (one line)."""


class _Section(BaseModel):
    # Unknown keys are errors: a typo in a remedy patch must not be silently ignored.
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class OptimizerConfig(_Section):
    """AdamW with linear warmup then cosine decay to ``min_lr_ratio * lr``."""

    lr: float = Field(3e-3, gt=0)
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = Field(1e-8, gt=0)
    weight_decay: float = Field(0.1, ge=0)
    warmup_steps: int = Field(20, ge=0)
    min_lr_ratio: float = Field(0.1, ge=0, le=1)
    grad_clip: float | None = Field(1.0, description="max global grad norm; null or 0 = off")
    # precision fp16 only: gradients are held in fp16 scaled by this static factor (no
    # dynamic back-off), so a scale too large overflows them to inf.
    loss_scale: float = Field(1.0, gt=0)
    # A step schedule on top: the rate is multiplied by decay_gamma at each of decay_steps.
    decay_steps: list[int] = Field(default_factory=list)
    decay_gamma: float = Field(0.1, gt=0)


class DataConfig(_Section):
    """Where batches come from, and the loader's knobs (workers, read timeout, validation)."""

    corpus: str | None = None  # LM: a text file; None = the corpus shipped in model/data/
    seq_len: int = Field(64, ge=8)  # LM only
    eval_fraction: float = Field(0.1, gt=0, lt=1)
    max_train_items: int | None = Field(None, ge=1)  # tokens (LM) / examples (digits)
    num_workers: int = Field(0, ge=0, le=64)  # background reader threads (prefetch)
    prefetch: int = Field(4, ge=1)  # batches kept ready per worker
    read_timeout_s: float | None = Field(None, gt=0)  # a read slower than this is retried
    validate_batches: bool = Field(False, alias="validate")  # drop corrupted batches

    model_config = ConfigDict(extra="forbid", validate_assignment=True, populate_by_name=True)


class _RunConfig(_Section):
    seed: int = 0
    steps: int = Field(200, ge=1)
    batch_size: int = Field(16, ge=1)
    eval_interval: int = Field(20, ge=1)
    eval_batches: int = Field(4, ge=1)
    # Early stopping: end the run (FINISHED) after this many evals without a new best eval
    # loss; 0 = off. With early_stop_restore the run ends on its best weights (kept in memory)
    # and logs their eval at the stopping step, so its final model is the best one it saw.
    early_stop_patience: int = Field(0, ge=0)
    early_stop_restore: bool = True
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    checkpoint_interval: int = Field(0, ge=0)  # 0 = no checkpoints
    checkpoint_dir: str = "checkpoints"
    experiment: str = "workbench"
    run_name: str | None = None
    # The repo's own code the loop calls (``trainer.hooks``): a path to a Python file.
    hooks: str | None = None
    optimizer: OptimizerConfig = Field(default_factory=OptimizerConfig)
    data: DataConfig = Field(default_factory=DataConfig)


class ModelConfig(_Section):
    preset: str = "tiny"
    overrides: dict[str, Any] = Field(default_factory=dict)


class MoEConfig(_Section):
    # Aux-loss-free balancing: per-step nudge of e_score_correction_bias; 0 = off.
    bias_update_rate: float = Field(1e-3, ge=0)


class LMConfig(_RunConfig):
    program: Literal["lm"] = "lm"
    model: ModelConfig = Field(default_factory=ModelConfig)
    moe: MoEConfig = Field(default_factory=MoEConfig)


class DigitsModelConfig(_Section):
    arch: Literal["mlp", "cnn"] = "mlp"
    hidden: int = Field(64, ge=1)
    depth: int = Field(2, ge=1)


class DigitsConfig(_RunConfig):
    program: Literal["digits"] = "digits"
    model: DigitsModelConfig = Field(default_factory=DigitsModelConfig)


CONFIG_TYPES: dict[str, type[_RunConfig]] = {"lm": LMConfig, "digits": DigitsConfig}


# ---------------------------------------------------------------------------- loading


def _describe(err: ValidationError, data: dict[str, Any]) -> str:
    first = err.errors()[0]
    loc = ".".join(str(p) for p in first["loc"] if not str(p).startswith("function-"))
    value = first.get("input")
    if first["type"] == "missing":
        return f"{loc}: missing"
    return f"{loc} = {value!r}: {first['msg']}"


def parse_config(program: str, data: dict[str, Any] | None, source: str = "config") -> _RunConfig:
    if program not in CONFIG_TYPES:
        raise ConfigError(f"unknown program {program!r} (known: {', '.join(CONFIG_TYPES)})")
    data = dict(data or {})
    if "faults" in data:
        raise ConfigError(
            f"invalid {source}: faults: not a setting of a run (faults are switched on by the "
            "harness, through WORKBENCH_HARNESS_FAULTS, never in a config)"
        )
    data.setdefault("program", program)
    if data["program"] != program:
        raise ConfigError(f"invalid {source}: program = {data['program']!r}, expected {program!r}")
    try:
        return CONFIG_TYPES[program].model_validate(data)
    except ValidationError as err:
        raise ConfigError(f"invalid {source}: {_describe(err, data)}") from None


def load_config(path: str | Path, program: str) -> _RunConfig:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ConfigError(f"invalid {path}: not YAML ({str(err).splitlines()[0]})") from None
    if data is None:  # never a silent full default run
        raise ConfigError(f"invalid {path}: the config is empty")
    if not isinstance(data, dict):
        raise ConfigError(f"invalid {path}: the top level must be a mapping")
    cfg = parse_config(program, data, source=str(path))
    if cfg.hooks is not None and not Path(cfg.hooks).is_file():
        # Checked before a run exists: a missing file is bad input, not a failed run.
        raise ConfigError(
            f"invalid {path}: hooks = {cfg.hooks!r}: no such file (relative to the working "
            "directory)"
        )
    return cfg


def dump_config(cfg: _RunConfig) -> dict[str, Any]:
    return cfg.model_dump(mode="json", by_alias=True, exclude_none=False)


def flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    """``{"optimizer": {"lr": 1}}`` → ``{"optimizer.lr": 1}`` (lists indexed: ``a.0.b``)."""
    out: dict[str, Any] = {}
    items = (
        data.items()
        if isinstance(data, dict)
        else enumerate(data)
        if isinstance(data, list)
        else []
    )
    for key, value in items:
        name = f"{prefix}{key}"
        if isinstance(value, dict | list) and value:
            out.update(flatten(value, name + "."))
        else:
            out[name] = value
    return out


def params_for_tracking(cfg: _RunConfig) -> dict[str, Any]:
    """The flattened config as MLflow params (harness faults are no part of it)."""
    return flatten(dump_config(cfg))
