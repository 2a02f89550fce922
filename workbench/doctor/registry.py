"""The detector registry (torchtitan's ``register_train_spec`` idea): a metric detector
declares its finding kind (which is also its thresholds' section in
``scaffold/detectors.yaml``), the metric roles it reads, whether it judges only new points
(``stable``) and whether it is the run-up to a non-finite loss (``precursor``).
``core.detect_metrics`` iterates ``REGISTRY``; adding a detector is one decorated function in
``detectors.py`` plus its thresholds.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from scaffold.loader import FINDING_KINDS, MetricAliases
from workbench.doctor.series import Series, param_value, setting_off
from workbench.doctor.types import Finding


class Quality(NamedTuple):
    """A run's own measure of progress (see ``RunView.quality``)."""

    series: Series
    higher: bool  # higher is better (a return), or lower (a distance from the data)
    per_eval: bool  # one number an evaluation of a fixed set (a test return, a FID)


# Roles that measure progress better than any loss the run logs, most telling first:
# (role, higher is better, one number an evaluation of a fixed set).  A return over test
# episodes (the greedy policy's) tells more than the training episodes' (exploration's).
QUALITY_ROLES = (
    ("eval_reward", True, True),
    ("reward", True, False),
    ("sample_distance", False, True),
)


@dataclass(frozen=True)
class RunView:
    """One run as a detector sees it: series by role, params, and where to judge from.

    ``since`` (metric → index) is the incremental caller's promise (see ``detect_metrics``);
    a ``stable`` detector asks ``start(kind, s)`` where to look from, the others judge whole.
    """

    series: Mapping[str, Series]  # role → series (only roles the run logged)
    params: Mapping[str, str] = field(default_factory=dict)
    aliases: MetricAliases | None = None
    since: Mapping[str, int] = field(default_factory=dict)
    whole: Collection[tuple[str, str]] = ()
    final: bool = True

    def __getitem__(self, role: str) -> Series | None:
        return self.series.get(role)

    def start(self, kind: str, s: Series) -> int:
        return 0 if (kind, s.name) in self.whole else min(self.since.get(s.name, 0), len(s))

    def param(self, role: str) -> str | None:
        return param_value(self.params, self.aliases, role) if self.aliases else None

    @property
    def quality(self) -> Quality | None:
        """The run's own measure of progress, where it logs one that its losses are no measure
        of: a reinforcement learner's episode return (a critic's loss grows with the returns
        it learns to predict) or a generator's distance from the data such as FID (a GAN's two
        losses are a contest that hovers by design)."""
        for role, higher, per_eval in QUALITY_ROLES:
            s = self.series.get(role)
            if s is not None:
                return Quality(s, higher, per_eval)
        return None

    @property
    def contest(self) -> bool:
        """The run's losses are no measure of its progress: a reinforcement learner's (a
        critic's loss grows with the returns it learns to predict) or a GAN's (a discriminator's
        loss logged beside them: two players). A diffusion model's or a VAE's one loss beside
        its samples' FID is still the model's fit to its data, judged as well."""
        q = self.quality
        if q is None:
            return False
        return q.series is not self.series.get("sample_distance") or "adversary_loss" in self.series

    @property
    def moving_target(self) -> bool:
        """The training loss measures the student against an EMA teacher (DINO, BYOL: a
        momentum teacher logged in the params): a target that moves with the model, whose loss
        rises while the teacher sharpens and falls as it settles, no fit to data.  Its
        divergence, spikes and plateau say nothing of progress (a k-NN probe does, where
        logged); a non-finite value still does."""
        return self.param("ema_teacher") is not None

    @property
    def clipped(self) -> bool:
        """Gradient clipping on: a logged, non-zero, finite clip setting."""
        clip = self.param("grad_clip")
        return clip is not None and not setting_off("grad_clip", clip)


DetectFn = Callable[[RunView, dict[str, Any]], "Finding | list[Finding] | None"]


@dataclass(frozen=True)
class Detector:
    kind: str  # the finding kind it reports = its section in detectors.yaml
    reads: tuple[str, ...]  # metric roles; it runs when the run logged any of them
    fn: DetectFn
    stable: bool = False  # judges only points from `since` on (prefix-stable)
    precursor: bool = False  # a run-up to nan_inf, absorbed into it by `consolidate`
    roles_from: str | None = None  # a thresholds key that overrides `reads` (nan_inf's roles)

    def roles(self, th: Mapping[str, Any]) -> tuple[str, ...]:
        return tuple(th.get(self.roles_from, self.reads)) if self.roles_from else self.reads


REGISTRY: dict[str, Detector] = {}


def detector(
    kind: str,
    *,
    reads: tuple[str, ...],
    stable: bool = False,
    precursor: bool = False,
    roles_from: str | None = None,
) -> Callable[[DetectFn], DetectFn]:
    """Register ``fn(run, thresholds) -> Finding | None`` (or a list: one per metric) as
    the detector of ``kind``."""
    if kind not in FINDING_KINDS:
        raise ValueError(f"{kind!r} is not a finding kind")

    def wrap(fn: DetectFn) -> DetectFn:
        if kind in REGISTRY:
            raise ValueError(f"a detector for {kind!r} is registered already")
        REGISTRY[kind] = Detector(kind, reads, fn, stable, precursor, roles_from)
        return fn

    return wrap


def precursors() -> tuple[str, ...]:
    return tuple(k for k, d in REGISTRY.items() if d.precursor)
