"""Does a remedy really fix a run?  Measured once by rerunning it, then read from a cache.

``FixOutcomes(cache).outcome(scenario, patch)`` takes the scenario's training config (the fault
suite's ``scenario_config``, or one given explicitly), applies the config patch (dotted-key
``set``/``mul``/``add``/``delete`` edits, the playbook's remedy format), trains it as a
subprocess exactly like ``workbench suite make`` does (same command, same hung-run watchdog,
a scratch MLflow store under the cache folder), and verifies the new run against the
scenario's original run with ``workbench.supervisor.verify.judge`` (finished past the failure step, the
original finding kinds gone, the original best eval reached).

The answer is cached per (scenario, canonical patch JSON) in ``CACHE/outcomes.json``: written
atomically (temp file + ``os.replace``) under an ``fcntl`` lock, and each measurement holds a
per-key lock, so two processes sharing the cache never measure the same fix twice.  A patch
the suite cannot express (empty: a code change; an invalid config) is ``fixed=False`` without
running anything.  Verification uses the packaged scaffold's detectors, never the variant being
evolved, so an outcome does not depend on who asks.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import yaml

from model.files import atomic_write_text, file_lock
from trainer.tags import Tag
from workbench.errors import BadInputError


@dataclass(frozen=True)
class FixOutcome:
    scenario: str
    patch: str  # canonical JSON of the patch ops
    fixed: bool
    best_eval: float | None  # the rerun's best eval metric (None: not run / no finite value)
    reason: str  # "verified", or why not ("; "-joined)
    seconds: float  # wall time of the rerun (0 when nothing ran)
    original_best: float | None = None  # the original run's best eval metric

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def canonical_patch(patch: Iterable[Any]) -> str:
    """One JSON text per patch meaning: ops as {key, op, value}, keys sorted, no spaces."""
    ops = []
    for p in patch:
        d = p.model_dump(mode="json") if hasattr(p, "model_dump") else dict(p)
        ops.append({"key": str(d["key"]), "op": str(d["op"]), "value": d.get("value")})
    return json.dumps(ops, sort_keys=True, separators=(",", ":"))


def _key(scenario: str, patch: str) -> str:
    return f"{scenario}::{patch}"


class FixOutcomes:
    """Cached, measured remedy outcomes for the scenarios of a built fault suite.

    ``cache``: a folder (``outcomes.json``, the scratch store ``runs/``, locks).
    ``original_store``: the built suite (a folder with ``mlflow.db``) or a tracking URI; the
    original run of a scenario is its newest run tagged ``workbench.scenario`` unless
    ``originals`` maps scenario → run id.  ``configs`` maps scenario → (program, config dict)
    for runs that are not suite scenarios (the demo's).  ``jobs``: reruns in parallel in
    ``outcomes``.
    """

    def __init__(
        self,
        cache: Path,
        *,
        suite_file: Path | None = None,
        original_store: Path | str | None = None,
        jobs: int = 1,
        originals: Mapping[str, str] | None = None,
        configs: Mapping[str, tuple[str, dict[str, Any]]] | None = None,
        scaffold: Any = None,
        stall_timeout_s: float | None = None,
        run_timeout_s: float | None = None,
    ) -> None:
        self.dir = Path(cache)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.path = self.dir / "outcomes.json"
        self.suite_file, self.original_store, self.jobs = suite_file, original_store, jobs
        self._originals = dict(originals) if originals is not None else None
        self._configs = dict(configs or {})
        self._scaffold = scaffold
        self._stall, self._timeout = stall_timeout_s, run_timeout_s
        self._suite: Any = None
        self._lock = threading.Lock()
        self.measured = 0  # reruns done by this object (cache hits do not count)
        self.on_measured: Callable[[FixOutcome], None] | None = None  # progress callback

    # ------------------------------------------------------------------ the cache file
    @contextmanager
    def _flock(self, name: str):
        path = self.dir / "locks" / name
        path.parent.mkdir(exist_ok=True)
        with file_lock(path):
            yield

    def _read(self) -> dict[str, dict[str, Any]]:
        try:
            return json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}
        except json.JSONDecodeError as exc:
            raise BadInputError(f"{self.path}: not a valid outcome cache ({exc})") from None

    def _store(self, out: FixOutcome) -> None:
        with self._flock("outcomes.lock"):  # read-modify-write: another process may add too
            data = self._read()
            data[_key(out.scenario, out.patch)] = out.to_json()
            atomic_write_text(self.path, json.dumps(data, indent=1, sort_keys=True))

    def record(self, out: FixOutcome) -> None:
        """Keep an outcome measured elsewhere (e.g. a supervisor episode's verified fix)."""
        self._store(out)

    def lookup(self, scenario: str, patch: Iterable[Any]) -> FixOutcome | None:
        """The cached outcome, or None (never runs anything)."""
        hit = self._read().get(_key(scenario, canonical_patch(patch)))
        return FixOutcome(**hit) if hit else None

    def all(self) -> list[FixOutcome]:
        return [FixOutcome(**v) for v in self._read().values()]

    # ------------------------------------------------------------------ measuring
    def outcome(self, scenario: str, patch: Iterable[Any]) -> FixOutcome:
        """The outcome of ``patch`` on ``scenario``: from the cache, else measured once."""
        text = canonical_patch(patch)
        hit = self._read().get(_key(scenario, text))
        if hit:
            return FixOutcome(**hit)
        digest = hashlib.sha1(_key(scenario, text).encode()).hexdigest()[:16]
        with self._flock(f"{digest}.lock"):  # one measurement per key across processes
            hit = self._read().get(_key(scenario, text))
            if hit:
                return FixOutcome(**hit)
            out = self._measure(scenario, text, digest)
            self._store(out)
            with self._lock:
                self.measured += int(out.seconds > 0)
            if self.on_measured is not None:
                self.on_measured(out)
            return out

    def outcomes(self, items: Iterable[tuple[str, Iterable[Any]]]) -> list[FixOutcome]:
        """Several outcomes, ``jobs`` reruns at a time (cache hits cost nothing)."""
        items = [(s, list(p)) for s, p in items]
        with ThreadPoolExecutor(max_workers=max(1, self.jobs)) as pool:
            return list(pool.map(lambda sp: self.outcome(*sp), items))

    def _suite_obj(self) -> Any:
        if self._suite is None:
            from experiments.faults.suite import SUITE_FILE, load_suite

            self._suite = load_suite(self.suite_file or SUITE_FILE)
        return self._suite

    def base_config(self, scenario: str) -> tuple[str, dict[str, Any]]:
        """(program, full training config) of the unpatched scenario."""
        if scenario in self._configs:
            program, cfg = self._configs[scenario]
            return program, dict(cfg)
        from experiments.faults.suite import scenario_config

        suite = self._suite_obj()
        sc = next((s for s in suite.scenarios if s.id == scenario), None)
        if sc is None:
            raise BadInputError(f"unknown scenario {scenario!r}")
        return sc.program, scenario_config(suite, sc)

    def _harness(self, scenario: str) -> dict[str, str]:
        if scenario in self._configs:
            return {}
        from experiments.faults.suite import harness_env

        sc = next((s for s in self._suite_obj().scenarios if s.id == scenario), None)
        return harness_env(sc) if sc else {}

    def _uri(self) -> str:
        store = self.original_store
        if store is None:
            raise BadInputError("FixOutcomes needs original_store to judge a rerun")
        if isinstance(store, str) and "://" in store:
            return store
        db = Path(store) / "mlflow.db"
        if not db.is_file():
            raise BadInputError(f"no suite store at {store}")
        return f"sqlite:///{db.resolve()}"

    def original_run(self, scenario: str) -> str:
        """The run a fix is judged against: given, or the scenario's newest suite run."""
        if self._originals is not None and scenario in self._originals:
            return self._originals[scenario]
        from mlflow.tracking import MlflowClient

        from experiments.faults.builder import EXPERIMENT

        client = MlflowClient(self._uri())
        exp = client.get_experiment_by_name(EXPERIMENT)
        found = (
            client.search_runs(
                [exp.experiment_id],
                filter_string=f"tags.`{Tag.SCENARIO}` = '{scenario}'",
                order_by=["attributes.start_time DESC"],
                max_results=1,
            )
            if exp
            else []
        )
        if not found:
            raise BadInputError(f"no original run of scenario {scenario!r} in {self._uri()}")
        return found[0].info.run_id

    def _measure(self, scenario: str, text: str, digest: str) -> FixOutcome:
        from experiments.faults.suite import PatchOp, SuiteError
        from trainer.config import ConfigError, dump_config, parse_config
        from workbench.supervisor.patches import apply_ops

        ops = json.loads(text)
        if not ops:
            return FixOutcome(
                scenario, text, False, None, "empty patch: a code change, not a config patch", 0.0
            )
        program, base = self.base_config(scenario)
        try:
            patched = apply_ops(base, [PatchOp(**o) for o in ops])  # the one guarded path
            cfg = dump_config(parse_config(program, patched, source=f"patched {scenario}"))
        except (SuiteError, ConfigError, ValueError, BadInputError) as exc:
            msg = str(exc).splitlines()[0][:300]
            return FixOutcome(scenario, text, False, None, f"patch not applicable: {msg}", 0.0)
        orig_id = self.original_run(scenario)  # before training: a missing original fails fast
        t0 = time.monotonic()
        run_id, hung = self._train(scenario, program, cfg, digest)
        seconds = round(time.monotonic() - t0, 2)
        return self._judge(scenario, text, orig_id, run_id, hung, seconds)

    # ------------------------------------------------------------------ one rerun
    def _train(
        self, scenario: str, program: str, cfg: dict[str, Any], digest: str
    ) -> tuple[str | None, bool]:
        from experiments.faults.builder import (
            EXPERIMENT,
            prepare_store,
            run_watched,
            train_command,
        )

        runs = self.dir / "runs"
        with self._flock("store.lock"):  # the first process creates the schema alone
            uri = prepare_store(runs)
        token = f"{digest}-{uuid.uuid4().hex[:8]}"
        config = runs / "configs" / f"{scenario}-{digest}.yaml"
        atomic_write_text(config, yaml.safe_dump(cfg, sort_keys=False))
        suite = self._suite_obj()
        hung, _ = run_watched(
            train_command(
                program, config, uri, {Tag.FIX_SCENARIO: scenario, Tag.FIX_OUTCOME: token}
            ),
            runs / "logs" / f"{scenario}-{digest}.log",
            runs,
            self._stall or suite.stall_timeout_s,
            self._timeout or suite.run_timeout_s,
            self._harness(scenario),  # the same world as the original run
        )  # a hung or endless rerun did not fix anything
        from mlflow.tracking import MlflowClient

        client = MlflowClient(uri)
        exp = client.get_experiment_by_name(EXPERIMENT)
        found = client.search_runs(
            [exp.experiment_id],
            filter_string=f"tags.`{Tag.FIX_OUTCOME}` = '{token}'",
            max_results=1,
        )
        return (found[0].info.run_id if found else None), hung

    def _judge(
        self, scenario: str, text: str, orig_id: str, run_id: str | None, hung: bool, secs: float
    ) -> FixOutcome:
        from scaffold.loader import load_scaffold
        from workbench.doctor import diagnose_run
        from workbench.runs.tracking import TrackingClient
        from workbench.supervisor.verify import judge, run_summary

        sc = self._scaffold or load_scaffold(None)
        orig = TrackingClient(self._uri())
        before = run_summary(orig, orig_id, sc)
        if run_id is None:
            why = "the rerun did not start" + (" (killed: no progress)" if hung else "")
            return FixOutcome(scenario, text, False, None, why, secs, before["best_eval"])
        new = TrackingClient(f"sqlite:///{(self.dir / 'runs' / 'mlflow.db').resolve()}")
        old_findings = [f.model_dump() for f in diagnose_run(orig, orig_id, sc).findings]
        new_findings = [f.model_dump() for f in diagnose_run(new, run_id, sc).findings]
        after = run_summary(new, run_id, sc)
        res = judge(before, after, old_findings, new_findings)
        reasons = (["killed: no progress"] if hung else []) + list(res.reasons)
        return FixOutcome(
            scenario,
            text,
            res.passed and not hung,
            after["best_eval"],
            "; ".join(reasons),
            secs,
            before["best_eval"],
        )
