"""Readers: gateway session files -> token-level samples (trajectories: tests/rl/test_episodes.py)."""

from __future__ import annotations

import json

import pytest

from trainer.rl.data import (
    Sample,
    completion_sample,
    samples_from_session,
)
from trainer.rl.tree import build_tree


def _write_jsonl(path, records, torn_tail=False):
    text = "".join(json.dumps(r) + "\n" for r in records)
    if torn_tail:
        text += '{"seq": 9, "prompt_tok'
    path.write_text(text)


def test_session_records_become_samples(tmp_path):
    recs = [
        {
            "seq": 0,
            "session": "s1",
            "status": 200,
            "prompt_token_ids": [0, 2, 7, 8],
            "completion_token_ids": [[11, 12, 1]],
            "logprobs": [[-0.5, -1.0, -0.1]],
        },
        {"seq": 1, "session": "s1", "status": 500, "response": {"error": "boom"}},
        {
            "seq": 2,
            "session": "s1",
            "status": 200,
            "prompt_token_ids": [0, 2, 7, 8, 11, 12, 1, 2, 9],
            "completion_token_ids": [[13, 1]],
            "logprobs": None,
        },
        {
            "seq": 3,
            "session": "s1",
            "status": 200,
            "prompt_token_ids": None,
            "completion_token_ids": None,
        },  # an upstream that gave no tokens
    ]
    path = tmp_path / "s1.jsonl"
    _write_jsonl(path, recs, torn_tail=True)
    samples = samples_from_session(path, reward=1.0, group="scn")
    assert len(samples) == 2
    a, b = samples
    assert a.ids == [0, 2, 7, 8, 11, 12, 1] and a.trainable == [False] * 4 + [True] * 3
    assert a.old_logprobs == [0.0] * 4 + [-0.5, -1.0, -0.1]
    assert b.old_logprobs is None and (a.step, b.step) == (0, 1)
    assert (a.reward, b.reward) == (0.0, 1.0) and a.episode == "s1" and b.group == "scn"
    # turn 2 extends turn 1: the tree shares the whole first sample
    p = build_tree([a.ids, b.ids], [a.trainable, b.trainable])
    assert p.tokens_merged == len(b.ids)


def test_sample_validation():
    with pytest.raises(ValueError):
        Sample(ids=[1, 2], trainable=[True])
    with pytest.raises(ValueError):
        completion_sample([1, 2], [3, 4], logprobs=[-1.0])
    assert completion_sample([1], [3, 4]).num_trainable == 2


def _trajectory(tmp_path):
    events = [
        {"t": 1, "type": "start", "scenario": "lr_spike"},
        {"t": 2, "type": "message", "role": "system", "content": "You debug runs."},
        {"t": 3, "type": "message", "role": "human", "content": "Run r1 diverged."},
        {
            "t": 4,
            "type": "message",
            "role": "ai",
            "content": "Reading the params.",
            "tool_calls": [{"id": "c1", "name": "get_params", "args": {"run_id": "r1"}}],
        },
        {"t": 5, "type": "message", "role": "tool", "content": "lr=1.0", "tool_call_id": "c1"},
        {"t": 6, "type": "message", "role": "ai", "content": "Cause: lr_too_high."},
        {"t": 7, "type": "end", "reward": 1.0},
    ]
    path = tmp_path / "ep1.jsonl"
    _write_jsonl(path, events)
    return path


def test_session_with_several_choices_gives_one_sample_per_choice(tmp_path):
    rec = {
        "seq": 0,
        "session": "g1",
        "status": 200,
        "prompt_token_ids": [0, 5, 6],
        "completion_token_ids": [[7, 1], [8, 9, 1], []],
        "logprobs": [[-0.1, -0.2], None, None],
        "response": {"weights_version": 3},
    }
    path = tmp_path / "g1.jsonl"
    _write_jsonl(path, [rec])
    a, b = samples_from_session(path)  # the empty third choice is skipped
    assert a.ids == [0, 5, 6, 7, 1] and b.ids == [0, 5, 6, 8, 9, 1]
    assert a.old_logprobs == [0.0] * 3 + [-0.1, -0.2] and b.old_logprobs is None
    assert (a.episode, b.episode) == ("g1#0", "g1#1") and a.step == b.step == 0
    assert a.meta == {"choice": 0, "weights_version": 3}
