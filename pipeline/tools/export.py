"""Export a run's checkpoint as a SavedModel that serves raw uint8 digits.

Signatures (both return `probabilities` and `classes`):
  serving_default   images: uint8 [N, 28, 28]
  serving_channels  images: uint8 [N, 28, 28, 1]
`probabilities` is float32 [N, 10] (softmax), or [N] P(class K) for a binary
run; `classes` is int32 [N] (for a binary run 1 means "is a K"). Pixels reach
the model inside the graph through `steps.model_logits`, as in training's
evaluation and `pipeline-predict`, so the served probabilities equal the
predicted ones.

The SavedModel is Keras' own export (`keras.export.ExportArchive`), so
TensorFlow Lite converts it: `--format=tflite` also writes `model.tflite` (the
`serving_default` signature) beside `saved_model.pb`. Everything is written to
a temporary sibling directory and renamed into place, so `--out` either holds
a complete export or is left as it was.
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import tempfile

import keras
import tensorflow as tf

from pipeline import models
from pipeline.errors import RunDirError
from pipeline.runs.restore import RestoredRun
from pipeline.training import steps

METADATA_NAME = "pipeline_export.json"


class ExportError(RunDirError):
    """The export destination cannot be used."""


IMAGES = tf.TensorSpec([None, 28, 28], tf.uint8, name="images")
IMAGES_WITH_CHANNEL = tf.TensorSpec([None, 28, 28, 1], tf.uint8, name="images")
TFLITE_NAME = "model.tflite"
# The SavedModel computes in float32 whatever policy the run trained under:
# TensorFlow Lite has no bfloat16 kernels without Flex ops, and the weights
# are float32 at every precision.
SERVING_PRECISION = "float32"


def serving_archive(
    model: keras.Model, input_scale: str = "unit"
) -> keras.export.ExportArchive:
    """Keras' own export of `model` behind the two uint8 serving signatures.

    Pixels reach the model as in training: `input_scale` is the run's
    --input_scale, fixed in the graph.

    Keras' `ExportArchive` tracks the model's variables so that TensorFlow
    Lite's converter finds them (a plain `tf.Module` holding a Keras 3 model
    converts to a model without weights that outputs NaN).
    """

    def outputs(images: tf.Tensor) -> dict[str, tf.Tensor]:
        logits = steps.model_logits(model, images, input_scale)
        return {
            "probabilities": models.probabilities(logits),
            "classes": models.predicted_class(logits),
        }

    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint("serving_default", outputs, input_signature=[IMAGES])
    archive.add_endpoint(
        "serving_channels",
        lambda images: outputs(images[..., 0]),
        input_signature=[IMAGES_WITH_CHANNEL],
    )
    return archive


def tflite_model(saved_model: str | os.PathLike) -> bytes:
    """The SavedModel's `serving_default` signature as a TensorFlow Lite model."""
    converter = tf.lite.TFLiteConverter.from_saved_model(
        str(saved_model), signature_keys=["serving_default"]
    )
    return converter.convert()


def check_destination(out: str | os.PathLike) -> pathlib.Path:
    """Checks that `out` is new or an empty directory; missing parents are fine.

    Raises:
      ExportError: naming `--out` and what is wrong with it.
    """
    out = pathlib.Path(out)
    if out.exists() and not out.is_dir():
        # Even an empty file is refused: the export is a directory, and a
        # file at --out says the user expected something else there.
        raise ExportError(
            f"--out={out}: is a file, not a directory; the export is a "
            "SavedModel directory: give a new path or an empty directory "
            "(not overwritten)"
        )
    if out.exists() and any(out.iterdir()):
        raise ExportError(
            f"--out={out}: already exists and is not empty (not overwritten)"
        )
    ancestor = next(p for p in out.parents if p.exists())
    if not ancestor.is_dir():
        raise ExportError(f"--out={out}: {ancestor} is not a directory")
    if not os.access(ancestor, os.W_OK):
        raise ExportError(f"--out={out}: {ancestor} is not writable")
    return out


def export_run(
    restored: RestoredRun, out: str | os.PathLike, tflite: bool = False
) -> pathlib.Path:
    """Writes the checkpoint's model as a SavedModel at `out`; returns the path.

    With `tflite`, `out/model.tflite` holds the same `serving_default`
    signature converted for TensorFlow Lite (probabilities within 1e-5).
    """
    out = check_destination(out)
    archive = serving_archive(
        restored.load_model(precision=SERVING_PRECISION), restored.config.input_scale
    )
    config = restored.config
    metadata = {
        "run": str(restored.run_dir.path),
        "step": restored.step,
        "checkpoint": restored.checkpoint_prefix,
        "model": config.model,
        "dataset": config.dataset,
        "binary_class": config.binary_class,
        "input_scale": config.input_scale,
        "signatures": {
            "serving_default": "images: uint8 [N, 28, 28]",
            "serving_channels": "images: uint8 [N, 28, 28, 1]",
        },
        "outputs": {
            "probabilities": "float32 [N] P(class K)"
            if config.binary_class is not None
            else "float32 [N, 10] softmax",
            "classes": "int32 [N]",
        },
    }
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ExportError(f"--out={out}: cannot create {out.parent} ({err})") from None
    staging = pathlib.Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}."))
    staging.chmod(0o755)  # mkdtemp's 0700 would hide the model from a server user
    try:
        archive.write_out(str(staging), verbose=False)
        if tflite:
            (staging / TFLITE_NAME).write_bytes(tflite_model(staging))
            metadata["tflite"] = TFLITE_NAME
        (staging / METADATA_NAME).write_text(json.dumps(metadata, indent=2) + "\n")
        if out.exists():
            out.rmdir()
        os.replace(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out
