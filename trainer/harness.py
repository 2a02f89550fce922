"""What every training program shares around its loop: the run's lifecycle in MLflow.

``run_program`` opens the tracked run (params, tags), tees stdout/stderr into
``logs/train.log``, turns SIGTERM into KeyboardInterrupt, and closes the run as
FINISHED, FAILED (traceback in the log) or KILLED — always uploading the log first.
"""

from __future__ import annotations

import math
import os
import shlex
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from trainer.config import OptimizerConfig, _RunConfig, params_for_tracking
from trainer.faults import FaultPlan, harness_faults
from trainer.tags import Tag
from trainer.tracking import MlflowTracker, NullTracker, Tracker

LOG_UPLOAD_EVERY_S = 2.0


# ---------------------------------------------------------------------------- schedule


def lr_at(step: int, total: int, opt: OptimizerConfig) -> float:
    """Linear warmup to ``opt.lr``, then cosine decay to ``min_lr_ratio * opt.lr``; times
    ``decay_gamma`` for every milestone of ``decay_steps`` passed (a step schedule)."""
    steps_passed = sum(step >= m for m in opt.decay_steps)
    if opt.warmup_steps and step < opt.warmup_steps:
        return opt.lr * (step + 1) / opt.warmup_steps * opt.decay_gamma**steps_passed
    span = max(1, total - opt.warmup_steps)
    progress = min(1.0, (step - opt.warmup_steps) / span)
    floor = opt.min_lr_ratio * opt.lr
    cosine = floor + 0.5 * (opt.lr - floor) * (1 + math.cos(math.pi * progress))
    return cosine * opt.decay_gamma**steps_passed


def fp16_gradients(params, scale: float) -> None:
    """Hold each gradient in fp16, scaled by the static loss ``scale`` (precision fp16): a
    scale too large overflows them to inf, as in fp16 training without dynamic back-off."""
    for p in params:
        if p.grad is not None:
            p.grad.copy_((p.grad * scale).half().float() / scale)


# ---------------------------------------------------------------------------- early stopping


@dataclass
class EarlyStopping:
    """Counts evals since the best eval loss; ``should_stop`` after ``patience`` of them.

    ``patience`` 0 never stops.  A NaN eval is never a new best (it counts as a bad eval).
    """

    patience: int
    restore: bool = False  # keep a copy of the best weights (``update`` with the model)
    best: float = math.inf
    best_step: int | None = None
    bad_evals: int = 0
    best_state: dict | None = None

    def update(self, value: float, step: int, model=None) -> bool:
        """Record one eval; True when it is a new best (then, with ``restore`` and ``model``,
        the model's weights are copied)."""
        if value < self.best:
            self.best, self.best_step, self.bad_evals = value, step, 0
            if self.restore and model is not None:
                self.best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            return True
        self.bad_evals += 1
        return False

    def restore_best(self, model) -> bool:
        """Load the kept best weights into ``model``; False when none were kept."""
        if self.best_state is None:
            return False
        model.load_state_dict(self.best_state)
        return True

    @property
    def should_stop(self) -> bool:
        return self.patience > 0 and self.bad_evals >= self.patience

    def reason(self, step: int) -> str:
        return (
            f"early stop at step {step}: eval loss has not improved on {self.best:.4f} "
            f"(step {self.best_step}) for {self.bad_evals} evals (early_stop_patience "
            f"{self.patience})"
        )


# ---------------------------------------------------------------------------- run context


@dataclass
class RunContext:
    cfg: _RunConfig
    tracker: Tracker
    faults: FaultPlan
    log_path: Path
    _last_upload: float = 0.0

    def log(self, message: str) -> None:
        # stderr: a command's stdout stays clean for --json; the tee copies it into the log.
        print(message, file=sys.stderr, flush=True)

    def upload_log(self, force: bool = False) -> None:
        """Upload the log so far; called periodically so a hung run still shows its log."""
        now = time.monotonic()
        if force or now - self._last_upload >= LOG_UPLOAD_EVERY_S:
            sys.stdout.flush()
            sys.stderr.flush()
            self.tracker.log_artifact(self.log_path, "logs")
            self._last_upload = now


class _Tee:
    def __init__(self, stream, file) -> None:
        self.stream, self.file = stream, file

    def write(self, text: str) -> int:
        self.file.write(text)
        self.file.flush()
        try:
            return self.stream.write(text)
        except ValueError:  # the original stream was closed
            return len(text)

    def flush(self) -> None:
        self.file.flush()
        try:
            self.stream.flush()
        except ValueError:
            pass

    def __getattr__(self, name):
        return getattr(self.stream, name)


def _git(args: list[str], cwd: Path) -> str | None:
    try:
        out = subprocess.run(
            ["git", *args], cwd=cwd, capture_output=True, text=True, timeout=10, check=True
        )
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def run_tags(program: str, config_path: Path | None, launch: str | None = None) -> dict[str, str]:
    """``workbench.launch`` (a command that reproduces the run), config path, git commit."""
    tags: dict[str, str] = {Tag.PROGRAM: program}
    if config_path is None:
        return tags
    config_path = config_path.resolve()
    root = _git(["rev-parse", "--show-toplevel"], config_path.parent)
    if root:
        rel = os.path.relpath(config_path, root)
        tags[Tag.CONFIG] = rel
        commit = _git(["rev-parse", "HEAD"], Path(root))
        if commit:
            tags["mlflow.source.git.commit"] = commit
            tags[Tag.GIT_COMMIT] = commit
        tags[Tag.REPO] = root
    else:
        rel = str(config_path)
        tags[Tag.CONFIG] = rel
    tags[Tag.LAUNCH] = launch or f"workbench train {program} --config {shlex.quote(rel)}"
    return tags


@dataclass
class RunResult:
    run_id: str | None
    status: str  # FINISHED | FAILED | KILLED
    error: str | None = None


def _raise_interrupt(signum, frame):  # SIGTERM behaves like Ctrl-C: the run ends KILLED
    raise KeyboardInterrupt(f"signal {signum}")


def run_program(
    program: str,
    cfg: _RunConfig,
    body: Callable[[RunContext], None],
    *,
    config_path: Path | None = None,
    tracking_uri: str | None = None,
    extra_tags: dict[str, str] | None = None,
    track: bool = True,
    system_metrics: bool = True,
) -> RunResult:
    tags = run_tags(program, config_path)
    tags.update(extra_tags or {})
    tracker: Tracker = (
        MlflowTracker(
            tracking_uri,
            experiment=os.environ.get("MLFLOW_EXPERIMENT_NAME") or cfg.experiment,
            run_name=cfg.run_name,
            tags=tags,
            system_metrics=system_metrics,
        )
        if track
        else NullTracker()
    )
    tracker.log_params(params_for_tracking(cfg))

    log_dir = Path(tempfile.mkdtemp(prefix="workbench-run-"))
    log_path = log_dir / "train.log"
    ctx = RunContext(
        cfg=cfg, tracker=tracker, faults=FaultPlan(harness_faults()), log_path=log_path
    )
    old_out, old_err = sys.stdout, sys.stderr
    old_term = signal.getsignal(signal.SIGTERM)
    status, error = "FINISHED", None
    with open(log_path, "w") as log_file:
        sys.stdout, sys.stderr = _Tee(old_out, log_file), _Tee(old_err, log_file)
        if threading_is_main():
            signal.signal(signal.SIGTERM, _raise_interrupt)
        try:
            ctx.log(f"run {tracker.run_id}: {program} training, {cfg.steps} steps")
            body(ctx)
            ctx.log("training finished")
        except KeyboardInterrupt as exc:
            status, error = "KILLED", f"interrupted ({exc or 'Ctrl-C'})"
            ctx.log(f"run killed: {error}")
        except Exception as exc:  # the run fails; the traceback goes into its log
            status, error = "FAILED", f"{type(exc).__name__}: {exc}"
            traceback.print_exc()
            ctx.log(f"run failed: {error}")
        finally:
            if threading_is_main():
                signal.signal(signal.SIGTERM, old_term)
            sys.stdout.flush()
            sys.stderr.flush()
            sys.stdout, sys.stderr = old_out, old_err
    try:
        tracker.flush()
        tracker.log_artifact(log_path, "logs")
    finally:
        tracker.finish(status)
    return RunResult(run_id=tracker.run_id, status=status, error=error)


def threading_is_main() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


def run_config_file(
    program: str, body: Callable[[RunContext], None], config_path: str | Path, **kwargs
) -> RunResult:
    """Load ``config_path`` as ``program``'s config and run ``body`` under the MLflow harness."""
    from trainer.config import load_config

    cfg = load_config(config_path, program)
    return run_program(program, cfg, body, config_path=Path(config_path), **kwargs)
