"""``RLConfig``: every setting of one ``workbench train rl`` run, checked on construction."""

from __future__ import annotations

from dataclasses import dataclass

from workbench.errors import BadInputError
from workbench.rl.tasks import SYSTEM


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
