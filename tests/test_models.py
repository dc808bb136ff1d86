"""Model builders: shapes, parameter counts, logits out."""

import inspect

import numpy as np
import pytest

from pipeline import models
from pipeline.config import TrainConfig


def test_logreg_binary_has_one_logit_and_785_parameters():
    model = models.build_logreg(num_classes=1)
    assert model.output_shape == (None, 1)
    assert model.count_params() == 785


def test_softmax_regression_has_7850_parameters():
    assert models.build_logreg(10).count_params() == 7850


def test_mlp_depth_and_dropout():
    model = models.build_mlp(
        hidden_layers=10, hidden_units=30, activation="sigmoid", dropout=0.1
    )
    dense = [layer for layer in model.layers if layer.name.startswith("hidden_")]
    assert len(dense) == 10
    assert all(layer.activation.__name__ == "sigmoid" for layer in dense)
    assert sum(layer.name.startswith("dropout_") for layer in model.layers) == 10


@pytest.mark.parametrize(
    ("kwargs", "params"),
    [
        # (c) the course network.
        (
            dict(
                conv_filters=(64, 128),
                conv_padding=("same", "valid"),
                conv_dropout=0.5,
                dense_units=(128,),
                dense_dropout=0.25,
            ),
            665_738,
        ),
        # (b) Keras' small CNN: 10 filters 3x3, pool 2, dense 128.
        (
            dict(
                conv_filters=(10,),
                conv_padding=("valid",),
                conv_dropout=0.2,
                dense_units=(128,),
                dense_dropout=0.2,
            ),
            10 * 9 + 10 + 13 * 13 * 10 * 128 + 128 + 1290,
        ),
        # (a) the TensorFlow tutorial: 5x5 convs 32, 64, dense 1024.
        (
            dict(
                conv_filters=(32, 64),
                kernel_size=5,
                conv_padding=("same",),
                conv_dropout=0.2,
                dense_units=(1024,),
                dense_dropout=0.5,
            ),
            832 + 51264 + 3136 * 1024 + 1024 + 10250,
        ),
    ],
    ids=["course", "keras", "tutorial"],
)
def test_tutorial_cnns(kwargs, params):
    assert models.build_cnn(**kwargs).count_params() == params


def test_models_output_logits_and_probabilities_sum_to_one():
    model = models.build_model(
        TrainConfig(model="cnn", conv_filters=(4,), dense_units=())
    )
    logits = model(np.random.default_rng(0).random((3, 28, 28, 1), np.float32))
    assert logits.shape == (3, 10)
    probs = models.probabilities(logits).numpy()
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-6)


def test_summary_text_lists_layers_and_counts():
    text = models.summary_text(models.build_logreg(10))
    assert "logits" in text
    assert "7,850" in text


def test_each_builder_takes_exactly_its_familys_flags():
    """`option(applies_to=...)` in config.py and the builders' parameters agree.

    The family-specific flags (those not shared by every family) that a
    model applies are exactly those its builder takes.
    """
    from pipeline import variants
    from pipeline.config import FIELDS, MODELS

    specific = {f.name for f in FIELDS if set(f.option.applies_to) != set(MODELS)}
    for model, builder in models.BUILDERS.items():
        parameters = set(inspect.signature(builder).parameters)
        assert parameters & specific == variants.applicable_fields(model) & specific
