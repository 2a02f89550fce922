"""The fault suite as data: scenarios read from ``suite.yaml`` and turned into run configs,
and each scenario's repo — what an agent may edit: its config and its own code."""

from __future__ import annotations

import copy
import hashlib
import json
import string
import tempfile
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

SUITE_FILE = Path(__file__).with_name("suite.yaml")
CODE_DIR = Path(__file__).with_name("code")  # the code defects' templates
REPO_CONFIG = "configs/train.yaml"  # a scenario repo's config
REPO_HOOKS = "src/hooks.py"  # a scenario repo's own code (the config's ``hooks``)

FINDING_KINDS = {
    "nan_inf", "divergence", "loss_spike", "plateau", "exploding_gradients",
    "vanishing_gradients", "overfitting", "expert_collapse", "throughput_drop", "crash",
    "stalled",
}  # fmt: skip
CAUSES = {
    "lr_too_high", "lr_too_low", "missing_grad_clip", "fp_overflow", "bad_data",
    "overfit_capacity", "router_imbalance", "oom", "code_error", "hung_process", "slow_io",
    "healthy",
}  # fmt: skip


class SuiteError(ValueError):
    pass


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class PatchOp(_Strict):
    """A remedy edit: a knob of scaffold/knobs.yaml (or a dotted config key) and an op (same
    shape as the doctor's ``PatchOp``; applied by ``workbench.supervisor.patches.apply_ops``)."""

    key: str
    op: Literal["set", "mul", "add", "delete"]
    value: float | int | str | bool | None = None


class Remedy(_Strict):
    id: str
    description: str
    patch: list[PatchOp]


class Expected(_Strict):
    findings: list[str] = Field(default_factory=list)  # finding kinds; [] = healthy
    cause: str  # a cause from the taxonomy, or "healthy"

    @model_validator(mode="after")
    def _known(self) -> Expected:
        bad = [f for f in self.findings if f not in FINDING_KINDS]
        if bad or self.cause not in CAUSES:
            raise ValueError(f"unknown finding kinds {bad} or cause {self.cause!r}")
        return self


class Code(_Strict):
    """The scenario repo's own code: ``CODE_DIR/<template>.py.tmpl`` rendered with ``params``."""

    template: str
    params: dict[str, float | int] = Field(default_factory=dict)


class Scenario(_Strict):
    id: str
    program: Literal["lm", "digits"]
    config: dict[str, Any] = Field(default_factory=dict)  # deep-merged over the defaults
    # A code defect of the repo (a data bug, a skewed init, gradients thrown away): the repo's
    # ``src/hooks.py``, which the trainer calls (``trainer.hooks``).
    code: Code | None = None
    # A world condition only the harness can switch on (one ``trainer.faults`` entry), passed
    # to the run through the environment, never through a file of the repo.
    harness: dict[str, Any] | None = None
    onset: int = Field(0, ge=0)  # first step a repo defect can show (detection delay)
    expected: Expected
    remedies: list[Remedy] = Field(default_factory=list)
    split: Literal["selection", "heldout"]
    note: str = ""

    @property
    def fault(self) -> dict[str, Any] | None:
        """What is wrong with the run, for scoring (kind + onset step); None for a control."""
        if self.harness:
            return self.harness
        if self.expected.cause == "healthy":
            return None
        return {"kind": self.expected.cause, "start_step": self.onset}


class Suite(_Strict):
    name: str
    stall_timeout_s: float = 20.0  # a run silent this long is hung: killed, left RUNNING
    run_timeout_s: float = 300.0
    defaults: dict[Literal["lm", "digits"], dict[str, Any]]
    scenarios: list[Scenario]

    @model_validator(mode="after")
    def _unique(self) -> Suite:
        ids = [s.id for s in self.scenarios]
        dup = {i for i in ids if ids.count(i) > 1}
        if dup:
            raise ValueError(f"duplicate scenario ids: {sorted(dup)}")
        return self


def deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for k, v in over.items():
        out[k] = (
            deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
        )
    return out


def load_suite(path: str | Path = SUITE_FILE) -> Suite:
    path = Path(path)
    try:
        return Suite.model_validate(yaml.safe_load(path.read_text()))
    except (OSError, yaml.YAMLError, ValidationError) as err:
        raise SuiteError(f"invalid suite {path}: {str(err).splitlines()[0]}") from None


def select(suite: Suite, only: list[str] | None) -> list[Scenario]:
    if not only:
        return list(suite.scenarios)
    known = {s.id: s for s in suite.scenarios}
    missing = [i for i in only if i not in known]
    if missing:
        raise SuiteError(f"unknown scenario ids: {', '.join(missing)}")
    return [known[i] for i in only]


def render_code(template: str, params: dict[str, float | int]) -> str:
    """``CODE_DIR/<template>.py.tmpl`` with each ``$name`` replaced by ``params[name]``."""
    path = CODE_DIR / f"{template}.py.tmpl"
    try:
        return string.Template(path.read_text()).substitute({k: repr(v) for k, v in params.items()})
    except OSError:
        raise SuiteError(f"no code template {path.name}") from None
    except (KeyError, ValueError) as err:
        raise SuiteError(f"code template {path.name}: no value for {err}") from None


def scenario_code(sc: Scenario) -> str | None:
    """The text of the scenario repo's own code (None: the repo has none)."""
    if sc.code is None:
        return None
    try:
        return render_code(sc.code.template, sc.code.params)
    except SuiteError as err:
        raise SuiteError(f"scenario {sc.id}: {err}") from None


def _code_copy(sc: Scenario, text: str) -> Path:
    """A stable copy of the scenario's code outside any repo, for a config used elsewhere
    (a remedy's rerun trains the patched config outside the scenario repo)."""
    from model.files import atomic_write_text

    digest = hashlib.sha256(text.encode()).hexdigest()[:12]
    path = Path(tempfile.gettempdir()) / "workbench-scenario-code" / f"{sc.id}-{digest}.py"
    if not path.is_file():
        atomic_write_text(path, text)
    return path


def scenario_config(suite: Suite, sc: Scenario, hooks: str | None = None) -> dict[str, Any]:
    """The full training config of a scenario (validated by the trainer's schema): the run's
    own settings, defects included; never a fault switch. ``hooks``: where the repo's own code
    is, relative to the run's working directory (default: an absolute copy, usable anywhere)."""
    from trainer.config import ConfigError, dump_config, parse_config

    data = deep_merge(suite.defaults.get(sc.program, {}), sc.config)
    data["run_name"] = sc.id
    code = scenario_code(sc)
    if code is not None:
        data["hooks"] = hooks or str(_code_copy(sc, code))
    try:
        return dump_config(parse_config(sc.program, data, source=f"scenario {sc.id}"))
    except ConfigError as err:
        raise SuiteError(str(err)) from None


def harness_env(sc: Scenario) -> dict[str, str]:
    """The environment that switches the scenario's harness fault on (empty: none)."""
    from trainer.faults import HARNESS_ENV, HarnessError, parse_faults

    if not sc.harness:
        return {}
    try:
        parse_faults([sc.harness])
    except HarnessError as err:
        raise SuiteError(f"scenario {sc.id}: {err}") from None
    return {HARNESS_ENV: json.dumps([sc.harness], sort_keys=True)}
