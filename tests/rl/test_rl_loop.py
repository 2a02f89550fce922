"""The RL loop end to end at toy size: warm start, windowed rollouts, CISPO updates,
checkpoints, the remedy-outcome cache and the result file."""

from __future__ import annotations

import json

import torch

from workbench.rl import NO_ACTION, RLConfig, load_tasks, parse_action, run_rl


def test_tasks_and_action_parsing():
    tasks, actions = load_tasks("faults")
    assert NO_ACTION in actions and "lower_lr" in actions
    assert {t.split for t in tasks} == {"selection", "heldout"}
    assert parse_action(" lower_lr[e~[", actions) == "lower_lr"
    assert parse_action("nonsense", actions) is None


def test_rl_loop_runs_and_checkpoints(tmp_path):
    torch.set_num_threads(1)
    measured = []

    def measure(task, remedy):
        measured.append((task.scenario, remedy))
        return remedy in task.good

    cfg = RLConfig(iterations=1, sft_steps=2, scenarios_per_iter=2, group_size=2, batch=2,
                   max_pending=4, window=2, max_new_tokens=4, eval_tasks=2)  # fmt: skip
    out = tmp_path / "out"
    res = run_rl(tmp_path / "policy", cfg=cfg, out_dir=out, measure=measure)
    assert (tmp_path / "policy" / "config.json").exists()  # a fresh policy was created
    assert (out / "iter-000" / "config.json").exists()
    it = res["iterations"][0]
    assert set(it) >= {"reward", "success_rate", "kl_to_start", "tokens_per_s",
                       "tree_compression", "staleness_max"}  # fmt: skip
    assert it["tree_compression"] > 1.0  # the rollouts share the system prompt
    assert it["kl_to_start"] >= 0.0 and it["staleness_max"] <= 1
    assert 0.0 <= res["heldout_success_rl"] <= 1.0
    # each (scenario, remedy) outcome measured once, then cached on disk
    assert len(measured) == len(set(measured)) == res["remedy_measurements"]
    cache = out / "remedy_outcomes.json"
    assert cache.exists() == bool(measured)
    if measured:
        assert len(json.loads(cache.read_text())) == len(measured)
    assert (
        json.loads((out / "rl_result.json").read_text())["heldout_success_sft"]
        == res["heldout_success_sft"]
    )
