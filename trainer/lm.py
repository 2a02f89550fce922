"""Language-model training of our MiniMax-M2 MoE on the corpus shipped in ``model/data/``.

``workbench train lm --config FILE``. Sections: data → model → optimizer → loop. All metrics
go through ``ctx.tracker`` (MLflow, or its no-op twin):

  train/loss, eval/loss, grad_norm, lr, tokens_per_sec, step_time,
  moe/load_max_over_mean (worst layer), moe/router_entropy (mean over layers),
  moe/dead_experts (experts, summed over layers, that got < 5% of a fair share of tokens).
"""

from __future__ import annotations

import os
import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch

from model.files import atomic_path
from trainer.config import LMConfig
from trainer.data import BatchReader
from trainer.faults import FaultPlan, MemoryMeter
from trainer.harness import EarlyStopping, RunContext, fp16_gradients, lr_at
from trainer.hooks import load_hooks

DEAD_FRACTION = 0.05  # an expert with < 5% of its fair share of routed tokens counts as dead

# ---------------------------------------------------------------------------- data


def load_tokens(corpus: str | None) -> tuple[torch.Tensor, int]:
    """All corpus token ids (1-D) with the shipped byte-level BPE tokenizer, and its vocab."""
    from model.tokenizer import default_tokenizer

    tok = default_tokenizer()
    if corpus is None:
        from model.data import corpus_path

        corpus = str(corpus_path())
    text = Path(corpus).read_text(encoding="utf-8")
    return torch.tensor(tok.encode(text).ids, dtype=torch.long), tok.get_vocab_size()


def unigram_logprobs(ids: torch.Tensor, vocab: int) -> torch.Tensor:
    counts = torch.bincount(ids, minlength=vocab).double() + 1.0  # add-one smoothing
    return (counts / counts.sum()).log().float()


def moe_health(router_stats: list[dict]) -> dict[str, float]:
    loads = torch.stack([s["load"].float() for s in router_stats])  # (L, E)
    fair = 1.0 / loads.shape[1]
    return {
        "moe/load_max_over_mean": (loads.max(dim=1).values / fair).max().item(),
        "moe/router_entropy": torch.stack([s["entropy"] for s in router_stats]).mean().item(),
        "moe/dead_experts": float((loads < DEAD_FRACTION * fair).sum().item()),
    }


def save_checkpoint(model, opt, step: int, directory: str) -> Path:
    path = Path(directory) / f"step_{step:06d}.pt"
    with atomic_path(path) as tmp:
        torch.save({"step": step, "model": model.state_dict(), "optimizer": opt.state_dict()}, tmp)
    return path


# ---------------------------------------------------------------------------- training


def train(ctx: RunContext) -> None:
    from model import MiniMaxM2Config, MiniMaxM2ForCausalLM

    cfg: LMConfig = ctx.cfg  # type: ignore[assignment]
    faults: FaultPlan = ctx.faults
    torch.manual_seed(cfg.seed)
    torch.set_num_threads(int(os.environ.get("WORKBENCH_TRAIN_THREADS", "1")))
    hooks = load_hooks(cfg.hooks)  # the repo's own code (none: every hook is a no-op)

    # --- data
    ids, tok_vocab = load_tokens(cfg.data.corpus)
    n_eval = int(len(ids) * cfg.data.eval_fraction)
    train_ids, eval_ids = ids[:-n_eval], ids[-n_eval:]
    limit = cfg.data.max_train_items
    if limit:
        train_ids = train_ids[: max(limit, cfg.data.seq_len + 1)]
    T = cfg.data.seq_len
    unigram = unigram_logprobs(train_ids, tok_vocab)
    clean_logp = unigram[train_ids].mean().item()

    def read(index: int) -> torch.Tensor:
        bs = cfg.batch_size * faults.batch_growth(index)
        rng = np.random.default_rng((cfg.seed, index))
        starts = torch.from_numpy(rng.integers(0, len(train_ids) - T, bs))
        batch = torch.stack([train_ids[s : s + T] for s in starts.tolist()])  # (B, T)
        return hooks.on_batch(index, batch)

    def is_valid(batch: torch.Tensor) -> bool:
        # Data validation: a batch far less likely than the corpus under unigram stats is junk.
        return unigram[batch].mean().item() > clean_logp - 1.5

    reader = BatchReader(read, cfg.data, faults, is_valid)
    eval_rng = np.random.default_rng(10_000 + cfg.seed)
    eval_starts = eval_rng.integers(0, len(eval_ids) - T, (cfg.eval_batches, cfg.batch_size))
    eval_batches = [torch.stack([eval_ids[s : s + T] for s in row]) for row in eval_starts]

    # --- model
    overrides = dict(cfg.model.overrides)
    mcfg = MiniMaxM2Config.from_preset(cfg.model.preset, **overrides)
    if mcfg.vocab_size < tok_vocab:
        raise ValueError(f"model vocab_size {mcfg.vocab_size} < tokenizer vocab {tok_vocab}")
    model = MiniMaxM2ForCausalLM(mcfg)
    hooks.on_init(model)

    # --- optimizer
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2]
    opt = torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": cfg.optimizer.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ],
        lr=cfg.optimizer.lr,
        betas=cfg.optimizer.betas,
        eps=cfg.optimizer.eps,
    )
    n_params = sum(p.numel() for p in model.parameters())
    meter = MemoryMeter(faults.memory_budget_bytes(), base_bytes=4 * 4 * n_params)
    autocast = (
        (lambda: torch.autocast("cpu", dtype=torch.bfloat16))
        if cfg.precision == "bf16"
        else nullcontext
    )
    ctx.log(
        f"lm {cfg.model.preset}: {n_params / 1e6:.2f}M params, {len(train_ids)} train tokens, "
        f"{len(eval_ids)} eval tokens, batch {cfg.batch_size}x{T}"
    )

    @torch.no_grad()
    def evaluate() -> float:
        model.eval()
        with autocast():
            losses = [model(b, labels=b).loss.float().item() for b in eval_batches]
        model.train()
        return float(np.mean(losses))

    # --- loop
    clip = cfg.optimizer.grad_clip or float("inf")
    stopper = EarlyStopping(cfg.early_stop_patience, restore=cfg.early_stop_restore)
    for step in range(cfg.steps):
        t0 = time.perf_counter()
        lr = lr_at(step, cfg.steps, cfg.optimizer)
        for group in opt.param_groups:
            group["lr"] = lr
        batch = reader.next()

        with meter.hooks(), autocast():
            out = model(batch, labels=batch)
        loss = out.loss.float()
        opt.zero_grad(set_to_none=True)
        (loss * hooks.loss_weight(step, batch)).backward()
        if cfg.precision == "fp16":
            fp16_gradients(model.parameters(), cfg.optimizer.loss_scale)
        hooks.on_after_backward(step, model)
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), clip).item()
        opt.step()
        if cfg.moe.bias_update_rate > 0:
            model.update_router_bias(cfg.moe.bias_update_rate)

        dt = time.perf_counter() - t0
        metrics = {
            "train/loss": loss.item(),
            "grad_norm": grad_norm,
            "lr": lr,
            "tokens_per_sec": batch.numel() / dt,
            "step_time": dt,
            **moe_health(out.router_stats),
        }
        if step % cfg.eval_interval == 0 or step == cfg.steps - 1:
            metrics["eval/loss"] = evaluate()
            ctx.log(
                f"step {step}: train/loss {metrics['train/loss']:.4f} "
                f"eval/loss {metrics['eval/loss']:.4f} lr {lr:.2e} "
                f"load_max/mean {metrics['moe/load_max_over_mean']:.2f} "
                f"tok/s {metrics['tokens_per_sec']:.0f}"
            )
            ctx.upload_log()
            stopper.update(metrics["eval/loss"], step, model)
        ctx.tracker.log_metrics(metrics, step)
        if cfg.checkpoint_interval and (step + 1) % cfg.checkpoint_interval == 0:
            save_checkpoint(model, opt, step + 1, cfg.checkpoint_dir)
        if stopper.should_stop:
            ctx.log(stopper.reason(step))
            if stopper.restore_best(model):
                # The run ends on its best weights; their eval is the run's final eval.
                final = evaluate()
                ctx.tracker.log_metrics({"eval/loss": final}, step)
                ctx.log(f"restored the step-{stopper.best_step} weights: eval/loss {final:.4f}")
            break


def main(config_path, **kwargs):
    """Run the lm program from a YAML config (kwargs: tracking_uri, system_metrics, ...)."""
    from trainer.harness import run_config_file

    return run_config_file("lm", train, config_path, **kwargs)
