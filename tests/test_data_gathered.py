"""The gathered-batches input path (full-size shuffle buffer)."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline import data as data_lib


@pytest.fixture(scope="module")
def small_split():
    train, _ = data_lib.load_mnist_sample()
    # 250 examples tagged by position: pixel [0, 0] holds the index mod 251.
    images = train.images[:250].copy()
    images[:, 0, 0] = np.arange(250) % 251
    return data_lib.Split(images, train.labels[:250])


def _indices(batch):
    images, _ = batch
    return np.rint(images.numpy()[:, 0, 0, 0] * 255).astype(int).tolist()


def _epoch(iterator, batches):
    return [i for _ in range(batches) for i in _indices(next(iterator))]


def test_full_buffer_takes_gather_path_and_visits_each_example_once(small_split):
    ds = data_lib.make_dataset(small_split, batch_size=50, shuffle_buffer=250, seed=3)
    iterator = iter(ds)
    first, second = _epoch(iterator, 5), _epoch(iterator, 5)
    assert sorted(first) == list(range(250)) == sorted(second)
    assert first != second  # reshuffled every epoch
    assert first != list(range(250))


def test_same_seed_same_order_and_shapes(small_split):
    a = iter(
        data_lib.make_dataset(small_split, batch_size=64, shuffle_buffer=10**6, seed=1)
    )
    b = iter(data_lib.gathered_batches(small_split, batch_size=64, seed=1))
    batch = next(a)
    assert batch[0].shape == (64, 28, 28, 1)
    assert batch[0].dtype.name == "float32"
    assert float(batch[0].numpy().max()) <= 1.0
    assert _indices(batch) == _indices(next(b))
    # 250 // 64 = 3 full batches per epoch; the remainder is dropped.
    assert len(set(_epoch(a, 2) + _indices(batch))) == 3 * 64


def test_no_shuffle_keeps_file_order(small_split):
    ds = data_lib.make_dataset(small_split, batch_size=100, shuffle_buffer=1)
    assert _epoch(iter(ds), 2) == list(range(200))


def test_iterator_checkpoint_restores_position(small_split, tmp_path):
    import tensorflow as tf

    ds = data_lib.make_dataset(small_split, batch_size=50, shuffle_buffer=250, seed=0)
    iterator = iter(ds)
    _epoch(iterator, 7)
    checkpoint = tf.train.Checkpoint(iterator=iterator)
    path = checkpoint.save(str(tmp_path / "ckpt"))
    expected = _epoch(iterator, 4)
    restored = iter(ds)
    tf.train.Checkpoint(iterator=restored).restore(path)
    assert _epoch(restored, 4) == expected


@pytest.mark.parametrize("shuffle_buffer", [250, 100, 1])
def test_start_step_continues_the_uninterrupted_order(small_split, shuffle_buffer):
    """A resumed run's input position is its step: the pipeline built at step
    7 (epoch 1, batch 2 of 5) gives the batches an uninterrupted one gives
    from there, on the gathered (250), the tf.data shuffle (100) and the
    unshuffled (1) paths."""

    def pipeline(start_step):
        return iter(
            data_lib.make_dataset(
                small_split,
                batch_size=50,
                shuffle_buffer=shuffle_buffer,
                seed=4,
                start_step=start_step,
            )
        )

    whole = pipeline(0)
    _epoch(whole, 7)
    assert _epoch(pipeline(7), 6) == _epoch(whole, 6)


def test_batch_larger_than_split_is_a_data_error(small_split):
    with pytest.raises(data_lib.DataError, match="batch size 300"):
        data_lib.gathered_batches(small_split, batch_size=300)
