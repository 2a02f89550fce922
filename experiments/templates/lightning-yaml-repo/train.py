"""A PyTorch Lightning-style program without Lightning: a ``LitClassifier`` (training_step /
validation_step / configure_optimizers), a small ``Trainer`` loop, a LightningCLI-style YAML
(``fit --config config.yaml``), Lightning's metric names, plain MLflow tracking."""

import argparse

import mlflow
import torch
import yaml
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch.nn import functional as F


class LitClassifier(torch.nn.Module):
    def __init__(self, hidden: int, lr: float, weight_decay: float) -> None:
        super().__init__()
        self.lr, self.weight_decay = lr, weight_decay
        self.net = torch.nn.Sequential(
            torch.nn.Linear(64, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, 10)
        )

    def training_step(self, batch) -> torch.Tensor:
        x, y = batch
        return F.cross_entropy(self.net(x), y)

    def validation_step(self, batch) -> float:
        x, y = batch
        return F.cross_entropy(self.net(x), y).item()

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=self.lr, weight_decay=self.weight_decay)


def digits(data: dict, seed: int):
    x, y = load_digits(return_X_y=True)
    x = torch.tensor(x / 16.0, dtype=torch.float32)
    y = torch.tensor(y)
    x_tr, x_val, y_tr, y_val = train_test_split(
        x, y, test_size=data["val_fraction"], random_state=seed
    )
    if data.get("max_train_samples"):
        x_tr, y_tr = x_tr[: data["max_train_samples"]], y_tr[: data["max_train_samples"]]
    return (x_tr, y_tr), (x_val, y_val)


def fit(trainer: dict, model: LitClassifier, data: dict, seed: int) -> None:
    (x_tr, y_tr), val = digits(data, seed)
    opt = model.configure_optimizers()
    gen = torch.Generator().manual_seed(seed)
    step = epoch = 0
    while step < trainer["max_steps"]:
        order = torch.randperm(len(x_tr), generator=gen)
        for i in range(0, len(x_tr), data["batch_size"]):
            idx = order[i : i + data["batch_size"]]
            loss = model.training_step((x_tr[idx], y_tr[idx]))
            opt.zero_grad()
            loss.backward()
            if trainer.get("gradient_clip_val"):
                torch.nn.utils.clip_grad_norm_(model.parameters(), trainer["gradient_clip_val"])
            opt.step()
            step += 1
            if step % trainer["log_every_n_steps"] == 0:
                mlflow.log_metrics({"train_loss_step": loss.item(), "epoch": epoch}, step=step)
            if step % trainer["val_check_interval"] == 0:
                with torch.no_grad():
                    val_loss = model.validation_step(val)
                mlflow.log_metric("val_loss", val_loss, step=step)
                print(f"step {step} epoch {epoch}: val_loss {val_loss:.4f}", flush=True)
            if step >= trainer["max_steps"]:
                break
        epoch += 1


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("command", choices=["fit"])
    p.add_argument("--config", required=True)
    with open(p.parse_args().config) as f:
        cfg = yaml.safe_load(f)
    torch.set_num_threads(1)
    torch.manual_seed(cfg["seed_everything"])
    model = LitClassifier(**cfg["model"])
    with mlflow.start_run():
        mlflow.log_params(
            {
                f"{s}.{k}": v
                for s, sec in cfg.items()
                if isinstance(sec, dict)
                for k, v in sec.items()
            }
        )
        fit(cfg["trainer"], model, cfg["data"], cfg["seed_everything"])


if __name__ == "__main__":
    main()
