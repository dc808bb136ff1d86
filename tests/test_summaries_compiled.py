"""SummaryLogger's compiled writers: verbatim tags, own steps, one trace."""

from __future__ import annotations

import numpy as np
import tensorflow as tf
from conftest import read_events

from pipeline.tensorboard import events
from pipeline.tensorboard.summaries import SummaryLogger


def _read(path):
    return read_events(path)


def test_scalar_series_writes_due_steps_with_plain_tags(tmp_path):
    with SummaryLogger(tmp_path) as logger:
        for first in (1, 8, 13):  # chunks of 7, 5 and 4 steps
            n = {1: 7, 8: 5, 13: 4}[first]
            values = np.arange(first, first + n, dtype=np.float32)
            logger.scalar_series(
                "train", first, {"loss": values, "accuracy": values / 100}, every=3
            )
        counts = logger.tracing_counts()
    acc = _read(tmp_path / "train")
    assert sorted(acc.Tags()["tensors"]) == ["accuracy", "loss"]
    events = acc.Tensors("loss")
    assert [e.step for e in events] == [3, 6, 9, 12, 15]
    assert [float(tf.make_ndarray(e.tensor_proto)) for e in events] == [3, 6, 9, 12, 15]
    assert acc.SummaryMetadata("loss").plugin_data.plugin_name == "scalars"
    # Written in bulk as serialized events: no TensorFlow function to trace.
    assert counts == {}


def test_bulk_scalar_events_read_back_as_tf_summary_scalar_writes_them(tmp_path):
    """Same tag, step, value, dtype and plugin metadata as `tf.summary.scalar`,
    for TensorBoard's loader, every tag of a step in one event."""
    values = np.array([0.25, 1e-8, 3.5e7, -2.0], np.float32)
    with SummaryLogger(tmp_path / "bulk") as logger:
        logger.scalar_series("train", 2**40, {"loss": values, "other/tag": -values})
    writer = tf.summary.create_file_writer(str(tmp_path / "tf" / "train"))
    with writer.as_default():
        for i, value in enumerate(values):
            tf.summary.scalar("loss", value, step=2**40 + i)
            tf.summary.scalar("other/tag", -value, step=2**40 + i)
    writer.close()
    bulk, reference = (
        _read(tmp_path / "bulk" / "train"),
        _read(tmp_path / "tf" / "train"),
    )
    for tag in ("loss", "other/tag"):
        got, want = bulk.Tensors(tag), reference.Tensors(tag)
        assert [e.step for e in got] == [e.step for e in want]
        for a, b in zip(got, want, strict=True):
            assert tf.make_ndarray(a.tensor_proto).dtype == np.float32
            assert tf.make_ndarray(a.tensor_proto) == tf.make_ndarray(b.tensor_proto)
        assert bulk.SummaryMetadata(tag) == reference.SummaryMetadata(tag)
    (path,) = events.event_files(tmp_path / "bulk" / "train", ".records.v2")
    loaded = list(events.load(path))
    assert loaded[0].file_version == "brain.Event:2"
    assert [len(e.summary.value) for e in loaded[1:]] == [2] * 4


def test_histograms_compiled_once(tmp_path):
    with SummaryLogger(tmp_path) as logger:
        for step in (0, 5, 9):
            logger.histograms(
                "train", step, [("w", np.ones([3, 4]) * step), ("b", np.zeros([4]))]
            )
        counts = logger.tracing_counts()
    acc = _read(tmp_path / "train")
    assert [e.step for e in acc.Tensors("w")] == [0, 5, 9]
    assert acc.SummaryMetadata("b").plugin_data.plugin_name == "histograms"
    assert counts == {"histograms:train:w": 1}


def test_disabled_logger_writes_nothing(tmp_path):
    with SummaryLogger(tmp_path, enabled=False) as logger:
        logger.scalar_series("train", 1, {"loss": np.ones(4, np.float32)})
        logger.histograms("train", 1, [("w", np.ones(3))])
    assert not events.all_event_files(tmp_path)


def test_histogram_buckets_match_tf_summary_histogram(tmp_path):
    from pipeline.tensorboard.summaries import histogram_buckets

    rng = np.random.default_rng(0)
    cases = {
        "normal": rng.normal(size=1000),
        "matrix": rng.uniform(size=(30, 7)).astype(np.float32),
        "constant": np.full([5], 2.0),
        "ramp": np.arange(31.0),
    }
    writer = tf.summary.create_file_writer(str(tmp_path))
    with writer.as_default():
        for tag, data in cases.items():
            tf.summary.histogram(tag, data, step=0)
    writer.close()
    acc = _read(tmp_path)
    for tag, data in cases.items():
        reference = tf.make_ndarray(acc.Tensors(tag)[0].tensor_proto)
        np.testing.assert_allclose(histogram_buckets(tf.constant(data)), reference)


def test_histograms_of_many_tensors_at_once_match_one_at_a_time():
    from pipeline.tensorboard.summaries import histogram_buckets, histogram_buckets_many

    rng = np.random.default_rng(1)
    tensors = [
        tf.constant(rng.normal(size=(20, 5)).astype(np.float32)),
        tf.constant(np.zeros([0])),  # empty: all zeros
        tf.constant(np.full([7], -3.0)),  # one value
        tf.constant(rng.uniform(-1, 1, size=300)),
    ]
    many = histogram_buckets_many(tensors)
    assert len(many) == len(tensors)
    for tensor, histogram in zip(tensors, many, strict=True):
        assert histogram.shape == (30, 3)
        np.testing.assert_allclose(histogram, histogram_buckets(tensor))
    assert float(tf.reduce_sum(many[0][:, 2])) == 100.0
    assert float(tf.reduce_sum(many[1])) == 0.0
    np.testing.assert_array_equal(many[2][:, :2], -3.0)
    assert float(many[2][-1, 2]) == 7.0


def test_histograms_of_non_finite_weights_are_written_not_raised():
    """A diverging run's last weights: the histogram must not be what fails
    (the loop's finiteness check names the problem)."""
    from pipeline.tensorboard.summaries import histogram_buckets, histogram_buckets_many

    weights = tf.constant([1.0, np.inf, -np.inf, np.nan, 2.0], tf.float32)
    for histogram in (
        histogram_buckets(weights),
        histogram_buckets_many([weights, tf.constant([0.5, 1.5])])[0],
    ):
        assert histogram.shape == (30, 3)
        assert float(tf.reduce_sum(histogram[:, 2])) == 5.0
