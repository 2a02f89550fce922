"""The ``workbench mle`` sub-app: prepare and grade with --json; bad input is one clean line."""

from __future__ import annotations

import json

import pandas as pd
from typer.testing import CliRunner

from workbench.cli.main import app

runner = CliRunner()


def test_prepare_then_grade_json(tmp_path):
    data = tmp_path / "data"
    res = runner.invoke(
        app, ["mle", "prepare", "breast-cancer-diagnosis", "--data-dir", str(data), "--json"]
    )
    assert res.exit_code == 0, res.output
    rows = json.loads(res.stdout)
    assert rows[0]["task"] == "breast-cancer-diagnosis"
    answers = pd.read_csv(data / "breast-cancer-diagnosis" / "prepared" / "private" / "test.csv")
    sub = tmp_path / "sub.csv"
    answers.assign(malignant=answers["malignant"] * 0.9 + 0.05).to_csv(sub, index=False)
    res = runner.invoke(
        app,
        ["mle", "grade", "breast-cancer-diagnosis", str(sub), "--data-dir", str(data), "--json"],
    )
    assert res.exit_code == 0, res.output
    report = json.loads(res.stdout)
    assert report["score"] == 1.0 and report["medal"] == "gold" and not report["is_lower_better"]


def test_unknown_task_is_a_bad_input_error(tmp_path):
    res = runner.invoke(app, ["mle", "run", str(tmp_path / "nowhere"), "--no-track"])
    assert res.exit_code != 0
    assert "not a competition directory" in str(res.exception)
