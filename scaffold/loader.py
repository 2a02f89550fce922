"""Load and validate the scaffold's data files (metric aliases, detector thresholds, playbook).

The scaffold is plain data the agent (and a person) may edit; this loader is the only code
here.  ``load_scaffold(None)`` reads the packaged ``scaffold/``; ``load_scaffold(PATH)`` reads a
copy (the CLI's ``--scaffold PATH``).  Every error names the file and the bad entry.
"""

from __future__ import annotations

import fnmatch
import re
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

PACKAGED = Path(__file__).resolve().parent

FINDING_KINDS = (  # the failure taxonomy (workbench.doctor.types builds on it)
    "nan_inf",
    "divergence",
    "loss_spike",
    "plateau",
    "exploding_gradients",
    "vanishing_gradients",
    "overfitting",
    "expert_collapse",
    "throughput_drop",
    "crash",
    "stalled",
)
CAUSES = (
    "lr_too_high",
    "lr_too_low",
    "missing_grad_clip",
    "fp_overflow",
    "bad_data",
    "overfit_capacity",
    "router_imbalance",
    "oom",
    "code_error",
    "hung_process",
    "slow_io",
)


class ScaffoldError(ValueError):
    """A scaffold file is missing or invalid (the message names file and entry)."""


class _Strict(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


# ---------------------------------------------------------------- metrics.yaml
def _name_matches(pattern: str, name: str) -> bool:
    """A glob (case-insensitive) or, prefixed ``re:``, a regex matched against the whole name."""
    if pattern.startswith("re:"):
        return re.fullmatch(pattern[3:], name, flags=re.IGNORECASE) is not None
    return fnmatch.fnmatchcase(name.lower(), pattern.lower())


def _compile_all(what: str, pats: tuple[str, ...]) -> None:
    for p in pats:
        if p.startswith("re:"):
            try:
                re.compile(p[3:])
            except re.error as exc:
                raise ValueError(f"{what}: bad regex {p!r}: {exc}") from exc


class MetricAliases(_Strict):
    roles: dict[str, tuple[str, ...]]
    params: dict[str, tuple[str, ...]] = Field(default_factory=dict)
    # Sums over the steps since the last log whose first point covers a single step (so it
    # sits far below the next): the first point is dropped before any detector reads them.
    partial_first: tuple[str, ...] = ()
    # Rates of the hardware's use (MFU, TFLOP/s): work grown by design (longer sequences)
    # does not lower them, so a gradual fall of one counts as a slowdown.
    utilization: tuple[str, ...] = ()
    # Rates of units of work (tokens, speech frames, words): a curriculum's longer samples
    # leave them level, so one whose time per unit grew all run is a cost that grew.
    work_rates: tuple[str, ...] = ()
    # Names that never play a role whatever pattern matches them (the evaluation loader's
    # own learning rate and timings, a validation loss per batch of one evaluation).
    exclude: dict[str, tuple[str, ...]] = Field(default_factory=dict)

    @field_validator("roles", "exclude")
    @classmethod
    def _patterns_compile(
        cls, v: dict[str, tuple[str, ...]], info: ValidationInfo
    ) -> dict[str, tuple[str, ...]]:
        for role, pats in v.items():
            _compile_all(f"{info.field_name} {role}", pats)
        return v

    @model_validator(mode="after")
    def _excluded_roles_exist(self) -> MetricAliases:
        unknown = sorted(set(self.exclude) - set(self.roles))
        if unknown:
            raise ValueError(f"exclude names roles that do not exist: {unknown}")
        return self

    @field_validator("partial_first", "utilization", "work_rates")
    @classmethod
    def _names_compile(cls, v: tuple[str, ...], info: ValidationInfo) -> tuple[str, ...]:
        _compile_all(str(info.field_name), v)
        return v

    def matches(self, role: str, name: str) -> int | None:
        """Index of the first pattern of ``role`` matching ``name`` (None if none)."""
        if any(_name_matches(p, name) for p in self.exclude.get(role, ())):
            return None
        for i, p in enumerate(self.roles.get(role, ())):
            if _name_matches(p, name):
                return i
        return None

    def first_is_partial(self, name: str) -> bool:
        return any(_name_matches(p, name) for p in self.partial_first)

    def is_utilization(self, name: str) -> bool:
        return any(_name_matches(p, name) for p in self.utilization)

    def is_work_rate(self, name: str) -> bool:
        return any(_name_matches(p, name) for p in self.work_rates)


# ---------------------------------------------------------------- knobs.yaml
_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")
_FLAG = re.compile(r"^--?[A-Za-z][A-Za-z0-9_-]*$")


class KnobSpec(_Strict):
    description: str
    config: tuple[str, ...] = ()  # dotted config keys, in the vocabularies people use
    flags: tuple[str, ...] = ()  # launch-command flags, with their dashes
    enable: float | int | str | bool | None = None  # what ``op: enable`` sets by default

    @field_validator("config", "flags")
    @classmethod
    def _spelled(cls, v: tuple[str, ...], info) -> tuple[str, ...]:
        pattern, what = (_KEY, "dotted config keys") if info.field_name == "config" else (
            _FLAG, "launch flags (--name)")  # fmt: skip
        bad = [k for k in v if not pattern.match(k)]
        if bad:
            raise ValueError(f"not {what}: {bad}")
        return v


class KnobMap(_Strict):
    knobs: dict[str, KnobSpec]

    @field_validator("knobs")
    @classmethod
    def _one_knob_per_name(cls, v: dict[str, KnobSpec]) -> dict[str, KnobSpec]:
        seen: dict[str, str] = {}
        for knob, spec in v.items():
            if not _KEY.match(knob) or "." in knob:
                raise ValueError(f"knob name {knob!r}: letters, digits and _ only")
            for name in (*spec.config, *spec.flags):
                if name in seen and seen[name] != knob:
                    raise ValueError(f"{name!r} is listed under knobs {seen[name]} and {knob}")
                seen[name] = knob
        return v


# ---------------------------------------------------------------- playbook.yaml
class PatchSpec(_Strict):
    """One remedy edit: a knob (see knobs.yaml) and an operation.

    ``op``: ``scale`` (multiply; stored as ``mul``), ``set``, ``enable`` (set to the remedy's
    value or the knob's ``enable`` value; stored as ``set``), ``add``, ``delete``. ``knob:`` and
    ``key:`` are the same field (a name that is no knob is a literal dotted config key).
    """

    key: str
    op: Literal["set", "mul", "add", "delete"]
    value: float | int | str | bool | None = None

    @model_validator(mode="before")
    @classmethod
    def _knob_ops(cls, data: Any) -> Any:
        if isinstance(data, dict):
            data = dict(data)
            if "knob" in data:
                if "key" in data:
                    raise ValueError("give knob or key, not both")
                data["key"] = data.pop("knob")
            if data.get("op") == "scale":
                data["op"] = "mul"
            elif data.get("op") == "enable":
                data["op"] = "set"
                data.setdefault("value", _ENABLE_PENDING)
        return data


_ENABLE_PENDING = "__enable__"  # filled from knobs.yaml once both files are read


class RemedySpec(_Strict):
    id: str
    description: str
    patch: tuple[PatchSpec, ...] = ()
    when: dict[str, Any] = Field(default_factory=dict)  # optional param condition (see Signal)


class Signal(_Strict):
    """One piece of evidence for a cause; its ``weight`` is added when it holds.

    Exactly one of: ``finding`` (a finding kind is present; ``first: true`` — it is the
    earliest finding; ``metric_role`` — on a metric of that role; ``after: KIND`` — KIND was
    its run-up, e.g. a divergence before the NaN; ``context: FACT`` — its detector measured
    FACT, e.g. ``lr_decayed``; ``alone: true`` — it had no run-up), ``log`` (a regex found
    in the log; beside ``finding``, both must hold),
    ``param`` (a run parameter role compared with ``op``/``value``), ``absent`` (a finding
    kind is *not* present, not even as another's run-up), ``status`` (the run's status is
    one of the list).
    """

    weight: float
    finding: str | None = None
    first: bool = False
    metric_role: str | None = None
    after: str | None = None
    context: str | None = None
    alone: bool = False
    absent: str | None = None
    log: str | None = None
    param: str | None = None
    op: (
        Literal["gt", "ge", "lt", "le", "eq", "ne", "missing", "present", "falsy", "truthy", "in"]
        | None
    ) = None
    value: Any = None
    status: tuple[str, ...] | None = None

    @field_validator("log")
    @classmethod
    def _regex(cls, v: str | None) -> str | None:
        if v is not None:
            re.compile(v)
        return v

    def model_post_init(self, __context: Any) -> None:
        # (a ``log`` beside a ``finding`` narrows it: both must hold)
        kinds = ("finding", "absent", "param", "status", *(() if self.finding else ("log",)))
        chosen = [k for k in kinds if getattr(self, k)]
        if len(chosen) != 1:
            raise ValueError(
                f"a signal needs exactly one of finding/absent/log/param/status, got {chosen}"
            )
        for k in ("finding", "absent", "after"):
            kind = getattr(self, k)
            if kind and kind not in FINDING_KINDS:
                raise ValueError(f"unknown finding kind {kind!r}")
        if self.param and self.op is None:
            raise ValueError(f"param signal {self.param!r} needs an op")


class CauseSpec(_Strict):
    summary: str
    explanation: str
    requires: tuple[str, ...] = ()  # finding kinds of which at least one must be present
    signals: tuple[Signal, ...]
    remedies: tuple[RemedySpec, ...] = ()


class Playbook(_Strict):
    min_score: float = 1.0  # a cause must score at least this to be named (else "unknown")
    causes: dict[str, CauseSpec]
    unknown: CauseSpec | None = None

    @field_validator("causes")
    @classmethod
    def _known_causes(cls, v: dict[str, CauseSpec]) -> dict[str, CauseSpec]:
        bad = [c for c in v if c not in CAUSES]
        if bad:
            raise ValueError(f"unknown causes {bad} (known: {', '.join(CAUSES)})")
        for cause, spec in v.items():
            for kind in spec.requires:
                if kind not in FINDING_KINDS:
                    raise ValueError(f"{cause}.requires: unknown finding kind {kind!r}")
        return v


# ---------------------------------------------------------------- the scaffold
class Scaffold(_Strict):
    root: Path
    metrics: MetricAliases
    detectors: dict[str, dict[str, Any]]
    playbook: Playbook
    knobs: KnobMap

    def prompt(self, name: str) -> str:
        """The text of ``prompts/<name>`` (prompts are plain files the supervisor renders)."""
        path = self.root / "prompts" / name
        if not path.is_file():
            raise ScaffoldError(f"{path}: prompt not found")
        return path.read_text()


def _read_yaml(path: Path) -> Any:
    if not path.is_file():
        raise ScaffoldError(f"{path}: file not found")
    try:
        return yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ScaffoldError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from exc


def _validate(model: type[BaseModel], data: Any, path: Path) -> Any:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"])
        raise ScaffoldError(f"{path}: {where}: {err['msg']}") from exc


def _detectors(data: Any, path: Path) -> dict[str, dict[str, Any]]:
    if not isinstance(data, dict):
        raise ScaffoldError(f"{path}: expected a mapping of detector → thresholds")
    for kind, section in data.items():
        if kind not in FINDING_KINDS:
            raise ScaffoldError(f"{path}: {kind}: not a finding kind")
        if not isinstance(section, dict):
            raise ScaffoldError(f"{path}: {kind}: expected a mapping of thresholds")
        for key, value in section.items():
            ok = isinstance(value, int | float) and not isinstance(value, bool)
            ok = ok or (isinstance(value, list) and all(isinstance(v, str) for v in value))
            if not ok:
                raise ScaffoldError(f"{path}: {kind}.{key}: expected a number or a list of names")
    return data


def load_scaffold(path: str | Path | None = None) -> Scaffold:
    """Load (and cache) the scaffold at ``path`` — the packaged one when None."""
    root = Path(path).expanduser().resolve() if path else PACKAGED
    if not root.is_dir():
        raise ScaffoldError(f"{root}: scaffold folder not found")
    stamp = tuple(
        (root / f).stat().st_mtime_ns if (root / f).exists() else 0
        for f in ("metrics.yaml", "detectors.yaml", "playbook.yaml", "knobs.yaml")
    )
    return _load(root, stamp)


@lru_cache(maxsize=8)
def _load(root: Path, _stamp: tuple[int, ...]) -> Scaffold:
    metrics = _validate(MetricAliases, _read_yaml(root / "metrics.yaml"), root / "metrics.yaml")
    detectors = _detectors(_read_yaml(root / "detectors.yaml"), root / "detectors.yaml")
    playbook = _validate(Playbook, _read_yaml(root / "playbook.yaml"), root / "playbook.yaml")
    # A scaffold copy made before the knob map existed uses the packaged one.
    kpath = root / "knobs.yaml" if (root / "knobs.yaml").exists() else PACKAGED / "knobs.yaml"
    knobs = _validate(KnobMap, _read_yaml(kpath), kpath)
    playbook = _with_enable_values(playbook, knobs, root / "playbook.yaml")
    return Scaffold(root=root, metrics=metrics, detectors=detectors, playbook=playbook, knobs=knobs)


def _with_enable_values(playbook: Playbook, knobs: KnobMap, path: Path) -> Playbook:
    """``op: enable`` without a value takes the knob's ``enable`` value from knobs.yaml."""

    def fill(spec: CauseSpec, cause: str) -> CauseSpec:
        remedies = []
        for r in spec.remedies:
            patch = []
            for p in r.patch:
                if p.value == _ENABLE_PENDING:
                    knob = knobs.knobs.get(p.key)
                    if knob is None or knob.enable is None:
                        raise ScaffoldError(
                            f"{path}: {cause}.{r.id}: op enable on {p.key!r} needs a value "
                            "(the knob has no `enable` value in knobs.yaml)"
                        )
                    p = p.model_copy(update={"value": knob.enable})
                patch.append(p)
            remedies.append(r.model_copy(update={"patch": tuple(patch)}))
        return spec.model_copy(update={"remedies": tuple(remedies)})

    causes = {c: fill(spec, c) for c, spec in playbook.causes.items()}
    unknown = fill(playbook.unknown, "unknown") if playbook.unknown else None
    return playbook.model_copy(update={"causes": causes, "unknown": unknown})


def main(argv: list[str] | None = None) -> None:
    """``python -m scaffold.loader [PATH]``: validate a scaffold folder."""
    import sys

    args = sys.argv[1:] if argv is None else argv
    s = load_scaffold(args[0] if args else None)
    print(
        f"{s.root}: {len(s.metrics.roles)} metric roles, {len(s.detectors)} detectors, "
        f"{len(s.playbook.causes)} causes, {len(s.knobs.knobs)} knobs — ok"
    )


if __name__ == "__main__":
    main()
