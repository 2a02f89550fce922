"""One evolution generation over the demo's own runs (``workbench demo`` ends with it).

The demo's LM runs are fault-suite scenarios, so their answer key comes from the suite YAML;
two of them select, one is held out (the foreign-style repos' runs need their own programs to
rerun, so they are fixed by the demo but not evolved on).  The scaffold home is ``HOME/scaffold``.

The shipped scaffold already gets these four runs right and its top remedies fix them (the
demo's fix episodes just verified that), so one generation from it has nothing to win.  The
demo therefore starts evolution from a declared weaker variant — the shipped scaffold with a
playbook ``min_score`` of 6.0 instead of 2.0, committed as branch ``workbench/evolve/0-0`` —
under which the divergence run is left "unknown" (no cause, no remedy).  Fitness includes the remedy term: the fix episodes' verified outcomes are recorded
in the outcome cache, and anything else is measured by rerunning (``workbench.rl.outcomes``).
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import yaml

from workbench.evolve.loop import run_evolution
from workbench.evolve.suite import SuiteCache, SuiteRun

# demo scenario → (suite scenario id, split)
LABELS = {
    "healthy": (None, "selection"),
    "divergence": ("lm-lr-too-high", "selection"),
    "nan": ("lm-fp-overflow", "heldout"),
}
SEED_MIN_SCORE = 6.0  # the demo's weaker starting point (shipped: 2.0)


def cache_from_runs(tracking_uri: str, runs: dict[str, str]) -> SuiteCache:
    """A suite cache over named runs (demo name → run id) labelled from the fault suite."""
    from experiments.faults.suite import load_suite
    from workbench.doctor.core import series_of
    from workbench.runs.tracking import TrackingClient

    scen = {s.id: s for s in load_suite().scenarios}
    client = TrackingClient(tracking_uri)
    out = []
    for name, rid in runs.items():
        sid, split = LABELS.get(name, (None, "selection"))
        sc = scen.get(sid) if sid else None
        expected = sc.expected.model_dump() if sc else {"findings": [], "cause": "healthy"}
        onset = int((sc.fault or {}).get("start_step", 0)) if sc and sc.fault else None
        info = client.run(rid)
        out.append(
            SuiteRun(
                name,
                split,
                info,
                series_of(client.histories(rid)),
                client.log_text(rid),
                expected,
                onset,
            )
        )
    return SuiteCache(out)


def weaker_seed(dest: Path) -> Path:
    """The packaged scaffold's data files with the demo's stricter ``min_score``."""
    from scaffold.loader import PACKAGED

    shutil.copytree(PACKAGED, dest, ignore=shutil.ignore_patterns("*.py", "__pycache__"))
    path = dest / "playbook.yaml"
    path.write_text(
        re.sub(r"^min_score:.*$", f"min_score: {SEED_MIN_SCORE}", path.read_text(), flags=re.M)
    )
    return dest


def demo_fixes(
    folder: Path,
    tracking_uri: str,
    runs: Mapping[str, str],
    configs: Mapping[str, Path],
    episodes: list[dict[str, Any]],
) -> Any:
    """Remedy outcomes for the demo's runs: the fix episodes' first attempts, recorded as
    measured; any other (run, patch) is rerun from the run's config in the demo repo."""
    from scaffold.loader import load_scaffold
    from workbench.rl.outcomes import FixOutcome, FixOutcomes, canonical_patch

    fo = FixOutcomes(
        folder,
        original_store=tracking_uri,
        originals=dict(runs),
        configs={n: ("lm", yaml.safe_load(Path(p).read_text()) or {}) for n, p in configs.items()},
        jobs=2,
    )
    playbook = load_scaffold(None).playbook  # the scaffold the episodes ran with
    for ep in episodes:
        spec = playbook.causes.get(ep.get("diagnosis") or "")
        rem = next((r for r in spec.remedies if r.id == ep.get("remedy")), None) if spec else None
        if rem is None or ep.get("attempts") != 1 or ep.get("scenario") not in runs:
            continue  # only a first attempt tells what the top remedy alone does
        fo.record(
            FixOutcome(
                ep["scenario"],
                canonical_patch(p.model_dump() for p in rem.patch),
                bool(ep.get("verified")),
                ep.get("after"),
                f"{'verified' if ep.get('verified') else 'not verified'} by fix episode "
                f"{ep.get('thread_id')}",
                0.0,
                ep.get("before"),
            )
        )
    return fo


def evolve_demo(
    tracking_uri: str, runs: dict[str, str], home: str | Path, *, children: int = 3,
    configs: Mapping[str, Path] | None = None, episodes: list[dict[str, Any]] | None = None,
    log: Callable[[str], None] = lambda _: None,
) -> dict[str, Any]:  # fmt: skip
    """Run one generation on the demo's runs from the weaker seed; the summary lists any review
    item it queued.  ``configs`` (run name → its config file in the demo repo) and
    ``episodes`` (the fix episodes' summaries) add the remedy term to the fitness."""
    home = Path(home)
    cache = cache_from_runs(tracking_uri, runs)
    if configs:
        cache.fixes = demo_fixes(
            home / "evolve" / "fix-outcomes", tracking_uri, runs, configs, episodes or []
        )
        cache.fixes.on_measured = lambda o: log(
            f"  rerun {o.scenario} with {o.patch}: {'fixed' if o.fixed else 'not fixed'}"
        )
    seed = home / "evolve" / "demo-seed"
    shutil.rmtree(seed, ignore_errors=True)
    log(f"evolution starts from the shipped scaffold with min_score {SEED_MIN_SCORE} (shipped 2.0)")
    return run_evolution(
        home=home, cache=cache, generations=1, children=children, restart=True,
        start_from=weaker_seed(seed), log=log,
    )  # fmt: skip
