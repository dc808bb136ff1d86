"""Export a run's checkpoint as a SavedModel that serves raw uint8 digits.

Signatures (both return `probabilities` and `classes`):
  serving_default   images: uint8 [N, 28, 28]
  serving_channels  images: uint8 [N, 28, 28, 1]
`probabilities` is float32 [N, 10] (softmax), or [N] P(class K) for a binary
run; `classes` is int32 [N] (for a binary run 1 means "is a K"). Pixels reach
the model inside the graph through `steps.model_logits`, as in training's
evaluation and `pipeline-predict`, so the served probabilities equal the
predicted ones.

The SavedModel is written to a temporary sibling directory and renamed into
place, so `--out` either holds a complete export or is left as it was.
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


class ServingModule(tf.Module):
    """The model behind two uint8 serving signatures."""

    def __init__(self, model: keras.Model, input_scale: str = "unit"):
        super().__init__(name="digit_classifier")
        self.model = model
        self.input_scale = input_scale  # the run's --input_scale, fixed in the graph

    def _outputs(self, images: tf.Tensor) -> dict[str, tf.Tensor]:
        logits = steps.model_logits(self.model, images, self.input_scale)
        return {
            "probabilities": models.probabilities(logits),
            "classes": steps.predicted_class(logits),
        }

    @tf.function(
        input_signature=[tf.TensorSpec([None, 28, 28], tf.uint8, name="images")]
    )
    def serve(self, images: tf.Tensor) -> dict[str, tf.Tensor]:
        """uint8 [N, 28, 28] -> probabilities, classes."""
        return self._outputs(images)

    @tf.function(
        input_signature=[tf.TensorSpec([None, 28, 28, 1], tf.uint8, name="images")]
    )
    def serve_channels(self, images: tf.Tensor) -> dict[str, tf.Tensor]:
        """uint8 [N, 28, 28, 1] -> probabilities, classes."""
        return self._outputs(images[..., 0])


def check_destination(out: str | os.PathLike) -> pathlib.Path:
    """Checks that `out` is new or an empty directory; missing parents are fine.

    Raises:
      ExportError: naming `--out` and what is wrong with it.
    """
    out = pathlib.Path(out)
    if out.exists() and not (out.is_dir() and not any(out.iterdir())):
        raise ExportError(
            f"--out={out}: already exists and is not empty (not overwritten)"
        )
    ancestor = next(p for p in out.parents if p.exists())
    if not ancestor.is_dir():
        raise ExportError(f"--out={out}: {ancestor} is not a directory")
    if not os.access(ancestor, os.W_OK):
        raise ExportError(f"--out={out}: {ancestor} is not writable")
    return out


def export_run(restored: RestoredRun, out: str | os.PathLike) -> pathlib.Path:
    """Writes the checkpoint's model as a SavedModel at `out`; returns the path."""
    out = check_destination(out)
    config = restored.config
    module = ServingModule(restored.load_model(), config.input_scale)
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
        tf.saved_model.save(
            module,
            str(staging),
            signatures={
                "serving_default": module.serve,
                "serving_channels": module.serve_channels,
            },
        )
        (staging / METADATA_NAME).write_text(json.dumps(metadata, indent=2) + "\n")
        if out.exists():
            out.rmdir()
        os.replace(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out
