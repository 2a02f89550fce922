"""``workbench diagnose`` works unchanged on runs logged by transformers' ``Trainer``
(its MLflow integration, HF metric names: ``loss``, ``eval_loss``, ``grad_norm``,
``learning_rate``, an end-of-run ``train_loss`` summary)."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

transformers = pytest.importorskip("transformers")


def _train(tmp_path, name: str, lr: float, max_grad_norm: float, steps: int = 24) -> None:
    from transformers import GPT2Config, GPT2LMHeadModel, Trainer, TrainingArguments

    torch.manual_seed(0)
    model = GPT2LMHeadModel(
        GPT2Config(vocab_size=32, n_positions=16, n_embd=16, n_layer=1, n_head=2)
    )
    seq = torch.arange(16) % 7  # a learnable pattern
    data = [{"input_ids": seq.clone(), "labels": seq.clone()} for _ in range(64)]
    args = TrainingArguments(
        output_dir=str(tmp_path / name),
        run_name=name,
        max_steps=steps,
        per_device_train_batch_size=8,
        learning_rate=lr,
        max_grad_norm=max_grad_norm,
        logging_steps=1,
        eval_strategy="steps",
        eval_steps=6,
        report_to=["mlflow"],
        save_strategy="no",
        use_cpu=True,
        disable_tqdm=True,
        dataloader_num_workers=0,
    )
    Trainer(model=model, args=args, train_dataset=data, eval_dataset=data[:8]).train()


def test_diagnose_a_hf_trainer_run(store, tmp_path, monkeypatch):
    from workbench.cli.main import app

    monkeypatch.setenv("MLFLOW_TRACKING_URI", store.uri)
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "hf")
    monkeypatch.setenv("HF_MLFLOW_LOG_ARTIFACTS", "0")
    _train(tmp_path, "ok", lr=5e-3, max_grad_norm=1.0)
    _train(tmp_path, "blowup", lr=1e4, max_grad_norm=0.0)  # no clipping, absurd lr
    runs = {
        r.info.run_name: r
        for r in store.client.search_runs([store.client.get_experiment_by_name("hf").experiment_id])
    }
    assert {"loss", "grad_norm", "learning_rate", "eval_loss", "train_loss"} <= set(
        runs["ok"].data.metrics
    )

    res = CliRunner().invoke(app, ["diagnose", "--experiment", "hf", "--json"])
    assert res.exit_code == 0, res.output
    verdicts = {v["run_id"]: v for v in json.loads(res.stdout)}
    ok = verdicts[runs["ok"].info.run_id]
    assert ok["status"] == "healthy", ok
    bad = verdicts[runs["blowup"].info.run_id]
    assert bad["status"] == "failing"
    # The findings name HF's own metric names: the aliases resolved `loss`/`grad_norm`.
    assert {f["metric"] for f in bad["findings"]} <= {"loss", "grad_norm", "eval_loss"}
    assert bad["diagnosis"]["cause"] in {"lr_too_high", "missing_grad_clip", "fp_overflow"}
