"""The model in the loop: teacher episodes → SFT → RL on the policy's own fix episodes.

    workbench loop --scenarios DIR --out OUT [--generations N] [--ray] [--json]

1. **Teacher episodes**: the ``rules`` brain fixes every scenario's failing run (real
   episodes: branch, relaunch, verify). Only the ``train`` split's episodes are training data;
   the held-out ones give the teacher's held-out figure and nothing else.
2. **SFT** (``workbench.rl.sft``): the policy learns the teacher's tool calls.
3. **RL**: per iteration, ``group_size`` episodes of the local brain (sampling at
   ``temperature``) on each of ``scenarios_per_iter`` train scenarios, in parallel (threads
   sharing one batching engine, or Ray tasks). Each policy answer in a trajectory carries its
   exact prompt/completion token ids and log-probs; the episode's reward (``rollouts``) goes
   on its last answer, the group's mean is the baseline, and one CISPO step over the
   prefix-tree-merged turns updates the policy. A checkpoint per iteration; the next rollouts
   load it (the engine is keyed by checkpoint, so the reload is the next episode's first call).
4. **Held-out evaluation** after SFT and after each generation's RL: greedy episodes of the
   local brain on the held-out programs: verified-fix rate, mean attempts to a verified fix,
   fallbacks to rules, tokens, wall time. One row per generation, logged to MLflow.
"""

from __future__ import annotations

import hashlib
import json
import random
import time
import zlib
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from model.files import atomic_write_text
from workbench.errors import BadInputError
from workbench.rl.episodes import Episode
from workbench.rl.rollouts import episodes_of, recorded, run_episodes, summarize_results
from workbench.rl.scenarios import load_manifest


@dataclass(frozen=True)
class LoopConfig:
    generations: int = 1
    sft_steps: int = 300
    sft_lr: float = 2e-3
    sft_augment: float = 0.75  # share of SFT episodes that are teacher-answered rewrites
    rl_iterations: int = 2
    group_size: int = 4
    scenarios_per_iter: int = 3
    temperature: float = 1.0
    # RL rollouts: the share of listed-value choices (remedy ids) made uniformly at random, so a
    # remedy the SFT policy all but rules out is tried at all (evaluations stay greedy)
    explore: float = 0.5
    rl_lr: float = 2e-4
    max_attempts: int = 2
    workers: int = 2
    ray: bool = False
    ray_address: str | None = None
    max_new_tokens: int = 96
    policy_layers: int = 4  # the policy preset's depth (tests use 2)
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("generations", "sft_steps", "group_size", "scenarios_per_iter", "workers",
                     "max_attempts", "max_new_tokens"):  # fmt: skip
            if getattr(self, name) < 1:
                raise BadInputError(f"{name.replace('_', ' ')} must be >= 1")
        if self.rl_iterations < 0:
            raise BadInputError("rl iterations must be >= 0")
        if self.group_size < 2:
            raise BadInputError("group size must be >= 2 (the group mean is the baseline)")
        if not 0 <= self.temperature <= 2:
            raise BadInputError(f"temperature must be in [0, 2], not {self.temperature}")
        if not 0 <= self.explore <= 1:
            raise BadInputError(f"explore must be in [0, 1], not {self.explore}")

    @property
    def pool(self) -> str:
        return "ray" if self.ray else "thread"


def _jobs(rows, *, home: Path, uri: str, brain: str, tag: str, cfg: LoopConfig,
          model: Path | None = None, temperature: float = 0.0, explore: float = 0.0,
          repeat: int = 1, measured: Path | None = None) -> list[dict]:  # fmt: skip
    opts = {}
    if model is not None:
        opts = {"model": str(model), "temperature": temperature, "explore": explore,
                "max_new_tokens": cfg.max_new_tokens}  # fmt: skip
    return [
        {
            "scenario": r,
            "tracking_uri": uri,
            "home": str(home),
            "brain": brain,
            # each episode its own seed (its tag names the loop, stage and iteration)
            "brain_opts": {**opts, "seed": zlib.crc32(f"{cfg.seed}-{tag}-{r['name']}-{k}".encode())}
            if opts
            else {},
            "thread_id": f"{tag}-{r['name']}-{k}",
            "max_attempts": cfg.max_attempts,
            "reuse_runs": str(measured or home.parent / "measured-runs"),
        }  # fmt: skip
        for r in rows
        for k in range(repeat)
    ]


def policy_samples(episodes: list[tuple[Episode, float]]) -> list:
    """Token-level samples of the policy's own answers (fallback turns are the rules brain's,
    not the policy's: left out); the episode's reward on its last answer."""
    from trainer.rl.data import completion_sample

    out = []
    for ep, reward in episodes:
        turns = [t for t in ep.turns if t.brain == "brain" and t.tokens]
        for k, t in enumerate(turns):
            tk = t.tokens
            if len(tk["logprobs"]) != len(tk["completion"]) or not tk["completion"]:
                continue
            out.append(
                completion_sample(
                    tk["prompt"], tk["completion"], tk["logprobs"], episode=ep.thread_id,
                    group=ep.scenario or "", step=k,
                    reward=reward if k == len(turns) - 1 else 0.0,
                    policy_version=int(tk.get("weights_version") or 0),
                )
            )  # fmt: skip
    return out


def evaluate(policy: Path | None, rows, *, home: Path, uri: str, cfg: LoopConfig, tag: str,
             progress: Callable[[str], None], measured: Path | None = None,
             ) -> tuple[dict, list[dict]]:  # fmt: skip
    """Greedy episodes of ``policy`` (None: the rules teacher) on ``rows``."""
    jobs = _jobs(rows, home=home, uri=uri, brain="local" if policy else "rules", tag=tag,
                 cfg=cfg, model=policy, measured=measured)  # fmt: skip
    results = list(run_episodes(jobs, workers=cfg.workers, kind=cfg.pool,
                                address=cfg.ray_address, progress=progress))  # fmt: skip
    summary = summarize_results(results)
    summary["tokens"] = _tokens(results)
    return summary, results


def _tokens(results: list[dict]) -> dict[str, int]:
    """Prompt/completion tokens of the policy's answers, and the longest prompt."""
    prompt = completion = longest = 0
    for ep in episodes_of(results):
        for t in ep.turns:
            if t.tokens:
                prompt += len(t.tokens["prompt"])
                completion += len(t.tokens["completion"])
                longest = max(longest, len(t.tokens["prompt"]) + len(t.tokens["completion"]))
    return {"prompt": prompt, "completion": completion, "longest_turn": longest}


def run_loop(
    scenarios: Path,
    out: Path,
    cfg: LoopConfig = LoopConfig(),
    tracking_uri: str | None = None,
    progress: Callable[[str], None] = lambda msg: None,
    start: Path | None = None,
) -> dict[str, Any]:
    import torch

    from trainer.rl.advantages import compute_advantages
    from trainer.rl.update import UpdateConfig, make_optimizer, rl_step
    from workbench.rl.policy import context_of, load_policy, new_policy, save_policy
    from workbench.rl.sft import SFTConfig, train_sft

    manifest = load_manifest(scenarios)
    rows = [r for r in manifest["scenarios"] if r["status"] == "failing"]
    train = [r for r in rows if r["split"] == "train"]
    heldout = [r for r in rows if r["split"] == "heldout"]
    if not train or not heldout:
        raise BadInputError(f"{scenarios}: needs failing runs in both splits")
    out = Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    uri, home = manifest["tracking_uri"], out / "home"
    # Episode ids name the relaunched runs in the scenarios' MLflow experiment, shared by every
    # loop on the set: prefix them with this loop's own id so no loop adopts another's run.
    loop_id = hashlib.sha1(str(out).encode()).hexdigest()[:6]
    # runs measured once per scenario set, shared by every loop on it (seeds, generations)
    measured = Path(scenarios).resolve() / "measured-runs"
    random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    tracker = _tracker(tracking_uri, cfg)
    t_start = time.monotonic()
    say = lambda m: progress(f"[{time.monotonic() - t_start:6.0f}s] {m}")  # noqa: E731

    # 1. teacher episodes; held-out ones only for the teacher's figure
    say("teacher (rules) episodes on the train split …")
    teacher_train, train_results = evaluate(None, train, home=home, uri=uri, cfg=cfg,
                                            tag=f"{loop_id}-teacher", progress=say, measured=measured)  # fmt: skip
    say("teacher (rules) episodes on the held-out split …")
    teacher_held, _ = evaluate(None, heldout, home=out / "home-heldout-teacher", uri=uri,
                               cfg=cfg, tag=f"{loop_id}-teacher", progress=say, measured=measured)  # fmt: skip
    teacher_eps = episodes_of(train_results)
    trained_on = [r["trajectory"] for r in recorded(train_results)]  # every one training reads

    rows_out: list[dict] = []
    if start is not None:  # an SFT'd policy given: RL starts from it (e.g. RL seeds on one SFT)
        model, tok = load_policy(start)
        ckpt, sft = Path(start), {"from": str(start)}
        say(f"starting from {start} (no SFT)")
    else:
        policy_dir = out / "policy-init"
        model, tok = new_policy(policy_dir, seed=cfg.seed, num_hidden_layers=cfg.policy_layers)
        sft = train_sft(model, tok, teacher_eps, SFTConfig(steps=cfg.sft_steps, lr=cfg.sft_lr,
                        seed=cfg.seed, augment=cfg.sft_augment), log=lambda r: tracker.log_metrics({"sft_loss": r["sft_loss"]}, r["step"]),
                        progress=say)  # fmt: skip
        ckpt = out / "policy-sft"
        save_policy(model, tok, ckpt)
        say(f"SFT: {sft['samples']} answers of {sft['episodes']} episodes, loss {sft['final_loss']:.4f}, "
            f"worst teacher token p {sft['worst_token_p']:.3f}, "
            f"tree compression {sft['tree_compression']:.2f}x, {sft['wall_s']:.0f}s")  # fmt: skip

    def held_out(stage: str, generation: int, ckpt: Path) -> None:
        """One row: the policy's greedy episodes on the held-out programs."""
        ev, _ = evaluate(ckpt, heldout, home=home, uri=uri, cfg=cfg, progress=say,
                         tag=f"{loop_id}-{stage}-g{generation}", measured=measured)  # fmt: skip
        rows_out.append({"generation": generation, "stage": stage, "checkpoint": str(ckpt), **ev})
        tracker.log_metrics(_metrics(ev, stage), generation)

    held_out("sft", 0, ckpt)

    opt = make_optimizer(model, cfg.rl_lr)
    ucfg = UpdateConfig(loss="cispo", lr=cfg.rl_lr)
    version, rl_stats = 0, []
    for gen in range(cfg.generations):
        for it in range(cfg.rl_iterations):
            t0 = time.monotonic()
            chosen = random.sample(train, min(cfg.scenarios_per_iter, len(train)))
            jobs = _jobs(chosen, home=home, uri=uri, brain="local", cfg=cfg, model=ckpt,
                         temperature=cfg.temperature, explore=cfg.explore, repeat=cfg.group_size,
                         tag=f"{loop_id}-rl-g{gen}-i{it}", measured=measured)  # fmt: skip
            results = list(run_episodes(jobs, workers=cfg.workers, kind=cfg.pool,
                                        address=cfg.ray_address, progress=say))  # fmt: skip
            reward_of = {r["thread_id"]: r["reward"] for r in results}
            eps = [(e, reward_of[e.thread_id]) for e in episodes_of(results)]
            trained_on += [r["trajectory"] for r in recorded(results)]
            samples = policy_samples(eps)
            groups = {}
            for s in samples:
                groups.setdefault(s.group, set()).add(reward_of.get(s.episode, 0.0))
            batch = [s for s in samples if len(groups[s.group]) > 1]  # equal rewards: no signal
            stats = {"tokens_unmerged": 0, "tokens_merged": 0, "step_time_s": 0.0}
            if batch:
                stats = rl_step(model, opt, batch, compute_advantages(batch), ucfg)
                stats["step_time_unmerged_s"] = unmerged_step_time(model, batch)
                version += 1
            ckpt = out / f"policy-g{gen}-i{it}"
            save_policy(model, tok, ckpt)
            row = {
                "generation": gen, "iteration": it, "episodes": len(results),
                "reward": sum(reward_of.values()) / len(reward_of),
                "verified": sum(bool(r["verified"]) for r in results),
                "fallbacks": sum(int(r["fallbacks"] or 0) for r in results),
                "samples": len(batch), "tree_compression": stats["tokens_unmerged"] / max(stats["tokens_merged"], 1),
                "step_time_s": stats["step_time_s"],
                "step_time_unmerged_s": stats.get("step_time_unmerged_s", 0.0),
                "wall_s": round(time.monotonic() - t0, 1),
            }  # fmt: skip
            rl_stats.append(row)
            tracker.log_metrics(
                {f"rl_{k}": float(v) for k, v in row.items() if isinstance(v, int | float)}, version
            )
            say(f"RL gen {gen} iter {it}: reward {row['reward']:.2f}, {row['verified']}/{row['episodes']} "
                f"verified, {len(batch)} samples, compression {row['tree_compression']:.2f}x")  # fmt: skip
        held_out("rl", gen + 1, ckpt)
    result = {
        "config": asdict(cfg), "scenarios": str(scenarios), "out": str(out),
        "train": [r["name"] for r in train], "heldout": [r["name"] for r in heldout],
        "teacher": {"train": teacher_train, "heldout": teacher_held},
        "sft": sft, "rl_iterations": rl_stats, "rows": rows_out,
        "trained_on": trained_on, "policy_context": context_of(ckpt), "wall_s": round(time.monotonic() - t_start, 1),
    }  # fmt: skip
    atomic_write_text(out / "loop.json", json.dumps(result, indent=1, default=str))
    tracker.finish("FINISHED")
    return result


def unmerged_step_time(model, batch) -> float:
    """Seconds of the same forward+backward with every sample on its own (no prefix tree, no
    optimizer step): the reference for the merged step's time on a real batch."""
    import torch

    from trainer.rl.update import UpdateConfig, sample_logprobs

    t0 = time.perf_counter()
    model.train()
    loss = -sample_logprobs(model, batch, UpdateConfig(merge=False)).mean()
    loss.backward()
    model.zero_grad(set_to_none=True)
    torch.cuda.synchronize() if torch.cuda.is_available() else None
    return time.perf_counter() - t0


def _metrics(ev: dict, stage: str) -> dict[str, float]:
    return {f"heldout_{k}_{stage}": float(v) for k, v in ev.items()
            if isinstance(v, int | float) and v is not None}  # fmt: skip


def _tracker(uri: str | None, cfg: LoopConfig):
    """An MLflow run in experiment ``workbench-loop`` (a person opens it in the MLflow UI)."""
    from trainer.tracking import MlflowTracker, NullTracker

    if not uri:
        return NullTracker()
    tr = MlflowTracker(
        uri, experiment="workbench-loop", run_name=f"loop-seed{cfg.seed}", system_metrics=False
    )
    tr.log_params(asdict(cfg))
    return tr
