"""Classify your own digits: image files, .npy arrays or dataset examples.

Images are turned into what the model was trained on, a 28x28 uint8 array
with a light digit on a black background (MNIST's polarity), by
`image_to_mnist`:

1. Orientation from EXIF is applied; transparent pixels are laid on white;
   colour becomes grayscale (Pillow's "L": 0.299 R + 0.587 G + 0.114 B).
2. The background level is the median of the border pixels. A light
   background (> 127) means a dark digit on paper: the image is inverted.
3. A 28x28 image is then used as it is (it is already in MNIST's format).
4. Any other size goes through MNIST's own normalisation: the background
   level is subtracted and the contrast stretched to 0..255, the image is
   cropped to the bounding box of the pixels above 10% of the maximum, scaled
   (aspect kept, Lanczos) so the longer side is 20 pixels, and pasted into a
   black 28x28 field so that its centre of mass is at the centre.

`.npy` files hold arrays already in the dataset's format: [28, 28],
[28, 28, 1], [N, 28, 28] or [N, 28, 28, 1]; uint8 (or integers in 0..255) or
floats in [0, 1]. They are not inverted or recentred.

Reading and converting inputs needs no TensorFlow, so a bad file fails fast;
`predict_probabilities` imports it.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from pipeline import data as data_lib
from pipeline.data import DataError

if TYPE_CHECKING:
    import keras

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")
ARRAY_SUFFIX = ".npy"
MNIST_SIZE = 28
DIGIT_BOX = 20
INK_FRACTION = 0.1


# The largest image accepted (about 16.8 megapixels, 4096 x 4096): a digit
# photo needs far fewer, and decoding is bounded to ~64 MiB per image.
MAX_IMAGE_PIXELS = 4096 * 4096


def _check_pixels(path: pathlib.Path, size: tuple[int, int]) -> None:
    width, height = size
    if width * height > MAX_IMAGE_PIXELS:
        raise DataError(
            f"{path}: {width}x{height} image is {width * height:,} pixels, over "
            f"the limit of {MAX_IMAGE_PIXELS:,}"
        )


@dataclasses.dataclass(frozen=True)
class Example:
    """One input: where it came from, the 28x28 uint8 image, the label if known."""

    source: str
    image: np.ndarray
    label: int | None = None


def _border(pixels: np.ndarray) -> np.ndarray:
    return np.concatenate([pixels[0], pixels[-1], pixels[1:-1, 0], pixels[1:-1, -1]])


def image_to_mnist(image: Any, source: str = "image") -> np.ndarray:
    """A Pillow image of any size and mode -> uint8 [28, 28], white digit on black.

    See the module docstring for the exact rule.

    Raises:
      DataError: a non-28x28 image holds no visible digit (it is one flat colour).
    """
    from PIL import Image, ImageOps

    image = ImageOps.exif_transpose(image)
    if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(white, rgba)
    pixels = np.asarray(image.convert("L"), np.float64)
    background = float(np.median(_border(pixels)))
    if background > 127:
        pixels = 255.0 - pixels
        background = 255.0 - background
    if pixels.shape == (MNIST_SIZE, MNIST_SIZE):
        return np.round(pixels).astype(np.uint8)

    ink = np.clip(pixels - background, 0.0, None)
    peak = ink.max()
    if peak < 1.0:
        raise DataError(f"{source}: no digit found (the image is one flat colour)")
    ink *= 255.0 / peak
    rows = np.flatnonzero((ink > INK_FRACTION * 255).any(axis=1))
    cols = np.flatnonzero((ink > INK_FRACTION * 255).any(axis=0))
    crop = ink[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
    height, width = crop.shape
    factor = DIGIT_BOX / max(height, width)
    size = (max(1, round(width * factor)), max(1, round(height * factor)))
    resized = Image.fromarray(crop.astype(np.float32), mode="F").resize(
        size, Image.Resampling.LANCZOS
    )
    digit = np.clip(np.asarray(resized, np.float64), 0.0, 255.0)
    field = np.zeros((MNIST_SIZE, MNIST_SIZE))
    total = digit.sum()
    ys, xs = np.indices(digit.shape)
    center_y = (ys * digit).sum() / total if total else digit.shape[0] / 2
    center_x = (xs * digit).sum() / total if total else digit.shape[1] / 2
    top = int(np.clip(round(MNIST_SIZE / 2 - center_y), 0, MNIST_SIZE - digit.shape[0]))
    left = int(
        np.clip(round(MNIST_SIZE / 2 - center_x), 0, MNIST_SIZE - digit.shape[1])
    )
    field[top : top + digit.shape[0], left : left + digit.shape[1]] = digit
    return np.round(field).astype(np.uint8)


def load_image(path: pathlib.Path) -> np.ndarray:
    """Reads an image file with Pillow and converts it with `image_to_mnist`.

    The pixel count is checked from the header, before any pixel is decoded:
    more than `MAX_IMAGE_PIXELS` is refused (a decompression bomb: a small
    file that decodes to gigabytes).
    """
    import warnings

    from PIL import Image, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                _check_pixels(path, image.size)
                image.load()
                return image_to_mnist(image, str(path))
    except UnidentifiedImageError:
        raise DataError(f"{path}: not an image Pillow can read") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise DataError(
            f"{path}: refused: Pillow considers it a decompression bomb (over "
            f"{MAX_IMAGE_PIXELS:,} pixels)"
        ) from None
    except (OSError, SyntaxError, ValueError) as err:
        if isinstance(err, DataError):
            raise
        raise DataError(f"{path}: unreadable image ({err})") from None


def array_to_mnist(array: np.ndarray, source: str) -> np.ndarray:
    """An array in the dataset's format -> uint8 [N, 28, 28]; DataError otherwise."""
    shape = array.shape
    if array.ndim >= 1 and shape[-1] == 1 and array.ndim in (3, 4):
        array = array[..., 0]
    if array.ndim == 2:
        array = array[np.newaxis]
    if array.ndim != 3 or array.shape[1:] != (MNIST_SIZE, MNIST_SIZE) or not len(array):
        raise DataError(
            f"{source}: array has shape {list(shape)}, expected [28, 28] or "
            "[N, 28, 28] (optionally with a trailing 1)"
        )
    if array.dtype == np.uint8:
        return array
    if np.issubdtype(array.dtype, np.integer) and not np.issubdtype(array.dtype, bool):
        if array.min() < 0 or array.max() > 255:
            raise DataError(f"{source}: integer pixels must be in 0..255")
        return array.astype(np.uint8)
    if np.issubdtype(array.dtype, np.floating):
        if not np.isfinite(array).all() or array.min() < 0 or array.max() > 1:
            raise DataError(f"{source}: float pixels must be in [0, 1]")
        return np.round(array * 255.0).astype(np.uint8)
    raise DataError(f"{source}: array dtype {array.dtype} is not a pixel type")


def load_array(path: pathlib.Path) -> list[np.ndarray]:
    """Reads a .npy file (never pickled objects) into 28x28 uint8 images."""
    try:
        array = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as err:
        raise DataError(f"{path}: not a readable .npy array ({err})") from None
    return list(array_to_mnist(np.asarray(array), str(path)))


def _expand(path: pathlib.Path) -> list[pathlib.Path]:
    if path.is_dir():
        found = sorted(
            p
            for p in path.iterdir()
            if p.is_file() and p.suffix.lower() in (*IMAGE_SUFFIXES, ARRAY_SUFFIX)
        )
        if not found:
            raise DataError(
                f"{path}: folder holds no {', '.join(IMAGE_SUFFIXES)} or .npy files"
            )
        return found
    if not path.exists():
        raise DataError(f"{path}: file not found")
    return [path]


def load_inputs(paths: Iterable[str | pathlib.Path]) -> list[Example]:
    """Images, .npy files and folders of them -> examples, in the order given.

    A .npy holding N images gives N examples named `file.npy[i]`.
    """
    examples = []
    for given in paths:
        for path in _expand(pathlib.Path(given)):
            if path.suffix.lower() == ARRAY_SUFFIX:
                images = load_array(path)
                if len(images) == 1:
                    examples.append(Example(str(path), images[0]))
                else:
                    examples += [
                        Example(f"{path}[{i}]", image) for i, image in enumerate(images)
                    ]
            else:
                examples.append(Example(str(path), load_image(path)))
    return examples


def dataset_examples(
    split: data_lib.Split, indices: Sequence[int], name: str, split_name: str
) -> list[Example]:
    """Examples `indices` of a split, with their labels; DataError if out of range."""
    examples = []
    for index in indices:
        if not 0 <= index < len(split):
            raise DataError(
                f"--index={index}: {name}/{split_name} has {len(split)} examples "
                f"(0..{len(split) - 1})"
            )
        examples.append(
            Example(
                f"{name}/{split_name}[{index}]",
                split.images[index],
                int(split.labels[index]),
            )
        )
    return examples


def predict_probabilities(
    model: keras.Model, images: np.ndarray, input_scale: str = "unit"
) -> np.ndarray:
    """Class probabilities: [N, 10] softmax, or [N] P(class K) for a binary run.

    `input_scale` is the run's --input_scale: pixels reach the model as in
    training.
    """
    from pipeline import models
    from pipeline.training import steps

    logits = steps.model_logits(model, np.asarray(images, np.uint8), input_scale)
    return models.probabilities(logits).numpy()


def class_table(probabilities: np.ndarray) -> np.ndarray:
    """[N, classes]: binary [N] P(K) becomes [N, 2] = [P(not K), P(K)]."""
    if probabilities.ndim == 1:
        return np.stack([1.0 - probabilities, probabilities], axis=1)
    return probabilities


def prediction_rows(
    examples: Sequence[Example], probabilities: np.ndarray, binary_class: int | None
) -> list[dict[str, Any]]:
    """One JSON-ready dict per example: source, label, top class, probabilities."""
    table = class_table(probabilities)
    names = data_lib.class_names(binary_class)
    rows = []
    for example, probs in zip(examples, table, strict=True):
        top = int(np.argmax(probs))
        rows.append(
            {
                "source": example.source,
                "label": None if example.label is None else names[example.label],
                "top_class": names[top],
                "top_probability": float(probs[top]),
                "probabilities": {
                    n: float(p) for n, p in zip(names, probs, strict=True)
                },
            }
        )
    return rows


def format_rows(rows: list[dict[str, Any]], binary_class: int | None) -> str:
    """One aligned line per example: source, label, top class, P(top), P(each)."""
    if not rows:
        return ""
    names = list(rows[0]["probabilities"])
    shown = names[1:] if binary_class is not None else names
    width = max(len("source"), *(len(r["source"]) for r in rows))
    header = f"{'source':<{width}}  label  top    p(top)" + "".join(
        f"  {'p(' + n + ')':>7}" for n in shown
    )
    lines = [header]
    for row in rows:
        label = "-" if row["label"] is None else row["label"]
        lines.append(
            f"{row['source']:<{width}}  {label:>5}  {row['top_class']:>5}  "
            f"{row['top_probability']:.4f}"
            + "".join(f"  {row['probabilities'][n]:7.4f}" for n in shown)
        )
    return "\n".join(lines)


def rows_json_text(header: dict[str, Any], rows: list[dict[str, Any]]) -> str:
    """`--format=json` output."""
    return json.dumps({**header, "predictions": rows}, indent=2)
