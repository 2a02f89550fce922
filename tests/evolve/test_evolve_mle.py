"""Evolution on the ``mle`` suite: the rules brain's mle.yaml edits, their validation, and one
tiny honest run (real searches on one tune and one held-out task, one step each)."""

from __future__ import annotations

import random

import pytest
import yaml

from experiments.mle.competition import task_split
from workbench.errors import BadInputError
from workbench.evolve import Archive, run_evolution
from workbench.evolve import archive as A
from workbench.evolve.home import read_files
from workbench.evolve.mle_suite import MleSuite, default_split, mle_rules_proposal
from workbench.evolve.propose import InvalidEdit, Proposal, validate
from workbench.mle.config import PACKAGED, load_mle_scaffold
from workbench.runs import gitops

FAILS = [
    {"scenario": "diabetes-progression", "kind": "regression", "mean_percentile": 0.4,
     "buggy_nodes": 2},
    {"scenario": "digits-recognition", "kind": "classification", "mean_percentile": 0.7,
     "buggy_nodes": 0},
]  # fmt: skip


def _files() -> dict[str, str]:
    return {
        p.name: p.read_text()
        for p in PACKAGED.iterdir()
        if p.is_file() and p.suffix in (".yaml", ".jinja")
    }


def test_split_is_the_task_split_and_heldout_never_selects():
    """Evolve's selection is the task split's tune side (both new tasks included across the
    two sides) and a held-out task is refused in selection."""
    split = default_split()
    assert split == {
        "selection": list(task_split()["tune"]),
        "heldout": list(task_split()["heldout"]),
    }
    assert not set(split["selection"]) & set(split["heldout"])
    assert {"diabetes-cost", "breast-cancer-categorical"} <= set(
        split["selection"] + split["heldout"]
    )
    held = split["heldout"][0]
    with pytest.raises(BadInputError, match="held-out task"):
        MleSuite(split={"selection": [split["selection"][0], held], "heldout": []})


def test_rules_brain_edits_only_mle_yaml_and_every_edit_validates():
    files = _files()
    base = yaml.safe_load(files["mle.yaml"])
    seen = set()
    for i in range(30):
        prop = mle_rules_proposal(files, FAILS, random.Random(i))
        assert set(prop.files) == {"mle.yaml"}
        validate(files, prop)  # raises InvalidEdit on a bad edit
        new = yaml.safe_load(prop.files["mle.yaml"])
        assert new != base
        # comments survive: text edits, one line changed
        old_lines, new_lines = files["mle.yaml"].splitlines(), prop.files["mle.yaml"].splitlines()
        assert len(old_lines) == len(new_lines)
        assert sum(a != b for a, b in zip(old_lines, new_lines, strict=True)) == 1
        seen.add(prop.description.split(" ")[1].split(".")[0])
    # it reaches both the step-budget knobs and the grids of the weak tasks' kinds
    assert {"search", "regression"} <= seen or {"search", "classification"} <= seen


def test_an_out_of_range_mle_knob_is_rejected():
    files = _files()
    bad = files["mle.yaml"].replace("debug_prob: 0.5", "debug_prob: 2.0")
    with pytest.raises(InvalidEdit, match="debug_prob"):
        validate(files, Proposal({"mle.yaml": bad}, "hack"))
    with pytest.raises(InvalidEdit, match="not an editable"):
        validate(files, Proposal({"mle_solution.py.jinja": "import os"}, "code"))


def test_unknown_suite_is_one_clear_error(tmp_path):
    with pytest.raises(BadInputError, match="unknown suite 'nope'"):
        run_evolution(home=tmp_path / "wb", suite="nope")


def test_tiny_mle_evolution_scores_both_splits_and_branches_a_valid_edit(tmp_path, monkeypatch):
    monkeypatch.setenv("WORKBENCH_MLE_DATA", str(tmp_path / "data"))
    home = tmp_path / "wb"
    res = run_evolution(
        home=home,
        suite="mle",
        generations=1,
        children=2,
        mle_steps=1,
        mle_time_limit=20,
        mle_split={"selection": ["wine-cultivar"], "heldout": ["friedman-regression"]},
    )
    arch = Archive.load(home / "evolve" / "archive.json")
    assert arch.config["suite"] == "mle" and arch.config["mle"]["steps"] == 1
    seed = arch.seed()
    for split, task in (("selection", "wine-cultivar"), ("heldout", "friedman-regression")):
        s = seed.scores[split]
        assert s["runs"] == 1 and set(s["per_task"]) == {task}
        assert 0.0 <= s["mean_percentile"] <= 1.0
        assert s["fitness"] == pytest.approx(
            0.8 * s["mean_percentile"] + 0.2 * s["medal_rate"], abs=1e-3
        )
    assert res["gen0"]["heldout"]["fitness"] == seed.fitness("heldout")

    repo = home / "scaffold"
    with gitops.open_repo(repo) as r:
        branches = {h.name for h in r.heads}
    kids = [n for n in arch.nodes.values() if n.gen == 1]
    assert len(kids) == 2
    tried = [n for n in kids if n.commit]
    for n in tried:  # each edit is a commit of a changed, valid mle.yaml and nothing else
        assert "mle.yaml" in n.diff and "diff --git a/mle.yaml" in n.diff
        assert n.diff.count("diff --git") == 1
        folder = tmp_path / f"check-{n.id}"
        folder.mkdir()
        (folder / "mle.yaml").write_text(read_files(repo, n.commit)["mle.yaml"])
        load_mle_scaffold(folder)
        assert "subset" in n.scores  # staged: the weak task first
        if n.status in A.SCORED:  # scored in full: kept on its branch with a selection score
            assert n.branch in branches and n.fitness("selection") is not None
        else:
            assert f"workbench/evolve/{n.id}" not in branches
    assert tried, [n.error for n in kids]
