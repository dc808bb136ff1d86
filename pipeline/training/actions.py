"""Actions: what the loop does after each compiled chunk, one behaviour each.

Orbit's idea (`orbit/actions`): side effects of the outer loop are small
objects called with what the inner loop returned. Here each action also says
which steps it needs, so a chunk always ends exactly on them.

How to add a behaviour to training: subclass `Action`, override what you
need, and pass an instance in `train_and_evaluate(..., extra_actions=[...])`
(or add it to `run_actions` to make it part of every run). Extra actions run
after evaluation and early stopping and before the checkpoint, the progress
line and the signal handling (`run_actions` has the order). To act before
step A runs (a profiler window A..B), ask for a boundary at A - 1.

    class StopAtStep(Action):
        def __init__(self, at): self.at = at
        def next_boundary(self, step): return self.at if step < self.at else None
        def __call__(self, state, chunk):
            if chunk.step == self.at:
                state.stop_reason = f"stopped at step {self.at}"

An action may read or change the shared `TrainState` (the model, the logger,
`state.last_test`, ...), stop the run cleanly by setting `state.stop_reason`
(a checkpoint is saved at that step and the run completes), or raise to end
it (the run is recorded `interrupted` for `TrainingInterruptedError` and
`KeyboardInterrupt`, `failed` for anything else).
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
from pipeline.config import epoch_of, steps_per_epoch
from pipeline.errors import NonFiniteLossError, TrainingInterruptedError
from pipeline.tensorboard import budget, events, projector
from pipeline.tensorboard import hparams as hparams_lib
from pipeline.tensorboard.summaries import variable_name
from pipeline.training import stopping
from pipeline.training.state import Chunk, TrainState

# Shown as they are by the progress bar (not averaged over updates).
PROGRESS_METRICS = ["loss", "accuracy", "test_accuracy", "examples/s"]


def next_multiple(step: int, every: int) -> int | None:
    """The first multiple of `every` after `step` (None when `every` is 0: never)."""
    return (step // every + 1) * every if every > 0 else None


def is_due(step: int, every: int) -> bool:
    """True when a periodic action (every N steps; 0 = never) falls on `step`."""
    return every > 0 and step % every == 0


class Action:
    """One behaviour of the training loop. Override what you need.

    The loop calls, in this order:
      `start(state)` once, before the first chunk (`state.step` is where the
        run starts: 0, or the restored step);
      `next_boundary(step)` before each chunk: the first step after `step`
        this action must see a chunk end on, or None (no need);
      `action(state, chunk)` after each chunk, in list order;
      `close(state)` once when the loop ends, however it ends.
    """

    def start(self, state: TrainState) -> None:
        """Before the first chunk. Default: nothing."""

    def next_boundary(self, step: int) -> int | None:
        """The next step after `step` a chunk must end on. Default: none."""
        return None

    def __call__(self, state: TrainState, chunk: Chunk) -> None:
        """After each chunk. Default: nothing."""

    def close(self, state: TrainState) -> None:
        """When the loop ends (also on errors). Default: nothing."""


class EveryNSteps(Action):
    """An action due on every multiple of `every` (0 = never) and at the end."""

    def __init__(self, every: int):
        self.every = every

    def next_boundary(self, step: int) -> int | None:
        return next_multiple(step, self.every)

    def due(self, chunk: Chunk) -> bool:
        return is_due(chunk.step, self.every) or chunk.is_last


class RunStartSummaries(Action):
    """The model graph, summary text and input images at step 0; the resume marker.

    Written after the first chunk (by the writer thread), so they never delay
    the first step; they still carry step 0 (or the resumed step + 1).
    """

    def __init__(self) -> None:
        self.written = False

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
    """Every step's loss and accuracy at its own step (every `log_every`)."""

    def __init__(self, log_every: int):
        self.log_every = log_every

    def __call__(self, state: TrainState, chunk: Chunk) -> None:
        logger = state.logger
        logger.scalar_series("train", chunk.first_step, chunk.outputs, self.log_every)
        if self.log_every > 0:
            # Constant within a chunk: once per chunk, at its last step.
            logger.scalar_series(
                "train",
                chunk.step,
                {
                    "learning_rate": np.array([state.optimizer.learning_rate.numpy()]),
                    "examples_per_sec": np.array([chunk.examples_per_sec]),
                },
            )
        state.last_train = {
            "loss": float(chunk.outputs["loss"][-1]),
            "accuracy": float(chunk.outputs["accuracy"][-1]),
        }


class WriteHistograms(Action):
    """Weights and their gradients, thinned to fit `--summary_budget_mb`.

    Chunks end on every multiple of `every`, on every worker alike
    (collectives need equal chunks); such a chunk runs the histogram variant
    of the train loop (`TrainState.train_until`), which hands back the
    weights after its last step and the gradients that step applied, so no
    second gradient pass is needed. The budget only decides whether a
    histogram is written there (thinned steps are multiples). The initial
    weights (step 0) are read before the first chunk and written after it, by
    the writer thread, so they never delay the first step.
    """

    def __init__(self, every: int, total_steps: int, budget_bytes: int):
        self.every = every
        self.schedule = budget.ThinningSchedule(every, total_steps, budget_bytes)
        self.initial: list | None = None
        self.measuring: list = []  # (step, future bytes on disk)

    def next_boundary(self, step: int) -> int | None:
        return next_multiple(step, self.every)

    def start(self, state: TrainState) -> None:
        if state.step == 0 and state.is_chief and self.schedule.due(0):
            self.initial = [tf.identity(v) for v in state.model.trainable_variables]

    def __call__(self, state: TrainState, chunk: Chunk) -> None:
        if self.initial is not None:
            initial, self.initial = self.initial, None
            self._write(state, 0, initial, ())
        if chunk.gradients and state.is_chief and self.schedule.due(chunk.step):
            self._write(state, chunk.step, chunk.weights, chunk.gradients)

    def _write(self, state: TrainState, step: int, weights, gradients) -> None:
        variables = state.model.trainable_variables
        named = [(variable_name(v), w) for v, w in zip(variables, weights, strict=True)]
        named += (
            [
                (f"gradients/{variable_name(v)}", g)
                for v, g in zip(variables, gradients, strict=True)
            ]
            if gradients
            else []
        )
        state.logger.histograms("train", step, named)
        if self.measuring:  # the last measurement, taken behind its write
            measured_step, spent = self.measuring.pop()
            self.schedule.measure(measured_step, spent.result())
        self.schedule.wrote(
            step, sum(budget.histogram_event_bytes(n) for n, _ in named)
        )
        if self.schedule.wants_measurement():
            # The first write after step 0 and every few after, by the writer
            # thread: a flush and a stat of the event files are not free.
            run_path = state.run_dir.path
            spent = state.logger.after_flush(lambda: budget.event_bytes(run_path))
            self.measuring.append((step, spent))


class Evaluate(EveryNSteps):
    """Test (and validation) loss and accuracy, and the running best test metrics."""

    def __init__(self, every: int):
        super().__init__(every)
        self.best = hparams_lib.BestMetrics()

    def start(self, state: TrainState) -> None:
        # A resumed run's running best starts from what its earlier lives logged.
        for logged_step, values in events.logged_evaluations(
            state.run_dir.path / "test", state.step
        ):
            self.best.update(logged_step, values)
        # The evaluation compiles at its first use, not here: compiling it
        # before the first step delayed that step by ~1.3 s (logreg,
        # benchmarks.startup), and the per-chunk examples/s never included it.

    def __call__(self, state: TrainState, chunk: Chunk) -> None:
        if not self.due(chunk):
            return
        step = chunk.step
        for name, values in state.evaluate_splits().items():
            state.logger.scalars(name, step, values)
            if name == "test":
                state.logger.scalars(name, step, self.best.update(step, values))
        state.last_evaluated = step


class EarlyStop(Action):
    """Stops when the validation loss stopped improving; keeps the best model."""

    def __call__(self, state: TrainState, chunk: Chunk) -> None:
        early = state.early_stopping
        if not early.enabled or state.last_evaluated != chunk.step:
            return
        if early.update(chunk.step, state.last_validation["loss"]):
            state.best_manager.save(checkpoint_number=chunk.step)
        if early.should_stop:
            state.stop_reason = early.reason(chunk.step)
            state.logger.text("train", chunk.step, "early_stopping", state.stop_reason)
            best_step = float(early.best_step.numpy())
            state.logger.scalars(
                "train", chunk.step, {"events/early_stopped": best_step}
            )
            state.print_fn(state.stop_reason)


class SaveCheckpoint(EveryNSteps):
    """A checkpoint every `every` steps, at the end, and where the run stops early."""

    def __call__(self, state: TrainState, chunk: Chunk) -> None:
        if self.due(chunk) or state.stop_reason:
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


def test_accuracy_text(state: TrainState) -> str:
    """The last test accuracy with the step it is from (`0.9625 (step 63)`)."""
    accuracy = state.last_test.get("accuracy")
    if accuracy is None or state.last_evaluated < 0:
        return "-"
    return f"{accuracy:.4f} (step {state.last_evaluated})"


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
        if self.bar is not None:
            values = [
                ("loss", state.last_train.get("loss", float("nan"))),
                ("accuracy", state.last_train.get("accuracy", float("nan"))),
                ("test_accuracy", test_accuracy_text(state)),
                ("examples/s", f"{chunk.examples_per_sec:,.0f}"),
            ]
            self.bar.update(
                chunk.step - self.first_step, values, finalize=chunk.is_last
            )
            return
        if not self.due(chunk):
            return
        # What the progress line reports reaches the charts right after it:
        # the flush is queued behind the chunk's writes (the writer thread).
        state.logger.flush(wait=False)
        test_text = test_accuracy_text(state)
        train_text = " ".join(f"{k}={v:.4f}" for k, v in state.last_train.items())
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

    def __call__(self, state: TrainState, chunk: Chunk) -> None:
        if not (state.is_chief and (chunk.is_last or state.stop_reason)):
            return
        if not projector.has_learned_embedding(state.model):
            return
        projector.write_projector(
            state.run_dir.path / "test",
            state.model,
            state.dataset.test,
            data_lib.class_names(state.config.binary_class),
            chunk.step,
            input_scale=state.config.input_scale,
        )


class RecordProfile(Action):
    """A `tf.profiler` trace of steps A..B (`--profile_steps=A,B`), chief only.

    A chunk ends at step A - 1, the trace starts after everything done there,
    steps A..B then run one per compiled call outside the compiled loop
    (`train_loop.one_step`), each marked as a training step
    (`TrainState.step_marker`), so the Profile tab's Overview shows their step
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
            state.profiling = True

    def _stop(self, state: TrainState, step: int) -> None:
        tf.profiler.experimental.stop()
        state.profiling = False
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

    def __init__(self) -> None:
        self.stop: stopping.GracefulStop | None = None

    def start(self, state: TrainState) -> None:
        signals = (signal.SIGINT,) if state.preemption else stopping.STOP_SIGNALS
        self.stop = stopping.GracefulStop(signals).install()

    def __call__(self, state: TrainState, chunk: Chunk) -> None:
        stop = self.stop
        if chunk.is_last or state.stop_reason:
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


def run_actions(state: TrainState, extra: Sequence[Action] = ()) -> list[Action]:
    """Every action of a run, in the order they are called after each chunk.

    `extra` actions come after evaluation and early stopping (they see this
    chunk's metrics in `state.last_test` / `state.last_validation` when
    `state.last_evaluated == chunk.step`) and before the checkpoint, so a stop
    they ask for (`state.stop_reason`) is saved; the signal handling comes last.
    """
    config = state.config
    return [
        RunStartSummaries(),
        CheckFinite(),
        WriteTrainScalars(config.log_every),
        WriteHistograms(
            config.histogram_every,
            config.steps,
            round(config.summary_budget_mb * 1e6),
        ),
        Evaluate(config.eval_every),
        EarlyStop(),
        *extra,
        SaveCheckpoint(config.checkpoint_every),
        *([WriteProjector()] if config.projector else []),
        PrintProgress(config.print_every),
        RecordProfile(config.profile_steps),
        SaveIfPreempted(),
        StopOnSignal(),
    ]
