"""`workbench demo`: fresh training repos, one healthy and five failing runs, fixed on branches.

Steps (progress on stderr): copy the template repos into ``DIR`` and ``git init`` them — our
own LM repo (``experiments/templates/lm-repo``, one config per scenario) and three foreign-style
repos (HF-style JSON, torchtitan-style TOML, Lightning-style YAML; plain ``mlflow``); run every
scenario (two at a time) into ``DIR/mlflow.db``; let the supervisor fix every failing run on a
``workbench/fix/…`` branch and verify it; print the review queue and a summary table. Every
fault is a real defect of a repo's own settings (no fault switch anywhere), so every fix is a
setting change; the summary lists each fix's diff line. Review with
``workbench review list --home DIR/.workbench``.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Annotated

import typer
import yaml

from workbench.cli.options import Json
from workbench.cli.output import console, err_console, print_json, print_table
from workbench.errors import BadInputError
from workbench.runs.repos import SHORT_RUN, deep_merge, init_repo, run_original, template_path

# name → (template repo, config overrides for lm-repo scenarios); each fault is a real setting.
SCENARIOS: dict[str, tuple[str, dict | None]] = {
    "healthy": ("lm-repo", {}),
    # a step schedule whose gamma was typed as 10 instead of 0.1: the LR grows 100x by step 60
    "divergence": ("lm-repo", {"optimizer": {"decay_steps": [50, 60], "decay_gamma": 10.0}}),
    # fp16 with a static loss scale that overflows the gradients
    "nan": ("lm-repo", {"precision": "fp16", "optimizer": {"loss_scale": 1.0e6}}),
    "hf-lr-too-high": ("hf-json-repo", None),
    "titan-lr-too-low": ("titan-toml-repo", None),
    "lightning-overfit": ("lightning-yaml-repo", None),
}
# Used when the template repo is absent: the fault suite's tiny LM, seconds per run on a CPU.
FALLBACK_CONFIG = {
    "program": "lm",
    "steps": 120,
    "batch_size": 8,
    "eval_interval": 10,
    "eval_batches": 2,
    "experiment": "demo",
    "data": {"seq_len": 32},
    "model": {
        "preset": "tiny",
        "overrides": {
            "hidden_size": 64,
            "intermediate_size": 96,
            "num_hidden_layers": 2,
            "head_dim": 16,
            "rotary_dim": 8,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
        },
    },  # fmt: skip
    "optimizer": {"lr": 0.003, "warmup_steps": 10, "grad_clip": 1.0},
    "moe": {"bias_update_rate": 0.01},
}


def make_repo(repo: Path) -> dict[str, str]:
    """Create the demo's LM repo; returns lm-repo scenario → config path (relative to it)."""
    template = template_path()
    if template is not None:
        shutil.copytree(template, repo, ignore=shutil.ignore_patterns(".git", "mlruns", "*.db"))
    else:
        (repo / "configs").mkdir(parents=True)
        (repo / "configs" / "train.yaml").write_text(
            yaml.safe_dump(FALLBACK_CONFIG, sort_keys=False)
        )
        (repo / "workbench.yaml").write_text(
            'launch: "workbench train lm --config {config} --no-system-metrics"\n'
            "config: configs/train.yaml\ntimeout: 600\nenv: {OMP_NUM_THREADS: '1'}\n"
        )
    from workbench.runs.launch import read_repo_spec

    spec = read_repo_spec(repo)
    base = yaml.safe_load((repo / spec.config).read_text()) or {}
    configs = {}
    for name, (tmpl, over) in SCENARIOS.items():
        if tmpl != "lm-repo":
            continue
        cfg = deep_merge(deep_merge(base, SHORT_RUN), over or {})
        rel = f"configs/demo-{name}.yaml"
        (repo / rel).write_text(yaml.safe_dump(cfg, sort_keys=False))
        configs[name] = rel
    init_repo(repo, "training repo with demo scenarios")
    return configs


def make_foreign_repo(root: Path, template: str) -> Path | None:
    """A copy of a foreign-style template repo as its own git repo (None: not installed)."""
    src = template_path(template)
    if src is None:
        return None
    repo = root / template
    shutil.copytree(src, repo, ignore=shutil.ignore_patterns(".git", "mlruns", "*.db", "out"))
    init_repo(repo, f"{template}: a training repo")
    return repo


def demo_cmd(
    dir: Annotated[
        Path, typer.Option("--dir", help="A new (or empty) folder for the demo.")
    ] = Path("workbench-demo"),
    workers: Annotated[int, typer.Option("--workers", min=1, max=8, help="Runs in parallel.")] = 2,
    as_json: Json = False,
) -> None:
    """Fresh repo → healthy + failing runs → verified fixes on branches → review queue."""
    from mlflow.tracking import MlflowClient

    from workbench.doctor import diagnose_run
    from workbench.supervisor.episode import fix_run
    from workbench.supervisor.review import ReviewQueue

    t0 = time.monotonic()
    root = dir.resolve()
    if root.exists() and any(root.iterdir()):
        raise BadInputError(f"{root} is not empty; give --dir a new folder")
    root.mkdir(parents=True, exist_ok=True)

    def say(msg: str) -> None:
        err_console.print(f"[dim]{time.monotonic() - t0:6.1f}s[/] {msg}", highlight=False)

    repo, home, logs = root / "repo", root / ".workbench", root / "logs"
    logs.mkdir()
    configs = make_repo(repo)
    repos = {n: repo for n in configs}
    for name, (tmpl, _) in SCENARIOS.items():
        if tmpl != "lm-repo" and (foreign := make_foreign_repo(root, tmpl)) is not None:
            repos[name] = foreign
    say(f"repos ready in {root} ({len(repos)} scenarios)")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    exp_id = MlflowClient(uri).create_experiment(
        "demo", artifact_location=(root / "artifacts").as_uri()
    )

    def original(name: str) -> tuple[str, str]:
        say(f"training {name} …")
        rid = run_original(repos[name], configs.get(name), uri, exp_id, logs, name)
        verdict = diagnose_run(uri, rid)
        kinds = ", ".join(sorted({f.kind for f in verdict.findings})) or "healthy"
        say(f"{name}: run {rid[:8]} → {kinds}")
        return name, rid

    with ThreadPoolExecutor(workers) as pool:
        runs = dict(pool.map(original, repos))

    def fix(name: str) -> dict:
        t = time.monotonic()
        out = fix_run(
            runs[name], repo=repos[name], tracking_uri=uri, home=home, thread_id=f"demo-{name}",
            progress=lambda m, n=name: say(f"[{n}] {m}"),
        )  # fmt: skip
        return {"scenario": name, **out, "fix_wall_s": round(time.monotonic() - t, 1),
                "diff": _diff_lines(repos[name], out.get("branch") if out["verified"] else None)}  # fmt: skip

    with ThreadPoolExecutor(workers) as pool:
        results = list(pool.map(fix, repos))
    evolution = None
    try:  # the demo ends with one generation of scaffold evolution (its summary prints anyway)
        from workbench.evolve.demo import evolve_demo

        say("evolving the scaffold: one generation on these runs …")
        lm_runs = {n: r for n, r in runs.items() if n in configs}  # reruns need our trainer
        evolution = evolve_demo(
            uri, lm_runs, home, log=say, episodes=[e for e in results if e["scenario"] in configs],
            configs={n: repo / rel for n, rel in configs.items()},
        )  # fmt: skip
    except Exception as exc:  # noqa: BLE001
        say(f"scaffold evolution skipped: {exc}")
    wall = time.monotonic() - t0
    failing = [r for r in results if r["status"] != "healthy"]
    fixed = [r for r in failing if r["verified"]]
    items = ReviewQueue(home / "review.db").list() if (home / "review.db").exists() else []
    summary = {
        "dir": str(root),
        "wall_s": round(wall, 1),
        "failing_runs": len(failing),
        "verified_fixes": len(fixed),
        "success_rate": round(len(fixed) / len(failing), 3) if failing else None,
        "episodes": results,
        "review": [i.to_json() for i in items],
        "evolution": evolution,
    }
    if as_json:
        print_json(summary)
        return
    print_table(
        "review queue",
        ["id", "run", "branch", "verified"],
        [[i.id, i.run_id[:8], i.branch, "yes" if i.verified else "no"] for i in items],
    )
    print_table(
        f"demo — {len(fixed)}/{len(failing)} failing runs fixed and verified in {wall:.0f}s",
        ["scenario", "run", "status", "diagnosis", "remedy", "verified", "best eval before → after"],
        [
            [r["scenario"], r["run_id"][:8], r["status"], r["diagnosis"] or "-", r["remedy"] or "-",
             "yes" if r["verified"] else "no", _arrow(r["before"], r["after"])]
            for r in results
        ],
    )  # fmt: skip
    for r in results:
        if r["diff"]:
            console.print(f"{r['scenario']}: {' | '.join(r['diff'])}", markup=False)
    if evolution is not None:
        w = evolution["winners"]
        console.print(
            f"evolution: gen 0 heldout {evolution['gen0']['heldout']['fitness']:.3f} → "
            + (
                f"review #{w[0]['review_id']} ({w[0]['description']})"
                if w
                else "no winner this generation"
            ),
            markup=False,
        )
    console.print(f"review: workbench review list --home {home}")


def _diff_lines(repo: Path, branch: str | None) -> list[str]:
    """The fix branch's changed lines against main (what a reviewer reads)."""
    if not branch:
        return []
    out = subprocess.run(
        ["git", "diff", "--unified=0", "main", branch, "--"], cwd=repo, capture_output=True,
        text=True, check=False,
    ).stdout  # fmt: skip
    return [
        line
        for line in out.splitlines()
        if line[:1] in "+-" and not line.startswith(("+++", "---"))
    ]


def _arrow(before, after) -> str:
    f = lambda v: "-" if v is None else f"{v:.3f}"  # noqa: E731
    return f"{f(before)} → {f(after)}"


def register(app: typer.Typer) -> None:
    app.command("demo")(demo_cmd)
