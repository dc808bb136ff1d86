"""Flags of the performance features: --steps_per_loop, --jit_compile, budget."""

from __future__ import annotations

import dataclasses

import pytest
from absl import flags
from conftest import config_from_argv

from pipeline import config as config_lib

_parse = config_from_argv


def test_defaults():
    config = _parse()
    assert config.steps_per_loop == 100
    assert config.jit_compile == "auto"
    assert config.summary_budget_mb == 100.0


def test_values_reach_the_config():
    config = _parse(
        "--steps_per_loop=7", "--jit_compile=true", "--summary_budget_mb=2.5"
    )
    assert (config.steps_per_loop, config.jit_compile, config.summary_budget_mb) == (
        7,
        "true",
        2.5,
    )


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        ("--steps_per_loop=0", "steps_per_loop"),
        ("--jit_compile=maybe", "jit_compile"),
        ("--summary_budget_mb=-1", "summary_budget_mb"),
    ],
)
def test_bad_values_name_the_flag(argv, message):
    with pytest.raises(flags.IllegalFlagValueError, match=message):
        _parse(argv)


@pytest.mark.parametrize(
    ("model", "setting", "expected"),
    [
        ("cnn", "auto", False),
        ("logreg", "auto", "logreg" in config_lib.JIT_AUTO_MODELS),
        ("mlp", "auto", "mlp" in config_lib.JIT_AUTO_MODELS),
        ("cnn", "true", True),
        ("logreg", "false", False),
    ],
)
def test_use_jit_compile(model, setting, expected):
    config = config_lib.TrainConfig(model=model, jit_compile=setting)
    assert config_lib.use_jit_compile(config) is expected


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("steps_per_loop", 0, "--steps_per_loop=0"),
        ("jit_compile", "yes", "--jit_compile=yes"),
        ("summary_budget_mb", -2.0, "--summary_budget_mb=-2.0"),
    ],
)
def test_validate_rejects_configs_built_in_code(field, value, message):
    config = dataclasses.replace(config_lib.TrainConfig(), **{field: value})
    with pytest.raises(config_lib.ConfigError, match=message):
        config_lib.validate(config)
