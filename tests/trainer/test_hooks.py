"""The repo's own code (``hooks``): loaded from the repo, called at fixed points, checked
before a run exists."""

from __future__ import annotations

import pytest
import torch
import yaml

from trainer.config import ConfigError, load_config
from trainer.hooks import RepoHooks, load_hooks


def test_without_a_file_every_hook_is_the_identity():
    hooks = RepoHooks()
    batch = torch.arange(6).view(2, 3)
    assert hooks.on_batch(3, batch) is batch
    assert hooks.loss_weight(5, batch) == 1.0
    hooks.on_init(object())  # nothing to call, nothing raised
    hooks.on_after_backward(1, object())


def test_a_repo_file_defines_only_the_hooks_it_needs(tmp_path):
    code = tmp_path / "hooks.py"
    code.write_text("def loss_weight(step, batch):\n    return 2.0 if step >= 10 else 1.0\n")
    hooks = load_hooks(str(code))
    assert hooks.loss_weight(9, None) == 1.0 and hooks.loss_weight(10, None) == 2.0
    batch = (torch.zeros(2, 4), torch.zeros(2))
    assert hooks.on_batch(0, batch) is batch  # not defined: the identity


def test_a_bug_in_the_repo_code_raises_where_it_runs(tmp_path):
    code = tmp_path / "hooks.py"
    code.write_text("def on_batch(index, batch):\n    return batch.view(batch.shape[0] + 1, -1)\n")
    with pytest.raises(RuntimeError, match="invalid for input of size"):
        load_hooks(str(code)).on_batch(0, torch.zeros(4, 8))


def test_a_missing_hooks_file_is_a_config_error_before_any_run(tmp_path, monkeypatch):
    with pytest.raises(ConfigError, match="hooks file not found"):
        load_hooks(str(tmp_path / "nope.py"))
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({"steps": 5, "hooks": "src/hooks.py"}))
    monkeypatch.chdir(tmp_path)  # relative to the working directory, like data.corpus
    with pytest.raises(ConfigError, match=r"hooks = 'src/hooks.py': no such file"):
        load_config(cfg, "digits")
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "hooks.py").write_text("")
    assert load_config(cfg, "digits").hooks == "src/hooks.py"
