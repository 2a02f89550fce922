"""Rewards: does a remedy verify on a task's run? Measured once (a stand-in from the suite's
known fixes, or a real rerun through ``workbench.rl.outcomes``) and cached per (scenario, remedy)."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from model.files import atomic_write_text
from workbench.rl.outcomes import canonical_patch
from workbench.rl.tasks import NO_ACTION, Task, playbook_order
from workbench.supervisor.patches import touches_harness


def suite_verified(task: Task, patch: list[dict]) -> bool:
    """Stand-in measurement: a patch fixes the run iff it is one of the suite's known fixes
    (each measured by rerunning the scenario); the empty patch passes iff the run is healthy."""
    if not patch:
        return not task.known_fixes if task.healthy is None else task.healthy
    return canonical_patch(patch) in task.known_fixes


def fix_outcomes_measure(
    cache_dir: Path, store: Path | None = None, measure_new: bool = True, **kw: Any
) -> Callable[[Task, list[dict]], bool]:
    """Real measurement (``workbench.rl.outcomes``): rerun the scenario's training with the
    patch and verify it against the original run, cached in ``cache_dir`` (shared with other
    users of that cache). The empty patch (``no_action``) passes when the doctor found nothing
    on the original run. ``measure_new=False``: only cached measurements count, the suite
    stand-in answers the rest. ``measure.sources`` counts where each answer came from."""
    from workbench.rl.outcomes import FixOutcomes

    fo = FixOutcomes(Path(cache_dir), original_store=store, **kw)
    sources = {"measured": 0, "cached": 0, "stand_in": 0, "doctor": 0}

    def measure(task: Task, patch: list[dict]) -> bool:
        if not patch:
            src, ok = "doctor", not task.findings
        elif (hit := fo.lookup(task.scenario, patch)) is not None:
            src, ok = "cached", bool(hit.fixed)
        elif not measure_new:
            src, ok = "stand_in", suite_verified(task, patch)
        else:
            src, ok = "measured", bool(fo.outcome(task.scenario, patch).fixed)
        sources[src] += 1
        measure.last = src  # type: ignore[attr-defined]  (RemedyCache reads it under its lock)
        return ok

    measure.sources = sources  # type: ignore[attr-defined]
    return measure


# The suite injects each fault through the run config's ``faults:`` entry. Deleting it "fixes"
# any scenario, but no real run has one: a policy rewarded for it learns the benchmark, not
# the job (it did: see docs/rl.md). Such patches earn nothing.
class RemedyCache:
    """(scenario, remedy) -> verified? Measured once, then read from ``path`` (atomic writes)."""

    def __init__(
        self,
        path: Path,
        measure: Callable[[Task, list[dict]], bool],
        catalog: dict[str, list[dict]],
    ) -> None:
        self.path, self.measure, self.catalog = path, measure, catalog
        self.data: dict[str, bool] = json.loads(path.read_text()) if path.exists() else {}
        self.measured = 0
        # key -> where its answer came from (measure.last: measured / cached / stand_in /
        # doctor; "stand_in" for the default suite_verified; "file" when read from ``path``)
        self.sources: dict[str, str] = dict.fromkeys(self.data, "file")
        self._lock = threading.Lock()  # rollout threads share the cache

    def outcome(self, task: Task, remedy: str) -> bool:
        key = f"{task.scenario}::{remedy}"
        with self._lock:
            if key not in self.data:
                self.data[key] = bool(self.measure(task, self.catalog[remedy]))
                self.sources[key] = getattr(self.measure, "last", "stand_in")
                self.measured += 1
                _write_json(self.path, self.data)
            return self.data[key]

    def judge(self, task: Task, remedy: str | None) -> tuple[float, str]:
        """(reward, why): 1 when the answer is a verified fix (or ``no_action`` on a run that
        needs none); ``why`` names the source of the verdict."""
        if remedy is None or remedy not in self.catalog:
            return 0.0, "unparsable"
        already_ok = self.outcome(task, NO_ACTION)
        if remedy == NO_ACTION:
            return float(already_ok), self.sources[f"{task.scenario}::{NO_ACTION}"]
        if already_ok:
            return 0.0, "false_alarm"  # a patch for a run that needs none
        if not self.catalog[remedy]:
            return 0.0, "code_change"  # no config patch to rerun
        if touches_harness(self.catalog[remedy]):  # a benchmark artifact, not a fix
            return 0.0, "guard"
        ok = self.outcome(task, remedy)
        return float(ok), self.sources[f"{task.scenario}::{remedy}"]

    def reward(self, task: Task, remedy: str | None) -> float:
        return self.judge(task, remedy)[0]

    def preferred(self, task: Task) -> str | None:
        """The playbook's highest-ranked remedy on ``task``'s menu that verifies (None: none)."""
        return next(
            (a for a in playbook_order(task.cause) if a in task.menu and self.reward(task, a) > 0),
            None,
        )

    def train_reward(
        self, task: Task, remedy: str | None, tie_penalty: float = 0.0, miss_penalty: float = 0.0
    ) -> float:
        """The RL reward: verification, minus ``tie_penalty`` for a working fix when a remedy
        the playbook ranks higher also works on that run, and ``-miss_penalty`` for
        ``no_action`` on a run that needs a fix or an answer that names no remedy (a miss; a
        failed fix attempt scores 0; measured: with remedy ids as answers, tasks that no
        remedy fixes drifted to malformed answers). Both
        give a direction where verification alone gives none (measured: such zero-signal
        tasks drifted, e.g. to ``no_action`` on a hung run whose selection twin no remedy
        fixes). Where the selection runs cannot tell
        two fixes apart, the playbook's preference (its ranking: the less invasive change first)
        decides, instead of drift (measured: a tie left alone drifted to the other fix, which
        then failed on a run where only the preferred one works)."""
        r = self.reward(task, remedy)
        if remedy is None or remedy not in self.catalog:
            return -miss_penalty  # names no remedy: a miss on any run, never a fix
        if remedy == NO_ACTION and r == 0:
            return -miss_penalty
        if tie_penalty and r > 0 and remedy != NO_ACTION:
            best = self.preferred(task)
            if best is not None and remedy != best:
                r -= tie_penalty
        return r


def _write_json(path: Path, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=1, sort_keys=True))
