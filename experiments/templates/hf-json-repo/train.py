"""Fine-tune a small MLP on scikit-learn's digits, Hugging Face ``TrainingArguments``-style.

Settings come from a JSON file (``--args args.json``) with the names of HF's TrainingArguments;
any of them can be overridden on the command line (``--learning_rate 3e-4``). Tracking is
plain MLflow: ``mlflow.start_run()`` (it joins the run named by ``MLFLOW_RUN_ID`` when a
launcher created one), the args as params, HF Trainer's metric names.
"""

import argparse
import json
import math
import time

import mlflow
import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from sklearn.preprocessing import StandardScaler

DEFAULTS = {
    "learning_rate": 5e-5,
    "num_train_epochs": 3,
    "per_device_train_batch_size": 8,
    "warmup_steps": 0,
    "weight_decay": 0.0,
    "max_grad_norm": 1.0,
    "logging_steps": 10,
    "eval_steps": 50,
    "seed": 42,
}


def parse_args() -> dict:
    p = argparse.ArgumentParser()
    p.add_argument("--args", required=True, help="TrainingArguments as JSON")
    for name, value in DEFAULTS.items():
        p.add_argument(f"--{name}", type=type(value), default=None)
    cli = p.parse_args()
    with open(cli.args) as f:
        args = {**DEFAULTS, **json.load(f)}
    args.update({k: v for k, v in vars(cli).items() if k in DEFAULTS and v is not None})
    return args


def main() -> None:
    args = parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(args["seed"])
    x, y = load_digits(return_X_y=True)
    x_tr, x_ev, y_tr, y_ev = train_test_split(x, y, test_size=0.25, random_state=args["seed"])
    scaler = StandardScaler().fit(x_tr)
    x_tr, x_ev = (torch.tensor(scaler.transform(a), dtype=torch.float32) for a in (x_tr, x_ev))
    y_tr, y_ev = torch.tensor(y_tr), torch.tensor(y_ev)

    model = torch.nn.Sequential(torch.nn.Linear(64, 128), torch.nn.ReLU(), torch.nn.Linear(128, 10))
    opt = torch.optim.AdamW(
        model.parameters(), lr=args["learning_rate"], weight_decay=args["weight_decay"]
    )
    bs = args["per_device_train_batch_size"]
    steps_per_epoch = math.ceil(len(x_tr) / bs)
    total = steps_per_epoch * args["num_train_epochs"]

    def lr_at(step: int) -> float:  # HF's linear schedule with warmup
        if step < args["warmup_steps"]:
            return args["learning_rate"] * (step + 1) / args["warmup_steps"]
        return args["learning_rate"] * max(
            0.0, (total - step) / max(1, total - args["warmup_steps"])
        )

    with mlflow.start_run():
        mlflow.log_params(args)
        step = 0
        for epoch in range(args["num_train_epochs"]):
            order = torch.randperm(len(x_tr))
            for i in range(0, len(x_tr), bs):
                t0 = time.perf_counter()
                idx = order[i : i + bs]
                for g in opt.param_groups:
                    g["lr"] = lr_at(step)
                loss = torch.nn.functional.cross_entropy(model(x_tr[idx]), y_tr[idx])
                opt.zero_grad()
                loss.backward()
                clip = args["max_grad_norm"] or float("inf")
                grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), clip).item()
                opt.step()
                if step % args["logging_steps"] == 0:
                    mlflow.log_metrics(
                        {
                            "loss": loss.item(),
                            "learning_rate": lr_at(step),
                            "grad_norm": grad_norm,
                            "epoch": epoch + i / len(x_tr),
                            "train_samples_per_second": len(idx) / (time.perf_counter() - t0),
                        },
                        step=step,
                    )
                if step % args["eval_steps"] == 0 or step == total - 1:
                    with torch.no_grad():
                        logits = model(x_ev)
                        eval_loss = torch.nn.functional.cross_entropy(logits, y_ev).item()
                        acc = (logits.argmax(-1) == y_ev).float().mean().item()
                    mlflow.log_metrics({"eval_loss": eval_loss, "eval_accuracy": acc}, step=step)
                    print(
                        f"step {step} loss {loss.item():.4f} eval_loss {eval_loss:.4f}", flush=True
                    )
                step += 1


if __name__ == "__main__":
    main()
