"""HParams dashboard records: the experiment config, each run's session, best metrics.

TensorBoard's HParams plugin shows a run (a "session") with its metric values
only when an experiment config (`hparams_config`) sits at the experiment root
and each run has its own directory under it. Its metric values are the *last*
value of a scalar tag in `<run>/<group>`, so the loop also logs running bests
(`best/accuracy`, `best/loss`) into the test writer.

The config's domains come from the training flags' declaration in
`pipeline.config` (enums -> discrete domains, flags with both bounds ->
intervals). Which flags it lists and marks `differs` comes from the runs
under the config's directory, at any depth (a logdir holding single runs and
sweeps is one table): only flags that apply to some run's model
(`pipeline.variants`), and `differs` only where their values really vary.
TensorBoard sorts hparams by `differs`, then by name, and the dashboard checks
only the first five, so this decides the visible columns. When TensorBoard
serves a directory holding several configs (a logdir and a sweep inside it),
the served root's wins (checked with both loaders), so each directory's
config describes everything under it.

Neither a run's start nor its end reads another run, so neither grows with
the logdir. The start only makes sure a config exists; the end adds the run
(`add_run`) to the configs of its logdir and of every ancestor holding one:
each config file also carries the runs it was made from (`ConfigFile`), so
the marks follow from those and the new run alone. Where the config is read
it is rebuilt from every run (`write_experiment_config`): `pipeline-board`'s
start for the directory it serves, a sweep's start for the sweep.

Each run's session carries its variant's defining flags and a group name
shared by its repeats (`EXPERIMENT/VARIANT`, the run name without its
`seed=N`): TensorBoard shows a session group as one row, its metrics averaged.

Everything here writes raw `Event` protos through `tensorboard.events`, so
the sweep driver can mark an interrupted run as failed without importing
TensorFlow.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import math
import os
import pathlib
import time
from collections.abc import Iterable, Mapping

from tensorboard.compat.proto import event_pb2, summary_pb2
from tensorboard.plugins.hparams import api_pb2, metadata, plugin_data_pb2

# `tensorboard.plugins.hparams.api` re-exports these names from summary_v2, but
# it also imports the Keras callback and with it TensorFlow (5 s) -- which the
# sweep driver and the tests of this module do not need.
from tensorboard.plugins.hparams import summary_v2 as hp
from tensorboard.plugins.text import summary_v2 as text_summary

from pipeline import config as config_lib
from pipeline import variants as variants_lib
from pipeline.runs import rundir
from pipeline.tensorboard import events

# The experiment config's file name; "tfevents" makes it an event file to TensorBoard.
CONFIG_FILENAME = events.FILE_PREFIX + "hparams_config"
# The key of the runs a config was made from, in its `log_message` event.
RUNS_KEY = "pipeline_hparams_runs"
# The dashboard checks the first five hparams (tensorflow/tensorboard#4770).
VISIBLE_HPARAMS = 5
STATUS_TAG = "run_status"
METRICS = (
    hp.Metric("accuracy", group="test", display_name="test accuracy"),
    hp.Metric("loss", group="test", display_name="test loss"),
    hp.Metric("best/accuracy", group="test", display_name="best test accuracy"),
    hp.Metric("best/loss", group="test", display_name="best test loss"),
    hp.Metric("accuracy", group="train", display_name="train accuracy"),
    hp.Metric("loss", group="train", display_name="train loss"),
    hp.Metric("accuracy", group="validation", display_name="validation accuracy"),
    hp.Metric("loss", group="validation", display_name="validation loss"),
)


class _Typed(hp.Domain):
    """A type without a domain: an unbounded number or a free-form string.

    `hp.HParam` without a domain leaves the type unset, and the dashboard then
    cannot offer a numeric range filter for e.g. `learning_rate`.
    """

    def __init__(self, dtype: type):
        self._dtype = dtype

    @property
    def dtype(self) -> type:
        return self._dtype

    def sample_uniform(self, rng=None):
        raise NotImplementedError("an unbounded domain cannot be sampled")

    def update_hparam_info(self, hparam_info: api_pb2.HParamInfo) -> None:
        hparam_info.type = {
            float: api_pb2.DATA_TYPE_FLOAT64,
            bool: api_pb2.DATA_TYPE_BOOL,
            str: api_pb2.DATA_TYPE_STRING,
        }[self._dtype]


def _domain(field: config_lib.Field) -> hp.Domain:
    option = field.option
    if field.kind == "enum":
        return hp.Discrete(list(option.choices))
    if field.kind == "boolean":
        return hp.Discrete([False, True])
    if field.kind in ("integer", "float"):
        if option.lower is not None and option.upper is not None:
            if field.kind == "integer":
                return hp.IntInterval(int(option.lower), int(option.upper))
            return hp.RealInterval(float(option.lower), float(option.upper))
        return _Typed(float)
    return _Typed(str)


def hparam_flags(models: Iterable[str] = config_lib.MODELS) -> list[hp.HParam]:
    """One `hp.HParam` per HParams column of `models`, from its declaration:
    the flags defining a variant, and the run's tags (a column to filter by,
    `option(column=True)`, that defines no variant).

    Not the seed: a variant's repeats are one session group (one row, its
    metrics averaged), and a group shows only what its sessions share. Not a
    flag none of `models` uses (an MLP-only logdir has no conv columns).
    """
    applicable = set().union(*(variants_lib.applicable_fields(m) for m in models))
    return [
        hp.HParam(field.name, _domain(field), description=field.description)
        for field in config_lib.FIELDS
        if field.option.hparams_column
        and field.name not in variants_lib.REPEAT_FIELDS
        and field.name in applicable
    ]


def experiment_pb(
    differing: Iterable[str] = (), models: Iterable[str] = config_lib.MODELS
) -> api_pb2.Experiment:
    """The experiment proto this pipeline writes (time left unset).

    Args:
      differing: Flags whose values differ between the experiment's runs. They
        are marked `differs`, which the dashboard lists first (it sorts by
        `differs`, then by name, and shows only the first few columns).
      models: The model families of the experiment's runs: only flags that
        apply to one of them are listed.
    """
    differing = set(differing)
    summary = hp.hparams_config_pb(
        hparam_flags(models), list(METRICS), time_created_secs=0
    )
    experiment = metadata.parse_experiment_plugin_data(
        summary.value[0].metadata.plugin_data.content
    )
    for info in experiment.hparam_infos:
        info.differs = info.name in differing
    return experiment


# Fields shown as HParams columns without defining a variant (the run's tags).
COLUMN_ONLY = tuple(
    f.name for f in config_lib.FIELDS if f.option.hparams_column and not f.option.hparam
)


def differing_columns(configs: Iterable[dict]) -> set[str]:
    """`COLUMN_ONLY` fields whose values differ between `configs` (tags)."""
    seen: dict[str, set[str]] = {name: set() for name in COLUMN_ONLY}
    for config in configs:
        for name in COLUMN_ONLY:
            seen[name].add(json.dumps(config.get(name) or [], sort_keys=True))
    return {name for name, values in seen.items() if len(values) > 1}


def marked_flags(
    by_directory: Mapping[str, list[dict]],
    given: Iterable[str] = (),
    marked_before: Iterable[str] = (),
) -> list[str]:
    """The flags to mark `differs`: at most `VISIBLE_HPARAMS`, most telling first.

    The dashboard checks only the first few hparams, sorted by `differs` and
    then by name, so marking every flag that varies can push the swept one
    out of view. First come the flags `given` (a sweep's axes), then those
    that vary inside one directory (a sweep's runs, or runs side by side),
    then those marked before, then those that vary only between directories;
    within each, the flags with more distinct values first.

    The `tag` column (`COLUMN_ONLY`) is marked like a flag where tags differ:
    with the flags varying inside a directory when runs side by side carry
    different tags, else with those varying only between directories; last
    in its tier (`most_telling` ranks a field that defines no variant after
    those that do), so tags never push a swept flag out of view.
    """
    groups = list(by_directory.values())
    configs = [c for cs in groups for c in cs]
    names = {h.name for h in hparam_flags()}
    tiers = (
        set(given),
        variants_lib.varying_within(groups).union(*map(differing_columns, groups)),
        set(marked_before),
        set(variants_lib.differing_fields(configs)) | differing_columns(configs),
    )
    marked: list[str] = []
    for tier in tiers:
        marked += variants_lib.most_telling((tier & names) - set(marked), groups)
    return marked[:VISIBLE_HPARAMS]


def session_hparams(config: config_lib.TrainConfig) -> dict[str, bool | float | str]:
    """The run's variant as hparam values: numbers, bools, strings (`32,64`).

    Only the flags that define its variant (`pipeline.variants`): a logreg
    row has no conv filters, and the seed is not among them. Plus its tags
    (`tag=a,b`), a column that defines no variant.
    """
    recorded = config_lib.config_to_dict(config)
    defining = variants_lib.defining_config(recorded)
    # Columns that define no variant (the run's tags) are shown all the same.
    defining.update({name: recorded[name] for name in COLUMN_ONLY})
    values: dict[str, bool | float | str] = {}
    for key, value in defining.items():
        if value is None:
            continue
        if isinstance(value, list):
            value = ",".join(str(v) for v in value)
        values[key] = value
    return values


def _summary(
    tag: str, plugin_data: plugin_data_pb2.HParamsPluginData
) -> summary_pb2.Summary:
    summary = summary_pb2.Summary()
    summary.value.add(
        tag=tag,
        metadata=metadata.create_summary_metadata(plugin_data),
        tensor=metadata.NULL_TENSOR,
    )
    return summary


def run_entry(config: Mapping) -> dict:
    """What the `differs` marks need of a run's recorded config: the flags that
    define its variant (the model among them) and its columns (its tags)."""
    entry = variants_lib.defining_config(config)
    entry.update({name: config.get(name) for name in COLUMN_ONLY})
    return entry


def _with_entry(entries: Iterable[dict], entry: dict) -> list[dict]:
    """`entries` and `entry`, each once, sorted: equal lists for equal sets."""
    texts = {json.dumps(e, sort_keys=True) for e in [*entries, entry]}
    return [json.loads(text) for text in sorted(texts)]


def scan_runs(experiment_dir: str | os.PathLike) -> dict[str, list[dict]]:
    """The `run_entry` of every readable run under `experiment_dir`, at any
    depth, by the directory holding it (relative: `.`, or a sweep's name)."""
    experiment_dir = pathlib.Path(experiment_dir)
    runs: dict[str, list[dict]] = {}
    paths = rundir.find_run_paths(experiment_dir)
    for record in rundir.scan_records(paths, report=lambda _: None):
        key = os.path.relpath(record.path.parent.parent, experiment_dir)
        runs[key] = _with_entry(runs.get(key, []), run_entry(record.config))
    return dict(sorted(runs.items()))


@dataclasses.dataclass
class ConfigFile:
    """An experiment config file: the experiment, and the runs it was made from.

    The runs (`scan_runs`' form) ride in the same file as a `log_message`
    event, which TensorBoard's loaders ignore: a run's end adds itself to
    them instead of reading every other run, and no second file appears
    beside the runs. None where the file has none (written by an older
    version, or at a run's start).
    """

    experiment: api_pb2.Experiment | None = None
    runs: dict[str, list[dict]] | None = None


def read_config_file(experiment_dir: str | os.PathLike) -> ConfigFile:
    """The config file at `experiment_dir` (both parts None when there is none)."""
    path = pathlib.Path(experiment_dir) / CONFIG_FILENAME
    found = ConfigFile()
    if not path.is_file():
        return found
    for event in events.load(path):
        if event.HasField("log_message") and found.runs is None:
            with contextlib.suppress(ValueError, AttributeError):
                found.runs = json.loads(event.log_message.message)[RUNS_KEY]
        for value in event.summary.value:
            if value.tag == metadata.EXPERIMENT_TAG and found.experiment is None:
                found.experiment = metadata.parse_experiment_plugin_data(
                    value.metadata.plugin_data.content
                )
    return found


def read_experiment(experiment_dir: str | os.PathLike) -> api_pb2.Experiment | None:
    """The experiment config stored in `experiment_dir`, or None."""
    return read_config_file(experiment_dir).experiment


@contextlib.contextmanager
def _locked(experiment_dir: pathlib.Path):
    """One writer of the directory's config at a time (sweep workers end runs
    side by side): a lock on the directory itself, so no lock file appears."""
    experiment_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(experiment_dir, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def write_experiment_config(
    experiment_dir: str | os.PathLike, differing: Iterable[str] = ()
) -> bool:
    """Writes the experiment config at `experiment_dir` from every run under it,
    unless an equal one is there.

    Reads every run's `run.json` below: where the config is read
    (`pipeline-board`'s start, a sweep's start), not at each run's end
    (`add_run`). The config lives in one file with a fixed name, replaced
    atomically when the flag definitions changed or more flags differ
    between runs (TensorBoard keeps the *first* metadata it reads for a tag,
    so appending a second config would be ignored). The flags marked
    `differs` are `marked_flags`': those marked before stay marked while
    there is room.

    Args:
      experiment_dir: The experiment root; runs are its subdirectories.
      differing: Flags known to differ (a sweep's grid axes), on top of those
        found in the runs' `run.json` and in the existing config.

    Returns:
      True if the file was (re)written.
    """
    experiment_dir = pathlib.Path(experiment_dir)
    with _locked(experiment_dir):
        current = read_config_file(experiment_dir)
        return _write_marks(
            experiment_dir, current, scan_runs(experiment_dir), differing
        )


def add_run(experiment_dir: str | os.PathLike, run_dir: str | os.PathLike) -> bool:
    """Adds the run's config to the experiment config at `experiment_dir` (the
    directory above it, or an ancestor), reading no other run.

    A config without its runs (an older version's, or a start's) is rebuilt
    from every run once. Returns True if the file was (re)written.
    """
    experiment_dir = pathlib.Path(experiment_dir)
    run_dir = pathlib.Path(run_dir)
    with _locked(experiment_dir):
        current = read_config_file(experiment_dir)
        if current.runs is None:
            runs = scan_runs(experiment_dir)
        else:
            runs = dict(current.runs)
            for record in rundir.scan_records([run_dir], report=lambda _: None):
                key = os.path.relpath(
                    run_dir.resolve().parent, experiment_dir.resolve()
                )
                runs[key] = _with_entry(runs.get(key, []), run_entry(record.config))
            runs = dict(sorted(runs.items()))
        return _write_marks(experiment_dir, current, runs)


def _write_marks(
    experiment_dir: pathlib.Path,
    current: ConfigFile,
    runs: dict[str, list[dict]],
    differing: Iterable[str] = (),
) -> bool:
    """Writes the config `runs` call for, unless `current` already is it."""
    models = {c.get("model") for cs in runs.values() for c in cs}
    existing = current.experiment
    before = set()
    if existing is not None:
        before = {info.name for info in existing.hparam_infos if info.differs}
        existing.ClearField("time_created_secs")
    marked = marked_flags(runs, differing, before)
    wanted = experiment_pb(marked, models & set(config_lib.MODELS) or config_lib.MODELS)
    if existing == wanted and current.runs == runs:
        return False
    _replace_config(experiment_dir, wanted, runs)
    return True


def _replace_config(
    experiment_dir: pathlib.Path,
    wanted: api_pb2.Experiment,
    runs: dict[str, list[dict]] | None,
) -> None:
    """Writes `wanted` (and the runs it was made from) as the directory's
    config file, atomically."""
    wanted.time_created_secs = time.time()
    experiment_dir.mkdir(parents=True, exist_ok=True)
    summary = _summary(
        metadata.EXPERIMENT_TAG, plugin_data_pb2.HParamsPluginData(experiment=wanted)
    )
    written = [events.summary_event(summary)]
    if runs is not None:
        message = json.dumps({RUNS_KEY: runs}, sort_keys=True)
        written.append(
            event_pb2.Event(
                wall_time=time.time(),
                log_message=event_pb2.LogMessage(
                    level=event_pb2.LogMessage.INFO, message=message
                ),
            )
        )
    events.replace_event_file(experiment_dir / CONFIG_FILENAME, written)


def ensure_experiment_config(experiment_dir: str | os.PathLike) -> None:
    """Writes a config at `experiment_dir` if it has none, without reading any run.

    A run's start calls this, so its session shows at once; the run's end
    (`end_run`) fills in what varies.
    """
    experiment_dir = pathlib.Path(experiment_dir)
    if not (experiment_dir / CONFIG_FILENAME).is_file():
        _replace_config(experiment_dir, experiment_pb(), None)


def refresh_experiment_configs(run_dir: str | os.PathLike) -> None:
    """Adds the run to the config of its logdir and of every ancestor holding one.

    A sweep's run lives in `LOGDIR/SWEEP/RUN`: the sweep's config and, when
    the logdir above it has one (the README's layout), the logdir's. Reads
    no other run (`add_run`).
    """
    directory = pathlib.Path(run_dir).resolve().parent
    add_run(directory, run_dir)
    for ancestor in directory.parents:
        if (ancestor / CONFIG_FILENAME).is_file():
            add_run(ancestor, run_dir)


def group_name(run_dir: str | os.PathLike) -> str:
    """The run's session group: `EXPERIMENT/VARIANT`, shared by its repeats.

    EXPERIMENT is the directory holding the run (the logdir, or a sweep in
    it), VARIANT the run name without its `seed=N` part: a sweep's repeats
    `lr=0.1,seed=0` and `lr=0.1,seed=1` are one group, shown as one row
    (TensorBoard averages a group's metrics). The dashboard shows it as the
    "Trial ID"; distinct for equal run names in two sweeps shown together.
    """
    run_dir = pathlib.Path(run_dir).resolve()
    return f"{run_dir.parent.name}/{variants_lib.variant_label(run_dir.name)}"


def write_session_start(
    run_dir: str | os.PathLike, config: config_lib.TrainConfig
) -> None:
    """Records the run's variant (`session_hparams`) in its own directory."""
    run_dir = pathlib.Path(run_dir)
    trial_id = group_name(run_dir)
    summary = hp.hparams_pb(
        session_hparams(config), trial_id=trial_id, start_time_secs=time.time()
    )
    events.write_event_file(run_dir, [events.summary_event(summary)], ".session_start")


def rewrite_session_start(
    run_dir: str | os.PathLike, values: Mapping[str, bool | float | str]
) -> bool:
    """Replaces hparam `values` in the run's recorded session (e.g. its tags).

    TensorBoard keeps the first session start it reads for a run, so the
    file is rewritten under its own name (the trial id and start time kept)
    rather than a second one added. False when the run has no session.
    """
    run_dir = pathlib.Path(run_dir)
    for path in events.event_files(run_dir, ".session_start"):
        for event in events.load(path):
            for value in event.summary.value:
                if value.tag != metadata.SESSION_START_INFO_TAG:
                    continue
                data = metadata.parse_session_start_info_plugin_data(
                    value.metadata.plugin_data.content
                )
                for name, new in values.items():
                    _set_value(data.hparams[name], new)
                summary = _summary(
                    metadata.SESSION_START_INFO_TAG,
                    plugin_data_pb2.HParamsPluginData(session_start_info=data),
                )
                events.replace_event_file(
                    path, [events.summary_event(summary, wall_time=event.wall_time)]
                )
                return True
    return False


def _set_value(proto, value: bool | float | str) -> None:
    """Sets a `google.protobuf.Value` as `hp.hparams_pb` would."""
    if isinstance(value, bool):
        proto.bool_value = value
    elif isinstance(value, int | float):
        proto.number_value = float(value)
    else:
        proto.string_value = str(value)


def write_session_end(
    run_dir: str | os.PathLike, status: str, reason: str | None = None
) -> None:
    """Marks the session finished: `completed`, `failed`, `pruned`, `diverged`
    or `running`.

    SessionEndInfo has no message field, so a failure's reason goes into the
    run's Text tab (tag `run_status`) as well as `run.json`. The API has no
    status for a run a sweep's pruner stopped: `pruned` ends the session
    *Unknown* (neither success nor failure, and filterable as such), with
    "**pruned**: ..." in the Text tab.
    """
    statuses = {
        "completed": api_pb2.STATUS_SUCCESS,
        "failed": api_pb2.STATUS_FAILURE,
        "pruned": api_pb2.STATUS_UNKNOWN,
        # HParams has no "diverged": a failure, with "**diverged**" in Text.
        "diverged": api_pb2.STATUS_FAILURE,
        "running": api_pb2.STATUS_RUNNING,
    }
    end_info = plugin_data_pb2.SessionEndInfo(
        status=statuses[status], end_time_secs=time.time()
    )
    summary = _summary(
        metadata.SESSION_END_INFO_TAG,
        plugin_data_pb2.HParamsPluginData(session_end_info=end_info),
    )
    if reason:
        text = text_summary.text_pb(STATUS_TAG, f"**{status}**: {reason}")
        summary.value.extend(text.value)
    events.write_event_file(run_dir, [events.summary_event(summary)], ".session_end")


def start_run(run_dir: str | os.PathLike, config: config_lib.TrainConfig) -> None:
    """Makes the run visible in the HParams dashboard before its first step.

    Reads no other run: start-up does not grow with the logdir.
    """
    ensure_experiment_config(config.logdir)
    write_session_start(run_dir, config)


def end_run(run_dir: str | os.PathLike, status: str, reason: str | None) -> None:
    """Ends the run's session and refreshes the configs that cover it."""
    write_session_end(run_dir, status, reason)
    refresh_experiment_configs(run_dir)


def end_failed_run(
    run_dir: str | os.PathLike, status: str, reason: str, *, refresh: bool = True
) -> None:
    """Ends a failed run's session (`end_run`; `refresh=False`: the session only).

    A disk too full for the session's file is no second failure: the run's
    record already says what went wrong, and the empty event file the
    refused write left is removed (a reader would trip over it).
    """
    try:
        write_session_end(run_dir, status, reason)
        if refresh:
            refresh_experiment_configs(run_dir)
    except Exception as err:
        if rundir.write_failure(err) is None:
            raise
        events.remove_empty(pathlib.Path(run_dir))


@dataclasses.dataclass
class BestMetrics:
    """Running best test accuracy (max) and loss (min), with their steps.

    Only the values are logged as scalars: a step number drawn as a curve
    reads as a measurement (`pipeline-compare` shows the step of the best).
    """

    accuracy: float = -math.inf
    accuracy_step: int = 0
    loss: float = math.inf
    loss_step: int = 0

    def update(self, step: int, values: Mapping[str, float]) -> dict[str, float]:
        """Folds in one evaluation; returns the `best/...` scalars to log at `step`."""
        out = {}
        if "accuracy" in values:
            if values["accuracy"] > self.accuracy:
                self.accuracy, self.accuracy_step = values["accuracy"], step
            out["best/accuracy"] = self.accuracy
        if "loss" in values:
            if values["loss"] < self.loss:
                self.loss, self.loss_step = values["loss"], step
            out["best/loss"] = self.loss
        return out
