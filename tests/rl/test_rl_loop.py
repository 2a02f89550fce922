"""The RL loop end to end at toy size: the task and its verified rewards, warm start, windowed
rollouts (in-process fast path, and once through the real server + recording gateway), CISPO
updates, checkpoints, hot reload, the remedy-outcome cache and the result file."""

from __future__ import annotations

import json

import pytest
import torch

from model.chat import END_OF_TURN
from workbench.rl.config import RLConfig
from workbench.rl.loop import run_rl
from workbench.rl.reward import RemedyCache, suite_verified
from workbench.rl.tasks import NO_ACTION, load_tasks, parse_action


def test_tasks_rewards_and_action_parsing(tmp_path):
    tasks, catalog = load_tasks("faults")
    actions = sorted(catalog)
    assert NO_ACTION in actions and "lower_lr" in actions and catalog[NO_ACTION] == []
    assert {t.split for t in tasks} == {"selection", "heldout"}
    a = actions.index("lower_lr")
    assert parse_action(chr(65 + a) + END_OF_TURN, actions) == "lower_lr"
    assert parse_action(" lower_lr", actions) == "lower_lr"
    assert parse_action("nonsense", actions) is None
    by = {t.scenario: t for t in tasks}
    # the menu is what the propose step offers: the diagnosed cause's remedies, then no_action
    oom = by["digits-oom"]
    assert oom.menu == ("bf16_activations", "halve_batch", NO_ACTION)  # sorted by id
    # a remedy's letter is its place in the whole catalog, the same on every menu ...
    assert parse_action("F" + END_OF_TURN, oom.menu) == "halve_batch"
    assert parse_action("B", oom.menu) is None  # clip_grads: not on this menu
    # ... or, as an ablation, its place on this menu
    assert parse_action("B" + END_OF_TURN, oom.menu, "letter") == "halve_batch"
    assert by["lm-healthy-a"].menu == (NO_ACTION,)
    # the playbook's remedies for an overflow are setting changes (no fault switch to delete)
    assert by["lm-fp-overflow"].menu == ("clip_grads", "fp32", NO_ACTION)
    assert by["lm-fp-overflow"].teacher == "fp32"
    all_tasks, _ = load_tasks("faults", menu="all")
    assert all(t.menu == tuple(actions) for t in all_tasks)
    cache = RemedyCache(tmp_path / "c.json", suite_verified, catalog)
    # the rules teacher's first remedy is right where its patch is a known fix ...
    assert by["digits-oom"].teacher == "halve_batch"
    assert cache.reward(by["digits-oom"], "halve_batch") == 1.0
    # ... and wrong where it is not: fix_code is a code change, no config patch to verify
    assert by["lm-code-error"].teacher == "fix_code"
    assert cache.reward(by["lm-code-error"], "fix_code") == 0.0
    # a remedy touching the harness's fault switch is refused by the one patch guard
    rigged = RemedyCache(
        tmp_path / "r.json",
        suite_verified,
        {**catalog, "drop_faults": [{"key": "faults", "op": "delete"}]},
    )
    assert rigged.judge(by["lm-fp-overflow"], "drop_faults") == (0.0, "guard")
    assert cache.reward(by["lm-fp-overflow"], "fp32") == 1.0  # the real setting change
    assert cache.judge(by["lm-code-error"], "fix_code") == (0.0, "code_change")
    # healthy: doing nothing verifies, any patch is a false alarm; unparsable answers get 0
    assert cache.reward(by["lm-healthy-a"], NO_ACTION) == 1.0
    assert cache.judge(by["lm-healthy-a"], "clip_grads") == (0.0, "false_alarm")
    assert cache.reward(by["digits-oom"], NO_ACTION) == 0.0
    assert cache.reward(by["digits-oom"], None) == 0.0
    assert json.loads((tmp_path / "c.json").read_text())["digits-oom::halve_batch"] is True


def _check(res, out, measured):
    assert (out / "iter-000" / "config.json").exists() and (out / "iter-sft").exists()
    it = res["iterations"][0]
    assert set(it) >= {"reward", "success_rate", "kl_to_start", "tokens_per_s",
                       "tree_compression", "staleness_max"}  # fmt: skip
    assert it["kl_to_start"] >= 0.0 and it["staleness_max"] <= 1
    # CISPO's old log-probs are recomputed from the sampling weights (tempered): the raw ones
    # recomputed there agree with what the sampler (in-process copy or server) reported
    assert it["behaviour_lp_gap"] < 1e-3
    assert 0.0 <= res["heldout_success_rl"] <= 1.0
    # each (scenario, remedy) outcome measured once, then cached on disk
    assert len(measured) == len(set(measured)) == res["remedy_measurements"]
    assert len(json.loads((out / "remedy_outcomes.json").read_text())) == len(measured)
    saved = json.loads((out / "rl_result.json").read_text())
    assert saved["heldout_success_sft"] == res["heldout_success_sft"]
    # per-scenario greedy answers with their verdict's source; rates follow from them
    rl = saved["heldout_detail"]["rl"]
    assert sum(a["reward"] for a in rl.values()) / len(rl) == res["heldout_success_rl"]
    assert {a["source"] for a in rl.values()} <= {
        "stand_in", "false_alarm", "code_change", "guard", "unparsable"
    }  # fmt: skip
    assert all(v["source"] == "stand_in" for v in saved["remedy_outcomes"].values())
    assert isinstance(saved["answers_touching_faults"], list)


def _recording_measure():
    """A suite stand-in measure that records each (scenario, patch) it was asked about."""
    measured: list[tuple[str, str]] = []

    def measure(task, patch):
        measured.append((task.scenario, json.dumps(patch)))
        return suite_verified(task, patch)

    return measure, measured


def test_rl_loop_inprocess_runs_and_checkpoints(tmp_path):
    torch.set_num_threads(1)
    measure, measured = _recording_measure()
    cfg = RLConfig(iterations=1, sft_steps=2, scenarios_per_iter=3, group_size=4, batch=4,
                   max_pending=4, window=2, eval_tasks=2, via="inprocess")  # fmt: skip
    out = tmp_path / "out"
    res = run_rl(tmp_path / "policy", cfg=cfg, out_dir=out, measure=measure)
    assert (tmp_path / "policy" / "config.json").exists()  # a fresh policy was created
    assert res["rollouts_via"] == "inprocess" and res["iterations"][0]["reloaded"] is False
    _check(res, out, measured)


def test_rl_loop_through_server_and_gateway(tmp_path):
    """The real path once: `workbench serve` + `workbench gateway` subprocesses, rollouts as
    chat completions recorded in gateway sessions, samples read back, hot reload."""
    torch.set_num_threads(1)
    measure, measured = _recording_measure()
    cfg = RLConfig(iterations=1, sft_steps=0, scenarios_per_iter=1, group_size=18, batch=3,
                   max_pending=2, window=1, eval_tasks=1, via="server", workers=1)  # fmt: skip
    out = tmp_path / "out"
    res = run_rl(tmp_path / "policy", cfg=cfg, out_dir=out, measure=measure)
    assert res["rollouts_via"] == "server"
    assert res["iterations"][0]["reloaded"] is True  # POST /admin/reload accepted
    # a group of 18 is two chat completions (the server allows n <= 16), each its own session
    sessions = sorted((out / "sessions").glob("*.jsonl"))
    assert len(sessions) == 2
    recs = [json.loads(f.read_text().splitlines()[0]) for f in sessions]
    assert sorted(len(r["completion_token_ids"]) for r in recs) == [2, 16]
    rec = recs[0]
    assert rec["prompt_token_ids"]
    lps, ids = rec["logprobs"], rec["completion_token_ids"]
    assert [len(x) for x in lps] == [len(x) for x in ids]
    _check(res, out, measured)


def test_fix_outcomes_rewards_read_the_shared_cache(tmp_path):
    """Measured outcomes come from the FixOutcomes cache (filled here by hand, so nothing is
    rerun); with measure_new=False an unmeasured fix falls back to the suite stand-in."""
    from workbench.rl.outcomes import FixOutcome, FixOutcomes
    from workbench.rl.outcomes import canonical_patch as fo_patch
    from workbench.rl.reward import fix_outcomes_measure

    tasks, catalog = load_tasks("faults")
    by = {t.scenario: t for t in tasks}
    fo = FixOutcomes(tmp_path / "fix")
    lower = catalog["lower_lr"]  # x0.1: not the suite's known fix (x0.01), but it verifies
    fo.record(FixOutcome("lm-lr-too-high", fo_patch(lower), True, 1.0, "verified", 9.0))
    measure = fix_outcomes_measure(tmp_path / "fix", measure_new=False)
    cache = RemedyCache(tmp_path / "c.json", measure, catalog)
    assert cache.reward(by["lm-lr-too-high"], "lower_lr") == 1.0  # measured beats stand-in
    assert suite_verified(by["lm-lr-too-high"], lower) is False
    assert cache.reward(by["lm-lr-too-high"], "clip_grads") == 0.0  # stand-in
    assert cache.reward(by["lm-healthy-a"], NO_ACTION) == 1.0  # the doctor found nothing
    assert measure.sources == {"measured": 0, "cached": 1, "stand_in": 1, "doctor": 2}
    assert cache.judge(by["lm-lr-too-high"], "lower_lr") == (1.0, "cached")
    assert cache.judge(by["lm-lr-too-high"], "clip_grads") == (0.0, "stand_in")
    assert cache.judge(by["lm-healthy-a"], NO_ACTION) == (1.0, "doctor")


def test_training_reward_tie_break_and_miss_penalty(tmp_path):
    """Two remedies both verify on digits-oom: the training reward breaks the tie by the
    playbook's ranking (halve_batch first); a lone working fix keeps its full reward, and
    success (plain verification) is unchanged. no_action on a broken run can be penalised."""
    tasks, catalog = load_tasks("faults")
    by = {t.scenario: t for t in tasks}
    works = {"digits-oom": ("halve_batch", "bf16_activations"), "digits-overfit": ("early_stop",)}

    def measure(task, patch):
        if not patch:  # no_action: the run passes as it is only when it is healthy
            return task.cause == "healthy"
        return any(patch == catalog[a] for a in works.get(task.scenario, ()))

    cache = RemedyCache(tmp_path / "c.json", measure, catalog)
    oom, overfit = by["digits-oom"], by["digits-overfit"]
    assert cache.preferred(oom) == "halve_batch" and cache.preferred(overfit) == "early_stop"
    assert cache.train_reward(oom, "halve_batch", 0.1) == 1.0
    assert cache.train_reward(oom, "bf16_activations", 0.1) == pytest.approx(0.9)
    assert cache.train_reward(oom, "bf16_activations", 0.0) == 1.0  # off by default
    assert cache.reward(oom, "bf16_activations") == 1.0  # success still counts it
    # no_action on a broken run is a miss: below a failed fix attempt (0) when penalised
    assert cache.train_reward(oom, NO_ACTION, 0.1) == 0.0
    assert cache.train_reward(oom, NO_ACTION, 0.1, miss_penalty=0.1) == pytest.approx(-0.1)
    assert cache.train_reward(overfit, "more_data", 0.1, miss_penalty=0.1) == 0.0
    assert cache.train_reward(by["lm-healthy-a"], NO_ACTION, 0.1, miss_penalty=0.1) == 1.0
    # an answer that names no remedy is a miss on any run, healthy or broken
    assert cache.train_reward(oom, None, 0.1, miss_penalty=0.1) == pytest.approx(-0.1)
    healthy = by["lm-healthy-a"]
    assert cache.train_reward(healthy, "not_a_remedy", 0.1, miss_penalty=0.1) == pytest.approx(-0.1)
    assert cache.reward(healthy, None) == 0.0  # success: plain verification
    # early_stop is ranked last by the playbook but is the only fix that works: full reward
    assert cache.train_reward(overfit, "early_stop", 0.1) == 1.0
    assert cache.train_reward(overfit, "more_data", 0.1) == 0.0


def test_answers_name_the_remedy_by_code_letter_or_id():
    """By default a remedy's letter is its place in the playbook catalog (the same letter on
    every menu); by-menu-position letters and bare ids are the ablations. Either way the answer
    tokens decode to what parse_action reads back."""
    from model.tokenizer import default_tokenizer
    from workbench.rl.policy import Policy
    from workbench.rl.tasks import prompt_messages

    tasks, catalog = load_tasks("faults")
    by = {t.scenario: t for t in tasks}
    overfit, oom = by["digits-overfit"], by["digits-oom"]
    menu = list(overfit.menu)
    code = prompt_messages(overfit, menu)[1]["content"]
    assert code.startswith(
        "Remedies: C early_stop, H more_data, I more_weight_decay, K no_action\n"
    )
    # no_action keeps its letter on every menu; a menu position would not
    assert "K no_action" in prompt_messages(oom, list(oom.menu))[1]["content"]
    assert sorted(catalog).index(NO_ACTION) == ord("K") - ord("A")
    by_letter = prompt_messages(overfit, menu, "letter")[1]["content"]
    assert by_letter.startswith("Remedies: A early_stop, B more_data, C more_weight_decay,")
    by_id = prompt_messages(overfit, menu, "id")[1]["content"]
    assert by_id.startswith("Remedies: early_stop, more_data, more_weight_decay, no_action\n")
    tok = default_tokenizer()
    for answer, want in (("code", "C"), ("letter", "A"), ("id", "early_stop")):
        pol = Policy(None, tok, answer)
        ids = pol.answer_ids("early_stop", menu)
        assert ids[-1] == pol.eos and pol.decode(ids) == want
        assert parse_action(pol.decode(ids), overfit.menu, answer) == "early_stop"
    with pytest.raises(Exception, match="answer must be code, letter or id"):
        prompt_messages(overfit, menu, "emoji")
