"""Data: the bundled sample, validated readers, the tf.data pipeline."""

import gzip
import struct

import numpy as np
import pytest

from pipeline import data


def write_idx(path, array: np.ndarray, magic: int | None = None, compress=True):
    magic = magic if magic is not None else 0x0800 | array.ndim
    payload = struct.pack(f">I{array.ndim}I", magic, *array.shape) + array.tobytes()
    path.write_bytes(gzip.compress(payload) if compress else payload)
    return path


def idx_dir(tmp_path, images, labels, split="train"):
    image_name, label_name = data.IDX_NAMES[split]
    write_idx(tmp_path / f"{image_name}.gz", images)
    write_idx(tmp_path / f"{label_name}.gz", labels)
    return tmp_path


def test_sample_is_the_official_test_set_split_8000_2000(sample_dataset):
    assert sample_dataset.sizes() == {"train": 8000, "test": 2000}
    assert sample_dataset.train.images.dtype == np.uint8
    assert sample_dataset.train.images.shape == (8000, 28, 28)
    # The first digit of MNIST's test set is a 7, its last a 6.
    assert sample_dataset.train.labels[0] == 7
    assert sample_dataset.test.labels[-1] == 6
    assert np.bincount(sample_dataset.test.labels, minlength=10).min() > 150


def test_fingerprint_changes_with_the_data(sample_dataset):
    binary = data.load_dataset("mnist_sample", binary_class=1)
    assert (
        sample_dataset.fingerprint() == data.load_dataset("mnist_sample").fingerprint()
    )
    assert binary.fingerprint() != sample_dataset.fingerprint()


def test_idx_round_trip_gzip_and_raw(tmp_path):
    images = np.arange(2 * 28 * 28, dtype=np.uint8).reshape(2, 28, 28)
    np.testing.assert_array_equal(
        data.read_idx(write_idx(tmp_path / "a.gz", images)), images
    )
    raw = write_idx(tmp_path / "a", images, compress=False)
    np.testing.assert_array_equal(data.read_idx(raw), images)


def test_wrong_magic_names_the_file(tmp_path):
    path = write_idx(
        tmp_path / "x.gz", np.zeros((2, 28, 28), np.uint8), magic=0x00000903
    )
    with pytest.raises(data.DataError, match=r"x\.gz: not an unsigned-byte IDX file"):
        data.read_idx(path)


def test_label_file_where_images_expected(tmp_path):
    path = write_idx(tmp_path / "labels.gz", np.zeros(3, np.uint8))
    with pytest.raises(
        data.DataError, match="wrong IDX magic 0x00000801, expected 0x00000803"
    ):
        data.read_idx(path, data.IMAGE_MAGIC)


def test_truncated_gzip_names_the_file(tmp_path):
    path = write_idx(tmp_path / "t.gz", np.zeros((5, 28, 28), np.uint8))
    path.write_bytes(path.read_bytes()[:-30])
    with pytest.raises(data.DataError, match=r"t\.gz: cannot decompress"):
        data.read_idx(path)


def test_payload_shorter_than_dims(tmp_path):
    path = tmp_path / "short"
    path.write_bytes(struct.pack(">IIII", 0x803, 5, 28, 28) + b"\0" * 100)
    with pytest.raises(data.DataError, match="payload is 100 bytes"):
        data.read_idx(path)


def test_image_and_label_counts_must_match(tmp_path):
    idx_dir(tmp_path, np.zeros((3, 28, 28), np.uint8), np.zeros(2, np.uint8))
    with pytest.raises(data.DataError, match="3 images but 2 labels"):
        data.read_idx_split(tmp_path, "train")


def test_labels_out_of_range(tmp_path):
    idx_dir(tmp_path, np.zeros((2, 28, 28), np.uint8), np.array([1, 12], np.uint8))
    with pytest.raises(
        data.DataError, match=r"labels must be in \[0, 9\], found 1..12"
    ):
        data.read_idx_split(tmp_path, "train")


def test_missing_file_is_named(tmp_path):
    with pytest.raises(
        data.DataError, match="train-images-idx3-ubyte.gz: file not found"
    ):
        data.read_idx_split(tmp_path, "train")


def test_npz_round_trip_and_refusals(tmp_path):
    x = np.zeros((4, 28, 28), np.uint8)
    y = np.arange(4, dtype=np.uint8)
    good = tmp_path / "mnist.npz"
    np.savez(good, x_train=x, y_train=y, x_test=x, y_test=y)
    train, test = data.read_npz(good)
    assert len(train) == 4
    assert len(test) == 4

    fake = tmp_path / "fake.npz"
    fake.write_text("not a zip")
    with pytest.raises(data.DataError, match=r"fake\.npz"):
        data.read_npz(fake)

    pickled = tmp_path / "pickled.npz"
    np.savez(pickled, x_train=np.array([object()]), y_train=y, x_test=x, y_test=y)
    with pytest.raises(data.DataError, match=r"pickled\.npz: refused to load"):
        data.read_npz(pickled)


def test_fashion_mnist_from_debian_if_installed():
    if not data.FASHION_MNIST_DEFAULT_DIR.is_dir():
        pytest.skip("dataset-fashion-mnist not installed")
    fashion = data.load_dataset("fashion_mnist")
    assert fashion.sizes() == {"train": 60000, "test": 10000}


def test_validation_split_holds_out_the_last_fraction(sample_dataset):
    train, val = data.split_validation(sample_dataset.train, 0.2)
    assert (len(train), len(val)) == (6400, 1600)
    np.testing.assert_array_equal(val.labels, sample_dataset.train.labels[6400:])


def test_binarize_is_it_a_one(sample_dataset):
    binary = data.binarize(sample_dataset.test, 1)
    assert set(np.unique(binary.labels)) == {0, 1}
    assert binary.labels.sum() == (sample_dataset.test.labels == 1).sum()


def test_make_dataset_normalises_shuffles_and_repeats(sample_dataset):
    ds = data.make_dataset(
        sample_dataset.test, batch_size=64, shuffle_buffer=2000, seed=3
    )
    images, labels = next(iter(ds))
    assert images.shape == (64, 28, 28, 1)
    assert images.dtype.name == "float32"
    assert float(images.numpy().min()) >= 0.0
    assert float(images.numpy().max()) <= 1.0
    assert labels.numpy().tolist() != sample_dataset.test.labels[:64].tolist()
    again = next(
        iter(
            data.make_dataset(
                sample_dataset.test, batch_size=64, shuffle_buffer=2000, seed=3
            )
        )
    )
    np.testing.assert_array_equal(labels, again[1])
    # 2000 examples / 64 drop the remainder: 31 batches per epoch, forever.
    assert sum(1 for _ in ds.take(100)) == 100


def test_evaluation_covers_the_split_in_full(sample_dataset):
    """The one evaluation (training's and pipeline-eval's) counts the last,
    partial batch: 2,000 examples in batches of 300 are 6 x 300 + 200."""
    from pipeline import models
    from pipeline.config import TrainConfig
    from pipeline.training import steps

    model = models.build_model(TrainConfig(model="logreg"))
    test = sample_dataset.test
    evaluate = steps.make_eval_fn(model, batch_size=300, with_logits=True)
    metrics = evaluate(test.images, test.labels)
    assert float(metrics["count"]) == 2000
    assert metrics["logits"].shape == (2000, 10)
    np.testing.assert_allclose(
        metrics["logits"][1800:],
        steps.model_logits(model, test.images[1800:]),
        atol=1e-6,
    )
