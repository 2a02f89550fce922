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
   patch (``workbench.rl.outcomes``).
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
import json
import random
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from model.files import atomic_write_text
from trainer.rl.advantages import compute_advantages
from trainer.rl.data import Sample, completion_sample
from trainer.rl.forward import behaviour_logprobs
from trainer.rl.rollout import RolloutPool, windowed_rollouts
from trainer.rl.update import UpdateConfig, make_optimizer, rl_step, sft_step
from workbench.rl.config import RLConfig
from workbench.rl.policy import (
    Policy,
    greedy_answers,
    imitates,
    kl_to,
    load_policy,
    menu_probs,
    save_policy,
    success_rate,
)
from workbench.rl.reward import RemedyCache, suite_verified
from workbench.rl.rollouts import InProcessRollouts, ServerRollouts
from workbench.rl.tasks import Task, doctor_view, load_tasks, parse_action
from workbench.supervisor.patches import touches_harness


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
        if sft_done % 5 == 0 and imitates(policy, model, train, max_new):
            probs = menu_probs(policy, model, train)
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
    save_policy(model, tok, ckpt0)
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
                        touches_harness(catalog.get(s.meta["action"] or "", [])) for s in group
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
            save_policy(model, tok, ckpt)
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
                "kl_to_start": kl_to(model, start, policy, train),
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
            if touches_harness(a["patch"])
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


def _write_json(path: Path, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=1, sort_keys=True))


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
