"""Keras model builders: logistic/softmax regression, MLP, CNN. All output logits.

A binary task ("is it a K?") has one logit (sigmoid); a 10-class task has ten
(softmax). Probabilities are computed only where a caller asks for them
(`probabilities`), so losses stay numerically stable with `from_logits=True`.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence

import keras
import tensorflow as tf
from keras import layers

from pipeline import precision as precision_lib
from pipeline.config import MODELS, TrainConfig

INPUT_SHAPE = (28, 28, 1)
DEFAULT_KERNEL_INIT = "glorot_uniform"


def initializer(spec: str) -> keras.initializers.Initializer | str:
    """A Keras kernel initializer from a flag value: `NAME` or `NAME:SCALE`.

    NAME is a Keras initializer identifier (`glorot_uniform`, `zeros`,
    `he_normal`, ...). SCALE is the standard deviation of `truncated_normal` /
    `random_normal` or the limit of `random_uniform` (values in [-SCALE,
    SCALE]): TF1 tutorials wrote `tf.truncated_normal(shape, stddev=0.1)`,
    which is `truncated_normal:0.1`. A bare name is passed to Keras as is, so
    the default draws exactly what Keras' own default would.
    """
    name, _, scale = spec.partition(":")
    if not scale:
        return name
    value = float(scale)
    if name == "truncated_normal":
        return keras.initializers.TruncatedNormal(stddev=value)
    if name == "random_normal":
        return keras.initializers.RandomNormal(stddev=value)
    if name == "random_uniform":
        return keras.initializers.RandomUniform(-value, value)
    raise ValueError(f"initializer {name!r} takes no scale (got {spec!r})")


def bias_initializer(value: float) -> keras.initializers.Initializer | str:
    """Constant biases; 0 is Keras' default `zeros` (TF1 tutorials used 0.1)."""
    return "zeros" if value == 0 else keras.initializers.Constant(value)


def initializers(kernel_init: str, bias_init: float) -> dict:
    """A layer's initializer arguments, made afresh for every layer.

    Keras fixes an unseeded initializer's seed when it is constructed, so one
    instance shared by two layers would give both the same weights.
    """
    return {
        "kernel_initializer": initializer(kernel_init),
        "bias_initializer": bias_initializer(bias_init),
    }


def per_layer(values: float | Sequence[float], count: int) -> list[float]:
    """One rate for every layer, or one per layer (a single value is repeated)."""
    rates = [float(values)] if isinstance(values, int | float) else list(values)
    if len(rates) == 1:
        rates *= count
    if len(rates) != count:
        raise ValueError(f"{len(rates)} dropout rates for {count} dense layers")
    return rates


def dense_head(
    units: Sequence[int],
    dropout_rates: Sequence[float],
    num_classes: int,
    activation: str,
    kernel_init: str,
    bias_init: float,
    names: tuple[str, str] = ("dense", "dense_dropout"),
) -> list[layers.Layer]:
    """Hidden Dense layers, each followed by a Dropout where its rate is above
    0, then the logits.

    The MLP's hidden layers and the CNN's head are this one stack; `names`
    are the prefixes of its Dense and Dropout layers (`dense_1`,
    `dense_dropout_1`, ...; the MLP's are `hidden_1`, `dropout_1`), which are
    checkpoint keys and histogram tags. Layers are made in order, so their
    initializers' seeds are too.
    """
    dense_name, dropout_name = names
    head: list[layers.Layer] = []
    for i, (width, rate) in enumerate(zip(units, dropout_rates, strict=True)):
        head.append(
            layers.Dense(
                width,
                activation=activation,
                name=f"{dense_name}_{i + 1}",
                **initializers(kernel_init, bias_init),
            )
        )
        if rate > 0:
            head.append(layers.Dropout(rate, name=f"{dropout_name}_{i + 1}"))
    head.append(logits_layer(num_classes, kernel_init, bias_init))
    return head


def logits_layer(num_classes: int, kernel_init: str, bias_init: float) -> layers.Dense:
    """The linear output layer every model ends with."""
    return layers.Dense(
        num_classes, name="logits", **initializers(kernel_init, bias_init)
    )


def build_logreg(
    num_classes: int = 10,
    dense_kernel_init: str = DEFAULT_KERNEL_INIT,
    bias_init: float = 0.0,
) -> keras.Model:
    """Logistic regression (1 output) or multinomial softmax regression (10).

    TensorFlow's softmax tutorial started from `tf.zeros` weights and biases
    (`dense_kernel_init="zeros"`); with one linear layer that is as good a
    start as any.
    """
    return keras.Sequential(
        [
            keras.Input(INPUT_SHAPE, name="image"),
            layers.Flatten(name="flatten"),
            logits_layer(num_classes, dense_kernel_init, bias_init),
        ],
        name="logreg" if num_classes == 1 else "softmax_regression",
    )


def build_mlp(
    num_classes: int = 10,
    hidden_layers: int = 2,
    hidden_units: int = 30,
    activation: str = "relu",
    dropout: float = 0.0,
    dense_kernel_init: str = DEFAULT_KERNEL_INIT,
    bias_init: float = 0.0,
) -> keras.Model:
    """A multi-layer perceptron on the flat 784 pixels.

    `hidden_layers` counts every hidden Dense layer, the input-side one
    included: the Keras tutorial's `Dense(30, input_dim=784)` followed by
    `hidden_layers=2` more `Dense(30)`+`Activation` pairs is
    `hidden_layers=3` here (a Dense with `activation=` computes exactly what
    Dense followed by Activation does).
    """
    model_layers: list[layers.Layer] = [
        keras.Input(INPUT_SHAPE, name="image"),
        layers.Flatten(name="flatten"),
    ]
    model_layers += dense_head(
        [hidden_units] * hidden_layers,
        [dropout] * hidden_layers,
        num_classes,
        activation,
        dense_kernel_init,
        bias_init,
        names=("hidden", "dropout"),
    )
    return keras.Sequential(model_layers, name="mlp")


def build_cnn(
    num_classes: int = 10,
    conv_filters: Sequence[int] = (32, 64),
    kernel_size: int = 3,
    conv_padding: Sequence[str] = ("same",),
    pool_size: int = 2,
    conv_dropout: float = 0.0,
    dense_units: Sequence[int] = (128,),
    dense_dropout: float | Sequence[float] = 0.0,
    activation: str = "relu",
    conv_kernel_init: str = DEFAULT_KERNEL_INIT,
    dense_kernel_init: str = DEFAULT_KERNEL_INIT,
    bias_init: float = 0.0,
) -> keras.Model:
    """conv-pool blocks, optional dropout, dense layers with dropout, logits.

    Expresses the tutorial CNNs (see flags/cnn_*.cfg): e.g. the course
    network is conv_filters=64,128, conv_padding=same,valid, conv_dropout=0.5,
    dense_units=128, dense_dropout=0.25 (665,738 parameters). `dense_dropout`
    is one rate for every hidden dense layer or one per layer (the TF1
    tutorial's keep_prob 0.2 then 0.5 is `dense_dropout=(0.8, 0.5)`).
    """
    paddings = list(conv_padding)
    if len(paddings) == 1:
        paddings *= len(conv_filters)
    dense_rates = per_layer(dense_dropout, len(dense_units)) if dense_units else []
    model_layers: list[layers.Layer] = [keras.Input(INPUT_SHAPE, name="image")]
    for i, (filters, padding) in enumerate(zip(conv_filters, paddings, strict=True)):
        model_layers += [
            layers.Conv2D(
                filters,
                kernel_size,
                padding=padding,
                activation=activation,
                name=f"conv_{i + 1}",
                **initializers(conv_kernel_init, bias_init),
            ),
            layers.MaxPooling2D(pool_size, name=f"pool_{i + 1}"),
        ]
    if conv_dropout > 0:
        model_layers.append(layers.Dropout(conv_dropout, name="conv_dropout"))
    model_layers.append(layers.Flatten(name="flatten"))
    model_layers += dense_head(
        dense_units, dense_rates, num_classes, activation, dense_kernel_init, bias_init
    )
    return keras.Sequential(model_layers, name="cnn")


def build_model(config: TrainConfig) -> keras.Model:
    """Builds the model that `config` names, under its resolved `--precision`.

    The builders make float32 models; `precision.apply_policy` then gives the
    hidden layers the run's Keras dtype policy (variables stay float32, so the
    weights are created exactly as in float32 and a checkpoint restores at any
    precision) and keeps the logits layer float32.
    """
    policy = precision_lib.resolve(config.precision, config.model).policy
    return precision_lib.apply_policy(_build_float32(config), policy)


# The builder of each `--model`, derived from the one list of families,
# `config.MODELS`: family NAME is built by `build_NAME` (a family without
# one fails here, at import). Every builder's parameters are named after
# the config fields they take, so a new model's flags reach it by name.
BUILDERS = {name: globals()[f"build_{name}"] for name in MODELS}


def _build_float32(config: TrainConfig) -> keras.Model:
    builder = BUILDERS.get(config.model)
    if builder is None:
        raise ValueError(f"unknown model {config.model!r}")
    parameters = inspect.signature(builder).parameters
    return builder(**{name: getattr(config, name) for name in parameters})


def restore_model(config: TrainConfig, checkpoint_prefix: str) -> keras.Model:
    """Builds `config`'s model and restores its weights from a checkpoint.

    The checkpoint also holds the optimizer, step and data iterator; only the
    weights are read, and every weight must be found in it.
    """
    model = build_model(config)
    checkpoint = tf.train.Checkpoint(model=model)
    checkpoint.restore(
        checkpoint_prefix
    ).expect_partial().assert_existing_objects_matched()
    return model


def probabilities(logits):
    """Class probabilities from logits: sigmoid for one logit, else softmax."""
    if logits.shape[-1] == 1:
        return tf.sigmoid(logits)[:, 0]
    return tf.nn.softmax(logits, axis=-1)


def predicted_class(logits: tf.Tensor) -> tf.Tensor:
    """Class index per example (threshold 0 on a single logit = p > 0.5)."""
    if logits.shape[-1] == 1:
        return tf.cast(logits[:, 0] > 0, tf.int32)
    return tf.argmax(logits, axis=-1, output_type=tf.int32)


def summary_text(model: keras.Model) -> str:
    """The Keras model summary as plain text (layers, shapes, parameter counts)."""
    lines: list[str] = []
    model.summary(print_fn=lambda line, *args, **kwargs: lines.append(line))
    return "\n".join(lines)
