"""One evolution generation over the demo's own runs (``workbench demo`` ends with it).

The demo's runs are fault-suite scenarios, so their answer key comes from the suite YAML; two
of them select, two are held out.  The scaffold home is ``HOME/scaffold``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from workbench.evolve.loop import run_evolution
from workbench.evolve.suite import SuiteCache, SuiteRun

# demo scenario → (suite scenario id, split)
LABELS = {
    "healthy": (None, "selection"),
    "divergence": ("lm-lr-too-high", "selection"),
    "nan": ("lm-fp-overflow", "heldout"),
    "expert-collapse": ("lm-router-imbalance", "heldout"),
}


def cache_from_runs(tracking_uri: str, runs: dict[str, str]) -> SuiteCache:
    """A suite cache over named runs (demo name → run id) labelled from the fault suite."""
    from experiments.faults.suite import load_suite
    from workbench.doctor.core import series_of
    from workbench.tracking import TrackingClient

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


def evolve_demo(
    tracking_uri: str, runs: dict[str, str], home: str | Path, *, children: int = 3,
    log: Callable[[str], None] = lambda _: None,
) -> dict[str, Any]:  # fmt: skip
    """Run one generation on the demo's runs; the summary lists any review item it queued."""
    return run_evolution(
        home=home, cache=cache_from_runs(tracking_uri, runs), generations=1, children=children,
        restart=True, log=log,
    )  # fmt: skip
