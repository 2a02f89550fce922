"""A second, non-MoE training program: a small MLP/CNN on scikit-learn's bundled digits.

It has the same knobs and repo hooks as the LM but logs under HF-Trainer-style names (``loss``,
``eval_loss``, ``grad_norm``, ``learning_rate``, ``epoch``, ``train_samples_per_second``), so
nothing downstream can lean on our own metric names.
"""

from __future__ import annotations

import time
from contextlib import nullcontext

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from trainer.config import DigitsConfig, DigitsModelConfig
from trainer.data import BatchReader
from trainer.faults import FaultPlan, MemoryMeter
from trainer.harness import EarlyStopping, RunContext, fp16_gradients, lr_at
from trainer.hooks import load_hooks

# ---------------------------------------------------------------------------- data


def load_digits_split(eval_fraction: float, seed: int) -> tuple[torch.Tensor, ...]:
    """(x_train, y_train, x_eval, y_eval); pixels scaled to [0, 1]."""
    from sklearn.datasets import load_digits

    ds = load_digits()
    x = torch.tensor(ds.data, dtype=torch.float32) / 16.0
    y = torch.tensor(ds.target, dtype=torch.long)
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(1234 + seed))
    n_eval = int(len(x) * eval_fraction)
    ev, tr = perm[:n_eval], perm[n_eval:]
    return x[tr], y[tr], x[ev], y[ev]


# ---------------------------------------------------------------------------- model


class DigitsNet(nn.Module):
    def __init__(self, cfg: DigitsModelConfig) -> None:
        super().__init__()
        self.arch = cfg.arch
        if cfg.arch == "mlp":
            dims = [64] + [cfg.hidden] * cfg.depth
            layers: list[nn.Module] = []
            for a, b in zip(dims[:-1], dims[1:], strict=True):
                layers += [nn.Linear(a, b), nn.ReLU()]
            self.body = nn.Sequential(*layers)
            self.head = nn.Linear(dims[-1], 10)
        else:  # a small CNN over the 8×8 image
            c = max(4, cfg.hidden // 4)
            self.body = nn.Sequential(
                nn.Unflatten(1, (1, 8, 8)),
                nn.Conv2d(1, c, 3, padding=1),
                nn.ReLU(),
                nn.Conv2d(c, c, 3, padding=1),
                nn.ReLU(),
                nn.Flatten(),
            )
            self.head = nn.Linear(c * 64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.body(x)  # (B, H)
        return self.head(h)  # (B, 10)


# ---------------------------------------------------------------------------- training


def train(ctx: RunContext) -> None:
    cfg: DigitsConfig = ctx.cfg  # type: ignore[assignment]
    faults: FaultPlan = ctx.faults
    torch.manual_seed(cfg.seed)
    torch.set_num_threads(1)
    hooks = load_hooks(cfg.hooks)  # the repo's own code (none: every hook is a no-op)

    # --- data
    x_tr, y_tr, x_ev, y_ev = load_digits_split(cfg.data.eval_fraction, cfg.seed)
    limit = cfg.data.max_train_items
    if limit:
        x_tr, y_tr = x_tr[:limit], y_tr[:limit]
    n_train = len(x_tr)

    def read(index: int) -> tuple[torch.Tensor, torch.Tensor]:
        bs = cfg.batch_size * faults.batch_growth(index)
        rng = np.random.default_rng((cfg.seed, index))
        idx = torch.from_numpy(rng.integers(0, n_train, bs))
        return hooks.on_batch(index, (x_tr[idx], y_tr[idx]))

    def is_valid(batch) -> bool:
        x, _ = batch
        return bool(x.min() >= 0 and x.max() <= 1.0)

    reader = BatchReader(read, cfg.data, faults, is_valid)

    # --- model and optimizer
    model = DigitsNet(cfg.model)
    hooks.on_init(model)
    opt = torch.optim.AdamW(
        model.parameters(),
        lr=cfg.optimizer.lr,
        betas=cfg.optimizer.betas,
        eps=cfg.optimizer.eps,
        weight_decay=cfg.optimizer.weight_decay,
    )
    n_params = sum(p.numel() for p in model.parameters())
    meter = MemoryMeter(faults.memory_budget_bytes(), base_bytes=4 * 4 * n_params)
    autocast = (
        (lambda: torch.autocast("cpu", dtype=torch.bfloat16))
        if cfg.precision == "bf16"
        else nullcontext
    )
    ctx.log(f"digits {cfg.model.arch}: {n_params} params, {n_train} train / {len(x_ev)} eval")

    def evaluate() -> tuple[float, float]:
        model.eval()
        with torch.no_grad(), autocast():
            logits = model(x_ev).float()
        model.train()
        return F.cross_entropy(logits, y_ev).item(), (
            logits.argmax(-1) == y_ev
        ).float().mean().item()

    # --- loop
    seen = 0
    clip = cfg.optimizer.grad_clip or float("inf")
    stopper = EarlyStopping(cfg.early_stop_patience, restore=cfg.early_stop_restore)
    for step in range(cfg.steps):
        t0 = time.perf_counter()
        lr = lr_at(step, cfg.steps, cfg.optimizer)
        for group in opt.param_groups:
            group["lr"] = lr
        x, y = reader.next()

        with meter.hooks(), autocast():
            logits = model(x)
            loss = F.cross_entropy(logits.float(), y)
        opt.zero_grad(set_to_none=True)
        (loss * hooks.loss_weight(step, (x, y))).backward()
        if cfg.precision == "fp16":
            fp16_gradients(model.parameters(), cfg.optimizer.loss_scale)
        hooks.on_after_backward(step, model)
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), clip).item()
        opt.step()

        seen += len(x)
        dt = time.perf_counter() - t0
        metrics = {
            "loss": loss.item(),
            "grad_norm": grad_norm,
            "learning_rate": lr,
            "epoch": seen / n_train,
            "train_samples_per_second": len(x) / dt,
        }
        if step % cfg.eval_interval == 0 or step == cfg.steps - 1:
            metrics["eval_loss"], metrics["eval_accuracy"] = evaluate()
            ctx.log(
                f"step {step}: loss {metrics['loss']:.4f} eval_loss {metrics['eval_loss']:.4f} "
                f"acc {metrics['eval_accuracy']:.3f} lr {lr:.2e}"
            )
            ctx.upload_log()
            stopper.update(metrics["eval_loss"], step, model)
        ctx.tracker.log_metrics(metrics, step)
        if stopper.should_stop:
            ctx.log(stopper.reason(step))
            if stopper.restore_best(model):
                # The run ends on its best weights; their eval is the run's final eval.
                final, acc = evaluate()
                ctx.tracker.log_metrics({"eval_loss": final, "eval_accuracy": acc}, step)
                ctx.log(f"restored the step-{stopper.best_step} weights: eval_loss {final:.4f}")
            break


def main(config_path, **kwargs):
    """Run the digits program from a YAML config (kwargs: tracking_uri, system_metrics, ...)."""
    from trainer.harness import run_config_file

    return run_config_file("digits", train, config_path, **kwargs)
