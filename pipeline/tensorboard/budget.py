"""Event-file size: a budget that thins histograms out, and bytes per plugin.

Users report event files of many GB from long runs. Per-step scalars grow
linearly and are the point of the pipeline, so they are never thinned;
histograms (and any other periodic, bulky summary) are written at an interval
that doubles whenever the projected size of the run would exceed the budget.
The first and last step always get one, so the Histograms tab still spans
the whole run.
"""

from __future__ import annotations

import collections
import os
import pathlib
from collections.abc import Iterable

from tensorboard.backend.event_processing import event_file_loader
from tensorboard.compat.proto import event_pb2

from pipeline.cadence import is_due
from pipeline.tensorboard import events

# TFRecord framing around each event: length (8) + two masked CRCs (4 + 4).
RECORD_OVERHEAD = 16
# Histogram writes between two measurements of the event files on disk.
MEASURE_EVERY = 8


# Event bytes above which TensorBoard's Python loaders are better off with
# TensorFlow's record reader: it reads ~0.1 s/MB faster than TensorBoard's
# own (pure-Python CRC), and its import costs ~1.8 s more CPU (2.2 MB of
# logreg events: 0.40 s against 0.61 s with `EventAccumulator`; a TensorBoard
# server's start: 2.5-2.7 s against 0.8 s; 2-core AMD EPYC VM, 2026-12-07).
EVENT_BYTES_WORTH_TENSORFLOW = 20_000_000


def event_bytes(run_dir: str | os.PathLike) -> int:
    """Total size on disk of every event file under `run_dir` (a file gone
    since the search, as a run's empty files cleaned up, counts nothing)."""
    total = 0
    for path in events.all_event_files(run_dir):
        try:
            total += path.stat().st_size
        except FileNotFoundError:
            continue
    return total


def tensorflow_reads_faster(directories: Iterable[str | os.PathLike]) -> bool:
    """True when the event files under `directories` hold more than
    `EVENT_BYTES_WORTH_TENSORFLOW`: TensorBoard's loaders should read them
    with TensorFlow's record reader (else `events.read_without_tensorflow`)."""
    return sum(map(event_bytes, directories)) > EVENT_BYTES_WORTH_TENSORFLOW


def disk_bytes(
    run_dir: str | os.PathLike, checkpoint_dir: str | os.PathLike
) -> dict[str, int]:
    """Bytes on disk under `run_dir`: {events, checkpoints, artifacts}.

    The whole run directory, so a run's cost beside its model shows: event
    files anywhere, everything under `checkpoint_dir`, and the rest (the
    Projector's files, run.json, the model summary) as artifacts. Hidden
    files (the space held back for the final record, staging copies) go
    when the run ends and are left out.
    """
    run_dir, checkpoint_dir = pathlib.Path(run_dir), pathlib.Path(checkpoint_dir)
    totals = {"events": 0, "checkpoints": 0, "artifacts": 0}
    for path in run_dir.rglob("*"):
        if path.name.startswith(".") or not path.is_file() or path.is_symlink():
            continue
        if events.is_event_file(path):
            part = "events"
        elif path.is_relative_to(checkpoint_dir):
            part = "checkpoints"
        else:
            part = "artifacts"
        totals[part] += path.stat().st_size
    return totals


def histogram_event_bytes(tag: str, buckets: int = 30) -> int:
    """Bytes one histogram event takes on disk (30 buckets: ~810 measured).

    The `[buckets, 3]` float64 tensor, plus the tag, plugin metadata, step,
    wall time and record framing (~70 bytes).
    """
    return buckets * 3 * 8 + len(tag) + 70


def thinned_interval(
    every: int,
    step: int,
    total_steps: int,
    spent_bytes: int,
    bytes_per_step: float,
    bytes_per_write: int,
    budget_bytes: int,
) -> int:
    """The smallest `every * 2**k` whose projected run size fits the budget.

    Projection: what is on disk now, plus the steady per-step bytes (scalars,
    evaluations) for the remaining steps, plus one write per interval and one
    at the last step. A budget of 0 means no limit. If even the longest
    interval cannot fit (the scalars alone overflow), the interval grows to the
    remaining steps: one last write.

    Args:
      every: the configured interval (> 0).
      step: the step just written.
      total_steps: the run's last step.
      spent_bytes: event bytes on disk after the write at `step`.
      bytes_per_step: measured bytes per step from everything else.
      bytes_per_write: measured bytes of one write.
      budget_bytes: the budget (0: unlimited).

    Returns:
      The interval to use from `step` on.
    """
    remaining = total_steps - step
    if budget_bytes <= 0 or remaining <= 0:
        return every
    interval = every
    while True:
        writes = remaining // interval + 1
        projected = spent_bytes + remaining * bytes_per_step + writes * bytes_per_write
        if projected <= budget_bytes or interval >= remaining:
            return interval
        interval *= 2


class ThinningSchedule:
    """When a periodic, bulky summary is due: step 0, every N (thinning), the end.

    The loop ends its chunks on every multiple of the base interval (on every
    worker alike), asks `due(step)` there, and calls `wrote(step, write_bytes)`
    after each write and, when `wants_measurement()`, `measure(step,
    spent_bytes)` so the interval can double when the budget is at risk
    (`record` does both). Writes stay on multiples of the
    current interval. `next_stop(step)` says where the next write falls.
    """

    def __init__(self, every: int, total_steps: int, budget_bytes: int):
        self.every = every
        self.interval = every
        self.total_steps = total_steps
        self.budget_bytes = budget_bytes
        self._start: tuple[int, int] | None = None  # (step, bytes) of the baseline
        self._write_bytes_total = 0
        self._writes = 0
        self._writes_since_start = 0
        self._writes_since_measure = 0
        self._last_write = 0
        self._next = 0 if every > 0 else None

    @property
    def enabled(self) -> bool:
        """False when the interval is 0 (never write)."""
        return self.every > 0

    def due(self, step: int) -> bool:
        """True if a write falls on `step` (also the first due step after a resume)."""
        # The interval only widens; the rule is the loop's (`cadence.is_due`).
        return self.enabled and is_due(
            step, self.interval, self.total_steps, not_before=self._next
        )

    def next_stop(self, step: int) -> int | None:
        """The next step after `step` that is due (None if none)."""
        if not self.enabled:
            return None
        if self._next is not None and self._next > step:
            return min(self._next, self.total_steps)
        return self.total_steps if self.total_steps > step else None

    def record(self, step: int, spent_bytes: int, write_bytes: int) -> None:
        """Notes a write at `step` and re-plans from `spent_bytes` on disk."""
        self.wrote(step, write_bytes)
        self.measure(step, spent_bytes)

    def wrote(self, step: int, write_bytes: int) -> None:
        """Notes a write of `write_bytes` at `step` (no disk access)."""
        self._writes += 1
        self._write_bytes_total += write_bytes
        if self._start is not None:
            self._writes_since_start += 1
        self._writes_since_measure += 1
        self._last_write = step
        self._next = (step // self.interval + 1) * self.interval

    def wants_measurement(self) -> bool:
        """Whether the last write should be followed by `measure`.

        Measuring needs a flush and a stat of every event file, so it happens
        at the first write after step 0 (the baseline) and then every
        `MEASURE_EVERY` writes, never when there is no budget: between two
        measurements at most that many writes go out at the old interval.
        """
        if self.budget_bytes <= 0 or self._last_write <= 0:
            return False
        return self._start is None or self._writes_since_measure >= MEASURE_EVERY

    def measure(self, step: int, spent_bytes: int) -> None:
        """Re-plans the interval from the bytes on disk after the write at `step`.

        The per-step rate of everything else is measured from the first write
        after step 0, so one-time events of the first chunk (the op graph can
        be megabytes) are not mistaken for a per-step cost.
        """
        self._writes_since_measure = 0
        per_write = self._write_bytes_total / max(self._writes, 1)
        if self._start is None:
            if step > 0:
                self._start = (step, spent_bytes)
            per_step = 0.0
        else:
            start_step, start_bytes = self._start
            other = spent_bytes - start_bytes - self._writes_since_start * per_write
            per_step = max(other, 0.0) / (step - start_step)
        self.interval = max(
            self.interval,
            thinned_interval(
                self.every,
                step,
                self.total_steps,
                spent_bytes,
                per_step,
                round(per_write),
                self.budget_bytes,
            ),
        )
        self._next = (step // self.interval + 1) * self.interval


def bytes_per_plugin(run_dir: str | os.PathLike) -> dict[str, int]:
    """Event-file bytes under `run_dir` by TensorBoard plugin, read back from disk.

    Each record's size (with its framing) is split over the summary values it
    holds, by their serialized sizes. A tag's plugin comes from its first
    value's metadata (TensorBoard writes it there). Events without summaries
    count as `graph` (GraphDef), `run_metadata`, or `other` (file version,
    session logs).
    """
    totals: collections.Counter[str] = collections.Counter()
    for path in events.all_event_files(run_dir):
        plugin_of_tag: dict[str, str] = {}
        loader = event_file_loader.RawEventFileLoader(str(path))
        for record in loader.Load():
            size = len(record) + RECORD_OVERHEAD
            event = event_pb2.Event.FromString(record)
            values = event.summary.value if event.HasField("summary") else []
            if not values:
                if event.HasField("graph_def"):
                    totals["graph"] += size
                elif event.HasField("tagged_run_metadata"):
                    totals["run_metadata"] += size
                else:
                    totals["other"] += size
                continue
            weights = [max(v.ByteSize(), 1) for v in values]
            for value, weight in zip(values, weights, strict=True):
                plugin = value.metadata.plugin_data.plugin_name
                if plugin:
                    plugin_of_tag.setdefault(value.tag, plugin)
                else:
                    plugin = plugin_of_tag.get(value.tag, "unknown")
                totals[plugin] += round(size * weight / sum(weights))
    return dict(totals.most_common())


def describe(plugin_bytes: dict[str, int]) -> str:
    """'1.2 MB (scalars 1.0 MB, histograms 0.2 MB)'."""
    parts = ", ".join(f"{k} {format_bytes(v)}" for k, v in plugin_bytes.items())
    return f"{format_bytes(sum(plugin_bytes.values()))} ({parts})"


def format_bytes(n: float) -> str:
    """1234567 -> '1.2 MB' (decimal units, as `ls -h --si` and the budget flag)."""
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    raise AssertionError("unreachable")
