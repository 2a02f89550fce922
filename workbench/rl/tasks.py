"""The RL task format: one task per fault-suite scenario, the remedy menu and how the policy
names a remedy (its catalog letter, its menu letter, or its id), and how an answer is parsed."""

from __future__ import annotations

import functools
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from model.chat import END_OF_TURN
from model.files import atomic_write_text
from workbench.errors import BadInputError
from workbench.rl.outcomes import canonical_patch
from workbench.supervisor.patches import touches_harness

_LETTER = "You fix failed training runs. Answer with the letter of exactly one remedy."
SYSTEM = {
    "code": _LETTER,
    "letter": _LETTER,
    "id": "You fix failed training runs. Answer with the id of exactly one remedy.",
}
NO_ACTION = "no_action"


# ---------------------------------------------------------------------------- the task
@dataclass(frozen=True)
class Task:
    scenario: str
    split: str
    findings: tuple[str, ...]  # what the doctor reported
    cause: str  # the doctor's diagnosis ("healthy": no finding)
    teacher: str  # the rules brain's answer: the playbook's first remedy for ``cause``
    known_fixes: tuple[str, ...]  # suite's fixes (canonical patch JSON), for ``suite_verified``
    menu: tuple[str, ...] = (NO_ACTION,)  # the answers on offer, in menu (letter) order
    healthy: bool | None = None  # the suite's label (None: healthy iff no known fix)


def remedy_catalog() -> dict[str, list[dict]]:
    """Remedy id -> its config patch, from the scaffold's playbook (what propose can pick)."""
    from scaffold.loader import load_scaffold

    cat: dict[str, list[dict]] = {}
    for spec in load_scaffold(None).playbook.causes.values():
        for r in spec.remedies:
            cat.setdefault(r.id, [p.model_dump() for p in r.patch])
    cat[NO_ACTION] = []
    return cat


@functools.cache
def playbook_order(cause: str) -> tuple[str, ...]:
    """The cause's remedies in the playbook's ranking (its preference), injection-free.
    Cached: the packaged playbook does not change while a run trains, and the tie-break asks
    for it on every rollout."""
    from scaffold.loader import load_scaffold

    pb = load_scaffold(None).playbook
    spec = pb.causes.get(cause) or (pb.unknown if cause == "unknown" else None)
    return tuple(r.id for r in (spec.remedies if spec else []) if not touches_harness(r.patch))


def rules_answer(cause: str) -> str:
    """The playbook's first remedy for the cause that a real run can apply (no_action: none)."""
    return (playbook_order(cause) or (NO_ACTION,))[0]


def cause_menu(cause: str) -> tuple[str, ...]:
    """What the supervisor's propose step offers for a diagnosis: the playbook's remedies for
    the cause and ``no_action`` (leave the run), sorted by id. Sorted, not in the playbook's
    ranking: with menu-position letters (``answer="letter"``) the ranking would make the
    teacher's answer always ``A``, the warm start would never have to read the prompt, and RL
    could not learn one diagnosis apart from the others (tried: the tiny policy collapsed to
    ``A`` everywhere). Remedies that edit the suite's fault-injection entry
    are left out: no real run has one."""
    return tuple(sorted((*playbook_order(cause), NO_ACTION)))


def doctor_view(store: Path, cache: Path | None = None) -> dict[str, dict]:
    """scenario -> {findings, cause}: the run doctor's verdicts on a built suite store."""
    if cache is not None and cache.exists():
        data = json.loads(cache.read_text())
        if data.get("store") == str(store.resolve()):
            return data["view"]
    from workbench.doctor.evaluate import evaluate_suite

    res = evaluate_suite(store, split="all")
    view = {
        s["scenario"]: {"findings": s["predicted_kinds"], "cause": s["predicted_cause"]}
        for s in res["scores"]
    }
    if cache is not None:
        atomic_write_text(
            cache,
            json.dumps({"store": str(store.resolve()), "view": view}, indent=1, sort_keys=True),
        )
    return view


def load_tasks(
    suite: str = "faults", view: dict[str, dict] | None = None, menu: str = "cause"
) -> tuple[list[Task], dict[str, list[dict]]]:
    """(tasks, remedy catalog). ``view``: the doctor's verdicts; None uses the suite labels.
    ``menu``: ``cause`` offers the diagnosed cause's remedies (what the propose step sees),
    ``all`` every playbook remedy (each answer then needs a measurement on every run)."""
    if suite != "faults":
        raise BadInputError(f"unknown suite {suite!r} (known: faults)")
    if menu not in ("cause", "all"):
        raise BadInputError(f"menu must be cause or all, not {menu!r}")
    from experiments.faults.suite import load_suite

    catalog = remedy_catalog()
    tasks = []
    for sc in load_suite().scenarios:
        seen = (view or {}).get(sc.id) or {
            "findings": sc.expected.findings,
            "cause": sc.expected.cause,
        }
        tasks.append(
            Task(
                scenario=sc.id,
                split=sc.split,
                findings=tuple(sorted(seen["findings"])),
                cause=seen["cause"],
                teacher=rules_answer(seen["cause"]),
                known_fixes=tuple(canonical_patch(r.patch) for r in sc.remedies),
                menu=cause_menu(seen["cause"]) if menu == "cause" else tuple(sorted(catalog)),
                healthy=sc.expected.cause == "healthy",  # a code bug has no known fix either
            )
        )
    return tasks, catalog


def label(i: int) -> str:
    return chr(ord("A") + i) if i < 26 else f"R{i}"


@functools.cache
def _catalog_ids() -> tuple[str, ...]:
    return tuple(sorted(remedy_catalog()))


def answer_name(remedy: str, actions: Sequence[str], answer: str = "code") -> str:
    """What the policy writes for ``remedy``: its catalog letter (``code``: one letter per
    remedy, the same on every menu), its letter on this menu (``letter``) or its id."""
    if answer == "code":
        return label(_catalog_ids().index(remedy))
    if answer == "letter":
        return label(list(actions).index(remedy))
    return remedy


def prompt_messages(task: Task, actions: list[str], answer: str = "code") -> list[dict[str, str]]:
    """What the policy sees: the doctor's findings and diagnosis and the remedies on offer,
    each after its letter (``code``, ``letter``) or by id alone (``id``)."""
    if answer not in SYSTEM:
        raise BadInputError(f"answer must be code, letter or id, not {answer!r}")
    findings = ", ".join(task.findings) if task.findings else "none"
    if answer == "id":
        menu = ", ".join(actions)
    else:
        menu = ", ".join(f"{answer_name(a, actions, answer)} {a}" for a in actions)
    user = f"Remedies: {menu}\nFindings: {findings}\nDiagnosis: {task.cause}"
    return [{"role": "system", "content": SYSTEM[answer]}, {"role": "user", "content": user}]


def parse_action(text: str, actions: Sequence[str], answer: str = "code") -> str | None:
    """The remedy an answer names: its letter (see ``answer_name``) or its id, alone."""
    text = text.strip().removesuffix(END_OF_TURN).strip()
    for a in actions:
        if text in (answer_name(a, actions, answer), a):
            return a
    return None
