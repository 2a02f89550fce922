"""Knobs, not keys: a remedy's knob resolves to one place in the repo at hand (a YAML / JSON /
TOML key or a launch flag) and is edited in that file's own format — the diff is its line."""

from __future__ import annotations

import difflib
from pathlib import Path

import pytest

from workbench.doctor.types import PatchOp
from workbench.supervisor import configedit
from workbench.supervisor.patches import (
    HarnessGuardError,
    KnobAmbiguous,
    KnobMissing,
    apply_blocks,
    apply_ops,
    parse_blocks,
    patch_repo_config,
)

TEMPLATES = Path(__file__).resolve().parents[2] / "experiments" / "templates"


def _diff(a: str, b: str) -> list[str]:
    return [
        line
        for line in difflib.unified_diff(a.splitlines(), b.splitlines(), lineterm="", n=0)
        if line[:1] in "+-" and not line.startswith(("+++", "---"))
    ]


def _patch(files, config_rel, *ops, launch="", launch_rel=None, params=None):
    return patch_repo_config(
        files,
        [PatchOp(key=k, op=o, value=v) for k, o, v in ops],
        config_rel=config_rel,
        launch=launch,
        launch_rel=launch_rel,
        params=params,
    )


def test_json_hf_args_keep_indentation_and_change_one_line():
    text = (TEMPLATES / "hf-json-repo" / "args.json").read_text()
    changed, _, changes = _patch({"args.json": text}, "args.json", ("lr", "mul", 0.1))
    diff = _diff(text, changed["args.json"])
    assert diff == ['-  "learning_rate": 0.15,', '+  "learning_rate": 0.015,'], diff
    assert "learning_rate" in changes[0]


def test_toml_torchtitan_keeps_comments_and_changes_one_line():
    text = (TEMPLATES / "titan-toml-repo" / "train.toml").read_text()
    changed, _, _ = _patch({"train.toml": text}, "train.toml", ("lr", "mul", 10.0))
    assert _diff(text, changed["train.toml"]) == ["-lr = 2e-5", "+lr = 0.0002"]
    changed, _, _ = _patch({"train.toml": text}, "train.toml", ("grad_clip", "set", 0.5))
    assert _diff(text, changed["train.toml"]) == [
        "-max_norm = 1.0  # gradient clipping",
        "+max_norm = 0.5  # gradient clipping",
    ]


def test_yaml_lightning_keeps_comments_and_changes_one_line():
    text = (TEMPLATES / "lightning-yaml-repo" / "config.yaml").read_text()
    changed, _, _ = _patch({"config.yaml": text}, "config.yaml", ("train_items", "set", None))
    assert _diff(text, changed["config.yaml"]) == [
        "-  max_train_samples: 48     # quick experiments on a subset",
        "+  max_train_samples: null     # quick experiments on a subset",
    ]
    changed, _, _ = _patch({"config.yaml": text}, "config.yaml", ("lr", "mul", 0.1))
    assert _diff(text, changed["config.yaml"]) == [
        "-  lr: 0.003                 # Adam",
        "+  lr: 0.0003                 # Adam",
    ]


def test_yaml_ours_with_flow_mappings_and_a_new_key_from_the_programs_params():
    text = (TEMPLATES / "lm-repo" / "configs" / "train.yaml").read_text()
    changed, _, _ = _patch(
        {"c.yaml": text}, "c.yaml", ("lr", "mul", 0.1), ("batch_size", "mul", 0.5)
    )
    assert _diff(text, changed["c.yaml"]) == [
        "-batch_size: 8",
        "+batch_size: 4",
        "-  lr: 0.003",
        "+  lr: 0.0003",
    ]
    # data.validate is not in the file, but the program reads (and logged) it: added in place
    changed, _, _ = _patch(
        {"c.yaml": text},
        "c.yaml",
        ("validate_data", "set", True),
        params={"data.validate": "False"},
    )
    assert _diff(text, changed["c.yaml"]) == ["+  validate: true"]
    assert configedit.parse_config(changed["c.yaml"], "yaml")["data"]["validate"] is True


@pytest.mark.parametrize(
    "launch,edited",
    [
        ("python train.py --args {config} --lr 0.5", "python train.py --args {config} --lr 0.05"),
        (
            "python train.py --args {config} --learning_rate=0.5",
            "python train.py --args {config} --learning_rate=0.05",
        ),
        ("python train.py optimizer.lr=0.5 +x=1", "python train.py optimizer.lr=0.05 +x=1"),
    ],
)
def test_launch_flag_edits_change_the_launch_line_only(launch, edited):
    spec = f'# how to launch\nlaunch: "{launch}"\nconfig: args.json\n'
    files = {"args.json": '{\n  "seed": 0\n}\n', "workbench.yaml": spec}
    changed, cmd, _ = _patch(
        files, "args.json", ("lr", "mul", 0.1), launch=launch, launch_rel="workbench.yaml"
    )
    assert cmd == edited and set(changed) == {"workbench.yaml"}
    assert _diff(spec, changed["workbench.yaml"]) == [
        f'-launch: "{launch}"',
        f'+launch: "{edited}"',
    ]


def test_a_missing_knob_is_skipped_with_a_reason_not_a_crash():
    with pytest.raises(
        KnobMissing, match="no gradient-clipping setting in args.json or the launch"
    ):
        _patch({"args.json": '{"learning_rate": 0.1}'}, "args.json", ("grad_clip", "set", 1.0))
    with pytest.raises(KnobMissing, match="knob map"):
        _patch({"c.toml": "[x]\ny = 1\n"}, "c.toml", ("early_stopping", "set", 2))


def test_two_candidate_locations_stop_and_name_both():
    with pytest.raises(KnobAmbiguous, match="learning_rate in args.json and --lr in the launch"):
        _patch(
            {"args.json": '{"learning_rate": 0.1}'},
            "args.json",
            ("lr", "mul", 0.1),
            launch="python t.py --lr 0.1",
        )
    with pytest.raises(KnobAmbiguous, match="optimizer.lr in c.yaml and lr in c.yaml"):
        _patch({"c.yaml": "lr: 1\noptimizer: {lr: 2}\n"}, "c.yaml", ("lr", "mul", 0.1))


def test_bad_input_config_in_its_own_format_and_a_flag_given_twice():
    with pytest.raises(configedit.EditError, match="args.json is not valid JSON"):
        _patch({"args.json": '{"learning_rate": 0.1,}'}, "args.json", ("lr", "mul", 0.1))
    with pytest.raises(configedit.EditError, match="train.toml is not valid TOML"):
        _patch({"train.toml": "[optimizer\nlr = 1"}, "train.toml", ("lr", "mul", 0.1))
    with pytest.raises(configedit.EditError, match="c.yaml is not valid YAML"):
        _patch({"c.yaml": "a: [1, 2\n"}, "c.yaml", ("lr", "mul", 0.1))
    with pytest.raises(configedit.EditError, match="gives --lr twice"):
        configedit.parse_flags("python t.py --lr 1 --lr=2")


def test_the_guard_refuses_harness_switches_in_every_patch_form():
    with pytest.raises(HarnessGuardError):
        apply_ops({"faults": []}, [PatchOp(key="faults", op="delete")])
    with pytest.raises(HarnessGuardError):
        _patch({"c.yaml": "faults: []\n"}, "c.yaml", ("faults", "delete", None))
    blocks = parse_blocks(
        "workbench.yaml\n<<<<<<< SEARCH\nenv: {}\n=======\n"
        "env: {WORKBENCH_HARNESS_FAULTS: '[]'}\n>>>>>>> REPLACE"
    )
    with pytest.raises(HarnessGuardError, match="WORKBENCH_HARNESS_FAULTS"):
        apply_blocks({"workbench.yaml": "env: {}\n"}, blocks)
    code = parse_blocks("trainer/faults.py\n<<<<<<< SEARCH\na\n=======\nb\n>>>>>>> REPLACE")
    with pytest.raises(HarnessGuardError, match="harness's code"):
        apply_blocks({"trainer/faults.py": "a\n"}, code)


def test_apply_ops_on_a_config_dict_resolves_knobs():
    cfg = {"optimizer": {"lr": 0.1}, "batch_size": 8, "data": {"max_train_items": 40}}
    out = apply_ops(
        cfg,
        [
            PatchOp(key="lr", op="mul", value=0.5),
            PatchOp(key="batch_size", op="mul", value=0.5),
            PatchOp(key="train_items", op="set", value=None),
            PatchOp(key="data.validate", op="set", value=True),
        ],
    )
    assert out == {
        "optimizer": {"lr": 0.05},
        "batch_size": 4,
        "data": {"max_train_items": None, "validate": True},
    }
    assert cfg["batch_size"] == 8
