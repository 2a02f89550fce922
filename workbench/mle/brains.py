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
    cv_std: float | None = None  # spread of the score over the CV folds


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
    if spec.get("family") in ("blend", "stack"):
        word = "blend" if spec["family"] == "blend" else "stack"
        return f"{word} of " + " + ".join(describe(m) for m in spec["members"])
    params = ", ".join(f"{k}={v}" for k, v in sorted(spec.get("params", {}).items()))
    extras = [f"{k}={v}" for k, v in sorted((spec.get("fe") or {}).items()) if v]
    if spec.get("calibrate"):
        extras.append(f"calibrate={spec['calibrate']}")
    return f"{spec['family']}({params})" + (f" [{', '.join(extras)}]" if extras else "")


def _key(spec: dict | None) -> str:
    return json.dumps(spec, sort_keys=True)


ENSEMBLES = ("blend", "stack")


class RulesBrain:
    """Drafts from the scaffold's priors, then improve by one atomic move of the chosen node:
    an ensemble of the best distinct candidates (averaged or stacked on out-of-fold
    predictions), an untried family, a feature operator or calibration toggled, or one
    hyper-parameter moved to a neighbouring grid value."""

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
        return {
            m.spec["family"] for m in memory if m.spec and m.spec.get("family") not in ENSEMBLES
        }

    def _ranked(self, ctx: TaskContext, memory: list[NodeView]) -> list[NodeView]:
        ok = [m for m in memory if m.status == "ok" and m.spec and m.score is not None]
        return sorted(ok, key=lambda m: m.score, reverse=not ctx.info.lower_is_better)

    # -- the three operators
    def draft(self, ctx: TaskContext, memory: list[NodeView]) -> Proposal:
        recipes = ctx.scaffold.drafts
        recipes = recipes.regression if ctx.problem == "regression" else recipes.classification
        seen = {_key(m.spec) for m in memory if m.spec}
        grids = self._grids(ctx)
        for recipe in recipes:
            spec = self._complete(ctx, recipe)
            if spec is not None and _key(spec) not in seen:
                return self._propose(ctx, spec, f"draft (prior): {describe(spec)}")
        fams = list(grids)
        untried = [f for f in fams if f not in self._families_tried(memory)] or fams
        spec = self._default(ctx, self.rng.choice(untried))
        return self._propose(ctx, spec, f"draft: {describe(spec)} with default settings")

    def _complete(self, ctx: TaskContext, recipe: dict) -> dict | None:
        """A recipe with every grid parameter filled in (None if a family is not in the grids)."""
        if recipe["family"] in ENSEMBLES:
            members = [self._complete(ctx, m) for m in recipe["members"]]
            return None if None in members else {"family": recipe["family"], "members": members}
        if recipe["family"] not in self._grids(ctx):
            return None
        default = self._default(ctx, recipe["family"])
        return {**recipe, "params": {**default["params"], **recipe.get("params", {})}}

    def ensemble(self, ctx: TaskContext, memory: list[NodeView]) -> dict | None:
        """Blend or stack the best candidate of each distinct family (stack first)."""
        best: dict[str, NodeView] = {}
        for m in self._ranked(ctx, memory):
            fam = m.spec["family"]
            if fam not in ENSEMBLES and fam not in best:
                best[fam] = m
        members = [m.spec for m in best.values()][: ctx.scaffold.search.ensemble_size]
        if len(members) < 2:
            return None
        seen = {_key(m.spec) for m in memory if m.spec}
        for kind in ("stack", "blend"):
            for k in range(len(members), 1, -1):
                spec = {"family": kind, "members": members[:k]}
                if _key(spec) not in seen:
                    return spec
        return None

    def improve(self, ctx: TaskContext, node: NodeView, memory: list[NodeView]) -> Proposal:
        knobs = ctx.scaffold.search
        base = node.spec or self._default(ctx, next(iter(self._grids(ctx))))
        # The first improve ensembles the best distinct candidates the drafts found.
        has_ensemble = any(
            m.stage != "draft" and m.spec and m.spec.get("family") in ENSEMBLES for m in memory
        )
        r = self.rng.random()
        if not has_ensemble or r < knobs.ensemble_prob:
            spec = self.ensemble(ctx, memory)
            if spec is not None:
                return self._propose(ctx, spec, f"improve: {describe(spec)}")
        r -= knobs.ensemble_prob
        untried = [f for f in self._grids(ctx) if f not in self._families_tried(memory)]
        if 0 <= r < knobs.family_switch_prob and untried:
            spec = self._default(ctx, self.rng.choice(untried))
            return self._propose(ctx, spec, f"improve: try an untried family, {describe(spec)}")
        if base.get("family") in ENSEMBLES:  # tune one member of an ensemble
            i = self.rng.randrange(len(base["members"]))
            members = list(base["members"])
            members[i] = self._mutate(ctx, members[i], memory)
            spec = {"family": base["family"], "members": members}
        elif 0 <= r - knobs.family_switch_prob < knobs.feature_prob:
            spec = self._feature_move(ctx, base, memory) or self._mutate(ctx, base, memory)
        else:
            spec = self._mutate(ctx, base, memory)
        return self._propose(ctx, spec, f"improve: {describe(base)} → {describe(spec)}")

    def _feature_move(self, ctx: TaskContext, spec: dict, memory: list[NodeView]) -> dict | None:
        """Toggle one feature operator (or calibration) of a single-model spec."""
        fe = dict(spec.get("fe") or {})
        moves = []
        if spec["family"] in ("linear", "svm", "knn", "mlp"):
            moves.append({**spec, "fe": {**fe, "poly": 0 if fe.get("poly") else 2}})
        moves.append({**spec, "fe": {**fe, "select": None if fe.get("select") else "median"}})
        if ctx.info.mode == "regression" and ctx.info.metric in ("rmse", "mae"):
            moves.append({**spec, "fe": {**fe, "target": None if fe.get("target") else "log1p"}})
        if ctx.info.mode in ("proba_binary", "proba_multi"):
            for method in ("sigmoid", "isotonic"):
                if spec.get("calibrate") != method:
                    moves.append({**spec, "calibrate": method})
        seen = {_key(m.spec) for m in memory if m.spec}
        fresh = [m for m in moves if _key(m) not in seen]
        return self.rng.choice(fresh) if fresh else None

    def _mutate(self, ctx: TaskContext, spec: dict, memory: list[NodeView]) -> dict:
        """Move one hyper-parameter to a neighbouring grid value not tried yet (if any)."""
        grid = self._grids(ctx).get(spec["family"], {})
        seen = {_key(m.spec) for m in memory if m.spec}
        moves = []
        for name, values in grid.items():
            ordered = sorted(values, key=_order_key)
            cur = spec.get("params", {}).get(name, values[0])
            i = ordered.index(cur) if cur in ordered else 0
            for j in (i - 1, i + 1):
                if 0 <= j < len(ordered):
                    moves.append({**spec, "params": {**spec.get("params", {}), name: ordered[j]}})
        fresh = [m for m in moves if _key(m) not in seen]
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
        if re.search(r"Timeout|Killed|MemoryError|resource limit|Cannot allocate|timed out", err):
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
    if spec.get("family") in ENSEMBLES:
        return shrink(spec["members"][0])
    p = dict(spec.get("params", {}))
    if (spec.get("fe") or {}).get("poly"):
        return {"family": spec["family"], "params": p}
    for key in ("n_estimators", "max_iter"):
        if key in p:
            p[key] = max(10, int(p[key]) // 2)
    if spec["family"] == "svm":
        return {"family": "linear", "params": {}}
    return {**spec, "params": p}


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
            score = f"CV {m.score:.5g}" if m.score is not None else "no score"
            if m.score is not None and m.cv_std is not None:
                score += f" ± {m.cv_std:.2g}"
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
