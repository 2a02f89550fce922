"""Selection by K-fold CV (a constructed case where one split picks the worse candidate), the
tree policy's node choice, and the rules brain's richer space (priors, feature operators,
calibration, ensembles of distinct candidates)."""

from __future__ import annotations

import json
import runpy

import numpy as np
import pandas as pd
import pytest
from sklearn.model_selection import train_test_split

from experiments.mle.taskinfo import infer_task
from workbench.errors import BadInputError
from workbench.mle.agent import Node, best_node, parse_folds, pick_node
from workbench.mle.brains import NodeView, RulesBrain, TaskContext, render_script
from workbench.mle.config import check_spec, load_mle_scaffold

# Two ridge models on a 40-row linear task; data seed 0 is one where the usual 80/20 split
# prefers the over-shrunk one (B) while 3-fold CV, and the 2,000 private rows, prefer A.
A = {"family": "linear", "params": {"alpha": 1.0}}
B = {"family": "linear", "params": {"alpha": 30.0}}


def _task(root, n=40, n_test=2000, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n + n_test, 3))
    y = X @ np.array([2.0, -1.0, 0.5]) + rng.normal(0, 1.0, n + n_test)
    (root / "input").mkdir(parents=True)
    (root / "submission").mkdir()
    train = pd.DataFrame(X[:n], columns=["a", "b", "c"]).assign(y=y[:n])
    train.insert(0, "id", range(n))
    test = pd.DataFrame(X[n:], columns=["a", "b", "c"])
    test.insert(0, "id", range(n, n + n_test))
    train.to_csv(root / "input/train.csv", index=False)
    test.to_csv(root / "input/test.csv", index=False)
    test[["id"]].assign(y=0.0).to_csv(root / "input/sample_submission.csv", index=False)
    return infer_task(root / "input", "rmse"), y[n:]


def test_cv_selection_picks_the_better_candidate_where_one_split_picks_the_worse(
    tmp_path, monkeypatch, capsys
):
    info, private = _task(tmp_path)
    ctx = TaskContext(info=info, description="", data_preview="", scaffold=load_mle_scaffold())
    monkeypatch.chdir(tmp_path)
    cv, holdout, truth, nodes = {}, {}, {}, []
    for i, (name, spec) in enumerate((("A", A), ("B", B))):
        (tmp_path / "solution.py").write_text(render_script(ctx, spec, name))
        g = runpy.run_path("solution.py", run_name="__main__")  # the rendered script, as run
        cv[name] = g["val"]
        node = Node(i, None, "draft", name, "", spec, "rules", status="ok", score=g["val"])
        node.cv_folds = parse_folds(capsys.readouterr().out)
        nodes.append(node)
        # What one validation split would have said about the same model:
        Xa, Xb, ya, yb = train_test_split(g["X"], g["y"], test_size=0.2, random_state=0)
        holdout[name] = g["score"](yb, g["model"](g["SPEC"]).fit(Xa, ya).predict(Xb))
        sub = pd.read_csv("submission/submission.csv")["y"].to_numpy()
        truth[name] = float(np.sqrt(np.mean((sub - private) ** 2)))
    assert holdout["B"] < holdout["A"]  # a single split picks the worse model
    assert cv["A"] < cv["B"]  # CV picks the better one ...
    assert truth["A"] < truth["B"]  # ... which is better on the private answers
    assert best_node(nodes, lower=True).plan == "A"  # and the search keeps what CV says
    assert all(len(n.cv_folds) == 3 for n in nodes)  # the spread over folds is recorded


def test_pick_node_prefers_good_cv_and_little_explored_branches():
    nodes = [Node(i, None, "draft", f"n{i}", "", None, "rules", status="ok") for i in range(3)]
    for n, s in zip(nodes, (0.9, 0.8, 0.5), strict=True):
        n.score = s
    assert pick_node(nodes, lower=False, explore_c=0.0).id == 0
    # The best node's branch is already well explored: the runner-up gets the next step.
    for k in range(3, 9):
        nodes.append(Node(k, 0, "improve", "", "", None, "rules", status="ok", score=0.85))
        nodes[0].children.append(k)
    assert pick_node(nodes[:3] + nodes[3:], lower=False, explore_c=2.0).id != 0
    assert pick_node([], lower=False, explore_c=1.0) is None


def test_parse_folds():
    assert parse_folds("x\nvalidation_folds: [0.5, 0.25]\nvalidation_score: 0.4") == [0.5, 0.25]
    assert parse_folds("validation_folds: [nan]") == []
    assert parse_folds("nothing") == []


def _ctx(mode="regression", metric="rmse"):
    info = type(
        "Info", (), {"mode": mode, "metric": metric, "lower_is_better": metric != "roc-auc"}
    )()
    info.to_dict = lambda: {}
    return TaskContext(info=info, description="", data_preview="", scaffold=load_mle_scaffold())


def _view(i, spec, score):
    return NodeView(i, "draft", "", "", spec, "ok", score, "")


def test_rules_drafts_follow_the_priors_then_ensemble_distinct_candidates():
    ctx, brain = _ctx(), RulesBrain(0)
    memory = []
    for i in range(3):
        prop = brain.draft(ctx, memory)
        memory.append(_view(i, prop.spec, 1.0 + i))
    # the drafts are the scaffold's priors in order, every grid parameter filled in
    priors = ctx.scaffold.drafts.regression[:3]
    assert [m.spec for m in memory] == [brain._complete(ctx, p) for p in priors]
    # After the drafts, an ensemble of the best distinct single families (rmse: lower first).
    svm = brain._default(ctx, "svm")
    memory = [
        _view(0, svm, 1.0),
        _view(1, brain._default(ctx, "linear"), 2.0),
        _view(2, {**svm, "params": {**svm["params"], "C": 100.0}}, 3.0),
    ]
    spec = brain.ensemble(ctx, memory)
    assert spec == {"family": "stack", "members": [svm, memory[1].spec]}
    prop = brain.improve(ctx, memory[1], memory)
    assert prop.spec["family"] in ("stack", "blend")
    assert "validation_folds" in prop.code


def test_feature_moves_cover_operators_and_calibration():
    brain = RulesBrain(0)
    reg = brain._feature_move(_ctx(), {"family": "svm", "params": {}}, [])
    assert reg is not None
    seen: set[str] = set()
    for seed in range(30):
        b = RulesBrain(seed)
        for spec in (
            b._feature_move(_ctx(), {"family": "svm", "params": {}}, []),
            b._feature_move(
                _ctx("proba_binary", "log-loss"), {"family": "hist_gb", "params": {}}, []
            ),
        ):
            seen |= {k for k, v in (spec.get("fe") or {}).items() if v}
            seen |= {"calibrate"} if spec.get("calibrate") else set()
    assert seen == {"poly", "select", "target", "calibrate"}


def test_spec_validation_names_the_problem():
    check_spec({"family": "stack", "members": [A, B]})
    with pytest.raises(ValueError, match="unknown family"):
        check_spec({"family": "xgboost"})
    with pytest.raises(ValueError, match="unknown keys"):
        check_spec({"family": "svm", "fe": {"pca": 3}})


def test_scaffold_rejects_a_bad_draft_recipe(tmp_path):
    text = open(load_mle_scaffold().source).read()
    start = text.index("\n  classification:\n", text.index("\ndrafts:")) + 1
    first = text.index("    - ", start)  # the first classification draft recipe
    text = text[:first] + "    - {family: svmm}\n" + text[first:]
    (tmp_path / "mle.yaml").write_text(text)
    with pytest.raises(BadInputError, match="drafts"):
        load_mle_scaffold(tmp_path)
    assert json.dumps(load_mle_scaffold().drafts.regression[0])
