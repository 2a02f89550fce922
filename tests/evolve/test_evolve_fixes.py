"""The remedy term: fitness counts runs the doctor's top remedy really fixes, and the rules
brain mutates a remedy that did not fix its run.  Outcomes come from a stand-in for the
rerun (``_measure``), so these tests train nothing; tests/test_fix_outcomes.py reruns for real."""

from __future__ import annotations

import json
import random
from pathlib import Path

from evolve_testlib import PLAYBOOK, copy_scaffold, make_cache, set_detector

from scaffold.loader import load_scaffold
from workbench.evolve import Archive, run_evolution
from workbench.evolve import archive as A
from workbench.evolve.propose import rules_proposal, validate
from workbench.rl.outcomes import FixOutcome, FixOutcomes, canonical_patch
from workbench.supervisor.review import ReviewQueue

# lr_too_high names these runs' cause; its first remedy (lr × 0.1) is too weak for them.
FIX_PLAYBOOK = PLAYBOOK.replace(
    "      - {finding: divergence, weight: 3}",
    "      - {finding: divergence, weight: 6}",
).replace(
    "      - {finding: exploding_gradients, weight: 1}\n  lr_too_low:",
    "      - {finding: exploding_gradients, weight: 1}\n"
    "    remedies:\n"
    "      - id: lower_lr\n"
    "        description: divide the learning rate by 10\n"
    "        patch: [{key: optimizer.lr, op: mul, value: 0.1}]\n"
    "      - id: clip_grads\n"
    "        description: clip the global gradient norm at 1.0\n"
    "        patch: [{key: optimizer.grad_clip, op: set, value: 1.0}]\n"
    "  lr_too_low:",
)


class StandInFixes(FixOutcomes):
    """A rerun stand-in: the run is fixed when the learning rate drops at least 30×."""

    def _measure(self, scenario: str, text: str, digest: str) -> FixOutcome:
        ok = any(
            o["key"] == "optimizer.lr" and o["op"] == "mul" and o["value"] <= 0.03
            for o in json.loads(text)
        )
        why = "verified" if ok else "doctor still finds divergence"
        return FixOutcome(scenario, text, ok, 0.5 if ok else 2.0, why, 1.0, 0.6)


def _scaffold(dest: Path) -> Path:
    copy_scaffold(dest)
    (dest / "playbook.yaml").write_text(FIX_PLAYBOOK)
    set_detector(dest, "plateau", "min_points", "1000")  # no plateau on these short runs
    return dest


def _cache(tmp_path: Path):
    cache = make_cache()
    cache.fixes = StandInFixes(tmp_path / "fix-cache")
    return cache


def test_fix_rate_counts_verified_top_remedies_and_silence_fixes_nothing(tmp_path):
    cache = _cache(tmp_path)
    sc = load_scaffold(_scaffold(tmp_path / "s"))
    res = cache.score(sc, "all")
    assert res["cause_accuracy"] == 1.0 and res["micro_f1"] == 1.0
    # healthy runs (nothing proposed) count as fixed; lr × 0.1 fixes no diverging run
    assert res["fix_rate"] == 2 / 6
    expected = 0.3 * 1.0 + 0.3 * 1.0 + 0.1 * 1.0 + 0.3 * (2 / 6)
    assert abs(res["fitness"] - expected) < 1e-6
    fails = cache.failures(cache.score(sc, "selection"))
    assert {f["scenario"] for f in fails} == {"diverge-a", "diverge-b"}
    assert all(f["remedy"]["id"] == "lower_lr" and f["fixed"] is False for f in fails)
    assert fails[0]["reason"] == "doctor still finds divergence" and fails[0]["best_eval"] == 2.0
    # every outcome was measured once; scoring again is all cache hits
    assert cache.fixes.measured == 4
    cache.score(sc, "all")
    assert cache.fixes.measured == 4
    # a silent doctor names no cause, so it fixes nothing and loses on fitness
    quiet = tmp_path / "quiet"
    _scaffold(quiet)
    for kind, key in (
        ("divergence", "ratio"),
        ("divergence", "megatron_ratio"),
        ("loss_spike", "z"),
    ):
        set_detector(quiet, kind, key, "1.0e+9")
    silent = cache.score(load_scaffold(quiet), "all")
    assert silent["fix_rate"] == 2 / 6 and silent["missed"] == 4
    assert silent["fitness"] < res["fitness"]


def test_rules_brain_turns_an_unfixed_remedy_into_a_ladder_step_or_a_promotion(tmp_path):
    root = _scaffold(tmp_path / "s")
    files = {p.name: p.read_text() for p in root.glob("*.yaml")}
    cache = _cache(tmp_path)
    fails = cache.failures(cache.score(load_scaffold(root), "selection"))
    seen = set()
    for seed in range(12):
        prop = rules_proposal(files, fails, random.Random(seed))
        validate(files, prop)
        assert set(prop.files) == {"playbook.yaml"}
        seen.add(prop.description.split(" — ")[0])
    assert "playbook.yaml: lr_too_high.lower_lr optimizer.lr mul 0.1 → 0.03" in seen
    assert "playbook.yaml: lr_too_high tries remedy clip_grads before lower_lr" in seen
    assert seen <= {
        "playbook.yaml: lr_too_high.lower_lr optimizer.lr mul 0.1 → 0.03",
        "playbook.yaml: lr_too_high.lower_lr optimizer.lr mul 0.1 → 0.3",
        "playbook.yaml: lr_too_high tries remedy clip_grads before lower_lr",
    }


def test_evolution_wins_by_a_stronger_remedy_and_queues_its_diff(tmp_path):
    from workbench.evolve.home import init_scaffold

    home = tmp_path / "wb"
    init_scaffold(home / "scaffold", _scaffold(tmp_path / "src"))
    res = run_evolution(home=home, cache=_cache(tmp_path), generations=2, children=2, seed=0)
    assert res["improved"] and res["winners"]
    assert res["best"]["heldout"]["fix_rate"] == 1.0 > res["gen0"]["heldout"]["fix_rate"]
    assert "-        patch: [{key: optimizer.lr, op: mul, value: 0.1}]" in res["best"]["diff"]
    assert "+        patch: [{key: optimizer.lr, op: mul, value: 0.03}]" in res["best"]["diff"]
    item = ReviewQueue(home / "review.db").get(res["best_winner"]["review_id"])
    assert item.kind == "scaffold" and item.status == "pending"
    arch = Archive.load(home / "evolve" / "archive.json")
    assert any(n.status == A.WINNER for n in arch.nodes.values())


def test_demo_seed_is_declared_weaker_and_episodes_become_recorded_outcomes(tmp_path):
    from scaffold.loader import PACKAGED
    from workbench.evolve.demo import SEED_MIN_SCORE, demo_fixes, weaker_seed

    seed = weaker_seed(tmp_path / "seed")
    assert load_scaffold(seed).playbook.min_score == SEED_MIN_SCORE
    shipped = (Path(PACKAGED) / "playbook.yaml").read_text().splitlines()
    changed = [ln for ln in (seed / "playbook.yaml").read_text().splitlines() if ln not in shipped]
    assert changed == [f"min_score: {SEED_MIN_SCORE}"]
    cfg = tmp_path / "divergence.yaml"
    cfg.write_text("steps: 10\n")
    episodes = [
        {"scenario": "divergence", "diagnosis": "lr_too_high", "remedy": "lower_lr",
         "attempts": 1, "verified": True, "after": 2.3, "before": 3.6, "thread_id": "t1"},
        {"scenario": "divergence", "diagnosis": "lr_too_high", "remedy": "clip_grads",
         "attempts": 2, "verified": True, "after": 2.0, "before": 3.6, "thread_id": "t2"},
    ]  # fmt: skip
    fo = demo_fixes(tmp_path / "fc", "sqlite:///none.db", {"divergence": "r1"},
                    {"divergence": cfg}, episodes)  # fmt: skip
    rems = load_scaffold(None).playbook.causes["lr_too_high"].remedies
    top = next(r for r in rems if r.id == "lower_lr")
    got = fo.lookup("divergence", [p.model_dump() for p in top.patch])
    assert got is not None and got.fixed and "fix episode t1" in got.reason
    assert len(fo.all()) == 1  # a second attempt says nothing about the top remedy alone
    assert fo.measured == 0


def test_a_lower_remedy_measured_to_fix_the_failed_run_is_promoted_for_sure(tmp_path):
    root = _scaffold(tmp_path / "s")
    files = {p.name: p.read_text() for p in root.glob("*.yaml")}
    cache = _cache(tmp_path)
    sc = load_scaffold(root)
    clip = [{"key": "optimizer.grad_clip", "op": "set", "value": 1.0}]
    # Known only on diverge-a (a selection run): clip_grads fixes it.
    cache.fixes.record(FixOutcome("diverge-a", canonical_patch(clip), True, 0.5, "verified", 1.0))
    fails = {f["scenario"]: f for f in cache.failures(cache.score(sc, "selection"))}
    assert fails["diverge-a"]["alternatives"] == [
        {"id": "clip_grads", "patch": clip, "fixed": True}
    ]
    assert fails["diverge-b"]["alternatives"][0]["fixed"] is None  # looked up, not measured
    assert cache.fixes.lookup("diverge-b", clip) is None
    for seed in range(8):
        prop = rules_proposal(files, [fails["diverge-a"]], random.Random(seed))
        assert prop.description.startswith(
            "playbook.yaml: lr_too_high tries remedy clip_grads before lower_lr (measured"
        )
    # Known to fail: the ladder (or nothing better) instead of promoting it again and again.
    fails["diverge-a"]["alternatives"][0]["fixed"] = False
    seen = {
        rules_proposal(files, [fails["diverge-a"]], random.Random(s)).description.split(" — ")[0]
        for s in range(12)
    }
    assert any("lower_lr optimizer.lr mul" in d for d in seen)
