"""The MLE search's scaffold: ``scaffold/mle.yaml`` + ``scaffold/mle_solution.py.jinja``.

A small validated loader (pydantic, ``extra="forbid"``): a typo in a knob is an error naming
the file and the field, not a silently ignored value. ``load_mle_scaffold(None)`` reads the
packaged scaffold; a path may be a scaffold folder or the ``mle.yaml`` file itself.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from workbench.errors import BadInputError

PACKAGED = Path(__file__).resolve().parents[2] / "scaffold"
FAMILIES = ("linear", "knn", "svm", "random_forest", "extra_trees", "hist_gb", "mlp")
ENSEMBLES = ("blend", "stack")
FEATURE_OPS = ("scale", "poly", "select", "target")


class _Strict(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class SearchKnobs(_Strict):
    steps: int = Field(8, ge=1, le=500)
    num_drafts: int = Field(3, ge=1, le=50)
    debug_prob: float = Field(0.5, ge=0.0, le=1.0)
    max_debug_depth: int = Field(3, ge=0, le=20)
    time_limit_s: float = Field(600.0, gt=0)
    ensemble_prob: float = Field(0.25, ge=0.0, le=1.0)
    family_switch_prob: float = Field(0.15, ge=0.0, le=1.0)
    feature_prob: float = Field(0.3, ge=0.0, le=1.0)  # improve toggles a feature operator
    explore_c: float = Field(0.5, ge=0.0, le=10.0)  # weight of "little explored" in node choice
    ensemble_size: int = Field(3, ge=2, le=8)  # best distinct candidates an ensemble takes


class SandboxKnobs(_Strict):
    node_timeout_s: float = Field(90.0, gt=0)
    cpu_s: int = Field(180, ge=1)
    memory_mb: int = Field(4096, ge=256)
    threads: int = Field(1, ge=1, le=64)
    # local: bubblewrap when it works here, else the unshare fallback (which records what it
    # does not cover); auto: also tries Docker before falling back; bwrap / unshare / docker: only
    backend: Literal["local", "auto", "bwrap", "unshare", "docker"] = "local"
    image: str = "python:3.11-slim"


class ValidationKnobs(_Strict):
    folds: int = Field(3, ge=2, le=20)


Grid = dict[str, list[Any]]


class Families(_Strict):
    classification: dict[str, Grid]
    regression: dict[str, Grid]

    @field_validator("classification", "regression")
    @classmethod
    def _known(cls, v: dict[str, Grid]) -> dict[str, Grid]:
        if not v:
            raise ValueError("needs at least one model family")
        for fam, grid in v.items():
            if fam not in FAMILIES:
                raise ValueError(f"unknown family {fam!r} (known: {', '.join(FAMILIES)})")
            for name, values in grid.items():
                if not values:
                    raise ValueError(f"{fam}.{name}: empty grid")
        return v


def check_spec(spec: Any) -> dict:
    """A rules-brain spec: a family (+ params, fe ops, calibrate) or an ensemble of specs."""
    if not isinstance(spec, dict) or "family" not in spec:
        raise ValueError(f"a spec needs a family: {spec!r}")
    fam = spec["family"]
    if fam in ENSEMBLES:
        members = spec.get("members")
        if not isinstance(members, list) or len(members) < 2:
            raise ValueError(f"{fam}: needs at least two members")
        for m in members:
            check_spec(m)
        return spec
    if fam not in FAMILIES:
        raise ValueError(f"unknown family {fam!r} (known: {', '.join(FAMILIES + ENSEMBLES)})")
    unknown = set(spec) - {"family", "params", "fe", "calibrate"}
    unknown |= set(spec.get("fe") or {}) - set(FEATURE_OPS)
    if unknown:
        raise ValueError(f"{fam}: unknown keys {sorted(unknown)}")
    if spec.get("calibrate") not in (None, "sigmoid", "isotonic"):
        raise ValueError(f"{fam}: calibrate must be sigmoid or isotonic")
    return spec


class Drafts(_Strict):
    """Draft recipes in order of prior belief (the first drafts of every run)."""

    classification: list[dict[str, Any]] = []
    regression: list[dict[str, Any]] = []

    @field_validator("classification", "regression")
    @classmethod
    def _specs(cls, v: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [check_spec(s) for s in v]


class Prompts(_Strict):
    system: str
    draft: str
    improve: str
    debug: str
    format_retry: str


class MleScaffold(_Strict):
    search: SearchKnobs = SearchKnobs()
    sandbox: SandboxKnobs = SandboxKnobs()
    validation: ValidationKnobs = ValidationKnobs()
    families: Families
    drafts: Drafts = Drafts()
    scaled_families: list[str] = ["linear", "knn", "svm"]
    prompts: Prompts
    template: str = ""  # the solution script template (from mle_solution.py.jinja)
    source: str = ""  # where it was read from

    def with_search(self, **overrides: Any) -> MleScaffold:
        """A copy with some search knobs replaced (CLI flags win over the file)."""
        clean = {k: v for k, v in overrides.items() if v is not None}
        return self.model_copy(update={"search": self.search.model_copy(update=clean)})


def load_mle_scaffold(path: str | Path | None = None) -> MleScaffold:
    p = Path(path) if path else PACKAGED
    yaml_path = p / "mle.yaml" if p.is_dir() else p
    template_path = yaml_path.parent / "mle_solution.py.jinja"
    if not yaml_path.is_file():
        raise BadInputError(f"{yaml_path}: no MLE scaffold file there")
    try:
        data = yaml.safe_load(yaml_path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise BadInputError(f"{yaml_path}: invalid YAML ({str(exc).splitlines()[0]})") from None
    if not template_path.is_file():
        template_path = PACKAGED / "mle_solution.py.jinja"
    if not isinstance(data, dict):
        raise BadInputError(f"{yaml_path}: expected a mapping at the top level")
    data = {**data, "template": template_path.read_text(), "source": str(yaml_path)}
    try:
        return MleScaffold.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(x) for x in err["loc"])
        raise BadInputError(f"{yaml_path}: {where}: {err['msg']}") from None
