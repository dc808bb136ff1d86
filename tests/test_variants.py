"""The one definition of a variant: which flags apply to a model and define a run."""

import pytest

from pipeline import config as config_lib
from pipeline import variants


def test_each_family_has_only_its_own_architecture_flags():
    logreg = variants.applicable_fields("logreg")
    mlp = variants.applicable_fields("mlp")
    cnn = variants.applicable_fields("cnn")
    assert {"hidden_units", "hidden_layers", "dropout", "activation"} <= mlp
    assert not {"conv_filters", "kernel_size", "dense_units"} & mlp
    assert {"conv_filters", "kernel_size", "conv_padding", "activation"} <= cnn
    assert not {"hidden_units", "hidden_layers", "dropout"} & cnn
    assert not {"hidden_units", "activation", "conv_filters", "dense_units"} & logreg
    shared = {"model", "learning_rate", "optimizer", "seed", "dense_kernel_init"}
    assert shared <= logreg & mlp & cnn
    # A family from a newer version: the fields every family shares.
    assert variants.applicable_fields("transformer") == logreg & mlp & cnn


def test_defining_config_drops_seed_bookkeeping_and_other_families_flags():
    config = config_lib.config_to_dict(
        config_lib.TrainConfig(model="mlp", seed=3, logdir="x", print_every=7)
    )
    defining = variants.defining_config(config)
    assert defining["model"] == "mlp"
    assert defining["hidden_units"] == 30
    for absent in ("seed", "logdir", "print_every", "conv_filters", "epochs"):
        assert absent not in defining
    assert list(defining) == [f for f in config if f in defining]


def test_steps_or_epochs_whichever_was_given():
    by_epochs = {"model": "logreg", "epochs": 3, "steps": 240}
    by_steps = {"model": "logreg", "steps": 240}
    assert "steps" not in variants.defining_config(by_epochs)
    assert variants.defining_config(by_epochs)["epochs"] == 3
    assert "epochs" not in variants.defining_config(by_steps)
    assert variants.differing_fields([by_epochs, by_steps]) == []


def test_an_older_record_is_the_variant_of_a_fresh_one():
    fresh = config_lib.config_to_dict(config_lib.TrainConfig(model="cnn"))
    older = {k: v for k, v in fresh.items() if k != "precision"}
    older["removed_since"] = 1
    assert variants.variant_key(older) == variants.variant_key(fresh)


@pytest.mark.parametrize(
    ("a", "b", "same"),
    [
        ({"seed": 0}, {"seed": 1}, True),
        ({"print_every": 1}, {"print_every": 50}, True),
        ({"model": "logreg", "conv_filters": [8]}, {"model": "logreg"}, True),
        ({"model": "cnn", "hidden_units": 128}, {"model": "cnn"}, True),
        ({"model": "mlp", "hidden_units": 128}, {"model": "mlp"}, False),
        ({"learning_rate": 0.1}, {"learning_rate": 0.2}, False),
    ],
)
def test_variant_key(a, b, same):
    assert (variants.variant_key(a) == variants.variant_key(b)) is same


def test_variant_key_keeps_other_data_apart():
    assert variants.variant_key({}, "abc") != variants.variant_key({}, "abd")


def test_differing_fields_count_a_flag_only_where_it_applies():
    cnn_a = {"model": "cnn", "hidden_units": 128, "conv_filters": [8]}
    cnn_b = {"model": "cnn", "hidden_units": 30, "conv_filters": [8], "seed": 4}
    logreg = {"model": "logreg", "conv_filters": [99], "learning_rate": 0.5}
    assert variants.differing_fields([cnn_a, cnn_b]) == []
    assert variants.differing_fields([cnn_a, cnn_b, logreg]) == [
        "model",
        "learning_rate",
    ]
    cnn_c = {"model": "cnn", "conv_filters": [16]}
    assert variants.differing_fields([cnn_a, cnn_c, logreg]) == [
        "model",
        "learning_rate",
        "conv_filters",
    ]


def test_warning_names_command_line_flags_the_model_does_not_use():
    argv = ["pipeline-train", "--flagfile=flags/demo.cfg", "--model=mlp"]
    assert variants.inapplicable_warning("mlp", argv) is None
    argv += ["--conv_filters=16", "--nodeterministic", "--kernel_size", "5"]
    assert variants.inapplicable_warning("mlp", argv) == (
        "--conv_filters, --kernel_size do not apply to --model=mlp; ignored"
    )
    assert variants.inapplicable_warning("cnn", ["p", "--hidden_units=3"]) == (
        "--hidden_units does not apply to --model=cnn; ignored"
    )
