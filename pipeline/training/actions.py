"""Actions: what the loop does around each compiled chunk, one behaviour each.

Orbit's idea (`orbit/actions`): side effects of the outer loop are small
objects called with what the inner loop returned. Here each action also says
which steps it needs (a chunk always ends exactly on them) and what it needs
of the compiled call (`wants`: histograms, the op graph, a profiled step).

How to add a behaviour to training: subclass `Action`, override what you
need, and pass an instance in `train_and_evaluate(..., extra_actions=[...])`.
Extra actions run after evaluation and early stopping and before the
checkpoint, the progress line and the signal handling
(`pipeline.training.loop.run_actions` has the order). To act before step A
runs (a profiler window A..B), ask for a boundary at A - 1.

    class StopAtStep(Action):
        produces = frozenset({"stop"})
        def __init__(self, at): self.at = at
        def next_boundary(self, step): return self.at if step < self.at else None
        def __call__(self, state, chunk):
            if chunk.step == self.at:
                return chunk.found(stop=StopRequest(f"stopped at step {self.at}"))

What an action finds for the others travels on the chunk: it returns a copy
with its findings (`chunk.found(evaluation=...)`, `stop=StopRequest(...)`: a
checkpoint is saved at that step and the run completes), declared in
`produces`; what it reads of earlier actions' findings is declared in
`consumes`, and `check_order` refuses an order where a consumer comes first.
An action may use the run's `TrainState` (the model, the logger, a
checkpoint save), or raise to end the run (recorded `interrupted` for
`TrainingInterruptedError` and `KeyboardInterrupt`, `failed` for anything
else).
"""

from __future__ import annotations

import signal
import sys
from collections.abc import Sequence

import keras
import numpy as np
import tensorflow as tf

from pipeline import data as data_lib
from pipeline import streams
from pipeline.cadence import is_due, next_due
from pipeline.config import epoch_of, steps_per_epoch
from pipeline.errors import NonFiniteLossError, TrainingInterruptedError
from pipeline.tensorboard import budget, events, projector
from pipeline.tensorboard import hparams as hparams_lib
from pipeline.tensorboard.summaries import variable_name
from pipeline.training import signals
from pipeline.training.chunks import FINDINGS, Chunk, Evaluation, Wants
from pipeline.training.state import TrainState

# Shown as they are by the progress bar (not averaged over updates).
PROGRESS_METRICS = ["loss", "accuracy", "test_accuracy", "examples/s"]


class Action:
    """One behaviour of the training loop. Override what you need.

    The loop calls, in this order:
      `start(state)` once, before the first chunk (`state.step` is where the
        run starts: 0, or the restored step);
      before each chunk, `next_boundary(step)`: the first step after `step`
        this action must see a chunk end on, or None (no need); then
        `wants(step, end)`: what it needs of the call that trains to `end`;
      `action(state, chunk)` after each chunk, in list order: returns the
        chunk with its findings added (`chunk.found(...)`), or None;
      `completed(state, chunk)` once at a clean end, with the last chunk:
        returns it with a final evaluation or run record entries, or None;
      `close(state)` once when the loop ends, however it ends.
    `checkpointed()` names what it adds to the run's checkpoint (saved and
    restored with the run).
    """

    # Chunk findings (`chunks.FINDINGS`) it adds, and those of earlier
    # actions it reads: `check_order` refuses a consumer before its producer.
    produces: frozenset[str] = frozenset()
    consumes: frozenset[str] = frozenset()

    def checkpointed(self) -> dict[str, object]:
        """Trackables to save in the run's checkpoint, by name. Default: none."""
        return {}

    def start(self, state: TrainState) -> None:
        """Before the first chunk. Default: nothing."""

    def next_boundary(self, step: int) -> int | None:
        """The next step after `step` a chunk must end on. Default: none."""
        return None

    def wants(self, step: int, end: int) -> Wants:
        """What the call training `step + 1`..`end` must do. Default: nothing."""
        return Wants()

    def __call__(self, state: TrainState, chunk: Chunk) -> Chunk | None:
        """After each chunk. Default: nothing."""
        return None

    def completed(self, state: TrainState, chunk: Chunk) -> Chunk | None:
        """At a clean end of the run. Default: nothing."""
        return None

    def close(self, state: TrainState) -> None:
        """When the loop ends (also on errors). Default: nothing."""


def check_order(actions: Sequence[Action]) -> None:
    """Raises ValueError when an action reads a finding that only a later one
    produces (it would see the previous chunk's, or none)."""
    for index, action in enumerate(actions):
        unknown = (action.produces | action.consumes) - set(FINDINGS)
        if unknown:
            raise ValueError(
                f"{type(action).__name__}: unknown findings {sorted(unknown)}"
            )
        for later in actions[index + 1 :]:
            early_read = action.consumes & later.produces
            if early_read:
                raise ValueError(
                    f"{type(action).__name__} reads {sorted(early_read)} before "
                    f"{type(later).__name__} produces it: put it after"
                )


def call_actions(
    actions: Sequence[Action], state: TrainState, chunk: Chunk, completed: bool = False
) -> Chunk:
    """Calls each action (its `completed` hook at a clean end) with the chunk
    as the previous ones left it; returns the chunk with every finding.

    After a chunk, an action that adds a finding it does not declare in
    `produces` is refused (`check_order` could not see it). At the end
    nothing reads after another action, so any finding goes (the best
    model's evaluation, run record entries).
    """
    for action in actions:
        call = action.completed if completed else action
        found = call(state, chunk) or chunk
        added = {
            name
            for name in FINDINGS
            if getattr(found, name) is not getattr(chunk, name)
        }
        if not completed and added - action.produces:
            raise ValueError(
                f"{type(action).__name__} added {sorted(added - action.produces)} to "
                "the chunk without declaring it in `produces`"
            )
        chunk = found
    return chunk


class EveryNSteps(Action):
    """An action due on every multiple of `every` (0 = never) and at the end."""

    def __init__(self, every: int):
        self.every = every

    def next_boundary(self, step: int) -> int | None:
        return next_due(step, self.every)


class RunStartSummaries(Action):
    """The model graph, summary text and input images at step 0; the resume marker.

    Written after the first chunk (by the writer thread), so they never delay
    the first step; they still carry step 0 (or the resumed step + 1). The
    first chunk of a new run writes its op graph (`Wants.graph`).
    """

    def __init__(self) -> None:
        self.written = False

    def wants(self, step: int, end: int) -> Wants:
        return Wants(graph=step == 0)

    def __call__(self, state: TrainState, chunk: Chunk) -> None:
        if self.written:
            return
        self.written = True
        config, logger = state.config, state.logger
        if state.restore_point.step == 0:
            logger.keras_model("train", state.model)
            logger.text("train", 0, "model_summary", f"```\n{state.model_summary}\n```")
            if config.image_count:
                images = state.dataset.train.images[: config.image_count]
                logger.image_grid("train", 0, "inputs", images)
        if state.restore_point.resumed:
            restored = state.restore_point.step
            logger.scalars(
                "train", restored + 1, {"events/resumed_from": float(restored)}
            )


class CheckFinite(Action):
    """Fails the run at the first NaN/Inf loss, naming the last good checkpoint."""

    def __call__(self, state: TrainState, chunk: Chunk) -> None:
        losses = chunk.outputs["loss"]
        bad = np.flatnonzero(~np.isfinite(losses))
        if bad.size:
            raise NonFiniteLossError(
                f"loss is {losses[bad[0]]} at step {chunk.first_step + int(bad[0])}; "
                f"last good checkpoint: {state.manager.latest_checkpoint or 'none'}"
            )


class WriteTrainScalars(Action):
    """Every step's loss and accuracy at its own step (every `log_every`),
    and once per chunk, at its last step, the learning rate and examples/s."""

    def __init__(self, log_every: int):
        self.log_every = log_every
        self.learning_rate = np.zeros([1], np.float32)

    def start(self, state: TrainState) -> None:
        # Constant through a run (no schedule), so read once: reading the
        # variable between chunks cost ~0.2 ms a chunk, 0.7% of a logreg one.
        self.learning_rate[0] = state.optimizer.learning_rate.numpy()

    def __call__(self, state: TrainState, chunk: Chunk) -> None:
        logger = state.logger
        logger.scalar_series("train", chunk.first_step, chunk.outputs, self.log_every)
        if self.log_every > 0:
            logger.scalar_series(
                "train",
                chunk.step,
                {
                    "learning_rate": self.learning_rate,
                    "examples_per_sec": np.array([chunk.examples_per_sec]),
                },
            )


class WriteHistograms(Action):
    """Weights and their gradients, thinned to fit `--summary_budget_mb`.

    Chunks end on every multiple of `every`, on every worker alike
    (collectives need equal chunks); such a chunk, and the last, runs the
    train loop with histograms (`Wants.histograms`, whatever the
    budget thinned out: it only decides what the chief writes), which hands
    back the histograms of the weights after its last step and of the
    gradients that step applied, so no second gradient pass is needed. The
    budget only decides whether a histogram is written there (thinned steps
    are multiples). The initial weights (step 0) are read before the first
    chunk and written after it, by the writer thread, so they never delay the
    first step.
    """

    def __init__(self, every: int, total_steps: int, budget_bytes: int):
        self.every = every
        self.schedule = budget.ThinningSchedule(every, total_steps, budget_bytes)
        self.initial: list | None = None
        self.measuring: list = []  # (step, future bytes on disk)

    def next_boundary(self, step: int) -> int | None:
        return next_due(step, self.every)

    def wants(self, step: int, end: int) -> Wants:
        return Wants(
            histograms=self.every > 0
            and is_due(end, self.every, self.schedule.total_steps)
        )

    def start(self, state: TrainState) -> None:
        if state.step == 0 and state.is_chief and self.schedule.due(0):
            self.initial = [tf.identity(v) for v in state.model.trainable_variables]

    def __call__(self, state: TrainState, chunk: Chunk) -> None:
        if self.initial is not None:
            initial, self.initial = self.initial, None
            self._write(state, 0, initial)
        due = chunk.histograms is not None and self.schedule.due(chunk.step)
        if due and state.is_chief:
            self._write(state, chunk.step, chunk.histograms, bucketed=True)

    def _write(
        self, state: TrainState, step: int, tensors, bucketed: bool = False
    ) -> None:
        """Writes the weights, or from a histogram chunk the buckets of its
        weights and gradients (`chunk.histograms`, weights first)."""
        names = [variable_name(v) for v in state.model.trainable_variables]
        if bucketed:
            names += [f"gradients/{name}" for name in names]
            state.logger.bucketed_histograms("train", step, names, tensors)
        else:
            state.logger.histograms("train", step, zip(names, tensors, strict=True))
        if self.measuring:  # the last measurement, taken behind its write
            measured_step, spent = self.measuring.pop()
            self.schedule.measure(measured_step, spent.result())
        self.schedule.wrote(
            step, sum(budget.histogram_event_bytes(name) for name in names)
        )
        if self.schedule.wants_measurement():
            # The first write after step 0 and every few after, by the writer
            # thread: a flush and a stat of the event files are not free.
            run_path = state.run_dir.path
            spent = state.logger.after_flush(lambda: budget.event_bytes(run_path))
            self.measuring.append((step, spent))


class Evaluate(EveryNSteps):
    """Test (and validation) loss and accuracy, and the running best test metrics.

    Every chunk leaves with the latest evaluation (`chunk.evaluation`, at its
    own step; `chunk.evaluated` when it is this chunk's).
    """

    produces = frozenset({"evaluation"})

    def __init__(self, every: int):
        super().__init__(every)
        self.best = hparams_lib.BestMetrics()
        self.latest: Evaluation | None = None

    def start(self, state: TrainState) -> None:
        # A resumed run's running best starts from what its earlier lives logged.
        for logged_step, values in events.logged_evaluations(
            state.run_dir.path / "test", state.step
        ):
            self.best.update(logged_step, values)
        # The evaluation compiles at its first use, not here: compiling it
        # before the first step delayed that step by ~1.3 s (logreg,
        # benchmarks.startup), and the per-chunk examples/s never included it.

    def __call__(self, state: TrainState, chunk: Chunk) -> Chunk:
        if is_due(chunk.step, self.every, chunk.last_step):
            step = chunk.step
            self.latest = state.evaluate_splits(step)
            for name, values in self.latest.splits.items():
                state.logger.scalars(name, step, values)
                if name == "test":
                    state.logger.scalars(name, step, self.best.update(step, values))
        return chunk.found(evaluation=self.latest)


class SaveCheckpoint(EveryNSteps):
    """A checkpoint every `every` steps, at the end, and where the run stops early."""

    consumes = frozenset({"stop"})

    def __call__(self, state: TrainState, chunk: Chunk) -> None:
        if is_due(chunk.step, self.every, chunk.last_step) or chunk.stop:
            state.save_checkpoint(chunk.step)


class _Progbar(keras.utils.Progbar):
    """Keras' `Progbar`, showing text values as they are.

    It prints a list value as a float with four decimals (`examples/s:
    1782.0000`) and any other value as it is; a text value is stored as such.
    """

    def update(self, current, values=None, finalize=None):
        numbers = []
        for name, value in values or ():
            if isinstance(value, str):
                if name not in self._values_order:
                    self._values_order.append(name)
                self._values[name] = value
            else:
                numbers.append((name, value))
        super().update(current, numbers, finalize)


def test_accuracy_text(evaluation: Evaluation | None) -> str:
    """The last test accuracy with the step it is from (`0.9625 (step 63)`)."""
    accuracy = evaluation.test.get("accuracy") if evaluation else None
    if accuracy is None:
        return "-"
    return f"{accuracy:.4f} (step {evaluation.step})"


class PrintProgress(EveryNSteps):
    """Progress: a live bar on a terminal, else one line every `every` steps.

    On a terminal (the program prints with `print` to a TTY) Keras' `Progbar`
    redraws after every chunk: steps done of `--steps`, the time left, time
    per step, train loss and accuracy, the last test accuracy with the step it
    is from, and examples/s as an integer. Anywhere else (a log file, a pipe,
    a sweep's child, a test) it prints one plain line every `every` steps and
    at the end, so a log holds no redraws. Before the first step it says that
    the train step is compiling, the seconds it takes are not silent.
    """

    consumes = frozenset({"evaluation"})

    def __init__(self, every: int):
        super().__init__(every)
        self.bar: keras.utils.Progbar | None = None
        self.first_step = 0

    def start(self, state: TrainState) -> None:
        if state.step < state.config.steps:
            state.print_fn(
                f"step {state.step:>6}/{state.config.steps}  compiling the "
                f"{state.config.model} train step (its first call waits for it)"
            )
        if state.print_fn is print and sys.stdout.isatty():
            self.first_step = state.step
            self.bar = _Progbar(
                state.config.steps - state.step,
                # Every chunk redraws: Keras' default 0.05 s throttle would
                # skip the redraws of fast chunks, and chunks are already the
                # throttle (`--steps_per_loop`).
                interval=0,
                stateful_metrics=PROGRESS_METRICS,
                unit_name="step",
            )

    def __call__(self, state: TrainState, chunk: Chunk) -> None:
        train = chunk.train_metrics
        if self.bar is not None:
            values = [
                ("loss", train.get("loss", float("nan"))),
                ("accuracy", train.get("accuracy", float("nan"))),
                ("test_accuracy", test_accuracy_text(chunk.evaluation)),
                ("examples/s", f"{chunk.examples_per_sec:,.0f}"),
            ]
            self.bar.update(
                chunk.step - self.first_step, values, finalize=chunk.is_last
            )
            return
        if not is_due(chunk.step, self.every, chunk.last_step):
            return
        # What the progress line reports reaches the charts within
        # --flush_secs: the flush is queued behind the chunk's writes (the
        # writer thread), at most once in that time.
        state.logger.flush(wait=False)
        test_text = test_accuracy_text(chunk.evaluation)
        train_text = " ".join(f"{k}={v:.4f}" for k, v in train.items())
        config = state.config
        epoch_text = ""
        if config.epochs:
            per_epoch = steps_per_epoch(config.batch_size, len(state.dataset.train))
            epoch_text = f"epoch {epoch_of(chunk.step, per_epoch)}/{config.epochs}  "
        state.print_fn(
            f"step {chunk.step:>6}/{chunk.last_step}  {epoch_text}train {train_text}"
            f"  test_accuracy={test_text}  {chunk.examples_per_sec:,.0f} examples/s"
        )


class WriteProjector(Action):
    """The test split's embeddings for TensorBoard's Projector, at the end.

    Into the run's `test/` directory (`pipeline.tensorboard.projector`): the
    penultimate layer's output for each test digit (at most
    `projector.MAX_EXAMPLES`), the digits as a sprite, and each one's label,
    prediction and correctness. Written when the run reaches its last step
    or stops early (the model as trained, before a best model is restored),
    for models with a learned embedding (`projector.has_learned_embedding`).
    """

    consumes = frozenset({"stop"})

    def __call__(self, state: TrainState, chunk: Chunk) -> None:
        if not (state.is_chief and (chunk.is_last or chunk.stop)):
            return
        if not projector.has_learned_embedding(state.model):
            return
        projector.write_projector(
            state.run_dir.path / "test",
            state.model,
            state.dataset.test,
            data_lib.class_names(state.config.binary_class),
            input_scale=state.config.input_scale,
        )


class RecordProfile(Action):
    """A `tf.profiler` trace of steps A..B (`--profile_steps=A,B`), chief only.

    A chunk ends at step A - 1, the trace starts after everything done there,
    steps A..B then run one per compiled call outside the compiled loop
    (`train_loop.one_step`), each marked as a training step
    (`Wants.profiled_step`), so the Profile tab's Overview shows their step
    time, and the trace stops once step B and its actions are done.
    It goes to the run's `train/` directory
    (`plugins/profile/<time>/<host>.xplane.pb`), where TensorBoard's Profile
    tab (`tensorboard-plugin-profile`) finds it. A run resumed past A traces
    from where it resumed up to B.
    """

    def __init__(self, steps: tuple[int, ...]):
        self.first, self.last = steps if steps else (0, 0)
        self.tracing_from: int | None = None

    def next_boundary(self, step: int) -> int | None:
        if self.tracing_from is not None:
            return step + 1  # one step per call: one step marker each
        for boundary in (self.first - 1, self.last):
            if step < boundary:
                return boundary
        return None

    def wants(self, step: int, end: int) -> Wants:
        return Wants(profiled_step=self.tracing_from is not None)

    def start(self, state: TrainState) -> None:
        self._maybe_start(state, state.step)

    def __call__(self, state: TrainState, chunk: Chunk) -> None:
        if self.tracing_from is not None and chunk.step >= self.last:
            self._stop(state, chunk.step)
        else:
            self._maybe_start(state, chunk.step)

    def close(self, state: TrainState) -> None:
        if self.tracing_from is not None:
            self._stop(state, state.step)

    def _maybe_start(self, state: TrainState, step: int) -> None:
        due = self.last and self.first - 1 <= step < self.last
        if due and state.is_chief and self.tracing_from is None:
            # Traced now, so its compilation is not timed as step A.
            state.train_loop.one_step.get_concrete_function(state.iterator)
            tf.profiler.experimental.start(str(state.run_dir.path / "train"))
            self.tracing_from = step + 1

    def _stop(self, state: TrainState, step: int) -> None:
        tf.profiler.experimental.stop()
        state.print_fn(
            f"profile: steps {self.tracing_from}-{step} traced into "
            f"{state.run_dir.path / 'train'} (TensorBoard's Profile tab)"
        )
        self.tracing_from = None


class SaveIfPreempted(Action):
    """Multi-worker only: after a SIGTERM anywhere, every worker saves this step.

    Every worker calls the handler after every chunk; after a SIGTERM it saves
    on all of them and raises `WorkerPreemptedError` (exit code 42).
    """

    def __call__(self, state: TrainState, chunk: Chunk) -> None:
        if state.preemption is not None:
            state.logger.flush()
            state.preemption.save_checkpoint_if_preempted(checkpoint_number=chunk.step)


class StopOnSignal(Action):
    """SIGINT/SIGTERM, or a closed stdout: finish the chunk, save a checkpoint,
    end `interrupted`.

    Under multi_worker, SIGTERM belongs to the preemption handler, which stops
    every worker at the same step; SIGINT still stops only this process.
    """

    consumes = frozenset({"stop"})

    def __init__(self) -> None:
        self.stop: signals.GracefulStop | None = None

    def start(self, state: TrainState) -> None:
        handled = (signal.SIGINT,) if state.preemption else signals.STOP_SIGNALS
        self.stop = signals.GracefulStop(handled).install()

    def __call__(self, state: TrainState, chunk: Chunk) -> None:
        stop = self.stop
        if chunk.is_last or chunk.stop:
            return
        if stop.requested:
            cause, signum = f"by {stop.signal_name}", stop.signum
        elif state.preemption is None and streams.output_closed():
            # `| head` or `less` quit: stop as SIGPIPE stops a shell's writer,
            # but with a checkpoint (exit 141, like a process SIGPIPE ended).
            cause, signum = "because its output was closed", signal.SIGPIPE
        else:
            return
        if chunk.step > state.last_saved:
            state.save_checkpoint(chunk.step)
        state.logger.flush()
        raise TrainingInterruptedError(
            f"interrupted {cause} at step {chunk.step}; checkpoint "
            f"{state.manager.latest_checkpoint or 'none'} saved; continue with: "
            f"pipeline-train --resume --run={state.run_dir.path}",
            signum,
        )

    def close(self, state: TrainState) -> None:
        if self.stop is not None:
            self.stop.uninstall()
