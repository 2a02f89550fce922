"""The detector registry: every detector declares its kind, roles and thresholds' section,
and ``detect_metrics`` runs whatever is registered (no hand wiring)."""

from __future__ import annotations

import numpy as np
import pytest

from scaffold.loader import FINDING_KINDS, load_scaffold
from workbench.doctor import detectors  # noqa: F401  (registers the detectors)
from workbench.doctor.core import consolidate, detect_metrics, series_of
from workbench.doctor.registry import REGISTRY, detector, precursors
from workbench.doctor.types import Finding


def test_every_detector_declares_a_known_kind_roles_and_thresholds():
    sc = load_scaffold(None)
    metric_kinds = set(FINDING_KINDS) - {"crash", "stalled"}  # status/log detectors
    assert set(REGISTRY) == metric_kinds
    for kind, d in REGISTRY.items():
        assert d.kind == kind
        assert kind in sc.detectors, f"{kind}: no thresholds section"
        assert d.reads and all(r in sc.metrics.roles for r in d.reads)
    assert set(precursors()) == {
        "divergence",
        "loss_spike",
        "plateau",
        "exploding_gradients",
        "vanishing_gradients",
    }


def test_a_registered_detector_runs_without_wiring(monkeypatch):
    with pytest.raises(ValueError):
        detector("not_a_kind", reads=("train_loss",))
    monkeypatch.delitem(REGISTRY, "plateau")  # restored after the test

    @detector("plateau", reads=("lr",))
    def flat_lr(run, th):
        s = run["lr"]
        if s is not None and np.ptp(s.values) <= th.get("eps", 0.0):
            return Finding(kind="plateau", metric=s.name, step=0, severity=0.5, evidence="flat lr")
        return None

    sc = load_scaffold(None)
    n = 50
    series = series_of(
        {"learning_rate": (np.arange(n), np.full(n, 1e-3)), "loss": (np.arange(n), np.ones(n))}
    )
    found = detect_metrics(series, sc.detectors, sc.metrics)
    assert [f.evidence for f in found if f.kind == "plateau"] == ["flat lr"]


def test_precursors_come_from_the_registry():
    nan = Finding(kind="nan_inf", metric="loss", step=10, severity=1.0, evidence="nan")
    div = Finding(kind="divergence", metric="loss", step=5, severity=0.5, evidence="up")
    tp = Finding(kind="throughput_drop", metric="tps", step=6, severity=0.5, evidence="slow")
    merged = consolidate([div, tp, nan])
    assert [f.kind for f in merged] == ["nan_inf", "throughput_drop"]
    assert merged[0].step == 5


def test_a_divergence_absorbs_the_spikes_of_its_own_loss_only():
    div = Finding(kind="divergence", metric="loss", step=60, severity=1.0, evidence="up")
    own = Finding(kind="loss_spike", metric="loss", step=90, severity=0.4, evidence="jump")
    onset = Finding(kind="loss_spike", metric="loss", step=55, severity=0.4, evidence="jump")
    other = Finding(kind="loss_spike", metric="aux_loss", step=90, severity=0.4, evidence="aux")
    early = Finding(kind="loss_spike", metric="loss", step=2, severity=0.4, evidence="batch")
    merged = consolidate([div, own, onset, other, early])
    assert [(f.kind, f.metric, f.step) for f in merged] == [
        ("loss_spike", "loss", 2),  # long before the rise: a bad batch of its own
        ("divergence", "loss", 55),  # the onset spike's step
        ("loss_spike", "aux_loss", 90),
    ]
    assert merged[1].after == ("loss_spike",)
    # and a NaN that ends the divergence keeps the whole run-up
    nan = Finding(kind="nan_inf", metric="loss", step=100, severity=1.0, evidence="nan")
    (first, *_) = [f for f in consolidate([div, own, nan]) if f.kind == "nan_inf"]
    assert first.after == ("loss_spike", "divergence") and first.step == 60
