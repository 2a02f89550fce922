"""Calibrated alarms and causes from evidence (issue #23, #19 item 5): a finding needs evidence
beyond the run's own noise, and every diagnosis names the evidence it used."""

from __future__ import annotations

import numpy as np

from scaffold.loader import load_scaffold
from workbench.doctor import detect, diagnose
from workbench.doctor.types import Finding

SC = load_scaffold(None)


def kinds(metrics: dict, **info) -> set[str]:
    hist = {k: v if isinstance(v, tuple) else (np.arange(len(v)), v) for k, v in metrics.items()}
    return {f.kind for f in detect(hist, {"status": "FINISHED", **info}, "")}


def test_per_epoch_noisy_validation_is_not_overfitting():
    rng = np.random.default_rng(0)
    ep = np.arange(40)
    train = 2 * np.exp(-ep / 4) + 0.01
    for seed in range(5):
        rng = np.random.default_rng(seed)
        # converged at ~0.1 with a small validation set's epoch-to-epoch wander
        val = 1.5 * np.exp(-ep / 3) + 0.1 + 0.015 * rng.standard_normal(40)
        assert kinds({"loss": train, "val_loss": val}) == set(), seed
    val = np.concatenate([1.5 * np.exp(-ep[:12] / 3) + 0.4, np.linspace(0.42, 0.55, 28)])
    assert kinds({"loss": train, "val_loss": val}) == {"overfitting"}


def test_small_noisy_minibatch_loss_is_not_a_spike_but_a_bad_batch_is():
    rng = np.random.default_rng(1)
    n = 200
    loss = np.exp(np.log(0.08) + 0.45 * rng.standard_normal(n))  # noisy by factors at ~0.08
    loss[:20] = np.linspace(2.3, 0.1, 20)
    assert "loss_spike" not in kinds({"train/ce_loss": loss})
    loss[150] = 3.5
    assert "loss_spike" in kinds({"train/ce_loss": loss})


def test_a_memorised_loss_wiggling_near_zero_is_not_a_spike():
    """Per-epoch train loss of a net that memorised its rows: 0.7 down to ~2e-6, then float
    rounding moves it by factors of two.  Both z-scores see a "spike" of 1.5e-6; it gives back
    nothing of the 0.7 the run gained.  A bad batch after the same descent still is one."""
    rng = np.random.default_rng(3)
    loss = np.concatenate([0.7 * 0.1 ** np.arange(5), 2e-6 * (1 + 0.1 * rng.standard_normal(75))])
    loss[60] = 1e-5  # 5x its neighbours: far out on both the linear and the log scale
    hist = {"train_loss_epoch": (np.arange(len(loss)), loss)}
    info = {"status": "FINISHED"}
    no_floor = {**SC.detectors, "loss_spike": {**SC.detectors["loss_spike"], "min_rise": 0.0}}
    assert "loss_spike" in {f.kind for f in detect(hist, info, "", no_floor)}  # z-scores alone
    assert "loss_spike" not in kinds({"train_loss_epoch": loss})
    loss[60] = 0.5  # a bad batch gives back most of the descent
    assert "loss_spike" in kinds({"train_loss_epoch": loss})


def test_a_hinge_loss_that_touches_zero_scatters_by_factors_and_bad_batches_still_spike():
    """A triplet margin loss averaged over a batch's triplets is exactly 0 on a batch that
    meets every margin and 1e-5-1e-3 on most others once trained: a batch at 2e-3 is 20x the
    median, yet such a loss scatters by factors (on a log scale it sits at its smallest
    positive value when 0; without one, every such batch was a spike).  Three batches that
    give back most of the starting level are spikes."""
    for seed in range(3):
        rng = np.random.default_rng(seed)
        n = 360
        loss = np.exp(np.log(1e-4) + rng.standard_normal(n)).clip(max=0.002)
        loss[:20] = np.linspace(0.04, 0.002, 20)
        loss[rng.choice(np.arange(100, n), 25, replace=False)] = 0.0  # every margin met
        assert "loss_spike" not in kinds({"loss_histories/total_loss": loss}), seed
        loss[300:303] = 0.03
        assert "loss_spike" in kinds({"loss_histories/total_loss": loss}), seed


def test_an_early_throw_the_run_learns_its_way_out_of_at_its_logged_rate_is_no_spike():
    """solo-learn's online linear classifier (SGD at 0.3, cosine-annealed) over SimSiam
    features that shift fast in the first epochs: its loss goes 2.05 -> 4.2 by epoch 5, then
    learns its way down to 0.95, its validation loss from 1.33 to 0.37, at a rate still 0.6x
    the one it rose at when it got back.  Not a throw.  With no rate logged, or a rate cut
    tenfold before it came back, the schedule may have saved it: a spike of the rate."""
    ep = np.arange(21, 681, 22)
    loss = np.concatenate(
        [[2.05, 2.47, 3.13, 3.51, 4.2, 3.87, 3.46, 3.42, 3.22, 2.6], np.linspace(2.42, 0.95, 20)]
    )
    val = np.concatenate([[1.33, 1.64, 0.92, 2.49, 2.96, 1.58], np.linspace(1.1, 0.37, 24)])
    lr = 0.3 * (1 + np.cos(np.pi * ep / 700)) / 2
    hist = {"train_class_loss_epoch": (ep, loss), "val_loss": (ep, val)}
    assert not kinds({**hist, "lr-SGD/pg2": (ep, lr)})
    assert kinds(hist) == {"loss_spike"}
    cut = np.where(ep < 200, 0.3, 0.03)
    assert kinds({**hist, "lr-SGD/pg2": (ep, cut)}) & {"loss_spike", "divergence"}


def test_a_fresh_meters_first_batch_at_an_epochs_start_is_no_spike():
    """torchvision's reference script logs its MetricLogger's smoothed loss every 5 steps and
    at each epoch's end; at an epoch's start the meter holds one batch, so that point is a
    single batch's loss: 0.18 at step 270 beside a smoothed 0.045 (a healthy run, ExponentialLR
    0.8).  4x its level, but 4 % of the 2.36 the run started from; a bad batch gives back far
    more of what the run learned."""
    loss = [
        2.3,
        2.3,
        2.36,
        2.36,
        2.35,
        2.33,
        2.31,
        2.31,
        2.31,
        2.31,
        2.29,
        2.26,
        2.23,
        1.99,
        1.97,
        1.66,
        1.29,
        1.14,
        0.911,
        0.767,
        0.499,
        0.403,
        0.432,
        0.403,
        0.372,
        0.372,
        0.328,
        0.328,
        0.301,
        0.285,
        0.265,
        0.155,
        0.173,
        0.16,
        0.16,
        0.162,
        0.16,
        0.162,
        0.18,
        0.161,
        0.165,
        0.163,
        0.144,
        0.131,
        0.122,
        0.0805,
        0.0897,
        0.0862,
        0.0917,
        0.0917,
        0.084,
        0.0833,
        0.084,
        0.0833,
        0.0757,
        0.0757,
        0.061,
        0.061,
        0.0565,
        0.045,
        0.18,
        0.0764,
        0.0581,
        0.0599,
        0.0599,
        0.0581,
        0.0623,
        0.0387,
        0.032,
        0.0274,
        0.0337,
        0.0337,
        0.0337,
        0.0332,
        0.0513,
        0.0513,
        0.0657,
        0.0398,
        0.0318,
        0.0357,
        0.0274,
        0.0274,
        0.0274,
        0.0261,
        0.0261,
        0.0244,
        0.0301,
        0.0382,
        0.0353,
        0.0267,
        0.0601,
        0.0168,
        0.0168,
        0.0235,
        0.0235,
        0.0245,
        0.0326,
        0.0245,
        0.025,
        0.0255,
    ]
    steps = np.sort(np.concatenate([np.arange(0, 450, 5), np.arange(44, 450, 45)]))
    loss = np.array(loss)
    assert len(steps) == len(loss) and steps[60] == 270
    assert "loss_spike" not in kinds({"loss": (steps, loss)})
    # (what the floor of 1 % of the start let through)
    floor = {**SC.detectors, "loss_spike": {**SC.detectors["loss_spike"], "min_rise": 0.01}}
    found = detect({"loss": (steps, loss)}, {"status": "FINISHED"}, "", floor)
    assert [(f.kind, f.step) for f in found] == [("loss_spike", 270)]
    loss[60] = 0.6  # a batch that gives back a fifth of the start
    assert "loss_spike" in kinds({"loss": (steps, loss)})


def test_a_jump_of_the_train_loss_that_the_eval_did_not_follow_is_a_spike_of_the_batches():
    """LLaMA-Factory mixing in a second alpaca file whose columns are swapped (the answer read
    as the prompt): the train loss goes 0.71 -> 2.88 in two logs and works its way down to 0.9
    while the eval loss on the main tasks holds (0.68 -> 0.76 -> 0.66).  The model did not get
    worse; the batches did: a spike (bad data), where before nothing was reported."""
    steps = np.arange(5, 275, 5)
    loss = np.concatenate(
        [np.linspace(3.8, 0.71, 23), [1.16, 2.88], 0.88 + 1.6 * np.exp(-np.arange(29) / 6)]
    )
    ev = (
        np.arange(30, 271, 30),
        np.array([2.33, 1.43, 1.0, 0.677, 0.76, 0.725, 0.68, 0.662, 0.66]),
    )
    found = detect({"loss": (steps, loss), "eval_loss": ev}, {"status": "FINISHED"}, "")
    assert [(f.kind, f.step, f.context) for f in found] == [("loss_spike", 125, ("eval_held",))]
    assert diagnose(found, {}, "", SC.playbook, aliases=SC.metrics)[0].cause == "bad_data"
    # where the eval followed it, the model got worse: a divergence
    ev_up = (ev[0], np.array([2.33, 1.43, 1.0, 0.677, 1.9, 1.5, 1.2, 1.1, 1.05]))
    assert kinds({"loss": (steps, loss), "eval_loss": ev_up}) == {"divergence"}
    # a jump no higher than the loss reached a few logs before is its batches' own scatter
    # (SchNetPack's energy MSE: 1,276 at step 110, 549 at 170 against a level of 298)
    scatter = loss.copy()
    scatter[16] = 3.0
    assert not kinds({"loss": (steps, scatter), "eval_loss": ev})


def test_a_measure_of_progress_too_short_to_judge_leaves_the_loss_to_be_judged():
    """A DDPM trainer at 1e-7 (typed for 1e-3): the denoising loss sits at the untrained 1.0
    for 800 steps; its FID was computed at four save points only (12.2 -> 12.1), too few for
    the FID's own plateau rule (five).  A diffusion model's one loss is no contest: judged
    instead, a plateau.  Where the loss learned, nothing."""
    rng = np.random.default_rng(2)
    steps = np.arange(1, 801)
    fid = (np.array([200, 400, 600, 800]), np.array([12.19, 12.3, 12.44, 12.07]))
    flat = 1.0 + 0.03 * rng.standard_normal(800)
    assert kinds({"loss": (steps, flat), "fid": fid}) == {"plateau"}
    learned = 0.3 + 0.7 * np.exp(-steps / 60) + 0.03 * rng.standard_normal(800)
    assert not kinds({"loss": (steps, learned), "fid": fid})


def test_an_easy_stretch_of_data_is_no_divergence_when_the_eval_held_its_level():
    """A language model's smoothed train loss dips on an easy shard (2.3 -> 1.46) and comes
    back to where it was; its validation bits per byte (another scale than the train loss's
    nats) held its level over five evals before, and fell after. No divergence. With a single
    eval before the rise, the eval's level after it still decides as before."""
    steps = np.arange(0, 300, 5)
    loss = np.concatenate([np.linspace(5.5, 2.3, 10), np.full(38, 2.3), np.linspace(2.0, 1.46, 2)])
    loss = np.concatenate([loss, np.full(10, 2.35)]) + 0.03 * np.sin(steps)
    ev = (np.arange(0, 301, 50), np.array([8.0, 4.14, 4.18, 4.16, 4.37, 4.11, 3.79]))
    hist = {"train/loss": (steps, loss), "val/bpb": ev}
    assert "divergence" not in {f.kind for f in detect(hist, {"status": "FINISHED"}, "")}
    no_eval = {"train/loss": (steps, loss)}
    assert "divergence" in {f.kind for f in detect(no_eval, {"status": "FINISHED"}, "")}


def test_a_plateau_that_ends_worse_than_it_began_is_a_rate_too_high():
    """Per-epoch SGD at a rate far too high: the first epoch (warm-up) at 2.32, then 2.4-2.65
    above chance for 14 epochs. A rate too low barely moves the loss; it does not make it
    worse."""
    rng = np.random.default_rng(7)
    epochs = np.arange(15)
    loss = 2.52 + 0.07 * rng.standard_normal(15)
    loss[0], loss[1] = 2.316, 2.65
    found = detect({"train_loss": (epochs, loss)}, {"status": "FINISHED"}, "")
    assert [(f.kind, f.after) for f in found] == [("plateau", ("divergence",))]
    assert "worse than it began" in found[0].evidence
    diag, _ = diagnose(found, {}, "", SC.playbook, aliases=SC.metrics)
    assert diag.cause == "lr_too_high"


def test_a_clock_is_no_step_time_but_a_per_iteration_time_is():
    """A metric named `time` is MMEngine's seconds per iteration, or elsewhere a clock that
    only grows: the clock must not read as a run slowing down."""
    steps = np.arange(10, 560, 10)
    loss = (steps, 2.3 * np.exp(-steps / 200) + 0.1)
    clock = (steps, 0.003 * steps + 0.0001 * np.sin(steps))
    assert detect({"loss": loss, "time": clock}, {"status": "FINISHED"}, "") == []
    per_iter = 0.003 + 0.0002 * np.sin(steps)
    per_iter[23:] = 0.012  # a reader that decodes every batch from epoch 6 on
    found = detect({"loss": loss, "time": (steps, per_iter)}, {"status": "FINISHED"}, "")
    assert [(f.kind, f.step) for f in found] == [("throughput_drop", 240)]


def test_an_early_overshoot_is_not_the_starting_level_of_a_plateau():
    """SGD at a rate far too high: 2.32 at the first log, 3.94 two logs later, then 2.1-2.7
    for good. Measured from the overshoot it 'learned' 7 %; from where it started it ended
    worse."""
    rng = np.random.default_rng(11)
    loss = 2.55 + 0.12 * rng.standard_normal(55)
    loss[:5] = [2.32, 2.77, 3.94, 2.97, 2.7]
    found = detect({"loss": (np.arange(10, 560, 10), loss)}, {"status": "FINISHED"}, "")
    assert [(f.kind, f.after) for f in found] == [("plateau", ("divergence",))]


def test_a_converged_eval_that_gave_back_nothing_is_not_overfitting():
    """A full-batch eval of a small net converges to 0.157 after its best 0.14: 0.7 % of what
    it gained from 0.64, on a curve so smooth that its noise is ~1e-4. The train loss kept
    falling. Converged, not overfitting; the same shape giving back 30 % is."""
    ev = np.array([0.635, 0.257, 0.153, 0.172, 0.1395, 0.154, 0.150, 0.152, 0.153, 0.155]
                  + [0.155 + 0.0001 * i for i in range(15)])  # fmt: skip
    steps = np.arange(len(ev)) * 10
    tr = (steps, np.geomspace(0.6, 0.01, len(ev)))
    assert "overfitting" not in kinds({"eval_loss": (steps, ev), "train_loss": tr})
    ev[10:] = np.linspace(0.16, 0.29, 15)
    assert "overfitting" in kinds({"eval_loss": (steps, ev), "train_loss": tr})


def test_one_blown_up_first_point_does_not_set_the_loss_scale():
    """Adam at a rate far too high: the first iteration's loss is 1e5, the rest sit near 0.8
    with spikes that come straight back. The 1e5 is one point, not the run's starting level,
    so the later 13x spike still matters.  Without it, the 1e5 itself is the finding: 24,000x
    the next point, the first updates threw the weights (reported where it is confirmed)."""
    rng = np.random.default_rng(4)
    loss = 0.8 + 0.03 * rng.standard_normal(40)
    loss[:4] = [1.085e5, 4.53, 2.28, 2.82]
    loss[30] = 10.7
    no_throw = {**SC.detectors, "loss_spike": {**SC.detectors["loss_spike"], "first_throw": None}}
    found = detect({"loss": (np.arange(40), loss)}, {"status": "FINISHED"}, "", no_throw)
    assert [f.step for f in found if f.kind == "loss_spike"] == [30]  # the later spike counts
    loss[30] = 0.8
    assert "loss_spike" not in {
        f.kind
        for f in detect({"loss": (np.arange(40), loss)}, {"status": "FINISHED"}, "", no_throw)
    }
    found = detect({"loss": (np.arange(40), loss)}, {"status": "FINISHED"}, "")
    assert [(f.step, f.context) for f in found if f.kind == "loss_spike"] == [(15, ("untrained",))]


def test_climb_to_a_chance_level_plateau_is_divergence_from_lr_too_high():
    """#19 item 5: the loss learns, climbs from its best to chance level and stays there; the
    first eval comes after the climb began."""
    steps = np.arange(0, 200, 4)
    loss = np.where(steps < 40, 2.3 - steps * 0.025, 2.33)
    loss = loss + 0.02 * np.random.default_rng(2).standard_normal(len(steps))
    ev_steps = np.arange(50, 200, 25)
    ev = np.full(len(ev_steps), 2.35)
    hist = {"loss": (steps, loss), "eval_loss": (ev_steps, ev)}
    params = {"learning_rate": "0.3", "max_grad_norm": "1.0"}
    found = detect(hist, {"status": "FINISHED", "params": params}, "")
    assert {f.kind for f in found} == {"divergence"}
    diag, _ = diagnose(found, params, "", SC.playbook, aliases=SC.metrics)
    assert diag.cause == "lr_too_high" and diag.evidence


def test_a_spike_of_a_diverged_loss_is_part_of_the_divergence():
    """The rise to chance level looks like a spike against a baseline that still holds the good
    steps, and so does a later jump of the diverged loss: one problem, one finding, with the
    spike recorded as its run-up."""
    steps = np.arange(200)
    rng = np.random.default_rng(4)
    loss = np.where(steps < 40, 2.3 - steps * 0.055, 0.1) + 0.01 * rng.standard_normal(200)
    loss[70:] = 2.3 + 0.02 * rng.standard_normal(130)
    loss[95] = 2.9
    found = detect({"loss": (steps, loss)}, {"status": "FINISHED"}, "")
    assert [(f.kind, f.after) for f in found] == [("divergence", ("loss_spike",))]
    diag, _ = diagnose(found, {}, "", SC.playbook, aliases=SC.metrics)
    assert diag.cause == "lr_too_high"


def test_stuck_from_the_start_low_rate_or_an_overshoot():
    """A per-epoch loss that barely moves over 20 epochs is a plateau from a rate too low; a
    per-step loss thrown above its start by the first updates, then stuck at chance level, is
    a plateau from a rate too high (the overshoot is its run-up)."""
    epochs = np.arange(20)
    slow = 2.47 - 0.0035 * epochs  # 2.47 -> 2.40: under 5 % better
    found = detect({"train_loss": (epochs, slow)}, {"status": "FINISHED"}, "")
    assert [(f.kind, f.after) for f in found] == [("plateau", ())]
    diag, _ = diagnose(found, {}, "", SC.playbook, aliases=SC.metrics)
    assert diag.cause == "lr_too_low"
    rng = np.random.default_rng(5)
    steps = np.arange(300)
    stuck = 4.12 + 0.01 * rng.standard_normal(300)
    stuck[:4] = 4.19
    stuck[4:6] = [4.54, 4.44]  # the first large updates
    found = detect({"train_loss": (steps, stuck)}, {"status": "FINISHED"}, "")
    assert [(f.kind, f.after) for f in found] == [("plateau", ("divergence",))]
    diag, _ = diagnose(found, {}, "", SC.playbook, aliases=SC.metrics)
    assert diag.cause == "lr_too_high"
    # the same noise without the overshoot: a rate too low
    stuck[4:6] = 4.19
    found = detect({"train_loss": (steps, stuck)}, {"status": "FINISHED"}, "")
    assert [(f.kind, f.after) for f in found] == [("plateau", ())]


def test_composer_names():
    """Composer's MLFlowLogger: ``loss/train/total`` and ``metrics/eval/CrossEntropy``."""
    steps = np.arange(100)
    loss = np.exp(-steps / 30) + 0.5
    loss[60:68] = 9.0  # a shard of bad batches
    ev = (np.arange(10, 100, 10), np.full(9, 0.8))
    hist = {"loss/train/total": (steps, loss), "metrics/eval/CrossEntropy": ev,
            "metrics/eval/MulticlassAccuracy": (ev[0], np.full(9, 0.7))}  # fmt: skip
    found = detect(hist, {"status": "FINISHED"}, "")
    assert {(f.kind, f.metric) for f in found} == {("loss_spike", "loss/train/total")}


def test_a_divergence_that_starts_with_a_spike_after_the_rate_fell_is_bad_data():
    """A loss that trained well at the peak rate, then jumped on a bad shard and stayed up
    while the rate was decaying: the data threw it off, not the rate (it was higher before).
    So it did at a constant rate the run had trained at for most of its span; a rise soon
    after the rate was reached is the rate's."""
    steps = np.arange(300)
    loss = np.exp(-steps / 40) + 0.7 + 0.01 * np.sin(steps)
    loss[176] = 9.0  # the bad shard's first batch
    loss[177:] = 2.2 + 0.01 * np.sin(steps[177:])  # the model is damaged: it stays up
    decaying = 0.001 * np.minimum(1.0, (steps + 1) / 20) * (0.5 + 0.5 * np.cos(np.pi * steps / 300))
    hist = {"loss/train/total": (steps, loss), "lr-DecoupledAdamW/group0": (steps, decaying)}
    found = detect(hist, {"status": "FINISHED"}, "")
    (div,) = [f for f in found if f.kind == "divergence"]
    # (and late: the rate had held since the warm-up, and its decay after the jump rescued
    # nothing, the loss never came back)
    assert div.context == ("late", "lr_decayed") and "below its peak" in div.evidence
    diag, _ = diagnose(found, {}, "", SC.playbook, aliases=SC.metrics)
    assert diag.cause == "bad_data"
    assert any("lr_decayed" in e for e in diag.evidence)
    constant = np.full(300, 0.001)
    hist["lr-DecoupledAdamW/group0"] = (steps, constant)
    found = detect(hist, {"status": "FINISHED"}, "")
    # at a constant rate the run had trained at for 59 % of it: late, the data again
    assert [f.context for f in found if f.kind == "divergence"] == [("late",)]
    # (not while the run is live: the points seen so far are not its length)
    from workbench.doctor.core import detect_metrics, series_of

    live = detect_metrics(series_of(hist), SC.detectors, SC.metrics, final=False)
    assert [f.context for f in live if f.kind == "divergence"] == [()]
    diag, _ = diagnose(found, {}, "", SC.playbook, aliases=SC.metrics)
    assert diag.cause == "bad_data"
    # the same jump a sixth of the way in, at that rate: the rate is the suspect
    early = np.exp(-steps / 10) + 0.7 + 0.01 * np.sin(steps)
    early[50] = 9.0
    early[51:] = 2.2 + 0.01 * np.sin(steps[51:])
    hist["loss/train/total"] = (steps, early)
    found = detect(hist, {"status": "FINISHED"}, "")
    assert [f.context for f in found if f.kind == "divergence"] == [()]
    diag, _ = diagnose(found, {}, "", SC.playbook, aliases=SC.metrics)
    assert diag.cause == "lr_too_high"


def test_a_divergence_the_run_trains_its_way_back_from_at_its_rate_is_bad_data():
    """A loss that had learned, jumped on a bad shard, stayed up for a while and then trained
    its way back below where it was, at the same rate: the data set it back once. Had the
    rate been cut before it came back, or had it never come back, the rate is the suspect."""
    steps = np.arange(300)
    loss = 2.0 * np.exp(-steps / 40) + 0.9 + 0.01 * np.sin(steps)
    loss[150] = 9.0  # the bad shard's first batch
    loss[151:190] = 2.6 + 0.01 * np.sin(steps[151:190])  # thrown off for a while …
    loss[190:] = 0.8 + 1.8 * np.exp(-(steps[190:] - 190) / 15)  # … then learns its way back
    hist = {"train/loss": (steps, loss), "lr": (steps, np.full(300, 3e-4))}
    found = detect(hist, {"status": "FINISHED"}, "")
    (div,) = [f for f in found if f.kind == "divergence"]
    assert div.after == ("loss_spike",) and div.context == ("recovered", "late")
    assert "back to" in div.evidence and "stayed up" not in div.evidence
    diag, _ = diagnose(found, {}, "", SC.playbook, aliases=SC.metrics)
    assert diag.cause == "bad_data" and any("recovered" in e for e in diag.evidence)
    # the same curve with the rate cut tenfold before it came back: the cut did it
    hist["lr"] = (steps, np.where(steps < 185, 3e-4, 3e-5))
    found = detect(hist, {"status": "FINISHED"}, "")
    assert [f.context for f in found if f.kind == "divergence"] == [()]
    assert diagnose(found, {}, "", SC.playbook, aliases=SC.metrics)[0].cause == "lr_too_high"
    # … or with a warm-up that raised it sixfold between the onset and the way back
    hist["lr"] = (steps, np.where(steps < 170, 5e-5, 3e-4))
    found = detect(hist, {"status": "FINISHED"}, "")
    assert [f.context for f in found if f.kind == "divergence"] == [()]
    # and without the way back (it stays near where it jumped to): not recovered, but still
    # half-way through a run that had trained at its rate all along
    loss[190:] = 2.4 + 0.2 * np.exp(-(steps[190:] - 190) / 15)
    hist = {"train/loss": (steps, loss), "lr": (steps, np.full(300, 3e-4))}
    found = detect(hist, {"status": "FINISHED"}, "")
    assert [f.context for f in found if f.kind == "divergence"] == [("late",)]
    # learning its way down most of the jump (to 1.4 from 2.6, its level 0.95) without getting
    # back: the data set it back in one step, a spike it works off, not a rise that stayed up
    loss[190:] = 1.4 + 1.2 * np.exp(-(steps[190:] - 190) / 15)
    found = detect(hist, {"status": "FINISHED"}, "")
    (spike,) = [f for f in found if f.kind == "loss_spike"]
    assert "divergence" not in {f.kind for f in found}
    assert spike.context == ("late", "setback") and "fell back to" in spike.evidence
    assert diagnose(found, {}, "", SC.playbook, aliases=SC.metrics)[0].cause == "bad_data"
    # a rise that climbed for a while before its top is no one-step setback: a divergence
    loss[150:190] = np.linspace(2.0, 4.0, 40)
    found = detect(hist, {"status": "FINISHED"}, "")
    assert [f.context for f in found if f.kind == "divergence"] == [("late",)]


def test_a_bad_stretch_the_loss_is_back_from_within_a_few_points_is_bad_data():
    """A shard of bad batches throws the loss up for 7 steps before the run has learned much;
    it is back at its level 3 points later and learns on: no re-learning, so the data, not the
    rate (slower, the start-overshoot rule needs the run to have learned first)."""
    steps = np.arange(300)
    loss = 1.05 - 0.004 * steps[:300]
    loss = np.maximum(loss, 0.25) + 0.01 * np.random.default_rng(0).standard_normal(300)
    loss[22:29] = [3.8, 2.5, 2.9, 2.6, 2.3, 2.0, 1.4]
    hist = {"train_loss": (steps, loss), "lr": (steps, np.full(300, 5e-4))}
    found = detect(hist, {"status": "FINISHED"}, "")
    (div,) = [f for f in found if f.kind == "divergence"]
    assert div.context == ("recovered",)
    assert diagnose(found, {}, "", SC.playbook, aliases=SC.metrics)[0].cause == "bad_data"
    # back only after 40 points, the run not having learned before: no verdict on the data
    loss[22:62] = np.linspace(3.8, 0.95, 40)
    found = detect(hist, {"status": "FINISHED"}, "")
    assert [f.context for f in found if f.kind == "divergence"] == [()]


def test_findings_on_two_step_axes_are_ordered_by_the_clock():
    """AllenNLP logs per batch (step = batch) and per epoch (step = epoch): an epoch's NaN
    validation loss at "step 0" came after the batches' gradients blew up at step 2, as the
    wall clock shows; the explosion is the NaN's onset, so the cause is the missing clip."""
    b = np.arange(40)
    t_batch = 1_000_000 + 100 * b
    grad = np.concatenate([[1.0, 1.2], 10.0 ** np.arange(2, 12), np.full(28, np.nan)])
    bl = np.concatenate([np.full(2, 1.7), 1.7 * 10.0 ** np.arange(0, 10), np.full(28, np.nan)])
    ep = np.arange(2)
    hist = {
        "batch_loss": (b, bl, t_batch),
        "gradient_norm": (b, grad, t_batch),
        "validation_loss": (ep, np.full(2, np.nan), 1_000_000 + 100 * np.array([20, 40])),
    }
    found = detect(hist, {"status": "FINISHED"}, "")
    first = found[0]
    assert first.kind == "nan_inf" and "exploding_gradients" in first.after, found
    assert first.metric != "validation_loss" and first.at_ms is not None
    params = {"trainer.grad_norm": "null"}
    d, _ = diagnose(found, params, "", SC.playbook, aliases=SC.metrics)
    assert d.cause == "missing_grad_clip", d
    # without clocks (steps only) the epoch axis's step 0 would come first
    hist = {k: v[:2] for k, v in hist.items()}
    assert detect(hist, {"status": "FINISHED"}, "")[0].metric == "validation_loss"


def test_a_sparse_throughput_log_that_drops_for_good():
    """A point per eval period (10 in all): a reader that slows every batch from step 130 on
    drops the rate 3x to the end; a curriculum's gradual slowdown, and one slow period, do not
    count."""
    steps = np.arange(20, 201, 20)
    rng = np.random.default_rng(3)
    tp = 700 * (1 + 0.04 * rng.standard_normal(10))
    slow = tp.copy()
    slow[6:] = [364, 236, 251, 244]
    found = detect(
        {"loss": (steps, np.linspace(3, 1, 10)), "timing/seqs_per_second": (steps, slow)},
        {"status": "FINISHED"},
        "",
    )
    assert [(f.kind, f.step) for f in found] == [("throughput_drop", 140)]
    assert diagnose(found, {}, "", SC.playbook, aliases=SC.metrics)[0].cause == "slow_io"
    gradual = 8000 * 0.8 ** np.arange(10)
    one = tp.copy()
    one[4] = 200
    for x in (gradual, one, tp):
        assert not kinds(
            {"loss": (steps, np.linspace(3, 1, 10)), "timing/seqs_per_second": (steps, x)}
        )


def test_a_sum_since_the_last_log_is_judged_without_its_one_step_first_point():
    """spaCy logs each component's loss summed since the last evaluation, the first time after
    one update: that point sits ~25x below the next, and a healthy run would "diverge" from
    it. The alias map's ``partial_first`` drops it; the same curve under a plain name keeps it
    (one that ends above that first point: below it, a rise the run learned its way out of)."""
    steps = np.arange(0, 401, 25)
    loss = np.concatenate([[0.137], 3.4 * np.exp(-np.arange(16) / 3) + 0.2])
    assert not kinds({"loss_textcat": (steps, loss)}, status="FINISHED")
    assert "divergence" in kinds({"loss": (steps, loss)}, status="FINISHED")
    flat = np.concatenate([[0.137], np.full(16, 3.49)])  # learn_rate 1e-6: it never moves
    assert kinds({"loss_textcat": (steps, flat)}, status="FINISHED") == {"plateau"}


def _finding(kind, step, after=()):
    return Finding(kind=kind, metric="loss", step=step, severity=0.9, evidence=kind, after=after)


def test_causes_from_evidence():
    def cause(findings, params=None, log="", status="FINISHED"):
        d, _ = diagnose(findings, params or {}, log, SC.playbook, aliases=SC.metrics, status=status)
        return d

    crash = [Finding(kind="crash", metric=None, step=9, severity=1.0, evidence="FAILED")]
    for log in (
        "numpy.core._exceptions._ArrayMemoryError: Unable to allocate 7.45 GiB for an array",
        "RuntimeError: [enforce fail at alloc_cpu.cpp:127] DefaultCPUAllocator: can't allocate memory",
        "MemoryError",
        "terminate called after throwing an instance of 'std::bad_alloc'",
        "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB",
    ):
        d = cause(crash, log=f"Traceback (most recent call last):\n{log}\n", status="FAILED")
        assert d.cause == "oom", log
        assert any("log:" in e for e in d.evidence)
    # NaN after the loss climbed: the learning rate; NaN at once in half precision: overflow
    assert cause([_finding("nan_inf", 40, after=("divergence",))]).cause == "lr_too_high"
    d = cause([_finding("nan_inf", 40)], params={"dtype": "float16"})
    assert d.cause == "fp_overflow" and any("precision" in e for e in d.evidence)
    # gradients that grow with clipping off in the params (any framework's name for it)
    for name in ("max_grad_norm", "training.max_norm", "trainer/gradient_clip_val"):
        d = cause([_finding("exploding_gradients", 30)], params={name: "0"})
        assert d.cause == "missing_grad_clip", name
        assert any(name in e for e in d.evidence)
    # overfitting with a rising training loss is not memorisation
    d = cause([_finding("divergence", 20), _finding("overfitting", 10)])
    assert d.cause == "lr_too_high"


def test_thin_evidence_is_unknown_with_low_confidence():
    from scaffold.loader import Playbook

    pb = Playbook.model_validate({"min_score": 5.0, "causes": {
        "slow_io": {"summary": "s", "explanation": "e", "requires": ["throughput_drop"],
                    "signals": [{"finding": "throughput_drop", "weight": 2}]}}})  # fmt: skip
    d, _ = diagnose([_finding("throughput_drop", 5)], {}, "", pb, aliases=SC.metrics)
    assert d.cause == "unknown" and d.confidence <= 0.2
    assert d.evidence and "throughput_drop" in d.evidence[0]


def test_throughput_and_moe_balance_aliases():
    roles = SC.metrics
    want = {
        "tps": "throughput",
        "tokens/s": "throughput",
        "perf/samples_per_s": "throughput",
        "throughput/tokens_per_sec": "throughput",
        "moe/max_over_mean_load": "moe_load",
        "moe/expert_load_entropy": "moe_entropy",
        "router/entropy": "moe_entropy",
        "moe/num_idle_experts": "moe_dead",
        "router/aux_loss": "moe_aux",
        "aux_loss": "moe_aux",
        "moe/load_balancing_loss": "moe_aux",
    }
    want |= {
        "tokens_per_second_per_gpu": "throughput",  # torchtune
        "time_this_iter_s": "step_time",  # Ray Tune
        "time_per_step": "step_time",
        "lr/pg0": "lr",  # Ultralytics, per parameter group
        "val/bpb": "eval_loss",  # nanoGPT/nanochat: bits per byte
        "validation-mlogloss": "eval_loss",  # XGBoost autolog
        "valid_0-binary_logloss": "eval_loss",  # LightGBM
        "train/tok_per_sec": "throughput",
        "train/dt": "step_time",
        "train/lrm": "lr",  # nanochat's schedule multiplier
        "train_inner/gnorm": "grad_norm",  # fairseq
        "train_inner/lr": "lr",
        "train_inner/wps": "throughput",
        "time": "step_time",  # MMEngine: seconds per iteration
        "epoch_time_s": "step_time",  # an epoch's time where nothing finer is logged
        "time_per_epoch": "step_time",  # AutoGluon's NN epoch lines
        "train/reward": "reward",  # Tianshou: the training episodes' mean return
        "test/reward": "eval_reward",  # … and the test episodes'
        "Environment/Cumulative Reward": "reward",  # Unity ML-Agents
    }
    for name, role in want.items():
        assert roles.matches(role, name) is not None, name
    # an evaluation loop's own speed is not the training throughput
    assert roles.matches("throughput", "eval_samples_per_second") is None
    # progress counters and totals are no step time (Composer's time/batch, Ray's time_total_s)
    for name in ("time/batch", "time/sample", "time_total_s", "time_since_restore"):
        assert roles.matches("step_time", name) is None, name


def test_router_collapse_under_a_custom_trainers_names():
    n = 120
    rng = np.random.default_rng(3)
    ent = 2.0 + 0.03 * rng.standard_normal(n)
    ent[30:] = 0.4 + 0.03 * rng.standard_normal(n - 30)
    idle = np.zeros(n)
    idle[30:] = 6
    loss = np.linspace(2.3, 0.3, n)
    k = kinds({"train/ce_loss": loss, "moe/expert_load_entropy": ent, "moe/num_idle_experts": idle})
    assert k == {"expert_collapse"}


def test_loss_names_with_any_separator_are_read_and_lookalikes_are_not():
    """The alias map's last resort: a name with "loss" in it is the training loss, or the eval
    loss with an eval word, unless it is a loss scale, a perplexity, an accuracy or an auxiliary
    loss (Megatron's and Ignite's names, which no exact pattern knew)."""
    from workbench.doctor.series import resolve_roles

    def roles(*names):
        return resolve_roles(dict.fromkeys(names, 100), SC.metrics)

    got = roles("lm loss", "lm loss validation", "lm loss validation ppl", "loss-scale")
    assert got["train_loss"] == "lm loss" and got["eval_loss"] == "lm loss validation"
    got = roles("training batch_loss", "validation loss", "router aux loss")
    assert got["train_loss"] == "training batch_loss" and got["eval_loss"] == "validation loss"
    got = roles("loss scale", "val accuracy loss-free", "test perplexity loss")
    assert "train_loss" not in got and "eval_loss" not in got
    # pytorch-metric-learning: the record keeper's summed loss, not a statistic the loss
    # function keeps under its class name (a distance, which grows as the embedding learns)
    got = roles(
        "TripletMarginLoss/neg_pair_dist",
        "TripletMarginLoss/num_triplets",
        "loss_histories/metric_loss",
        "loss_histories/total_loss",
    )
    assert got["train_loss"] == "loss_histories/total_loss"
    # the exact names still come first where a run logs them
    assert roles("train/loss", "train/loss extra")["train_loss"] == "train/loss"


def test_a_one_batch_loss_is_judged_against_its_own_point_to_point_noise():
    """NeMo's reduced_train_loss is one batch's loss, read shard by shard: it scatters by
    ±0.25 all run long, and the few points of an early baseline can be a quiet stretch.  A
    point 4σ of the run's noise above that stretch is no spike; a bad shard's 10σ is one."""
    rng = np.random.default_rng(7)
    steps = np.arange(4, 600, 5)
    loss = 2.5 + 0.25 * rng.standard_normal(len(steps))
    loss[:10] = np.linspace(5.8, 2.6, 10)
    loss[62:78] = 2.4 + 0.05 * rng.standard_normal(16)
    loss[78] = 3.5
    hist = {"reduced_train_loss": (steps, loss)}
    info = {"status": "FINISHED"}
    local = {**SC.detectors, "loss_spike": {**SC.detectors["loss_spike"], "step_noise": 0.0}}
    assert "loss_spike" in {f.kind for f in detect(hist, info, "", local)}  # the stretch alone
    assert "loss_spike" not in kinds({"reduced_train_loss": (steps, loss)})
    loss[78] = 5.0
    assert [(f.kind, f.step) for f in detect(hist, info, "")] == [("loss_spike", 394)]


def test_a_step_timing_name_is_a_step_time_and_the_validation_loops_is_not():
    """NeMo/Lightning log `train_step_timing in s` (seconds per step) beside the validation
    loop's `validation_step_timing in s`: a reader that slows every step is a drop."""
    steps = np.arange(9, 600, 10)
    loss = (steps, 2.3 * np.exp(-steps / 200) + 0.5)
    per_step = 0.02 + 0.001 * np.sin(steps)
    per_step[30:] = 0.07
    val_steps = np.arange(99, 600, 100)
    val = (val_steps, np.array([0.01, 0.01, 0.05, 0.06, 0.05, 0.06]))
    found = detect(
        {
            "reduced_train_loss": loss,
            "train_step_timing in s": (steps, per_step),
            "validation_step_timing in s": val,
        },
        {"status": "FINISHED"},
        "",
    )
    assert [(f.kind, f.metric) for f in found] == [("throughput_drop", "train_step_timing in s")]


def test_a_clip_threshold_of_infinity_is_no_clipping():
    """ESPnet's `--grad_clip inf` clips nothing: gradients that blow up to NaN under it are a
    missing clip, not a half-precision overflow."""
    from workbench.doctor.series import setting_off

    assert setting_off("grad_clip", "inf") and setting_off("grad_clip", "0")
    assert not setting_off("grad_clip", "5.0") and not setting_off("lr", "inf")
    blown = [_finding("nan_inf", 40, after=("exploding_gradients",))]
    d, _ = diagnose(blown, {"grad_clip": "inf"}, "", SC.playbook, aliases=SC.metrics)
    assert d.cause == "missing_grad_clip"
    assert any("grad_clip=inf" in e for e in d.evidence)
    d, _ = diagnose(blown, {"grad_clip": "1.0"}, "", SC.playbook, aliases=SC.metrics)
    assert d.cause != "missing_grad_clip"


def test_params_under_any_prefix_and_the_precision_a_run_computed_in():
    """CLU logs `config.learning_rate` and `config.half_precision`, DeepSpeed
    `optimizer.params.lr` and `fp16.enabled`, HF both `fp16` and `bf16`: a NaN out of nowhere
    in a run that said it computed in full precision is the step size, not an overflow."""
    from workbench.doctor.series import compute_precision, param_value

    m = SC.metrics
    assert param_value({"config.learning_rate": "5.0"}, m, "lr") == "5.0"
    assert param_value({"optimizer.params.lr": "0.003"}, m, "lr") == "0.003"
    assert param_value({"config.blr_schedule": "x"}, m, "lr") is None
    # a schedule's starting or peak rate (Sockeye's and Keras's initial_learning_rate)
    assert param_value({"initial_learning_rate": "0.03"}, m, "lr") == "0.03"
    assert param_value({"scheduler.peak_lr": "3e-4"}, m, "lr") == "3e-4"
    assert param_value({"warmup_lr": "1e-6", "min_lr": "0"}, m, "lr") is None
    assert param_value({"training.optimizer.grad_clip": "1.0"}, m, "grad_clip") == "1.0"
    # the rate of Adam and kin, whose working range does not depend on the gradients' scale
    assert param_value({"optim": "adam", "lr": "1.0"}, m, "adaptive_lr") == "1.0"
    assert param_value({"model.optim.name": "fused_adam", "lr": "0.5"}, m, "adaptive_lr") == "0.5"
    assert param_value({"optimizer": "SGD", "lr": "1.0"}, m, "adaptive_lr") is None
    for params, want in (
        ({"config.half_precision": "True"}, "half"),
        ({"config.half_precision": "False"}, "full"),
        ({"fp16.enabled": "True", "bf16.enabled": "False"}, "half"),
        ({"fp16": "False", "bf16": "True"}, "half"),
        ({"fp16": "False", "bf16": "False"}, "full"),
        ({"trainer.precision": "bf16-mixed"}, "half"),
        ({"dtype": "float32"}, "full"),
        ({"lr": "0.1"}, None),
    ):
        assert compute_precision(params, m) == want, params

    def cause(params):
        sudden = [_finding("nan_inf", 20)]
        d, _ = diagnose(sudden, params, "", SC.playbook, aliases=SC.metrics)
        return d

    assert cause({"config.half_precision": "True"}).cause == "fp_overflow"
    # nothing says 16 bits: float32's range is far from any activation's, no overflow
    assert cause({}).cause != "fp_overflow"
    d = cause({"config.half_precision": "False", "config.learning_rate": "5.0"})
    assert d.cause == "lr_too_high"
    assert any(e.startswith("finding nan_inf") for e in d.evidence)
    # a NaN with a run-up is judged by its run-up, not as one out of nowhere
    ran_up = [_finding("nan_inf", 20, after=("exploding_gradients",))]
    d, _ = diagnose(ran_up, {"grad_clip": "0", "dtype": "float32"}, "", SC.playbook, aliases=m)
    assert d.cause == "missing_grad_clip"


def test_a_run_its_framework_stopped_on_a_nan_loss_went_nan():
    """Detectron2 raises `FloatingPointError: Loss became infinite or NaN` before any NaN is
    logged: the run went non-finite (with full precision on record: the step size), and the
    traceback is a symptom, not a bug in the code."""
    steps = np.array([19, 39])
    hist = {"total_loss": (steps, np.array([54.3, 152.0]))}
    tb = "Traceback (most recent call last):\n  File 'train.py'\n{}\n"
    info = {"status": "FAILED"}
    nan_stop = tb.format("FloatingPointError: Loss became infinite or NaN at iteration=41!")
    found = detect(hist, info, nan_stop)
    assert {f.kind for f in found} == {"crash", "nan_inf"}
    params = {"SOLVER.BASE_LR": "200.0", "SOLVER.AMP.ENABLED": "False"}
    d, _ = diagnose(found, params, nan_stop, SC.playbook, aliases=SC.metrics, status="FAILED")
    assert d.cause == "lr_too_high"
    bug = tb.format("IndexError: index out of range in self")
    found = detect(hist, info, bug)
    assert {f.kind for f in found} == {"crash"}
    d, _ = diagnose(found, params, bug, SC.playbook, aliases=SC.metrics, status="FAILED")
    assert d.cause == "code_error"


def test_a_rate_far_above_an_adaptive_optimizers_range_is_the_cause():
    """fairseq's Adam at 1.0 without clipping: gradients blow up at the first update.  No clip
    would have saved that rate, and a run stuck under it is no rate too low."""
    boom = [_finding("exploding_gradients", 10)]
    noclip = {"optimizer": "adam", "clip_norm": "0.0"}
    for lr, want in (("1.0", "lr_too_high"), ("0.003", "missing_grad_clip")):
        d, _ = diagnose(boom, {**noclip, "lr": lr}, "", SC.playbook, aliases=SC.metrics)
        assert d.cause == want, lr
    stuck = [_finding("plateau", 25)]
    for lr, want in (("1.0", "lr_too_high"), ("1e-6", "lr_too_low")):
        params = {"training.optimizer.learn_rate": lr, "optimizer": "AdamW"}
        d, _ = diagnose(stuck, params, "", SC.playbook, aliases=SC.metrics)
        assert d.cause == want, lr


def test_a_grad_norm_jump_with_clipping_logged_off_is_the_updates():
    """torchtitan's IRNN with `training.max_norm 0.0`: the grad norm jumps 40x now and then.
    Unclipped, each jump moves the weights as far: exploding gradients.  Where clipping is on,
    or nothing says, the same jumps are left to the 100x bar (healthy runs reach ~11x)."""
    rng = np.random.default_rng(5)
    gn = np.exp(0.3 * rng.standard_normal(200))
    gn[[40, 77, 120]] = 40.0
    loss = 3 * np.exp(-np.arange(200) / 80) + 2 + 0.05 * rng.standard_normal(200)
    hist = {"grad_norm": (np.arange(200), gn), "loss": (np.arange(200), loss)}

    def found(params):
        fs = detect(hist, {"status": "FINISHED", "params": params}, "")
        return [(f.kind, f.step) for f in fs]

    assert found({"training.max_norm": "0.0"}) == [("exploding_gradients", 40)]
    assert found({}) == []
    assert found({"training.max_norm": "1.0"}) == []


def test_a_loss_named_only_as_a_perplexity_and_a_dev_loss_are_read():
    """Sockeye logs `perplexity-train` / `perplexity-val` and no loss; flair's validation loss
    is `dev_loss`.  Judged, not `no_data`; where a loss is logged beside a perplexity, the
    loss is what is read."""
    from workbench.doctor.series import resolve_roles

    m = SC.metrics
    roles = resolve_roles({"perplexity-train": 10, "perplexity-val": 10, "bleu-val": 10}, m)
    assert roles["train_loss"] == "perplexity-train"
    assert roles["eval_loss"] == "perplexity-val"
    roles = resolve_roles(
        {"progress/xent": 30, "progress/ppl": 30, "valid/ppl": 3, "valid/xent": 3}, m
    )
    assert (roles["train_loss"], roles["eval_loss"]) == ("progress/xent", "valid/xent")
    assert resolve_roles({"train_loss": 20, "dev_loss": 20}, m)["eval_loss"] == "dev_loss"


TF_STEPS = np.concatenate([[1], np.arange(50, 3001, 50)])  # tf.estimator: step 1, then every 50

# tf.estimator's one-batch loss at step 1 and every 50 steps after (the tenth blind set's
# tfe-healthy-s4): the task is learnt before the second log, 0.70 -> ~0.37, then flat.
LEARNT_AT_ONCE = [
    0.698, 0.403, 0.425, 0.325, 0.364, 0.242, 0.274, 0.34, 0.385, 0.377, 0.341, 0.497, 0.371,
    0.451, 0.35, 0.419, 0.419, 0.238, 0.395, 0.302, 0.295, 0.303, 0.515, 0.495, 0.484, 0.304,
    0.317, 0.467, 0.276, 0.481, 0.241, 0.305, 0.49, 0.329, 0.4, 0.389, 0.465, 0.364, 0.397,
    0.291, 0.278, 0.344, 0.31, 0.408, 0.367, 0.334, 0.425, 0.377, 0.35, 0.392, 0.394, 0.443,
    0.404, 0.391, 0.458, 0.368, 0.399, 0.403, 0.412, 0.47, 0.405,
]  # fmt: skip


def test_a_run_that_learned_in_its_first_points_is_no_plateau():
    """The untrained first point is the start: a run that fell from it at once and stayed
    learned; a rate too small never leaves it."""
    steps = TF_STEPS
    loss = np.array(LEARNT_AT_ONCE)
    assert "plateau" not in kinds({"loss": (steps, loss)})
    loss[0] = 0.40  # a first batch inside the noise: the run never moved
    assert "plateau" in kinds({"loss": (steps, loss)})


# tf.estimator, plain SGD at 20 on a logistic task (the tenth blind set's tfe-lr-high): 0.63 at
# step 1, then batches from 0.36 to 2.5 with no trend (healthy runs: 0.34-0.39 after step 500).
SGD_AT_20 = [
    0.632, 1.168, 0.633, 1.001, 0.773, 0.691, 0.475, 1.076, 1.271, 1.174, 0.587, 1.319, 0.889,
    0.637, 0.992, 1.116, 0.73, 0.723, 1.831, 0.885, 0.581, 0.525, 0.483, 0.507, 0.536, 1.005,
    2.004, 0.744, 1.334, 1.728, 0.717, 0.408, 0.469, 0.519, 0.984, 0.75, 0.595, 2.295, 0.461,
    1.716, 0.364, 0.624, 0.858, 0.924, 2.36, 0.558, 0.757, 0.681, 0.467, 2.538, 0.766, 2.047,
    0.725, 0.393, 0.536, 0.619, 0.962, 0.683, 0.611, 0.946, 0.591,
]  # fmt: skip


def test_a_loss_that_scatters_by_factors_above_its_start_is_a_plateau_of_a_rate_too_high():
    """A chunk whose median sits 0.1 below the start is that scatter, not a run that learned
    and came back: stuck, and worse than it began."""
    steps = TF_STEPS
    loss = np.array(SGD_AT_20)
    found = detect({"loss": (steps, loss)}, {"status": "FINISHED"}, "")
    plateau = [f for f in found if f.kind == "plateau"]
    assert plateau and plateau[0].after == ("divergence",)
    params = {"optimizer": "SGD", "learning_rate": "20"}
    d, _ = diagnose(found, params, "", SC.playbook, aliases=SC.metrics)
    assert d.cause == "lr_too_high"
    # a run that learned for real and came back to where it began is no plateau
    back = np.concatenate([np.linspace(0.63, 0.2, 30), np.linspace(0.2, 0.66, 31)])
    assert "plateau" not in kinds({"loss": (steps, back)})


def test_a_spike_that_recurs_every_epoch_is_one_even_when_it_inflates_the_noise():
    """A second site's mirrored masks fill 2 of the 13 iterations of every epoch: the Dice loss
    jumps to ~1.5x its level there, every epoch.  The recurrences inflate the point-to-point
    noise that floors a spike's scale; 3 of them within one window are the evidence."""
    rng = np.random.default_rng(6)
    n = 325
    it = np.arange(1, n + 1)
    level = 0.2 + 0.6 * np.exp(-it / 120)
    loss = level * (1 + 0.06 * rng.standard_normal(n))
    healthy = loss.copy()
    bad = ((it - 1) % 13 == 8) | ((it - 1) % 13 == 9)
    loss[bad] = level[bad] * 1.4 + 0.05
    assert "loss_spike" not in kinds({"Loss": (it, healthy)})
    local = {**SC.detectors, "loss_spike": {**SC.detectors["loss_spike"], "recur": 0}}
    hist = {"Loss": (it, loss)}
    assert "loss_spike" not in {f.kind for f in detect(hist, {"status": "FINISHED"}, "", local)}
    found = [f for f in detect(hist, {"status": "FINISHED"}, "") if f.kind == "loss_spike"]
    assert found and "within 128 points" in found[0].evidence


def test_a_loader_per_metric_vocabulary_reads_the_training_loaders_and_epoch_losses():
    """Catalyst logs every metric per loader and per batch and epoch: lr/valid/batch and
    _timer/batch_time/valid/batch are the evaluation loop's, loss/valid/batch one batch of an
    evaluation, loss/std/valid/epoch a spread; loss/valid/epoch is the validation curve."""
    from workbench.doctor.series import resolve_roles

    names = {
        "loss/train/batch": 528, "loss/valid/batch": 780, "loss/std/valid/epoch": 12,
        "loss/std/train/epoch": 12, "loss/valid/epoch": 12, "loss/train/epoch": 12,
        "lr/train/batch": 528, "lr/valid/batch": 780, "_timer/_fps/train/batch": 528,
        "_timer/_fps/valid/batch": 780, "_timer/batch_time/train/batch": 528,
        "_timer/batch_time/valid/batch": 780,
    }  # fmt: skip
    got = resolve_roles(names, SC.metrics)
    assert got["train_loss"] == "loss/train/batch"
    assert got["eval_loss"] == "loss/valid/epoch"
    assert got["lr"] == "lr/train/batch"
    assert got["throughput"] == "_timer/_fps/train/batch"
    assert got["step_time"] == "_timer/batch_time/train/batch"
    # tf.estimator's steps per second and SB3's frames per second are throughputs
    for name in ("global_step/sec", "time/fps"):
        assert resolve_roles({name: 10}, SC.metrics) == {"throughput": name}


def test_a_slow_reader_is_found_after_a_noisy_healthy_stretch():
    """One batch's samples per second on a shared machine is bimodal (2e3 or 2e4, by whether
    another process ran): many short "slow" stretches come before a reader that slows every
    batch 30x for the last third of the run.  Every stretch is a candidate onset."""
    rng = np.random.default_rng(8)
    n = 528
    fps = np.where(rng.random(n) < 0.35, 2e3, 2e4) * np.exp(0.3 * rng.standard_normal(n))
    healthy = fps.copy()
    fps[352:] = 300 * np.exp(0.2 * rng.standard_normal(n - 352))
    loss = 2.3 * np.exp(-np.arange(n) / 80) + 0.05
    assert "throughput_drop" not in kinds(
        {"loss/train/batch": loss, "_timer/_fps/train/batch": healthy}
    )
    found = detect(
        {"loss/train/batch": (np.arange(n), loss), "_timer/_fps/train/batch": (np.arange(n), fps)},
        {"status": "FINISHED"},
        "",
    )
    drops = [f for f in found if f.kind == "throughput_drop"]
    assert drops and 320 <= drops[0].step <= 360


def test_an_rl_critics_value_loss_is_no_validation_loss():
    """SB3's PPO logs `train/value_loss` (the critic's regression loss, a training loss): "val"
    inside "value" is no evaluation word; `lm loss validation` still is one."""
    from workbench.doctor.series import resolve_roles

    got = resolve_roles({"train/loss": 58, "train/value_loss": 58}, SC.metrics)
    assert got == {"train_loss": "train/loss"}
    got = resolve_roles({"lm loss": 100, "lm loss validation": 10}, SC.metrics)
    assert got["eval_loss"] == "lm loss validation"


def test_a_lone_heavy_tailed_batch_is_no_spike_but_a_burst_or_a_far_one_is():
    """A byte-level language model's loss of single batches has a heavy right tail: one batch
    of a table or code sits ~1.3x the median (robust z ~7) once in a run.  Alone, and not far
    above the rest, it is no corrupted batch; two such batches within a window, or one far
    above the rest, are."""
    rng = np.random.default_rng(9)
    n = 300
    steps = np.arange(n)
    level = 2.7 + 3.3 * np.exp(-steps / 25)
    loss = level * (1 + 0.04 * rng.standard_normal(n))
    loss[200] = 1.3 * level[200]
    old = {**SC.detectors, "loss_spike": {**SC.detectors["loss_spike"], "lone_z": None}}
    hist = {"learning/loss": (steps, loss)}
    assert "loss_spike" in {f.kind for f in detect(hist, {"status": "FINISHED"}, "", old)}
    assert "loss_spike" not in kinds({"learning/loss": loss})
    burst = loss.copy()
    burst[230] = 1.3 * level[230]
    found = [f for f in detect({"learning/loss": (steps, burst)}, {"status": "FINISHED"}, "")]
    assert [f.step for f in found if f.kind == "loss_spike"] == [230]
    far = loss.copy()
    far[200] = 2.0 * level[200]
    assert "loss_spike" in kinds({"learning/loss": far})
    # one that hurt the model (the loss stays up after it) is reported where that shows
    hurt = loss.copy()
    hurt[201:] *= 1.15
    found = [f for f in detect({"learning/loss": (steps, hurt)}, {"status": "FINISHED"}, "")]
    spikes = [f for f in found if f.kind == "loss_spike"]
    assert [f.step for f in spikes] == [216] and "stayed up" in spikes[0].evidence


def test_a_lone_top_of_a_loss_that_scatters_by_factors_is_its_tail():
    """DeepChem's per-batch L2 loss on a molecule set scatters by factors (a batch holding one
    outlier molecule sits 3-5x the median now and then); one batch 9x the median, straight
    back after, is about 5 of its log-spreads: one more of that tail, no corrupted batch.  In
    a loss that never left a narrow band the same batch is a spike."""
    rng = np.random.default_rng(3)
    n = 168
    steps = 10 * np.arange(1, n + 1)
    level = 0.03 + 0.6 * np.exp(-np.arange(n) / 20)
    loss = level * np.exp(0.4 * rng.standard_normal(n))
    loss[63] = 9.0 * level[63]
    hist = {"train/loss": (steps, loss)}
    assert "loss_spike" not in {f.kind for f in detect(hist, {"status": "FINISHED"}, "")}
    old = {**SC.detectors, "loss_spike": {**SC.detectors["loss_spike"], "lone_log_z": None}}
    assert "loss_spike" in {f.kind for f in detect(hist, {"status": "FINISHED"}, "", old)}
    narrow = level * (1 + 0.03 * rng.standard_normal(n))
    narrow[63] = 9.0 * level[63]
    found = detect({"train/loss": (steps, narrow)}, {"status": "FINISHED"}, "")
    assert [f.step for f in found if f.kind == "loss_spike"] == [640]


def test_a_loss_thrown_far_above_its_first_point_early_is_a_spike_of_the_rate():
    """GPT-NeoX at lr 0.3 (3e-3 with the point one place off), clipped at 1.0: 7.1 at
    iteration 1, then 7.4, 3.9, 7.4, 10.2, 19.4 within the warm-up, before any baseline for
    a spike exists; it then learns, slowly.  A loss 2x above the untrained model's is no
    batch's doing: a spike of the rate (`lr_too_high`).  A healthy start only falls."""
    rng = np.random.default_rng(0)
    n = 400
    it = np.arange(1, n + 1)
    healthy = 2.8 + 4.3 * np.exp(-it / 8) + 0.03 * rng.standard_normal(n)
    assert "loss_spike" not in kinds({"train/lm_loss": (it, healthy)})
    thrown = 2.9 + 0.8 * np.exp(-it / 60) + 0.05 * rng.standard_normal(n)
    thrown[:8] = [7.11, 7.35, 3.88, 7.35, 10.16, 19.38, 5.54, 4.27]
    found = detect({"train/lm_loss": (it, thrown)}, {"status": "FINISHED"}, "")
    assert [(f.kind, f.step, f.context) for f in found] == [("loss_spike", 6, ("untrained",))]
    v, _ = diagnose(found, {}, "", SC.playbook, aliases=SC.metrics)
    assert v is not None and v.cause == "lr_too_high"


def test_a_negative_likelihood_loss_is_judged_by_its_rises_only():
    """GluonTS's Student-t NLL starts near zero (0.047) and runs negative as the model learns
    (-0.63 by the second epoch, -1.26 at the end): its size grows 13x, but a loss that falls is
    no divergence (Megatron's rule is a point 10x above everything before it).  A big MLP on
    two meters: its one-batch-noisy validation NLL bottoms near -0.65 by epoch 10, then climbs
    to about -0.15: no last eval stands out of the noise, but the medians of five evals rise
    far beyond what such medians scatter (overfitting); a level eval's medians do not.  A
    severity computed from such numbers is clipped to [0, 1] (a ratio to a negative best once
    made the doctor raise a validation error instead of judging)."""
    from workbench.doctor.types import Finding

    rng = np.random.default_rng(1)
    ep = np.arange(50)
    nll = np.concatenate([[0.047], -0.63 - 0.63 * (1 - np.exp(-np.arange(49) / 15))])
    noise = 0.12 * rng.standard_normal(50)
    rising = np.where(ep < 12, -0.62, -0.62 + 0.45 * (ep - 12) / 37) + noise
    level = -0.62 + noise
    for ev, want in ((rising, {"overfitting"}), (level, set())):
        hist = {"epoch_loss": (ep, nll), "validation_epoch_loss": (ep, ev)}
        assert kinds(hist) == want
    up = nll.copy()
    up[30:] = 20.0  # a real blow-up: 16x the largest |loss| before it
    assert "divergence" in kinds({"epoch_loss": (ep, up)})
    args = {"kind": "divergence", "metric": "loss", "step": 1, "evidence": "e"}
    assert [Finding(severity=v, **args).severity for v in (-0.84, 1.7, float("nan"))] == [
        0.0,
        1.0,
        0.5,
    ]


def test_a_diffusion_models_loss_is_judged_beside_its_fid_a_gans_is_not():
    """k-diffusion logs one denoising loss and the FID of its samples: a shard of images stored
    as 0-255 instead of [-1, 1] throws the loss from 0.8 to thousands at step 540, long before
    the next FID.  That loss is the model's fit to its data: judged as well as the FID.  A GAN's
    losses beside a discriminator's are a contest: only its FID is judged."""
    rng = np.random.default_rng(5)
    step = np.arange(2000)
    loss = 0.7 + 0.6 * np.exp(-step / 300) + 0.05 * rng.standard_normal(2000)
    loss[540:] = 3000 * (1 + 0.1 * rng.standard_normal(1460))
    fid_steps = np.arange(400, 2001, 400)
    fid = (fid_steps, np.array([0.58, 0.45, 0.33, 0.25, 0.2]))
    found = detect({"loss": (step, loss), "FID": fid}, {"status": "FINISHED"}, "")
    assert [(f.kind, f.metric, f.step) for f in found if f.kind == "divergence"] == [
        ("divergence", "loss", 540)
    ]
    gan = {"Loss/G/loss": (step, loss), "Loss/D/loss": (step, 0.7 + 0 * loss), "FID": fid}
    assert not detect(gan, {"status": "FINISHED"}, "")


def test_a_policy_that_collapsed_without_learning_had_a_rate_too_high():
    """PufferLib's PPO at lr 0.1 (a typo for 1e-3): the episode return stays at the untrained
    -0.95 for 195 epochs while losses/entropy falls 1.5 -> 0.02, the policy collapsed onto a
    few actions: a plateau of the rate's steps (`lr_too_high`).  At a rate too low the policy
    barely moves, its entropy with it: the same plateau is `lr_too_low`."""
    rng = np.random.default_rng(7)
    steps = np.arange(1, 196) * 2048
    ret = -0.95 + 0.03 * rng.standard_normal(195)
    for entropy, cause in (
        (0.02 + 1.48 * np.exp(-np.arange(195) / 8), "lr_too_high"),
        (1.55 + 0.01 * rng.standard_normal(195), "lr_too_low"),
    ):
        hist = {
            "environment/episode_return": (steps, ret),
            "losses/entropy": (steps, entropy),
            "losses/policy_loss": (steps, 0.01 * rng.standard_normal(195)),
        }
        found = detect(hist, {"status": "FINISHED"}, "")
        assert [f.kind for f in found] == ["plateau"]
        v, _ = diagnose(found, {}, "", SC.playbook, aliases=SC.metrics)
        assert v is not None and v.cause == cause


def test_lightnings_lr_monitor_names_the_optimizer():
    """torchgeo under Lightning logs `lr: 1.0` in its hparams and the rate as `lr-AdamW`
    (LearningRateMonitor names it after the optimizer's class): an adaptive rate of 1.0, far
    above Adam's working range, though no optimizer param is logged.  A logged optimizer wins;
    `lr-SGD` names no adaptive one."""
    from workbench.doctor.series import Series, param_value, stepped_params

    def lr(name):
        return Series(name, np.arange(10), np.full(10, 1.0), np.arange(10))

    def adaptive(params, name):
        return param_value(stepped_params(params, lr(name), SC.metrics), SC.metrics, "adaptive_lr")

    assert adaptive({"lr": "1.0"}, "lr-AdamW") == "1.0"
    assert adaptive({"lr": "1.0"}, "lr-SGD") is None
    assert adaptive({"lr": "1.0", "optimizer": "SGD"}, "lr-AdamW") is None
    assert adaptive({"lr": "1.0"}, "learning_rate") is None


def test_a_loss_held_above_its_first_point_early_is_a_spike_of_the_rate():
    """x-transformers at lr 0.1 (a typo for 1e-3), clipped at 0.5: 5.74 at batch 0, then 4.74,
    5.21, 7.04, 8.45, 9.27, 8.18, 6.76, then it learns to a poor 2.6.  No point reaches 2x the
    untrained loss, but three in a row stay 1.4x above it: no batch's doing.  A healthy
    start's one noisy point at 1.3x its first is no spike."""
    rng = np.random.default_rng(3)
    it = np.arange(250)
    healthy = 0.35 + 5.4 * np.exp(-it / 40) + 0.04 * rng.standard_normal(250)
    healthy[2] = 1.3 * healthy[0]
    assert "loss_spike" not in kinds({"training loss": (it, healthy)})
    thrown = 2.6 + 1.5 * np.exp(-it / 15) + 0.1 * rng.standard_normal(250)
    thrown[:8] = [5.74, 4.74, 5.21, 7.04, 8.45, 9.27, 8.18, 6.76]
    found = detect({"training loss": (it, thrown)}, {"status": "FINISHED"}, "")
    assert [(f.kind, f.step, f.context) for f in found] == [("loss_spike", 6, ("untrained",))]
    v, _ = diagnose(found, {}, "", SC.playbook, aliases=SC.metrics)
    assert v is not None and v.cause == "lr_too_high"


def test_a_label_outside_the_classes_after_training_is_bad_data():
    """nnU-Net's cross-entropy meets an annotator's stray label 3 in a 3-class dataset in its
    ninth epoch: a rare sample's label is wrong.  The same error at the first batch is a head
    too small for the classes (a config bug), and another error after training is code."""
    log = "Traceback (most recent call last):\n  ...\nIndexError: Target 3 is out of bounds.\n"
    late = detect(
        {"train_losses": (np.arange(9), np.linspace(0.65, -0.27, 9))}, {"status": "FAILED"}, log
    )
    assert [f.context for f in late if f.kind == "crash"] == [("after_training",)]
    d, _ = diagnose(late, {}, log, SC.playbook)
    assert d.cause == "bad_data"
    for other in (log.replace("Target 3 is out of bounds.", "index out of range in self"), ""):
        d, _ = diagnose(late, {}, other, SC.playbook)
        assert d.cause == "code_error", other
    early = detect({"train/loss": (np.arange(1), np.array([2.05]))}, {"status": "FAILED"}, log)
    d, _ = diagnose(early, {}, log, SC.playbook)
    assert d.cause == "code_error"


def test_a_crash_in_the_sample_reader_after_training_is_bad_data():
    """YOLOX merges a second annotation delivery at epoch 9 whose category ids count from 1:
    the loader that read eight epochs raises in ``load_anno``.  Raised there at the first
    batch, the loader itself is wrong (code); raised after training in a checkpoint writer,
    the code is."""

    def log(func: str, err: str) -> str:
        return (
            "Traceback (most recent call last):\n"
            '  File "train.py", line 435, in <module>\n    main()\n'
            f'  File "train.py", line 149, in {func}\n    x = f()\n{err}\n'
        )

    reader = log("load_anno", "ValueError: 3 is not in list")
    late = detect(
        {"train/total_loss": (np.arange(24), np.linspace(10, 5, 24))}, {"status": "FAILED"}, reader
    )
    assert [f.context for f in late if f.kind == "crash"] == [("after_training",)]
    d, _ = diagnose(late, {}, reader, SC.playbook)
    assert d.cause == "bad_data"
    assert any("load_anno" in e for e in d.evidence)
    writer = log("save_best", "TypeError: Object of type float32 is not JSON serializable")
    assert diagnose(late, {}, writer, SC.playbook)[0].cause == "code_error"
    early = detect(
        {"train/total_loss": (np.arange(1), np.array([10.0]))}, {"status": "FAILED"}, reader
    )
    assert diagnose(early, {}, reader, SC.playbook)[0].cause == "code_error"


def test_a_loss_thrown_up_where_a_warm_up_peaks_then_stuck_was_overshot():
    """YOLOX at basic_lr_per_img 0.04 (lr 0.64 for 16 images): the loss sits at 7.0, climbs to
    11.7 as the three-epoch warm-up peaks (epoch 5 of 20) and stays stuck near 6.5 from then
    on: a rate too high, not one too low, though the rise comes after the run's first tenth."""
    ep = np.arange(1, 21)
    lr = np.where(ep <= 3, 0.64 * (ep / 3) ** 2, 0.64 * (0.5 + 0.5 * np.cos(np.pi * (ep - 3) / 17)))
    loss = np.array([6.97, 6.96, 7.75, 8.84, 11.67, 7.60, 7.08, 6.71, 6.39, 6.42,
                     6.57, 6.28, 6.23, 6.23, 6.49, 6.20, 8.90, 7.37, 6.41, 6.45])  # fmt: skip
    # (epochs 17-20: the no-aug epochs add the L1 loss)
    found = detect(
        {"train/total_loss": (ep, loss), "train/lr": (ep, lr)}, {"status": "FINISHED"}, ""
    )
    (plateau,) = [f for f in found if f.kind == "plateau"]
    assert plateau.after == ("divergence",) and "an overshoot" in plateau.evidence
    assert diagnose(found, {}, "", SC.playbook, aliases=SC.metrics)[0].cause == "lr_too_high"
    # no warm-up logged: the rise at the fifth point is past the early window, no overshoot
    found = detect({"train/total_loss": (ep, loss)}, {"status": "FINISHED"}, "")
    assert [f.after for f in found if f.kind == "plateau"] == [()]


def test_a_configured_rate_the_logged_one_never_nears_is_a_schedule_multiplier():
    """OpenNMT's noam schedule: ``learning_rate`` 0.5 is a multiplier, the logged rate peaks at
    0.006.  A late rise at that rate is the data's (a shard of binary bytes), not an Adam rate
    of 0.5; judged by the configured number, the rate would win.  A configured rate the log
    reaches stays as it is."""
    from workbench.doctor.core import verdict
    from workbench.doctor.series import Series, stepped_params

    step = np.arange(10, 410, 10)
    rate = 0.5 * 64**-0.5 * np.minimum(step**-0.5, step * 100**-1.5)
    xent = np.array([5.04, 4.73, 3.94, 2.99, 2.82, 2.92, 2.62, 2.37, 2.31, 2.23, 2.21, 2.16,
                     2.03, 2.33, 2.49, 2.50, 2.25, 2.36, 2.37, 1.85, 1.46, 0.94, 1.88, 1.90,
                     2.44, 2.24, 2.16, 2.34, 2.33, 2.53, 2.34, 2.23, 2.34, 2.33, 2.29, 2.46,
                     2.38, 2.17, 2.15, 2.08])  # fmt: skip
    params = {"optim": "adam", "adam_beta2": "0.998", "learning_rate": "0.5"}
    hist = {"progress/xent": (step, xent), "progress/lr": (step, rate)}
    found = detect(hist, {"status": "FINISHED", "params": params}, "")
    assert any(f.kind == "divergence" and "late" in f.context for f in found)
    lr = Series("progress/lr", step, rate, np.zeros(len(step), dtype=np.int64))
    assert float(stepped_params(params, lr, SC.metrics)["learning_rate"]) == float(rate.max())
    v = verdict("r", found, params, "", SC, "FINISHED", lr=lr)
    assert v.diagnosis.cause == "bad_data"
    assert verdict("r", found, params, "", SC, "FINISHED").diagnosis.cause == "lr_too_high"
    reached = {**params, "learning_rate": "0.006"}
    assert stepped_params(reached, lr, SC.metrics) == reached


def test_a_cost_learned_down_and_thrown_back_is_a_divergence():
    """rl_games at a fixed learning rate 0.03 (3e-4 typed 3e-2): ``rewards/step`` (a cost,
    negative) learns from -42 to -3.6, then the policy is thrown out and ends at -7 to -8.
    The PPO actor loss (``losses/a_loss``) is no measure of progress: the return is.  A
    healthy twin ends near its best; a cost that got worse while exploring early is none."""
    rng = np.random.default_rng(6)
    frame = np.arange(512, 82432, 512)
    learned = -3.6 - 40 * np.exp(-frame / 5000)
    thrown = np.where(frame < 33000, learned, -3.6 - 4.0 * (1 - np.exp(-(frame - 33000) / 4000)))
    thrown = thrown * (1 + 0.04 * rng.standard_normal(len(frame)))
    a_loss = 0.05 * rng.standard_normal(len(frame))
    hist = {"rewards/step": (frame, thrown), "losses/a_loss": (frame, a_loss)}
    found = detect(hist, {"status": "FINISHED"}, "")
    assert [(f.kind, f.metric) for f in found] == [("divergence", "rewards/step")]
    assert "thrown back" in found[0].evidence
    assert diagnose(found, {}, "", SC.playbook, aliases=SC.metrics)[0].cause == "lr_too_high"
    healthy = learned * (1 + 0.04 * rng.standard_normal(len(frame)))
    healthy[:3] = [-0.4, -30.0, -66.0]  # early games that reached the goal, then exploration
    assert not kinds({"rewards/step": (frame, healthy), "losses/a_loss": (frame, a_loss)})


def test_a_rate_whose_time_per_unit_grows_all_run_is_a_growing_cost():
    """icefall with a resumable sampler that rewrites its whole state after every batch:
    train/frames_per_sec (a rate, now read as throughput) 7.8-14k over the first 51 batches,
    then 2.5-4.8k, 1.8-3.0k at the end.  Its time per frame grows within each half of the run,
    as a step time that a cost grows does."""
    rng = np.random.default_rng(8)
    step = np.arange(1, 360, 10)
    fps = 12000 / (1 + step / 60) * (1 + 0.15 * rng.standard_normal(len(step)))
    loss = 0.07 + 2.9 * np.exp(-step / 60)
    found = detect(
        {"train/current_ctc_loss": (step, loss), "train/frames_per_sec": (step, fps)},
        {"status": "FINISHED"},
        "",
    )
    assert [(f.kind, f.metric, f.context) for f in found] == [
        ("throughput_drop", "train/frames_per_sec", ("growing",))
    ]
    assert "its time per unit" in found[0].evidence
    steady = 12000 * (1 + 0.15 * rng.standard_normal(len(step)))
    assert not kinds(
        {"train/current_ctc_loss": (step, loss), "train/frames_per_sec": (step, steady)}
    )


def test_a_stuck_batch_loss_that_ends_up_by_its_own_scatter_is_no_overshoot():
    """sentence-transformers at 5e-7 (5e-3 typed 5e-7): the loss of single batches scatters
    2.75-3.15 all run and its last fifth sits 7 % above its first point, by chance; its eval
    loss is 2.858 at every evaluation: the weights did not move.  A rate too low, not an
    overshoot; with an eval loss that moves, the same end is one."""
    step = np.arange(20, 760, 20)
    loss = np.array([2.754, 2.862, 2.948, 2.899, 2.908, 3.111, 3.03, 2.959, 3.034, 2.799,
                     3.066, 3.0, 2.953, 2.908, 2.948, 3.022, 2.981, 2.855, 2.915, 2.941,
                     2.937, 2.875, 3.141, 3.107, 2.891, 2.882, 2.943, 3.151, 3.056, 2.988,
                     2.887, 3.072, 2.989, 2.806, 3.114, 2.908, 2.959])  # fmt: skip
    ev = (np.arange(100, 800, 100), np.full(7, 2.858))
    found = detect({"loss": (step, loss), "eval_loss": ev}, {"status": "FINISHED"}, "")
    (plateau,) = [f for f in found if f.kind == "plateau"]
    assert plateau.after == ()
    assert diagnose(found, {}, "", SC.playbook, aliases=SC.metrics)[0].cause == "lr_too_low"
    moving = (ev[0], np.array([2.86, 2.95, 2.90, 3.02, 2.97, 3.05, 3.01]))
    found = detect({"loss": (step, loss), "eval_loss": moving}, {"status": "FINISHED"}, "")
    assert [f.after for f in found if f.kind == "plateau"] == [("divergence",)]


def test_a_first_point_thousands_of_times_the_level_after_it_was_thrown():
    """Ray Tune's trainable with Adam at 0.5: loss 1.1e5 at iteration 1, then 0.74-1.2 with
    spikes that come straight back (60 at 11, 10.7 at 31).  No untrained model sits 1e5x
    above where it then holds: the rate threw it, and the later spikes are the rate's too.  A
    run that learns its tiny set by heart gains 400x over its first points, not 1000x at once."""
    it = np.arange(1, 41)
    rng = np.random.default_rng(9)
    loss = 0.95 + 0.12 * rng.standard_normal(40)
    loss[0], loss[10], loss[30] = 1.085e5, 60.3, 10.7
    found = detect({"loss": (it, loss)}, {"status": "FINISHED"}, "")
    spikes = [f for f in found if f.kind == "loss_spike"]
    assert spikes and spikes[0].context == ("untrained",) and spikes[0].step == 16
    assert "the first updates threw the weights" in spikes[0].evidence
    assert diagnose(found, {}, "", SC.playbook, aliases=SC.metrics)[0].cause == "lr_too_high"
    by_heart = 1.78 * np.exp(-it / 2.0) + 0.004
    assert "loss_spike" not in kinds({"loss": (it, by_heart)})


def test_an_average_return_under_any_prefix_is_the_measure_of_progress():
    """Sample Factory logs policy_stats/avg_reward (with _min and _max beside it) and the PPO
    loss train/loss, which jumps as the returns grow: the return is judged, not the loss."""
    step = np.arange(4096, 86016, 5120)
    ret = np.minimum(300, 30 + 20 * np.arange(len(step)))
    loss = 0.4 * np.exp(-np.arange(len(step)) / 2) + 0.01
    loss[12] = 0.19  # a PPO loss jump as the value targets move
    hist = {"policy_stats/avg_reward": (step, ret), "policy_stats/avg_reward_max": (step, ret + 80.0),
            "train/loss": (step, loss)}  # fmt: skip
    assert not kinds(hist)
    from workbench.doctor.series import resolve_roles

    roles = resolve_roles({k: len(v[0]) for k, v in hist.items()}, SC.metrics)
    assert roles["reward"] == "policy_stats/avg_reward"
    assert resolve_roles({"eval/avg_reward": 5}, SC.metrics).get("reward") is None


def test_an_averaged_training_return_is_judged_from_as_few_points_as_a_test_return():
    """Sample Factory at learning_rate 1e-6 writes ten summaries: policy_stats/avg_reward (a
    mean over the last episodes) 20.6-23.5 at every one, chance for its task.  An average is
    as steady as a test return, so ten points judge it; a single episode's return is not."""
    step = np.arange(10240, 92160, 8192)
    stuck = np.array([21.51, 23.46, 21.24, 20.58, 21.44, 21.68, 21.45, 23.46, 20.83, 22.52])
    loss = np.linspace(0.67, 0.57, 10)
    found = detect(
        {"policy_stats/avg_reward": (step, stuck), "train/loss": (step, loss)},
        {"status": "FINISHED"},
        "",
    )
    assert [(f.kind, f.metric) for f in found] == [("plateau", "policy_stats/avg_reward")]
    assert diagnose(found, {}, "", SC.playbook, aliases=SC.metrics)[0].cause == "lr_too_low"
    assert not kinds({"episode_return": (step, stuck), "train/loss": (step, loss)})


def test_a_smooth_eval_that_drifts_up_a_few_per_cent_after_its_best_is_no_overfitting():
    """LightGBM with 63 leaves (its 176 rounds): valid-binary_logloss bottoms at
    0.209 and drifts to 0.216 (3 %) by the last round while the train loss keeps falling; a
    boosted tree's eval is smooth, so that is 30 noise units, but it costs next to nothing.
    The same drift to 12 % above the best is overfitting."""
    train = np.array(
        [
        0.5284, 0.4911, 0.4597, 0.4327, 0.4073, 0.3849, 0.3642, 0.3459, 0.3296, 0.3138, 0.299,
        0.2864, 0.2743, 0.2633, 0.2526, 0.2431, 0.2342, 0.2259, 0.2174, 0.2092, 0.2022, 0.1961,
        0.1898, 0.1838, 0.1774, 0.1721, 0.1664, 0.1613, 0.1563, 0.1514, 0.1469, 0.1425, 0.1385,
        0.1342, 0.1306, 0.1267, 0.1234, 0.1195, 0.1162, 0.1129, 0.1103, 0.1072, 0.1044, 0.1014,
        0.0989, 0.0963, 0.0941, 0.0919, 0.0897, 0.0878, 0.0856, 0.0839, 0.0817, 0.0798, 0.0781,
        0.0765, 0.0747, 0.0731, 0.0712, 0.0696, 0.0683, 0.067, 0.0656, 0.064, 0.0626, 0.0612,
        0.0597, 0.0584, 0.057, 0.0558, 0.0545, 0.0533, 0.0522, 0.0512, 0.0504, 0.0492, 0.048,
        0.047, 0.046, 0.0451, 0.0442, 0.0435, 0.0427, 0.0419, 0.0411, 0.0403, 0.0396, 0.0389,
        0.0381, 0.0374, 0.0367, 0.036, 0.0353, 0.0346, 0.0339, 0.0332, 0.0325, 0.0319, 0.0313,
        0.0307, 0.0302, 0.0297, 0.0292, 0.0287, 0.0282, 0.0278, 0.0273, 0.0269, 0.0264, 0.026,
        0.0256, 0.0252, 0.0247, 0.0243, 0.0239, 0.0235, 0.0232, 0.0228, 0.0225, 0.0221, 0.0217,
        0.0214, 0.0211, 0.0207, 0.0204, 0.02, 0.0197, 0.0194, 0.0191, 0.0188, 0.0185, 0.0183,
        0.0181, 0.0178, 0.0176, 0.0174, 0.0172, 0.017, 0.0167, 0.0165, 0.0163, 0.0161, 0.0159,
        0.0157, 0.0155, 0.0153, 0.0151, 0.0149, 0.0148, 0.0146, 0.0144, 0.0141, 0.014, 0.0138,
        0.0137, 0.0135, 0.0133, 0.0132, 0.0131, 0.0129, 0.0127, 0.0126, 0.0125, 0.0123, 0.0122,
        0.0121, 0.0119, 0.0118, 0.0117, 0.0115, 0.0114, 0.0113, 0.0112, 0.0111, 0.0109, 0.0108,
        ]
    )  # fmt: skip
    valid = np.array(
        [
        0.5196, 0.4877, 0.4611, 0.4401, 0.4179, 0.3987, 0.3826, 0.3676, 0.3539, 0.3433, 0.3324,
        0.3233, 0.3137, 0.3054, 0.2968, 0.2912, 0.2848, 0.2792, 0.2738, 0.2689, 0.2652, 0.2622,
        0.2578, 0.2556, 0.2524, 0.2491, 0.2457, 0.2441, 0.2412, 0.2391, 0.2376, 0.2352, 0.2334,
        0.2317, 0.23, 0.2293, 0.2287, 0.2269, 0.226, 0.2247, 0.2242, 0.2235, 0.2231, 0.2216,
        0.2214, 0.221, 0.2215, 0.2207, 0.2202, 0.2204, 0.2189, 0.2199, 0.2194, 0.2189, 0.2187,
        0.2184, 0.2178, 0.2172, 0.2167, 0.2159, 0.2161, 0.2165, 0.2162, 0.2155, 0.2156, 0.215,
        0.2142, 0.2135, 0.213, 0.2126, 0.2126, 0.2129, 0.213, 0.2134, 0.2137, 0.2131, 0.2128,
        0.2127, 0.2123, 0.2123, 0.2126, 0.2132, 0.2131, 0.2128, 0.2127, 0.2126, 0.2129, 0.2126,
        0.212, 0.2115, 0.2114, 0.2114, 0.2113, 0.211, 0.2108, 0.2104, 0.2097, 0.2098, 0.2096,
        0.2098, 0.2098, 0.2099, 0.2102, 0.2106, 0.2106, 0.2107, 0.2103, 0.2102, 0.2102, 0.2102,
        0.2099, 0.2098, 0.2098, 0.2093, 0.2094, 0.2092, 0.209, 0.209, 0.2091, 0.2094, 0.2094,
        0.2097, 0.2098, 0.2095, 0.2093, 0.2089, 0.2089, 0.2091, 0.2094, 0.2095, 0.209, 0.2094,
        0.2095, 0.2097, 0.21, 0.2102, 0.2101, 0.21, 0.2102, 0.2101, 0.2103, 0.2104, 0.2106,
        0.2108, 0.2108, 0.211, 0.2113, 0.2115, 0.2119, 0.212, 0.2121, 0.2121, 0.2124, 0.2126,
        0.2126, 0.2129, 0.2129, 0.2132, 0.2135, 0.2135, 0.2136, 0.2137, 0.2138, 0.2139, 0.214,
        0.2143, 0.2145, 0.2145, 0.2148, 0.2148, 0.2149, 0.2149, 0.2152, 0.2155, 0.2156, 0.216,
        ]
    )  # fmt: skip
    rounds = np.arange(len(train))
    hist = {"train-binary_logloss": (rounds, train), "valid-binary_logloss": (rounds, valid)}
    assert "overfitting" not in kinds(hist)
    best = int(np.argmin(valid))
    steep = valid.copy()
    steep[best + 1 :] = valid[best] * (
        1 + 0.12 * np.arange(1, len(valid) - best) / (len(valid) - best - 1)
    )
    hist["valid-binary_logloss"] = (rounds, steep)
    assert "overfitting" in kinds(hist)


def test_a_bare_loss_under_a_prefix_is_the_total_beside_its_terms():
    """d3rlpy's CQL logs metrics/loss (the total) beside metrics/td_loss and
    metrics/conservative_loss, all once an epoch: the total is the run's loss; a term named
    with an underscore (conservative_loss) is not a bare loss, nor is an eval's."""
    from workbench.doctor.series import resolve_roles

    names = {"metrics/conservative_loss": 20, "metrics/loss": 20, "metrics/td_loss": 20}
    assert resolve_roles(names, SC.metrics)["train_loss"] == "metrics/loss"
    assert (
        resolve_roles({"eval/loss": 5, "metrics/td_loss": 5}, SC.metrics)["train_loss"]
        == "metrics/td_loss"
    )


def test_steps_per_second_is_a_throughput():
    """PufferLib's 0verview/SPS and CleanRL's charts/SPS: agent steps per second."""
    from workbench.doctor.series import resolve_roles

    for name in ("0verview/SPS", "charts/SPS"):
        assert resolve_roles({name: 50, "losses/value_loss": 50}, SC.metrics)["throughput"] == name


def test_an_evolution_strategy_and_held_out_errors_have_their_roles():
    """evosax's ESLog and EvoTorch's status name no loss: the population's mean fitness
    (log_gen_mean, mean_eval) and its best (log_gen_1, pop_best_eval).  The two tell the sense
    together: a best below the mean is minimised (the mean is the run's loss), above it
    maximised (a return); a mean alone has no known sense.  An error on held-out data
    (test/mse, Chemprop's validation_rmse, EvoTorch's center_val_mse) is the eval loss where
    none is named; state/lrate is the rate."""
    from workbench.doctor.core import _population_sense
    from workbench.doctor.series import Series, resolve_roles

    es = {
        "log_top_1": 80,
        "log_top_mean": 80,
        "log_gen_1": 80,
        "log_gen_mean": 80,
        "log_gen_std": 80,
        "state/lrate": 80,
        "test/mse": 21,
    }
    roles = resolve_roles(es, SC.metrics)
    assert (roles["population_mean"], roles["population_best"]) == ("log_gen_mean", "log_gen_1")
    assert (roles["eval_loss"], roles["lr"]) == ("test/mse", "state/lrate")
    assert "train_loss" not in roles
    et = resolve_roles({"mean_eval": 9, "pop_best_eval": 9, "center_val_mse": 3}, SC.metrics)
    assert (et["population_mean"], et["population_best"], et["eval_loss"]) == (
        "mean_eval",
        "pop_best_eval",
        "center_val_mse",
    )
    cp = {"train_loss": 80, "validation_rmse": 20, "gradient_norm": 80, "param_norm": 80}
    assert resolve_roles(cp, SC.metrics)["eval_loss"] == "validation_rmse"

    it = np.arange(1, 401)
    mean = 0.6 * np.exp(-it / 80) + 0.02

    def s(name, v):
        return Series(name, it, v, 1000 * it)

    low, high = s("mean_eval", mean), s("pop_best_eval", 0.8 * mean)
    assert _population_sense({"population_mean": low, "population_best": high})["train_loss"] is low
    up = s("mean_eval", 1 - mean)
    best_up = s("pop_best_eval", 1.1 * (1 - mean))
    sense = _population_sense({"population_mean": up, "population_best": best_up})
    assert sense["reward"] is up and "train_loss" not in sense
    assert "train_loss" not in _population_sense({"population_mean": low})
    # a run that logs only the pair is judged (a verdict, not `no_data`); the mean alone is not
    from workbench.doctor.core import unread_losses

    pair = {"mean_eval": low, "pop_best_eval": high}
    assert unread_losses(pair, SC.metrics) == ""
    assert unread_losses({"mean_eval": low}, SC.metrics) != ""
    # EvoTorch's PGPE at a centre rate of 2.0: the mean thrown from 0.62 to 35, never back
    thrown = mean.copy()
    thrown[1:] = 3.0 + 30.0 * np.exp(-np.arange(399) / 20)
    hist = {"mean_eval": (it, thrown), "pop_best_eval": (it, 0.5 * thrown)}
    assert "divergence" in kinds(hist)
    assert not kinds({"mean_eval": (it, mean), "pop_best_eval": (it, 0.8 * mean)})


def test_epochs_timed_by_start_and_end_stamps_show_a_slow_reader():
    """nnU-Net logs each epoch's start and end as Unix timestamps, no step time: an epoch's
    duration is end minus start.  A reader that decompresses every case from epoch 10 on
    doubles it; a healthy run's epochs wander by a tenth or so."""
    rng = np.random.default_rng(10)
    ep = np.arange(20)
    dur = 0.8 * (1 + 0.06 * rng.standard_normal(20))
    slow = dur.copy()
    slow[10:] *= 1.95
    loss = np.linspace(0.65, -0.75, 20)
    for d, want in ((dur, set()), (slow, {"throughput_drop"})):
        start = 1.797e9 + np.concatenate([[0.0], np.cumsum(d + 0.3)[:-1]])  # + validation
        m = {
            "train_losses": loss,
            "epoch_start_timestamps": start,
            "epoch_end_timestamps": start + d,
        }
        assert kinds(m) == want
    # the end stamps alone: their spacing is the time per epoch (validation included)
    dur[11:] *= 1.95  # (the spacing's first point is the second stamp's)
    end = 1.797e9 + np.cumsum(dur + 0.05)
    found = detect(
        {"train_losses": (ep, loss), "epoch_end_timestamps": (ep, end)}, {"status": "FINISHED"}, ""
    )
    assert [f.metric for f in found if f.kind == "throughput_drop"] == ["epoch_end_timestamps"]


def test_an_eval_thrown_off_from_its_first_point_confirms_the_divergence():
    """SGD at 5.0: the first epoch's validation loss is 6e4 (a 16-class problem, chance 2.77),
    then falls while the training loss climbs from 14 to 114 and never comes back below 16.
    An eval loss still falling 25x between its two evals before the rise had no level to
    hold: it agrees where it sits above the bar the training loss crossed."""
    ep = np.arange(1, 16)
    train = np.array(
        [13.8, 31.5, 47.0, 45.0, 56.4, 79.6, 114, 86.8, 63.1, 38.3, 27.8, 29.8, 20.7, 18.4, 17.0]
    )
    val = np.array(
        [6.2e4, 2502, 2735, 55.1, 53.8, 37.2, 45.9, 58.6, 19.8, 2259, 14.0, 19.5, 292, 16.8, 16.75]
    )
    assert "divergence" in kinds({"loss/train": (ep, train), "loss/valid": (ep, val)})
    # an eval at the training loss's level that holds it still vetoes a rise of the train loss
    held = np.full(15, 13.0)
    assert "divergence" not in kinds({"loss/train": (ep, train), "loss/valid": (ep, held)})


def test_a_reinforcement_learner_is_judged_by_its_return_not_its_loss():
    """PPO's `train/loss` (the last minibatch's, value loss included) grows with the returns
    it learns to predict and jumps from rollout to rollout: with an episode return logged, the
    loss says nothing of progress.  A return that rises is healthy; one that stays where a
    random policy is (CartPole ~20) is a plateau, whatever the loss does."""
    rng = np.random.default_rng(11)
    steps = np.arange(2048, 2048 * 60, 2048)
    n = len(steps)
    loss = np.linspace(0.5, 40, n) * np.exp(0.8 * rng.standard_normal(n))
    rising = 20 + 400 * (1 - np.exp(-np.arange(n) / 15)) + 5 * rng.standard_normal(n)
    hist = {"train/loss": (steps, loss)}
    assert {"divergence"} <= {f.kind for f in detect(hist, {"status": "FINISHED"}, "")}
    assert kinds({"train/loss": (steps, loss), "rollout/ep_rew_mean": (steps, rising)}) == set()
    flat = 21 + rng.standard_normal(n)
    found = detect(
        {"train/loss": (steps, loss), "rollout/ep_rew_mean": (steps, flat)},
        {"status": "FINISHED"},
        "",
    )
    assert [f.metric for f in found] == ["rollout/ep_rew_mean"]
    # (the cause reads the loss: one that climbs 80x under a flat return overshoots, see
    # test_a_return_judged_from_the_learners_first_update; one that stays is a rate too low)
    still = 0.5 * np.exp(0.8 * rng.standard_normal(n))
    found = detect(
        {"train/loss": (steps, still), "rollout/ep_rew_mean": (steps, flat)},
        {"status": "FINISHED"},
        "",
    )
    d, _ = diagnose(found, {}, "", SC.playbook)
    assert d.cause == "lr_too_low"
    # CleanRL's and RLlib's names for the return play the role as well
    from workbench.doctor.series import resolve_roles

    for name in ("charts/episodic_return", "episode_reward_mean"):
        assert resolve_roles({name: 50}, SC.metrics) == {"reward": name}


def test_nan_from_the_first_batches_without_half_precision_is_the_data():
    """torchvision's classification reference on scans of which three are blank: the team's
    per-image standardisation divides by a zero deviation, so the loss is finite once (step 0)
    and NaN from then on, the eval loss NaN from its first epoch.  Nothing was "fine, then
    overflowed", nothing rose first: the inputs are not finite.  The same NaN in a float16
    model is its range.  NaN in one go after a finite stretch is the data as well where
    nothing runs in half precision, an overflow where something does."""
    steps = np.arange(0, 450, 5)
    loss = np.full(len(steps), np.nan)
    loss[0] = 2.41
    hist = {"loss": (steps, loss), "test_loss": (np.arange(10) * 45, np.full(10, np.nan))}
    found = detect(hist, {"status": "FINISHED"}, "")
    assert {f.context for f in found if f.kind == "nan_inf"} == {("from_start",)}
    d, _ = diagnose(found, {"lr": "0.05"}, "", SC.playbook, aliases=SC.metrics)
    assert d.cause == "bad_data"
    d, _ = diagnose(found, {"dtype": "float16"}, "", SC.playbook, aliases=SC.metrics)
    assert d.cause == "fp_overflow"
    later = np.linspace(2.4, 0.9, len(steps))
    later[40:] = np.nan
    found = detect({"loss": (steps, later)}, {"status": "FINISHED"}, "")
    assert [f.context for f in found] == [("after_training",)]
    d, _ = diagnose(found, {}, "", SC.playbook, aliases=SC.metrics)
    assert d.cause == "bad_data"
    d, _ = diagnose(found, {"dtype": "float16"}, "", SC.playbook, aliases=SC.metrics)
    assert d.cause == "fp_overflow"


def test_a_reader_thread_that_died_leaves_a_hang_not_a_crash():
    """DLRM's reader thread dies on a truncated file ('BadZipFile') and the training loop
    waits on its queue for ever: the run is RUNNING, silent, with a traceback in its log.  The
    hang is the finding and the error its evidence; a run that is not silent is a crash."""
    steps = np.arange(20, 640, 20)
    t0 = 1_800_000_000_000
    ts = t0 + steps * 190
    hist = {"Train/Loss": (steps, np.linspace(0.65, 0.52, len(steps)), ts)}
    log = "Exception in thread reader:\nTraceback (most recent call last):\n  ...\nzipfile.BadZipFile: File is not a zip file\n"
    found = detect(hist, {"status": "RUNNING"}, log, now_ms=int(ts[-1]) + 240_000)
    assert [f.kind for f in found] == ["stalled"]
    assert "BadZipFile" in found[0].evidence
    d, _ = diagnose(found, {}, log, SC.playbook, aliases=SC.metrics, status="RUNNING")
    assert d.cause == "hung_process"
    found = detect(hist, {"status": "RUNNING"}, log, now_ms=int(ts[-1]) + 1_000)
    assert [f.kind for f in found] == ["crash"]


def test_a_return_judged_from_the_learners_first_update():
    """CleanRL's DQN explores for 2,000 steps (a random policy's returns) before its first
    update.  A run that crashed before any update logged no loss: it was never seen learning,
    so its flat exploring returns are no plateau.  A return that stays flat while the TD loss
    climbs many-fold is a rate that overshoots (Adam at 0.25); a flat one whose loss stays
    where it began is a rate too small to move the values."""
    rng = np.random.default_rng(12)
    ep_steps = np.arange(20, 2000, 28)
    explore = {"charts/episodic_return": (ep_steps, 22 + 8 * rng.standard_normal(len(ep_steps)))}
    assert kinds(explore) == set()
    steps = np.arange(2000, 60_000, 20)
    ret = 12 + 2 * rng.standard_normal(len(steps))
    upd = steps[::8]
    for loss, want in (
        (
            np.linspace(0.6, 4.5, len(upd)) * np.exp(0.3 * rng.standard_normal(len(upd))),
            "lr_too_high",
        ),
        (np.linspace(1.07, 0.98, len(upd)), "lr_too_low"),
    ):
        hist = {"charts/episodic_return": (steps, ret), "losses/td_loss": (upd, loss)}
        found = detect(hist, {"status": "FINISHED"}, "")
        assert [f.kind for f in found] == ["plateau"]
        d, _ = diagnose(found, {}, "", SC.playbook, aliases=SC.metrics)
        assert d.cause == want


def test_a_slow_loss_at_a_rate_that_moves_weights_is_no_plateau():
    """DLRM's click-through log-loss under SGD at 0.3-1.0 gains 5-6 % over a pass (the task
    leaves little room), its test loss 2-7 %: a slow learner.  The same curve at 1e-5 is a rate
    too small, and a loss that gains nothing is a plateau at any rate."""
    rng = np.random.default_rng(13)
    steps = np.arange(20, 940, 20)
    train = np.linspace(0.605, 0.572, len(steps)) + 0.008 * rng.standard_normal(len(steps))
    test = (np.array([200, 400, 600, 800, 936]), np.array([0.598, 0.590, 0.591, 0.580, 0.578]))
    hist = {"Train/Loss": (steps, train), "Test/Loss": test}
    for lr, want in (("1.0", set()), ("0.3", set()), ("1e-5", {"plateau"})):
        assert kinds(hist, params={"learning_rate": lr}) == want, lr
    flat = 0.59 + 0.008 * rng.standard_normal(len(steps))
    assert kinds({"Train/Loss": (steps, flat)}, params={"learning_rate": "1.0"}) == {"plateau"}
    # AdamW at 0.3 (LitGPT's 3e-3 typed a hundred times larger) is no rate that learns
    # slowly: Adam steps every weight by about the rate, and the loss sits where it was thrown
    params = {"learning_rate": "0.3", "optimizer": "AdamW"}
    found = detect(hist, {"status": "FINISHED", "params": params}, "")
    assert [f.kind for f in found] == ["plateau"]
    d, _ = diagnose(found, params, "", SC.playbook, aliases=SC.metrics)
    assert d is not None and d.cause == "lr_too_high"


def test_a_loss_with_a_large_floor_that_gains_a_few_per_cent_at_adams_rate_learned():
    """scvi-tools' ELBO (a count likelihood: ~1,250 of its 1,500 is the data's own entropy)
    falls 1,513 -> 1,250 over 120 epochs, 7 % between the first tenth and the last fifth of the
    run, its validation alike, at Adam's 1e-3: it learned.  The same few per cent at 1e-5 is a
    rate too small, and so is a 1e-3 that a warm-up longer than the run never reached.  Its first point is its highest: nothing rose, no overshoot."""
    rng = np.random.default_rng(5)
    ep = np.arange(120)
    train = 1240 + 110 * np.exp(-ep / 45) + 165 * np.exp(-ep / 2.5)
    train = train + 0.5 * rng.standard_normal(120)
    val = train + 5 + 2.0 * rng.standard_normal(120)
    hist = {"train_loss_epoch": (ep, train), "validation_loss": (ep, val)}
    assert kinds(hist, params={"lr": "0.001"}) == set()
    found = detect(hist, {"status": "FINISHED", "params": {"lr": "1e-05"}}, "")
    assert [(f.kind, f.after) for f in found] == [("plateau", ())]
    d, _ = diagnose(found, {"lr": "1e-05"}, "", SC.playbook, aliases=SC.metrics)
    assert d is not None and d.cause == "lr_too_low"
    # configured at 1e-3 with a warm-up longer than the run (LitGPT's lr_warmup_steps 200000):
    # the logged rate never got near it, and the rate it ran at is the one that counts
    warm = {**hist, "learning_rate": (ep, 1e-3 * (ep + 1) / 200_000)}
    assert kinds(warm, params={"lr": "0.001"}) == {"plateau"}


def test_dopamines_average_returns_are_the_runs_returns():
    """Dopamine's Runner logs Train/AverageReturns and Eval/AverageReturns beside the DQN's
    HuberLoss, which grows with the returns it learns to predict: the returns are the
    measure of progress, the critic's loss is not judged for it."""
    from workbench.doctor.series import resolve_roles

    names = ["HuberLoss", "Train/AverageReturns", "Eval/AverageReturns", "Train/NumEpisodes"]
    got = resolve_roles({n: 20 for n in names}, SC.metrics)
    assert got["reward"] == "Train/AverageReturns"
    assert got["eval_reward"] == "Eval/AverageReturns"


def test_an_online_learners_progressive_error_is_its_loss():
    """River's evaluate.progressive_val_score logs only MAE, RMSE (each sample scored before it
    is learned from) and a rolling MAE: that error is the run's loss.  A name that only has an
    error in it (val_MAE, train_MAE_step) is not matched by it."""
    from workbench.doctor.series import resolve_roles

    got = resolve_roles(
        {n: 23 for n in ["MAE", "RMSE", "rolling_MAE", "samples_per_second"]}, SC.metrics
    )
    assert got["train_loss"] == "MAE"
    got = resolve_roles(
        {n: 20 for n in ["train_loss_step", "train_MAE_step", "val_MAE"]}, SC.metrics
    )
    assert got["train_loss"] == "train_loss_step"


def test_a_detectors_total_loss_is_its_training_loss():
    """YOLOX logs train/total_loss beside its terms (train/cls_loss rises as the boxes get
    better: the IoU-aware target), Detectron2 total_loss beside loss_cls, loss_box_reg: the
    sum is the training loss, not the first term by name."""
    from workbench.doctor.series import resolve_roles

    yolox = ["train/cls_loss", "train/conf_loss", "train/iou_loss", "train/l1_loss"]
    got = resolve_roles({n: 20 for n in [*yolox, "train/total_loss", "train/lr"]}, SC.metrics)
    assert got["train_loss"] == "train/total_loss"
    d2 = ["loss_box_reg", "loss_cls", "total_loss", "validation_loss"]
    assert resolve_roles({n: 30 for n in d2}, SC.metrics)["train_loss"] == "total_loss"


def test_data_held_in_half_precision_that_goes_non_finite_at_once_overflowed():
    """A scvi pipeline stores the count matrix as float16 (`x_dtype`) to halve its memory; a
    cohort sequenced ten times deeper has cells whose library size overflows it: NaN from the
    first minibatch, as TRL's torch_dtype float16 weights.  A uint16 memmap is no precision."""
    from workbench.doctor.series import param_value

    assert param_value({"x_dtype": "float16"}, SC.metrics, "compute_precision") == "half"
    assert param_value({"torch_dtype": "float16"}, SC.metrics, "compute_precision") == "half"
    assert param_value({"memmap_dtype": "uint16"}, SC.metrics, "compute_precision") is None
    # Lightning computes in fp32 beside a sales table held in float16: the table overflows
    both = {"precision": "32", "sales_dtype": "float16"}
    assert param_value(both, SC.metrics, "compute_precision") == "half"
    assert (
        param_value({**both, "sales_dtype": "float32"}, SC.metrics, "compute_precision") == "full"
    )
    ep = np.arange(45)
    hist = {
        "train_loss_epoch": (ep, np.full(45, np.nan)),
        "validation_loss": (ep, np.full(45, np.nan)),
    }
    found = detect(hist, {"status": "FINISHED"}, "")
    assert {f.kind for f in found} == {"nan_inf"}
    for params, want in (
        ({"x_dtype": "float16"}, "fp_overflow"),
        ({"x_dtype": "float32"}, "bad_data"),
    ):
        d, _ = diagnose(found, params, "", SC.playbook, aliases=SC.metrics)
        assert d is not None and d.cause == want, params


def test_memorising_a_loss_with_a_large_floor_is_overfitting():
    """scvi-tools on a pilot cohort of 360 cells, 2 x 512 units, no dropout, 400 epochs: the
    loss falls 1,530 -> 1,044 (its floor is the counts' own entropy), the validation loss
    bottoms at 1,427 at epoch 73 and climbs to 1,532.  After the eval's best the train loss
    fell 13 % of its value but a third of all it fell: memorisation.  A train loss that
    barely moved over the run (a rate too low) memorised nothing, whatever its eval did."""
    ep = np.arange(1, 401)
    at = [1, 26, 54, 73, 101, 151, 201, 251, 301, 351, 400]
    train = np.interp(ep, at, [1530, 1297, 1237, 1205, 1169, 1129, 1103, 1083, 1070, 1056, 1044])
    val = np.interp(ep, at, [1532, 1469, 1431, 1427, 1437, 1462, 1497, 1511, 1513, 1518, 1532])
    hist = {"train_loss_epoch": (ep, train), "validation_loss": (ep, val)}
    found = detect(hist, {"status": "FINISHED"}, "")
    assert [f.kind for f in found] == ["overfitting"]
    old = {**SC.detectors, "overfitting": {**SC.detectors["overfitting"], "train_share": None}}
    assert detect(hist, {"status": "FINISHED"}, "", old) == []
    slow = 2.30 - 0.06 * ep / 400
    kinds_slow = kinds({"train_loss_epoch": (ep, slow), "validation_loss": (ep, val / 620)})
    assert "overfitting" not in kinds_slow


def test_a_train_loss_that_creeps_down_while_the_eval_gets_worse_is_the_labels():
    """TRL's DPO on preference pairs half of which a vendor exported the other way round: the
    train loss creeps from ln 2 to 0.64 (8 %, memorising pairs), the eval loss ends worse than
    it began (0.69 -> 0.71).  What it learns does not carry over: the data.  A rate too low
    moves both losses a little, alike."""
    rng = np.random.default_rng(15)
    steps = np.arange(10, 570, 10)
    train = np.linspace(0.70, 0.63, len(steps)) + 0.01 * rng.standard_normal(len(steps))
    ev_steps = np.arange(50, 600, 50)
    for ev, want in (
        (np.linspace(0.690, 0.710, 11), "bad_data"),
        (np.linspace(0.690, 0.668, 11), "lr_too_low"),
    ):
        hist = {"loss": (steps, train), "eval_loss": (ev_steps, ev)}
        found = detect(hist, {"status": "FINISHED"}, "")
        assert [f.kind for f in found] == ["plateau"]
        d, _ = diagnose(found, {"learning_rate": "5e-4"}, "", SC.playbook, aliases=SC.metrics)
        assert d.cause == want


def test_a_gan_is_judged_by_its_distance_from_the_data_not_its_losses():
    """StyleGAN's discriminator loss hovers near 1.2 and creeps up as the generator catches
    up (a contest, not an objective); its FID falls 45 -> 1.6: healthy.  A FID that barely
    moves is a plateau (a rate too small); one that jumps above where the untrained generator
    began and comes back is the rate throwing the model off (measured on a fixed sample set:
    no bad batch); one that ends above it diverged."""
    rng = np.random.default_rng(16)
    kimg = np.arange(0, 164, 4)
    d_loss = np.linspace(1.21, 1.29, len(kimg)) + 0.01 * rng.standard_normal(len(kimg))
    g_loss = np.linspace(1.1, 0.85, len(kimg)) + 0.03 * rng.standard_normal(len(kimg))
    snaps = np.arange(0, 180, 20)
    losses = {"Loss/D/loss": (kimg, d_loss), "Loss/G/loss": (kimg, g_loss)}
    assert "plateau" in kinds(losses)  # the losses alone read as stuck
    fid = 45 * np.exp(-snaps / 30) + 1.5
    assert kinds({**losses, "Metrics/fid50k_full": (snaps, fid)}) == set()
    for curve, want_kinds, want in (
        (np.linspace(45.2, 41.8, len(snaps)), {"plateau"}, "lr_too_low"),
        (np.array([55, 266, 10.5, 10.3, 14.3, 4.4, 15.1, 7.7, 8.3]), {"loss_spike"}, "lr_too_high"),
        (
            np.array([2.8e6, 3.7e9, 9e10, 4e12, 1e13, 9e13, 2e13, 5e12, 7e12]),
            {"divergence"},
            "lr_too_high",
        ),
    ):
        hist = {**losses, "Metrics/fid50k_full": (snaps, curve)}
        found = detect(hist, {"status": "FINISHED"}, "")
        assert {f.kind for f in found} >= want_kinds and all(
            f.metric == "Metrics/fid50k_full" for f in found
        ), curve
        d, _ = diagnose(found, {}, "", SC.playbook, aliases=SC.metrics)
        assert d.cause == want, curve


def test_a_rise_in_the_first_points_the_run_learned_out_of_is_no_divergence():
    """solo-learn's online linear probe on a SimSiam backbone that still moves fast: its loss
    rises 2.05 -> 4.2 over the first epochs, then falls to 0.9 (the val loss 1.3 -> 2.8 ->
    0.45) at about the rate it rose at.  Before a run has a level of its own, a rise it learns
    its way out of is the optimizer's first moves.  The same rise brought back only by a rate
    cut to a tenth, or one the loss never gets below its start from, is a divergence."""
    ep = np.arange(30)
    steps = 21 + 22 * ep
    loss = np.concatenate(
        [[2.05, 2.47, 3.1, 3.5, 4.2, 3.8, 3.2, 3.07, 3.19, 2.5], np.linspace(2.3, 0.9, 20)]
    )
    val = np.concatenate(
        [[1.33, 1.64, 0.92, 2.36, 2.79, 1.45, 1.3, 1.0, 1.88, 0.94], np.linspace(0.99, 0.45, 20)]
    )
    lr = np.linspace(0.125, 0.06, 30)
    base = {"train_class_loss_epoch": (steps, loss), "val_loss": (steps, val)}
    assert "divergence" not in kinds({**base, "lr-SGD": (steps, lr)})
    cut = np.where(ep < 9, 0.125, 0.0125)
    assert "divergence" in kinds({**base, "lr-SGD": (steps, cut)})
    # Levanter's AdamW at 3.0: the loss rose while the warm-up still climbed, and came back
    # only as the cosine brought the rate down again (at the onset's rate, past a peak 6x it)
    it = np.arange(120)
    lev = np.concatenate(
        [
            [4.7, 4.8],
            np.linspace(9.8, 60, 18),
            np.full(70, 40.0),
            np.linspace(30, 4.0, 10),
            np.full(20, 4.1),
        ]
    )
    warm = np.where(it < 20, 0.15 * (it + 1), 0.3 + 2.7 * (1 + np.cos(np.pi * (it - 20) / 100)) / 2)
    hist = {"train/loss": (it, lev), "optim/learning_rate": (it, warm)}
    assert "divergence" in kinds(hist)
    stays = loss.copy()
    stays[10:] = np.linspace(3.0, 2.1, 20)
    assert "divergence" in kinds(
        {"train_class_loss_epoch": (steps, stays), "val_loss": (steps, val + 2 * (ep >= 3))}
    )


def test_an_adaptive_rate_far_too_high_lands_the_first_step_on_a_plateau():
    """TRL's DPO under AdamW at 1.0 (typed for 1e-4 scale): the loss is 1.44 at the first log
    and 0.71-0.83 from then on.  At a sane rate a first point far above a flat rest is a run
    that learned at once; at an Adam-family rate that high it is where the thrown weights
    landed: stuck, the rate too high."""
    rng = np.random.default_rng(17)
    steps = np.arange(10, 570, 10)
    loss = 0.76 + 0.03 * rng.standard_normal(len(steps))
    loss[0] = 1.44
    hist = {"loss": (steps, loss)}
    params = {"optim": "adamw_torch"}
    assert kinds(hist, params={**params, "learning_rate": "0.0005"}) == set()
    found = detect(hist, {"status": "FINISHED", "params": {**params, "learning_rate": "1.0"}}, "")
    assert [f.kind for f in found] == ["plateau"]
    d, _ = diagnose(found, {**params, "learning_rate": "1.0"}, "", SC.playbook, aliases=SC.metrics)
    assert d.cause == "lr_too_high"


def test_a_rate_far_too_high_of_an_unknown_optimizer_lands_the_first_step_on_a_plateau():
    """PyTorch Tabular at learning_rate 5.0 (typed for 5e-3), its optimizer not logged: the
    loss is 1.22 at the first log and 0.64-0.75 (the constant prediction's) from then on.  At
    a sane rate that first point is a lesson learned at once; at 5 it is where the thrown
    weights landed.  (At 1.0 nothing says so: healthy runs train at 1.)"""
    rng = np.random.default_rng(5)
    steps = np.arange(10, 1510, 10)
    loss = 0.69 + 0.025 * rng.standard_normal(len(steps))
    loss[0] = 1.22
    hist = {"train_loss": (steps, loss)}
    assert kinds(hist, params={"learning_rate": "0.005"}) == set()
    assert kinds(hist, params={"learning_rate": "1.0"}) == set()
    found = detect(hist, {"status": "FINISHED", "params": {"learning_rate": "5.0"}}, "")
    (plateau,) = found
    assert plateau.kind == "plateau" and plateau.context == ("thrown",)
    assert "configured rate of 5" in plateau.evidence
    d, _ = diagnose(found, {"learning_rate": "5.0"}, "", SC.playbook, aliases=SC.metrics)
    assert d.cause == "lr_too_high"


def test_adam_known_by_its_beta2_and_a_rise_at_an_adam_rate_far_too_high_is_no_warmup():
    """nanoGPT logs beta1 and beta2 but no optimizer name (it is AdamW).  At learning_rate 1.0
    the warm-up throws the loss from 4.5 to 24 (chance is 5.1); the cosine decay lets it back
    to 3.1.  Without knowing the optimizer that reads as a warm-up transient; with Adam's
    second-moment decay logged, the rate is 3x Adam's working range: a divergence, the rate."""
    from workbench.doctor.series import adaptive_lr

    assert adaptive_lr({"learning_rate": "1.0", "beta2": "0.99"}, SC.metrics) == "1.0"
    assert (
        adaptive_lr({"learning_rate": "1.0", "optimizer": "sgd", "beta2": "0.99"}, SC.metrics)
        is None
    )
    assert adaptive_lr({"learning_rate": "1.0"}, SC.metrics) is None
    it = np.arange(0, 601, 25)
    loss = np.array(
        [4.99, 4.5, 5.27, 14.7, 18.4, 24.4, 19.3, 13.5, 7.57, 9.94, 4.87, 4.87, 3.4]
        + [3.88, 3.19, 3.15, 3.16, 3.14, 3.15, 3.13, 3.11, 3.09, 3.12, 3.06, 3.15]
    )
    val = loss + 0.05
    lr = np.where(
        it < 50, (it + 1) / 51, 1e-4 + (1 - 1e-4) * (1 + np.cos(np.pi * (it - 50) / 550)) / 2
    )
    hist = {"train/loss": (it, loss), "val/loss": (it, val), "lr": (it, lr)}
    params = {"learning_rate": "1.0", "beta1": "0.9", "weight_decay": "0.1"}
    assert "divergence" not in kinds(hist, params=params)
    params["beta2"] = "0.99"
    found = detect(hist, {"status": "FINISHED", "params": params}, "")
    assert [f.kind for f in found] == ["divergence"]
    d, _ = diagnose(found, params, "", SC.playbook, aliases=SC.metrics)
    assert d.cause == "lr_too_high"
    assert any("adaptive_lr" in e for e in d.evidence)


def test_a_schedule_that_ends_the_rate_early_stopped_the_training():
    """nanoGPT with lr_decay_iters 60 (a zero dropped from 600) and min_lr 0: the rate is 0
    from iter 75 of 600 and the loss sits at 3.1 from then on, after it had learned from 4.99.
    A cosine that reaches nothing only at the end, over a loss that converged, is healthy."""
    it = np.arange(0, 601, 25)
    rng = np.random.default_rng(5)
    flat = 3.12 + 0.02 * rng.standard_normal(22)
    loss = np.concatenate([[4.99, 3.75, 3.14], flat])
    dead = np.where(it <= 25, it / 25 * 1e-3, np.where(it <= 50, 1e-4, 0.0))
    found = detect(
        {"train/loss": (it, loss), "lr": (it, dead)}, {"status": "FINISHED", "params": {}}, ""
    )
    assert [(f.kind, f.step, f.context) for f in found] == [("plateau", 75, ("lr_dead",))]
    d, _ = diagnose(found, {}, "", SC.playbook, aliases=SC.metrics)
    assert d.cause == "lr_too_low"
    cosine = 1e-3 * (1 + np.cos(np.pi * it / 600)) / 2
    converged = np.concatenate([np.linspace(4.99, 3.2, 6), 3.1 + 0.02 * rng.standard_normal(19)])
    assert not kinds({"train/loss": (it, converged), "lr": (it, cosine)})
    # ReduceLROnPlateau cut a converged run's rate to 1 % at its middle: no stop, a finish
    cuts = np.where(it < 250, 1e-3, np.where(it < 300, 1e-4, 1e-5))
    assert not kinds({"train/loss": (it, converged), "lr": (it, cuts)})


def test_a_step_decay_stepped_per_batch_stopped_the_training_whatever_the_loss_did_before():
    """pytorch-metric-learning with a StepLR(step_size=5, gamma=0.5) meant per epoch but
    stepped per iteration: the rate is below 1 % of its peak from iteration 37 of 360.  The
    per-batch triplet loss had fallen in its first points and scatters by half its level, so
    whether it was still falling when the rate died is lost in the scatter; a rate dead for
    nine tenths of the run stopped it all the same (a rate too low, no throw)."""
    rng = np.random.default_rng(11)
    it = np.arange(1, 361)
    loss = 0.014 * np.exp(0.35 * rng.standard_normal(360))
    loss[:10] = np.linspace(0.047, 0.016, 10)
    lr = 1e-3 * 0.5 ** (it // 5)
    found = detect({"loss": (it, loss), "lr": (it, lr)}, {"status": "FINISHED", "params": {}}, "")
    assert [(f.kind, f.context) for f in found] == [("plateau", ("lr_dead",))]
    assert diagnose(found, {}, "", SC.playbook, aliases=SC.metrics)[0].cause == "lr_too_low"
    # the same loss at a constant rate: a run that learned at once, then scatters
    assert not kinds({"loss": (it, loss), "lr": (it, np.full(360, 1e-3))})


def test_a_utilization_that_falls_gradually_and_deep_is_a_slowdown():
    """nanoGPT's mfu is an average over the last iterations (and -100 until measured): a busy
    thread that takes ever more of each step makes it fall gradually to a third.  A rate of
    the hardware's use does not fall for longer sequences, so that counts; samples per second
    that fall the same way may be a curriculum's growing work, and do not."""
    it = np.arange(0, 601, 25)
    rng = np.random.default_rng(2)
    mfu = 0.0122 * (1 + 0.02 * rng.standard_normal(25))
    mfu[13:23] = [0.0098, 0.0083, 0.0069, 0.0064, 0.0055, 0.0053, 0.0044, 0.004, 0.0032, 0.0032]
    mfu[23:] = [0.0031, 0.0032]
    loss = np.linspace(5.0, 2.2, 25)
    samples = mfu / 0.0122 * 800
    mfu[0] = -100.0
    found = detect({"train/loss": (it, loss), "mfu": (it, mfu)}, {"status": "FINISHED"}, "")
    assert [f.kind for f in found] == ["throughput_drop"]
    assert diagnose(found, {}, "", SC.playbook, aliases=SC.metrics)[0].cause == "slow_io"
    assert not kinds({"train/loss": (it, loss), "samples_per_second": (it, samples)})


def test_a_held_out_score_that_falls_while_the_train_loss_does_is_overfitting():
    """RecBole logs no validation loss, only ranking scores (valid/mrr@10, higher is better).
    A 256-wide BPR without weight decay: MRR peaks at 0.30 at epoch 11 and falls to 0.20 while
    the train loss goes to 0.01.  A healthy run's score that settles 2 % under its best while
    early stopping waits out its patience is no overfitting."""
    ep = np.arange(120)
    mrr = np.concatenate([np.linspace(0.02, 0.299, 12), np.linspace(0.295, 0.203, 108)])
    train = 8.3 * np.exp(-ep / 12) + 0.013
    found = detect(
        {"train/train_loss": (ep, train), "valid/mrr_at_10": (ep, mrr)},
        {"status": "FINISHED"},
        "",
    )
    assert [(f.kind, f.metric) for f in found] == [("overfitting", "valid/mrr_at_10")]
    assert "peaked at 0.299" in found[0].evidence
    assert diagnose(found, {}, "", SC.playbook, aliases=SC.metrics)[0].cause == "overfit_capacity"
    ep = np.arange(54)
    settled = np.concatenate(
        [
            np.linspace(0.02, 0.652, 44),
            [0.645, 0.64, 0.646, 0.637, 0.641, 0.636, 0.64, 0.638, 0.636, 0.636],
        ]
    )
    train = 8.3 * np.exp(-ep / 20) + 1.2
    assert not kinds({"train/train_loss": (ep, train), "valid/hit_at_10": (ep, settled)})


def test_a_return_that_falls_below_the_untrained_policys_is_a_divergence():
    """RLlib PPO at lr 0.1 (typed for 1e-4): CartPole's return 20.5 at the first iteration (a
    random policy), 10.4 three iterations later (the policy collapsed onto one action), then
    a slow climb to 100.  A rate too small leaves a return where it was; only a step too
    large makes the policy worse than untrained.  A healthy return that dips as it climbs is
    not worse than that, and a negative one (a cost) is not judged so: a lander that learns
    to hover burns fuel before it learns to land."""
    steps = 4000 * np.arange(1, 41)
    r = np.concatenate([[20.5, 41.1, 23.7, 13.6, 10.4, 10.4, 11.4], np.linspace(28, 100, 33)])
    hist = {
        "episode_reward_mean": (steps, r),
        "info/learner/default_policy/learner_stats/total_loss": (steps, np.full(40, 5.0)),
    }
    found = detect(hist, {"status": "FINISHED", "params": {}}, "")
    assert [(f.kind, f.step) for f in found] == [("divergence", 20000)]
    assert diagnose(found, {}, "", SC.playbook, aliases=SC.metrics)[0].cause == "lr_too_high"
    rng = np.random.default_rng(1)
    healthy = np.linspace(21, 470, 40) * (1 + 0.1 * rng.standard_normal(40))
    healthy[5:8] = [60, 41, 70]  # a dip on the way up, above the start
    lander = np.concatenate([np.full(8, -180.0), np.full(8, -320.0), np.linspace(-250, 200, 24)])
    for x in (healthy, lander):
        assert not kinds(
            {
                "episode_reward_mean": (steps, x),
                "info/learner/default_policy/learner_stats/total_loss": (steps, np.full(40, 5.0)),
            }
        )


def test_an_eval_loss_never_better_than_untrained_is_labels_without_signal():
    """A loader that reorders the windows but not their labels: train loss at ln 6 for five
    epochs, then memorised to 0.33; the validation loss never gets below its first value
    (ln 6, the untrained model's) and rises from epoch 7.  A model too large for its data
    first generalises (its eval loss falls by half), then memorises: overfit_capacity."""
    ep = np.arange(1, 21)
    train = np.concatenate([np.linspace(1.796, 1.756, 5), np.linspace(1.70, 0.33, 15)])
    val = np.concatenate([[1.789, 1.783, 1.777, 1.806, 1.789, 1.802], np.linspace(1.87, 4.6, 14)])
    hist = {"train/loss": (ep, train), "val/loss": (ep, val)}
    found = detect(hist, {"status": "FINISHED"}, "")
    assert [(f.kind, f.context) for f in found] == [("overfitting", ("eval_never_better",))]
    assert diagnose(found, {}, "", SC.playbook, aliases=SC.metrics)[0].cause == "bad_data"
    learned = np.concatenate([np.linspace(1.78, 0.92, 6), np.linspace(1.0, 1.6, 14)])
    found = detect(
        {"train/loss": (ep, train), "val/loss": (ep, learned)}, {"status": "FINISHED"}, ""
    )
    assert [(f.kind, f.context) for f in found] == [("overfitting", ())]
    assert diagnose(found, {}, "", SC.playbook, aliases=SC.metrics)[0].cause == "overfit_capacity"
    # AllenNLP: a per-batch train loss by batch, the eval by epoch (other step axes).  80
    # examples a label and no dropout: the train loss falls from the first epoch, the eval
    # gains 7 % by epoch 3, then memorisation throws it up: overfit_capacity, not bad_data.
    ep40 = np.arange(40)
    batches = np.arange(10, 1210, 10)
    batch_loss = 1.77 * np.exp(-batches / 150) + 0.0005
    val40 = np.concatenate([[1.773, 1.693, 1.724, 1.648, 1.688], np.linspace(1.83, 3.5, 35)])
    found = detect(
        {"batch_loss": (batches, batch_loss), "validation_loss": (ep40, val40)},
        {"status": "FINISHED"},
        "",
    )
    assert [(f.kind, f.context) for f in found] == [("overfitting", ())]
    # a model that memorises at once: its eval rises from the first eval on
    flair_val = np.concatenate([[1.784, 1.862, 2.114, 2.441], np.linspace(2.98, 3.86, 16)])
    flair_train = np.concatenate([[1.809, 1.321, 0.778, 0.385], np.geomspace(0.2, 0.0007, 16)])
    found = detect(
        {"train/loss": (ep, flair_train), "val/loss": (ep, flair_val)}, {"status": "FINISHED"}, ""
    )
    assert [(f.kind, f.context) for f in found] == [("overfitting", ())]


def test_a_time_that_grows_through_the_run_is_a_slowdown_and_a_step_up_is_not():
    """An extension that rewrites its whole log at every iteration: the time per epoch grows
    from 0.55 s to 2.2 s, within each half of the run.  A data loader that rewrites a growing
    audit file: its wait grows 60x and ends far above the step's own time (which stays
    level).  Load from another process that starts mid-run is a step up, not a ramp; a
    curriculum's growing work levels off before the end; a data wait that grows but stays a
    small share of the step costs nothing."""
    ep = np.arange(1, 25)
    per_epoch = np.linspace(0.55, 2.2, 24) * (1 + 0.08 * np.sin(ep))
    clock = np.cumsum(per_epoch)
    loss = 1.6 * np.exp(-ep / 4) + 0.01
    found = detect(
        {"train/loss": (ep * 68, loss), "elapsed_time": (ep * 68, clock)},
        {"status": "FINISHED"},
        "",
    )
    assert [(f.kind, f.metric, f.context) for f in found] == [
        ("throughput_drop", "elapsed_time", ("growing",))
    ]
    assert diagnose(found, {}, "", SC.playbook, aliases=SC.metrics)[0].cause == "slow_io"
    step_up = np.cumsum(np.where(ep < 12, 0.6, 0.9))  # 1.5x: under the drop bar
    curriculum = np.cumsum(np.minimum(np.linspace(0.3, 2.4, 24), 1.6))
    for c in (step_up, curriculum):
        assert not kinds({"train/loss": (ep * 68, loss), "elapsed_time": (ep * 68, c)})
    it = np.arange(0, 220, 5)
    rng = np.random.default_rng(0)
    step_time = 0.04 * (1 + 0.1 * rng.standard_normal(len(it)))
    wait = np.linspace(0.01, 0.6, len(it)) * (1 + 0.2 * rng.standard_normal(len(it)))
    hist = {"loss": (it, 3 * np.exp(-it / 40) + 0.15), "step_time": (it, step_time)}
    found = detect({**hist, "loader_time": (it, wait)}, {"status": "FINISHED"}, "")
    assert [(f.kind, f.metric) for f in found] == [("throughput_drop", "loader_time")]
    assert not kinds({**hist, "loader_time": (it, wait / 100)})  # 6 ms of a 40 ms step


def test_a_held_out_score_that_never_rises_is_a_plateau():
    """A translation script logs BLEU (0-100) once an epoch and no validation loss.  With the
    whole Transformer frozen, only the embeddings train: the train loss falls 5.1 -> 2.7
    while BLEU stays at 0.03 (eval_flat: what it learns does not carry over).  At a rate 25x
    too high, the loss rises from its best after epoch 1 and BLEU ends below its start.  A
    healthy run's BLEU goes 0.2 -> 91; an accuracy that starts at 0.9 has no room to gain."""
    st = 44 * np.arange(1, 11)
    frozen_loss = np.array([5.13, 3.76, 3.39, 3.19, 3.03, 2.91, 2.81, 2.74, 2.68, 2.67])
    frozen_bleu = np.array(
        [0.0327, 0.0328, 0.0341, 0.0345, 0.0346, 0.0346, 0.0346, 0.0348, 0.0348, 0.0348]
    )
    found = detect(
        {"train_loss": (st, frozen_loss), "bleu": (st, frozen_bleu)}, {"status": "FINISHED"}, ""
    )
    assert [(f.kind, f.metric, f.context) for f in found] == [("plateau", "bleu", ("eval_flat",))]
    assert diagnose(found, {}, "", SC.playbook, aliases=SC.metrics)[0].cause == "bad_data"
    thrown_loss = np.array([3.72, 2.86, 3.28, 3.57, 3.42, 3.39, 3.37, 3.33, 3.33, 3.31])
    thrown_bleu = np.array([0.119, 0.033, 0.207, 0.036, 0.033, 0.030, 0.033, 0.033, 0.033, 0.033])
    found = detect(
        {"train_loss": (st, thrown_loss), "bleu": (st, thrown_bleu)}, {"status": "FINISHED"}, ""
    )
    assert [(f.kind, f.after) for f in found] == [("plateau", ("divergence",))]
    assert diagnose(found, {}, "", SC.playbook, aliases=SC.metrics)[0].cause == "lr_too_high"
    healthy_loss = np.array([4.34, 2.96, 1.99, 1.45, 1.12, 0.83, 0.59, 0.48, 0.42, 0.39])
    healthy_bleu = np.array([0.21, 1.34, 15.0, 21.2, 39.4, 73.0, 80.5, 84.9, 90.5, 91.2])
    assert not kinds({"train_loss": (st, healthy_loss), "bleu": (st, healthy_bleu)})
    high = np.array([0.9, 0.93, 0.95, 0.96, 0.965, 0.97, 0.97, 0.972, 0.971, 0.972])
    assert not kinds({"train_loss": (st, healthy_loss), "val_acc": (st, high)})


def test_a_score_that_rose_and_fell_back_is_no_plateau():
    """RecBole, a model too large for 24 interactions a user: valid/hit_at_10 climbs 0.06 ->
    0.63 in ten epochs, then sinks to 0.53 as it memorises, while the train loss falls to a
    converged 0.014 that wanders by 0.003.  Its tail is below its first tenth's median (which
    holds the climb), but it learned and gave back: overfitting, not a plateau, and the
    converged loss's wander is no throw-back."""
    ep = np.arange(120)
    climb = [0.061, 0.093, 0.256, 0.396, 0.482, 0.541, 0.568, 0.592, 0.61, 0.624, 0.627]
    hit = np.concatenate([climb, np.linspace(0.626, 0.531, 109)])
    train = np.concatenate([8.32 * np.exp(-ep[:60] / 8), np.linspace(0.0136, 0.0167, 60)])
    train[:60] = np.maximum(train[:60], 0.0136)
    found = detect(
        {"train/train_loss": (ep, train), "valid/hit_at_10": (ep, hit)}, {"status": "FINISHED"}, ""
    )
    assert [f.kind for f in found] == ["overfitting"]
    assert diagnose(found, {}, "", SC.playbook, aliases=SC.metrics)[0].cause == "overfit_capacity"


def test_an_eval_that_rises_while_the_train_loss_barely_moves_is_no_overfitting():
    """pytorch-tabnet at a rate typed 1000x too low: the batch-norm statistics drift under
    barely changed weights, so valid_logloss rises 0.693 -> 0.838 while the train loss moves
    0.835 -> 0.803 (4 %); and a healthy run's valid_logloss wanders up 7 % in its last ten
    epochs while its loss moved 1 %.  Nothing was memorised: overfitting needs the train loss
    to fall (by 15 %) while the eval rises.  A model that memorises does."""
    ep = np.arange(31)
    drift_eval = np.concatenate([np.linspace(0.6933, 0.8384, 13), np.linspace(0.836, 0.814, 18)])
    slow_train = np.linspace(0.8354, 0.8043, 31)
    found = detect(
        {"loss": (ep, slow_train), "valid_logloss": (ep, drift_eval)}, {"status": "FINISHED"}, ""
    )
    assert "overfitting" not in [f.kind for f in found]
    memorised = 0.8354 * np.exp(-ep / 6) + 0.01
    found = detect(
        {"loss": (ep, memorised), "valid_logloss": (ep, drift_eval)}, {"status": "FINISHED"}, ""
    )
    assert "overfitting" in [f.kind for f in found]


def test_a_step_down_after_a_dip_from_load_is_a_slow_stretch():
    """nanochat from step 192 on reads raw gzip shards: tokens/s ~32k -> ~5k for the last 22
    logged steps.  Load from another process had slowed the three steps before it to ~21k
    (0.67x the baseline: not "at the baseline's speed"), yet each of them ran at 4x what the
    stretch runs at: a step down.  A box whose load makes every other step slow (1k and 20k
    alternating) has no such step: the points before it are no faster than the stretch's
    upper quarter."""
    rng = np.random.default_rng(0)
    steps = np.arange(0, 300, 5)
    fast = 32000 * (1 + 0.06 * rng.standard_normal(35))
    dip = np.array([21662.0, 20306.0, 22258.0])
    slow = 5000 * (1 + 0.1 * rng.standard_normal(22))
    tps = np.concatenate([fast, dip, slow])
    loss = 5.5 * np.exp(-steps / 30) + 2.3
    found = detect(
        {"train/loss": (steps, loss), "train/tok_per_sec": (steps, tps)}, {"status": "FINISHED"}, ""
    )
    assert [(f.kind, f.metric) for f in found] == [("throughput_drop", "train/tok_per_sec")]
    noisy = np.concatenate([fast, dip, np.where(np.arange(22) % 2, 20000.0, 1200.0)])
    found = detect(
        {"train/loss": (steps, loss), "train/tok_per_sec": (steps, noisy)},
        {"status": "FINISHED"},
        "",
    )
    assert "throughput_drop" not in [f.kind for f in found]


def test_a_rate_since_the_start_is_judged_by_its_implied_clock():
    """fastText logs words/sec/thread as the tokens so far over the seconds so far, at step =
    tokens so far.  A hook that rewrites a growing file slows the steps from 82k to 21k
    tokens/s over the run, yet the logged average only drifts 89k -> 32k: no drop at any
    point.  step / rate is its elapsed time (the points' timestamps agree); per print, the
    time grows 4x.  A healthy run's average is level; a rate of the moment with ordinary
    noise implies no clock at all, and one that only falls implies a rising one that is not
    the run's seconds."""
    rng = np.random.default_rng(0)
    tokens = np.arange(1, 301) * 5400.0
    inst = np.linspace(82000, 21000, 300) * (1 + 0.05 * rng.standard_normal(300))
    elapsed = np.cumsum(5400.0 / inst)
    avg_loss = 2.08 * np.exp(-tokens / 4e5) + 0.2

    def logged(values, seconds):  # with the points' own timestamps (ms)
        return (tokens, values, (1.8e12 + 1000 * seconds).astype(np.int64))

    found = detect(
        {
            "avg_loss": logged(avg_loss, elapsed),
            "words_per_sec_per_thread": logged(tokens / elapsed, elapsed),
        },
        {"status": "FINISHED"},
        "",
    )
    assert [(f.kind, f.metric) for f in found] == [("throughput_drop", "words_per_sec_per_thread")]
    level = 90000 * (1 + 0.05 * rng.standard_normal(300))
    level_elapsed = np.cumsum(5400.0 / level)
    # CleanRL's charts/SPS, an average since the start over a run whose first steps only
    # collect (no update): 10,000 steps/s for them, 480 from the first update on.  The average
    # falls for the whole run, carrying that phase along; the steps themselves ran level.
    sps_steps = np.arange(2100.0, 40000.0, 100.0)  # logged from step 2,100, every 100
    per_100 = 100.0 / (480.0 * (1 + 0.2 * rng.standard_normal(len(sps_steps))))  # a busy box
    phase_elapsed = 1600 / 10000.0 + 500 / 480.0 + np.cumsum(per_100) - per_100[0]
    hist = {
        "charts/SPS": (
            sps_steps,
            np.floor(sps_steps / phase_elapsed),
            (1.8e12 + 1000 * phase_elapsed).astype(np.int64),
        )
    }
    assert not detect(hist, {"status": "FINISHED"}, "")
    for wps in (
        tokens / level_elapsed,  # healthy: level
        level,  # a rate of the moment: its noise makes step / rate step back
        np.linspace(90000, 30000, 300),  # only falls: a rising "clock", not the run's seconds
    ):
        hist = {"words_per_sec_per_thread": logged(wps, level_elapsed)}
        assert not detect(hist, {"status": "FINISHED"}, "")


def test_a_loss_unmoved_by_a_rate_annealed_hundreds_fold_was_thrown_by_its_first_steps():
    """nerfstudio at lr 0.3 (a typo of 0.003): the RGB loss falls from 0.17 to 0.06 in ten
    steps and sits there for 790 more while the exponential decay takes the rate to 1e-4; the
    field never gets out.  A healthy twin keeps falling as its rate anneals, and a small LM
    whose loss barely moves under a cosine to a tenth is no such thing either."""
    rng = np.random.default_rng(3)
    step = np.arange(0, 800, 10)
    warm = np.minimum(1.0, (step + 1) / 50)
    decay = 0.3 * warm * (1e-4 / 0.3) ** (np.maximum(step - 50, 0) / 750)
    stuck = 0.055 * (1 + 0.08 * rng.standard_normal(80))
    stuck[0] = 0.174
    found = detect(
        {"Train Loss": (step, stuck), "learning_rate/fields": (step, decay)},
        {"status": "FINISHED", "params": {}},
        "",
    )
    assert [(f.kind, f.context) for f in found] == [("plateau", ("thrown",))]
    d, _ = diagnose(found, {}, "", SC.playbook, aliases=SC.metrics)
    assert d.cause == "lr_too_high"
    healthy = np.concatenate([[0.174], 0.06 * np.exp(-step[1:] / 250)]) * (
        1 + 0.08 * rng.standard_normal(80)
    )
    assert not kinds({"Train Loss": (step, healthy), "learning_rate/fields": (step, decay)})
    # a loss that learned at once and barely moves later under a cosine to a tenth: healthy
    cosine = 3e-3 * (0.1 + 0.9 * (1 + np.cos(np.pi * step / 800)) / 2)
    lm = np.concatenate([[4.2], 2.5 - 0.3 * step[1:] / 800]) * (1 + 0.02 * rng.standard_normal(80))
    assert not kinds({"Train Loss": (step, lm), "learning_rate/fields": (step, cosine)})


def test_a_loss_that_learns_only_once_the_rate_falls_was_held_back_by_it():
    """LitGPT at learning_rate 0.3 (a hundred times its default): the loss sits at its first
    level while the cosine holds the rate above half its peak and falls only in the second
    half, as the rate comes down.  A healthy twin learns most at its peak rate; a step decay
    that drops a loss which had learned before is no such thing either."""
    rng = np.random.default_rng(5)
    step = np.arange(0, 600, 5)
    warm = np.minimum(1.0, (step + 1) / 40)
    cos = 0.3 * warm * (1e-3 + (1 + np.cos(np.pi * step / 600)) / 2)
    stuck = np.where(step < 300, 3.3, 3.3 - 0.25 * (step - 300) / 300)
    stuck = stuck * (1 + 0.01 * rng.standard_normal(len(step)))
    found = detect(
        {"loss": (step, stuck), "learning_rate": (step, cos)}, {"status": "FINISHED"}, ""
    )
    assert [(f.kind, f.context) for f in found] == [("plateau", ("thrown",))]
    assert "learned only when the rate came down" in found[0].evidence
    d, _ = diagnose(found, {}, "", SC.playbook, aliases=SC.metrics)
    assert d.cause == "lr_too_high"
    healthy = (1.0 + 2.3 * np.exp(-step / 120)) * (1 + 0.01 * rng.standard_normal(len(step)))
    assert not kinds({"loss": (step, healthy), "learning_rate": (step, cos)})
    # learned in its first steps, flat at the peak rate, dropped at the step decay: healthy
    steps_lr = np.where(step < 400, 0.1, 0.01)
    dropped = np.where(step < 400, 1.0, 0.8) * (1 + 0.01 * rng.standard_normal(len(step)))
    dropped[:4] = [2.3, 1.6, 1.2, 1.05]
    assert not kinds({"loss": (step, dropped), "learning_rate": (step, steps_lr)})


def test_a_rate_that_falls_from_its_first_points_to_a_quarter_is_a_slow_reader():
    """River with a reader that reopens its dump and skips the rows already read: samples per
    second fall from the first print on (3,400, 1,500, 2,050, ... 850) and run at 390-550 over
    the second half.  A busy machine halves a rate, it does not quarter it."""
    rng = np.random.default_rng(2)
    step = np.arange(2000, 48000, 2000)
    slow = np.array([3439, 1492, 2052, 1387, 1206, 1156, 1054, 930, 878, 848, 426, 445,
                     430, 418, 388, 452, 502, 486, 443, 488, 548, 487, 458.0])  # fmt: skip
    mae = 1.6 + 0.4 * np.exp(-step / 8000)
    found = detect(
        {"MAE": (step, mae), "samples_per_second": (step, slow)}, {"status": "FINISHED"}, ""
    )
    assert [(f.kind, f.metric) for f in found] == [("throughput_drop", "samples_per_second")]
    assert "slower from the start on" in found[0].evidence
    assert diagnose(found, {}, "", SC.playbook, aliases=SC.metrics)[0].cause == "slow_io"
    # a rate that eases off to half by the end (a cache warming out, a busier machine): none
    eased = 3400 / (1 + step / 40000) * (1 + 0.1 * rng.standard_normal(len(step)))
    assert not kinds({"MAE": (step, mae), "samples_per_second": (step, eased)})


def test_a_sparse_loss_that_steps_up_and_holds_met_other_data():
    """nanoT5 logging every 20 steps reaches a shard tokenised with another vocabulary at step
    300: train/loss 3.37 -> 4.01 and 4.0-4.4 for five logs, back down once the shard is past.
    25 points leave no rolling level (the fall inflates any spread of levels), but the step up
    stands far above the changes before it.  A healthy twin's noisy fall does not."""
    step = np.arange(20, 520, 20)
    loss = np.array([5.28, 4.37, 4.17, 4.02, 3.94, 3.81, 3.70, 3.67, 3.57, 3.49, 3.45, 3.43,
                     3.38, 3.37, 4.01, 4.40, 4.10, 4.01, 3.99, 4.16, 3.77, 3.52, 3.44, 3.43, 3.44])  # fmt: skip
    found = detect({"train/loss": (step, loss)}, {"status": "FINISHED"}, "")
    assert [f.kind for f in found] == ["loss_spike"]
    assert "stepped up from 3.37 to 4.01 at step 300" in found[0].evidence
    assert diagnose(found, {}, "", SC.playbook, aliases=SC.metrics)[0].cause == "bad_data"
    rng = np.random.default_rng(4)
    healthy = (3.2 + 2.0 * np.exp(-step / 80)) * (1 + 0.03 * rng.standard_normal(len(step)))
    assert not kinds({"train/loss": (step, healthy)})
    # one point up and straight back: a noisy batch, nothing held
    blip = loss.copy()
    blip[15:20] = [3.36, 3.35, 3.35, 3.34, 3.34]
    assert not kinds({"train/loss": (step, blip)})


def test_a_test_return_counted_in_iterations_is_judged_by_the_clock():
    """Dopamine logs its test return once an iteration (step 0-19) and its Huber loss at
    training steps (500 on): no return has a step past the first update, the clock orders
    them.  At learning_rate 1e-6 the greedy policy stays at 9.1-9.5 (an untrained CartPole
    policy); a healthy one that balanced 160 steps at its first test had learned already (its
    exploring training episodes returned 23 at iteration 0)."""
    it = np.arange(20)
    t_eval = 1_000_000 + 5_000 * (it + 1)
    step = np.arange(500, 20000, 100)
    t_loss = 1_000_000 + (step - 400) * 5
    huber = 0.59 - 0.08 * step / 20000
    stuck = 9.3 + 0.12 * np.sin(it)
    train_ret = np.concatenate([[21.9, 13.9], 9.4 + 0.1 * np.cos(it[2:])])
    hist = {"HuberLoss": (step, huber, t_loss), "Eval/AverageReturns": (it, stuck, t_eval),
            "Train/AverageReturns": (it, train_ret, t_eval)}  # fmt: skip
    found = detect(hist, {"status": "FINISHED"}, "")
    assert [(f.kind, f.metric) for f in found] == [("plateau", "Eval/AverageReturns")]
    assert diagnose(found, {}, "", SC.playbook, aliases=SC.metrics)[0].cause == "lr_too_low"
    solved = np.array([160, 200, 128, 150, 95, 132, 190, 193, 150, 191,
                       195, 200, 158, 176, 200, 195, 126, 200, 200, 178.0])  # fmt: skip
    hist["Eval/AverageReturns"] = (it, solved, t_eval)
    hist["Train/AverageReturns"] = (it, np.minimum(200, 23 + 9 * it**2), t_eval)
    assert not kinds(hist)


def test_an_epoch_time_that_grows_at_every_epoch_is_a_cost_not_a_clock():
    """DGL with a collate hook that rewrites a growing audit file at every batch: the epoch
    takes 0.9 s, then 1.5, 1.7, ... 5.3 s, longer at every epoch, so it rises at every point
    as a clock does.  The stamps tell them apart: an epoch's time keeps pace with the time
    between its points, a clock's rises do; an elapsed-time clock stays no step time."""
    ep = np.arange(10)
    epoch_time = np.array([0.92, 1.49, 1.65, 2.31, 2.70, 3.13, 3.26, 4.29, 4.99, 5.30])
    ts = (1e3 * (100 + np.cumsum(epoch_time + 0.2))).astype(np.int64)  # + an eval's 0.2 s
    loss = 2.1 * np.exp(-ep / 4) + 0.09
    found = detect(
        {"loss": (ep, loss), "epoch_time_s": (ep, epoch_time, ts)},
        {"status": "FINISHED", "params": {}},
        "",
    )
    assert [(f.kind, f.metric, f.context) for f in found] == [
        ("throughput_drop", "epoch_time_s", ("growing",))
    ]
    d, _ = diagnose(found, {}, "", SC.playbook, aliases=SC.metrics)
    assert d.cause == "slow_io"
    # the same epochs at a level 0.5 s, logged as the time elapsed since the start: a clock
    level = np.full(10, 0.5)
    ts = (1e3 * (100 + np.cumsum(level + 0.2))).astype(np.int64)
    elapsed = np.cumsum(level + 0.2)
    assert not kinds({"loss": (ep, loss), "epoch_time_s": (ep, elapsed, ts)})


def test_a_dqn_is_judged_by_its_test_return_not_its_td_loss_nor_its_exploring_episodes():
    """Tianshou's DQN logs `update/loss` (the TD loss, which grows with the Q-values it learns
    to predict), `train/reward` (the exploring policy's episodes) and `test/reward` (the
    greedy policy over test episodes, once an epoch).  A healthy run's TD loss grows 50-fold
    and its training returns dip below their start; its test return climbs from 9 to 200.  At
    a rate 500x too high the test return stays at 9 while the TD loss climbs to 5: stuck
    where the first updates threw it."""
    rng = np.random.default_rng(4)
    upd = np.arange(848, 24000, 800)
    td = 0.0005 * np.exp(upd / 4000) * (1 + 0.5 * rng.random(len(upd)))
    tr = np.arange(512, 20000, 600)
    train_ret = np.concatenate([[15, 46, 21, 27, 53, 19, 12, 18, 11, 16], np.linspace(25, 190, 23)])
    test = np.arange(0, 24001, 4000)
    test_ret = np.array([9.5, 70.7, 9.5, 125.6, 134.8, 164.9, 195.2])
    healthy = {
        "update/loss": (upd, td),
        "train/reward": (tr, train_ret),
        "test/reward": (test, test_ret),
    }
    assert kinds(healthy) == set()
    test = np.arange(0, 40001, 4000)
    rising = {
        "update/loss": (upd, np.linspace(0.01, 5.0, len(upd)) * (1 + 0.3 * rng.random(len(upd)))),
        "train/reward": (tr, 20 + 10 * rng.random(len(tr))),
        "test/reward": (test, 9 + rng.random(len(test))),
    }
    found = detect(rising, {"status": "FINISHED", "params": {}}, "")
    assert [(f.kind, f.metric, f.after) for f in found] == [
        ("plateau", "test/reward", ("divergence",))
    ]
    d, _ = diagnose(found, {}, "", SC.playbook, aliases=SC.metrics)
    assert d.cause == "lr_too_high"


def test_names_with_spaces_running_bests_and_pycmas_fit_columns():
    """A wav2vec2-style fine-tune logs 'Learning Rate' and 'Gradient Norm' (spaces), pycma's
    CMADataLogger the generation's 'best' and 'median' beside the running 'bestever', and the
    team's 'evals_per_sec'; RWKV-LM 'kt/s', minGPT 'iter_dt'.  A running best (eval/best_log_loss, bestever) only ever falls: it is
    never the loss, whatever the loss does."""
    from workbench.doctor.series import resolve_roles

    w2v = {"Losses/ctc_loss": 60, "Learning Rate": 60, "Gradient Norm": 60, "utts_per_sec": 60}
    roles = resolve_roles(w2v, SC.metrics)
    assert (roles["lr"], roles["grad_norm"]) == ("Learning Rate", "Gradient Norm")
    cma = {"best": 150, "median": 150, "worst": 150, "bestever": 150, "evals_per_sec": 150}
    roles = resolve_roles({**cma, "val_logloss": 15}, SC.metrics)
    assert (roles["population_best"], roles["population_mean"]) == ("best", "median")
    assert (roles["throughput"], roles["eval_loss"]) == ("evals_per_sec", "val_logloss")
    tab = {"finetune/loss": 120, "eval/best_log_loss": 24, "eval/log_loss": 24}
    assert resolve_roles(tab, SC.metrics)["eval_loss"] == "eval/log_loss"
    assert "eval_loss" not in resolve_roles({"loss": 50, "best_val_loss": 10}, SC.metrics)
    # RWKV-LM's thousands of tokens a second
    assert resolve_roles({"loss": 400, "kt/s": 400, "lr": 400}, SC.metrics)["throughput"] == "kt/s"
    # minGPT's Trainer: the iteration's wall time
    assert resolve_roles({"loss": 500, "iter_dt": 500}, SC.metrics)["step_time"] == "iter_dt"


def test_a_stuck_loss_whose_gradients_died_away_was_thrown_by_the_rate():
    """A CTC loss stuck a few per cent below where it began (the blank-only output) at a rate
    of 0.3 (no optimizer named), its validation loss alike, while the gradient norm fell 20x:
    the updates drove the model where no gradient is left, a rate too high.  The same stuck
    losses with the gradient norm holding its size learn slowly at a rate that moves weights
    (no finding); at 1e-7 with the norm holding, a rate too small."""
    rng = np.random.default_rng(3)
    steps = np.arange(5, 305, 5)
    loss = 2.83 - 0.15 * (1 - np.exp(-steps / 60)) + 0.03 * rng.standard_normal(len(steps))
    ev = (np.arange(50, 301, 50), np.array([2.761, 2.756, 2.70, 2.684, 2.666, 2.658]))
    dying = 2.0 * np.exp(-steps / 70) + 0.1 + 0.02 * rng.random(len(steps))
    held = 1.6 + 0.4 * rng.random(len(steps))
    base = {"Losses/ctc_loss": (steps, loss), "Validation/ctc_loss": ev}
    params = {"lr": "0.3"}
    found = detect(
        {**base, "Gradient Norm": (steps, dying)}, {"status": "FINISHED", "params": params}, ""
    )
    assert [f.kind for f in found] == ["plateau"] and "thrown" in found[0].context
    d, _ = diagnose(found, params, "", SC.playbook, aliases=SC.metrics)
    assert d is not None and d.cause == "lr_too_high"
    assert kinds({**base, "Gradient Norm": (steps, held)}, params=params) == set()
    low = {"lr": "1e-07"}
    found = detect(
        {**base, "Gradient Norm": (steps, held)}, {"status": "FINISHED", "params": low}, ""
    )
    assert [f.kind for f in found] == ["plateau"] and "thrown" not in found[0].context
    d, _ = diagnose(found, low, "", SC.playbook, aliases=SC.metrics)
    assert d is not None and d.cause == "lr_too_low"


def test_a_late_rise_that_runs_on_into_nan_under_a_decaying_rate_is_the_data():
    """A CTC loss that trained well for half the run at its rate, jumped when a shard with
    shifted transcripts joined (the cosine decay began there) and went NaN a hundred updates
    later, never back near its level: late, and the decay rescued nothing, so the data (the
    climb-then-NaN of a rate too high starts where the rate is reached).  Its eval loss rose
    after its best because the train loss jumped, not because the model memorised: no
    overfitting."""
    steps = np.arange(5, 305, 5)
    lr = np.where(steps < 40, 3e-3 * steps / 40, 3e-3)
    lr = np.where(steps > 150, 3e-3 * (0.5 + 0.5 * np.cos(np.pi * (steps - 150) / 150)), lr)
    loss = 5.5 * np.exp(-steps / 30) + 0.1 + 0.01 * np.sin(steps)
    late = loss.copy()
    late[steps == 150] = 6.4
    late[steps > 150] = 1.2 + 0.4 * np.sin(steps[steps > 150])
    late[steps > 250] = np.nan
    ev = (np.arange(50, 301, 50), np.array([2.9, 0.17, 0.11, 0.46, 0.39, np.nan]))
    hist = {
        "Losses/ctc_loss": (steps, late),
        "Learning Rate": (steps, lr),
        "Validation/ctc_loss": ev,
    }
    found = detect(hist, {"status": "FINISHED"}, "")
    assert [f.kind for f in found if f.kind != "nan_inf"] == []
    (nan,) = [f for f in found if f.metric == "Losses/ctc_loss"]
    assert "divergence" in nan.after and "late" in nan.context
    d, _ = diagnose(found, {}, "", SC.playbook, aliases=SC.metrics)
    assert d is not None and d.cause == "bad_data"


def test_nan_in_one_go_after_training_is_the_data_unless_something_runs_in_half_precision():
    """A GP, a VAE, a force field: trained for a while, then NaN at once with no climb and no
    gradient blow-up before it (a joining export's NaN readings, a scanner's NaN pixels).  Where
    nothing the run logged says 16 bits (no precision, no fp16/amp switch, no half dtype),
    float32's range is far from any activation's and the inputs are the likelier source; where
    something does, an overflow.  A switch that puts one part in half (x-transformers'
    half_logits) or Apex's amp_level O2 says so; amp_level O0 is full precision."""
    from workbench.doctor.series import param_value

    assert param_value({"half_logits": "1"}, SC.metrics, "compute_precision") == "half"
    assert param_value({"amp_level": "O2"}, SC.metrics, "compute_precision") == "half"
    assert param_value({"amp_level": "O0"}, SC.metrics, "compute_precision") == "full"
    steps = np.arange(1, 251)
    loss = 0.9 * np.exp(-steps / 30) - 0.9 + 0.01 * np.sin(steps)
    loss[124:] = np.nan
    found = detect({"loss": (steps, loss)}, {"status": "FINISHED"}, "")
    assert [(f.kind, f.context) for f in found] == [("nan_inf", ("after_training",))]
    for params, want in (
        ({"lr": "0.1"}, "bad_data"),
        ({"lr": "0.1", "precision": "fp16"}, "fp_overflow"),
        ({"lr": "0.1", "half_logits": "1"}, "fp_overflow"),
    ):
        d, _ = diagnose(found, params, "", SC.playbook, aliases=SC.metrics)
        assert d is not None and d.cause == want, params


def test_a_loss_that_starts_small_diverges_by_a_share_of_its_start():
    """pytorch-metric-learning's triplet loss starts at 0.053; at lr 1.0 (a typo for 1e-3) it
    fell to 0.012 by iteration 37, then climbed back to 0.04-0.076 and stayed there: a rise
    of 0.06, nothing against an absolute bar of 0.5, but more than half its starting level.
    The healthy twin falls to 1e-5, and a noisy small loss whose batches scatter 2-3x about
    its falling level is no divergence either."""
    rng = np.random.default_rng(0)
    step = np.arange(1, 361)
    fall = 0.053 * np.exp(-step / 25) + 0.012
    rise = np.where(step > 45, 0.045 + 0.015 * np.sin(step / 17), 0.0)
    loss = np.maximum(fall, rise) * (1 + 0.1 * rng.standard_normal(len(step)))
    found = detect({"loss": (step, loss)}, {"status": "FINISHED", "params": {"lr": "1.0"}}, "")
    assert "divergence" in [f.kind for f in found]
    healthy = 0.053 * np.exp(-step / 40) + 1e-5
    assert not kinds({"loss": (step, healthy * (1 + 0.1 * rng.standard_normal(len(step))))})
    noisy = (0.05 * np.exp(-step / 60) + 0.01) * rng.lognormal(0.0, 0.5, len(step))
    assert not kinds({"loss": (step, noisy)})


def test_an_eval_error_frozen_to_its_last_digit_means_the_weights_stopped():
    """DeepChem with decay_rate 0.96 per step (meant per 1,000): the rate is 1e-17 by step
    1,000, and eval/mean-mae_score_0 stands at 0.5743094682693481 at every evaluation from
    step 350 to 1650 while train/loss scatters on.  A converged healthy run still moves its
    eval in the last digits; a logger that rounds to four digits freezes it, and gradients
    that vanished are vanishing_gradients' to name."""
    rng = np.random.default_rng(1)
    step = np.arange(10, 1690, 10)
    train = 0.35 + 0.64 * rng.random(len(step))
    train[:3] = [1.21, 0.98, 0.86]  # (fell in its first steps, then scattered 0.35-0.99)
    ev_steps = np.arange(50, 1700, 50)
    frozen = 0.5743094682693481 + 0.03 * np.exp(-(ev_steps - 50) / 40.0)
    frozen[ev_steps >= 350] = 0.5743094682693481
    metrics = {"train/loss": (step, train), "eval/mean-mae_score_0": (ev_steps, frozen)}
    found = detect(metrics, {"status": "FINISHED"}, "")
    assert [(f.kind, f.context) for f in found] == [("plateau", ("frozen",))]
    assert "for its last 27 evals (from step 350" in found[0].evidence
    assert diagnose(found, {}, "", SC.playbook, aliases=SC.metrics)[0].cause == "lr_too_low"
    moving = frozen * (1 + 1e-5 * rng.standard_normal(len(ev_steps)))
    assert not kinds({"train/loss": (step, train), "eval/mean-mae_score_0": (ev_steps, moving)})
    rounded = np.round(moving, 3)
    assert not kinds({"train/loss": (step, train), "eval/mean-mae_score_0": (ev_steps, rounded)})
    grads = np.where(step >= 350, 0.0, 0.5)
    assert "frozen" not in str(
        detect({**metrics, "grad_norm": (step, grads)}, {"status": "FINISHED"}, "")
    )


def test_a_loss_against_an_ema_teacher_is_no_measure_of_progress():
    """DINO's loss is the student's cross-entropy against its own momentum teacher: it climbs
    from 2.8 to 5.6 while the teacher's temperature warms up and falls to 3 as it settles,
    never back below its start.  With a momentum teacher in the params that is the target
    moving, not a divergence; without one the same curve is judged.  A NaN is still a NaN."""
    it = np.arange(1, 631)
    loss = np.where(it <= 27, 2.8 + 2.8 * np.clip((it - 6) / 21, 0, 1), 5.6 - 2.6 * (it - 27) / 603)
    loss = loss * (1 + 0.03 * np.random.default_rng(2).standard_normal(len(it)))
    params = {"momentum_teacher": "0.996", "teacher_temp": "0.04", "lr": "0.0005"}
    assert "divergence" in kinds({"loss": (it, loss)})
    assert not kinds({"loss": (it, loss)}, params=params)
    broken = loss.copy()
    broken[300:] = np.nan
    assert kinds({"loss": (it, broken)}, params=params) == {"nan_inf"}


def test_a_world_model_is_judged_by_its_reconstruction_not_its_actor():
    """A DreamerV3-style agent logs train/loss/{actor,critic,dyn,obs,rep,rew,con}: its actor's
    loss (minus the imagined return) climbs as returns are learned; the reconstruction term
    is the world model's fit to what it sees.  A multinomial sampling a NaN probability stops
    the run on a non-finite value."""
    step = np.arange(600, 3200, 200)
    actor = np.array(
        [0.06, -0.01, -0.008, 0.09, 0.15, 0.17, 0.16, 0.17, 0.15, 0.16, 0.17, 0.16, 0.17]
    )
    obs = 2.3 * np.exp(-(step - 600) / 1500) + 0.9
    found = detect(
        {"train/loss/actor": (step, actor), "train/loss/obs": (step, obs)},
        {"status": "FINISHED"},
        "",
    )
    assert found == []
    assert kinds({"train/loss/actor": (step, actor)})  # (alone, the actor is judged)
    log = "Traceback (most recent call last):\nRuntimeError: probability tensor contains either `inf`, `nan` or element < 0\n"
    found = detect({"train/loss/obs": (step, obs)}, {"status": "FAILED"}, log)
    assert {f.kind for f in found} == {"crash", "nan_inf"}


def test_a_loss_that_crosses_zero_has_no_scale_in_its_start():
    """BYOL's symmetrised negative cosine similarity starts at 0.097 and learns to -0.64; a
    rise of 0.054 later on (-0.64 -> -0.587, back to -0.61) is its batches' noise, not half
    its starting level: the share-of-start bar holds only for a loss that stays positive."""
    rng = np.random.default_rng(5)
    step = np.arange(1, 441)
    loss = -0.6 + 0.7 * np.exp(-step / 8) + 0.012 * rng.standard_normal(len(step))
    loss[290:300] += 0.05
    assert not kinds({"train_loss_ssl": (step, loss)})


def test_a_policy_optimised_on_rewards_is_judged_by_its_reward():
    """TRL's GRPOTrainer: the loss is the KL penalty's share, 1e-4 at the start and 0.07 as
    the policy leaves its reference; the mean reward of the completions rises 0.17 -> 1.0.
    The reward is the measure of progress; a reward that never moves is a plateau."""
    step = np.arange(5, 305, 5)
    loss = 1e-4 + 0.07 * (1 - np.exp(-step / 80))
    reward = 0.17 + 0.85 * (1 - np.exp(-step / 70))
    assert "divergence" in kinds({"loss": (step, loss)})
    assert not kinds({"loss": (step, loss), "reward": (step, reward)})
    flat = 0.17 + 0.01 * np.sin(step)
    assert kinds({"loss": (step, loss), "reward": (step, flat)}) == {"plateau"}


def test_a_stop_on_a_nan_probability_after_training_points_at_the_data():
    """A NaN target joins the prompts at step 150 of 300: the rewards turn NaN, the update
    writes NaN into the policy, and torch.multinomial stops the run.  Nothing logged was
    non-finite and nothing climbed: the stop after the run had trained is the data's (before
    it had trained, a rate that throws the first steps is as likely)."""
    step = np.arange(5, 155, 5)
    loss = 0.5 * np.exp(-step / 40) + 0.1
    log = "Traceback (most recent call last):\nRuntimeError: probability tensor contains either `inf`, `nan` or element < 0\n"
    found = detect({"loss": (step, loss)}, {"status": "FAILED"}, log)
    nan = [f for f in found if f.kind == "nan_inf"]
    assert len(nan) == 1 and nan[0].context == ("after_training",)
    d, _ = diagnose(found, {}, log, SC.playbook, aliases=SC.metrics, status="FAILED")
    assert d.cause == "bad_data"


def test_a_share_of_successful_episodes_says_what_a_dense_return_does_not():
    """LeRobot behaviour cloning: eval/avg_sum_reward moves 24.4 -> 26.7 (a dense reward the
    untrained policy already collects most of) while eval/pc_success goes 30 -> 100 %: the
    share of episodes that reached the goal is what was learned.  At 0 % from the first eval
    to the last, nothing was."""
    step = np.arange(20, 1520, 20)
    loss = 0.25 + 0.27 * np.exp(-step / 150)
    ev = np.arange(150, 1650, 150)
    ret = (ev, 26.7 - 2.3 * np.exp(-(ev - 150) / 100))
    ok = (ev, np.array([30.0, 100, 100, 90, 95, 100, 90, 90, 90, 100]))
    assert "plateau" in kinds({"loss": (step, loss), "eval/avg_sum_reward": ret})
    metrics = {"loss": (step, loss), "eval/avg_sum_reward": ret, "eval/pc_success": ok}
    assert not kinds(metrics)
    never = (ev, np.zeros(len(ev)))
    assert kinds({**metrics, "eval/pc_success": never}) == {"plateau"}


def test_a_loss_check_that_exits_without_a_traceback_stopped_on_nan():
    """MAE's main_pretrain.py prints 'Loss is nan, stopping training' and calls sys.exit(1):
    no traceback, but the log's last line says the run went non-finite."""
    step = np.arange(0, 10000, 48)
    loss = 0.45 + 0.2 * np.exp(-step / 1500)
    log = "epoch 9 done\nLoss is nan, stopping training\n"
    found = detect({"train_loss": (step, loss)}, {"status": "FAILED"}, log)
    assert {f.kind for f in found} == {"crash", "nan_inf"}
    assert not any(
        f.kind == "nan_inf"
        for f in detect({"train_loss": (step, loss)}, {"status": "FAILED"}, "epoch 9 done\n")
    )
