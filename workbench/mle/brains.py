"""MLE brains: who writes the next solution script. Draft, improve or debug — one method each.

* ``RulesBrain`` searches the scaffold's space of scikit-learn solution templates and
  hyper-parameters: drafts try different model families at their default settings, improve
  moves one hyper-parameter of the best node to a neighbouring grid value (sometimes blends the
  two best families or tries an untried one), debug reads the crash's last error line and
  shrinks or simplifies the model. Deterministic for a given seed.
* ``LlmBrain`` renders the scaffold's prompts, asks any LangChain chat model (the supervisor's
  ``make_brain("openai"|"local")``) and takes the ```python block of the answer as the script.
  A malformed answer is asked again once; a second failure (or an endpoint error) falls back
  to the rules brain for that step (``workbench.supervisor.query``), so a run never crashes
  on a model.
"""

from __future__ import annotations

import itertools
import json
import random
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import jinja2

from experiments.mle.taskinfo import TaskInfo
from model.chat import THINK_BEGIN, THINK_END
from workbench.mle.config import MleScaffold

_ENV = jinja2.Environment(
    undefined=jinja2.StrictUndefined, autoescape=False, keep_trailing_newline=True
)


@dataclass(frozen=True)
class Proposal:
    plan: str
    code: str
    spec: dict | None = None  # the rules brain's model spec (None for free-form code)
    brain: str = "rules"


@dataclass
class NodeView:
    """What a brain may see of a node: never the private answers or a test score."""

    id: int
    stage: str
    plan: str
    code: str
    spec: dict | None
    status: str  # "ok" | "buggy"
    score: float | None
    log_tail: str


@dataclass
class TaskContext:
    info: TaskInfo
    description: str
    data_preview: str
    scaffold: MleScaffold
    seed: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def problem(self) -> str:
        return "regression" if self.info.mode == "regression" else "classification"


class Brain(Protocol):
    name: str

    def draft(self, ctx: TaskContext, memory: list[NodeView]) -> Proposal: ...
    def improve(self, ctx: TaskContext, node: NodeView, memory: list[NodeView]) -> Proposal: ...
    def debug(self, ctx: TaskContext, node: NodeView) -> Proposal: ...


# ------------------------------------------------------------------------------------ rules


def render_script(ctx: TaskContext, spec: dict, plan: str) -> str:
    tmpl = _ENV.from_string(ctx.scaffold.template)
    return tmpl.render(
        plan=plan.replace("\n", " "),
        task_json=repr(json.dumps(ctx.info.to_dict())),
        spec_json=repr(json.dumps(spec)),
        seed=int(ctx.seed),
        folds=ctx.scaffold.validation.folds,
        scaled_json=json.dumps(list(ctx.scaffold.scaled_families)),
    )


def describe(spec: dict) -> str:
    if spec.get("family") == "blend":
        return "blend of " + " + ".join(describe(m) for m in spec["members"])
    params = ", ".join(f"{k}={v}" for k, v in sorted(spec.get("params", {}).items()))
    return f"{spec['family']}({params})"


class RulesBrain:
    name = "rules"

    def __init__(self, seed: int = 0) -> None:
        self.rng = random.Random(seed)

    # -- the space
    def _grids(self, ctx: TaskContext) -> dict[str, dict[str, list]]:
        fams = ctx.scaffold.families
        return fams.regression if ctx.problem == "regression" else fams.classification

    def _default(self, ctx: TaskContext, family: str) -> dict:
        grid = self._grids(ctx)[family]
        return {"family": family, "params": {k: v[0] for k, v in grid.items()}}

    def _propose(self, ctx: TaskContext, spec: dict, plan: str) -> Proposal:
        return Proposal(plan=plan, code=render_script(ctx, spec, plan), spec=spec, brain=self.name)

    @staticmethod
    def _families_tried(memory: list[NodeView]) -> set[str]:
        return {m.spec["family"] for m in memory if m.spec and m.spec.get("family") != "blend"}

    # -- the three operators
    def draft(self, ctx: TaskContext, memory: list[NodeView]) -> Proposal:
        fams = list(self._grids(ctx))
        untried = [f for f in fams if f not in self._families_tried(memory)] or fams
        family = self.rng.choice(untried)
        spec = self._default(ctx, family)
        return self._propose(ctx, spec, f"draft: {describe(spec)} with default settings")

    def improve(self, ctx: TaskContext, node: NodeView, memory: list[NodeView]) -> Proposal:
        knobs = ctx.scaffold.search
        base = node.spec or self._default(ctx, next(iter(self._grids(ctx))))
        good = sorted(
            (m for m in memory if m.status == "ok" and m.spec and m.spec["family"] != "blend"),
            key=lambda m: m.score if m.score is not None else 0.0,
            reverse=not ctx.info.lower_is_better,
        )
        r = self.rng.random()
        # Blend the best node with the best node of another family.
        if r < knobs.ensemble_prob and base.get("family") != "blend":
            other = next((m for m in good if m.spec["family"] != base["family"]), None)
            if other is not None:
                spec = {"family": "blend", "members": [base, other.spec]}
                return self._propose(ctx, spec, f"improve: {describe(spec)}")
        untried = [f for f in self._grids(ctx) if f not in self._families_tried(memory)]
        if r < knobs.ensemble_prob + knobs.family_switch_prob and untried:
            spec = self._default(ctx, self.rng.choice(untried))
            return self._propose(ctx, spec, f"improve: try an untried family, {describe(spec)}")
        if base.get("family") == "blend":  # tune one member of a blend
            i = self.rng.randrange(len(base["members"]))
            member = self._mutate(ctx, base["members"][i], memory)
            members = list(base["members"])
            members[i] = member
            spec = {"family": "blend", "members": members}
        else:
            spec = self._mutate(ctx, base, memory)
        return self._propose(ctx, spec, f"improve: {describe(base)} → {describe(spec)}")

    def _mutate(self, ctx: TaskContext, spec: dict, memory: list[NodeView]) -> dict:
        """Move one hyper-parameter to a neighbouring grid value not tried yet (if any)."""
        grid = self._grids(ctx).get(spec["family"], {})
        seen = {json.dumps(m.spec, sort_keys=True) for m in memory if m.spec}
        moves = []
        for name, values in grid.items():
            ordered = sorted(values, key=_order_key)
            cur = spec["params"].get(name, values[0])
            i = ordered.index(cur) if cur in ordered else 0
            for j in (i - 1, i + 1):
                if 0 <= j < len(ordered):
                    params = {**spec["params"], name: ordered[j]}
                    moves.append({"family": spec["family"], "params": params})
        fresh = [m for m in moves if json.dumps(m, sort_keys=True) not in seen]
        pool = fresh or moves or [spec]
        return self.rng.choice(pool)

    def debug(self, ctx: TaskContext, node: NodeView) -> Proposal:
        err = last_error(node.log_tail)
        spec = node.spec
        if spec is None:  # free-form code we cannot edit: fall back to a safe template
            spec = self._default(ctx, "linear")
            return self._propose(
                ctx, spec, f"debug: replace the failing script ({err}) with {describe(spec)}"
            )
        if re.search(r"Timeout|Killed|MemoryError|resource limit|Cannot allocate", err):
            spec = shrink(spec)
            return self._propose(ctx, spec, f"debug: {err} → smaller model {describe(spec)}")
        spec = self._default(ctx, "linear")
        return self._propose(ctx, spec, f"debug: {err} → simplest sound model {describe(spec)}")


def _order_key(v: Any) -> tuple:
    return (
        (0, float(v), "")
        if isinstance(v, int | float) and not isinstance(v, bool)
        else (1, 0.0, str(v))
    )


def shrink(spec: dict) -> dict:
    """A cheaper version of a model spec: fewer trees/iterations, no probability SVMs."""
    if spec.get("family") == "blend":
        return shrink(spec["members"][0])
    p = dict(spec.get("params", {}))
    for key in ("n_estimators", "max_iter"):
        if key in p:
            p[key] = max(10, int(p[key]) // 2)
    if spec["family"] == "svm":
        return {"family": "linear", "params": {}}
    return {"family": spec["family"], "params": p}


def last_error(log: str) -> str:
    """The last line that looks like an exception (``FooError: ...``), else the last line."""
    lines = [ln.strip() for ln in log.strip().splitlines() if ln.strip()]
    for ln in reversed(lines):
        if re.match(
            r"^[A-Za-z_][\w.]*(Error|Exception|Interrupt|Exit)\b|^Killed\b|^TimeoutError", ln
        ):
            return ln[:300]
    return lines[-1][:300] if lines else "no output"


# ------------------------------------------------------------------------------------ LLM


_CODE = re.compile(r"```(?:python|py)?[ \t]*\n(.*?)```", re.DOTALL)


def parse_answer(text: str) -> tuple[str, str] | None:
    """(plan, code) from a model answer: the longest fenced block is the script."""
    blocks = _CODE.findall(text or "")
    if not blocks:
        return None
    code = max(blocks, key=len).strip() + "\n"
    plan = text[: text.find("```")].strip()
    thought = f"{re.escape(THINK_BEGIN)}.*?{re.escape(THINK_END)}"
    plan = re.sub(thought, "", plan, flags=re.DOTALL).strip()
    return plan[:2000], code


class LlmBrain:
    """Prompts from the scaffold → any LangChain chat model → a script; rules as fallback."""

    def __init__(self, chat_model: Any, seed: int = 0, name: str = "llm") -> None:
        self.model = chat_model
        self.name = name
        self.fallback = RulesBrain(seed)
        self.events: list[dict] = []  # what happened per call (for the journal)

    def _ask(
        self, ctx: TaskContext, prompt_name: str, fallback: Callable[[], Proposal], **values: Any
    ) -> Proposal:
        from langchain_core.messages import HumanMessage, SystemMessage

        from workbench.supervisor.query import FormatError, query

        p = ctx.scaffold.prompts
        sb = ctx.scaffold.sandbox
        system = _ENV.from_string(p.system).render(
            memory_mb=sb.memory_mb,
            timeout_s=int(sb.node_timeout_s),
            folds=ctx.scaffold.validation.folds,
            metric=ctx.info.metric,
            lower_is_better=ctx.info.lower_is_better,
        )
        user = _ENV.from_string(getattr(p, prompt_name)).render(
            description=ctx.description,
            data_preview=ctx.data_preview,
            metric=ctx.info.metric,
            **values,
        )
        answers = itertools.count()

        def step(answer: Any) -> Proposal:
            text = answer.content if isinstance(answer.content, str) else str(answer.content)
            parsed = parse_answer(text)
            self.events.append(
                {"prompt": prompt_name, "attempt": next(answers), "parsed": parsed is not None}
            )
            if not parsed:
                raise FormatError("no ```python block in the answer")
            plan, code = parsed
            return Proposal(plan=plan or "(no plan given)", code=code, spec=None, brain=self.name)

        def log(event: str, **data: Any) -> None:
            if event == "brain_error":
                self.events.append({"prompt": prompt_name, "error": data["error"]})

        def rules(_: Exception) -> Proposal:
            prop = fallback()
            return Proposal(
                plan=f"(model answer unusable; rules fallback) {prop.plan}",
                code=prop.code,
                spec=prop.spec,
                brain="rules",
            )

        return query(
            self.model,
            [SystemMessage(system), HumanMessage(user)],
            step,
            retry=lambda error: p.format_retry,
            fallback=rules,
            log=log,
        )

    @staticmethod
    def _memory(memory: list[NodeView]) -> list[str]:
        out = []
        for m in memory[-8:]:
            score = f"{m.score:.5g}" if m.score is not None else "no score"
            out.append(f"[{m.status}, {score}] {m.plan[:200]}")
        return out

    def draft(self, ctx: TaskContext, memory: list[NodeView]) -> Proposal:
        return self._ask(
            ctx, "draft", lambda: self.fallback.draft(ctx, memory), memory=self._memory(memory)
        )

    def improve(self, ctx: TaskContext, node: NodeView, memory: list[NodeView]) -> Proposal:
        return self._ask(
            ctx,
            "improve",
            lambda: self.fallback.improve(ctx, node, memory),
            code=node.code,
            score=node.score,
            memory=self._memory(memory),
        )

    def debug(self, ctx: TaskContext, node: NodeView) -> Proposal:
        return self._ask(
            ctx,
            "debug",
            lambda: self.fallback.debug(ctx, node),
            code=node.code,
            log=node.log_tail[-3000:],
        )


def make_mle_brain(name: str, seed: int = 0, **opts: Any) -> Brain:
    """``rules`` → RulesBrain; anything else → an LLM brain over ``workbench.supervisor.brains.make_brain``."""
    if name == "rules":
        return RulesBrain(seed)
    from workbench.supervisor.brains import make_brain

    return LlmBrain(make_brain(name, **opts), seed=seed, name=name)
