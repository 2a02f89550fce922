"""The supervisor: a hand-written LangGraph ``StateGraph`` that fixes one failing run.

    monitor → diagnose → propose → patch → [approve] → relaunch → verify → report
                            ↑________ next remedy (bounded) ________|

The brain decides through tool calls (``workbench.supervisor.brains.base.decide``); the nodes do the side
effects, each idempotent so a resumed node (after ``kill -9``) repeats nothing: the fix branch
is claimed by episode key before it is created, the relaunch adopts a run it already started,
the review item is keyed by episode. State is plain JSON, checkpointed after every node.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypedDict

from langgraph.graph import END, START, StateGraph
from langgraph.types import interrupt

from model.files import atomic_write_text
from trainer.tags import Tag
from workbench.doctor.types import PatchOp
from workbench.errors import BadInputError, WorkbenchError
from workbench.runs import gitops, launch
from workbench.supervisor import configedit
from workbench.supervisor.brains.base import decide, load_prompts, start_messages
from workbench.supervisor.brains.rules import RulesChatModel
from workbench.supervisor.patches import (
    KnobAmbiguous,
    KnobMissing,
    PatchError,
    apply_blocks,
    parse_blocks,
    patch_repo_config,
    resolve,
)
from workbench.supervisor.tools import (
    DIAGNOSE_TOOLS,
    PROPOSE_TOOLS,
    EpisodeContext,
    ToolCallError,
    compact_finding,
    round_numbers,
)
from workbench.supervisor.trajectory import Trajectory
from workbench.supervisor.verify import judge, run_summary


class EpisodeState(TypedDict, total=False):
    thread_id: str
    run_id: str
    repo: str
    home: str
    tracking_uri: str
    max_attempts: int
    approve: bool
    launch_cmd: str | None  # --launch / --config given instead of (or over) workbench.yaml
    config_path: str | None
    # filled by monitor
    experiment_id: str
    experiment_name: str
    config_rel: str
    base_sha: str
    params: dict
    findings: list[dict]
    doctor: dict
    before: dict
    skipped: list[dict]  # remedies whose knob this repo lacks: {id, reason}
    # filled as the episode goes
    diagnosis: dict | None
    attempts: list[dict]  # finished attempts (failed ones; the last may be the fix)
    current: dict | None  # the attempt in flight
    status: str  # running | healthy | no_data | fixed | failed | declined
    review_id: int | None
    reward: float
    brain_calls: int  # decisions asked of the configured brain (rules excluded)
    fallbacks: int  # of those, how many the rules brain had to take over


@dataclass
class Deps:
    """What the nodes use but the checkpoint does not hold (rebuilt on resume)."""

    brain: Any
    fallback: Any = field(default_factory=RulesChatModel)
    scaffold_dir: Path | None = None
    backend: str = "local"
    run_timeout_s: float | None = None
    monitor_timeout_s: float = 600.0
    progress: Callable[[str], None] = lambda msg: None
    doctor: Callable[[str, str], Any] | None = None  # (uri, run_id) -> RunVerdict
    # A folder of measured outcomes: (base commit, the patched files, launch) -> the run that
    # already ran exactly them. A hit reuses that finished run instead of training it again
    # (RL and evaluation replay the same scenario many times); the verdict is still judged
    # from the run itself. None: every attempt relaunches.
    reuse_runs: Path | None = None


def _tracking(uri: str):
    from workbench.runs.tracking import TrackingClient

    return TrackingClient(launch.absolute_tracking_uri(uri))


def _doctor(deps: Deps, uri: str, run_id: str):
    if deps.doctor is not None:
        return deps.doctor(uri, run_id)
    from workbench.doctor import diagnose_run

    return diagnose_run(launch.absolute_tracking_uri(uri), run_id)


def _traj(state: EpisodeState) -> Trajectory:
    return Trajectory(Path(state["home"]) / "trajectories" / f"{state['thread_id']}.jsonl")


def _ctx(state: EpisodeState) -> EpisodeContext:
    attempts = state.get("attempts", [])
    return EpisodeContext(
        tracking=_tracking(state["tracking_uri"]),
        run_id=state["run_id"],
        repo=Path(state["repo"]),
        base_sha=state["base_sha"],
        config_rel=state["config_rel"],
        findings=state["findings"],
        doctor=state["doctor"],
        tried=[a["remedy_id"] for a in attempts],
        attempts=[{k: a.get(k) for k in ("n", "remedy_id", "error", "reasons")} for a in attempts],
        diagnosis=_as_seen(state.get("diagnosis")),
        skipped=state.get("skipped", []),
    )


def _ask(deps: Deps, state: EpisodeState, phase: str, tools, check=None, **values):
    """One brain decision: (tool name, args, who, counts). Falls back to the rules brain when
    the brain fails twice; ``counts`` are the state's ``brain_calls``/``fallbacks`` after it.
    The ``ask`` event names the phase and the tools on offer, so a trajectory alone rebuilds
    every prompt the brain saw (``workbench.rl.episodes``)."""
    prompts = load_prompts(deps.scaffold_dir)
    ctx, traj = _ctx(state), _traj(state)
    calls, fallbacks = state.get("brain_calls", 0), state.get("fallbacks", 0)
    for brain in (deps.brain, deps.fallback):
        rules = isinstance(brain, RulesChatModel)
        traj.add(
            "ask", phase=phase, tools=[t.name for t in tools], brain="rules" if rules else "brain"
        )
        messages = start_messages(prompts, phase, **values)
        for m in messages:
            traj.add("message", role=m.type, content=m.content)
        got = decide(
            brain, tools, messages, ctx, traj, retry_template=prompts["retry"], check=check
        )
        calls += not rules
        if got is not None:
            counts = {"brain_calls": calls, "fallbacks": fallbacks}
            return (*got, "rules" if rules else "brain", counts)
        if brain is not deps.fallback:
            fallbacks += 1
            traj.add("fallback", to="rules", phase=phase)
    raise WorkbenchError("the rules brain made no decision")  # the playbook is broken


# ------------------------------------------------------------------------------ nodes


def monitor(state: EpisodeState, deps: Deps) -> dict:
    tc = _tracking(state["tracking_uri"])
    deadline = time.monotonic() + deps.monitor_timeout_s
    while True:  # wait for the run to end or to fail visibly
        info = tc.run(state["run_id"])
        verdict = _doctor(deps, state["tracking_uri"], state["run_id"])
        if info.status != "RUNNING" or verdict.status == "failing" or time.monotonic() > deadline:
            break
        time.sleep(2.0)
    tags = info.tags
    repo = Path(state["repo"])
    spec = launch.repo_spec(repo, state.get("launch_cmd"), state.get("config_path"))
    config_rel = state.get("config_path") or tags.get(Tag.CONFIG) or spec.config
    base_sha = (
        tags.get(Tag.GIT_COMMIT) or tags.get("mlflow.source.git.commit") or gitops.head_sha(repo)
    )
    exp = tc.mlflow.get_experiment(info.experiment_id)
    findings = [f.model_dump() for f in verdict.findings]
    remedies, skipped = _applicable(
        repo, gitops.check_sha(base_sha), config_rel, spec.launch, info.params,
        [r.model_dump(mode="json") for r in verdict.remedies],
    )  # fmt: skip
    doctor = {
        "diagnosis": verdict.diagnosis.model_dump() if verdict.diagnosis else None,
        "remedies": remedies,
    }
    traj = _traj(state)
    traj.add(
        "start", run_id=state["run_id"], repo=state["repo"], base_sha=base_sha, config=config_rel
    )
    traj.add("findings", findings=findings, doctor=doctor)
    for sk in skipped:
        traj.add("remedy_skipped", **sk)
        deps.progress(f"remedy {sk['id']} skipped: {sk['reason']}")
    deps.progress(f"run {state['run_id'][:8]}: {verdict.status}, {len(findings)} finding(s)")
    if verdict.note:
        deps.progress(f"run {state['run_id'][:8]} not judged: {verdict.note}")
    return {
        "experiment_id": info.experiment_id,
        "experiment_name": exp.name,
        "config_rel": config_rel,
        "base_sha": gitops.check_sha(base_sha),
        "params": info.params,
        "findings": findings,
        "doctor": doctor,
        "before": run_summary(tc, state["run_id"]),
        "skipped": skipped,
        "attempts": state.get("attempts", []),
        # healthy / no_data: nothing to fix (no metric point, or none read as a loss, is not a
        # failure to fix; the note above says which names to map)
        "status": verdict.status if verdict.status in ("healthy", "no_data") else "running",
    }


def _launch_file(repo: Path, sha: str) -> tuple[str | None, str]:
    """(path, text) of the file holding the launch command, when the repo has one."""
    try:
        return "workbench.yaml", gitops.show_file(repo, sha, "workbench.yaml")
    except gitops.GitOpsError:
        return None, ""


def _applicable(repo, sha, config_rel, launch_cmd, params, remedies) -> tuple[list, list]:
    """Split the doctor's remedies into those whose knobs this repo has and skipped ones (with
    the reason). The config must parse in its own format and the launch command must not give
    a flag twice: either is bad input that stops the episode here, before any branch."""
    try:
        text = gitops.show_file(repo, sha, config_rel)
    except gitops.GitOpsError as exc:
        raise BadInputError(f"{config_rel}: not in the repo at {sha[:12]} ({exc})") from None
    config = configedit.parse_config(text, configedit.config_format(config_rel), config_rel)
    flags = configedit.parse_flags(launch_cmd)
    keep, skipped = [], []
    for r in remedies:
        try:
            for op in r.get("patch") or []:
                resolve(
                    op["key"], config, flags, params=params, config_name=config_rel, op=op["op"]
                )
        except KnobMissing as exc:
            skipped.append({"id": r["id"], "reason": str(exc)})
            continue
        except KnobAmbiguous:
            pass  # asked when (if) this remedy is chosen
        keep.append(r)
    return keep, skipped


def diagnose(state: EpisodeState, deps: Deps) -> dict:
    findings = round_numbers([compact_finding(f) for f in state["findings"]])
    name, args, who, counts = _ask(
        deps, state, "diagnose", DIAGNOSE_TOOLS, run_id=state["run_id"], findings=findings
    )
    diagnosis = {**args.model_dump(), "by": who}
    doctor = state["doctor"].get("diagnosis") or {}
    agrees = doctor.get("cause") == diagnosis["cause"]
    if diagnosis["confidence"] is None:  # a bare cause: the doctor's confidence if it agrees
        diagnosis["confidence"] = float(doctor.get("confidence", 0.5)) if agrees else 0.5
    if not diagnosis["summary"] and agrees:
        diagnosis["summary"] = doctor.get("summary", "")
    _traj(state).add("diagnosis", **diagnosis)
    deps.progress(f"diagnosis: {diagnosis['cause']} ({diagnosis['confidence']:.2f}) by {who}")
    return {"diagnosis": diagnosis, **counts}


def _as_seen(diagnosis: dict | None) -> dict | None:
    """The diagnosis as the propose step shows it: what was concluded, not who concluded it
    (the same prompt whichever brain diagnosed, so a policy is asked what its teacher was)."""
    return {k: v for k, v in diagnosis.items() if k != "by"} if diagnosis else None


def propose(state: EpisodeState, deps: Deps) -> dict:
    attempts = state.get("attempts", [])
    n = len(attempts) + 1
    if n > state["max_attempts"]:
        return {"current": None, "status": "failed"}
    tried = {a["remedy_id"] for a in attempts}
    offered = {r["id"]: r for r in state["doctor"].get("remedies", []) if r["id"] not in tried}

    def check(name: str, args) -> None:
        if name != "give_up" and args.remedy_id in tried:
            raise ToolCallError(f"remedy {args.remedy_id!r} was already tried; pick another")
        if name == "propose_config_patch" and not args.ops:
            remedy = offered.get(args.remedy_id)
            if remedy is None or not remedy.get("patch"):
                known = ", ".join(i for i, r in offered.items() if r.get("patch")) or "none"
                raise ToolCallError(
                    f"remedy {args.remedy_id!r} is not one of read_findings' remedies with a "
                    f"patch ({known}); name one, or give ops"
                )

    name, args, who, counts = _ask(
        deps, state, "propose", PROPOSE_TOOLS, check=check, run_id=state["run_id"],
        diagnosis=_as_seen(state.get("diagnosis")), config=state["config_rel"], attempts=_ctx(state).attempts,
    )  # fmt: skip
    if name == "give_up":
        _traj(state).add("give_up", reason=args.reason, by=who)
        return {"current": None, "status": "failed", **counts}
    cur = {"n": n, "kind": "config" if name == "propose_config_patch" else "code", "by": who}
    cur.update(args.model_dump(mode="json"))
    if cur["kind"] == "config" and not cur["ops"]:  # the remedy by id: its own patch
        cur["ops"] = list(offered[cur["remedy_id"]]["patch"])
        cur["rationale"] = cur["rationale"] or offered[cur["remedy_id"]].get("description", "")
    _traj(state).add("proposal", **cur)
    deps.progress(f"attempt {n}: {cur['remedy_id']} ({cur['kind']} patch, by {who})")
    return {"current": cur, **counts}


def _patched_files(state: EpisodeState, cur: dict) -> dict[str, str]:
    """The attempt's files; a config attempt also sets ``cur["launch"]`` and ``cur["changes"]``."""
    repo, sha = Path(state["repo"]), state["base_sha"]
    if cur["kind"] == "config":
        config_rel = state["config_rel"]
        launch_rel, launch_text = _launch_file(repo, sha)
        spec = launch.repo_spec(repo, state.get("launch_cmd"), state.get("config_path"))
        files = {config_rel: gitops.show_file(repo, sha, config_rel)}
        if launch_rel and state.get("launch_cmd") is None:
            files[launch_rel] = launch_text
        ops = [PatchOp.model_validate(op) for op in cur["ops"]]
        changed, cmd, changes = patch_repo_config(
            files, ops, config_rel=config_rel, launch=spec.launch,
            launch_rel=launch_rel if launch_rel in files else None, params=state.get("params"),
        )  # fmt: skip
        cur["launch"] = cmd if cmd != spec.launch else None
        cur["changes"] = changes
        return changed
    blocks = parse_blocks(cur["blocks"])
    try:
        files = {b.path: gitops.show_file(repo, sha, b.path) for b in blocks}
    except gitops.GitOpsError as exc:
        raise PatchError(str(exc)) from None
    return apply_blocks(files, blocks)


def claim_branch(state: EpisodeState, key: str) -> tuple[str, Path]:
    """The fix branch of this attempt: the first free ``workbench/fix/<run>-<n>``, claimed by
    an exclusive file *before* the branch exists, so a resumed step finds the same one. Claims
    live beside the repo's git metadata, not in the home: episodes of several homes on one
    repo (parallel evaluations, seeds) never take the same branch."""
    root = Path(state["home"]) / "worktrees"
    root.mkdir(parents=True, exist_ok=True)
    repo = Path(state["repo"])
    claims = gitops.claims_dir(repo)
    owner = f"{Path(state['home']).resolve()}::{key}"  # thread ids are unique per home only
    for n in range(1, 1000):
        branch = gitops.fix_branch(state["run_id"], n)
        claim = claims / f"{state['run_id']}-{n}.claim"
        if claim.exists():
            if claim.read_text() == owner:
                return branch, root / f"{state['run_id']}-{n}"
            continue
        if gitops.branch_exists(repo, branch):
            continue
        try:
            fd = os.open(claim, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            continue
        with os.fdopen(fd, "w") as fh:
            fh.write(owner)
        return branch, root / f"{state['run_id']}-{n}"
    raise WorkbenchError(f"no free fix branch for run {state['run_id']}")


def _commit_message(state: EpisodeState, cur: dict, key: str) -> str:
    clean = lambda s: re.sub(r"[\x00-\x08\x0b-\x1f\x7f]", " ", str(s))[:400]  # noqa: E731
    d = state.get("diagnosis") or {}
    findings = "; ".join(f"{f['kind']}@{f.get('step')}: {f['evidence']}" for f in state["findings"])
    change = (
        "; ".join(cur.get("changes") or [])
        or ", ".join(f"{op['key']} {op['op']} {op.get('value')}" for op in cur["ops"])
        if cur["kind"] == "config"
        else "code patch (SEARCH/REPLACE)"
    )
    return (
        f"workbench fix: {clean(cur['remedy_id'])} for run {state['run_id']}\n\n"
        f"Run: {state['run_id']}\nFindings: {clean(findings)}\n"
        f"Diagnosis: {clean(d.get('cause'))} ({d.get('confidence', 0):.2f}): {clean(d.get('summary'))}\n"
        f"Remedy: {clean(cur['remedy_id'])}: {clean(cur.get('rationale', ''))}\n"
        f"Change: {clean(change)}\n\nWorkbench-Episode: {key}\n"
    )


def _fail(state: EpisodeState, cur: dict, error: str, cleanup: bool = True) -> dict:
    if cleanup and cur.get("branch"):
        gitops.remove_fix(Path(state["repo"]), cur["branch"], Path(cur["worktree"]))
    failed = {**cur, "error": error, "passed": False}
    _traj(state).add("attempt_failed", n=cur["n"], remedy_id=cur["remedy_id"], error=error)
    return {"attempts": [*state.get("attempts", []), failed], "current": None}


def _changes(state: EpisodeState, cur: dict, files: dict[str, str]) -> list[str]:
    """The files the patch really changes (empty: a no-op). A config attempt's files are
    already only those its knob edits changed."""
    if cur["kind"] == "config":
        return list(files)
    repo, sha = Path(state["repo"]), state["base_sha"]
    return [p for p, text in files.items() if gitops.show_file(repo, sha, p) != text]


def patch(state: EpisodeState, deps: Deps) -> dict:
    cur = dict(state["current"])
    key = f"{state['thread_id']}/{cur['n']}"
    try:  # checked before any branch exists; an ambiguous knob or a bad config stops here
        files = _patched_files(state, cur)
    except KnobMissing as exc:
        deps.progress(f"attempt {cur['n']}: remedy {cur['remedy_id']} skipped: {exc}")
        return _fail(state, cur, f"skipped: {exc}")
    except PatchError as exc:
        deps.progress(f"attempt {cur['n']}: patch does not apply: {exc}")
        return _fail(state, cur, f"patch does not apply: {exc}")
    if not _changes(
        state, cur, files
    ):  # e.g. the value is already set: relaunching would only cost time
        deps.progress(f"attempt {cur['n']}: {cur['remedy_id']} changes nothing here; skipped")
        _traj(state).add("no_op", n=cur["n"], remedy_id=cur["remedy_id"], kind=cur["kind"])
        skipped = {
            **cur,
            "no_op": True,
            "passed": False,
            "error": "no_op: the patch changes nothing",
        }
        return {"attempts": [*state.get("attempts", []), skipped], "current": None}
    branch, worktree = claim_branch(state, key)
    cur.update(branch=branch, worktree=str(worktree.resolve()))
    try:
        gitops.exclude_path(Path(state["repo"]), ".workbench/")
        gitops.ensure_worktree(Path(state["repo"]), worktree, branch, state["base_sha"])
        cur["commit"] = gitops.commit_files(worktree, files, _commit_message(state, cur, key))
    except (gitops.GitOpsError, PatchError, OSError) as exc:
        return _fail(state, cur, f"git: {exc}")
    _traj(state).add(
        "patch", branch=branch, commit=cur["commit"], files=sorted(files),
        changes=cur.get("changes", []),
    )  # fmt: skip
    deps.progress(f"attempt {cur['n']}: committed {cur['commit'][:8]} on {branch}")
    return {"current": cur}


def approve_gate(state: EpisodeState, deps: Deps) -> dict:
    cur = state["current"]
    answer = interrupt(
        {
            "question": f"relaunch run {state['run_id']} with {cur['remedy_id']} on {cur['branch']}?",
            "diff": gitops.diff(Path(state["repo"]), state["base_sha"], cur["branch"]),
        }
    )
    ok = str(answer).strip().lower() in ("y", "yes", "true", "approve")
    _traj(state).add("approval", answer=str(answer), approved=ok)
    if ok:
        return {}
    return {**_fail(state, cur, "relaunch declined by a person"), "status": "declined"}


def _outcome_key(state: EpisodeState, cur: dict) -> str:
    """What a relaunch's result depends on: the base commit, the patched files, the launch."""
    import hashlib

    files = gitops.diff(Path(state["repo"]), state["base_sha"], cur["branch"])
    launch_cmd = cur.get("launch") or state.get("launch_cmd") or ""
    blob = json.dumps([state["base_sha"], state["config_rel"], files, launch_cmd])
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


def _reused_run(state: EpisodeState, record: Path) -> tuple[str, str] | None:
    """(run id, status) of the finished run ``record`` names, if it still exists."""
    if not record.exists():
        return None
    run_id = json.loads(record.read_text())["run_id"]
    try:
        status = _tracking(state["tracking_uri"]).run(run_id).status
    except WorkbenchError:
        return None
    return (run_id, status) if status in launch.TERMINAL else None


def relaunch(state: EpisodeState, deps: Deps) -> dict:
    cur = dict(state["current"])
    key = f"{state['thread_id']}/{cur['n']}"
    record = Path(deps.reuse_runs) / f"{_outcome_key(state, cur)}.json" if deps.reuse_runs else None
    if record is not None and (hit := _reused_run(state, record)) is not None:
        rid, status = hit
        cur.update(new_run_id=rid, run_status=status, log="", reused_run=True)
        _traj(state).add("launch", run_id=rid, status=status, reused=True, measured_before=True)
        deps.progress(f"attempt {cur['n']}: this exact change already ran as {rid[:8]}; reused")
        return {"current": cur}
    deps.progress(f"attempt {cur['n']}: relaunching on {cur['branch']}")
    try:
        res = launch.relaunch(
            worktree=Path(cur["worktree"]),
            config=state["config_rel"],
            tracking_uri=state["tracking_uri"],
            experiment_id=state["experiment_id"],
            experiment_name=state["experiment_name"],
            episode_key=key,
            tags={Tag.PARENT_RUN: state["run_id"], Tag.BRANCH: cur["branch"]},
            home=Path(state["home"]),
            backend=deps.backend,
            timeout_s=deps.run_timeout_s,
            progress=deps.progress,
            launch=cur.get("launch") or state.get("launch_cmd"),
        )
    except launch.LaunchExited:  # a broken launch command: stop, leave no branch behind
        gitops.remove_fix(Path(state["repo"]), cur["branch"], Path(cur["worktree"]))
        raise
    except WorkbenchError as exc:
        return _fail(state, cur, f"relaunch: {exc}")
    cur.update(new_run_id=res.run_id, run_status=res.status, log=res.log_path)
    _traj(state).add("launch", run_id=res.run_id, status=res.status, reused=res.reused)
    if record is not None and res.status in launch.TERMINAL:
        record.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(record, json.dumps({"run_id": res.run_id, "branch": cur["branch"]}))
    return {"current": cur}


def verify(state: EpisodeState, deps: Deps) -> dict:
    cur = dict(state["current"])
    verdict = _doctor(deps, state["tracking_uri"], cur["new_run_id"])
    after = run_summary(_tracking(state["tracking_uri"]), cur["new_run_id"])
    out = judge(
        state["before"], after, state["findings"], [f.model_dump() for f in verdict.findings]
    )
    cur.update(passed=out.passed, reward=out.reward, reasons=out.reasons, after=after)
    _traj(state).add("outcome", **out.to_json())
    deps.progress(
        f"attempt {cur['n']}: {'verified' if out.passed else 'not verified'}: {'; '.join(out.reasons)}"
    )
    if out.passed:
        return {"current": cur, "status": "fixed", "reward": 1.0}
    last = cur["n"] >= state["max_attempts"]
    if last:  # keep the last branch for the reviewer, marked unverified
        return {"current": cur, "status": "failed", "reward": 0.0}
    return _fail(state, cur, "; ".join(out.reasons))


def report(state: EpisodeState, deps: Deps) -> dict:
    from workbench.supervisor.report import write_report
    from workbench.supervisor.review import ReviewItem, ReviewQueue

    cur = state.get("current")
    status = state.get("status", "failed")
    status = "failed" if status == "running" else status
    review_id = None
    path = write_report(state)
    if cur and cur.get("branch") and cur.get("new_run_id"):
        item = ReviewItem(
            episode=state["thread_id"],
            run_id=state["run_id"],
            repo=str(Path(state["repo"]).resolve()),
            branch=cur["branch"],
            base_sha=state["base_sha"],
            worktree=cur["worktree"],
            new_run_id=cur["new_run_id"],
            verified=bool(cur.get("passed")),
            status="pending" if cur.get("passed") else "unverified",
            data={
                "findings": state["findings"],
                "diagnosis": state.get("diagnosis"),
                "remedy": {
                    k: cur.get(k) for k in ("remedy_id", "kind", "ops", "blocks", "rationale")
                },
                "before": state["before"],
                "after": cur.get("after"),
                "reasons": cur.get("reasons"),
                "report": str(path),
                "plots": [str(p) for p in path.parent.glob(f"{state['thread_id']}*.png")],
            },
        )
        review_id = ReviewQueue(Path(state["home"]) / "review.db").upsert(item)
        tc = _tracking(state["tracking_uri"])
        tc.set_tag(cur["new_run_id"], Tag.VERIFIED, str(bool(cur.get("passed"))).lower())
        tc.set_tag(cur["new_run_id"], Tag.REVIEW_ID, str(review_id))
    reward = float(state.get("reward", 0.0))
    _traj(state).add("end", status=status, reward=reward, review_id=review_id, report=str(path))
    deps.progress(
        f"episode {state['thread_id']}: {status}" + (f", review #{review_id}" if review_id else "")
    )
    return {"status": status, "review_id": review_id, "reward": reward}


# ------------------------------------------------------------------------------ wiring


def _after_monitor(s: EpisodeState) -> str:
    return "report" if s["status"] in ("healthy", "no_data") else "diagnose"


def _after_propose(s: EpisodeState) -> str:
    return "patch" if s.get("current") else "report"


def _after_patch(s: EpisodeState) -> str:
    if not s.get("current"):
        return "propose"
    return "approve_gate" if s.get("approve") else "relaunch"


def _after_gate(s: EpisodeState) -> str:
    return "relaunch" if s.get("current") else "report"


def _after_relaunch(s: EpisodeState) -> str:
    return "verify" if s.get("current") else "propose"


def _after_verify(s: EpisodeState) -> str:
    return "propose" if not s.get("current") else "report"


def build_graph(deps: Deps, checkpointer=None):
    g = StateGraph(EpisodeState)
    for name, fn in [
        ("monitor", monitor), ("diagnose", diagnose), ("propose", propose), ("patch", patch),
        ("approve_gate", approve_gate), ("relaunch", relaunch), ("verify", verify),
        ("report", report),
    ]:  # fmt: skip
        g.add_node(name, lambda s, fn=fn: fn(s, deps))
    g.add_edge(START, "monitor")
    g.add_conditional_edges("monitor", _after_monitor, ["diagnose", "report"])
    g.add_edge("diagnose", "propose")
    g.add_conditional_edges("propose", _after_propose, ["patch", "report"])
    g.add_conditional_edges("patch", _after_patch, ["propose", "approve_gate", "relaunch"])
    g.add_conditional_edges("approve_gate", _after_gate, ["relaunch", "report"])
    g.add_conditional_edges("relaunch", _after_relaunch, ["verify", "propose"])
    g.add_conditional_edges("verify", _after_verify, ["propose", "report"])
    g.add_edge("report", END)
    return g.compile(checkpointer=checkpointer)
