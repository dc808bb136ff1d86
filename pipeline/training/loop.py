"""The training loop: a controller that runs compiled chunks and calls actions.

`train_and_evaluate` is Orbit's `Controller` cut to what this project needs:
it trains up to `--steps_per_loop` steps per compiled call
(`TrainState.train_until`), ends each call exactly on the next step any
action asked for, doing what they want of the call (`plan_chunk`), and then
calls every action (`pipeline.training.actions`) with the chunk: train
scalars at their own steps, histograms, evaluation, early stopping,
checkpoints, progress, preemption, SIGINT/SIGTERM. What an action finds (an
evaluation, a stop request) travels on the chunk to the actions after it
(`pipeline.training.chunks`). What
outlives a chunk is one `TrainState` (`pipeline.training.state`); how a run is
recorded (run.json status, the HParams session) is one context manager,
`RunRecorder`. `pipeline.training.steps` owns the math.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import operator
import pathlib
import time
from collections.abc import Callable, Iterator, Sequence

import keras
import numpy as np
import tensorflow as tf

from pipeline import data as data_lib
from pipeline import precision as precision_lib
from pipeline.config import TrainConfig, epoch_of, resolve_epochs, steps_per_epoch
from pipeline.errors import (
    NonFiniteLossError,
    PipelineError,
    RunDirError,
    TrainingError,
    TrainingInterruptedError,
    WorkerPreemptedError,
    one_line,
)
from pipeline.runs.rundir import RunDir, write_failure
from pipeline.tensorboard import budget, events
from pipeline.tensorboard import hparams as hparams_lib
from pipeline.tensorboard import notes as notes_lib
from pipeline.training import distribute
from pipeline.training.actions import (
    Action,
    CheckFinite,
    Evaluate,
    PrintProgress,
    RecordProfile,
    RunStartSummaries,
    SaveCheckpoint,
    SaveIfPreempted,
    StopOnSignal,
    WriteHistograms,
    WriteProjector,
    WriteTrainScalars,
    call_actions,
    check_order,
)
from pipeline.training.chunks import Chunk, ChunkRequest, Wants
from pipeline.training.early_stopping import EarlyStopping
from pipeline.training.state import (
    RestorePoint,
    TrainState,
    build_train_state,
    choose_restore_point,
    seed_everything,
)

__all__ = [
    "NonFiniteLossError",
    "RunRecorder",
    "TrainResult",
    "TrainingError",
    "TrainingInterruptedError",
    "WorkerPreemptedError",
    "seed_everything",
    "train_and_evaluate",
]


@dataclasses.dataclass(frozen=True)
class TrainResult:
    """What a finished run reports."""

    step: int
    test: dict[str, float]
    train: dict[str, float]
    wall_time_s: float
    examples_per_sec: float
    checkpoint: str | None
    weights_digest: str = ""
    # How often each compiled function traced: 1 each means no retracing.
    trace_counts: dict[str, int] = dataclasses.field(default_factory=dict)
    event_bytes: dict[str, int] = dataclasses.field(default_factory=dict)
    # The whole run directory at the end: events, checkpoints, artifacts.
    disk_bytes: dict[str, int] = dataclasses.field(default_factory=dict)


def train_and_evaluate(
    config: TrainConfig,
    run_dir: RunDir,
    dataset: data_lib.Dataset,
    print_fn: Callable[[str], None] = print,
    strategy: tf.distribute.Strategy | None = None,
    resume: bool = False,
    restore_dir: pathlib.Path | None = None,
    extra_actions: Sequence[Action] = (),
    record_fields: dict[str, object] | None = None,
) -> TrainResult:
    """Trains `config`'s model on `dataset`, logging into `run_dir`.

    Under a multi-worker `strategy` every worker calls this with the same
    config; only the chief writes summaries, and each non-chief worker must be
    given a temporary `run_dir` (its checkpoints are written there, because
    every worker has to take part in a save). With `resume`, training
    continues from the run's latest checkpoint (model, optimizer, step, data
    position, dropout RNG, early-stopping state); a non-chief worker passes
    the chief's checkpoint directory as `restore_dir`. `extra_actions` are
    called after each chunk too (`run_actions`).
    The run's record is kept by `RunRecorder`; `record_fields` (a sweep
    trial's link) go into the record's first write.
    """
    strategy = strategy or tf.distribute.get_strategy()
    check_can_train(config, dataset, strategy)
    # Epoch settings become steps here, where the train split is known.
    config = resolve_epochs(config, len(dataset.train))
    restore_point = choose_restore_point(config, run_dir, resume, restore_dir, print_fn)
    # The chief's run, named the same on every worker (--run_name is required).
    run_path = pathlib.Path(config.logdir) / (config.run_name or run_dir.name)
    with (
        RunRecorder(
            config, run_dir, dataset, strategy, restore_point, record_fields
        ) as record,
        distribute.peers_watched(strategy, run_path, lambda: record.step),
    ):
        if restore_point.resumed:
            # Said once the record has the resume: a process killed after
            # this line has left its restart in `run.json`.
            print_fn(f"resuming {run_dir.name} from step {restore_point.step}")
        actions = run_actions(config, extra_actions)
        state = record.state = build_train_state(
            config,
            run_dir,
            dataset,
            strategy,
            restore_point,
            print_fn,
            checkpointed=checkpointed(actions),
        )
        chunk = None  # the last one, with what the actions found there
        with started(actions, state):
            while state.step < config.steps and not (chunk and chunk.stop):
                request = plan_chunk(state.step, config, actions)
                chunk = call_actions(actions, state, state.train_until(request))
                state.step = chunk.step
        return record.completed(finish(state, actions, chunk))


def run_actions(config: TrainConfig, extra: Sequence[Action] = ()) -> list[Action]:
    """Every action of a run, in the order they are called after each chunk.

    `extra` actions come after evaluation and early stopping (they see this
    chunk's evaluation as `chunk.evaluation` when `chunk.evaluated`) and
    before the checkpoint, so a stop they ask for (`chunk.found(stop=...)`)
    is saved; the signal handling comes last. `check_order` refuses a list
    in which an action reads a finding before the action producing it.
    """
    actions = [
        RunStartSummaries(),
        CheckFinite(),
        WriteTrainScalars(config.log_every),
        WriteHistograms(
            config.histogram_every,
            config.steps,
            round(config.summary_budget_mb * 1e6),
        ),
        Evaluate(config.eval_every),
        EarlyStopping(config.early_stopping_patience, config.early_stopping_min_delta),
        *extra,
        SaveCheckpoint(config.checkpoint_every),
        *([WriteProjector()] if config.projector else []),
        PrintProgress(config.print_every),
        RecordProfile(config.profile_steps),
        SaveIfPreempted(),
        StopOnSignal(),
    ]
    check_order(actions)
    return actions


def checkpointed(actions: Sequence[Action]) -> dict[str, object]:
    """What the actions add to the run's checkpoint, by name (each name once)."""
    items: dict[str, object] = {}
    for action in actions:
        for name, trackable in action.checkpointed().items():
            if name in items:
                raise ValueError(f"two actions checkpoint {name!r}")
            items[name] = trackable
    return items


def plan_chunk(
    step: int, config: TrainConfig, actions: Sequence[Action]
) -> ChunkRequest:
    """The next compiled call: where it ends and what the actions want of it."""
    end = chunk_end(step, config.steps, config.steps_per_loop, actions)
    wants = functools.reduce(
        operator.or_, (action.wants(step, end) for action in actions), Wants()
    )
    return ChunkRequest(end, wants)


def chunk_end(
    step: int, last_step: int, steps_per_loop: int, actions: Sequence[Action]
) -> int:
    """The step the next chunk ends at: no action's boundary is skipped over."""
    end = min(last_step, step + steps_per_loop)
    for action in actions:
        boundary = action.next_boundary(step)
        if boundary is not None:
            end = min(end, boundary)
    return end


@contextlib.contextmanager
def started(actions: Sequence[Action], state: TrainState) -> Iterator[None]:
    """Starts every action; closes every started one when the loop ends."""
    with contextlib.ExitStack() as stack:
        for action in actions:
            action.start(state)
            stack.callback(action.close, state)
        yield


def check_can_train(
    config: TrainConfig, dataset: data_lib.Dataset, strategy: tf.distribute.Strategy
) -> None:
    """Raises TrainingError if `config` cannot train on `dataset` under `strategy`."""
    check_data_fits(config, dataset)
    replicas = strategy.num_replicas_in_sync
    if config.batch_size % replicas:
        raise TrainingError(
            f"--batch_size={config.batch_size} must be divisible by the "
            f"{replicas} replicas"
        )


def check_data_fits(config: TrainConfig, dataset: data_lib.Dataset) -> None:
    """Raises TrainingError if `config` cannot train on `dataset` (call before
    creating the run directory, so a refused job leaves nothing behind)."""
    if config.batch_size > len(dataset.train):
        raise TrainingError(
            f"--batch_size={config.batch_size} is larger than the train split "
            f"({len(dataset.train)} examples)"
        )


@dataclasses.dataclass(frozen=True)
class RunOutcome:
    """A completed run: its result and what run.json records beyond it."""

    result: TrainResult
    record: dict[str, object]
    status: str = "completed"  # or `pruned` (a sweep's pruner stopped it)


def finish(
    state: TrainState, actions: Sequence[Action], chunk: Chunk | None
) -> RunOutcome:
    """Final metrics (the best model's, after early stopping) and the result."""
    if chunk is None:  # nothing left to train: an empty chunk at the restored step
        chunk = Chunk(state.step + 1, state.step, state.config.steps, {}, 0.0, 0)
    chunk = call_actions(actions, state, chunk, completed=True)
    record = dict(chunk.record)
    stop = chunk.stop
    status = stop.status if stop else "completed"
    if status != "completed":
        record["stop_reason"] = stop.reason
    wall = time.perf_counter() - state.started_at
    state.logger.close()
    plugin_bytes = budget.bytes_per_plugin(state.run_dir.path)
    disk_bytes = budget.disk_bytes(state.run_dir.path, state.run_dir.checkpoint_dir)
    state.print_fn("on disk: " + budget.describe(disk_bytes))
    state.print_fn("event files: " + budget.describe(plugin_bytes))
    trained_examples = (state.step - state.restore_point.step) * state.config.batch_size
    result = TrainResult(
        step=state.step,
        test=chunk.evaluation.test if chunk.evaluation else {},
        train=chunk.train_metrics,
        wall_time_s=wall,
        examples_per_sec=trained_examples / wall,
        checkpoint=record.get("best_checkpoint") or state.manager.latest_checkpoint,
        weights_digest=weights_digest(state.model),
        trace_counts=trace_counts(state),
        event_bytes=plugin_bytes,
        disk_bytes=disk_bytes,
    )
    return RunOutcome(result, record, status)


class RunRecorder:
    """How a run is recorded from start to end: run.json and the HParams session.

    Entering marks the run `running` (a new run, or a resume that keeps its
    history) and makes it visible in the HParams dashboard. `completed()`
    records the final metrics. Leaving with an exception records
    `interrupted` (SIGINT/SIGTERM, at the last saved step) or `failed` (with
    the error, at the last step whose actions all ran, and as the HParams
    session's end); the exception goes on to the caller. The summary writers
    are closed either way.
    """

    def __init__(
        self,
        config: TrainConfig,
        run_dir: RunDir,
        dataset: data_lib.Dataset,
        strategy: tf.distribute.Strategy,
        restore_point: RestorePoint,
        record_fields: dict[str, object] | None = None,
    ):
        self.record_fields = dict(record_fields or {})
        self.config = config
        self.run_dir = run_dir
        self.dataset = dataset
        self.is_chief = distribute.is_chief(strategy)
        self.restore_point = restore_point
        self.state: TrainState | None = None

    def __enter__(self) -> RunRecorder:
        point, run_dir = self.restore_point, self.run_dir
        # One write of run.json before the first step, holding all it knows.
        precision = precision_lib.resolve(self.config.precision, self.config.model)
        fields = {"precision": precision.as_record(), **self.record_fields}
        if point.resumed and self.is_chief:
            run_dir.resume(self.config, from_step=point.step, **fields)
        else:
            run_dir.start(self.config, dataset_record(self.dataset), **fields)
        if self.is_chief and point.step == 0:
            hparams_lib.start_run(run_dir.path, self.config)
        if self.is_chief:
            notes_lib.write_note(run_dir.path, self.config.note or "", self.config.tag)
        return self

    @property
    def step(self) -> int:
        """The last step whose actions all ran (the restored one before)."""
        return self.state.step if self.state else self.restore_point.step

    def completed(self, outcome: RunOutcome) -> TrainResult:
        """Records the run `completed` (or `pruned`: a sweep's pruner stopped it)
        with its final metrics; returns the result."""
        result = outcome.result
        per_epoch = steps_per_epoch(self.config.batch_size, len(self.dataset.train))
        status = outcome.status
        extra = dict(outcome.record)
        self.run_dir.finish(
            status,
            step=result.step,
            epoch=epoch_of(result.step, per_epoch),
            steps_per_epoch=per_epoch,
            final_metrics={"test": result.test, "train": result.train},
            wall_time_s=round(result.wall_time_s, 3),
            examples_per_sec=round(result.examples_per_sec, 1),
            weights_digest=result.weights_digest,
            event_bytes=result.event_bytes,
            **extra,
        )
        if self.is_chief:
            reason = extra.get("stop_reason") if status != "completed" else None
            hparams_lib.end_run(self.run_dir.path, status, reason)
        return result

    def __exit__(self, exc_type, err, traceback) -> None:
        state = self.state
        if isinstance(err, TrainingInterruptedError | KeyboardInterrupt):
            step = state.last_saved if state else self.restore_point.step
            reason = _end_reason(self.run_dir, err)
            with contextlib.suppress(RunDirError):
                self.run_dir.finish("interrupted", step=step, error=reason)
        elif err is not None:
            # A NaN/Inf loss or weights is the model's own outcome (a search
            # looks for where that happens), not a fault of the pipeline.
            status = "diverged" if isinstance(err, NonFiniteLossError) else "failed"
            self.run_dir.mark_failed(
                _end_reason(self.run_dir, err),
                status=status,
                step=state.step if state else self.restore_point.step,
                end_session=hparams_lib.end_failed_run if self.is_chief else None,
                keep_ended=False,
            )
        if state is not None:
            state.logger.close()


def dataset_record(dataset: data_lib.Dataset) -> dict[str, object]:
    """What run.json says about the data a run trained on."""
    return {
        "name": dataset.name,
        "source": dataset.source,
        "fingerprint": dataset.fingerprint(),
        "sizes": dataset.sizes(),
    }


def _end_reason(run_dir: RunDir, err: BaseException) -> str:
    """The one line run.json records for the error that ended a run.

    A failed write is recorded as its one line (path and OS reason) and the
    empty event files it left are removed. If even the record cannot be
    written, it stays `running` with a dead pid, which `--resume` accepts.
    """
    failure = write_failure(err)
    if failure:
        reason = str(failure)
        events.remove_empty(run_dir.path)
    elif isinstance(err, PipelineError | KeyboardInterrupt):
        reason = f"{type(err).__name__}: {one_line(str(err))}"
    else:
        # Unexpected: one line in run.json, the whole trace beside it.
        reason = f"{type(err).__name__}: {one_line(str(err))}"
        log = run_dir.write_error_log(err)
        if log is not None:
            reason += f" (full trace: {log})"
    return reason


def weights_digest(model: keras.Model) -> str:
    """sha256 (first 16 hex digits) of every weight's bytes, in layer order.

    Equal digests mean bit-identical models: how replicas and workers of one
    distributed run are checked to agree.
    """
    digest = hashlib.sha256()
    for weight in model.weights:
        digest.update(
            np.ascontiguousarray(keras.ops.convert_to_numpy(weight)).tobytes()
        )
    return digest.hexdigest()[:16]


def trace_counts(state: TrainState) -> dict[str, int]:
    """Traces per compiled function (`experimental_get_tracing_count`).

    1 each means nothing retraced (a retrace costs a recompile mid-run).
    """
    train_loop = state.train_loop
    counts = {
        # With and without histograms alike (`steps.make_train_loop`).
        "train_loop": train_loop.compiled.experimental_get_tracing_count(),
        "train_step": train_loop.step_fn.experimental_get_tracing_count(),
        "evaluate": state.evaluate.experimental_get_tracing_count(),
        # The train step that also returns its gradients (histogram chunks).
        "gradients": train_loop.gradient_fn.experimental_get_tracing_count(),
    }
    counts.update(state.logger.tracing_counts())
    return counts
