"""The foreign suite as data: programs, their split, and every run's label (``suite.yaml``).

Labels were written before the doctor was tuned on these runs and are never changed to fit it.
A label names the finding kinds of which at least one must be found (``any_of``; empty for a
healthy run), kinds that may be found as well without counting against the doctor
(``allowed``), and the cause the run's own evidence shows (``healthy`` for a healthy run).
The split is by *program*: thresholds are tuned on the ``selection`` programs only.
A label is written from a run's raw history after its build, so this file, not the tag a build
wrote on the run, is what ``suite eval`` scores.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from experiments.faults.suite import CAUSES, FINDING_KINDS, SuiteError

SUITE_FILE = Path(__file__).with_name("suite.yaml")
PROGRAMS = Path(__file__).with_name("programs")
Split = Literal["selection", "heldout"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Label(_Strict):
    any_of: list[str] = Field(default_factory=list)  # at least one must be found; [] = healthy
    allowed: list[str] = Field(default_factory=list)  # may be found too, no penalty
    cause: str

    @model_validator(mode="after")
    def _known(self) -> Label:
        bad = [k for k in self.any_of + self.allowed if k not in FINDING_KINDS]
        if bad or self.cause not in CAUSES:
            raise ValueError(f"unknown finding kinds {bad} or cause {self.cause!r}")
        if (self.cause == "healthy") != (not self.any_of):
            raise ValueError("a healthy run has no any_of kinds, a faulty one has some")
        return self


class Run(_Strict):
    id: str
    program: str
    args: dict[str, str | int | float] = Field(default_factory=dict)  # --key value flags
    label: Label
    note: str = ""


class Suite(_Strict):
    name: str
    run_timeout_s: float = 300.0
    stall_timeout_s: float = 60.0
    memory_limit_mb: int = 0  # the harness's memory limit per run (RLIMIT_AS), 0 = none
    programs: dict[str, Split]  # program → split
    runs: list[Run]

    @model_validator(mode="after")
    def _check(self) -> Suite:
        ids = [r.id for r in self.runs]
        dup = {i for i in ids if ids.count(i) > 1}
        if dup:
            raise ValueError(f"duplicate run ids: {sorted(dup)}")
        unknown = {r.program for r in self.runs} - set(self.programs)
        if unknown:
            raise ValueError(f"runs of programs without a split: {sorted(unknown)}")
        return self

    def split_of(self, run: Run) -> Split:
        return self.programs[run.program]


def load_suite(path: str | Path = SUITE_FILE) -> Suite:
    path = Path(path)
    try:
        suite = Suite.model_validate(yaml.safe_load(path.read_text()))
    except (OSError, yaml.YAMLError, ValidationError) as err:
        raise SuiteError(f"invalid suite {path}: {str(err).splitlines()[0]}") from None
    missing = [p for p in suite.programs if not (PROGRAMS / f"{p}.py").is_file()]
    if missing:
        raise SuiteError(f"invalid suite {path}: no program file for {missing}")
    return suite


def select(suite: Suite, only: list[str] | None = None, split: str = "all") -> list[Run]:
    """Runs by id (all when None), restricted to one split unless ``split`` is ``all``."""
    known = {r.id: r for r in suite.runs}
    missing = [i for i in only or [] if i not in known]
    if missing:
        raise SuiteError(f"unknown run ids: {', '.join(missing)}")
    runs = [known[i] for i in only] if only else list(suite.runs)
    return [r for r in runs if split == "all" or suite.split_of(r) == split]
