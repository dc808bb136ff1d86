"""Flags -> frozen config: definitions, validators, flagfiles, overrides."""

import dataclasses

import pytest
from absl import flags
from conftest import REPO, parse_train_flags

from pipeline import config as config_lib

parse = parse_train_flags


def test_defaults_match_the_dataclass():
    assert config_lib.config_from_flags(parse()) == config_lib.TrainConfig()


def test_config_is_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        config_lib.TrainConfig().steps = 5


def test_every_flag_has_help_text():
    flag_values = flags.FlagValues()
    config_lib.define_flags(flag_values)
    for name, flag in flag_values._flags().items():
        assert len(flag.help or "") > 5, name


def test_command_line_overrides_flagfile():
    cfg = config_lib.config_from_flags(
        parse(f"--flagfile={REPO / 'flags/cnn_course.cfg'}", "--learning_rate=0.05")
    )
    assert cfg.learning_rate == 0.05
    assert cfg.conv_filters == (64, 128)
    assert cfg.conv_padding == ("same", "valid")


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--batch_size=0"], "batch_size"),
        (["--steps=-1"], "steps"),
        (["--learning_rate=0"], "--learning_rate must be > 0"),
        (["--dropout=1.0"], "--dropout must be in [0, 1)"),
        (["--shuffle_buffer=0"], "shuffle_buffer"),
        (["--model=resnet"], "model"),
        (["--optimizer=lbfgs"], "optimizer"),
        (["--binary_class=10"], "binary_class"),
        (["--conv_filters=32,x"], "--conv_filters must be"),
        (["--conv_padding=full"], "--conv_padding values"),
        (
            ["--conv_filters=8,8,8", "--conv_padding=same,valid"],
            "one per --conv_filters",
        ),
        (["--run_name=../escape"], "--run_name may hold only"),
        (["--run_name=a/b"], "--run_name may hold only"),
    ],
)
def test_bad_values_name_the_flag(argv, message):
    with pytest.raises(
        flags.IllegalFlagValueError,
        match=message.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)"),
    ):
        parse(*argv)


def test_conv_stack_that_shrinks_the_image_to_nothing_is_refused():
    with pytest.raises(config_lib.ConfigError, match="shrink the 28x28"):
        config_lib.config_from_flags(
            parse("--conv_filters=8,8,8,8,8", "--conv_padding=same")
        )


def test_data_dir_with_the_bundled_sample_is_contradictory():
    with pytest.raises(config_lib.ConfigError, match="--data_dir is not used"):
        config_lib.config_from_flags(parse("--data_dir=/tmp"))


@pytest.mark.parametrize(
    "path", sorted((REPO / "flags").glob("*.cfg")), ids=lambda p: p.name
)
def test_every_flagfile_parses_and_names_its_experiment(path):
    text = path.read_text()
    assert text.startswith("#"), "each flagfile opens with what it reproduces"
    cfg = config_lib.config_from_flags(parse(f"--flagfile={path}"))
    assert cfg.dataset == "mnist_sample"
    if path.name != "demo.cfg":
        for flag in (
            "--model=",
            "--optimizer=",
            "--learning_rate=",
            "--batch_size=",
            "--input_scale=",
        ):
            assert flag in text, f"{path.name} lacks {flag}"
        # A tutorial's length is in its updates or in epochs: exactly one.
        given = {line.split("=")[0] for line in text.splitlines() if line[:2] == "--"}
        assert len(given & {"--steps", "--epochs"}) == 1, path.name
        assert "\n# Tutorial: " in "\n" + text, path.name
        assert "\n# Reported: " in text, path.name


def test_course_cnn_flagfile_builds_665738_parameters():
    from pipeline.models import build_model

    cfg = config_lib.config_from_flags(
        parse(f"--flagfile={REPO / 'flags/cnn_course.cfg'}")
    )
    assert build_model(cfg).count_params() == 665_738


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        # A two-flag rule (PairedRule): the flag validator and validate share it.
        (
            {"conv_padding": ("same", "valid", "same")},
            "--conv_padding must have one value or one per --conv_filters entry",
        ),
        (
            {"dense_units": (), "dense_dropout": (0.1, 0.2)},
            "--dense_dropout must have one rate or one per --dense_units entry",
        ),
        # A declared choice, checked for every enum field alike.
        ({"optimizer": "nadam"}, "--optimizer=nadam must be one of sgd, momentum"),
    ],
)
def test_configs_built_in_code_meet_the_rules_the_flags_check(changes, message):
    config = dataclasses.replace(config_lib.TrainConfig(), **changes)
    with pytest.raises(config_lib.ConfigError, match=message):
        config_lib.validate(config)
    argv = [
        f"--{k}={','.join(map(str, v)) if isinstance(v, tuple) else v}"
        for k, v in changes.items()
    ]
    with pytest.raises(flags.IllegalFlagValueError):
        config_lib.config_from_args(argv)


def test_config_from_args_is_config_from_flags_on_a_built_list():
    argv = ["--steps=50", "--epochs=2", "--model=mlp"]
    built = config_lib.config_from_args(argv)
    assert built == config_lib.config_from_flags(
        parse(*argv), ["pipeline-train", *argv], refuse_both_on_command_line=False
    )
    assert (built.steps, built.epochs, built.model) == (50, 2, "mlp")
    with pytest.raises(config_lib.ConfigError, match="one setting given two ways"):
        config_lib.config_from_flags(parse(*argv), ["pipeline-train", *argv])
