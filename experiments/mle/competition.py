"""MLE-Bench competition directories: load one, prepare its data, grade a submission.

A competition directory holds ``config.yaml``, ``description.md``, ``prepare.py``, ``grade.py``
and ``leaderboard.csv`` (MLE-Bench's layout). Data lives apart, under a *data dir*:
``<data>/<id>/prepared/public`` (what an agent sees) and ``<data>/<id>/prepared/private``
(the answers, read only by the grader). ``config.yaml``'s dataset paths are relative to the
data dir, as in MLE-Bench, so a real competition prepared by ``mlebench prepare`` loads
unchanged when ``--data-dir`` points at MLE-Bench's data dir.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import yaml

from experiments.mle.grading import Report, grade_submission

TASKS_DIR = Path(__file__).resolve().parent / "tasks"
# The built-in "lite" split: every task we ship (all small, all tabular).
LITE = (
    "digits-recognition",
    "wine-cultivar",
    "breast-cancer-diagnosis",
    "diabetes-progression",
    "friedman-regression",
    "diabetes-severity",
    "diabetes-cost",
    "breast-cancer-categorical",
)
# Which built-in task tunes the search and which is held out: one file, read here only.
SPLIT_FILE = Path(__file__).resolve().parent / "split.yaml"
SPLITS = ("tune", "heldout")


class CompetitionError(ValueError):
    """A competition directory or its data is missing or invalid (one clear line)."""


def default_data_dir() -> Path:
    return Path(os.environ.get("WORKBENCH_MLE_DATA", ".workbench/mle/data")).resolve()


@dataclass(frozen=True)
class Competition:
    id: str
    name: str
    comp_dir: Path
    data_dir: Path
    description: str
    grader_name: str
    grade_fn_spec: str
    preparer_spec: str
    answers: Path
    sample_submission: Path
    leaderboard: Path
    awards_medals: bool
    competition_type: str

    @property
    def public_dir(self) -> Path:
        return self.data_dir / self.id / "prepared" / "public"

    @property
    def private_dir(self) -> Path:
        return self.data_dir / self.id / "prepared" / "private"

    @property
    def raw_dir(self) -> Path:
        return self.data_dir / self.id / "raw"

    def is_prepared(self) -> bool:
        return self.answers.is_file() and self.sample_submission.is_file()

    def grade_fn(self) -> Callable:
        return _load_fn(self.grade_fn_spec, self.comp_dir, "grade")

    def grade(self, submission: Path) -> Report:
        if not self.is_prepared():
            raise CompetitionError(f"{self.id} is not prepared (run `workbench mle prepare`)")
        return grade_submission(
            self.id, self.grade_fn(), Path(submission), self.answers, self.leaderboard
        )


def _load_fn(spec: str, comp_dir: Path, stem: str) -> Callable:
    """``module.path:fn``; the competition's own ``<stem>.py`` is used when the module is it.

    MLE-Bench names functions ``mlebench.competitions.<id>.grade:grade``; loading the file from
    the directory we were given means a copied competition works without ``mlebench`` on the
    path (its ``grade.py`` may still import ``mlebench`` helpers).
    """
    if ":" not in spec:
        raise CompetitionError(f"bad function spec {spec!r} (expected module:function)")
    module_name, fn_name = spec.rsplit(":", 1)
    local = comp_dir / f"{stem}.py"
    if module_name.rsplit(".", 1)[-1] == stem and local.is_file():
        key = "_mle_" + hashlib.sha1(str(local).encode()).hexdigest()[:12] + f"_{stem}"
        loader_spec = importlib.util.spec_from_file_location(key, local)
        module = importlib.util.module_from_spec(loader_spec)
        try:
            loader_spec.loader.exec_module(module)
        except ImportError as exc:
            raise CompetitionError(f"{local}: {exc}") from exc
    else:
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            raise CompetitionError(f"cannot import {module_name}: {exc}") from exc
    fn = getattr(module, fn_name, None)
    if not callable(fn):
        raise CompetitionError(f"{spec}: no function {fn_name!r}")
    return fn


def resolve_task(task: str | Path) -> Path:
    """A built-in task id or a path to a competition directory."""
    p = Path(task)
    if (p / "config.yaml").is_file():
        return p.resolve()
    builtin = TASKS_DIR / str(task)
    if (builtin / "config.yaml").is_file():
        return builtin
    raise CompetitionError(
        f"{task}: not a competition directory (no config.yaml) nor a built-in task "
        f"({', '.join(LITE)})"
    )


def load_competition(task: str | Path, data_dir: Path | None = None) -> Competition:
    comp_dir = resolve_task(task)
    data_dir = Path(data_dir).resolve() if data_dir else default_data_dir()
    cfg_path = comp_dir / "config.yaml"
    try:
        cfg = yaml.safe_load(cfg_path.read_text())
        cid = str(cfg["id"])
        dataset = cfg["dataset"]
        grader = cfg["grader"]
        desc_file = comp_dir / "description.md"
        description = desc_file.read_text() if desc_file.is_file() else str(cfg.get("name", cid))
        return Competition(
            id=cid,
            name=str(cfg.get("name", cid)),
            comp_dir=comp_dir,
            data_dir=data_dir,
            description=description,
            grader_name=str(grader.get("name", "score")),
            grade_fn_spec=str(grader["grade_fn"]),
            preparer_spec=str(cfg.get("preparer", "")),
            answers=data_dir / dataset["answers"],
            sample_submission=data_dir / dataset["sample_submission"],
            leaderboard=comp_dir / "leaderboard.csv",
            awards_medals=bool(cfg.get("awards_medals", True)),
            competition_type=str(cfg.get("competition_type", "simple")),
        )
    except (OSError, yaml.YAMLError, KeyError, TypeError, AttributeError) as exc:
        raise CompetitionError(f"{cfg_path}: invalid competition config ({exc!r})") from None


def prepare(comp: Competition, force: bool = False) -> Competition:
    """Run the competition's preparer into ``prepared/{public,private}`` (atomically)."""
    if comp.is_prepared() and not force:
        return comp
    fn = _load_fn(comp.preparer_spec, comp.comp_dir, "prepare")
    prepared = comp.data_dir / comp.id / "prepared"
    prepared.parent.mkdir(parents=True, exist_ok=True)
    # Build in a sibling temp dir, then swap in: a crash never leaves half a dataset.
    tmp = Path(tempfile.mkdtemp(prefix=".prepare-", dir=prepared.parent))
    try:
        (tmp / "public").mkdir()
        (tmp / "private").mkdir()
        comp.raw_dir.mkdir(parents=True, exist_ok=True)
        fn(comp.raw_dir, tmp / "public", tmp / "private")
        os.chmod(tmp / "private", 0o700)
        if prepared.exists():
            shutil.rmtree(prepared)
        os.replace(tmp, prepared)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    if not comp.is_prepared():
        raise CompetitionError(f"{comp.id}: the preparer did not write the answers / sample")
    return comp


def task_split() -> dict[str, tuple[str, ...]]:
    """``{"tune": ids, "heldout": ids}`` from ``split.yaml``: every built-in task on one side."""
    try:
        data = yaml.safe_load(SPLIT_FILE.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise CompetitionError(f"{SPLIT_FILE}: unreadable ({exc})") from None
    if not isinstance(data, dict) or set(data) != set(SPLITS):
        raise CompetitionError(f"{SPLIT_FILE}: needs exactly the keys {', '.join(SPLITS)}")
    split = {k: tuple(str(t) for t in data[k] or ()) for k in SPLITS}
    both = set(split["tune"]) & set(split["heldout"])
    named = [t for k in SPLITS for t in split[k]]
    if both or len(named) != len(set(named)) or set(named) != set(LITE):
        raise CompetitionError(
            f"{SPLIT_FILE}: every built-in task must sit on exactly one side "
            f"(on both: {sorted(both)}; missing: {sorted(set(LITE) - set(named))})"
        )
    return split


def split_of(task_id: str) -> str | None:
    """``tune`` | ``heldout`` for a built-in task, None for any other competition."""
    return next((k for k, ids in task_split().items() if task_id in ids), None)


def task_dirs(spec: str | Path) -> list[Path]:
    """``lite`` → the built-in tasks, ``tune`` / ``heldout`` → one side of the split; a folder
    of competitions → each; one competition → it."""
    if str(spec) == "lite":
        return [TASKS_DIR / t for t in LITE]
    if str(spec) in SPLITS:
        return [TASKS_DIR / t for t in task_split()[str(spec)]]
    p = Path(spec)
    if (p / "config.yaml").is_file():
        return [p.resolve()]
    if p.is_dir():
        found = sorted(d.resolve() for d in p.iterdir() if (d / "config.yaml").is_file())
        if found:
            return found
    if "," in str(spec):
        return [resolve_task(s.strip()) for s in str(spec).split(",") if s.strip()]
    return [resolve_task(spec)]
