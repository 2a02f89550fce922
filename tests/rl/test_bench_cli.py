"""`workbench bench prefix-tree --json`: the report's fields and their consistency (timings are
reported, never asserted)."""

from __future__ import annotations

import json

import typer
from typer.testing import CliRunner

from workbench.cli import bench
from workbench.errors import BadInputError

app = typer.Typer()
bench.register(app)


def _run(*args):
    return CliRunner().invoke(app, ["bench", "prefix-tree", *args])


def test_prefix_tree_bench_json():
    res = _run("--episodes", "3", "--turns", "2", "--system-tokens", "8",
               "--observation-tokens", "3", "--completion-tokens", "2", "--repeats", "1",
               "--threads", "1", "--json")  # fmt: skip
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    # 3 episodes x 2 turns: unmerged = 3 * (13 + 18), merged = 8 + 3 * 10
    assert out["tokens_unmerged"] == 93 and out["tokens_merged"] == 38
    assert out["token_ratio_limit"] == round(93 / 38, 3)
    assert out["step_time_merged_s"] > 0 and out["step_time_unmerged_s"] > 0
    assert out["time_ratio"] == round(
        out["step_time_unmerged_s"] / out["step_time_merged_s"], 3
    ) or (abs(out["time_ratio"] - out["step_time_unmerged_s"] / out["step_time_merged_s"]) < 0.05)
    # same loss either way (the merge changes the cost, not the computation)
    assert abs(out["loss_merged"] - out["loss_unmerged"]) <= 1e-5 * max(
        1.0, abs(out["loss_unmerged"])
    )


def test_prefix_tree_bench_bad_input_is_a_bad_input_error():
    res = _run("--episodes", "0")
    assert isinstance(res.exception, BadInputError) and ">= 1" in str(res.exception)


def test_loop_refuses_bad_settings_and_a_missing_scenario_set_before_any_work(tmp_path):
    from workbench.cli import main

    app = main.app
    out = tmp_path / "out"
    res = CliRunner().invoke(app, ["loop", "--scenarios", str(tmp_path), "--out", str(out)])
    assert isinstance(res.exception, BadInputError) and "no scenario manifest" in str(res.exception)
    res = CliRunner().invoke(
        app, ["loop", "--scenarios", str(tmp_path), "--out", str(out), "--temperature", "9"]
    )
    assert isinstance(res.exception, BadInputError) and "temperature" in str(res.exception)
    assert not out.exists()  # nothing written for a bad command


def test_train_sft_refuses_a_bad_stop_probability_before_touching_the_policy(tmp_path):
    from workbench.cli import main

    res = CliRunner().invoke(main.app, ["train", "sft", "--episodes", str(tmp_path),
                                        "--policy", str(tmp_path / "p"), "--stop-at-p", "1.5"])  # fmt: skip
    assert isinstance(res.exception, BadInputError) and "stop-at" in str(res.exception)
    assert not (tmp_path / "p").exists()
