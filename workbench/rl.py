"""The RL loop: episodes of the ``local`` policy on the fault suite -> CISPO updates.

    workbench train rl --policy DIR --suite faults [--iterations N] [--window W] [--json]

What one run does (trainer.rl holds the primitives; this module only wires them):

1. **Task.** For each fault-suite scenario the policy gets the run doctor's findings and the
   playbook's remedy ids, and must answer with the remedy to apply (``no_action`` for a healthy
   run). Findings come from the suite's recorded finding kinds (what the detectors report on that
   run); the cause label is never shown.
2. **Reward = verification.** A remedy's outcome is measured once per (scenario, remedy) and
   cached in ``<out>/remedy_outcomes.json``; the default measurement trusts the suite's list of
   remedies verified to fix the run (``measure=`` can rerun the fix for real).
3. **SFT warm start** from ``rules``-brain answers (findings -> the playbook's first remedy) on
   the selection split, a few steps only, so RL has room to improve.
4. **Rollouts** sample from a frozen copy of the current policy (the "served" weights) in a
   thread pool, consumed in windowed-FIFO order; every ``batch`` consumed rollouts make one
   CISPO update with group baselines (G rollouts per scenario). After each iteration the policy
   is checkpointed, the copy refreshed (and a server hot-reloaded via ``POST /admin/reload``
   when ``server_url`` is given) and metrics logged (MLflow when a tracking URI is given).
5. **Evaluation**: greedy success rate on the held-out split, before RL (after SFT) and after.

Rollouts run in-process rather than through the recording gateway: the samples carry exactly
what the gateway would record (prompt ids, completion ids, behaviour log-probs).
"""

from __future__ import annotations

import copy
import json
import os
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from trainer.rl.advantages import compute_advantages
from trainer.rl.data import Sample, completion_sample
from trainer.rl.rollout import RolloutPool, windowed_rollouts
from trainer.rl.update import UpdateConfig, make_optimizer, rl_step, sft_step
from workbench.errors import BadInputError

SYSTEM = "You fix failed training runs. Answer with exactly one remedy id from the list."
NO_ACTION = "no_action"


@dataclass(frozen=True)
class RLConfig:
    iterations: int = 6
    window: int = 4
    group_size: int = 4  # rollouts per scenario (the group baseline)
    scenarios_per_iter: int = 4
    batch: int = 8  # consumed rollouts per update
    max_pending: int = 8
    sft_steps: int = 60
    eval_tasks: int | None = None  # cap on tasks per success-rate evaluation
    lr: float = 2e-4
    sft_lr: float = 3e-3
    temperature: float = 0.8
    max_new_tokens: int = 8
    seed: int = 0
    workers: int = 2
    loss: str = "cispo"


# ---------------------------------------------------------------------------- the task
@dataclass(frozen=True)
class Task:
    scenario: str
    split: str
    findings: tuple[str, ...]
    good: tuple[str, ...]  # remedy ids that verification accepted


def load_tasks(suite: str = "faults") -> tuple[list[Task], list[str]]:
    if suite != "faults":
        raise BadInputError(f"unknown suite {suite!r} (known: faults)")
    from experiments.faults.suite import load_suite

    s = load_suite()
    actions = sorted({r.id for sc in s.scenarios for r in sc.remedies} | {NO_ACTION})
    tasks = [
        Task(
            scenario=sc.id,
            split=sc.split,
            findings=tuple(sc.expected.findings),
            good=tuple(r.id for r in sc.remedies) or (NO_ACTION,),
        )
        for sc in s.scenarios
    ]
    return tasks, actions


class RemedyCache:
    """(scenario, remedy) -> verified? Measured once, then read from ``path`` (atomic writes)."""

    def __init__(self, path: Path, measure: Callable[[Task, str], bool]) -> None:
        self.path, self.measure = path, measure
        self.data: dict[str, bool] = json.loads(path.read_text()) if path.exists() else {}
        self.measured = 0

    def outcome(self, task: Task, remedy: str) -> bool:
        key = f"{task.scenario}::{remedy}"
        if key not in self.data:
            self.data[key] = bool(self.measure(task, remedy))
            self.measured += 1
            tmp = self.path.with_name(f".{self.path.name}.tmp{os.getpid()}")
            tmp.write_text(json.dumps(self.data, indent=1, sort_keys=True))
            os.replace(tmp, self.path)
        return self.data[key]


def suite_verified(task: Task, remedy: str) -> bool:
    return remedy in task.good


def prompt_messages(task: Task, actions: list[str]) -> list[dict[str, str]]:
    findings = ", ".join(task.findings) if task.findings else "none"
    user = f"Findings: {findings}\nRemedies: {', '.join(actions)}"
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": user}]


def parse_action(text: str, actions: list[str]) -> str | None:
    text = text.strip()
    for a in sorted(actions, key=len, reverse=True):
        if text.startswith(a):
            return a
    return None


# ---------------------------------------------------------------------------- policy I/O
class Policy:
    """The policy checkpoint + tokenizer, with rendering and sampling helpers."""

    def __init__(self, model, tokenizer) -> None:
        from model.chat import END_OF_TURN

        self.model, self.tok = model, tokenizer
        self.eos = tokenizer.token_to_id(END_OF_TURN)

    def encode(self, text: str) -> list[int]:
        return self.tok.encode(text).ids

    def prompt_ids(self, task: Task, actions: list[str]) -> list[int]:
        from model.chat import render_messages

        text = render_messages(prompt_messages(task, actions), enable_thinking=False)
        return self.encode(text)

    def answer_ids(self, action: str) -> list[int]:
        return self.encode(action) + [self.eos]

    @torch.no_grad()
    def sample(self, model, prompt: list[int], temperature: float, max_new: int, gen):
        """(completion ids, their log-probs under ``model``) -- what the gateway records."""
        ids = model.generate(
            torch.tensor([prompt]),
            max_new_tokens=max_new,
            temperature=temperature,
            stop_token_ids=[self.eos],
            generator=gen,
        )[0, len(prompt) :].tolist()
        if self.eos in ids:
            ids = ids[: ids.index(self.eos) + 1]
        full = torch.tensor([prompt + ids])
        lp = model.token_logprobs(full, torch.tensor([prompt[1:] + ids + [-1]]))[0]
        return ids, lp[len(prompt) - 1 : len(prompt) - 1 + len(ids)].tolist()


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


# ---------------------------------------------------------------------------- the loop
def success_rate(
    policy: Policy, model, tasks: list[Task], actions: list[str], cache, limit=None
) -> float:
    model.eval()
    tasks = tasks[:limit] if limit else tasks
    wins = 0
    for t in tasks:
        ids, _ = policy.sample(model, policy.prompt_ids(t, actions), 0.0, 8, None)
        act = parse_action(policy.tok.decode(ids), actions)
        wins += bool(act is not None and cache.outcome(t, act))
    return wins / max(len(tasks), 1)


def run_rl(
    policy_dir: str | Path,
    suite: str = "faults",
    cfg: RLConfig = RLConfig(),
    out_dir: str | Path | None = None,
    tracking_uri: str | None = None,
    server_url: str | None = None,
    measure: Callable[[Task, str], bool] = suite_verified,
    progress: Callable[[str], None] = lambda msg: None,
) -> dict[str, Any]:
    policy_dir = Path(policy_dir)
    out = Path(out_dir) if out_dir else policy_dir.parent / f"{policy_dir.name}-rl"
    out.mkdir(parents=True, exist_ok=True)
    random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    tasks, actions = load_tasks(suite)
    train = [t for t in tasks if t.split == "selection"]
    heldout = [t for t in tasks if t.split == "heldout"]
    cache = RemedyCache(out / "remedy_outcomes.json", measure)
    model, tok = load_policy(policy_dir, cfg.seed)
    model.set_moe_backend("grouped")
    policy = Policy(model, tok)
    tracker = _tracker(tracking_uri, cfg)

    # ---- SFT warm start on rules-brain answers (the playbook's first remedy)
    ucfg = UpdateConfig(loss=cfg.loss, lr=cfg.lr)
    sft_opt = make_optimizer(model, cfg.sft_lr)
    demos = [
        completion_sample(policy.prompt_ids(t, actions), policy.answer_ids(t.good[0]))
        for t in train
    ]
    for step in range(cfg.sft_steps):
        s = sft_step(model, sft_opt, demos, ucfg)
        tracker.log_metrics({"sft/loss": s["sft_loss"]}, step)
    start = copy.deepcopy(model).eval()
    sft_heldout = success_rate(policy, model, heldout, actions, cache, cfg.eval_tasks)
    sft_train = success_rate(policy, model, train, actions, cache, cfg.eval_tasks)
    progress(f"SFT start: held-out success {sft_heldout:.2f}, train {sft_train:.2f}")

    # ---- RL iterations
    opt = make_optimizer(model, cfg.lr)
    version, history = 0, []
    served = copy.deepcopy(model).eval()  # the weights rollouts sample from
    gen = torch.Generator().manual_seed(cfg.seed)
    for it in range(cfg.iterations):
        t0 = time.perf_counter()
        chosen = random.sample(train, min(cfg.scenarios_per_iter, len(train)))
        jobs = [(t, g) for t in chosen for g in range(cfg.group_size)]
        snap, snap_version = served, version

        def rollout(i: int, snap=snap, snap_version=snap_version, jobs=jobs, it=it) -> Sample:
            task, g = jobs[i]
            prompt = policy.prompt_ids(task, actions)
            ids, lps = policy.sample(snap, prompt, cfg.temperature, cfg.max_new_tokens, gen)
            act = parse_action(tok.decode(ids), actions)
            reward = float(act is not None and cache.outcome(task, act))
            return completion_sample(
                prompt, ids, lps, reward=reward, episode=f"{it}-{i}", group=task.scenario,
                policy_version=snap_version,
            )  # fmt: skip

        batch: list[Sample] = []
        stats: dict[str, float] = {}
        rewards, staleness = [], []
        with RolloutPool(cfg.workers, kind="thread") as pool:
            stream = windowed_rollouts(
                pool, lambda i: (rollout, (i,)), len(jobs), cfg.window, cfg.max_pending
            )
            for _, sample in stream:
                batch.append(sample)
                rewards.append(sample.reward)
                staleness.append(version - sample.policy_version)
                if len(batch) >= cfg.batch:
                    stats = rl_step(model, opt, batch, compute_advantages(batch), ucfg)
                    version += 1
                    batch = []
        if batch:
            stats = rl_step(model, opt, batch, compute_advantages(batch), ucfg)
            version += 1
        ckpt = out / f"iter-{it:03d}"
        model.save_pretrained(ckpt)
        from model.tokenizer import save_tokenizer

        save_tokenizer(tok, ckpt)
        served = copy.deepcopy(model).eval()
        reloaded = _hot_reload(server_url, ckpt)
        metrics = {
            "reward": sum(rewards) / len(rewards),
            "success_rate": sum(r > 0 for r in rewards) / len(rewards),
            "kl_to_start": _kl(model, start, policy, train, actions),
            "tokens_per_s": stats.get("tokens_per_s", 0.0),
            "tree_compression": stats.get("compression", 1.0),
            "staleness_mean": sum(staleness) / len(staleness),
            "staleness_max": float(max(staleness)),
            "iteration_s": time.perf_counter() - t0,
        }
        tracker.log_metrics(metrics, it)
        history.append({"iteration": it, "checkpoint": str(ckpt), "reloaded": reloaded, **metrics})
        progress(f"iter {it}: reward {metrics['reward']:.2f}")
    rl_heldout = success_rate(policy, model, heldout, actions, cache, cfg.eval_tasks)
    tracker.log_metrics({"heldout_success_sft": sft_heldout, "heldout_success_rl": rl_heldout}, 0)
    tracker.finish("FINISHED")
    result = {
        "policy": str(policy_dir),
        "out": str(out),
        "config": asdict(cfg),
        "heldout_success_sft": sft_heldout,
        "heldout_success_rl": rl_heldout,
        "train_success_sft": sft_train,
        "train_success_rl": success_rate(policy, model, train, actions, cache, cfg.eval_tasks),
        "remedy_measurements": cache.measured,
        "iterations": history,
    }
    (out / "rl_result.json").write_text(json.dumps(result, indent=1))
    return result


@torch.no_grad()
def _kl(model, start, policy: Policy, tasks: list[Task], actions: list[str]) -> float:
    """KL(current || start) of the first answer token's distribution, averaged over tasks."""
    kls = []
    for t in tasks:
        ids = torch.tensor([policy.prompt_ids(t, actions)])
        p = torch.log_softmax(model(ids).logits[0, -1].float(), -1)
        q = torch.log_softmax(start(ids).logits[0, -1].float(), -1)
        kls.append(float((p.exp() * (p - q)).sum()))
    return sum(kls) / max(len(kls), 1)


def _hot_reload(server_url: str | None, ckpt: Path) -> bool:
    if not server_url:
        return False
    import httpx

    try:
        r = httpx.post(
            f"{server_url.rstrip('/')}/admin/reload", json={"path": str(ckpt)}, timeout=120
        )
        return r.status_code == 200
    except httpx.HTTPError:
        return False


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
