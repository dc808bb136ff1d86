"""What a training run shows in TensorBoard, read back with TensorBoard's loader."""

import threading
import time

import numpy as np
import pytest
from conftest import read_events, scalar_series

from pipeline.tensorboard.events import (
    SCALAR_METADATA,
    event_files,
    load,
    scalar_event_records,
    tensor_event_records,
    tensor_proto_bytes,
)
from pipeline.tensorboard.summaries import BackgroundWriter, SummaryLogger, tile_images

FAMILIES = ("logreg", "mlp", "cnn")


@pytest.mark.parametrize("model", FAMILIES)
def test_train_scalars_every_step_and_test_scalars_at_evals(trained_runs, model):
    run = trained_runs[model].path
    assert [s for s, _ in scalar_series(run / "train", "loss")] == list(range(1, 21))
    assert [s for s, _ in scalar_series(run / "train", "accuracy")] == list(
        range(1, 21)
    )
    assert [s for s, _ in scalar_series(run / "test", "loss")] == [10, 20]
    assert [s for s, _ in scalar_series(run / "test", "accuracy")] == [10, 20]


@pytest.mark.parametrize("model", FAMILIES)
def test_plugins_and_tags_per_split(trained_runs, model):
    train = read_events(trained_runs[model].path / "train")
    test = read_events(trained_runs[model].path / "test")
    assert set(train.PluginTagToContent("scalars")) == {
        "loss",
        "accuracy",
        "learning_rate",
        "examples_per_sec",
    }  # issue 19: no events/checkpoint_saved step-number curve
    assert set(test.PluginTagToContent("scalars")) == {
        "loss",
        "accuracy",
        # Running bests, for the HParams dashboard (it shows last values);
        # issue 19: their steps are no curves.
        "best/accuracy",
        "best/loss",
    }
    assert set(test.ActivePlugins()) == {"scalars"}
    assert {"graph_keras_model", "images", "text"} <= set(train.ActivePlugins())
    # The train step's op graph is the run-level graph (the Graphs tab's
    # default view); no op graph hides under a tag beside the Keras one.
    assert train.Tags()["graph"] is True
    assert "graph_run_metadata_graph" not in train.ActivePlugins()
    assert list(train.PluginTagToContent("graph_keras_model")) == ["keras"]
    assert list(train.PluginTagToContent("images")) == ["inputs"]
    assert list(train.PluginTagToContent("text")) == ["model_summary"]


@pytest.mark.parametrize("model", FAMILIES)
def test_histograms_of_every_weight_and_gradient(trained_runs, model):
    import keras

    run = trained_runs[model]
    train = read_events(run.path / "train")
    tags = set(train.PluginTagToContent("histograms"))
    from pipeline.models import build_model

    keras.utils.set_random_seed(0)
    names = {v.path for v in build_model(run.config).trainable_variables}
    assert tags == names | {f"gradients/{n}" for n in names}
    for tag in names:
        # Step 0 (initial weights) and the last step always, --histogram_every between.
        assert [e.step for e in train.Tensors(tag)] == [0, 10, 20]
        # A gradient is the one applied at that step: none before training.
        assert [e.step for e in train.Tensors(f"gradients/{tag}")] == [10, 20]


def test_checkpoint_marker_at_each_save(trained_runs):
    # Issue 19: the saves are the checkpoints named by step, no scalar curve.
    run = trained_runs["mlp"].path
    assert "events/checkpoint_saved" not in read_events(run / "train").Tags()["tensors"]
    assert {p.name.split(".")[0] for p in (run / "checkpoints").glob("ckpt-*")} == {
        "ckpt-10",
        "ckpt-20",
    }


def test_learning_rate_scalar_is_the_configured_rate(trained_runs):
    # Constant within a compiled chunk: written once per chunk, at its last step.
    series = scalar_series(trained_runs["logreg"].path / "train", "learning_rate")
    assert [s for s, _ in series] == [10, 20]
    assert [v for _, v in series] == pytest.approx([0.01] * 2)


def test_no_validation_writer_without_validation_split(trained_runs):
    assert not (trained_runs["cnn"].path / "validation").exists()


@pytest.mark.parametrize(
    "array",
    [
        np.linspace(-1, 1, 90).reshape(30, 3),  # a histogram
        np.linspace(-1, 1, 90).reshape(3, 30).T,  # not C-contiguous
        np.zeros((0, 3)),
        np.float64(3.0),
        np.ones((1, 1), np.float32),
        np.arange(6, dtype=np.int64).reshape(2, 3),
    ],
)
def test_tensor_proto_bytes_are_tensorflows(array):
    """The writer's hand-built TensorProto is the one TensorFlow serializes."""
    import tensorflow as tf

    expected = tf.make_tensor_proto(np.asarray(array)).SerializeToString()
    assert tensor_proto_bytes(array) == expected


def test_scalar_records_are_the_events_tf_summary_describes():
    """The bulk-built per-step events parse to the events the Scalars tab
    reads, across step varint lengths (1 to 4 bytes) and odd values."""
    import tensorflow as tf
    from tensorboard.compat.proto import event_pb2, summary_pb2

    steps = np.array([1, 127, 128, 129, 16383, 16384, 2**21 + 5])
    loss = np.array([0.5, np.nan, np.inf, -0.0, 1e-30, 3.25, -7.0])
    accuracy = np.linspace(0, 1, len(steps))
    records = scalar_event_records(("loss", "accuracy"), steps, (loss, accuracy), 9.5)

    metadata = summary_pb2.SummaryMetadata.FromString(SCALAR_METADATA)
    for record, step, *values in zip(records, steps, loss, accuracy, strict=True):
        expected = event_pb2.Event(wall_time=9.5, step=int(step))
        for tag, number in zip(("loss", "accuracy"), values, strict=True):
            proto = tf.make_tensor_proto(np.float32(number))
            value = expected.summary.value.add(tag=tag, metadata=metadata)
            value.tensor.ParseFromString(proto.SerializeToString())
        parsed = event_pb2.Event.FromString(record)
        assert parsed.SerializeToString() == expected.SerializeToString(), step


def test_tensor_records_are_the_events_tf_summary_describes():
    """A histogram step's events, each tag's head built once, parse to the
    events `tf.summary.write` describes, for every shape the writer sees."""
    import tensorflow as tf
    from tensorboard.compat.proto import event_pb2, summary_pb2

    arrays = [
        np.linspace(-1, 1, 90).reshape(30, 3),
        np.linspace(-1, 1, 90).reshape(3, 30).T,
        np.zeros((0, 3)),
        np.float64(3.0),
        np.arange(6, dtype=np.int64).reshape(2, 3),
    ]
    tags = [f"layer_{i}/kernel" for i in range(len(arrays))]
    metadata = summary_pb2.SummaryMetadata(display_name="d").SerializeToString()
    for step in (0, 300):  # the second time from the cached heads
        records = tensor_event_records(step, 2.0, tags, metadata, arrays)
        for record, tag, array in zip(records, tags, arrays, strict=True):
            expected = event_pb2.Event(wall_time=2.0, step=step)
            value = expected.summary.value.add(tag=tag)
            value.metadata.ParseFromString(metadata)
            proto = tf.make_tensor_proto(np.asarray(array))
            value.tensor.ParseFromString(proto.SerializeToString())
            parsed = event_pb2.Event.FromString(record)
            assert parsed.SerializeToString() == expected.SerializeToString(), tag


def test_tile_images_lays_out_a_grid_with_borders():
    images = np.stack([np.full((28, 28), i, np.uint8) for i in range(10)])
    grid = tile_images(images, columns=4)
    assert grid.shape == (3 * 29 + 1, 4 * 29 + 1)
    assert grid[1, 1] == 0
    assert grid[1, 30] == 1
    assert grid[30, 1] == 4
    assert grid[0, 0] == 128


def test_writes_wait_for_the_hand_over_and_waiting_hands_them_over():
    """The thread starts on a chunk's writes when the loop hands them over
    (as the next compiled chunk starts), not while the actions run; a caller
    waiting for a write never waits on one the thread was not given."""
    writer = BackgroundWriter()
    ran = threading.Event()
    writer.submit(ran.set)
    assert not ran.wait(timeout=0.2)
    writer.hand_over()
    assert ran.wait(timeout=30)
    held = writer.submit(lambda: "measured")
    assert held.result(timeout=30) == "measured"
    late = threading.Event()
    writer.submit(late.set)
    writer.stop()  # writes what is held, then ends
    assert late.is_set()


def test_writes_queued_behind_a_failed_write_fail_with_its_error():
    """A full disk mid-queue: nothing queued behind the failure is left
    waiting (a measurement the thread skipped would hang the run)."""
    writer = BackgroundWriter()
    release = threading.Event()

    def failing_write():
        release.wait(timeout=30)
        raise OSError(28, "No space left on device")

    failed = writer.submit(failing_write)
    behind = writer.submit(lambda: "measured")
    release.set()
    with pytest.raises(OSError, match="No space left"):
        behind.result(timeout=30)
    with pytest.raises(OSError, match="No space left"):
        failed.result(timeout=30)
    with pytest.raises(OSError, match="No space left"):  # and in the caller
        writer.wait()
    writer.stop()


def test_a_flush_puts_every_write_before_it_on_disk(tmp_path):
    """A flush (`after_flush`'s, as a checkpoint's) reaches each file written
    since the last flush: per-step scalars in the split's record file and
    `tf.summary` writes alike, in every split, and again after a flush that
    found nothing new for a split."""
    logger = SummaryLogger(tmp_path, background=True)
    logger.scalar_series("train", 1, {"loss": np.array([0.5, 0.25], np.float32)})
    logger.scalars("test", 2, {"accuracy": 0.75})
    logger.flush(wait=False)
    logger.hand_over()
    logger.after_flush(lambda: None).result(timeout=30)
    assert scalar_series(tmp_path / "train", "loss") == [(1, 0.5), (2, 0.25)]
    assert scalar_series(tmp_path / "test", "accuracy") == [(2, 0.75)]

    logger.scalar_series("train", 3, {"loss": np.array([0.125], np.float32)})
    logger.flush(wait=False)
    logger.after_flush(lambda: None).result(timeout=30)
    assert scalar_series(tmp_path / "train", "loss")[-1] == (3, 0.125)
    logger.close()


def _tags_on_disk(split_dir) -> set[str]:
    """The tags TensorBoard's loader finds in `split_dir`'s files now."""
    if not split_dir.is_dir():
        return set()
    return set(read_events(split_dir).Tags()["tensors"])


def test_progress_flushes_come_at_most_every_flush_secs(tmp_path):
    """Progress lines many times a second (logreg prints ~30): the per-step
    scalars are held and flushed with a later line, a checkpoint's flush
    (`after_flush` here) or the end, never lost and in step order."""
    logger = SummaryLogger(tmp_path, background=True, flush_secs=3600)
    for first in (1, 3, 5):
        losses = np.array([first, first + 1], np.float32)
        logger.scalar_series("train", first, {"loss": losses})
        logger.scalar_series("train", first + 1, {"lr": np.array([0.5], np.float32)})
        logger.flush(wait=False)  # a progress line: the last flush was just now
        logger.hand_over()
    logger._background.wait()  # all the thread was given is done, no flush
    assert _tags_on_disk(tmp_path / "train") == set()
    logger.after_flush(lambda: None).result(timeout=30)
    assert scalar_series(tmp_path / "train", "loss") == [(s, s) for s in range(1, 7)]
    assert scalar_series(tmp_path / "train", "lr") == [(2, 0.5), (4, 0.5), (6, 0.5)]
    steps = [
        event.step
        for path in event_files(tmp_path / "train")
        for event in load(path)
        if event.HasField("summary")
    ]
    assert steps == sorted(steps)
    logger.close()


def test_histogram_steps_wait_with_the_held_scalars_and_land_in_step_order(tmp_path):
    """A histogram chunk's buckets are held with the per-step scalars (one
    writer job a flush, not one a histogram step) and written between them,
    each split's events in step order."""
    import tensorflow as tf

    logger = SummaryLogger(tmp_path, background=True, flush_secs=3600)
    # One tensor's [1, 30, 3] buckets: (left edge, right edge, count).
    buckets = tf.constant(np.tile([0.0, 1.0, 2.0], (1, 30, 1)))
    for first in (1, 3, 5):
        losses = np.array([first, first + 1], np.float32)
        logger.scalar_series("train", first, {"loss": losses})
        logger.bucketed_histograms("train", first + 1, ["weights"], buckets)
        logger.hand_over()
    logger._background.wait()  # all the thread was given is done
    assert event_files(tmp_path / "train") == []  # nothing was: all held
    logger.scalars("test", 6, {"accuracy": 0.75})  # a write behind them
    logger.after_flush(lambda: None).result(timeout=30)
    written = [
        (event.step, event.summary.value[0].tag)
        for path in event_files(tmp_path / "train")
        for event in load(path)
        if event.HasField("summary")
    ]
    assert written == [
        (step, tag)
        for first in (1, 3, 5)
        for step, tag in ((first, "loss"), (first + 1, "loss"), (first + 1, "weights"))
    ]
    train = read_events(tmp_path / "train")
    assert train.SummaryMetadata("weights").plugin_data.plugin_name == "histograms"
    assert [e.step for e in train.Tensors("weights")] == [2, 4, 6]
    assert scalar_series(tmp_path / "test", "accuracy") == [(6, 0.75)]
    logger.close()


def test_with_flush_secs_0_every_progress_line_flushes(tmp_path):
    logger = SummaryLogger(tmp_path, background=True, flush_secs=0)
    logger.scalar_series("train", 1, {"loss": np.array([0.5], np.float32)})
    logger.flush(wait=False)
    logger.hand_over()
    deadline = time.monotonic() + 30  # the writer thread's flush, no other
    while "loss" not in _tags_on_disk(tmp_path / "train"):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert scalar_series(tmp_path / "train", "loss") == [(1, 0.5)]
    logger.close()
