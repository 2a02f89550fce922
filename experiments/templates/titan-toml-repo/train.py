"""A torchtitan-style training loop: a TOML job config (``--job.config_file train.toml``),
``[section] key`` settings, torchtitan's metric names, plain MLflow tracking."""

import argparse
import time
import tomllib

import mlflow
import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split


def build_model(cfg: dict) -> torch.nn.Module:
    dim, layers = cfg["model"]["dim"], cfg["model"]["n_layers"]
    blocks, width = [], 64
    for _ in range(layers):
        blocks += [torch.nn.Linear(width, dim), torch.nn.GELU()]
        width = dim
    return torch.nn.Sequential(*blocks, torch.nn.Linear(width, 10))


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--job.config_file", dest="config_file", required=True)
    with open(p.parse_args().config_file, "rb") as f:
        cfg = tomllib.load(f)
    train, opt_cfg = cfg["training"], cfg["optimizer"]
    torch.set_num_threads(1)
    torch.manual_seed(train["seed"])

    x, y = load_digits(return_X_y=True)
    x = torch.tensor(x / 16.0, dtype=torch.float32)
    y = torch.tensor(y)
    x_tr, x_val, y_tr, y_val = train_test_split(x, y, test_size=0.2, random_state=train["seed"])
    model = build_model(cfg)
    opt = torch.optim.AdamW(
        model.parameters(),
        lr=opt_cfg["lr"],
        eps=opt_cfg["eps"],
        weight_decay=opt_cfg["weight_decay"],
    )
    warmup = cfg["lr_scheduler"]["warmup_steps"]
    gen = torch.Generator().manual_seed(train["seed"])

    with mlflow.start_run():
        mlflow.log_params({f"{s}.{k}": v for s, sec in cfg.items() for k, v in sec.items()})
        for step in range(1, train["steps"] + 1):
            t0 = time.perf_counter()
            lr = opt_cfg["lr"] * min(1.0, step / max(1, warmup))
            for g in opt.param_groups:
                g["lr"] = lr
            idx = torch.randint(0, len(x_tr), (train["local_batch_size"],), generator=gen)
            loss = torch.nn.functional.cross_entropy(model(x_tr[idx]), y_tr[idx])
            opt.zero_grad()
            loss.backward()
            norm = torch.nn.utils.clip_grad_norm_(model.parameters(), train["max_norm"] or 1e9)
            opt.step()
            if step % cfg["metrics"]["log_freq"] == 0:
                mlflow.log_metrics(
                    {
                        "loss_metrics/global_avg_loss": loss.item(),
                        "grad_norm": norm.item(),
                        "lr": lr,
                        "tps": len(idx) / (time.perf_counter() - t0),
                    },
                    step=step,
                )
            if step % cfg["validation"]["freq"] == 0:
                with torch.no_grad():
                    val = torch.nn.functional.cross_entropy(model(x_val), y_val).item()
                mlflow.log_metric("validation/loss", val, step=step)
                print(
                    f"step {step:4d}  loss {loss.item():.4f}  validation/loss {val:.4f}", flush=True
                )


if __name__ == "__main__":
    main()
