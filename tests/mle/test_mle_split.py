"""The tune / held-out task split: one record, every task on one side, both sides mixed; the
rules brain's draft priors come from tune tasks only and no prior or tuning code or data names
a held-out task."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from experiments.mle import competition
from experiments.mle.competition import (
    LITE,
    TASKS_DIR,
    CompetitionError,
    split_of,
    task_dirs,
    task_split,
)
from experiments.mle.taskinfo import TaskInfo, normalise_metric
from workbench.errors import BadInputError
from workbench.mle import priors
from workbench.mle.config import PACKAGED, load_mle_scaffold

ROOT = Path(__file__).resolve().parents[2]
NEW_TASKS = ("diabetes-cost", "breast-cancer-categorical")


def _kind(task: str) -> str:
    cfg = yaml.safe_load((TASKS_DIR / task / "config.yaml").read_text())
    metric = normalise_metric(cfg["grader"]["name"])
    return "regression" if metric in ("rmse", "rmsle", "mae") else "classification"


def test_every_task_sits_on_one_side_and_both_sides_are_mixed():
    split = task_split()
    assert sorted(split["tune"] + split["heldout"]) == sorted(LITE)
    assert not set(split["tune"]) & set(split["heldout"])
    assert abs(len(split["tune"]) - len(split["heldout"])) <= 1  # about half each
    for side in ("tune", "heldout"):
        assert {_kind(t) for t in split[side]} == {"classification", "regression"}, side
    # one feature-engineering task on each side: both kinds of new task are tuned and tested
    assert {split_of(t) for t in NEW_TASKS} == {"tune", "heldout"}
    assert split_of("not-a-task") is None


def test_task_dirs_select_a_side_of_the_split():
    split = task_split()
    for side in ("tune", "heldout"):
        assert [d.name for d in task_dirs(side)] == list(split[side])
    assert [d.name for d in task_dirs("lite")] == list(LITE)


def test_a_task_on_both_sides_is_one_clear_error(tmp_path, monkeypatch):
    bad = tmp_path / "split.yaml"
    bad.write_text(yaml.safe_dump({"tune": list(LITE), "heldout": [LITE[0]]}))
    monkeypatch.setattr(competition, "SPLIT_FILE", bad)
    with pytest.raises(CompetitionError, match="exactly one side"):
        task_dirs("heldout")


def test_priors_read_tune_tasks_only(tmp_path, monkeypatch):
    """The derivation's only way to a task (``load_competition``) is spied on: it reaches every
    tune task and no held-out one; asked for a held-out task it refuses before reading it."""
    loaded: list[str] = []
    real = priors.load_competition

    def spy(task, data_dir=None):
        loaded.append(Path(task).name)
        return real(task, data_dir)

    measured: list[str] = []

    def fake_score(task, specs, seed, sc, data_dir):
        measured.append(task)
        return [(float(i), 1.0) for i in range(len(specs))]

    monkeypatch.setattr(priors, "load_competition", spy)
    record = priors.derive(data_dir=tmp_path / "data", score=fake_score)
    tune, held = task_split()["tune"], task_split()["heldout"]
    assert sorted(set(loaded)) == sorted(tune) and sorted(set(measured)) == sorted(tune)
    assert sorted(record["tasks"]) == sorted(tune)
    loaded.clear()
    with pytest.raises(BadInputError, match="tune tasks only"):
        priors.derive([tune[0], held[0]], data_dir=tmp_path / "data", score=fake_score)
    assert loaded == []


def test_no_prior_or_tuning_code_or_data_names_a_held_out_task():
    held = task_split()["heldout"]
    record = json.loads(priors.RECORD.read_text())
    assert record["split"] == "tune" and set(record["tasks"]) <= set(task_split()["tune"])
    import workbench.evolve.mle_suite as mle_suite
    import workbench.mle.brains as brains
    import workbench.mle.config as config

    paths = [*PACKAGED.glob("mle*"), priors.RECORD]
    paths += [Path(m.__file__) for m in (priors, brains, config, mle_suite)]
    for path in paths:
        text = path.read_text()
        assert not [t for t in held if t in text], path


def test_scaffold_drafts_are_the_ones_the_tune_record_ranks_first():
    record = json.loads(priors.RECORD.read_text())
    drafts = priors.drafts_from_record(record)
    sc = load_mle_scaffold()
    assert sc.drafts.classification == drafts["classification"]
    assert sc.drafts.regression == drafts["regression"]


def _info(metric: str, mode: str) -> TaskInfo:
    return TaskInfo("id", "y", ("y",), mode, metric)


def test_drafts_rank_by_mean_cv_rank_and_take_one_ensemble(tmp_path):
    """Lower-is-better and higher-is-better tasks rank alike; a failed script ranks last; the
    worse ensemble is skipped; the top ``DRAFTS`` are written into mle.yaml, nothing else."""
    sc = load_mle_scaffold()
    infos = {"wine-cultivar": _info("log-loss", "proba_multi"),
             "breast-cancer-diagnosis": _info("roc-auc", "proba_binary")}  # fmt: skip
    wins = {"svm": 1, "stack": 2, "blend": 3, "hist_gb": 4, "linear": 5}  # lower = better

    def fake_score(task, specs, seed, sc, data_dir):
        out = []
        for s in specs:
            label = s["family"] + ("+poly2" if (s.get("fe") or {}).get("poly") else "")
            r = wins.get(label, 10)
            lower = infos[task].lower_is_better
            out.append((None if label == "knn" else (r if lower else -r), 1.0))
        return out

    record = priors.derive(list(infos), scaffold=sc, score=fake_score, info=lambda t, d: infos[t])
    fams = [s["family"] for s in record["drafts"]["classification"]]
    # the four tied at 10 share rank 7.5; the tie goes to the first label
    assert fams == ["svm", "stack", "hist_gb", "linear", "extra_trees"]  # the blend is skipped
    ranks = record["kinds"]["classification"]["mean_rank"]
    assert ranks["knn"] == 10.0 and ranks["mlp"] == ranks["random_forest"] == 7.5
    assert record["drafts"]["regression"] == []
    stack = record["drafts"]["classification"][1]
    assert [m["family"] for m in stack["members"]] == ["svm", "hist_gb", "linear"]

    target = tmp_path / "mle.yaml"
    original = (PACKAGED / "mle.yaml").read_text()
    target.write_text(original)
    priors.write_drafts(target, record["drafts"])
    new = yaml.safe_load(target.read_text())
    old = yaml.safe_load(original)
    assert new["drafts"]["classification"] == record["drafts"]["classification"]
    assert {k: v for k, v in new.items() if k != "drafts"} == {
        k: v for k, v in old.items() if k != "drafts"
    }
    load_mle_scaffold(tmp_path)  # still a valid scaffold


def test_a_draft_over_the_node_budget_goes_behind_every_one_that_fits():
    """The two best-ranked candidates take more than a node's budget: they would eat the run,
    so the drafts are the best ones that fit."""
    sc = load_mle_scaffold()
    infos = {"wine-cultivar": _info("log-loss", "proba_multi"),
             "breast-cancer-diagnosis": _info("roc-auc", "proba_binary")}  # fmt: skip
    wins = {"stack": 1, "svm": 2, "blend": 3, "hist_gb": 4, "linear": 5}  # lower = better
    slow = {"stack": 3 * priors.NODE_BUDGET_S, "svm": priors.NODE_BUDGET_S + 0.5}

    def fake_score(task, specs, seed, sc, data_dir):
        lower = infos[task].lower_is_better
        return [
            ((wins.get(s["family"], 10)) * (1 if lower else -1), slow.get(s["family"], 1.0))
            for s in specs
        ]

    record = priors.derive(list(infos), scaffold=sc, score=fake_score, info=lambda t, d: infos[t])
    part = record["kinds"]["classification"]
    assert part["mean_wall_s"]["stack"] == round(3 * priors.NODE_BUDGET_S, 2)
    fams = [s["family"] for s in record["drafts"]["classification"]]
    assert fams[:3] == ["blend", "hist_gb", "linear"]  # ranks 3, 4, 5: the ones that fit
    # svm is over budget too: behind every one that fits (five of them fit), so not a draft
    assert len(fams) == priors.DRAFTS and "svm" not in fams and "stack" not in fams
    # a record without a budget (or without wall times) ranks by CV alone, as before
    record.pop("node_budget_s")
    assert [s["family"] for s in priors.drafts_from_record(record)["classification"]][:2] == [
        "stack",
        "svm",
    ]


def test_priors_cli_bad_scaffold_is_one_line_and_writes_nothing(tmp_path, capsys):
    record = tmp_path / "priors.json"
    rc = priors.main(["--scaffold", str(tmp_path / "nowhere"), "--record", str(record)])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("error: ") and err.count("\n") == 1
    assert not record.exists()
