"""SummaryLogger: one TensorBoard writer per split, same tags across splits.

Train and test scalars share tag names (`loss`, `accuracy`) in sibling
directories (`train/`, `test/`), so TensorBoard overlays the two curves.
Writers flush at boundaries the loop chooses (checkpoints, the end), not on
every scalar.

With `background=True` every write is handed to one writer thread
(`BackgroundWriter`), in call order, as the training loop's next compiled
chunk starts (`hand_over`), so that chunk runs while the last chunk's
summaries are serialized and written: the compiled call releases the GIL,
which the thread's Python work holds. Arguments are
values (NumPy arrays, floats, tensors read before the hand-off), never live
variables, so what is written is what the caller saw. `flush()` waits for the
thread and flushes the files (before a checkpoint: what it covers is on disk);
`flush(wait=False)` queues the flush behind the writes (progress lines), at
most once every `flush_secs` (`--flush_secs`, as `tf.summary`'s
`flush_millis`; TensorBoard itself reloads every 5 s).

Per-step scalars (`scalar_series`: a chunk's loss and accuracy at every
step) and histograms are written in bulk: pre-serialized events (one per
step with every scalar tag; one per histogram) appended by one C++ record
writer to a file of their own in the split's directory
(`events.EventRecordFile`). Per-step scalars and a histogram chunk's buckets
are also handed over in bulk: held in the training thread, in order, for up
to `flush_secs`, then built and written by one job (~0.1 ms of the writer
thread per 100-step logreg chunk, against ~0.2 ms with a job per histogram
step, ~0.5 ms with a job per chunk and ~2 ms with a `tf.summary` op, ~10 us,
per value). TensorBoard reads every event file of a directory.
"""

from __future__ import annotations

import concurrent.futures
import itertools
import pathlib
import queue
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from typing import NamedTuple

import keras
import numpy as np
import tensorflow as tf
from tensorboard.compat.proto import summary_pb2
from tensorboard.plugins.histogram import metadata as histogram_metadata
from tensorboard.plugins.pr_curve import summary as pr_summary

from pipeline.tensorboard import events
from pipeline.tensorboard.events import (
    EventRecordFile,
    scalar_event_records,
    tensor_event_records,
)

KERAS_MODEL_PLUGIN = "graph_keras_model"
HISTOGRAM_BUCKETS = 30  # tf.summary.histogram's default
HISTOGRAM_METADATA = histogram_metadata.create_summary_metadata(
    display_name=None, description=None
).SerializeToString()
# Per-step scalars held at most this many steps before they go to the writer.
MAX_HELD_STEPS = 10_000


class _HeldSeries(NamedTuple):
    """Per-step scalars held for the writer (`SummaryLogger.scalar_series`)."""

    split: str
    tags: tuple[str, ...]
    steps: np.ndarray
    columns: tuple[np.ndarray, ...]
    wall_time: float


class _HeldRecords(NamedTuple):
    """Events held for the writer: `build()` gives them serialized."""

    split: str
    build: Callable[[], list[bytes]]


class BackgroundWriter:
    """One daemon thread running submitted writes in order.

    Every submitted write has a future. A write that raises stops nothing by
    itself: its future holds the error, which is also re-raised in the
    caller's thread at the next `submit` or `wait`, so a full disk still ends
    the run with its own message. Writes queued behind a failed one are not
    run: their futures fail with that same error, so no caller waits forever
    on a measurement the thread skipped.

    Submitted writes are held until `hand_over()` (or until anything waits
    for them: `wait`, a future's `result`, `stop`). Serializing events is
    Python work that holds the GIL; started while the training thread runs
    the actions between two compiled chunks, which need the GIL too, it
    delayed them (~0.8 ms a chunk for logreg, measured). The loop hands the
    writes over as the next compiled chunk starts: that call releases the
    GIL, and the thread writes beside it.
    """

    def __init__(self):
        self._queue: queue.Queue = queue.Queue()
        self._held: list = []
        self._held_lock = threading.Lock()
        self._error: BaseException | None = None
        # CPU seconds the thread spent writing: what logging takes from
        # training on a machine with few cores (the benchmarks show it).
        self.busy_seconds = 0.0
        self._thread = threading.Thread(
            target=self._run, name="summary-writer", daemon=True
        )
        self._thread.start()

    def _run(self) -> None:
        while True:
            batch = self._queue.get()
            try:
                if batch is None:
                    return
                started = time.thread_time()
                for work, future in batch:
                    if self._error is not None:
                        future.set_exception(self._error)
                        continue
                    try:
                        future.set_result(work())
                    except BaseException as err:  # re-raised in the caller's thread
                        self._error = err
                        future.set_exception(err)
                self.busy_seconds += time.thread_time() - started
            finally:
                self._queue.task_done()

    def _raise_pending(self) -> None:
        if self._error is not None:
            err, self._error = self._error, None
            raise err

    def submit(self, work: Callable[[], object]) -> concurrent.futures.Future:
        """Holds `work` until the next `hand_over`; the future holds what it
        returns or raises (asking for its result hands it over)."""
        self._raise_pending()
        future = _HeldWrite(self)
        with self._held_lock:
            self._held.append((work, future))
        return future

    def hand_over(self) -> None:
        """Starts the thread on every write held so far, in order (one
        batch: one wake of the thread for a chunk's writes)."""
        with self._held_lock:
            held, self._held = self._held, []
            if held:
                self._queue.put(held)

    def wait(self) -> None:
        """Returns once everything submitted so far has been written."""
        self.hand_over()
        self._queue.join()
        self._raise_pending()

    def stop(self) -> None:
        self.hand_over()
        self._queue.put(None)
        self._thread.join()


class _HeldWrite(concurrent.futures.Future):
    """A submitted write's future: waiting for it hands the held writes over,
    so no caller waits on a write the thread has not been given."""

    def __init__(self, writer: BackgroundWriter):
        super().__init__()
        self._writer = writer

    def result(self, timeout: float | None = None) -> object:
        self._writer.hand_over()
        return super().result(timeout)

    def exception(self, timeout: float | None = None) -> BaseException | None:
        self._writer.hand_over()
        return super().exception(timeout)


class SummaryLogger:
    """Writes scalars, histograms, graphs, images and text for one run.

    Writers are created lazily per split (`train`, `test`, `validation`, ...)
    under `run_dir/<split>/`. With `background`, writes run on a
    `BackgroundWriter` thread (see the module docstring).
    """

    def __init__(
        self,
        run_dir: pathlib.Path | str,
        enabled: bool = True,
        background: bool = False,
        flush_secs: float = 0.0,
    ):
        self._run_dir = pathlib.Path(run_dir)
        self._enabled = enabled
        self._flush_secs = flush_secs
        self._last_flush = time.monotonic()
        # Frequent summaries held by the caller's thread, in the order they
        # came, handed to the writer as one job: per-step scalars
        # (`_HeldSeries`, see `scalar_series`) and a histogram chunk's records
        # (`_HeldRecords`, see `bucketed_histograms`).
        self._held: list[_HeldSeries | _HeldRecords] = []
        self._held_since = 0.0
        self._held_steps = 0
        self._writers: dict[str, tf.summary.SummaryWriter] = {}
        self._record_files: dict[str, EventRecordFile] = {}
        # The files written since their last flush (touched by whichever
        # thread writes): a flush skips the others. A chunk of per-step
        # scalars writes one record file; flushing every writer of every split
        # at each progress line cost logreg's writer thread ~0.2 ms a chunk.
        self._unflushed: dict[int, object] = {}
        self._compiled: dict[tuple, Callable] = {}
        self._background = BackgroundWriter() if background and enabled else None

    def _write(self, work: Callable[[], object]) -> concurrent.futures.Future:
        """Runs `work` now, or queues it on the writer thread (behind the
        per-step scalars held so far); the future holds what it returned or
        raised."""
        if self._background is not None:
            self._submit_held()
            return self._background.submit(work)
        future: concurrent.futures.Future = concurrent.futures.Future()
        future.set_result(work())  # an error is raised here, in the caller
        return future

    def hand_over(self) -> None:
        """Starts the writer thread on the writes handed to it so far; the
        loop calls it as each compiled chunk starts (`BackgroundWriter`)."""
        if self._background is not None:
            self._background.hand_over()

    def writer(self, split: str) -> tf.summary.SummaryWriter:
        """The writer for `split`, created on first use."""
        if split not in self._writers:
            if self._enabled:
                try:
                    self._writers[split] = tf.summary.create_file_writer(
                        str(self._run_dir / split), max_queue=1000, flush_millis=60_000
                    )
                except Exception:  # a full disk: the new file may be empty
                    events.remove_empty(self._run_dir / split)
                    raise
            else:
                self._writers[split] = tf.summary.create_noop_writer()
        writer = self._writers[split]
        self._unflushed[id(writer)] = writer
        return writer

    def scalars(self, split: str, step: int, values: Mapping[str, float]) -> None:
        """One scalar per (tag, value) at `step`."""
        values = {tag: float(value) for tag, value in values.items()}

        def work() -> None:
            with self.writer(split).as_default():
                for tag, value in values.items():
                    tf.summary.scalar(tag, value, step=step)

        self._write(work)

    def scalar_series(
        self,
        split: str,
        first_step: int,
        values: Mapping[str, np.ndarray],
        every: int = 1,
    ) -> None:
        """Writes per-step arrays (from a multi-step call) at their own steps.

        `values[tag][i]` belongs to step `first_step + i`; only steps that are
        multiples of `every` are written, stamped with the time of this call.

        With a writer thread they are held here and handed over together
        once `flush_secs` passed since the first held one, with any other
        write, or with a flush: one job builds and writes a second of chunks
        (a logreg chunk's own job cost its writer ~0.5 ms beside 30 ms of
        training, 1.6%; most of it per job, not per step).
        """
        if every <= 0 or not self._enabled or not values:
            return
        length = len(next(iter(values.values())))
        steps = np.arange(first_step, first_step + length, dtype=np.int64)
        tags = tuple(values)
        # Copies: held past this call, they must not follow the caller's arrays.
        series = tuple(np.array(values[tag], np.float32) for tag in tags)
        if every > 1:
            keep = steps % every == 0
            if not keep.any():
                return
            steps, series = steps[keep], tuple(column[keep] for column in series)
        entry = _HeldSeries(split, tags, steps, series, time.time())
        if self._background is None:
            self._write(lambda: self._write_held([entry]))
            return
        self._hold(entry, len(steps))

    def _hold(self, entry: _HeldSeries | _HeldRecords, steps: int = 0) -> None:
        """Holds `entry` for the writer thread; hands every held one over
        once `flush_secs` passed since the first, or `MAX_HELD_STEPS` steps
        of scalars are held."""
        now = time.monotonic()
        if not self._held:
            self._held_since = now
        self._held.append(entry)
        self._held_steps += steps
        if (
            now - self._held_since >= self._flush_secs
            or self._held_steps >= MAX_HELD_STEPS
        ):
            self._submit_held()

    def _submit_held(self) -> None:
        """Hands the held frequent summaries to the writer thread, one job."""
        if self._held:
            held, self._held, self._held_steps = self._held, [], 0
            self._background.submit(lambda: self._write_held(held))

    def _write_held(self, entries: list[_HeldSeries | _HeldRecords]) -> None:
        """Writes held entries in the order they came (so each split's events
        stay in step order), the scalars of each (split, tags) built as one
        block (`scalar_event_records`). No compiled writer: a profiled
        one-step chunk keeps its step markers (the profiler takes a loop's
        iterations for the steps)."""
        groups: dict[tuple, list[_HeldSeries]] = {}
        for entry in entries:
            if isinstance(entry, _HeldSeries):
                groups.setdefault((entry.split, entry.tags), []).append(entry)
        built = {}
        for (split, tags), group in groups.items():
            records = scalar_event_records(
                tags,
                np.concatenate([e.steps for e in group]),
                tuple(
                    np.concatenate(c)
                    for c in zip(*(e.columns for e in group), strict=True)
                ),
                np.repeat([e.wall_time for e in group], [len(e.steps) for e in group]),
            )
            built[split, tags] = iter(records)
        by_split: dict[str, list[bytes]] = {}
        for entry in entries:
            if isinstance(entry, _HeldSeries):
                ordered = itertools.islice(
                    built[entry.split, entry.tags], len(entry.steps)
                )
            else:
                ordered = entry.build()
            by_split.setdefault(entry.split, []).extend(ordered)
        for split, records in by_split.items():
            self._record_file(split).write(records)

    def _wait(self) -> None:
        """Returns once everything handed to the writer thread, and the
        per-step scalars held, are written."""
        self._submit_held()
        self._background.wait()

    @property
    def writer_busy_seconds(self) -> float:
        """CPU seconds the background writer thread has spent writing (0
        without one)."""
        return self._background.busy_seconds if self._background else 0.0

    def _record_file(self, split: str) -> EventRecordFile:
        if split not in self._record_files:
            self._record_files[split] = EventRecordFile(self._run_dir / split)
        records = self._record_files[split]
        self._unflushed[id(records)] = records
        return records

    def _flush_written(self) -> None:
        """Flushes every file written since its last flush (`tf.summary`
        writers and record files alike)."""
        written, self._unflushed = self._unflushed, {}
        for w in written.values():
            w.flush()

    def histograms(
        self, split: str, step: int, named_tensors: Iterable[tuple[str, tf.Tensor]]
    ) -> None:
        """One histogram per named tensor (weights, gradients) at `step`,
        bucketed by the writer thread in one compiled call."""
        if not self._enabled:
            return
        named = list(named_tensors)
        if not named:
            return
        names = tuple(name for name, _ in named)
        # Read variables now: the thread must see this step's values.
        tensors = tuple(tf.convert_to_tensor(tensor) for _, tensor in named)
        records = self._histogram_records(
            split, step, names, lambda: self._compiled_buckets(split, names)(tensors)
        )
        self._write(lambda: self._write_held([records]))

    def bucketed_histograms(
        self, split: str, step: int, names: Iterable[str], buckets: tf.Tensor
    ) -> None:
        """Writes `buckets`, `histogram_buckets_stacked`'s `[len(names),
        buckets, 3]` tensor (a histogram chunk's compiled call computes it),
        as one histogram per name at `step`.

        With a writer thread they are held with the per-step scalars and
        written in their job (`_hold`): handing the held scalars over at each
        histogram step made a logreg job of ~500 steps instead of a second's
        (~5,000), ~1.6 instead of ~1.0 us of the writer's CPU a step.
        """
        if not self._enabled:
            return
        records = self._histogram_records(split, step, tuple(names), lambda: buckets)
        if self._background is None:
            self._write(lambda: self._write_held([records]))
        else:
            self._hold(records)

    @staticmethod
    def _histogram_records(
        split: str, step: int, names: tuple[str, ...], buckets: Callable
    ) -> _HeldRecords:
        """The histogram events of `names` at `step` from `buckets()`
        (`[len(names), buckets, 3]`), built when the writer writes them."""
        wall_time = time.time()
        return _HeldRecords(
            split,
            lambda: tensor_event_records(
                step, wall_time, names, HISTOGRAM_METADATA, buckets().numpy()
            ),
        )

    def _compiled_buckets(self, split: str, tags: tuple[str, ...]) -> Callable:
        """A `tf.function` computing every histogram of a step at once.

        Eager ops cost ~0.3 ms each here; one compiled call buckets every
        tensor. Cached per (split, tags), so each traces once.
        """
        key = ("histograms", split, tags)
        if key not in self._compiled:
            # A Python loop over fixed tensors: nothing for AutoGraph to convert.
            self._compiled[key] = tf.function(
                lambda tensors: histogram_buckets_stacked(list(tensors)),
                autograph=False,
            )
        return self._compiled[key]

    def tracing_counts(self) -> dict[str, int]:
        """How often each compiled writer traced (1 each when nothing retraces)."""
        return {
            f"{kind}:{split}:{tags[0]}": fn.experimental_get_tracing_count()
            for (kind, split, tags), fn in self._compiled.items()
        }

    def trace_graph(self, split: str, fn: Callable, *args) -> object:
        """Calls the `tf.function` `fn(*args)` and writes its op graph as the run graph.

        The run-level graph (a `graph_def` event, `tf.summary.graph`) is what
        the Graphs dashboard opens on; an op graph written by `trace_export`
        lives under a tag beside the Keras conceptual graph instead, and the
        dashboard opening on the conceptual tag with "op graph" selected
        shows an error. A train loop from `steps.make_train_loop` gives the
        graph of one step (`fn.step_graph`), which is the model's, rather
        than the loop around it. Returns `fn`'s result.
        """
        result = fn(*args)
        if self._enabled:
            if self._background is not None:
                self._wait()
            step_graph = getattr(fn, "step_graph", None)
            if step_graph is not None:
                graph = step_graph(args[0])
            else:
                graph = fn.get_concrete_function(*args).graph
            with self.writer(split).as_default():
                tf.summary.graph(graph)
        return result

    def keras_model(self, split: str, model: keras.Model) -> None:
        """Writes the Keras conceptual graph (Graphs tab, "Keras" tag)."""
        metadata = summary_pb2.SummaryMetadata()
        metadata.plugin_data.plugin_name = KERAS_MODEL_PLUGIN
        metadata.plugin_data.content = b"1"
        model_json = model.to_json()

        def work() -> None:
            with self.writer(split).as_default():
                tf.summary.write(
                    tag="keras",
                    tensor=tf.constant(model_json),
                    step=0,
                    metadata=metadata,
                )

        self._write(work)

    def image_grid(self, split: str, step: int, tag: str, images: np.ndarray) -> None:
        """Tiles [N, 28, 28] uint8 images into one grid image."""
        grid = tile_images(images)[np.newaxis, ..., np.newaxis]

        def work() -> None:
            with self.writer(split).as_default():
                tf.summary.image(tag, grid, step=step)

        self._write(work)

    def text(self, split: str, step: int, tag: str, markdown: str) -> None:
        """Text for TensorBoard's Text tab (rendered as markdown)."""

        def work() -> None:
            with self.writer(split).as_default():
                tf.summary.text(tag, markdown, step=step)

        self._write(work)

    def image(self, split: str, step: int, tag: str, image: np.ndarray) -> None:
        """One [H, W] or [H, W, 3] uint8 image (a rendered plot, a labelled grid)."""
        image = np.asarray(image)
        if image.ndim == 2:
            image = image[..., np.newaxis]

        def work() -> None:
            with self.writer(split).as_default():
                tf.summary.image(tag, image[np.newaxis], step=step)

        self._write(work)

    def pr_curve(
        self, split: str, step: int, tag: str, curve: Mapping[str, np.ndarray]
    ) -> None:
        """A PR curve for TensorBoard's PR Curves tab, from precomputed counts.

        The pr_curve plugin has no TF2 summary op: `raw_data_pb` builds its
        tensor and metadata, `tf.summary.write` stores them. `curve` holds
        `tp`, `fp`, `tn`, `fn`, `precision` and `recall`, one value per
        threshold, thresholds evenly spaced over [0, 1].
        """
        proto = pr_summary.raw_data_pb(
            tag,
            true_positive_counts=curve["tp"],
            false_positive_counts=curve["fp"],
            true_negative_counts=curve["tn"],
            false_negative_counts=curve["fn"],
            precision=curve["precision"],
            recall=curve["recall"],
            num_thresholds=len(curve["tp"]),
        ).value[0]

        def work() -> None:
            with self.writer(split).as_default():
                tf.summary.write(
                    tag,
                    tf.make_ndarray(proto.tensor),
                    step=step,
                    metadata=proto.metadata.SerializeToString(),
                )

        self._write(work)

    def flush(self, wait: bool = True) -> None:
        """Flushes to disk every writer written since its last flush.

        With a background thread and `wait=False` (a progress line) the
        flush is queued behind the writes so far and this returns at once;
        it is skipped when the last one was queued less than `flush_secs`
        ago (progress lines many times a second; what was written reaches
        the disk with a later one, a checkpoint's or the end's).
        """
        if self._background is None:
            self._flush_written()
            return
        if wait:
            self._wait()
            self._flush_written()
        elif time.monotonic() - self._last_flush < self._flush_secs:
            return
        else:
            self._write(self._flush_written)
        self._last_flush = time.monotonic()

    def after_flush(self, measure: Callable[[], object]) -> concurrent.futures.Future:
        """Flushes the files behind the writes handed over so far, then calls
        `measure` (a stat of the event files, say) and returns its future.

        Without a background thread this happens now. With one, the caller
        goes on and reads the result later: what `measure` sees is exactly
        what was written before this call, however the threads interleave.
        """

        def work() -> object:
            self._flush_written()
            return measure()

        return self._write(work)

    def close(self) -> None:
        """Writes what is queued, then flushes and closes every writer (all of
        them, even if one fails).

        A writer that could not write (a full disk) may leave an empty event
        file; those are removed, then the first error is raised.
        """
        first_error = None
        if self._background is not None:
            try:
                self._wait()
            except Exception as err:  # TensorFlow's errors; re-raised below
                first_error = err
            finally:
                self._background.stop()
                self._background = None
        for split, w in [*self._writers.items(), *self._record_files.items()]:
            try:
                w.close()
            except Exception as err:  # TensorFlow's errors; re-raised below
                first_error = first_error or err
                events.remove_empty(self._run_dir / split)
        self._writers.clear()
        self._record_files.clear()
        if first_error is not None:
            raise first_error

    def __enter__(self) -> SummaryLogger:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def tile_images(images: np.ndarray, columns: int = 8) -> np.ndarray:
    """Arranges [N, H, W] images in a grid with 1-pixel gray borders."""
    images = np.asarray(images)
    if images.ndim == 4:
        images = images[..., 0]
    n, h, w = images.shape
    columns = min(columns, n)
    rows = -(-n // columns)
    grid = np.full((rows * (h + 1) + 1, columns * (w + 1) + 1), 128, images.dtype)
    for i, image in enumerate(images):
        r, c = divmod(i, columns)
        grid[
            1 + r * (h + 1) : 1 + r * (h + 1) + h, 1 + c * (w + 1) : 1 + c * (w + 1) + w
        ] = image
    return grid


def variable_name(variable: tf.Variable) -> str:
    """A stable, readable tag for a Keras variable, e.g. `conv_1/kernel`."""
    path = getattr(variable, "path", None) or variable.name
    return path.split(":")[0]


def histogram_buckets(
    data: tf.Tensor, bucket_count: int = HISTOGRAM_BUCKETS
) -> tf.Tensor:
    """TensorBoard's histogram tensor, `[bucket_count, 3]` (left, right, count).

    Same buckets as `tf.summary.histogram` (see `histogram_buckets_many`).
    """
    return histogram_buckets_many([data], bucket_count)[0]


def histogram_buckets_many(
    tensors: list[tf.Tensor], bucket_count: int = HISTOGRAM_BUCKETS
) -> list[tf.Tensor]:
    """One `[bucket_count, 3]` histogram tensor (left, right, count) per
    tensor: `histogram_buckets_stacked`, unstacked."""
    return tf.unstack(histogram_buckets_stacked(tensors, bucket_count), len(tensors))


def histogram_buckets_stacked(
    tensors: list[tf.Tensor], bucket_count: int = HISTOGRAM_BUCKETS
) -> tf.Tensor:
    """The `[len(tensors), bucket_count, 3]` histograms (left, right, count)
    of `tensors`, one tensor: a compiled call returns one output, not one
    per tensor.

    Same buckets as `tf.summary.histogram` (equal widths from min to max, the
    max in the last bucket, one value -> all edges at it, counts in the last
    bucket; an empty tensor's rows are zeros), counted with one `bincount`
    over all the tensors at once instead of its one-hot `[N, 30]` float64
    matrix each: a 590k-weight kernel needs no 140 MB temporary, and an
    11-layer MLP's 44 weights and gradients cost ~20 ops instead of ~700
    (per-tensor ops made writing them slower than training the 100 steps
    between them, benchmarks.profile). Shapes must be static (weights and
    gradients always are; the compiled writer traces with concrete shapes).
    """
    flat = [tf.cast(tf.reshape(t, [-1]), tf.float64) for t in tensors]
    sizes = [int(f.shape[0]) for f in flat]
    filled = [i for i, n in enumerate(sizes) if n > 0]
    if not filled:
        return tf.zeros([len(flat), bucket_count, 3], tf.float64)
    k = len(filled)
    data = tf.concat([flat[i] for i in filled], 0)
    segment = tf.repeat(tf.range(k), [sizes[i] for i in filled])
    size = tf.constant([float(sizes[i]) for i in filled], tf.float64)
    low = tf.math.segment_min(data, segment)
    high = tf.math.segment_max(data, segment)
    span = high - low
    width = tf.where(span > 0, span / bucket_count, 1.0)
    index = tf.cast(
        tf.floor((data - tf.gather(low, segment)) / tf.gather(width, segment)),
        tf.int32,
    )
    # Non-finite values (a diverging run's weights) fall into the edge
    # buckets instead of making `bincount` fail; the loop's finiteness check
    # ends such a run with its own message.
    index = tf.clip_by_value(index, 0, bucket_count - 1) + segment * bucket_count
    counts = tf.reshape(
        tf.math.bincount(
            index,
            minlength=k * bucket_count,
            maxlength=k * bucket_count,
            dtype=tf.float64,
        ),
        [k, bucket_count],
    )
    steps = tf.range(bucket_count + 1, dtype=tf.float64) / bucket_count
    edges = low[:, None] + span[:, None] * steps[None, :]
    edges = tf.concat([edges[:, :-1], high[:, None]], 1)
    single = tf.tile(high[:, None], [1, bucket_count])
    single_counts = tf.concat(
        [tf.zeros([k, bucket_count - 1], tf.float64), size[:, None]], 1
    )
    stacked = tf.where(
        (span > 0)[:, None, None],
        tf.stack([edges[:, :-1], edges[:, 1:], counts], axis=2),
        tf.stack([single, single, single_counts], axis=2),
    )
    if k == len(flat):
        return stacked
    return tf.scatter_nd([[i] for i in filled], stacked, [len(flat), bucket_count, 3])
