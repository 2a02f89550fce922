"""Fix scenarios for the model-in-the-loop: failing runs in real repos, split by program.

Each scenario is a git repo with one real defect in its own settings and one failing run of it
in the scenario set's MLflow store. The split is by *program*, so held-out work is programs
and faults the policy never trained on:

- ``train``: our own LM trainer (``experiments/templates/lm-repo``, YAML config, our metric
  names): an LR schedule that grows the LR, fp16 with an overflowing loss scale, an LR 100x
  too low, an LR 1,000x too low (the playbook's first remedy, x10, does not verify; its
  second, x100, does: the teacher needs two attempts where one would do), an LR 10,000x too
  low (no remedy verifies: the teacher gives up), a shrunken train split that overfits; two
  seeds each.
- ``heldout``: the foreign-style templates (HF-style JSON, torchtitan-style TOML,
  Lightning-style YAML; plain ``mlflow``, other vocabularies), each as shipped and a variant
  (another seed and a stronger value of the same defect), and each with a third variant whose
  LR is far too low (added 2026-12-08 with the x100 remedy, before any policy ran on them).

    build_scenarios(DIR) -> DIR/manifest.json, DIR/mlflow.db, DIR/<scenario>/ (repo)

The manifest names each scenario's split, repo, config and failing run; nothing else decides
what is held out.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

from model.files import atomic_write_text
from workbench.errors import BadInputError

SPLITS = ("train", "heldout")


@dataclass(frozen=True)
class FixScenario:
    name: str
    split: str
    template: str
    # lm-repo: overrides deep-merged over the template config; foreign: dotted-key edits of
    # the template's own config file (format-preserving)
    edits: tuple[tuple[str, object], ...] = ()
    overrides: str = "{}"  # JSON, lm-repo only (a frozen dataclass holds no dict)


def _lm(name: str, overrides: dict, seed: int) -> FixScenario:
    return FixScenario(name, "train", "lm-repo", overrides=json.dumps({**overrides, "seed": seed}))


SCENARIOS: tuple[FixScenario, ...] = (
    # a step schedule whose gamma was typed as 10 instead of 0.1: the LR grows 100x by step 60
    *(
        _lm(f"lm-lr-schedule-{s}", {"optimizer": {"decay_steps": [50, 60], "decay_gamma": 10.0}}, s)
        for s in (0, 1)
    ),  # fmt: skip
    # fp16 with a static loss scale that overflows the gradients
    *(
        _lm(f"lm-fp16-overflow-{s}", {"precision": "fp16", "optimizer": {"loss_scale": 1.0e6}}, s)
        for s in (0, 1)
    ),  # fmt: skip
    # an LR 100x too low: the loss hardly moves
    *(_lm(f"lm-lr-too-low-{s}", {"optimizer": {"lr": 0.00003}}, s) for s in (0, 1)),
    # an LR 1,000x too low: x10 does not verify, x100 does; the teacher tries them in the
    # playbook's order (two attempts), so a policy can beat it by reading the rate
    *(_lm(f"lm-lr-very-low-{s}", {"optimizer": {"lr": 3.0e-6}}, s) for s in (0, 1)),
    # an LR 10,000x too low: neither remedy (x10, x100) verifies, and nothing else is listed,
    # so the teacher gives up (the policy must learn to stop, not guess)
    *(_lm(f"lm-lr-far-too-low-{s}", {"optimizer": {"lr": 3.0e-7}}, s) for s in (0, 1)),
    # a shrunken train split, no weight decay, long training: the eval loss turns up
    *(
        _lm(
            f"lm-overfit-{s}",
            {
                "steps": 300,
                "optimizer": {"weight_decay": 0.0, "lr": 0.005},
                "data": {"max_train_items": 400},
            },
            s,
        )
        for s in (0, 1)
    ),  # fmt: skip
    FixScenario("hf-lr-too-high-a", "heldout", "hf-json-repo"),
    FixScenario(
        "hf-lr-too-high-b", "heldout", "hf-json-repo", (("seed", 1), ("learning_rate", 0.3))
    ),  # fmt: skip
    FixScenario("titan-lr-too-low-a", "heldout", "titan-toml-repo"),
    FixScenario(
        "titan-lr-too-low-b",
        "heldout",
        "titan-toml-repo",
        (("training.seed", 1), ("optimizer.lr", 1e-5)),
    ),  # fmt: skip
    FixScenario("lightning-overfit-a", "heldout", "lightning-yaml-repo"),
    FixScenario(
        "lightning-overfit-b",
        "heldout",
        "lightning-yaml-repo",
        (("seed_everything", 1), ("data.max_train_samples", 32)),
    ),  # fmt: skip
    # far-too-low rates on every foreign template: where x10 is not enough, one attempt is lost
    FixScenario(
        "hf-lr-too-low-c", "heldout", "hf-json-repo", (("seed", 2), ("learning_rate", 1.5e-5))
    ),  # fmt: skip
    FixScenario(
        "titan-lr-too-low-c",
        "heldout",
        "titan-toml-repo",
        (("training.seed", 2), ("optimizer.lr", 3e-6)),
    ),  # fmt: skip
    FixScenario(
        "lightning-lr-too-low-c",
        "heldout",
        "lightning-yaml-repo",
        (("seed_everything", 2), ("model.lr", 3e-6), ("data.max_train_samples", 400)),
    ),  # fmt: skip
)


def scenarios(split: str = "all") -> list[FixScenario]:
    if split not in (*SPLITS, "all"):
        raise BadInputError(f"unknown split {split!r} (train, heldout, all)")
    return [s for s in SCENARIOS if split in ("all", s.split)]


# ------------------------------------------------------------------------------ building


def _make_repo(root: Path, sc: FixScenario) -> tuple[Path, str]:
    """The scenario's repo (a git repo with its defect committed) and its config path."""
    import shutil

    import yaml

    from workbench.runs.launch import read_repo_spec
    from workbench.runs.repos import SHORT_RUN, deep_merge, init_repo, template_path
    from workbench.supervisor import configedit

    src = template_path(sc.template)
    if src is None:
        raise BadInputError(f"template {sc.template} is not installed (experiments/templates)")
    repo = root / sc.name
    shutil.copytree(src, repo, ignore=shutil.ignore_patterns(".git", "mlruns", "*.db", "out"))
    spec = read_repo_spec(repo)
    path = repo / spec.config
    if sc.template == "lm-repo":
        base = yaml.safe_load(path.read_text()) or {}
        cfg = deep_merge(deep_merge(base, SHORT_RUN), json.loads(sc.overrides))
        path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    else:
        text, fmt = path.read_text(), configedit.config_format(spec.config)
        for key, value in sc.edits:
            text = configedit.set_value(text, fmt, key, value, spec.config)
        path.write_text(text)
    init_repo(repo, f"{sc.name}: a training repo")
    return repo, spec.config


def build_scenarios(
    out: Path,
    split: str = "all",
    workers: int = 2,
    progress: Callable[[str], None] = lambda msg: None,
) -> dict:
    """Repos + one failing run each into ``out``; returns (and writes) the manifest. A folder
    that already holds a set gets only the scenarios it lacks (an interrupted build resumes)."""
    from mlflow.tracking import MlflowClient

    from workbench.doctor import diagnose_run
    from workbench.runs.repos import run_original

    out = Path(out).resolve()
    done: list[dict] = []
    if (out / "manifest.json").exists():  # a set built before: add the scenarios it lacks
        old = load_manifest(out)
        uri, exp, done = old["tracking_uri"], old["experiment_id"], old["scenarios"]
    elif out.exists() and any(out.iterdir()):
        raise BadInputError(f"{out} is not empty and holds no scenario set; give a new folder")
    else:
        (out / "logs").mkdir(parents=True)
        uri = f"sqlite:///{out / 'mlflow.db'}"
        exp = MlflowClient(uri).create_experiment("scenarios", (out / "artifacts").as_uri())
    have = {r["name"] for r in done}

    def one(sc: FixScenario) -> dict:
        t0 = time.monotonic()
        repo, config = _make_repo(out, sc)
        rid = run_original(repo, None, uri, exp, out / "logs", sc.name, "scenarios")
        verdict = diagnose_run(uri, rid)
        kinds = sorted({f.kind for f in verdict.findings})
        cause = verdict.diagnosis.cause if verdict.diagnosis else None
        progress(f"{sc.name} ({sc.split}): run {rid[:8]} → {', '.join(kinds) or 'healthy'}")
        return {**asdict(sc), "repo": str(repo), "config": config, "run_id": rid,
                "findings": kinds, "doctor_cause": cause, "status": verdict.status,
                "run_s": round(time.monotonic() - t0, 1)}  # fmt: skip

    with ThreadPoolExecutor(workers) as pool:
        rows = list(pool.map(one, [s for s in scenarios(split) if s.name not in have]))
    manifest = {"tracking_uri": uri, "experiment_id": exp, "scenarios": done + rows}
    atomic_write_text(out / "manifest.json", json.dumps(manifest, indent=1))
    return manifest


def load_manifest(path: Path) -> dict:
    path = Path(path)
    f = path / "manifest.json" if path.is_dir() else path
    if not f.exists():
        raise BadInputError(
            f"{path}: no scenario manifest (build one: workbench scenarios build --out DIR)"
        )
    return json.loads(f.read_text())
