"""Seed bands in TensorBoard: each variant's spread over its repeats, per step.

A sweep with repeats trains every variant (the same flags) with several
seeds. TensorBoard draws one curve per run, so a variant's spread is left to
the eye. `update(experiment_dir)` reads every completed run of the sweep
(`run.json` says `completed`) with TensorBoard's loader, groups them into
variants (`pipeline.variants`, as `pipeline-compare` does) and writes,
for each variant, a run `seed_bands/<variant>/` with the tags

  test/accuracy/mean, test/accuracy/mean_minus_std, test/accuracy/mean_plus_std,
  test/accuracy/min, test/accuracy/max, test/accuracy/seeds (and test/loss/...)

at every step all of the variant's seeds logged (sample std; 0 for one seed),
plus a Custom Scalars layout (in `seed_bands/`) with margin charts: each
variant's mean as a line inside its mean +/- std band, and inside its
min..max band, side by side in one chart.

The sweep calls `update` after each finished run, so the bands follow the
sweep as it grows; a lock file lets several sweep workers share a sweep.
Each call rewrites a variant's series into a fresh event file that starts
with a `SessionLog.START` at step 0 (TensorBoard then drops the points it had
loaded before) and deletes the older files.

No TensorFlow: the sweep driver imports this.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import math
import pathlib
import time
from collections.abc import Sequence

from tensorboard.compat.proto import event_pb2, summary_pb2
from tensorboard.plugins.custom_scalar import layout_pb2
from tensorboard.plugins.custom_scalar import metadata as layout_metadata
from tensorboard.plugins.scalar import metadata as scalar_metadata
from tensorboard.util import tensor_util

from pipeline import variants as variants_lib
from pipeline.tensorboard import events

BANDS_DIR = "seed_bands"
SPLIT = "test"
METRICS = ("accuracy", "loss")
STATS = ("mean", "mean_minus_std", "mean_plus_std", "min", "max", "seeds")
RECORD_NAME = "run.json"


def tag(metric: str, stat: str) -> str:
    """The tag of one aggregate series, e.g. `test/accuracy/mean`."""
    return f"{SPLIT}/{metric}/{stat}"


def aggregate(series: Sequence[dict[int, float]]) -> dict[int, dict[str, float]]:
    """Per step logged by every seed: mean, mean -/+ sample std, min, max, seeds."""
    if not series:
        return {}
    steps = sorted(set.intersection(*(set(s) for s in series)))
    out = {}
    for step in steps:
        values = [s[step] for s in series]
        mean, std = variants_lib.mean_and_std(values)
        out[step] = {
            "mean": mean,
            "mean_minus_std": mean - std,
            "mean_plus_std": mean + std,
            "min": min(values),
            "max": max(values),
            "seeds": float(len(values)),
        }
    return out


def _read_series(run: pathlib.Path) -> dict[str, dict[int, float]]:
    return {
        metric: {point.step: point.value for point in points}
        for metric, points in events.read_scalars(run / SPLIT, METRICS).items()
    }


def _completed_runs(experiment: pathlib.Path) -> list[tuple[pathlib.Path, dict]]:
    runs = []
    for record_path in sorted(experiment.glob(f"*/{RECORD_NAME}")):
        try:
            record = json.loads(record_path.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        if record.get("status") == "completed":
            runs.append((record_path.parent, record))
    return runs


def _variant_key(record: dict) -> str:
    dataset = record.get("dataset", {}).get("fingerprint", "")
    return variants_lib.variant_key(record.get("config", {}), dataset)


def variants(experiment: pathlib.Path) -> dict[str, list[pathlib.Path]]:
    """Completed runs of the sweep grouped by variant, labelled by run name."""
    groups: dict[str, list[pathlib.Path]] = {}
    for run, record in _completed_runs(experiment):
        groups.setdefault(_variant_key(record), []).append(run)
    labelled = {}
    for runs in groups.values():
        label = variants_lib.variant_label(runs[0].name)
        n = 2
        while label in labelled:  # names that do not tell variants apart
            label = f"{variants_lib.variant_label(runs[0].name)}-{n}"
            n += 1
        labelled[label] = runs
    return labelled


def layout() -> layout_pb2.Layout:
    """Custom Scalars: mean inside its std band and inside its min..max band."""
    charts = []
    for metric in METRICS:
        for lower, upper, what in (
            ("mean_minus_std", "mean_plus_std", "mean +/- std"),
            ("min", "max", "min to max"),
        ):
            charts.append(
                layout_pb2.Chart(
                    title=f"{SPLIT} {metric}: {what} over seeds",
                    margin=layout_pb2.MarginChartContent(
                        series=[
                            layout_pb2.MarginChartContent.Series(
                                value=tag(metric, "mean"),
                                lower=tag(metric, lower),
                                upper=tag(metric, upper),
                            )
                        ]
                    ),
                )
            )
    category = layout_pb2.Category(title="seed bands", chart=charts)
    return layout_pb2.Layout(category=[category])


def _scalar_value(name: str, value: float) -> summary_pb2.Summary.Value:
    return summary_pb2.Summary.Value(
        tag=name,
        metadata=scalar_metadata.create_summary_metadata(
            display_name=None, description=None
        ),
        tensor=tensor_util.make_tensor_proto(value, dtype="float32"),
    )


def _rewrite(directory: pathlib.Path, series: list[event_pb2.Event]) -> None:
    """Writes `series` as the directory's only event file (after a START)."""
    before = set(events.event_files(directory))
    start = events.session_start_event(0)
    written = events.write_event_file(directory, [start, *series], ".seed_bands")
    for old in before - {written}:
        old.unlink(missing_ok=True)


def _variant_events(runs: list[pathlib.Path]) -> list[event_pb2.Event]:
    per_run = [_read_series(run) for run in runs]
    now = time.time()
    out = []
    for metric in METRICS:
        series = [s[metric] for s in per_run if metric in s]
        if len(series) < len(runs):
            continue  # a run without this metric: no band
        for step, stats in aggregate(series).items():
            values = [
                _scalar_value(tag(metric, stat), stats[stat])
                for stat in STATS
                if math.isfinite(stats[stat])
            ]
            out.append(
                event_pb2.Event(
                    wall_time=now, step=step, summary=summary_pb2.Summary(value=values)
                )
            )
    return out


def update(experiment_dir: str | pathlib.Path) -> dict[str, int]:
    """Rewrites the seed bands of every variant of the sweep in `experiment_dir`.

    Call after each finished run. Returns {variant label: seeds}. Writes
    nothing until some variant has two completed seeds: a sweep without
    repeats has no band to draw, and its directory then holds only its runs.
    """
    experiment = pathlib.Path(experiment_dir)
    with _locked(experiment):
        return _update(experiment)


@contextlib.contextmanager
def _locked(experiment: pathlib.Path):
    """One writer at a time: sweep workers (threads, processes) share the files."""
    with open(experiment / f".{BANDS_DIR}.lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _update(experiment: pathlib.Path) -> dict[str, int]:
    groups = variants(experiment)
    if max(map(len, groups.values()), default=0) < 2:
        return {}
    bands = experiment / BANDS_DIR
    for label, runs in groups.items():
        _rewrite(bands / label, _variant_events(runs))
    config = summary_pb2.Summary()
    config.value.add(
        tag=layout_metadata.CONFIG_SUMMARY_TAG,
        metadata=layout_metadata.create_summary_metadata(),
        tensor=tensor_util.make_tensor_proto(
            layout().SerializeToString(), dtype="string"
        ),
    )
    _rewrite(bands, [event_pb2.Event(wall_time=time.time(), step=0, summary=config)])
    return {label: len(runs) for label, runs in groups.items()}
