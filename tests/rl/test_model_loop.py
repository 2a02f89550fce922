"""The model in the loop at toy size, on real repos, real runs and the real graph.

A scenario set of the quadratic training script (tests/supervisor/conftest.py): two train
scenarios (YAML config) and one held-out one (a JSON config read by another entry point):
- a rules episode becomes SFT turns whose prompt is exactly what the local brain renders;
- SFT on the teacher's turns makes the policy drive the graph itself (no fallback) to a
  verified fix;
- the loop (teacher → SFT → RL → held-out evaluation) runs end to end, and no held-out prompt
  or scenario name reaches a training sample;
- episodes run as Ray tasks on a real local Ray instance.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.supervisor.conftest import git, make_repo, make_store, train
from workbench.rl.episodes import (
    answer_text,
    load_episodes,
    parse_episode,
    read_events,
    turn_prompt,
)

HELDOUT_PY = "import runpy, sys\nrunpy.run_path('train.py', run_name='__main__')\n"


@pytest.fixture(scope="module")
def scenario_set(tmp_path_factory) -> Path:
    """A manifest like ``workbench scenarios build`` writes, over quadratic repos."""
    root = tmp_path_factory.mktemp("scenarios")
    uri = make_store(root / "store")
    rows = []
    for name, split, lr in (
        ("quad-a", "train", 2.5),
        ("quad-b", "train", 3.0),
        ("quad-json", "heldout", 2.8),
    ):
        repo = make_repo(root / name, config=f"optimizer:\n  lr: {lr}\nsteps: 40\n")
        if split == "heldout":  # another program: a JSON config and another entry point
            (repo / "configs" / "train.json").write_text(
                json.dumps({"optimizer": {"lr": lr}, "steps": 40})
            )
            (repo / "run.py").write_text(HELDOUT_PY)
            (repo / "workbench.yaml").write_text(
                'launch: "python run.py --config {config}"\nconfig: configs/train.json\ntimeout: 120\n'
            )
            git(repo, "add", ".")
            git(repo, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "json")
        rid = train(repo, uri, "configs/train.json" if split == "heldout" else "configs/train.yaml")
        rows.append({"name": name, "split": split, "repo": str(repo), "run_id": rid,
                     "status": "failing", "findings": [], "doctor_cause": None})  # fmt: skip
    (root / "manifest.json").write_text(json.dumps({"tracking_uri": uri, "scenarios": rows}))
    return root


def _rules_episode(scenario_set: Path, home: Path, name: str = "quad-a", thread: str = ""):
    from workbench.rl.rollouts import run_episode

    m = json.loads((scenario_set / "manifest.json").read_text())
    row = next(r for r in m["scenarios"] if r["name"] == name)
    return run_episode({"scenario": row, "tracking_uri": m["tracking_uri"], "home": str(home),
                        "thread_id": thread or f"t-{name}", "brain": "rules",
                        "reuse_runs": str(home / "measured")})  # fmt: skip


def test_rules_episode_becomes_turns_the_local_brain_would_see(scenario_set, tmp_path):
    from workbench.rl.episodes import tool_specs
    from workbench.supervisor.brains.local import prompt_text

    res = _rules_episode(scenario_set, tmp_path / "home")
    assert res["status"] == "fixed" and res["verified"] and res["fallbacks"] == 0
    ep = parse_episode(Path(res["trajectory"]))
    assert [(t.phase, t.answer["tool_calls"][0]["name"]) for t in ep.turns] == [
        ("diagnose", "read_findings"), ("diagnose", "submit_diagnosis"),
        ("propose", "read_findings"), ("propose", "propose_config_patch"),
    ]  # fmt: skip
    # the teacher's decisions are as short as a decision can be: the bare cause, a remedy id
    assert set(ep.turns[1].answer["tool_calls"][0]["args"]) == {"cause"}
    assert set(ep.turns[3].answer["tool_calls"][0]["args"]) == {"remedy_id"}
    assert '<invoke name="propose_config_patch">' in answer_text(ep.turns[3].answer)
    # turn 2 saw turn 1's call and the whole read_findings result (compact JSON)
    second = ep.turns[1].messages
    assert second[-1]["role"] == "tool" and json.loads(second[-1]["content"])["remedies"]
    assert "explanation" not in second[-1]["content"]  # the doctor's prose is left out
    assert turn_prompt(ep.turns[1]) == prompt_text(list(second), tool_specs(ep.turns[1].tools))
    # a second episode proposing the same change is judged on the run already measured
    again = _rules_episode(scenario_set, tmp_path / "home", "quad-a", thread="t-quad-a-2")
    launches = [e for e in read_events(Path(again["trajectory"])) if e["type"] == "launch"]
    assert again["verified"] and launches and launches[0]["measured_before"] is True


def test_rewritten_episodes_keep_the_format_and_get_the_teachers_answers(scenario_set, tmp_path):
    """A rewrite that changes nothing renders the recorded prompts byte for byte; a rewrite that
    changes the doctor's cause gets the teacher's answers for that cause (its first remedy that
    has a patch and was not skipped), under a new run id, config path, names and numbers."""
    import random

    from scaffold.loader import load_scaffold
    from workbench.rl.augment import Rewrite, augment_episode, replayable

    res = _rules_episode(scenario_set, tmp_path / "home", "quad-b", thread="aug")
    ep = parse_episode(Path(res["trajectory"]))
    assert replayable(ep)
    old_id = ep.run_id
    same = Rewrite(run_id=old_id, config="configs/train.yaml", names={}, cause=None,
                   remedies=None, skipped=[], scale={})  # fmt: skip
    import workbench.rl.augment as aug

    orig = aug.sample_rewrite
    aug.sample_rewrite = lambda *a, **k: same
    try:
        copy = augment_episode(ep, random.Random(0))
    finally:
        aug.sample_rewrite = orig
    assert [turn_prompt(t) for t in copy.turns] == [turn_prompt(t) for t in ep.turns]
    assert [answer_text(t.answer) for t in copy.turns] == [answer_text(t.answer) for t in ep.turns]

    causes = load_scaffold().playbook.causes
    rng, seen, gave_up = random.Random(1), set(), 0
    for _ in range(40):
        new = augment_episode(ep, rng, relabel=1.0)
        calls = [t.answer["tool_calls"][0] for t in new.turns]
        cause = calls[1]["args"]["cause"]
        seen.add(cause)
        prompts = [turn_prompt(t) for t in new.turns]
        i = prompts[-1].find(old_id)
        assert i < 0, prompts[-1][i - 300 : i + 60]
        result = json.loads(new.turns[-1].messages[-1]["content"])
        assert result["doctor_diagnosis"]["cause"] == cause
        listed = [r["id"] for r in result["remedies"] if r["patch"]]
        if not listed:  # every remedy skipped: the teacher gives up
            assert calls[3]["name"] == "give_up" and result["skipped"], result
            gave_up += 1
        else:
            assert calls[3] == {"id": "aug", "name": "propose_config_patch",
                                "args": {"remedy_id": listed[0]}}  # fmt: skip
            assert listed[0] in {r.id for r in causes[cause].remedies}
        assert f'"cause": "{cause}"' in new.turns[-1].messages[1]["content"]
    assert len(seen) >= 4 and 0 < gave_up < 40  # the cause and the outcome really vary

    # DAgger: a policy's wrong answer in a recorded conversation gets the teacher's answer
    from dataclasses import replace

    from workbench.rl.augment import relabel

    wrong = {"content": "", "tool_calls": [{"id": "p", "name": "read_diagnosis", "args": {}}]}
    bad = replace(ep, turns=[replace(t, answer=wrong) for t in ep.turns])
    assert not replayable(bad)
    fixed = relabel(bad)
    assert [t.answer["tool_calls"][0]["name"] for t in fixed.turns] == [
        t.answer["tool_calls"][0]["name"] for t in ep.turns
    ]
    assert (
        fixed.turns[1].answer["tool_calls"][0]["args"]
        == ep.turns[1].answer["tool_calls"][0]["args"]
    )


# Half the policy preset's width, two layers: the test asks whether SFT makes a policy drive
# the graph, not how large one must be (the loop's figures use the preset, docs/rl.md).
SMALL = dict(num_hidden_layers=2, hidden_size=64, intermediate_size=96, num_attention_heads=2,
             num_key_value_heads=1, num_local_experts=4)  # fmt: skip


def test_sft_makes_the_policy_drive_the_graph_without_fallback(scenario_set, tmp_path):
    """Distil one teacher episode; the local brain then runs the whole episode on its own:
    every decision a parsed tool call of the policy, no fallback, a verified fix. (How well
    it generalises to unseen programs is the loop's held-out figure, not a unit test's.)"""
    from workbench.rl.policy import new_policy, save_policy
    from workbench.rl.rollouts import run_episode
    from workbench.rl.sft import SFTConfig, train_sft

    home = tmp_path / "home"
    teacher = _rules_episode(scenario_set, home, thread="sft-teacher")
    eps = load_episodes([home])
    model, tok = new_policy(tmp_path / "p0", seed=0, **SMALL)
    # one thread: pytest runs two workers on two cores, and two threads each spin-wait for a core
    cfg = SFTConfig(steps=400, lr=3e-3, batch_episodes=1, stop_at_p=0.9, check_every=10, threads=1)
    res = train_sft(model, tok, eps, cfg)
    # greedy decoding of the teacher's prompts now reproduces every answer, with margin
    assert res["worst_token_p"] >= 0.9 and res["steps"] < 400, res
    assert res["longest_turn_tokens"] < res["context"]
    save_policy(model, tok, tmp_path / "p1")
    m = json.loads((scenario_set / "manifest.json").read_text())
    row = next(r for r in m["scenarios"] if r["name"] == "quad-a")
    out = run_episode({"scenario": row, "tracking_uri": m["tracking_uri"], "home": str(home),
                       "thread_id": "local-quad-a", "brain": "local",
                       "brain_opts": {"model": str(tmp_path / "p1"), "max_new_tokens": 96},
                       "reuse_runs": str(home / "measured")})  # fmt: skip
    assert teacher["verified"], teacher
    assert out["fallbacks"] == 0 and out["brain_calls"] == 2, out
    assert out["verified"] and out["remedy"] == "lower_lr", out
    ep = parse_episode(Path(out["trajectory"]))
    # the policy saw exactly the prompts it was trained on (the runs are reused, not rerun)
    assert [turn_prompt(t) for t in ep.turns] == [turn_prompt(t) for t in eps[0].turns]
    # every answer of the policy carries its exact tokens and log-probs (what RL trains on)
    assert all(
        t.tokens and len(t.tokens["completion"]) == len(t.tokens["logprobs"]) for t in ep.turns
    )


def test_loop_runs_and_no_heldout_work_reaches_training(scenario_set, tmp_path):
    from model.tokenizer import load_tokenizer
    from workbench.rl.loop import LoopConfig, run_loop
    from workbench.rl.sft import turn_sample

    cfg = LoopConfig(sft_steps=20, rl_iterations=1, group_size=2, scenarios_per_iter=1,
                     max_attempts=1, workers=2, policy_layers=2)  # fmt: skip
    res = run_loop(scenario_set, tmp_path / "loop", cfg)
    assert res["train"] == ["quad-a", "quad-b"] and res["heldout"] == ["quad-json"]
    assert [r["stage"] for r in res["rows"]] == ["sft", "rl"]
    for row in res["rows"]:
        assert row["episodes"] == 1 and 0.0 <= row["verified_fix_rate"] <= 1.0
        assert row["brain_calls"] >= 1  # the policy was asked, not only the rules brain
    assert res["teacher"]["train"]["errors"] == 0, res["teacher"]["train"]["error_messages"]
    assert res["teacher"]["heldout"]["verified_fix_rate"] == 1.0
    assert len(res["rl_iterations"]) == 1 and res["rl_iterations"][0]["episodes"] == 2
    assert (tmp_path / "loop" / "policy-g0-i0" / "config.json").exists()
    # the honest split: no held-out prompt, run, repo or scenario name in any training sample
    m = json.loads((scenario_set / "manifest.json").read_text())
    held = [r for r in m["scenarios"] if r["split"] == "heldout"]
    held_prompts = {
        msg["content"]
        for ep in load_episodes([tmp_path / "loop" / "home-heldout-teacher"])
        for t in ep.turns
        for msg in t.messages
        if msg["role"] == "user"
    }
    assert held_prompts
    tok = load_tokenizer(tmp_path / "loop" / "policy-sft")
    texts = []
    for path in res["trained_on"]:
        ep = parse_episode(Path(path))
        for t in ep.turns:
            ids = (
                t.tokens["prompt"] + t.tokens["completion"] if t.tokens else turn_sample(tok, t).ids
            )
            texts.append(tok.decode(ids, skip_special_tokens=False))
    assert texts
    for text in texts:
        for r in held:
            assert r["run_id"] not in text and r["name"] not in text and r["repo"] not in text
        assert not any(p in text for p in held_prompts)


def test_episodes_run_as_ray_tasks(scenario_set, tmp_path):
    """``--ray``: each episode is a task on a real local Ray instance (another process)."""
    from workbench.rl.rollouts import run_episodes

    m = json.loads((scenario_set / "manifest.json").read_text())
    rows = [r for r in m["scenarios"] if r["split"] == "train"]
    jobs = [{"scenario": r, "tracking_uri": m["tracking_uri"], "home": str(tmp_path / "home"),
             "thread_id": f"ray-{r['name']}", "brain": "rules",
             "reuse_runs": str(tmp_path / "measured")} for r in rows]  # fmt: skip
    results = list(run_episodes(jobs, workers=2, kind="ray"))
    assert sorted(r["scenario"] for r in results) == ["quad-a", "quad-b"]
    assert all(r["verified"] and r["error"] is None for r in results), results
    assert all(Path(r["trajectory"]).exists() for r in results)
