"""Config validation names the bad key and value; a config holds no fault switch."""

from __future__ import annotations

import pytest

from trainer.config import ConfigError, load_config, params_for_tracking, parse_config
from trainer.faults import HARNESS_ENV, HarnessError, harness_faults
from trainer.harness import lr_at


def test_bad_value_names_key_and_value():
    with pytest.raises(ConfigError, match=r"optimizer\.lr = 'fast'"):
        parse_config("lm", {"optimizer": {"lr": "fast"}})


def test_unknown_key_is_an_error():
    with pytest.raises(ConfigError, match=r"optimizer\.learning_rate"):
        parse_config("lm", {"optimizer": {"learning_rate": 0.1}})


def test_a_fault_switch_is_no_config_setting_and_the_harness_checks_its_own():
    with pytest.raises(ConfigError, match="faults: not a setting of a run"):
        parse_config("digits", {"faults": [{"kind": "lr_too_high"}]})
    with pytest.raises(HarnessError, match="invalid harness faults"):
        harness_faults({HARNESS_ENV: '[{"kind": "gremlins"}]'})
    assert harness_faults({}) == []
    assert harness_faults({HARNESS_ENV: '[{"kind": "oom"}]'})[0].kind == "oom"


@pytest.mark.parametrize("kind", ["lr_too_high", "bad_data", "code_error", "router_imbalance"])
def test_a_defect_of_the_program_is_no_harness_switch(kind):
    # Only what a harness alone can cause (oom, hung_process, slow_io) is switched on from
    # outside; a program's defect lives in its repo's config or code.
    with pytest.raises(HarnessError, match="invalid harness faults"):
        harness_faults({HARNESS_ENV: f'[{{"kind": "{kind}"}}]'})


def test_missing_and_non_mapping_files(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml", "lm")
    p = tmp_path / "c.yaml"
    p.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(p, "lm")


def test_params_are_flat():
    cfg = parse_config("lm", {})
    params = params_for_tracking(cfg)
    assert params["optimizer.lr"] == 3e-3 and params["model.preset"] == "tiny"
    assert params["data.validate"] is False
    assert not any(k.startswith("faults") for k in params)


def test_warmup_then_cosine_to_the_floor():
    opt = parse_config(
        "lm", {"optimizer": {"lr": 1.0, "warmup_steps": 10, "min_lr_ratio": 0.1}}
    ).optimizer
    assert lr_at(0, 100, opt) == pytest.approx(0.1)
    assert lr_at(9, 100, opt) == pytest.approx(1.0)
    assert lr_at(99, 100, opt) == pytest.approx(0.1, abs=1e-3)
    assert lr_at(40, 100, opt) > lr_at(60, 100, opt)
