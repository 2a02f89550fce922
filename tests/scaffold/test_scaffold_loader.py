"""The scaffold's data files: they load, the alias map knows the common frameworks' metric
names, a user can extend it without code, and broken files fail with the file and entry named."""

from __future__ import annotations

import shutil

import pytest
import yaml

from scaffold.loader import PACKAGED, ScaffoldError, load_scaffold
from workbench.doctor.series import resolve_roles


def roles(names: dict[str, int]) -> dict[str, str]:
    return resolve_roles(names, load_scaffold(None).metrics)


def test_packaged_scaffold_loads_every_detector_and_cause():
    sc = load_scaffold(None)
    from workbench.doctor.types import CAUSES, FINDING_KINDS

    assert set(sc.detectors) == set(FINDING_KINDS)
    assert set(sc.playbook.causes) == set(CAUSES) - {"unknown"}
    assert sc.root == PACKAGED


@pytest.mark.parametrize(
    "names, expected",
    [
        # HF Trainer: per-step `loss` beats the one-point `train_loss` summary.
        (
            {"loss": 50, "train_loss": 1, "eval_loss": 5, "grad_norm": 50, "learning_rate": 50},
            {
                "train_loss": "loss",
                "eval_loss": "eval_loss",
                "grad_norm": "grad_norm",
                "lr": "learning_rate",
            },
        ),
        # PyTorch Lightning: *_step beats *_epoch; LearningRateMonitor's lr-AdamW.
        (
            {"train_loss_step": 100, "train_loss_epoch": 5, "val_loss": 5, "lr-AdamW": 100},
            {"train_loss": "train_loss_step", "eval_loss": "val_loss", "lr": "lr-AdamW"},
        ),
        # torchtitan.
        (
            {"loss_metrics/global_avg_loss": 10, "grad_norm": 10, "lr": 10, "tps": 10},
            {"train_loss": "loss_metrics/global_avg_loss", "throughput": "tps", "lr": "lr"},
        ),
        # Keras.
        ({"loss": 10, "val_loss": 10}, {"train_loss": "loss", "eval_loss": "val_loss"}),
        # Prefix styles and ours.
        (
            {"train/loss": 10, "validation/loss": 3, "moe/dead_experts": 10, "step_time": 10},
            {
                "train_loss": "train/loss",
                "eval_loss": "validation/loss",
                "moe_dead": "moe/dead_experts",
                "step_time": "step_time",
            },
        ),
        ({"val/loss": 3, "eval/loss": 1}, {"eval_loss": "val/loss"}),
        (
            {"system/gpu_0_utilization_percentage": 9, "system/cpu_utilization_percentage": 9},
            {
                "gpu_util": "system/gpu_0_utilization_percentage",
                "cpu_util": "system/cpu_utilization_percentage",
            },
        ),
    ],
)
def test_alias_map_resolves_framework_names(names, expected):
    got = roles(names)
    for role, name in expected.items():
        assert got.get(role) == name, (role, got)


def test_user_extends_aliases_without_code(tmp_path):
    import numpy as np

    from workbench.doctor import detect

    root = tmp_path / "my-scaffold"
    shutil.copytree(PACKAGED, root, ignore=shutil.ignore_patterns("*.py", "__pycache__"))
    data = yaml.safe_load((root / "metrics.yaml").read_text())
    data["roles"]["train_loss"].insert(0, "objective/total")
    (root / "metrics.yaml").write_text(yaml.safe_dump(data))
    sc = load_scaffold(root)
    assert resolve_roles({"objective/total": 5}, sc.metrics) == {"train_loss": "objective/total"}
    x = np.linspace(3, 1, 100)
    x[60:] = np.nan
    found = detect(
        {"objective/total": (np.arange(100), x)},
        {"status": "FINISHED"},
        "",
        sc.detectors,
        aliases=sc.metrics,
    )
    assert [(f.kind, f.metric, f.step) for f in found] == [("nan_inf", "objective/total", 60)]
    # The packaged scaffold does not know the name: nothing is judged.
    assert detect({"objective/total": (np.arange(100), x)}, {"status": "FINISHED"}, "") == []


@pytest.mark.parametrize(
    "file, edit, needle",
    [
        ("metrics.yaml", lambda d: d["roles"]["train_loss"].append("re:(unclosed"), "bad regex"),
        # an exclusion for a role that does not exist
        (
            "metrics.yaml",
            lambda d: d["exclude"].update(learning_rate=["re:.*valid.*"]),
            "learning_rate",
        ),
        ("detectors.yaml", lambda d: d.update({"nonsense": {"x": 1}}), "not a finding kind"),
        ("detectors.yaml", lambda d: d["loss_spike"].update({"z": "high"}), "loss_spike.z"),
        (
            "playbook.yaml",
            lambda d: d["causes"]["oom"]["signals"].append({"weight": 1}),
            "playbook.yaml",
        ),
        (
            "playbook.yaml",
            lambda d: d["causes"]["oom"]["signals"].append({"finding": "meltdown", "weight": 1}),
            "meltdown",
        ),
    ],
)
def test_broken_files_name_the_file_and_entry(tmp_path, file, edit, needle):
    root = tmp_path / "s"
    shutil.copytree(PACKAGED, root, ignore=shutil.ignore_patterns("*.py", "__pycache__"))
    data = yaml.safe_load((root / file).read_text())
    edit(data)
    (root / file).write_text(yaml.safe_dump(data))
    with pytest.raises(ScaffoldError) as exc:
        load_scaffold(root)
    assert file in str(exc.value) and needle in str(exc.value)


def test_missing_folder_or_file(tmp_path):
    with pytest.raises(ScaffoldError, match="not found"):
        load_scaffold(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ScaffoldError, match="metrics.yaml"):
        load_scaffold(tmp_path / "empty")
