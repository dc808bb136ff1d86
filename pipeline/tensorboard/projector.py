"""Embeddings for TensorBoard's Projector: the digits as the model sees them.

`write_projector` puts, into one writer directory of a run (`eval/`, `test/`):
  embedding.bytes           the penultimate layer's output for each example
                            (the input of the `logits` layer): float32, row
                            by row, the Projector's binary tensor file
  embedding_metadata.tsv    one row per example: index, true label,
                            predicted label, correct (yes/no)
  embedding_sprite.png      the digits, tiled in the same order
  projector_config.pbtxt    what the Projector reads (paths relative to it)
so the Projector tab shows the digits clustering, coloured or searched by
true label, prediction or correctness (mistakes are `correct: no`).

Keras 3's `TensorBoard(embeddings_freq=...)` writes `.weights.h5`, which the
Projector cannot read. A tensor file (`tensor_path` and `tensor_shape` in the
config; TensorBoard reads binary float32 since tensorboard#3685, as the
standalone projector does) needs no TensorFlow to serve: `pipeline-board`'s
server runs without it (`board.needs_tensorflow`). Runs written before kept
the embedding in a `tf.train.Checkpoint`, which only a server with
TensorFlow reads. TensorBoard tries a tensor file as TSV first and falls back
to binary when it is not text: an embedding whose bytes happen to be UTF-8
(all zeros: a layer of dead ReLUs) is written as `embedding.tsv` instead.
The directory must hold event files (a TensorBoard run), so the Projector
finds the config.
At most `MAX_EXAMPLES` examples are written (the first ones of the split).
2,000: about 200 per class, enough to see the classes cluster and the
mistakes between them; the whole bundled test split; an embedding of 1 MB for
128 features (a run's disk stays in proportion to its model: 10,000 rows of
784 were 30 MB), a sprite 45 digits (1,260 px) a side, and few enough points for the
browser's t-SNE to stay interactive.
"""

from __future__ import annotations

import io
import math
import os
import pathlib

import keras
import numpy as np
from google.protobuf import text_format
from PIL import Image
from tensorboard.plugins import projector
from tensorboard.plugins.projector.metadata import PROJECTOR_FILENAME

from pipeline import data as data_lib
from pipeline import files, models

MAX_EXAMPLES = 2_000
TENSOR_NAME = "embedding"
TENSOR_FILES = ("embedding.bytes", "embedding.tsv")  # binary; text if it reads as text
METADATA_NAME = "embedding_metadata.tsv"
SPRITE_NAME = "embedding_sprite.png"
IMAGE_SIZE = 28
BATCH_SIZE = 1000


def has_learned_embedding(model: keras.Model) -> bool:
    """True if a layer before the logits learned something: the penultimate
    layer is then an embedding worth a Projector. Logistic regression's (and
    an MLP's without hidden layers) is the flattened input itself: 784 raw
    pixels, 30 MB for the test split, which the Projector would open on."""
    return any(layer.weights for layer in model.layers if layer.name != "logits")


def penultimate_model(model: keras.Model) -> keras.Model:
    """`model` returning (the input of its `logits` layer, its logits)."""
    features = model.get_layer("logits").input
    return keras.Model(model.inputs, [features, model.outputs[0]])


def embed(
    model: keras.Model, split: data_lib.Split, input_scale: str = "unit"
) -> tuple[np.ndarray, np.ndarray]:
    """Penultimate-layer features [N, D] and predicted classes [N] of `split`.

    Pixels reach the model through `data.model_input` at the run's
    `input_scale`, as in every evaluation, so the predictions are
    `pipeline-eval`'s.
    """
    both = penultimate_model(model)
    features, predicted = [], []
    for start in range(0, len(split), BATCH_SIZE):
        images = split.images[start : start + BATCH_SIZE]
        batch_features, logits = both(
            data_lib.model_input(images, input_scale), training=False
        )
        features.append(np.reshape(batch_features.numpy(), (len(images), -1)))
        predicted.append(models.predicted_class(logits).numpy())
    return np.concatenate(features), np.concatenate(predicted)


def sprite(images: np.ndarray) -> np.ndarray:
    """[N, 28, 28] digits tiled row by row into a square uint8 image.

    Inverted (dark ink on white) so the digits stand out on the Projector's
    white background.
    """
    n = len(images)
    side = max(1, math.ceil(math.sqrt(n)))
    grid = np.zeros((side * side, IMAGE_SIZE, IMAGE_SIZE), np.uint8)
    grid[:n] = images
    grid = grid.reshape(side, side, IMAGE_SIZE, IMAGE_SIZE).swapaxes(1, 2)
    return 255 - grid.reshape(side * IMAGE_SIZE, side * IMAGE_SIZE)


def metadata_rows(
    labels: np.ndarray, predicted: np.ndarray, class_names: list[str]
) -> list[str]:
    """The metadata TSV: a header, then one row per example."""
    rows = ["index\tlabel\tpredicted\tcorrect"]
    for i, (label, guess) in enumerate(zip(labels, predicted, strict=True)):
        correct = "yes" if label == guess else "no"
        rows.append(f"{i}\t{class_names[label]}\t{class_names[guess]}\t{correct}")
    return rows


def tensor_file(features: np.ndarray) -> tuple[str, bytes]:
    """`features` [N, D] as the Projector's tensor file: (name, contents).

    Binary float32 (4 bytes a value) unless those bytes decode as UTF-8:
    TensorBoard would then parse them as TSV and fail, so they go as TSV.
    """
    values = np.ascontiguousarray(features, dtype=np.float32)
    payload = values.tobytes()
    try:
        payload.decode("utf-8")
    except UnicodeDecodeError:
        return TENSOR_FILES[0], payload
    rows = ("\t".join(f"{v:.7g}" for v in row) for row in values.tolist())
    return TENSOR_FILES[1], ("\n".join(rows) + "\n").encode()


def read_embedding(directory: str | os.PathLike) -> np.ndarray:
    """The embedding `write_projector` left in `directory`, found and shaped
    as the Projector finds it: by the config's `tensor_path` and
    `tensor_shape` (tests, tools)."""
    directory = pathlib.Path(directory)
    config = projector.ProjectorConfig()
    text_format.Parse((directory / PROJECTOR_FILENAME).read_text(), config)
    (embedding,) = config.embeddings
    path = directory / embedding.tensor_path
    if path.suffix == ".tsv":
        values = np.loadtxt(path, dtype=np.float32, delimiter="\t", ndmin=2)
    else:
        values = np.fromfile(path, dtype=np.float32)
    return values.reshape(tuple(embedding.tensor_shape))


def remove_stale_embeddings(directory: pathlib.Path, keep: str) -> None:
    """Removes the other tensor file and what earlier versions wrote (an
    `embedding-STEP` checkpoint and its `checkpoint` index) from `directory`."""
    stale = [directory / name for name in TENSOR_FILES if name != keep]
    stale += directory.glob("embedding-*.index")
    stale += directory.glob("embedding-*.data-*")
    index = directory / "checkpoint"
    if index.is_file() and 'model_checkpoint_path: "embedding-' in index.read_text():
        stale.append(index)
    for path in stale:
        path.unlink(missing_ok=True)


def write_projector(
    directory: str | os.PathLike,
    model: keras.Model,
    split: data_lib.Split,
    class_names: list[str],
    max_examples: int = MAX_EXAMPLES,
    input_scale: str = "unit",
) -> int:
    """Writes the Projector files for `split` into `directory`; returns how many
    examples (the first `max_examples` of the split) it holds.

    Rewriting (another evaluation, another step) replaces the previous
    embedding.
    """
    directory = pathlib.Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    count = min(len(split), max_examples)
    shown = data_lib.Split(split.images[:count], split.labels[:count])
    features, predicted = embed(model, shown, input_scale)
    labels = np.asarray(shown.labels, np.int64)

    rows = metadata_rows(labels, predicted, class_names)
    files.write_atomic(directory / METADATA_NAME, "\n".join(rows) + "\n")
    png = io.BytesIO()
    Image.fromarray(sprite(shown.images)).save(png, format="PNG")
    files.write_atomic(directory / SPRITE_NAME, png.getvalue())
    file_name, payload = tensor_file(features)
    files.write_atomic(directory / file_name, payload)

    # Asset paths are relative to the config's directory, so the run can be
    # moved or served from anywhere.
    config = projector.ProjectorConfig()
    embedding = config.embeddings.add()
    embedding.tensor_name = TENSOR_NAME
    embedding.tensor_path = file_name
    embedding.tensor_shape.extend(features.shape)
    embedding.metadata_path = METADATA_NAME
    embedding.sprite.image_path = SPRITE_NAME
    embedding.sprite.single_image_dim.extend([IMAGE_SIZE, IMAGE_SIZE])
    projector.visualize_embeddings(str(directory), config)
    # Only once the config names the new file: a crash before leaves the old
    # embedding whole.
    remove_stale_embeddings(directory, keep=file_name)
    return count
