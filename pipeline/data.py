"""MNIST-family data: validated IDX/npz readers, the bundled sample, tf.data pipelines.

Arrays stay uint8 [N, 28, 28] until they reach the model: `model_input` turns
them into what every model takes (float32 [N, 28, 28, 1] in [0, 1]), inside
the tf.data pipeline (so shuffle buffers hold bytes), inside the compiled
evaluation, prediction and the exported SavedModel alike.
Every reader raises `DataError` with a message naming the offending file.
"""

from __future__ import annotations

import dataclasses
import functools
import gzip
import hashlib
import pathlib
import struct
import zipfile
import zlib

import numpy as np

from pipeline.errors import DataError

SAMPLE_DIR = pathlib.Path(__file__).parent / "sample_data"
SAMPLE_FILES = {
    "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
    "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
}
# The bundled sample is MNIST's official test set: the first 8,000 digits
# train, the last 2,000 test (the set is not ordered by class or writer).
SAMPLE_TRAIN_SIZE = 8000
FASHION_MNIST_DEFAULT_DIR = pathlib.Path("/usr/share/datasets/fashion-mnist")
IDX_NAMES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
IMAGE_MAGIC = 0x00000803
LABEL_MAGIC = 0x00000801
NUM_CLASSES = 10


def class_names(binary_class: int | None = None) -> list[str]:
    """Display names of the classes a model predicts: the digits (Fashion-MNIST
    too is labelled 0-9 here), or `not K`/`K` for a `--binary_class=K` run."""
    if binary_class is not None:
        return [f"not {binary_class}", str(binary_class)]
    return [str(k) for k in range(NUM_CLASSES)]


# What `model_input` divides uint8 pixels by, per input scale
# (`--input_scale`): [0, 1], or the raw 0-255 values as floats.
INPUT_SCALE_DIVISORS = {"unit": 255.0, "raw": 1.0}


@dataclasses.dataclass(frozen=True)
class Split:
    """One split: uint8 images [N, 28, 28] and int labels [N]."""

    images: np.ndarray
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)


@dataclasses.dataclass(frozen=True)
class Dataset:
    """The splits of one dataset, with where they came from."""

    name: str
    train: Split
    test: Split
    validation: Split | None = None
    source: str = ""

    def fingerprint(self) -> str:
        """sha256 of the decoded arrays and split sizes: equal iff same data."""
        digest = hashlib.sha256()
        for split_name in ("train", "validation", "test"):
            split = getattr(self, split_name)
            if split is None:
                continue
            digest.update(f"{split_name}:{len(split)};".encode())
            digest.update(np.ascontiguousarray(split.images).tobytes())
            digest.update(np.ascontiguousarray(split.labels).astype(np.int64).tobytes())
        return digest.hexdigest()

    def sizes(self) -> dict[str, int]:
        """Examples per split."""
        out = {"train": len(self.train), "test": len(self.test)}
        if self.validation is not None:
            out["validation"] = len(self.validation)
        return out


def _read_bytes(path: pathlib.Path) -> bytes:
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    try:
        raw = path.read_bytes()
        if raw[:2] == b"\x1f\x8b":
            return gzip.decompress(raw)
        return raw
    except (OSError, EOFError, zlib.error) as err:
        raise DataError(f"{path}: cannot decompress ({err})") from None


def read_idx(path: pathlib.Path | str, expected_magic: int | None = None) -> np.ndarray:
    """Reads an IDX file (gzip or raw) and checks its magic number and size."""
    path = pathlib.Path(path)
    data = _read_bytes(path)
    if len(data) < 4:
        raise DataError(f"{path}: too short to be an IDX file ({len(data)} bytes)")
    (magic,) = struct.unpack(">I", data[:4])
    if magic >> 8 != 0x08:
        raise DataError(
            f"{path}: not an unsigned-byte IDX file (magic 0x{magic:08x}, "
            "expected 0x00000801 or 0x00000803)"
        )
    if expected_magic is not None and magic != expected_magic:
        raise DataError(
            f"{path}: wrong IDX magic 0x{magic:08x}, expected 0x{expected_magic:08x}"
        )
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataError(f"{path}: truncated IDX header")
    dims = struct.unpack(f">{ndim}I", data[4:header])
    expected = int(np.prod(dims))
    if len(data) - header != expected:
        raise DataError(
            f"{path}: payload is {len(data) - header} bytes but dims {dims} need "
            f"{expected}"
        )
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(dims)


def _check_split(images: np.ndarray, labels: np.ndarray, where: str) -> Split:
    if images.ndim != 3 or images.shape[1:] != (28, 28):
        raise DataError(
            f"{where}: images have shape {images.shape}, expected [N, 28, 28]"
        )
    if labels.ndim != 1:
        raise DataError(f"{where}: labels have shape {labels.shape}, expected [N]")
    if len(images) != len(labels):
        raise DataError(f"{where}: {len(images)} images but {len(labels)} labels")
    if len(labels) == 0:
        raise DataError(f"{where}: no examples")
    if labels.min() < 0 or labels.max() >= NUM_CLASSES:
        raise DataError(
            f"{where}: labels must be in [0, 9], found {labels.min()}..{labels.max()}"
        )
    if images.dtype != np.uint8:
        raise DataError(f"{where}: images are {images.dtype}, expected uint8")
    return Split(images, labels.astype(np.int32))


def _find(directory: pathlib.Path, stem: str) -> pathlib.Path:
    for name in (stem + ".gz", stem):
        if (directory / name).is_file():
            return directory / name
    raise DataError(f"{directory / (stem + '.gz')}: file not found")


def read_idx_split(directory: pathlib.Path, split: str) -> Split:
    """Reads one split's IDX image and label files from `directory`."""
    image_stem, label_stem = IDX_NAMES[split]
    image_path = _find(directory, image_stem)
    label_path = _find(directory, label_stem)
    images = read_idx(image_path, IMAGE_MAGIC)
    labels = read_idx(label_path, LABEL_MAGIC)
    return _check_split(images, labels, f"{image_path} + {label_path.name}")


def read_npz(path: pathlib.Path | str) -> tuple[Split, Split]:
    """Reads Keras' mnist.npz layout (x_train, y_train, x_test, y_test)."""
    path = pathlib.Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    # np.load takes any non-zip file for a pickle and would report that.
    if not zipfile.is_zipfile(path):
        raise DataError(f"{path}: not a valid .npz file (not a zip archive)")
    try:
        with np.load(path, allow_pickle=False) as npz:
            missing = {"x_train", "y_train", "x_test", "y_test"} - set(npz.files)
            if missing:
                raise DataError(f"{path}: missing arrays {sorted(missing)}")
            arrays = {k: npz[k] for k in ("x_train", "y_train", "x_test", "y_test")}
    except ValueError as err:
        if isinstance(err, DataError):
            raise
        raise DataError(
            f"{path}: refused to load: it holds pickled object arrays, which "
            "can run arbitrary code (allow_pickle stays off)"
        ) from None
    except (OSError, zipfile.BadZipFile, EOFError) as err:
        raise DataError(f"{path}: not a valid .npz file ({err})") from None
    return (
        _check_split(arrays["x_train"], arrays["y_train"], f"{path} (train)"),
        _check_split(arrays["x_test"], arrays["y_test"], f"{path} (test)"),
    )


def _md5(path: pathlib.Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def load_mnist_sample() -> tuple[Split, Split]:
    """The bundled MNIST test set, md5-checked, split 8,000 train / 2,000 test."""
    for name, md5 in SAMPLE_FILES.items():
        path = SAMPLE_DIR / name
        if not path.is_file():
            raise DataError(f"{path}: bundled sample file is missing; reinstall")
        if _md5(path) != md5:
            raise DataError(f"{path}: md5 mismatch (corrupt bundled sample); reinstall")
    full = read_idx_split(SAMPLE_DIR, "test")
    n = SAMPLE_TRAIN_SIZE
    return (
        Split(full.images[:n], full.labels[:n]),
        Split(full.images[n:], full.labels[n:]),
    )


def _load_directory(directory: pathlib.Path) -> tuple[Split, Split]:
    if not directory.is_dir():
        raise DataError(f"{directory}: data directory not found")
    npz = directory / "mnist.npz"
    has_idx = any(directory.glob("train-images-idx3-ubyte*"))
    if npz.is_file() and not has_idx:
        return read_npz(npz)
    return read_idx_split(directory, "train"), read_idx_split(directory, "test")


def load_splits(
    name: str, data_dir: str | None = None
) -> tuple[tuple[Split, Split], str]:
    """Returns ((train, test), source description) for a dataset name."""
    if name == "mnist_sample":
        return load_mnist_sample(), str(SAMPLE_DIR)
    if name == "mnist":
        if data_dir is None:
            return _load_keras_mnist(), "keras.datasets.mnist"
        path = pathlib.Path(data_dir)
        if path.suffix == ".npz":
            return read_npz(path), str(path)
        return _load_directory(path), str(path)
    if name == "fashion_mnist":
        directory = pathlib.Path(data_dir) if data_dir else FASHION_MNIST_DEFAULT_DIR
        if data_dir is None and not directory.is_dir():
            raise DataError(
                f"{directory}: not found; install Debian's dataset-fashion-mnist "
                "(make fashion-mnist) or pass --data_dir"
            )
        return _load_directory(directory), str(directory)
    raise DataError(f"unknown dataset {name!r}")


def _load_keras_mnist() -> tuple[Split, Split]:
    import keras  # imports TensorFlow; only on this path

    try:
        (x_train, y_train), (x_test, y_test) = keras.datasets.mnist.load_data()
    except Exception as err:  # network errors come in many types
        raise DataError(
            "keras.datasets.mnist: download failed "
            f"({type(err).__name__}); pass --data_dir with the IDX files or mnist.npz"
        ) from None
    return (
        _check_split(x_train, y_train, "keras mnist (train)"),
        _check_split(x_test, y_test, "keras mnist (test)"),
    )


def split_validation(split: Split, fraction: float) -> tuple[Split, Split | None]:
    """Holds out the last `fraction` of `split`: (train, validation)."""
    if fraction <= 0:
        return split, None
    n_val = int(round(len(split) * fraction))
    if n_val < 1 or n_val >= len(split):
        raise DataError(
            f"--validation_split={fraction} leaves no train or no validation data"
        )
    cut = len(split) - n_val
    return (
        Split(split.images[:cut], split.labels[:cut]),
        Split(split.images[cut:], split.labels[cut:]),
    )


def binarize(split: Split, positive_class: int) -> Split:
    """Labels become 1 for `positive_class`, else 0 ("is it a K?")."""
    return Split(split.images, (split.labels == positive_class).astype(np.int32))


def load_dataset(
    name: str,
    data_dir: str | None = None,
    validation_split: float = 0.0,
    binary_class: int | None = None,
) -> Dataset:
    """Loads, validates, splits and (optionally) binarises a dataset."""
    (train, test), source = load_splits(name, data_dir)
    train, validation = split_validation(train, validation_split)
    if binary_class is not None:
        train, test = binarize(train, binary_class), binarize(test, binary_class)
        if validation is not None:
            validation = binarize(validation, binary_class)
    return Dataset(name, train, test, validation, source)


def make_dataset(
    split: Split,
    *,
    batch_size: int,
    shuffle_buffer: int | None = None,
    seed: int | None = None,
    input_scale: str = "unit",
    start_step: int = 0,
):
    """Returns the training pipeline for `split`: endless full batches, from
    batch `start_step` on.

    from_tensor_slices -> shuffle(buffer, seed) -> batch -> repeat ->
    skip(start_step) -> model_input -> prefetch. The last partial batch is
    dropped so every step has the same shape (no retracing). Evaluation needs
    no tf.data: it slices the resident arrays in one compiled call
    (`training.steps.make_eval_fn`).

    `start_step` is the whole of a run's input position: the order is a
    function of the seed, so a resumed run rebuilds it and starts at the
    restored step instead of checkpointing the iterator, whose state holds the
    shuffle buffer (8 MB per checkpoint on Fashion-MNIST). The skip runs
    before `model_input`, on uint8 batches.

    When the shuffle buffer holds the whole split (or there is no shuffling),
    batches are gathered from the resident array by a per-epoch stateless
    permutation instead (`gathered_batches`): the same uniform reshuffle every
    epoch that a full buffer gives, 3-5x faster, because no per-example
    element ever passes through tf.data.
    """
    import tensorflow as tf

    shuffle = bool(shuffle_buffer and shuffle_buffer > 1)
    if not shuffle or shuffle_buffer >= len(split):
        return gathered_batches(
            split,
            batch_size=batch_size,
            shuffle=shuffle,
            seed=seed,
            input_scale=input_scale,
            start_step=start_step,
        )
    ds = tf.data.Dataset.from_tensor_slices((split.images, split.labels))
    ds = ds.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
    ds = ds.batch(batch_size, drop_remainder=True)
    ds = ds.repeat().skip(start_step)
    # Nothing for AutoGraph to rewrite (`gathered_batches` says why to skip it).
    normalise = tf.autograph.experimental.do_not_convert(
        functools.partial(_normalise, scale=input_scale)
    )
    ds = ds.map(normalise, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    options = tf.data.Options()
    # In-memory arrays have no files to shard: each worker takes its share of
    # every global batch.
    options.experimental_distribute.auto_shard_policy = (
        tf.data.experimental.AutoShardPolicy.DATA
    )
    return ds.with_options(options).prefetch(tf.data.AUTOTUNE)


def gathered_batches(
    split: Split,
    *,
    batch_size: int,
    shuffle: bool = True,
    seed: int | None = None,
    input_scale: str = "unit",
    start_step: int = 0,
):
    """Endless full batches, gathered from the split by per-epoch permutations,
    from batch `start_step` on.

    Epoch `e` visits the examples in the order
    `stateless_shuffle(range(N), seed=(seed, e))` (or in file order when
    `shuffle` is False), in `N // batch_size` full batches; the remainder of
    each epoch's permutation is skipped, as `drop_remainder` would. Keras'
    `fit` on NumPy arrays batches the same way. The permutation is stateless,
    so batch `start_step` is found in O(1): epoch `start_step // batches per
    epoch`, then at most one epoch's index rows skipped, before any gather.
    """
    import tensorflow as tf

    n = len(split)
    batches_per_epoch = n // batch_size
    if batches_per_epoch < 1:
        raise DataError(
            f"batch size {batch_size} is larger than the split ({n} examples)"
        )
    images = tf.constant(split.images)
    labels = tf.constant(split.labels)
    seed_value = tf.constant(0 if seed is None else seed, tf.int64)

    # No Python control flow on tensors: skipping AutoGraph's rewrite of these
    # functions saves start-up time before the first step.
    @tf.autograph.experimental.do_not_convert
    def epoch_batches(epoch):
        order = tf.range(n, dtype=tf.int64)
        if shuffle:
            order = tf.random.experimental.stateless_shuffle(
                order, seed=tf.stack([seed_value, epoch])
            )
        order = tf.reshape(
            order[: batches_per_epoch * batch_size], [batches_per_epoch, batch_size]
        )
        return tf.data.Dataset.from_tensor_slices(order)

    @tf.autograph.experimental.do_not_convert
    def gather(indices):
        return _normalise(
            tf.gather(images, indices), tf.gather(labels, indices), input_scale
        )

    start_epoch, start_index = divmod(start_step, batches_per_epoch)
    ds = tf.data.Dataset.range(start_epoch, 2**62).flat_map(epoch_batches)
    ds = ds.skip(start_index).map(
        gather, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True
    )
    return ds.prefetch(tf.data.AUTOTUNE)


def model_input(images, scale: str = "unit"):
    """uint8 [N, 28, 28] pixels -> the model's input, float32 [N, 28, 28, 1].

    The one preprocessing step shared by training, evaluation, prediction and
    export; works on NumPy arrays and on tensors inside a `tf.function`.
    `scale` names the pixel range (`INPUT_SCALE_DIVISORS`): "unit" is [0, 1],
    "raw" the 0-255 values (the run's `--input_scale`).
    """
    import tensorflow as tf

    divisor = INPUT_SCALE_DIVISORS[scale]
    images = tf.cast(images, tf.float32) / divisor
    return images[..., tf.newaxis]


def _normalise(images, labels, scale: str = "unit"):
    return model_input(images, scale), labels
