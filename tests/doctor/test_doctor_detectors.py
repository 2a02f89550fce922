"""Each detector on synthetic histories: it fires on its problem, at the right onset, and stays
quiet on a healthy run and on the edge cases (NaN, one point, gaps, restarts)."""

from __future__ import annotations

import numpy as np
import pytest

from workbench.doctor import detect
from workbench.doctor.series import normalize
from workbench.errors import BadInputError

RNG = np.random.default_rng(0)
N = 400


def healthy_loss(n: int = N, noise: float = 0.02) -> np.ndarray:
    s = np.arange(n)
    return 3 * np.exp(-s / (n / 5)) + 1 + noise * RNG.standard_normal(n)


def grad(n: int = N) -> np.ndarray:
    return np.exp(0.1 * RNG.standard_normal(n))


def kinds(found) -> dict[str, int | None]:
    return {f.kind: f.step for f in found}


def run(metrics: dict, status: str = "FINISHED", log: str = "", **kw):
    hist = {
        k: (np.arange(len(v)), v) if not isinstance(v, tuple) else v for k, v in metrics.items()
    }
    return kinds(detect(hist, {"status": status, **kw}, log))


def test_healthy_run_has_no_findings():
    for seed in range(5):
        global RNG
        RNG = np.random.default_rng(seed)
        assert (
            run(
                {
                    "train/loss": healthy_loss(),
                    "grad_norm": grad(),
                    "eval/loss": healthy_loss()[::20],
                }
            )
            == {}
        )


def test_nan_inf_onset_and_all_nan_metric():
    x = healthy_loss()
    x[250:] = np.nan
    assert run({"train/loss": x})["nan_inf"] == 250
    y = healthy_loss()
    y[100] = np.inf
    assert run({"loss": y})["nan_inf"] == 100
    assert run({"loss": np.full(10, np.nan)}) == {"nan_inf": 0}


def test_divergence_onset_within_a_few_steps():
    x = healthy_loss()
    x[200:] = np.linspace(x[199], 8, N - 200) + 0.5
    k = run({"train/loss": x, "grad_norm": grad()})
    assert "divergence" in k and 200 <= k["divergence"] <= 210
    assert "loss_spike" not in k or k["loss_spike"] >= k["divergence"]


def test_megatron_ratio_catches_a_single_huge_point_series_end():
    x = healthy_loss(60)
    x[-1] = 500.0
    assert run({"loss": x})["divergence"] == 59


def test_loss_spike_that_recovers():
    x = healthy_loss()
    x[300] = x[299] * 3
    k = run({"train/loss": x, "grad_norm": grad()})
    assert k == {"loss_spike": 300}


def test_plateau_when_the_loss_does_not_move():
    x = 4.0 + 0.02 * RNG.standard_normal(N)
    assert run({"train/loss": x}) == {"plateau": 0}


def test_exploding_and_vanishing_gradients():
    g = grad()
    g[220] = 5e3
    assert run({"train/loss": healthy_loss(), "grad_norm": g})["exploding_gradients"] == 220
    g = grad()
    g[300:] = 1e-9
    assert run({"train/loss": healthy_loss(), "grad_norm": g})["vanishing_gradients"] == 300


def test_overfitting_eval_up_train_down():
    steps = np.arange(0, N, 20)
    ev = np.concatenate([np.linspace(3, 1.5, 10), np.linspace(1.55, 2.5, len(steps) - 10)])
    k = run({"train/loss": healthy_loss(), "eval/loss": (steps, ev)})
    assert k == {"overfitting": int(steps[9])}


def test_expert_collapse_on_dead_experts_and_load():
    load = 1.2 + 0.05 * RNG.standard_normal(N)
    load[150:] = 6.0
    dead = np.zeros(N)
    k = run(
        {"train/loss": healthy_loss(), "moe/load_max_over_mean": load, "moe/dead_experts": dead}
    )
    assert k == {"expert_collapse": 150}


def test_recovered_router_imbalance_is_no_collapse():
    # Dead experts and a maxed load for 50 steps that then recover (a healthy run's early
    # spike, or a fixed run rebalancing): not a collapse; the same imbalance to the end is.
    load, dead = 1.3 + 0.05 * RNG.standard_normal(N), np.zeros(N)
    load[:50], dead[:50] = 4.0, 12
    assert run({"moe/load_max_over_mean": load, "moe/dead_experts": dead}) == {}
    load[:], dead[:] = 4.0, 12
    assert run({"moe/load_max_over_mean": load, "moe/dead_experts": dead}) == {"expert_collapse": 0}


def test_throughput_dip_from_a_busy_machine_is_no_drop():
    # Other processes slow the run from step 250 on, but come and go (every 6th step runs
    # at full speed): not the constant per-read delay of slow input.
    tps = 1000 + 10 * RNG.standard_normal(N)
    tps[250:] = np.where(np.arange(250, N) % 6 == 0, 1000, 400)
    assert run({"train/loss": healthy_loss(), "tokens_per_sec": tps}) == {}


def test_a_slow_stretch_that_recovers_is_a_drop_but_a_blip_or_a_gradual_slowdown_is_not():
    # A reader slow for some shards: 40 % of the run at 1/4 speed, then full speed again.
    tps = 1000 + 10 * RNG.standard_normal(N)
    tps[200:300] = 250
    assert run({"train/loss": healthy_loss(), "tokens_per_sec": tps}) == {"throughput_drop": 200}
    # A sparse log (every 10 iterations, rounded as Megatron prints it): too short for the
    # end rule, and the slow shards end before the run does.
    sparse = np.array([0.03] * 11 + [0.01] * 11 + [0.02] * 2)
    hist = {
        "lm loss": (np.arange(24), 2 - 0.01 * np.arange(24)),
        "throughput": (np.arange(24), sparse),
    }
    found = detect(hist, {"status": "FINISHED"}, "")
    assert [(f.kind, f.step) for f in found] == [("throughput_drop", 11)]
    assert "to step 21" in found[0].evidence and "of the run's time lost" in found[0].evidence
    # Another process for a moment: the same depth, but 20 points of 500 cost little time.
    tps[200:300] = 1000 + 10 * RNG.standard_normal(100)
    tps[200:220] = 500
    assert run({"train/loss": healthy_loss(), "tokens_per_sec": tps}) == {}
    # Samples/s that fall as a curriculum lengthens the sequences (DeepSpeed, 30 points):
    # slow by the end, but never an abrupt step.
    curriculum = [8773, 7974, 6125, 6696, 4264, 4038, 4203, 3688, 3892, 3616, 3736, 2677, 2932,
                  3453, 2560, 2044, 2516, 2319, 2082, 1917, 2276, 2075, 2343, 2001, 2133, 2170,
                  1698, 1902, 2210, 1666]  # fmt: skip
    hist = {"loss": (np.arange(30), healthy_loss(30)), "CurrSamplesPerSec": (np.arange(30), np.array(curriculum, float))}  # fmt: skip
    assert detect(hist, {"status": "FINISHED"}, "") == []


def test_throughput_drop_and_step_time():
    tps = 1000 + 10 * RNG.standard_normal(N)
    tps[250:] = 400
    assert run({"train/loss": healthy_loss(), "tokens_per_sec": tps}) == {"throughput_drop": 250}
    st = 0.1 + 0.001 * RNG.standard_normal(N)
    st[180:] = 0.3
    assert run({"train/loss": healthy_loss(), "step_time": st}) == {"throughput_drop": 180}


def test_a_drop_where_the_update_alone_slowed_as_well_is_the_machine():
    # RL Games under another process's load: the env steps and the update both slow at step
    # 250 (the update 2.2x where the step runs 4x slower): the machine, not the pipeline.
    fps = 30000 + 300 * RNG.standard_normal(N)
    fps[250:] = 7500
    update = 0.02 + 0.001 * RNG.standard_normal(N)
    update[250:] = 0.044
    metrics = {"losses/a_loss": healthy_loss(), "performance/step_fps": fps}
    assert run({**metrics, "performance/rl_update_time": update}) == {}
    # A slow sampler (RLlib's sample time grows, its learn time stays level): a drop.
    update[250:] = 0.02 + 0.001 * RNG.standard_normal(N - 250)
    assert run({**metrics, "performance/rl_update_time": update}) == {"throughput_drop": 250}
    assert run(metrics) == {"throughput_drop": 250}


def test_crash_from_status_and_traceback():
    log = "step 10\nTraceback (most recent call last):\n  File 'x'\nValueError: bad shape\n"
    found = detect({"loss": (np.arange(50), healthy_loss(50))}, {"status": "FAILED"}, log)
    (crash,) = found
    assert crash.kind == "crash" and crash.step == 49 and "ValueError: bad shape" in crash.evidence
    # A RUNNING run whose log ends in a traceback died without telling MLflow.
    assert "crash" in kinds(
        detect(
            {"loss": (np.arange(50), healthy_loss(50))}, {"status": "RUNNING"}, log, now_ms=49_000
        )
    )
    assert detect({"loss": (np.arange(50), healthy_loss(50))}, {"status": "FINISHED"}, "") == []


def test_stalled_uses_the_runs_own_cadence():
    steps = np.arange(100)
    ts = 1_000_000 + steps * 1000  # one point a second
    h = {"loss": (steps, healthy_loss(100), ts)}
    assert detect(h, {"status": "RUNNING"}, "", now_ms=int(ts[-1]) + 5_000) == []
    (f,) = detect(h, {"status": "RUNNING"}, "", now_ms=int(ts[-1]) + 600_000)
    assert f.kind == "stalled" and f.step == 99
    # A hang that was later killed: judged against the end time.
    (f,) = detect(h, {"status": "KILLED", "end_time": int(ts[-1]) + 600_000}, "")
    assert f.kind == "stalled"
    # System metrics keep ticking while the training loop hangs: they must not hide it.
    sys_steps = np.arange(700)
    h["system/cpu_utilization_percentage"] = (
        sys_steps,
        np.full(700, 50.0),
        1_000_000 + sys_steps * 1000,
    )
    assert kinds(detect(h, {"status": "RUNNING"}, "", now_ms=int(ts[-1]) + 600_000)) == {
        "stalled": 99
    }


def test_short_and_single_point_histories_are_fine():
    assert run({"loss": np.array([2.0])}) == {}
    assert run({"loss": np.array([2.0, 2.1, 1.9])}) == {}
    assert run({"loss": np.array([])}) == {}


def test_irregular_steps_and_gaps():
    steps = np.cumsum(RNG.integers(1, 50, N))
    x = healthy_loss()
    x[300:] = np.nan
    assert run({"loss": (steps, x)}) == {"nan_inf": int(steps[300])}


def test_restart_relogs_steps_last_write_wins():
    # Steps 0..199, then a resume from step 150 that logs 150..299 again (the new values win).
    first = healthy_loss(200)
    second = healthy_loss(300)[150:]
    steps = np.concatenate([np.arange(200), np.arange(150, 300)])
    vals = np.concatenate([first, second])
    s = normalize("loss", (steps, vals, np.arange(len(steps))))
    assert list(s.steps) == list(range(300))
    assert s.values[160] == second[10]
    assert run({"loss": (steps, vals, np.arange(len(steps)))}) == {}


def test_non_numeric_steps_are_a_clear_error():
    with pytest.raises(BadInputError, match="steps"):
        detect({"loss": (["a", "b"], [1.0, 2.0])}, {"status": "FINISHED"}, "")
    with pytest.raises(BadInputError, match="whole numbers"):
        detect({"loss": ([0.5, 1.5], [1.0, 2.0])}, {"status": "FINISHED"}, "")


# ------------------------------------------------------------------ real logged histories
def _train(program: str, data: dict) -> dict[str, tuple[list[int], list[float]]]:
    """A short real training run in-process; its logged metrics as histories."""
    import importlib

    from trainer.config import parse_config
    from trainer.faults import FaultPlan, parse_faults
    from trainer.harness import RunContext
    from trainer.tracking import NullTracker

    data = dict(data)
    faults = parse_faults(data.pop("faults", []))  # the harness's switch, not the config's
    if code := data.pop("code", None):  # the repo's own code (template, params), as a scenario's
        import tempfile
        from pathlib import Path

        from experiments.faults.suite import render_code

        hooks = Path(tempfile.mkdtemp(prefix="repo-code-")) / "hooks.py"
        hooks.write_text(render_code(*code))
        data["hooks"] = str(hooks)
    cfg = parse_config(program, data)
    tracker = NullTracker()
    ctx = RunContext(cfg=cfg, tracker=tracker, faults=FaultPlan(faults), log_path=None)  # type: ignore[arg-type]
    ctx.log = lambda message: None  # type: ignore[method-assign]
    ctx.upload_log = lambda force=False: None  # type: ignore[method-assign]
    importlib.import_module(f"trainer.{program}").train(ctx)  # digits alone: no model import
    hist: dict[str, tuple[list[int], list[float]]] = {}
    for step, metrics in tracker.metrics:
        for k, v in metrics.items():
            hist.setdefault(k, ([], []))
            hist[k][0].append(step)
            hist[k][1].append(v)
    return hist


DIGITS = {"steps": 80, "batch_size": 32, "eval_interval": 10, "optimizer": {"warmup_steps": 5}}


def test_zeroed_gradients_in_a_real_run_are_vanishing_gradients_from_a_code_error():
    from workbench.doctor import diagnose

    bug = ("freeze_embeddings", {"start": 40})  # the repo's callback drops every gradient
    hist = _train("digits", {**DIGITS, "code": bug})
    found = detect(hist, {"status": "FINISHED"}, "")
    assert kinds(found) == {"vanishing_gradients": 40}
    diag, _ = diagnose(found, {}, "")
    assert diag is not None and diag.cause == "code_error"
    # The remedy (the bug removed) trains the same seed without any finding.
    assert kinds(detect(_train("digits", DIGITS), {"status": "FINISHED"}, "")) == {}


def test_zero_gradients_count_late_in_a_run_but_not_at_a_zero_loss():
    loss = healthy_loss()  # from 4 down to ~1: below 10 % of the start only late, if ever
    loss[300:] = 0.25  # low (a tenth of the start), but a model with zero gradients is stuck
    g = grad()
    g[300:] = 0.0
    assert run({"train/loss": loss, "grad_norm": g})["vanishing_gradients"] == 300
    loss[300:] = 0.0  # a perfectly fitted model: zero gradients are convergence
    assert "vanishing_gradients" not in run({"train/loss": loss, "grad_norm": g})


def test_outlier_gradients_under_adamw_spike_the_grad_norm_not_the_loss():
    # A real LM run without clipping (the fault suite's lm-missing-grad-clip, shrunk): batches
    # 20 and 40 have 1000x gradients. AdamW bounds each weight's update, so the loss does not
    # jump (it only stops improving): the doctor reports exploding gradients, no loss spike.
    small = {
        "hidden_size": 32, "intermediate_size": 48, "num_hidden_layers": 2, "head_dim": 8,
        "rotary_dim": 4, "num_attention_heads": 4, "num_key_value_heads": 2,
    }  # fmt: skip
    hist = _train(
        "lm",
        {
            "steps": 45, "batch_size": 8, "eval_interval": 10, "eval_batches": 2,
            "data": {"seq_len": 32}, "model": {"overrides": small},
            "optimizer": {"lr": 0.005, "warmup_steps": 5, "grad_clip": None},
            "moe": {"bias_update_rate": 0.01},
            "code": ("curated_weight", {"start": 20, "every": 20, "scale": 1000.0}),
        },
    )  # fmt: skip
    loss = np.array(hist["train/loss"][1])
    assert loss[20:].max() < 1.1 * np.median(loss[10:20])  # no jump in the logged loss
    found = kinds(
        detect(hist, {"status": "FINISHED", "params": {"optimizer.grad_clip": "None"}}, "")
    )
    assert found.get("exploding_gradients") == 20
    assert "loss_spike" not in found


def test_a_loss_logged_as_a_running_total_is_judged_by_its_increments():
    """gensim's get_latest_training_loss is the sum since training began: it climbs at every
    epoch by about the epoch's loss. Read raw that is a divergence; its increments are the
    loss, healthy when they fall and a plateau when they do not. A loss that rises by a share
    of itself from its first point is no running total, and a diverging one stays one."""
    per_epoch = 240.0 * np.exp(-np.arange(15) / 4) + 115.0
    assert run({"training_loss": np.cumsum(per_epoch)}) == {}
    flat = np.cumsum(np.full(15, 265.0) + RNG.normal(0, 1.0, 15))
    assert "plateau" in run({"training_loss": flat})
    diverging = np.concatenate([healthy_loss(40), 1.3 * np.exp(np.arange(20) / 4)])
    assert "divergence" in run({"loss": diverging})
    # a rise of its own from the first point (5 % a point) is judged raw: a divergence
    assert "divergence" in run({"loss": 2.0 * 1.05 ** np.arange(30)})


def test_an_early_throw_to_many_times_the_start_is_no_warmup_transient():
    """The first moves may unsettle a model and the run learn its way back at its rate; a rise
    to 10x its start and more is a step far too large, even where the run came back (Trax at a
    peak rate of 2.7: 3.3 → 105, then 0.79)."""
    steps = np.arange(20, 420, 20)
    thrown = np.array([3.3, 10.5, 89.4, 86.2, 105.4, 33.0, 14.0, 5.2, 2.3, 1.25, 1.02, 0.89,
                       0.82, 0.81, 0.79, 0.76, 0.78, 0.88, 0.84, 0.79])  # fmt: skip
    lr = np.array([1.2, 2.4, 2.74, 2.37, 2.12, 1.94, 1.79, 1.68, 1.58, 1.5, 1.43, 1.37, 1.32,
                   1.27, 1.23, 1.19, 1.15, 1.12, 1.09, 1.06])  # fmt: skip
    found = run({"training/loss": (steps, thrown), "training/learning_rate": (steps, lr)})
    assert {"divergence", "loss_spike"} & set(found), found
    bumped = np.where(thrown > 3.3, np.minimum(thrown, 5.0), thrown)  # a 1.5x first-moves bump
    assert run({"training/loss": (steps, bumped), "training/learning_rate": (steps, lr)}) == {}


def test_a_test_return_above_a_flat_training_return_did_not_learn_before_its_first_test():
    """A test return far above the exploring training return at its first eval was learned
    before that eval (Dopamine's CartPole) only where the training return rose as well; one
    that never rose learned nothing, and the test return is the starting policy's (OpenRLHF
    at an actor rate of 5e-8: 0.1441 at every eval, the sampled reward flat at 0.03)."""
    steps = np.arange(1, 121)
    loss = 0.05 + 0.01 * RNG.standard_normal(120) ** 2
    evals = np.arange(10, 121, 10)
    frozen = (evals, np.full(len(evals), 0.1441))
    flat = 0.03 + 0.005 * RNG.standard_normal(120)
    rising = 0.03 + 0.8 * (1 - np.exp(-steps / 30)) + 0.005 * RNG.standard_normal(120)
    base = {"train/policy_loss": (steps, loss), "eval/reward": frozen}
    assert "plateau" in run({**base, "train/reward": (steps, flat)})
    assert "plateau" not in run({**base, "train/reward": (steps, rising)})


def test_an_eval_score_that_collapsed_with_a_nan_train_loss_is_no_overfitting():
    """A model gone non-finite predicts one class: its eval accuracy falls to chance and stays
    there. That is nan_inf's (a NaN row reached the model), not memorisation."""
    steps = np.arange(5, 580, 5)
    loss = np.where(steps < 190, 0.7 * np.exp(-steps / 200) + 0.3, np.nan)
    epochs = np.arange(1, 13)
    acc = np.where(epochs <= 5, 0.6 + 0.04 * epochs, 0.5033)
    found = run({"binary cross entropy": (steps, loss), "accuracy active": (epochs, acc)})
    assert "nan_inf" in found and "overfitting" not in found, found
