"""The RL loop: episodes of the ``local`` policy on the fault suite -> CISPO updates.

    workbench train rl --policy DIR --suite faults [--iterations N] [--window W] [--json]

What one run does (trainer.rl holds the primitives; this module only wires them):

1. **Task** (one per fault-suite scenario): the prompt is what the supervisor's propose step
   sees -- the run doctor's findings and diagnosis (``--store``: the doctor's real verdicts on
   a built suite; without it the suite's labels stand in for them) and the diagnosed cause's
   remedies plus ``no_action`` (leave the run alone), each after its letter. A remedy's letter
   is its place in the playbook catalog, the same on every menu. The policy answers with one
   letter.
2. **Reward = verification.** A remedy counts when its *patch* fixes the run: measured once per
   (scenario, remedy) by ``measure(task, patch)`` and cached in ``<out>/remedy_outcomes.json``.
   ``no_action`` is the empty patch: it counts when the unpatched run already passes (a healthy
   run); proposing any patch for such a run is a false alarm (reward 0). The default
   ``suite_verified`` accepts a patch equal to one of the suite's known fixes (those were
   measured by rerunning); ``fix_outcomes_measure`` reruns the scenario's training with the
   patch (``workbench.fix_outcomes``).
3. **SFT warm start** from ``rules``-brain answers (the playbook's first remedy for the
   diagnosed cause) on the selection split. Where that first remedy does not verify, the teacher
   is wrong, and RL -- which only sees rewards -- can do better: that is where the lift comes from.
4. **Rollouts** through the real path by default (``via="server"``): our OpenAI-compatible
   server (``workbench serve``) on the current checkpoint, the recording gateway in front of it;
   each rollout is a chat completion in its own gateway session, read back from the session
   JSONL as token-level samples (exact prompt/completion ids + behaviour log-probs). Consumed in
   windowed-FIFO order; every ``batch`` rollouts make one CISPO update (group baseline: G
   rollouts per scenario). After each iteration: a checkpoint, ``POST /admin/reload``, metrics
   (MLflow when a tracking URI is given). ``via="inprocess"`` is a fast path for tests and
   sweeps: the same samples drawn from a frozen in-process copy of the policy.
5. **Evaluation**: greedy success rate on the held-out split, after SFT and after RL.
"""

from __future__ import annotations

import copy
import functools
import json
import random
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from model.checkpoint import atomic_write_text
from trainer.rl.advantages import compute_advantages
from trainer.rl.data import Sample, completion_sample
from trainer.rl.forward import behaviour_logprobs
from trainer.rl.rollout import RolloutPool, windowed_rollouts
from trainer.rl.update import UpdateConfig, make_optimizer, rl_step, sft_step
from workbench.errors import BadInputError
from workbench.fix_outcomes import canonical_patch

_LETTER = "You fix failed training runs. Answer with the letter of exactly one remedy."
SYSTEM = {
    "code": _LETTER,
    "letter": _LETTER,
    "id": "You fix failed training runs. Answer with the id of exactly one remedy.",
}
NO_ACTION = "no_action"


@dataclass(frozen=True)
class RLConfig:
    iterations: int = 32
    window: int = 4
    group_size: int = 32  # rollouts per scenario (the group baseline)
    scenarios_per_iter: int = 16  # all of the selection split
    batch: int = 16  # consumed rollouts per update
    max_pending: int = 16
    sft_steps: int = 200  # at most: the warm start stops once it imitates the teacher
    eval_tasks: int | None = None  # cap on tasks per success-rate evaluation
    lr: float = 1e-4
    sft_lr: float = 3e-3
    sft_smoothing: float = 0.3  # teacher 1 - eps, the other menu answers eps in total
    sft_mass: float = 0.9  # warm start until menu answers hold this much probability ...
    sft_tol: float = 0.1  # ... and each answer's probability is this close to its target
    menu: str = "cause"  # cause: the diagnosed cause's remedies (what propose sees) | all
    temperature: float = 1.5  # exploration: the rare right answer must keep being drawn
    max_new_tokens: int = 0  # 0: the longest remedy id + end of turn
    seed: int = 0
    workers: int = 4
    loss: str = "cispo"
    # CISPO's old policy: "behaviour" = mu = softmax(logits / T), the distribution the rollout
    # was drawn from (recomputed from the sampling weights); "raw" = the untempered log-probs
    # the server reports (then r = pi / pi_old ignores the temperature: rare answers, drawn
    # more often at T > 1, are not down-weighted)
    ratio: str = "behaviour"
    adv_norm: bool = True  # divide each group's advantages by its reward std (GRPO's scaling)
    # Training reward of a remedy that verifies while a remedy the playbook ranks higher also
    # verifies on that run: 1 - tie_penalty (among working fixes, prefer the playbook's
    # choice). Success rates always count plain verification.
    tie_penalty: float = 0.1
    # Training reward of no_action on a run the doctor found broken: -miss_penalty (leaving a
    # diagnosed failure alone is worse than trying the playbook's fix, even one that fails).
    miss_penalty: float = 0.1
    via: str = "server"  # server (serve + gateway) | inprocess (fast path for tests/sweeps)
    # How the policy names its remedy (one decision token, so sampling can explore):
    # "code": the remedy's own letter in the playbook catalog, the same on every menu;
    # "letter": letters by position on this menu (ablation: a tiny policy learns letter
    # preferences shared across tasks, e.g. the many tasks whose teacher is B pushed A down on
    # the one task where A was right); "id": the remedy id (up to 12 tokens: subword tokens
    # shared between ids, e.g. "more_", carried preferences across tasks; docs/rl.md).
    answer: str = "code"

    def __post_init__(self) -> None:
        """Bad settings fail here, before any work (they used to surface after the warm start)."""
        choices = {"loss": ("cispo", "ppo", "grpo"), "ratio": ("behaviour", "raw"),
                   "via": ("server", "inprocess"), "menu": ("cause", "all"),
                   "answer": tuple(SYSTEM)}  # fmt: skip
        for name, ok in choices.items():
            if getattr(self, name) not in ok:
                raise BadInputError(
                    f"--{name} must be one of {', '.join(ok)}, got {getattr(self, name)!r}"
                )
        if min(self.iterations, self.window, self.group_size) < 1 or self.sft_steps < 0:
            raise BadInputError(
                "--iterations, --window and --group-size must be >= 1, --sft-steps >= 0"
            )
        if not 0.0 <= self.temperature <= 2.0 or self.lr <= 0:
            raise BadInputError("--temperature must be in [0, 2] and --lr > 0")
        if not 0.0 <= self.sft_smoothing < 1.0:
            raise BadInputError("--sft-smoothing must be in [0, 1)")


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
    return tuple(r.id for r in (spec.remedies if spec else []) if not touches_injection(r.patch))


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
        _write_json(cache, {"store": str(store.resolve()), "view": view})
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
            )
        )
    return tasks, catalog


# ---------------------------------------------------------------------------- rewards
def suite_verified(task: Task, patch: list[dict]) -> bool:
    """Stand-in measurement: a patch fixes the run iff it is one of the suite's known fixes
    (each measured by rerunning the scenario); the empty patch passes iff the run is healthy."""
    if not patch:
        return not task.known_fixes
    return canonical_patch(patch) in task.known_fixes


def fix_outcomes_measure(
    cache_dir: Path, store: Path | None = None, measure_new: bool = True, **kw: Any
) -> Callable[[Task, list[dict]], bool]:
    """Real measurement (``workbench.fix_outcomes``): rerun the scenario's training with the
    patch and verify it against the original run, cached in ``cache_dir`` (shared with other
    users of that cache). The empty patch (``no_action``) passes when the doctor found nothing
    on the original run. ``measure_new=False``: only cached measurements count, the suite
    stand-in answers the rest. ``measure.sources`` counts where each answer came from."""
    from workbench.fix_outcomes import FixOutcomes

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
INJECTION_KEY = "faults"


def touches_injection(patch: list[Any]) -> bool:
    keys = (op["key"] if isinstance(op, dict) else op.key for op in patch)
    return any(str(k).split(".")[0] == INJECTION_KEY for k in keys)


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
        if touches_injection(self.catalog[remedy]):  # a benchmark artifact, not a fix
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
    text = text.strip().removesuffix("[e~[").strip()
    for a in actions:
        if text in (answer_name(a, actions, answer), a):
            return a
    return None


# ---------------------------------------------------------------------------- policy I/O
class Policy:
    """The policy checkpoint + tokenizer, with rendering and sampling helpers."""

    def __init__(self, model, tokenizer, answer: str = "code") -> None:
        from model.chat import END_OF_TURN

        self.model, self.tok, self.answer = model, tokenizer, answer
        self.eos = tokenizer.token_to_id(END_OF_TURN)

    def encode(self, text: str) -> list[int]:
        return self.tok.encode(text, add_special_tokens=False).ids

    def prompt_ids(self, task: Task, actions: list[str]) -> list[int]:
        """Exactly what the server renders for a chat request with thinking off."""
        from model.chat import render_messages

        text = render_messages(prompt_messages(task, actions, self.answer), enable_thinking=False)
        return self.encode(text)

    def answer_ids(self, action: str, actions: list[str]) -> list[int]:
        return self.encode(answer_name(action, actions, self.answer)) + [self.eos]

    def decode(self, ids: list[int]) -> str:
        return self.tok.decode([i for i in ids if i != self.eos])

    @torch.no_grad()
    def sample(self, model, prompt: list[int], n: int, temperature: float, max_new: int, gen):
        """n completions of one prompt, each with its tokens' log-probs under ``model`` (raw,
        untempered: what the server reports and CISPO's ratio needs)."""
        out = model.generate(
            torch.tensor([prompt] * n),
            max_new_tokens=max_new,
            temperature=temperature,
            stop_token_ids=[self.eos],
            generator=gen,
        )[:, len(prompt) :].tolist()
        outs = [ids[: ids.index(self.eos) + 1] if self.eos in ids else ids for ids in out]
        _, raw = behaviour_logprobs(model, prompt, outs, 0.0)  # each distinct answer once
        return list(zip(outs, raw, strict=True))


def load_policy(path: Path, seed: int = 0):
    """Load ``path``; a missing or empty folder gets a fresh tiny policy (+ the shipped tokenizer)."""
    from model.config import MiniMaxM2Config
    from model.modeling import MiniMaxM2ForCausalLM
    from model.tokenizer import default_tokenizer, load_tokenizer, save_tokenizer

    if (path / "config.json").exists():
        model = MiniMaxM2ForCausalLM.from_pretrained(path)
        tok = load_tokenizer(path) if (path / "tokenizer.json").exists() else default_tokenizer()
        return model, tok
    if path.exists() and any(path.iterdir()):
        raise BadInputError(f"--policy {path}: not a checkpoint folder (no config.json)")
    torch.manual_seed(seed)
    cfg = MiniMaxM2Config.from_preset(
        "tiny", num_hidden_layers=2, use_mtp=False, moe_backend="grouped"
    )
    model = MiniMaxM2ForCausalLM(cfg)
    tok = default_tokenizer()
    model.save_pretrained(path)
    save_tokenizer(tok, path)
    return model, tok


def greedy_answers(policy: Policy, model, tasks: list[Task], cache, max_new: int) -> dict:
    """Greedy decoding on each task: scenario -> {answer, reward, source, patch}."""
    model.eval()
    out = {}
    for t in tasks:
        [(ids, _)] = policy.sample(model, policy.prompt_ids(t, t.menu), 1, 0.0, max_new, None)
        act = parse_action(policy.decode(ids), t.menu, policy.answer)
        reward, source = cache.judge(t, act)
        patch = cache.catalog.get(act, []) if act else []
        out[t.scenario] = {"answer": act or "?", "reward": reward, "source": source,
                           "teacher": t.teacher, "patch": patch}  # fmt: skip
    return out


def success_rate(answers: dict[str, dict]) -> float:
    """The fraction of tasks whose greedy answer verifies."""
    return sum(a["reward"] for a in answers.values()) / max(len(answers), 1)


# ---------------------------------------------------------------------------- rollouts
class InProcessRollouts:
    """Fast path (tests, sweeps): a frozen in-process copy of the policy plays the server."""

    via = "inprocess"

    def __init__(self, policy: Policy, model, cfg: RLConfig, max_new: int) -> None:
        self.policy, self.cfg, self.max_new = policy, cfg, max_new
        self.served = copy.deepcopy(model).eval()
        self.version = 0
        self.gen = torch.Generator().manual_seed(cfg.seed)

    def group(self, task: Task, n: int, session: str) -> tuple[list[tuple[list, list, list]], int]:
        """n rollouts of ``task``: [(prompt ids, completion ids, logprobs)], weights version."""
        served, version = self.served, self.version
        prompt = self.policy.prompt_ids(task, task.menu)
        outs = self.policy.sample(served, prompt, n, self.cfg.temperature, self.max_new, self.gen)
        return [(prompt, ids, lps) for ids, lps in outs], version

    def publish(self, model, ckpt: Path, version: int) -> bool:
        self.served, self.version = copy.deepcopy(model).eval(), version
        return False

    def close(self) -> None:
        pass


class ServerRollouts:
    """The real path: ``workbench serve`` on the policy checkpoint, ``workbench gateway`` in
    front of it (both subprocesses on free ports). A rollout group is one chat completion with
    ``n`` choices in its own gateway session; its samples are read back from the session JSONL
    (exact token ids + the server's log-probs). ``publish`` = ``POST /admin/reload``."""

    via = "server"
    MAX_N = 16  # choices per chat completion the server accepts

    def __init__(self, ckpt: Path, sessions: Path, cfg: RLConfig, max_new: int) -> None:
        import subprocess
        import sys

        self.cfg, self.max_new = cfg, max_new
        self.sessions = sessions
        self.server_port, self.gateway_port = _free_port(), _free_port()
        self.server = f"http://127.0.0.1:{self.server_port}"
        self.gateway = f"http://127.0.0.1:{self.gateway_port}"
        # The functions behind `workbench serve` / `workbench gateway`, without importing the
        # whole CLI (seconds saved per start on a busy machine).
        serve = (
            "import sys; from model.serving import serve; "
            "serve(sys.argv[1], port=int(sys.argv[2]), model_name='policy', max_batch=64)"
        )
        gateway = (
            "import sys; from workbench.gateway import serve_gateway; "
            "serve_gateway(sys.argv[1], sys.argv[2], port=int(sys.argv[3]))"
        )
        logs = sessions.parent
        logs.mkdir(parents=True, exist_ok=True)
        self.procs = []
        for name, args in (
            ("serve", [serve, str(ckpt), str(self.server_port)]),
            ("gateway", [gateway, f"{self.server}/v1", str(sessions), str(self.gateway_port)]),
        ):
            log = open(logs / f"{name}.log", "ab")  # noqa: SIM115 (lives as long as the process)
            self.procs.append(
                (
                    subprocess.Popen(
                        [sys.executable, "-c", *args],
                        stdout=log,
                        stderr=subprocess.STDOUT,
                        preexec_fn=_die_with_parent,
                    ),
                    log,
                )
            )
        self._wait_healthy()
        self.versions = {self._health()["weights_version"]: 0}  # server version -> update count

    def _health(self) -> dict:
        import httpx

        return httpx.get(f"{self.server}/health", timeout=5).json()

    def _wait_healthy(self, timeout: float = 180.0) -> None:
        import httpx

        t0 = time.monotonic()
        for url in (self.server, self.gateway):
            while True:
                if any(p.poll() is not None for p, _ in self.procs):
                    self.close()
                    raise BadInputError(
                        f"the policy server or gateway exited; see {self.sessions.parent}/*.log"
                    )
                try:
                    if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if time.monotonic() - t0 > timeout:
                    self.close()
                    raise BadInputError(f"{url} did not come up within {timeout:.0f}s")
                time.sleep(0.3)

    def group(self, task: Task, n: int, session: str) -> tuple[list[tuple[list, list, list]], int]:
        import httpx

        from trainer.rl.data import samples_from_session

        out, versions = [], []
        for j, k in enumerate(range(0, n, self.MAX_N)):  # the server allows n <= 16 per call
            name = session if j == 0 else f"{session}-{j}"
            body = {
                "model": "policy",
                "messages": prompt_messages(task, task.menu, self.cfg.answer),
                "n": min(self.MAX_N, n - k),
                "temperature": self.cfg.temperature,
                "max_tokens": self.max_new,
                "chat_template_kwargs": {"enable_thinking": False},
            }
            r = httpx.post(
                f"{self.gateway}/sessions/{name}/v1/chat/completions", json=body, timeout=300
            )
            r.raise_for_status()
            samples = samples_from_session(self.sessions / f"{name}.jsonl")
            for s in samples:
                n_ctx = s.trainable.index(True)
                comp = s.ids[n_ctx:]
                lps = (s.old_logprobs or [0.0] * len(s.ids))[n_ctx:]
                out.append((s.ids[:n_ctx], comp, lps))
            if samples:
                versions.append(self.versions.get(samples[0].meta.get("weights_version"), 0))
        return out, min(versions, default=0)  # the stalest weights of the group

    def publish(self, model, ckpt: Path, version: int) -> bool:
        import httpx

        r = httpx.post(f"{self.server}/admin/reload", json={"path": str(ckpt)}, timeout=300)
        if r.status_code != 200:
            return False
        self.versions[r.json()["weights_version"]] = version
        return True

    def close(self) -> None:
        for proc, log in self.procs:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=20)
                except Exception:  # noqa: BLE001 -- a server that ignores SIGTERM
                    proc.kill()
                    proc.wait()
            log.close()
        self.procs = []


def _die_with_parent() -> None:
    """Linux: the server and gateway get SIGTERM when the RL process dies, even when it is
    killed before ``close`` runs."""
    try:
        import ctypes
        import signal

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_rl(
    policy_dir: str | Path,
    suite: str = "faults",
    cfg: RLConfig = RLConfig(),
    out_dir: str | Path | None = None,
    tracking_uri: str | None = None,
    store: str | Path | None = None,
    measure: Callable[[Task, list[dict]], bool] = suite_verified,
    progress: Callable[[str], None] = lambda msg: None,
) -> dict[str, Any]:
    policy_dir = Path(policy_dir)
    out = Path(out_dir) if out_dir else policy_dir.parent / f"{policy_dir.name}-rl"
    out.mkdir(parents=True, exist_ok=True)
    random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    view = doctor_view(Path(store), out / "doctor_view.json") if store else None
    tasks, catalog = load_tasks(suite, view, cfg.menu)
    train = [t for t in tasks if t.split == "selection"]
    heldout = [t for t in tasks if t.split == "heldout"]
    cache = RemedyCache(out / "remedy_outcomes.json", measure, catalog)
    model, tok = load_policy(policy_dir, cfg.seed)
    model.set_moe_backend("grouped")
    policy = Policy(model, tok, cfg.answer)
    max_new = cfg.max_new_tokens or max(
        len(policy.answer_ids(a, t.menu)) for t in tasks for a in t.menu
    )
    tracker = _tracker(tracking_uri, cfg)
    teacher = {
        split: sum(cache.reward(t, t.teacher) for t in ts) / len(ts)
        for split, ts in (("selection", train), ("heldout", heldout))
    }

    # ---- SFT warm start on rules-brain answers (the playbook's first remedy)
    ucfg = UpdateConfig(loss=cfg.loss, lr=cfg.lr)
    sft_opt = make_optimizer(model, cfg.sft_lr)
    # Label smoothing over the menu: the teacher's answer gets 1 - eps, the other remedies share
    # eps. The policy learns that answers are menu letters (garbage tokens stay unlikely) and
    # keeps the alternatives within reach of sampling, which RL needs where the teacher is wrong.
    demos, weights, targets = [], [], []  # targets: every menu answer's smoothed probability
    for t in train:
        prompt = policy.prompt_ids(t, t.menu)
        eps = cfg.sft_smoothing if len(t.menu) > 1 else 0.0
        for a in t.menu:
            w = 1 - eps if a == t.teacher else eps / (len(t.menu) - 1)
            targets.append(w)
            if w > 0:
                demos.append(completion_sample(prompt, policy.answer_ids(a, t.menu)))
                weights.append(w)
    # Stop as soon as greedy decoding reproduces the teacher on every selection task and
    # sampling mostly gives well-formed answers (menu answers hold >= sft_mass of the
    # probability): a longer warm start only makes the policy more certain of the teacher's
    # mistakes (alternatives fall to ~e^-8, out of reach of sampling).
    sft_done, mass, gap = 0, 0.0, 1.0
    for step in range(cfg.sft_steps):
        s = sft_step(model, sft_opt, demos, ucfg, weights)
        tracker.log_metrics({"sft/loss": s["sft_loss"]}, step)
        sft_done = step + 1
        if sft_done % 5 == 0 and _imitates(policy, model, train, max_new):
            probs = _menu_probs(policy, model, train)
            mass = sum(sum(p) for p in probs) / len(probs)
            gap = max(abs(p - w) for p, w in zip(sum(probs, []), targets, strict=True))
            if mass >= cfg.sft_mass and gap <= cfg.sft_tol:
                break
    start = copy.deepcopy(model).eval()
    ev_held = heldout[: cfg.eval_tasks] if cfg.eval_tasks else heldout
    ev_train = train[: cfg.eval_tasks] if cfg.eval_tasks else train
    sft_held_ans = greedy_answers(policy, model, ev_held, cache, max_new)
    sft_train_ans = greedy_answers(policy, model, ev_train, cache, max_new)
    sft_heldout, sft_train = success_rate(sft_held_ans), success_rate(sft_train_ans)
    progress(
        f"SFT ({sft_done} steps, menu mass {mass:.2f}, largest gap to target {gap:.2f}): "
        f"held-out success {sft_heldout:.2f}, "
        f"selection {sft_train:.2f}"
    )

    # ---- RL iterations
    ckpt0 = out / "iter-sft"
    _save(model, tok, ckpt0)
    if cfg.via == "server":
        roll = ServerRollouts(ckpt0, out / "sessions", cfg, max_new)
    else:  # RLConfig admits only server and inprocess
        roll = InProcessRollouts(policy, model, cfg, max_new)
    opt = make_optimizer(model, cfg.lr)
    version, history = 0, []
    # Frozen copies of the weights each published version had (update count -> model), to score
    # a rollout under the behaviour policy that drew it; a version no longer held is loaded
    # from its checkpoint.
    weights = {0: (copy.deepcopy(model).eval(), ckpt0)}
    lp_gap: list[float] = []  # |raw log-prob recomputed here - the one the sampler reported|

    def behaviour(v: int):
        held, path = weights[v]
        if held is None:  # an old version (a reload the server refused): from its checkpoint
            from model.modeling import MiniMaxM2ForCausalLM

            held = MiniMaxM2ForCausalLM.from_pretrained(path).eval()
            weights[v] = (held, path)
        return held

    def rescore(outs: list, v: int) -> list:
        """Replace the reported (raw) log-probs by log mu of the sampling weights at T."""
        if cfg.ratio == "raw":
            return outs
        res = []
        by_prompt: dict[tuple, list[int]] = {}
        for j, (prompt, _, _) in enumerate(outs):
            by_prompt.setdefault(tuple(prompt), []).append(j)
        mu: dict[int, list[float]] = {}
        for prompt, js in by_prompt.items():
            beh, raw = behaviour_logprobs(
                behaviour(v), list(prompt), [outs[j][1] for j in js], cfg.temperature
            )
            for j, b, r in zip(js, beh, raw, strict=True):
                mu[j] = b
                lp_gap.extend(abs(x - y) for x, y in zip(r, outs[j][2], strict=True))
        for j, (prompt, ids, _) in enumerate(outs):
            res.append((prompt, ids, mu[j]))
        return res

    try:
        for it in range(cfg.iterations):
            t0 = time.perf_counter()
            chosen = random.sample(train, min(cfg.scenarios_per_iter, len(train)))
            per = cfg.group_size  # one request (n = G choices) per group
            jobs = [(t, k) for t in chosen for k in range(0, cfg.group_size, per)]

            def job(i: int, jobs=jobs, it=it, per=per) -> list[Sample]:
                task, k = jobs[i]
                n = min(per, cfg.group_size - k)
                outs, v = roll.group(task, n, f"it{it:03d}-{task.scenario}-{k}")
                outs = rescore(outs, v)
                samples = []
                for j, (prompt, ids, lps) in enumerate(outs):
                    act = parse_action(policy.decode(ids), task.menu, policy.answer)
                    samples.append(
                        completion_sample(
                            prompt, ids, lps, reward=cache.train_reward(task, act, cfg.tie_penalty, cfg.miss_penalty),
                            episode=f"{it}-{i}-{j}", group=task.scenario, policy_version=v,
                            meta={"action": act},
                        )
                    )  # fmt: skip
                return samples

            batch: list[Sample] = []
            lp_gap.clear()
            stats: dict[str, float] = {}
            steps: list[dict[str, float]] = []
            rewards, staleness, guarded = [], [], 0
            with RolloutPool(cfg.workers, kind="thread") as pool:
                stream = windowed_rollouts(
                    pool, lambda i: (job, (i,)), len(jobs), cfg.window, cfg.max_pending
                )
                for _, group in stream:
                    rewards += [s.reward for s in group]
                    guarded += sum(  # answers the injection guard refused (their reward: 0)
                        touches_injection(catalog.get(s.meta["action"] or "", [])) for s in group
                    )
                    staleness += [version - s.policy_version for s in group]
                    if len({s.reward for s in group}) == 1:
                        continue  # all equal: zero advantage, it would only dilute the batch
                    batch += group
                    if len(batch) >= cfg.batch:
                        stats = rl_step(
                            model,
                            opt,
                            batch,
                            compute_advantages(batch, normalize=cfg.adv_norm),
                            ucfg,
                        )
                        steps.append(stats)
                        version += 1
                        batch = []
            if batch:
                stats = rl_step(
                    model, opt, batch, compute_advantages(batch, normalize=cfg.adv_norm), ucfg
                )
                steps.append(stats)
                version += 1
            ckpt = out / f"iter-{it:03d}"
            _save(model, tok, ckpt)
            reloaded = roll.publish(model, ckpt, version)
            if reloaded or roll.via == "inprocess":
                weights[version] = (copy.deepcopy(model).eval(), ckpt)
                for old in sorted(weights)[:-3]:  # rollouts are at most one version stale
                    weights[old] = (None, weights[old][1])
            if not steps:  # no informative group this iteration: nothing to learn from
                steps = [{"tokens_unmerged": 0, "tokens_merged": 0, "step_time_s": 0.0}]
            n_tok = sum(s["tokens_unmerged"] for s in steps)
            dt_train = sum(s["step_time_s"] for s in steps)
            metrics = {
                "reward": sum(rewards) / len(rewards),
                "success_rate": sum(r > 0 for r in rewards) / len(rewards),
                "kl_to_start": _kl(model, start, policy, train),
                "tokens_per_s": n_tok / dt_train if dt_train else 0.0,
                "tree_compression": sum(s["tokens_unmerged"] for s in steps)
                / max(sum(s["tokens_merged"] for s in steps), 1),
                "staleness_mean": sum(staleness) / len(staleness),
                "staleness_max": float(max(staleness)),
                "injection_answers": guarded / len(rewards),
                "updates": float(sum(s["tokens_merged"] > 0 for s in steps)),
                # CISPO's IS ratio pi_theta / pi_old over the update tokens (mean of updates)
                "is_ratio_mean": sum(s.get("ratio_mean", 1.0) for s in steps) / len(steps),
                "is_clip_frac": sum(s.get("clip_frac", 0.0) for s in steps) / len(steps),
                # the sampling weights recomputed here vs what the sampler reported (raw log-p)
                "behaviour_lp_gap": sum(lp_gap) / len(lp_gap) if lp_gap else 0.0,
                "iteration_s": time.perf_counter() - t0,
            }
            tracker.log_metrics(metrics, it)
            history.append(
                {"iteration": it, "checkpoint": str(ckpt), "reloaded": reloaded, **metrics}
            )
            progress(
                f"iter {it}: reward {metrics['reward']:.2f}, KL {metrics['kl_to_start']:.3f}, "
                f"{metrics['iteration_s']:.1f}s"
            )
    finally:
        roll.close()
    rl_held_ans = greedy_answers(policy, model, ev_held, cache, max_new)
    rl_train_ans = greedy_answers(policy, model, ev_train, cache, max_new)
    rl_heldout, rl_train = success_rate(rl_held_ans), success_rate(rl_train_ans)
    teacher_held = {
        t.scenario: {
            "answer": t.teacher,
            **dict(zip(("reward", "source"), cache.judge(t, t.teacher), strict=True)),
        }
        for t in heldout
    }
    tracker.log_metrics(
        {"heldout_success_sft": sft_heldout, "heldout_success_rl": rl_heldout}, cfg.iterations
    )
    tracker.finish("FINISHED")
    preferred = {t.scenario: cache.preferred(t) for t in train} if cfg.tie_penalty else {}
    result = {
        "policy": str(policy_dir),
        "out": str(out),
        "config": asdict(cfg),
        "view": "doctor" if view else "suite-labels",
        "rollouts_via": roll.via,
        "teacher_success": teacher,
        "sft_steps_done": sft_done,
        "sft_menu_mass": mass,
        "sft_target_gap": gap,
        "heldout_success_sft": sft_heldout,
        "heldout_success_rl": rl_heldout,
        "train_success_sft": sft_train,
        "train_success_rl": rl_train,
        "heldout_answers": {k: v["answer"] for k, v in rl_held_ans.items()},
        "heldout_detail": {"teacher": teacher_held, "sft": sft_held_ans, "rl": rl_held_ans},
        "train_detail": {"sft": sft_train_ans, "rl": rl_train_ans},
        # greedy answers (any split, SFT start or RL) whose patch touches the injected fault
        "answers_touching_faults": sorted(
            f"{who}:{sc}:{a['answer']}"
            for who, ans in (
                ("sft", {**sft_held_ans, **sft_train_ans}),
                ("rl", {**rl_held_ans, **rl_train_ans}),
            )
            for sc, a in ans.items()
            if touches_injection(a["patch"])
        ),  # fmt: skip
        "remedy_measurements": cache.measured,
        # tie-break: per selection task, the playbook's highest-ranked remedy that verifies
        "preferred_fix": preferred,
        "reward_sources": getattr(measure, "sources", {"stand_in": cache.measured}),
        # every (scenario, remedy) verdict this run used, with where it came from
        "remedy_outcomes": {
            k: {"fixed": v, "source": cache.sources.get(k, "file")} for k, v in cache.data.items()
        },
        "iterations": history,
    }
    _write_json(out / "rl_result.json", result)
    return result


# ---------------------------------------------------------------------------- helpers
def _write_json(path: Path, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=1, sort_keys=True))


def _save(model, tok, ckpt: Path) -> None:
    from model.tokenizer import save_tokenizer

    model.save_pretrained(ckpt)
    save_tokenizer(tok, ckpt)


def _imitates(policy: Policy, model, tasks: list[Task], max_new: int) -> bool:
    model.eval()
    for t in tasks:
        [(ids, _)] = policy.sample(model, policy.prompt_ids(t, t.menu), 1, 0.0, max_new, None)
        if parse_action(policy.decode(ids), t.menu, policy.answer) != t.teacher:
            return False
    return True


@torch.no_grad()
def _menu_probs(policy: Policy, model, tasks: list[Task]) -> list[list[float]]:
    """Per task, the probability of sampling each menu answer (letter + end of turn)."""
    model.eval()
    out = []
    for t in tasks:
        prompt = policy.prompt_ids(t, t.menu)
        row = []
        for a in t.menu:
            ids = prompt + policy.answer_ids(a, t.menu)
            lp = model.token_logprobs(torch.tensor([ids]), torch.tensor([ids[1:] + [-1]]))[0]
            row.append(float(lp[len(prompt) - 1 : len(ids) - 1].sum().exp()))
        out.append(row)
    return out


@torch.no_grad()
def _kl(model, start, policy: Policy, tasks: list[Task]) -> float:
    """KL(current || start) of the first answer token's distribution, averaged over tasks."""
    model.eval()
    kls = []
    for t in tasks:
        ids = torch.tensor([policy.prompt_ids(t, t.menu)])
        p = torch.log_softmax(model(ids).logits[0, -1].float(), -1)
        q = torch.log_softmax(start(ids).logits[0, -1].float(), -1)
        kls.append(float((p.exp() * (p - q)).sum()))
    return sum(kls) / max(len(kls), 1)


def _tracker(uri: str | None, cfg: RLConfig):
    from trainer.tracking import NullTracker

    if not uri:
        return NullTracker()
    from trainer.tracking import MlflowTracker

    tr = MlflowTracker(
        uri, experiment="workbench-rl", run_name=f"rl-seed{cfg.seed}", system_metrics=False
    )
    tr.log_params({k: v for k, v in asdict(cfg).items()})
    return tr
