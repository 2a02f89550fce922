"""The search: a crashing solution becomes a buggy node that debug gets; nodes are nested MLflow
runs; the LLM brain's prompt/parse path and its fallback; eval's aggregation."""

from __future__ import annotations

import random

import pytest
from langchain_core.language_models.fake_chat_models import FakeListChatModel

from experiments.mle.competition import load_competition, prepare
from experiments.mle.taskinfo import infer_task
from workbench.mle import evaluate as evaluate_mod
from workbench.mle.agent import Node, RunResult, choose_action, parse_validation_score, run_task
from workbench.mle.brains import (
    LlmBrain,
    NodeView,
    Proposal,
    RulesBrain,
    TaskContext,
    last_error,
    parse_answer,
)
from workbench.mle.config import load_mle_scaffold

# A solution that needs no sklearn (fast): copy the sample submission, report a score.
GOOD = """
import shutil
shutil.copyfile("input/sample_submission.csv", "submission/submission.csv")
print("validation_score: 0.5")
"""
CRASH = "raise RuntimeError('boom: the model exploded')\n"


class ScriptedBrain:
    """Draft crashes; debug fixes it; improve repeats the fix. Records what it was handed."""

    name = "scripted"

    def __init__(self) -> None:
        self.debugged: list[NodeView] = []

    def draft(self, ctx, memory):
        return Proposal("draft that crashes", CRASH, brain=self.name)

    def debug(self, ctx, node):
        self.debugged.append(node)
        return Proposal("fixed", GOOD, brain=self.name)

    def improve(self, ctx, node, memory):
        return Proposal("same again", GOOD, brain=self.name)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("data")
    prepare(load_competition("wine-cultivar", d))
    return d


def _scaffold(**search):
    return load_mle_scaffold(None).with_search(**search)


def test_crash_becomes_buggy_node_that_debug_gets(data_dir, tmp_path):
    brain = ScriptedBrain()
    sc = _scaffold(num_drafts=1, debug_prob=1.0, steps=3)
    res = run_task(
        "wine-cultivar",
        data_dir=data_dir,
        brain=brain,
        scaffold=sc,
        track=False,
        out_dir=tmp_path / "run",
    )
    import json

    journal = json.loads((tmp_path / "run" / "journal.json").read_text())["nodes"]
    assert [n["stage"] for n in journal] == ["draft", "debug", "improve"]
    assert journal[0]["status"] == "buggy" and "boom" in journal[0]["error"]
    assert brain.debugged and brain.debugged[0].id == 0 and "boom" in brain.debugged[0].log_tail
    assert journal[1]["parent"] == 0 and journal[1]["status"] == "ok" and journal[1]["score"] == 0.5
    assert res.nodes == 3 and res.buggy_nodes == 1 and res.best_node in (1, 2)
    assert res.valid_submission and res.score is not None  # the uniform sample is gradable


def test_nodes_are_nested_mlflow_runs(data_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    sc = _scaffold(num_drafts=1, debug_prob=1.0, steps=2)
    res = run_task(
        "wine-cultivar", data_dir=data_dir, brain=ScriptedBrain(), scaffold=sc, tracking_uri=uri
    )
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("mle")
    runs = client.search_runs([exp.experiment_id])
    children = {
        r.data.tags["mle.node"]: r
        for r in runs
        if r.data.tags.get("mlflow.parentRunId") == res.mlflow_run_id
    }
    assert sorted(children) == ["0", "1"]
    assert (
        children["0"].data.tags["mle.status"] == "buggy" and children["0"].info.status == "FAILED"
    )
    assert "boom" in children["0"].data.tags["mle.error"]
    assert children["1"].data.metrics["validation_score"] == 0.5
    for child in children.values():
        arts = [a.path for a in client.list_artifacts(child.info.run_id, "code")]
        assert arts == ["code/solution.py"]
    parent = client.get_run(res.mlflow_run_id)
    assert (
        parent.data.metrics["test_score"] == res.score
        and parent.data.tags["mle.medal"] == res.medal
    )


def test_rules_search_end_to_end_on_a_builtin_task(data_dir, tmp_path):
    # seed 2 drafts the linear family first: the cheapest real scikit-learn solution.
    res = run_task(
        "wine-cultivar",
        data_dir=data_dir,
        brain="rules",
        seed=2,
        scaffold=_scaffold(steps=1),
        track=False,
        out_dir=tmp_path / "run",
    )
    assert res.nodes == 1 and res.buggy_nodes == 0, (
        tmp_path / "run" / "nodes" / "000" / "run.log"
    ).read_text()
    assert (
        res.valid_submission and res.score is not None and res.score < 1.0
    )  # log loss of a sound model
    assert 0.0 <= res.percentile <= 1.0 and res.medal in ("gold", "silver", "bronze", "none")


def test_policy_drafts_then_debugs_then_improves():
    sc = _scaffold(num_drafts=2, debug_prob=1.0, max_debug_depth=1)
    rng = random.Random(0)

    def mk(i, stage, status, score=None, depth=0):
        return Node(i, None, stage, "", "", None, "x", depth, status, score)

    assert choose_action([], sc, False, rng) == ("draft", None)
    nodes = [mk(0, "draft", "ok", 0.7), mk(1, "draft", "buggy")]
    action, target = choose_action(nodes, sc, False, rng)
    assert action == "debug" and target.id == 1
    nodes[1].debug_depth = 1  # too deep: improve the best instead
    action, target = choose_action(nodes, sc, False, rng)
    assert action == "improve" and target.id == 0
    nodes.append(mk(2, "improve", "ok", 0.9))
    assert choose_action(nodes, sc, True, rng)[1].id == 0  # lower is better picks 0.7


def test_rules_brain_debug_shrinks_on_timeout_and_improve_moves_one_knob(data_dir):
    comp = load_competition("wine-cultivar", data_dir)
    ctx = TaskContext(infer_task(comp.public_dir, comp.grader_name), "d", "p", _scaffold(), seed=0)
    brain = RulesBrain(0)
    spec = {
        "family": "random_forest",
        "params": {"n_estimators": 300, "max_features": "sqrt", "min_samples_leaf": 1},
    }
    node = NodeView(
        4, "draft", "", "", spec, "buggy", None, "...\nTimeoutError: ran past its 90s limit"
    )
    fix = brain.debug(ctx, node)
    assert fix.spec["params"]["n_estimators"] == 150 and "TimeoutError" in fix.plan
    ok = NodeView(5, "draft", "", "", spec, "ok", 0.3, "")
    for _ in range(5):
        new = brain.improve(ctx, ok, [ok]).spec
        if new["family"] == "random_forest":
            changed = [k for k in spec["params"] if new["params"][k] != spec["params"][k]]
            changed += [k for k in ("fe", "calibrate") if new.get(k) != spec.get(k)]
            assert len(changed) == 1  # one knob, one feature operator or the calibration
    assert "json.loads" in fix.code and "validation_score" in fix.code


def test_llm_brain_parses_code_retries_once_then_falls_back(data_dir):
    comp = load_competition("wine-cultivar", data_dir)
    ctx = TaskContext(
        infer_task(comp.public_dir, comp.grader_name), "Wine task", "preview", _scaffold(), seed=0
    )
    answer = "Plan: copy the sample.\n```python\n" + GOOD + "```\n"
    brain = LlmBrain(FakeListChatModel(responses=["no code here", answer]), name="fake")
    prop = brain.draft(ctx, [])
    assert (
        prop.brain == "fake" and prop.code.strip() == GOOD.strip() and prop.plan.startswith("Plan")
    )
    assert [e["parsed"] for e in brain.events] == [False, True]
    lazy = LlmBrain(FakeListChatModel(responses=["nothing", "still nothing"]), name="fake")
    fallback = lazy.debug(
        ctx, NodeView(0, "draft", "p", CRASH, None, "buggy", None, "RuntimeError: boom")
    )
    assert (
        fallback.brain == "rules"
        and "rules fallback" in fallback.plan
        and fallback.spec["family"] == "linear"
    )


def test_small_parsers():
    assert parse_validation_score("fit\nvalidation_score: 0.25\nvalidation_score: 1e-3\n") == 1e-3
    assert parse_validation_score("validation_score: nan") is None
    assert parse_validation_score("nothing") is None
    assert (
        last_error("Traceback\n  File x\nValueError: bad shape\nsome trailing line")
        == "ValueError: bad shape"
    )
    assert parse_answer("<think>hmm</think>Do X\n```py\nprint(1)\n```") == ("Do X", "print(1)\n")


def test_evaluate_reports_any_medal_mean_and_sem(monkeypatch):
    medals = {
        ("digits-recognition", 0): "gold",
        ("wine-cultivar", 0): "none",
        ("digits-recognition", 1): "bronze",
        ("wine-cultivar", 1): "silver",
    }

    def fake_run(d, *, seed, **kw):
        m = medals[(d.name, seed)]
        return RunResult(
            d.name,
            seed,
            "rules",
            1.0,
            m,
            m != "none",
            True,
            0.5 if m == "none" else 0.9,
            True,
            1.0,
            0,
            2,
            0,
            0.1,
            "",
            None,
            "n/a",
        )

    monkeypatch.setattr(evaluate_mod, "run_task", fake_run)
    rep = evaluate_mod.evaluate(None, "digits-recognition,wine-cultivar", 2, track=False)
    assert rep.any_medal_pct == pytest.approx(75.0)  # seed 0: 50 %, seed 1: 100 %
    assert rep.any_medal_sem == pytest.approx(25.0)
    assert rep.gold_pct == pytest.approx(25.0)  # seed 0: 50 %, seed 1: 0 %
    assert rep.gold_sem == pytest.approx(25.0)
    rows = {r["task"]: r for r in rep.per_task()}
    assert rows["wine-cultivar"]["medals"] == ["none", "silver"]
    assert (rows["digits-recognition"]["gold"], rows["digits-recognition"]["any_medal"]) == (1, 2)
    assert rep.scores["digits-recognition"] == pytest.approx(0.9)


class ProbeBrain:
    """Every node tries to rebuild the answers from the competition's raw labelled data."""

    name = "probe"

    def __init__(self, raw: str) -> None:
        self.code = (
            "import os, shutil\n"
            f"raw = {raw!r}\n"
            "try:\n"
            "    print('RAW-LEAK', sorted(os.listdir(raw)))\n"
            "except OSError as exc:\n"
            "    print('raw hidden', type(exc).__name__)\n" + GOOD
        )

    def draft(self, ctx, memory):
        return Proposal("probe", self.code, brain=self.name)

    debug = improve = lambda self, ctx, node, *memory: self.draft(ctx, memory)  # noqa: E731


@pytest.mark.parametrize("backend", ["local", "unshare"])
def test_raw_data_is_never_visible_and_the_record_says_what_is_not_covered(
    data_dir, tmp_path, backend
):
    import json

    from workbench.mle.config import load_mle_scaffold
    from workbench.mle.isolation import GAPS

    comp = load_competition("wine-cultivar", data_dir)
    (comp.raw_dir / "labels.csv").write_text("id,y\n1,SECRET\n")
    sc = load_mle_scaffold(None).with_search(num_drafts=1, steps=1)
    sc = sc.model_copy(update={"sandbox": sc.sandbox.model_copy(update={"backend": backend})})
    res = run_task(
        "wine-cultivar", data_dir=data_dir, brain=ProbeBrain(str(comp.raw_dir)), scaffold=sc,
        track=False, out_dir=tmp_path / "run",
    )  # fmt: skip
    log = (tmp_path / "run" / "nodes" / "000" / "run.log").read_text()
    assert "raw hidden" in log and "RAW-LEAK" not in log, log
    record = json.loads((tmp_path / "run" / "result.json").read_text())
    journal = json.loads((tmp_path / "run" / "journal.json").read_text())
    assert journal["sandbox"]["backend"] == res.hiding == record["hiding"]
    if res.hiding == "bwrap":
        assert record["sandbox_uncovered"] == {} == journal["sandbox"]["uncovered"]
    else:  # the fallback names, in words, every gap it leaves
        assert set(record["sandbox_uncovered"]) >= {"filesystem", "unix_sockets", "proc", "tmp"}
        assert record["sandbox_uncovered"]["proc"] == GAPS["proc"]
        assert journal["sandbox"]["uncovered"] == record["sandbox_uncovered"]


class HarnessBrain(ScriptedBrain):
    """Its draft tries to flip the fault harness's switch; the patch guard refuses to run it."""

    def draft(self, ctx, memory):
        code = "import os\nos.environ['WORKBENCH_HARNESS_FAULTS'] = '[]'\n" + GOOD
        return Proposal("draft that touches the harness", code, brain=self.name)


def test_a_solution_touching_the_harness_switch_is_refused_by_the_patch_guard(data_dir, tmp_path):
    sc = _scaffold(num_drafts=1, debug_prob=1.0, steps=2)
    run_task(
        "wine-cultivar", data_dir=data_dir, brain=HarnessBrain(), scaffold=sc, track=False,
        out_dir=tmp_path / "run",
    )  # fmt: skip
    import json

    journal = json.loads((tmp_path / "run" / "journal.json").read_text())["nodes"]
    assert journal[0]["status"] == "buggy" and "harness switch" in journal[0]["error"]
    assert journal[1]["status"] == "ok"
