"""Shared benchmark setup: the three model families as users configure them.

Each family is its flagfile under flags/ (the same values a user runs), on
full-size Fashion-MNIST with a full-size shuffle buffer, so Keras `fit` and
the pipeline see the same model, batch size, optimizer and input pipeline.
Importing it sets the process up as the pipeline's programs set theirs
(`cli.before_tensorflow`): pyplot deferred, the garbage collector's pace. Keras `fit` in
the same process runs under the same settings.
"""

from __future__ import annotations

import dataclasses
import pathlib
import statistics

from pipeline import cli
from pipeline import config as config_lib

cli.before_tensorflow()

ROOT = pathlib.Path(__file__).resolve().parent.parent
FAMILIES = {
    "logreg": "softmax.cfg",  # 10-class softmax regression, SGD 0.5, batch 100
    "mlp": "mlp_relu_10x30.cfg",  # 11 ReLU layers of 30, SGD 0.01, batch 50
    "cnn": "cnn_course.cfg",  # conv64-conv128-dense128, Adam 0.001, batch 128
}
# More flagfiles a benchmark can name with --families (not measured by default).
MORE_FAMILIES = {"cnn_keras": "cnn_keras.cfg", "cnn_tutorial": "cnn_tutorial.cfg"}
FASHION_TRAIN_SIZE = 60_000


def family_config(family: str, *overrides: str) -> config_lib.TrainConfig:
    """The family's flagfile on Fashion-MNIST, parsed by the real flag definitions.

    Benchmarks set their own step counts (`dataclasses.replace(steps=...)`),
    so a flagfile's epoch settings are turned into steps of the full-size
    train split here and the epoch fields cleared.
    """
    config = config_lib.config_from_args(
        [
            f"--flagfile={ROOT / 'flags' / {**FAMILIES, **MORE_FAMILIES}[family]}",
            "--dataset=fashion_mnist",
            f"--shuffle_buffer={FASHION_TRAIN_SIZE}",
            *overrides,
        ]
    )
    in_steps = config_lib.resolve_epochs(config, FASHION_TRAIN_SIZE)
    return dataclasses.replace(
        in_steps, **{name: 0 for _, name in config_lib.EPOCH_ALTERNATIVES}
    )


def summarize(values: list[float]) -> tuple[float, float, float]:
    """(median, min, max)."""
    return statistics.median(values), min(values), max(values)


def train_flops_per_example(model) -> tuple[float, float]:
    """(forward, training) FLOPs per example, counted from the layer shapes.

    Conv2D: 2 * out_h * out_w * filters * k_h * k_w * in_channels; Dense:
    2 * in * out (multiply-adds count 2). Training is ~3x forward (forward,
    gradient w.r.t. inputs, gradient w.r.t. weights); pooling, activations,
    dropout and the optimizer update are ignored (a few percent).
    """
    import keras

    forward = 0.0
    for layer in model.layers:
        if isinstance(layer, keras.layers.Conv2D):
            _, out_h, out_w, filters = layer.output.shape
            k_h, k_w = layer.kernel_size
            in_ch = layer.input.shape[-1]
            forward += 2.0 * out_h * out_w * filters * k_h * k_w * in_ch
        elif isinstance(layer, keras.layers.Dense):
            forward += 2.0 * layer.input.shape[-1] * layer.units
    return forward, 3.0 * forward
