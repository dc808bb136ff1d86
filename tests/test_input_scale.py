"""`--input_scale`: the pixel range a model sees, the same everywhere it sees pixels.

A model trained on raw 0-255 pixels (the Keras MLP tutorial's recipe) must be
evaluated, asked for predictions and exported with raw pixels too; otherwise
every number after training is silently wrong.
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
from conftest import TINY, main_in_process, train_run

from pipeline import data, models
from pipeline.runs import restore

RAW = dataclasses.replace(
    TINY,
    model="mlp",
    input_scale="raw",
    activation="sigmoid",
    hidden_units=30,
    optimizer="sgd",
    learning_rate=0.1,
    batch_size=50,
    steps=30,
    eval_every=0,
    histogram_every=0,
    checkpoint_every=0,
    image_count=0,
)


@pytest.fixture(scope="module")
def raw_run(tmp_path_factory):
    return train_run(tmp_path_factory.mktemp("raw"), RAW, "raw")


@pytest.fixture(scope="module")
def test_split():
    return data.load_dataset("mnist_sample").test


def raw_probabilities(run, images: np.ndarray) -> np.ndarray:
    """What the checkpoint's model gives for float 0-255 pixels, computed directly."""
    model = restore.open_run(run.path).load_model()
    pixels = images.astype(np.float32)[..., None]
    return models.probabilities(model(pixels, training=False)).numpy()


def test_the_run_records_its_input_scale(raw_run):
    record = json.loads((raw_run.path / "run.json").read_text())
    assert record["config"]["input_scale"] == "raw"
    assert "--input_scale=raw" in (raw_run.path / "flags.cfg").read_text().split()


def test_pipeline_eval_reproduces_the_training_evaluation(raw_run):
    result = main_in_process("pipeline-eval", f"--run={raw_run.path}", "--format=json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["accuracy"] == pytest.approx(raw_run.result.test["accuracy"])
    assert report["loss"] == pytest.approx(raw_run.result.test["loss"], rel=1e-6)


def test_pipeline_predict_feeds_raw_pixels(raw_run, test_split):
    result = main_in_process(
        "pipeline-predict",
        f"--run={raw_run.path}",
        "--index=0",
        "--index=1",
        "--format=json",
    )
    assert result.returncode == 0, result.stderr
    rows = json.loads(result.stdout)["predictions"]
    printed = np.array([list(row["probabilities"].values()) for row in rows])
    expected = raw_probabilities(raw_run, test_split.images[:2])
    np.testing.assert_allclose(printed, expected, atol=1e-4)
    # The same model on [0, 1] pixels says something else: the scale matters.
    model = restore.open_run(raw_run.path).load_model()
    unit = models.probabilities(
        model(test_split.images[:2, ..., None] / np.float32(255), training=False)
    ).numpy()
    assert not np.allclose(unit, expected, atol=1e-2)


def test_exported_model_serves_raw_pixels(raw_run, test_split, tmp_path):
    import tensorflow as tf

    out = tmp_path / "model"
    result = main_in_process("pipeline-export", f"--run={raw_run.path}", f"--out={out}")
    assert result.returncode == 0, result.stderr
    served = tf.saved_model.load(str(out)).signatures["serving_default"](
        images=tf.constant(test_split.images[:8])
    )
    np.testing.assert_allclose(
        served["probabilities"].numpy(),
        raw_probabilities(raw_run, test_split.images[:8]),
        atol=1e-6,
    )
