"""Evolution on a synthetic in-memory suite: improvement, review items, resume after a kill,
reward hacking, invalid edits."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from evolve_testlib import copy_scaffold, make_cache, pinned_home, set_detector
from langchain_core.language_models.fake_chat_models import FakeListChatModel
from typer.testing import CliRunner

from scaffold.loader import load_scaffold
from workbench.evolve import Archive, run_evolution
from workbench.evolve import archive as A
from workbench.evolve.loop import Evolution
from workbench.evolve.propose import Proposal
from workbench.runs import gitops
from workbench.supervisor.review import ReviewQueue


def _branches(repo: Path) -> set[str]:
    with gitops.open_repo(repo) as r:
        return {h.name for h in r.heads}


def test_evolution_improves_heldout_and_queues_reviewed_diff(tmp_path):
    home = tmp_path / "wb"
    res = run_evolution(
        home=pinned_home(home), cache=make_cache(), generations=2, children=2, seed=0
    )
    assert res["improved"]
    assert res["best"]["heldout"]["fitness"] > res["gen0"]["heldout"]["fitness"]
    assert res["winners"]
    queue = ReviewQueue(home / "review.db")
    items = {i.id: i for i in queue.list()}
    for w in res["winners"]:
        item = items[w["review_id"]]
        assert item.kind == "scaffold" and item.status == "pending"
        assert item.branch in _branches(home / "scaffold")
        diff = gitops.diff(Path(item.repo), item.base_sha, item.branch)
        files = {ln.split(" b/")[-1] for ln in diff.splitlines() if ln.startswith("diff --git")}
        assert files and files <= {"detectors.yaml", "playbook.yaml", "metrics.yaml"}
        sc = item.data["scores"]
        for split in ("selection", "heldout"):
            assert sc["child"][split]["fitness"] > sc["parent"][split]["fitness"]
    # losers that never got a full score leave no branch behind
    arch = Archive.load(home / "evolve" / "archive.json")
    for n in arch.nodes.values():
        if n.status in (A.LOST_SUBSET, A.INVALID, A.NO_CHANGE):
            assert f"workbench/evolve/{n.id}" not in _branches(home / "scaffold")
    # approving merges the scaffold edit into the home's main branch
    first = res["winners"][0]
    queue.approve(first["review_id"])
    merged = load_scaffold(home / "scaffold")
    assert make_cache().score(merged, "heldout")["fitness"] == pytest.approx(first["heldout"])


class Killed(BaseException):
    """Stands in for SIGKILL: nothing after it runs (not even ``except Exception``)."""


def test_resume_after_kill_matches_an_uninterrupted_run(tmp_path, monkeypatch):
    ref = run_evolution(
        home=pinned_home(tmp_path / "ref"), cache=make_cache(), generations=2, children=2
    )

    cache = make_cache()
    calls = {"n": 0}
    real = type(cache).score

    def dying(self, *a, **k):
        calls["n"] += 1
        if calls["n"] == 8:  # mid-generation: a child has its branch, no score yet
            raise Killed
        return real(self, *a, **k)

    monkeypatch.setattr(type(cache), "score", dying)
    home = pinned_home(tmp_path / "wb")
    with pytest.raises(Killed):
        run_evolution(home=home, cache=cache, generations=2, children=2)
    on_disk = Archive.load(home / "evolve" / "archive.json")
    running = [n for n in on_disk.nodes.values() if n.status == A.RUNNING]
    assert len(running) == 1  # the child in flight was persisted as such

    with pytest.raises(Exception, match="--resume"):
        run_evolution(home=home, cache=cache, generations=2, children=2)
    monkeypatch.setattr(type(cache), "score", real)
    res = run_evolution(home=home, cache=cache, generations=2, children=2, resume=True)
    arch = Archive.load(home / "evolve" / "archive.json")
    ref_arch = Archive.load(tmp_path / "ref" / "evolve" / "archive.json")
    assert {i: (n.status, n.parent, n.description) for i, n in arch.nodes.items()} == {
        i: (n.status, n.parent, n.description) for i, n in ref_arch.nodes.items()
    }
    assert res["best"]["heldout"] == ref["best"]["heldout"]


def _blocks(path: str, pairs: list[tuple[str, str]]) -> str:
    body = "".join(
        f"{path}\n<<<<<<< SEARCH\n{s}\n=======\n{r}\n>>>>>>> REPLACE\n" for s, r in pairs
    )
    return "SUMMARY: quiet the doctor\n" + body


def test_a_hacking_edit_that_silences_the_doctor_loses(tmp_path):
    from evolve_testlib import DETECTORS as text

    def line(kind: str, key: str) -> str:  # the shipped line, whatever its value today
        sect = text[text.index(f"\n{kind}:") :]
        return next(ln for ln in sect.splitlines() if ln.startswith(f"  {key}:"))

    # divergence and spike thresholds to "never": no finding, so every run looks healthy
    targets = [("divergence", "ratio"), ("divergence", "megatron_ratio"), ("loss_spike", "z")]
    hack = _blocks("detectors.yaml", [(line(k, key), f"  {key}: 1.0e+9") for k, key in targets])
    brain = FakeListChatModel(responses=[hack] * 10)
    home = pinned_home(tmp_path / "wb")
    cache = make_cache()
    res = run_evolution(home=home, cache=cache, generations=1, children=1, brain=brain)
    node = Archive.load(home / "evolve" / "archive.json").nodes["1-0"]
    assert node.brain != "rules" and "quiet the doctor" in node.description  # the hack was tried
    assert node.status in (A.LOST_SUBSET, A.LOST_SELECTION)
    assert not res["winners"] and not ReviewQueue(home / "review.db").list()
    # and on the scoring itself: silence costs more than it saves
    silent = tmp_path / "silent"
    copy_scaffold(silent)
    for kind, key in (
        ("divergence", "ratio"),
        ("divergence", "megatron_ratio"),
        ("loss_spike", "z"),
    ):
        set_detector(silent, kind, key, "1.0e+9")
    seed = cache.score(load_scaffold(copy_scaffold(tmp_path / "pinned")), "all")
    quiet = cache.score(load_scaffold(silent), "all")
    assert quiet["missed"] >= 3 and quiet["fitness"] < seed["fitness"]
    assert not Evolution.beats(
        A.Node("c", 1, 0, "p", scores={"all": quiet}),
        A.Node("p", 0, 0, None, scores={"all": seed}),
        "all",
    )


@pytest.mark.parametrize(
    "files, why",
    [
        ({"detectors.yaml": "divergence:\n  ratio: high\n"}, "expected a number"),
        (
            {"playbook.yaml": "causes: {made_up: {summary: x, explanation: y, signals: []}}\n"},
            "unknown causes",
        ),
        ({"helper.py": "import os\n"}, "not an editable"),
        ({"detectors.yaml": "a: [\n"}, "not valid YAML"),
        (  # the one patch guard: the harness's fault switch is never the scaffold's to touch
            {"metrics.yaml": "roles: {train_loss: [loss]}\n# WORKBENCH_HARNESS_FAULTS=[]\n"},
            "harness switch",
        ),
    ],
)
def test_an_invalid_edit_is_rejected_without_a_branch(tmp_path, monkeypatch, files, why):
    monkeypatch.setattr(Evolution, "propose", lambda self, parent, rng: Proposal(files, "bad edit"))
    home = pinned_home(tmp_path / "wb")
    run_evolution(home=home, cache=make_cache(), generations=1, children=1)
    node = Archive.load(home / "evolve" / "archive.json").nodes["1-0"]
    assert node.status == A.INVALID and why in node.error
    assert node.branch is None and node.commit is None
    assert _branches(home / "scaffold") == {"main"}
    assert not (home / "evolve" / "worktrees" / "1-0").exists()


def test_llm_brain_gets_its_error_back_then_falls_back_to_rules(tmp_path):
    bad = _blocks("detectors.yaml", [("no such text", "x")])
    brain = FakeListChatModel(responses=[bad, bad])
    home = pinned_home(tmp_path / "wb")
    run_evolution(home=home, cache=make_cache(), generations=1, children=1, brain=brain)
    node = Archive.load(home / "evolve" / "archive.json").nodes["1-0"]
    assert node.brain == "rules" and node.status != A.INVALID  # rules took over
    assert brain.i == 0  # both scripted answers were consumed (the list wrapped round)


def test_cli_init_archive_and_review_show(tmp_path):
    from workbench.cli.main import app

    home = tmp_path / "wb"
    runner = CliRunner()
    out = runner.invoke(app, ["init", "--home", str(home), "--json"])
    assert out.exit_code == 0, out.output
    assert json.loads(out.output)["created"] is True
    assert not list((home / "scaffold").rglob("*.py"))  # no code in the editable scaffold
    import shutil

    shutil.rmtree(home)
    pinned_home(home)
    res = run_evolution(home=home, cache=make_cache(), generations=1, children=2, seed=0)
    out = runner.invoke(app, ["evolve", "archive", "--home", str(home), "--json"])
    assert out.exit_code == 0, out.output
    nodes = json.loads(out.output)["nodes"]
    assert nodes[0]["id"] == "0-0" and {n["id"] for n in nodes} == {"0-0", "1-0", "1-1"}
    rid = res["winners"][0]["review_id"]
    out = runner.invoke(app, ["review", "show", str(rid), "--home", str(home)])
    assert out.exit_code == 0, out.output
    assert "heldout fitness" in out.output and "selection fitness" in out.output
    assert "+++ b/" in out.output  # the scaffold diff
