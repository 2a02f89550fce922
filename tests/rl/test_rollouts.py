"""A rollout's brain samples with the job's settings (temperature, seed, token budget)."""

from __future__ import annotations

from pathlib import Path

from workbench.rl.rollouts import run_episode


def test_a_local_rollout_samples_with_the_jobs_settings(monkeypatch, tmp_path):
    """Measured 2026-12-04: the loop's rollouts at T = 1 decoded greedily (``make_brain`` kept
    only the checkpoint), so the four episodes of every group were token-identical and RL never
    had a reward spread to learn from."""
    import workbench.supervisor.episode as episode
    from workbench.supervisor.brains import make_brain

    seen = {}

    def fake_fix_run(run_id, *, brain="rules", brain_opts=None, brain_model=None, **kw):
        # the brain exactly as fix_run resolves it
        seen["brain"] = brain_model if brain_model is not None else make_brain(brain, **(brain_opts or {}))  # fmt: skip
        return {"status": "fixed", "attempts": 1, "fallbacks": 0, "brain_calls": 4}

    monkeypatch.setattr(episode, "fix_run", fake_fix_run)
    ckpt = tmp_path / "ckpt"  # a checkpoint folder as far as the brain's up-front check goes
    ckpt.mkdir()
    (ckpt / "config.json").write_text("{}")
    (ckpt / "tokenizer.json").write_text("{}")
    job = {
        "scenario": {"name": "s", "split": "train", "run_id": "r", "repo": str(tmp_path)},
        "tracking_uri": "sqlite:///x.db", "home": str(tmp_path / "home"), "thread_id": "t",
        "brain": "local",
        "brain_opts": {"model": str(ckpt), "temperature": 1.0, "seed": 3, "max_new_tokens": 96},
    }  # fmt: skip
    res = run_episode(job)
    assert res["error"] is None and res["status"] == "fixed"
    b = seen["brain"]
    assert (b.temperature, b.seed, b.max_new_tokens, Path(b.model_dir)) == (1.0, 3, 96, ckpt)

    # the rules brain is still built by name
    seen.clear()
    run_episode({**job, "brain": "rules", "brain_opts": {}})
    assert type(seen["brain"]).__name__ == "RulesChatModel"
