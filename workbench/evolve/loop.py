"""The evolve loop: select a parent, propose an edit, prove it, queue winners for review.

For each generation g and child k:
  1. parent  ← DGM selection over the archive's scored nodes of earlier generations
  2. edit    ← the brain reads the parent's failed *selection* runs and proposes an edit
  3. check   ← only data files, loads with the scaffold validator — else ``invalid``, no branch
  4. branch  ← commit on ``workbench/evolve/<g>-<k>`` in a worktree of the scaffold repo
  5. subset  ← the parent's failed runs + a few others; the child must score higher there
  6. select  ← the whole selection split: higher fitness, no more silently-missed faults
  7. heldout ← the same test on runs never shown to the brain
  8. review  ← winners become review items (the scaffold diff and both scores)
The archive is saved after every step that changes a node, so ``--resume`` continues a killed
run from the child in flight.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import random
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from model.files import atomic_write_bytes
from scaffold.loader import Scaffold, ScaffoldError
from workbench import DEFAULT_HOME
from workbench.errors import BadInputError
from workbench.evolve import archive as A
from workbench.evolve.archive import Archive, Node
from workbench.evolve.home import init_scaffold, materialise, read_files
from workbench.evolve.mle_suite import MleSuite, default_split
from workbench.evolve.propose import (
    InvalidEdit,
    Proposal,
    editable,
    llm_proposal,
    validate,
)
from workbench.evolve.suite import SuiteCache, load_suite_cache
from workbench.runs import gitops

Log = Callable[[str], None]
BRANCH = "workbench/evolve/{g}-{k}"
SUITES = ("faults", "mle")


def branch_name(g: int, k: int) -> str:
    return gitops.check_branch(BRANCH.format(g=g, k=k))


# ------------------------------------------------------------------ suite cache on disk
def cached_suite(store: Path, home: Path, log: Log) -> SuiteCache:
    """Load the suite once per store version; later runs (and --resume) read a pickle."""
    db = Path(store) / "mlflow.db"
    if not db.is_file():
        raise BadInputError(
            f"no suite store at {store} (build it with `workbench suite make faults --out {store}`)"
        )
    from experiments.faults.suite import SUITE_FILE

    st = db.stat()
    key = hashlib.sha1(
        f"{db.resolve()}|{st.st_mtime_ns}|{st.st_size}|{Path(SUITE_FILE).read_text()}".encode()
    ).hexdigest()[:16]
    path = home / "evolve" / f"suite-{key}.pkl"
    if path.is_file():
        with open(path, "rb") as f:
            return pickle.load(f)
    log(f"reading the suite store {store} (once)")
    cache = load_suite_cache(store)
    atomic_write_bytes(path, pickle.dumps(cache))
    return cache


def fix_outcomes(folder: str | Path, store: Path, jobs: int, log: Log) -> Any:
    """The shared remedy-outcome cache, logging every real rerun it has to do."""
    from workbench.rl.outcomes import FixOutcomes

    fo = FixOutcomes(Path(folder), original_store=store, jobs=jobs)
    fo.on_measured = lambda o: log(
        f"  rerun {o.scenario} with {o.patch}: {'fixed' if o.fixed else 'not fixed'}"
        f" ({o.reason}; {o.seconds:.0f}s)"
    )
    return fo


def mle_suite(home: Path, cfg: dict[str, Any]) -> MleSuite:
    """The ``mle`` suite at the cost an evolution was started with (kept in its archive)."""
    data = os.environ.get("WORKBENCH_MLE_DATA")
    return MleSuite(
        split={k: list(v) for k, v in cfg["split"].items()},
        seeds=int(cfg["seeds"]),
        steps=int(cfg["steps"]),
        time_limit_s=float(cfg["time_limit_s"]),
        workers=int(cfg.get("workers", 2)),
        data_dir=Path(data) if data else home / "mle" / "data",
        out_dir=home / "evolve" / "mle-runs",
    )


# ------------------------------------------------------------------ the run
class Evolution:
    def __init__(
        self,
        home: Path,
        repo: Path,
        cache: SuiteCache,
        archive: Archive,
        *,
        brain: Any = "rules",
        brain_name: str = "rules",
        log: Log = lambda _: None,
    ) -> None:
        self.home, self.repo, self.cache, self.archive = home, repo, cache, archive
        self.brain, self.brain_name, self.log = brain, brain_name, log
        self._tmp = Path(tempfile.mkdtemp(prefix="wb-evolve-"))
        self._scaffolds: dict[str, Scaffold] = {}

    def close(self) -> None:
        shutil.rmtree(self._tmp, ignore_errors=True)

    @property
    def cfg(self) -> dict[str, Any]:
        return self.archive.config

    def scaffold_at(self, sha: str) -> Scaffold:
        if sha not in self._scaffolds:
            self._scaffolds[sha] = self.cache.load(materialise(self.repo, sha, self._tmp / sha))
        return self._scaffolds[sha]

    def score(self, node: Node, split: str, sc: Scaffold | None = None) -> dict[str, Any]:
        """Score ``node`` on ``split`` (kept in the node; failures only for selection)."""
        res = self.cache.score(sc or self.scaffold_at(node.commit), split)
        node.scores[split] = self.cache.brief(res)
        if split == "selection":
            node.failures = self.cache.failures(res)
        return res

    # -------------------------------------------------------------- seed (generation 0)
    def seed(self, start_from: Path | None) -> Node:
        base = gitops.head_sha(self.repo)
        node = Node(id="0-0", gen=0, k=0, parent=None, status=A.SEED, commit=base)
        if start_from is not None:
            # A weaker/other starting point, committed on its own branch so the diff is visible.
            files = {
                rel: (start_from / rel).read_text()
                for rel in read_files(self.repo, base)
                if editable(rel) and (start_from / rel).is_file()
            }
            try:
                validate(read_files(self.repo, base), Proposal(files, "seed"))
            except InvalidEdit as exc:
                raise BadInputError(f"--from {start_from}: {exc}") from None
            node.branch = branch_name(0, 0)
            wt = self.home / "evolve" / "worktrees" / "0-0"
            gitops.ensure_worktree(self.repo, wt, node.branch, base)
            node.commit = gitops.commit_files(wt, files, f"evolve: seed scaffold from {start_from}")
            node.diff = gitops.diff(self.repo, base, node.branch)
            node.description = f"seed from {start_from}"
            gitops.remove_fix_worktree_only(self.repo, wt)
        else:
            node.description = "the scaffold repo's HEAD"
        self.score(node, "selection")
        self.score(node, "heldout")
        fr = node.scores["heldout"].get("fix_rate")
        self.log(
            f"gen 0: selection {node.fitness('selection'):.3f}  heldout {node.fitness('heldout'):.3f}"
            + ("" if fr is None else f"  (heldout fix rate {fr:.3f})")
        )
        return self.archive.put(node)

    # -------------------------------------------------------------- one child
    def discard(self, node: Node) -> None:
        """Remove what a killed or losing child left: its worktree and branch."""
        wt = self.home / "evolve" / "worktrees" / node.id
        br = branch_name(node.gen, node.k)
        gitops.remove_fix(self.repo, br, wt if wt.exists() else None)

    def propose(self, parent: Node, rng: random.Random) -> Proposal:
        files = read_files(self.repo, parent.commit)
        if self.brain_name != "rules":
            try:
                return llm_proposal(self.brain, files, parent.failures, self.brain_name)
            except InvalidEdit as exc:
                self.log(f"  {self.brain_name} brain: {exc}; falling back to rules")
        return self.cache.propose_rules(files, parent.failures, rng)

    def child(self, g: int, k: int) -> Node:
        nid = f"{g}-{k}"
        old = self.archive.nodes.get(nid)
        if old is not None and old.status != A.RUNNING:
            return old  # done before a kill: resume skips it
        if old is not None:
            self.log(f"{nid}: redoing the child in flight when the run stopped")
            self.discard(old)
        rng = random.Random(f"{self.cfg['seed']}:{g}:{k}")
        earlier = Archive(
            self.archive.path,
            self.archive.config,
            {i: n for i, n in self.archive.nodes.items() if n.gen < g},
        )
        parent = self.archive.nodes[earlier.select_parent(rng).id]
        node = self.archive.put(Node(id=nid, gen=g, k=k, parent=parent.id, brain=self.brain_name))

        parent_files = read_files(self.repo, parent.commit)
        tried = {c.description for c in self.archive.children(parent.id) if c.id != nid}
        try:
            for _ in range(5):  # an edit already tried on this parent teaches nothing new
                prop = self.propose(parent, rng)
                if prop.description not in tried:
                    break
            validate(parent_files, prop)
        except InvalidEdit as exc:
            node.status, node.error = A.INVALID, str(exc)
            self.log(f"{nid} ← {parent.id}: invalid edit, no branch ({exc})")
            return self.archive.put(node)
        node.description, node.brain = prop.description, prop.brain
        return self.evaluate(node, parent, prop, rng)

    def evaluate(self, node: Node, parent: Node, prop: Proposal, rng: random.Random) -> Node:
        nid = node.id
        node.branch = branch_name(node.gen, node.k)
        wt = self.home / "evolve" / "worktrees" / nid
        gitops.ensure_worktree(self.repo, wt, node.branch, parent.commit)
        node.commit = gitops.commit_files(wt, prop.files, f"evolve {nid}: {prop.description}"[:200])
        if node.commit == parent.commit:
            self.discard(node)
            node.status, node.branch = A.NO_CHANGE, None
            return self.archive.put(node)
        node.diff = gitops.diff(self.repo, parent.commit, node.branch)
        try:
            sc = self.cache.load(wt)
        except (
            ScaffoldError,
            BadInputError,
        ) as exc:  # validated already; kept as a second line of defence
            self.discard(node)
            node.status, node.error, node.branch = A.INVALID, str(exc), None
            return self.archive.put(node)
        gitops.remove_fix_worktree_only(self.repo, wt)
        self._scaffolds[node.commit] = sc = self.cache.load(
            materialise(self.repo, node.commit, self._tmp / node.commit)
        )

        # stage 1: a small subset — the parent's failures plus a few runs it gets right
        sel = self.cache.ids("selection")
        failed = [f["scenario"] for f in parent.failures][: self.cfg["subset"]]
        others = [s for s in sel if s not in failed]
        subset = failed + rng.sample(others, min(self.cache.subset_extra, len(others)))
        c_sub = self.cache.score(sc, "selection", subset)["fitness"]
        p_sub = self.cache.score(self.scaffold_at(parent.commit), "selection", subset)["fitness"]
        node.scores["subset"] = {"child": c_sub, "parent": p_sub, "runs": subset}
        if c_sub <= p_sub:
            return self.lose(node, A.LOST_SUBSET, f"subset {p_sub:.3f} → {c_sub:.3f}", keep=False)

        # stage 2: the whole selection split
        self.score(node, "selection", sc)
        if not self.beats(node, parent, "selection"):
            return self.lose(node, A.LOST_SELECTION, self.versus(node, parent, "selection"))

        # stage 3: held-out runs the brain never saw
        if parent.fitness("heldout") is None:
            self.score(parent, "heldout")
        self.score(node, "heldout", sc)
        if not self.beats(node, parent, "heldout"):
            return self.lose(node, A.LOST_HELDOUT, self.versus(node, parent, "heldout"))
        node.status = A.WINNER
        node.review_id = self.queue_review(node, parent)
        self.log(
            f"{nid} ← {parent.id}: WINNER {self.versus(node, parent, 'selection')}, "
            f"{self.versus(node, parent, 'heldout')} → review #{node.review_id}: {node.description}"
        )
        return self.archive.put(node)

    @staticmethod
    def beats(child: Node, parent: Node, split: str) -> bool:
        """Higher fitness and no more faulty runs judged healthy (silence can never win)."""
        c, p = child.scores[split], parent.scores[split]
        return c["fitness"] > p["fitness"] and c["missed"] <= p["missed"]

    @staticmethod
    def versus(child: Node, parent: Node, split: str) -> str:
        return f"{split} {parent.fitness(split):.3f} → {child.fitness(split):.3f}"

    def lose(self, node: Node, status: str, why: str, keep: bool = True) -> Node:
        node.status = status
        if not keep:  # never scored in full: it cannot be a parent, so its branch goes
            self.discard(node)
            node.branch = None
        self.log(f"{node.id} ← {node.parent}: {status} ({why}): {node.description}")
        return self.archive.put(node)

    def queue_review(self, node: Node, parent: Node) -> int:
        from workbench.supervisor.review import ReviewItem, ReviewQueue

        ps, pf = parent.scores, node.scores
        item = ReviewItem(
            episode=f"evolve:{self.cfg['run_id']}:{node.id}",
            run_id=f"evolve-{node.id}",
            repo=str(self.repo),
            branch=node.branch,
            base_sha=parent.commit,
            verified=True,
            kind="scaffold",
            data={
                "diagnosis": {
                    "cause": "scaffold edit",
                    "summary": node.description,
                    "confidence": 1.0,
                },
                "remedy": {"remedy_id": f"evolve {node.id}", "description": node.description},
                "findings": [],
                "before": {
                    "eval_metric": "fitness (selection | heldout)",
                    "best_eval": f"{ps['selection']['fitness']:.3f} | {ps['heldout']['fitness']:.3f}",
                    "last_step": parent.id,
                },
                "after": {
                    "best_eval": f"{pf['selection']['fitness']:.3f} | {pf['heldout']['fitness']:.3f}",
                    "last_step": node.id,
                },
                "reasons": [
                    f"selection fitness {ps['selection']['fitness']:.3f} → {pf['selection']['fitness']:.3f} ({pf['selection']['runs']} runs)",
                    f"heldout fitness {ps['heldout']['fitness']:.3f} → {pf['heldout']['fitness']:.3f} ({pf['heldout']['runs']} runs)",
                    f"missed faults selection {ps['selection']['missed']} → {pf['selection']['missed']}, heldout {ps['heldout']['missed']} → {pf['heldout']['missed']}",
                ],
                "scores": {"parent": ps, "child": pf},
                "parent": parent.id,
                "node": node.id,
            },
        )
        return ReviewQueue(self.home / "review.db").upsert(item)

    # -------------------------------------------------------------- generations
    def run(self, generations: int, children: int) -> None:
        for g in range(1, generations + 1):
            for k in range(children):
                self.child(g, k)
            self.archive.config["done_generations"] = max(self.cfg.get("done_generations", 0), g)
            self.archive.save()
            best = self.archive.best()
            # A child that lost its staged checks has no heldout score yet.
            self.log(
                f"gen {g} done: best {best.id} selection {_fmt(best.fitness('selection'))}"
                f" heldout {_fmt(best.fitness('heldout'))}"
            )


def _fmt(score: float | None) -> str:
    return "n/a" if score is None else f"{score:.3f}"


def answer(archive: Archive) -> Node:
    """The run's result: the winner (proven on selection *and* heldout against its parent) with
    the best selection score — earliest on ties; the seed when nothing won."""
    winners = [n for n in archive.nodes.values() if n.status == A.WINNER]
    if not winners:
        return archive.seed()
    return max(winners, key=lambda n: (n.fitness("selection"), -n.gen, -n.k))


def summary(archive: Archive) -> dict[str, Any]:
    seed, best = archive.seed(), answer(archive)
    winners = [n for n in archive.nodes.values() if n.status == A.WINNER]
    counts: dict[str, int] = {}
    for n in archive.nodes.values():
        counts[n.status] = counts.get(n.status, 0) + 1
    top = max(winners, key=lambda n: n.fitness("heldout")) if winners else None
    return {
        "run_id": archive.config.get("run_id"),
        "archive": str(archive.path),
        "config": archive.config,
        "gen0": {"selection": seed.scores.get("selection"), "heldout": seed.scores.get("heldout")},
        "best": {
            "id": best.id,
            "selection": best.scores.get("selection"),
            "heldout": best.scores.get("heldout"),
            "description": best.description,
            "diff": best.diff,
        },
        "best_winner": None
        if top is None
        else {"id": top.id, "heldout": top.scores["heldout"], "review_id": top.review_id},
        "winners": [
            {
                "id": n.id,
                "parent": n.parent,
                "review_id": n.review_id,
                "selection": n.fitness("selection"),
                "heldout": n.fitness("heldout"),
                "description": n.description,
            }
            for n in winners
        ],
        "improved": bool(
            best.fitness("heldout") is not None
            and best.fitness("heldout") > seed.fitness("heldout")
        ),
        "counts": counts,
    }


def _restart(home: Path, repo: Path, path: Path, log: Log) -> None:
    """Discard an earlier run: its branches go, its pending review items are rejected."""
    from workbench.supervisor.review import ReviewQueue

    old = Archive.load(path)
    queue = ReviewQueue(home / "review.db") if (home / "review.db").exists() else None
    for n in old.nodes.values():
        if n.review_id is not None and queue is not None:
            item = queue.get(n.review_id)
            if item.status == "pending":
                queue.reject(n.review_id, "superseded by a new evolution run")
        if n.gen > 0 or n.branch:
            wt = home / "evolve" / "worktrees" / n.id
            gitops.remove_fix(repo, branch_name(n.gen, n.k), wt if wt.exists() else None)
    os.replace(path, path.with_name(f"archive.{old.config.get('run_id', 'old')}.json"))
    log(f"previous evolution run {old.config.get('run_id')} discarded")


def run_evolution(
    *,
    home: str | Path = DEFAULT_HOME,
    store: str | Path | None = None,
    suite: str = "faults",
    generations: int = 5,
    children: int = 3,
    seed: int = 0,
    brain: str | Any = "rules",
    brain_opts: dict[str, Any] | None = None,
    scaffold: str | Path | None = None,
    start_from: str | Path | None = None,
    resume: bool = False,
    restart: bool = False,
    subset: int | None = None,
    mle_steps: int = 4,
    mle_seeds: int = 1,
    mle_time_limit: float = 60.0,
    mle_workers: int = 2,
    mle_split: dict[str, list[str]] | None = None,
    cache: Any = None,
    fixes: bool = True,
    fix_cache: str | Path | None = None,
    fix_jobs: int = 1,
    log: Log = lambda _: None,
) -> dict[str, Any]:
    """Run (or resume) an evolution; returns ``summary(archive)``.

    ``home``: the workbench state folder (archive in ``home/evolve/``, review queue in
    ``home/review.db``); ``scaffold``: the scaffold git repo (``home/scaffold``, created by
    ``workbench init`` — or here, when missing); ``store``: the built suite
    (``home/suites/faults``); ``brain``: ``rules``, ``openai``/``local`` (+ ``brain_opts``) or a
    chat model object; ``start_from``: a scaffold folder to start from instead of the repo HEAD.
    ``fixes`` (faults suite, built store): also score whether each run's top remedy really
    fixes it (``fix_rate``), measured by rerunning into ``fix_cache`` (default
    ``home/evolve/fix-outcomes``; share one between runs so every rerun is paid once).
    """
    if suite not in SUITES:
        raise BadInputError(f"unknown suite {suite!r} (known: {', '.join(SUITES)})")
    if generations < 0 or children < 1:
        raise BadInputError("--generations must be ≥ 0 and --children ≥ 1")
    home = Path(home).resolve()
    repo = Path(scaffold).resolve() if scaffold else home / "scaffold"
    if not (repo / ".git").exists():
        repo, sha, _ = init_scaffold(repo)
        log(f"scaffold repo created at {repo} ({sha[:10]})")
    path = home / "evolve" / "archive.json"
    if path.exists() and restart:
        _restart(home, repo, path, log)
    if path.exists() and not resume:
        raise BadInputError(
            f"an evolution run exists in {path.parent}: --resume to continue it, --restart to discard it"
        )
    if resume and not path.exists():
        raise BadInputError(f"nothing to resume: no archive at {path}")
    if resume:
        arch = Archive.load(path)
        generations = (
            max(generations, arch.config.get("generations", 0))
            if generations
            else arch.config["generations"]
        )
        arch.config["generations"] = generations
        brain_name = arch.config.get("brain", "rules")
    else:
        brain_name = brain if isinstance(brain, str) else getattr(brain, "_llm_type", "llm")
        arch = Archive(path, {
            "run_id": time.strftime("%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:6],
            "suite": suite, "store": str(store) if store else None, "seed": seed,
            "generations": generations, "children": children,
            "subset": 4 if subset is None else subset,
            "brain": brain_name, "scaffold": str(repo),
            "from": str(start_from) if start_from else None,
        })  # fmt: skip
        if suite == "faults" and fixes and cache is None:
            arch.config["fix_cache"] = str(
                Path(fix_cache).resolve() if fix_cache else home / "evolve" / "fix-outcomes"
            )
            arch.config["fix_jobs"] = fix_jobs
        if suite == "mle":
            arch.config["subset"] = 1 if subset is None else subset
            arch.config["mle"] = {
                "steps": mle_steps, "seeds": mle_seeds, "time_limit_s": mle_time_limit,
                "workers": mle_workers, "split": mle_split or default_split(),
            }  # fmt: skip
        arch.save()
    if cache is None and arch.config.get("suite", "faults") == "mle":
        cache = mle_suite(home, arch.config["mle"])
    elif cache is None:
        store_dir = Path(store) if store else home / "suites" / "faults"
        cache = cached_suite(store_dir, home, log)
        if arch.config.get("fix_cache"):
            cache.fixes = fix_outcomes(
                arch.config["fix_cache"], store_dir, arch.config.get("fix_jobs", 1), log
            )

    if isinstance(brain, str):
        from workbench.supervisor.brains import make_brain

        model = make_brain(brain_name, **(brain_opts or {})) if brain_name != "rules" else None
    else:
        model = brain
    ev = Evolution(home, repo, cache, arch, brain=model, brain_name=brain_name, log=log)
    try:
        if not any(n.status == A.SEED for n in arch.nodes.values()):
            ev.seed(Path(arch.config["from"]) if arch.config.get("from") else None)
        ev.run(arch.config["generations"], arch.config["children"])
    finally:
        ev.close()
    return summary(arch)
