"""--precision: Keras mixed-precision policies; logits, state, summaries in float32."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import tensorflow as tf
from conftest import TINY, read_events, train_run

from pipeline import models, precision
from pipeline.training import loop, steps

CNN = dataclasses.replace(TINY, model="cnn")


@pytest.fixture(scope="module")
def bf16_run(tmp_path_factory):
    logdir = tmp_path_factory.mktemp("bf16")
    config = dataclasses.replace(CNN, precision="mixed_bfloat16")
    return train_run(logdir, config, "cnn-bf16")


def test_explicit_precision_is_used_as_given_and_auto_resolves_per_family():
    assert precision.resolve("mixed_float16", "mlp").policy == "mixed_float16"
    assert precision.resolve("float32", "cnn").policy == "float32"
    logreg = precision.resolve("auto", "logreg")
    assert logreg.policy == "float32"
    assert logreg.reason.startswith("auto: bfloat16 measured no faster for logreg")
    cnn = precision.resolve("auto", "cnn")
    native = precision.cpu_bf16_flag() is not None or precision.gpu_bf16() is not None
    assert cnn.policy == ("mixed_bfloat16" if native else "float32")


def test_cpu_bf16_flag_is_read_from_cpuinfo(tmp_path):
    with_bf16 = tmp_path / "cpuinfo_bf16"
    with_bf16.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx512f avx512_bf16\n")
    without = tmp_path / "cpuinfo_plain"
    without.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx2\n")
    assert precision.cpu_bf16_flag(with_bf16) == "avx512_bf16"
    assert precision.cpu_bf16_flag(without) is None
    assert precision.cpu_bf16_flag(tmp_path / "missing") is None


def test_bf16_model_computes_hidden_layers_in_bf16_and_logits_in_float32(
    sample_dataset,
):
    model = models.build_model(dataclasses.replace(CNN, precision="mixed_bfloat16"))
    *hidden, logits = model.layers
    assert {layer.compute_dtype for layer in hidden} == {"bfloat16"}
    assert logits.compute_dtype == "float32"
    assert {w.dtype for w in model.weights} == {"float32"}
    images = sample_dataset.test.images[:4, ..., None] / 255.0
    assert model(tf.constant(images, tf.float32)).dtype == tf.float32


def test_logreg_stays_float32_under_a_mixed_policy():
    model = models.build_model(
        dataclasses.replace(TINY, model="logreg", precision="mixed_bfloat16")
    )
    assert {layer.compute_dtype for layer in model.layers} == {"float32"}


def test_bf16_run_records_precision_and_writes_float32_summaries(bf16_run):
    record = json.loads((bf16_run.path / "run.json").read_text())
    assert record["precision"] == {
        "requested": "mixed_bfloat16",
        "policy": "mixed_bfloat16",
        "reason": "--precision",
    }
    summary = (bf16_run.path / "model_summary.txt").read_text()
    assert "precision: mixed_bfloat16" in summary
    train = read_events(bf16_run.path / "train")
    (loss,) = {e.tensor_proto.dtype for e in train.Tensors("loss")}
    assert loss == tf.float32.as_datatype_enum
    kernel_tags = [t for t in train.Tags()["tensors"] if t.endswith("conv_1/kernel")]
    assert kernel_tags == ["cnn/conv_1/kernel", "gradients/cnn/conv_1/kernel"]
    for tag in kernel_tags:
        values = [tf.make_ndarray(e.tensor_proto) for e in train.Tensors(tag)]
        assert all(
            np.isfinite(v).all() and v[:, 2].sum() == 3 * 3 * 1 * 4 for v in values
        )
    test_loss = read_events(bf16_run.path / "test").Tensors("loss")
    assert test_loss[-1].tensor_proto.dtype == tf.float32.as_datatype_enum


def test_bf16_run_is_deterministic(bf16_run, tmp_path):
    again = train_run(tmp_path, bf16_run.config, "again")
    assert again.result.weights_digest == bf16_run.result.weights_digest


def test_bf16_checkpoint_restores_into_a_float32_model(bf16_run):
    float32 = dataclasses.replace(bf16_run.config, precision="float32")
    model = models.restore_model(float32, bf16_run.result.checkpoint)
    assert {layer.compute_dtype for layer in model.layers} == {"float32"}
    assert loop.weights_digest(model) == bf16_run.result.weights_digest


def test_float16_scales_the_loss_and_its_checkpoint_restores_in_float32(tmp_path):
    run = train_run(
        tmp_path, dataclasses.replace(CNN, precision="mixed_float16"), "cnn-fp16"
    )
    assert np.isfinite(run.result.train["loss"])
    reader = tf.train.load_checkpoint(run.result.checkpoint)
    names = reader.get_variable_to_shape_map()
    assert any(name.startswith("loss_scale/dynamic_scale") for name in names)
    # Optimizer state and weights restore into a float32 run's objects.
    config = dataclasses.replace(run.config, precision="float32")
    model = models.build_model(config)
    optimizer = steps.make_optimizer(config.optimizer, config.learning_rate)
    optimizer.build(model.trainable_variables)
    tf.train.Checkpoint(model=model, **steps.optimizer_trackables(optimizer)).restore(
        run.result.checkpoint
    ).expect_partial().assert_existing_objects_matched()
    assert int(optimizer.iterations.numpy()) == run.config.steps
    assert loop.weights_digest(model) == run.result.weights_digest
