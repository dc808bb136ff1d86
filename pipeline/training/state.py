"""What outlives a chunk: one `TrainState`, built once by `build_train_state`.

The loop (`pipeline.training.loop`) and its actions (`pipeline.training.actions`)
share this object: the model, optimizer and step variable, the data iterator,
the checkpoint and its manager, the summary logger, the evaluation arrays and
the compiled functions, plus the step reached and the last step saved. What
an action finds (an evaluation, a stop request) is not kept here: it travels
on the chunk (`pipeline.training.chunks`).
Which checkpoint a run continues from is chosen in one place,
`choose_restore_point`, and restored in one place, `build_train_state`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import pathlib
import time
from collections.abc import Callable, Iterable, Mapping
from types import MappingProxyType

import keras
import numpy as np
import tensorflow as tf

from pipeline import data as data_lib
from pipeline import models
from pipeline import precision as precision_lib
from pipeline.config import TrainConfig, use_jit_compile
from pipeline.errors import (
    CheckpointError,
    NonFiniteLossError,
    RunDirError,
    WorkerPreemptedError,
)
from pipeline.runs import checkpoints
from pipeline.runs.rundir import MODEL_SUMMARY_NAME, RunDir
from pipeline.tensorboard import events
from pipeline.tensorboard.summaries import SummaryLogger
from pipeline.training import distribute, recovery, steps
from pipeline.training.chunks import Chunk, ChunkRequest, Evaluation


@dataclasses.dataclass(frozen=True)
class RestorePoint:
    """Where a run starts: step 0 from scratch, or a checkpoint to restore."""

    step: int = 0
    checkpoint: str | None = None  # checkpoint prefix, None for a fresh start
    resumed: bool = False


def choose_restore_point(
    config: TrainConfig,
    run_dir: RunDir,
    resume: bool,
    restore_dir: pathlib.Path | None,
    print_fn: Callable[[str], None],
) -> RestorePoint:
    """The checkpoint a run continues from (the one place that chooses it).

    The newest checkpoint that restores, by the rule of
    `pipeline.runs.checkpoints`; each newer one that does not is named in a
    `warning:` line. It is verified here and restored once, into the run's
    own objects, by `TrainState.restore` (no model is built to try it).
    A non-chief worker passes the chief's checkpoint directory as
    `restore_dir`: the preemption handler restores its step counter from the
    worker's own directory, so the worker restores from a copy of the
    checkpoint the chief chose, and every worker then agrees.

    Raises:
      CheckpointError: checkpoints exist but none restores.
    """
    if not resume:
        return RestorePoint()
    if restore_dir is not None and restore_dir != run_dir.checkpoint_dir:
        recovery.copy_chosen_checkpoint(restore_dir, run_dir.checkpoint_dir, config)
    chosen = recovery.choose_resume_checkpoint(
        run_dir, config, lambda line: print_fn(f"warning: {line}")
    )
    step = chosen.step if chosen else 0
    checkpoint = str(chosen.prefix) if chosen else None
    return RestorePoint(step, checkpoint, resumed=True)


@dataclasses.dataclass
class TrainState:
    """Everything a run keeps between chunks (see the module docstring)."""

    config: TrainConfig
    run_dir: RunDir
    dataset: data_lib.Dataset
    strategy: tf.distribute.Strategy
    restore_point: RestorePoint
    print_fn: Callable[[str], None]
    model: keras.Model
    optimizer: keras.optimizers.Optimizer
    step_var: tf.Variable
    iterator: object
    checkpoint: tf.train.Checkpoint
    manager: tf.train.CheckpointManager
    logger: SummaryLogger
    eval_arrays: dict[str, tuple[tf.Tensor, tf.Tensor]]
    train_loop: Callable
    evaluate: Callable
    model_summary: str
    preemption: object | None = None
    # Where the last chunk whose actions all ran ended (a failure is recorded
    # at that step), and the last step saved.
    step: int = 0
    last_saved: int = 0
    started_at: float = dataclasses.field(default_factory=time.perf_counter)

    @property
    def is_chief(self) -> bool:
        return distribute.is_chief(self.strategy)

    def train_until(self, request: ChunkRequest) -> Chunk:
        """Runs steps `step + 1`..`request.end` in one compiled call, as the
        actions asked (`request.wants`); returns what they did."""
        end, wants = request.end, request.wants
        chunk = tf.constant(end - self.step, tf.int32)
        train_loop = (
            self.train_loop.with_histograms if wants.histograms else self.train_loop
        )
        # The last chunk's summaries are written while this one trains.
        self.logger.hand_over()
        started = time.perf_counter()
        with self.step_marker(end, wants.profiled_step):
            if wants.profiled_step and end == self.step + 1 and not wants.histograms:
                # A histogram loop of one step runs no loop iteration either.
                outputs = self.train_loop.one_step(self.iterator)
            elif wants.graph:
                outputs = self.logger.trace_graph(
                    "train", train_loop, self.iterator, chunk
                )
            else:
                outputs = train_loop(self.iterator, chunk)
        histograms = outputs.pop("histograms", None)
        series = {name: value.numpy() for name, value in outputs.items()}
        seconds = time.perf_counter() - started
        self.step_var.assign(end)
        return Chunk(
            self.step + 1,
            end,
            self.config.steps,
            series,
            seconds,
            (end - self.step) * self.config.batch_size,
            histograms,
        )

    @staticmethod
    def step_marker(step: int, profiled: bool) -> contextlib.AbstractContextManager:
        """While profiling, marks the call as training step `step` in the trace
        (the Profile tab's step-time views need these markers)."""
        if not profiled:
            return contextlib.nullcontext()
        return tf.profiler.experimental.Trace("train", step_num=step, _r=1)

    def evaluate_splits(self, step: int) -> Evaluation:
        """Loss and accuracy on every held-out split (test, validation) now,
        recorded as at `step`."""
        results = {}
        for name, (images, labels) in self.eval_arrays.items():
            metrics = self.evaluate(images, labels)
            results[name] = {
                k: float(metrics[k].numpy()) for k in steps.EVAL_METRICS if k in metrics
            }
        return Evaluation(step, results)

    def save_checkpoint(self, step: int) -> None:
        """Saves the run at `step`; refuses NaN/Inf weights; marks the save."""
        if not all_finite(self.model.variables + self.optimizer.variables):
            raise NonFiniteLossError(
                f"weights are NaN/Inf at step {step}; not saved; last good "
                f"checkpoint: {self.manager.latest_checkpoint or 'none'}"
            )
        # Flush first: what the checkpoint covers is then on disk too.
        self.logger.flush()
        try:
            self.manager.save(checkpoint_number=step)
        except (OSError, tf.errors.OpError) as err:
            reason = getattr(err, "message", None) or str(err)
            raise RunDirError(
                f"{self.run_dir.checkpoint_dir}: cannot save the step-{step} "
                f"checkpoint ({reason.splitlines()[0]}); last good checkpoint: "
                f"{self.manager.latest_checkpoint or 'none'}"
            ) from None
        self.last_saved = step
        # No scalar marks the save: a step number drawn as a curve reads as a
        # measurement; the checkpoints are named by step (checkpoints/ckpt-N).
        self.logger.flush()

    def restore(self, point: RestorePoint) -> None:
        """Restores `point`'s checkpoint into the run (the one place a run's
        checkpoint is restored); a fresh start restores nothing."""
        if point.checkpoint is None:
            return
        # Every object of the run must come back; a checkpoint from before
        # the input position was recomputed also holds the data iterator's
        # state, which is left unread (expect_partial: no exit warning).
        # Another model's variables fail on restore (shapes) or on the match.
        try:
            status = self.checkpoint.restore(point.checkpoint)
            status.assert_existing_objects_matched().expect_partial()
        except (AssertionError, ValueError, TypeError, KeyError) as err:
            raise CheckpointError(
                f"{point.checkpoint}: does not fit this run's model "
                f"({checkpoints.describe(err)})"
            ) from None

    def raise_preempted(self) -> None:
        """The preemption handler's exit: every worker has saved this step."""
        self.last_saved = int(self.step_var.numpy())
        raise WorkerPreemptedError(
            f"preempted: a worker got SIGTERM; every worker saved step "
            f"{self.last_saved}; restart each one with --resume"
        )


def rng_state_variables(model) -> list:
    """The model's random-number state: Keras `SeedGenerator` state variables.

    Keras 3 dropout draws from per-layer seed generators whose state lives in
    variables that `model.variables` lists but `tf.train.Checkpoint(model=...)`
    does not save; checkpointing them makes a resumed run draw the same
    dropout masks as an uninterrupted one.
    """
    weights = {id(w) for w in model.weights}
    return [v for v in model.variables if id(v) not in weights]


def all_finite(variables: Iterable) -> bool:
    """True when no floating-point variable holds NaN or Inf."""
    for variable in variables:
        value = np.asarray(variable.numpy())
        if np.issubdtype(value.dtype, np.floating) and not np.isfinite(value).all():
            return False
    return True


def seed_everything(seed: int, deterministic: bool) -> None:
    """Seeds Python, NumPy, TensorFlow and Keras; optionally forces op determinism."""
    keras.utils.set_random_seed(seed)
    if deterministic:
        tf.config.experimental.enable_op_determinism()


def _model_and_optimizer(config: TrainConfig, strategy) -> tuple:
    seed_everything(config.seed, config.deterministic)
    precision = precision_lib.resolve(config.precision, config.model)
    with strategy.scope():
        model = models.build_model(config)
        optimizer = steps.make_optimizer(
            config.optimizer,
            config.learning_rate,
            config.momentum,
            loss_scaling=precision.loss_scaling,
        )
        optimizer.build(model.trainable_variables)
    return model, optimizer, precision


def _train_iterator(config, dataset, strategy, restored_step: int):
    """The training batches from `restored_step` on.

    The input position is not in the checkpoint: the order is recomputed from
    the seed and the pipeline starts at the restored step (`make_dataset`),
    for one device and for a distributed dataset (whose iterator could not be
    checkpointed anyway) alike.
    """
    train_ds = data_lib.make_dataset(
        dataset.train,
        batch_size=config.batch_size,
        shuffle_buffer=config.shuffle_buffer,
        seed=config.seed,
        input_scale=config.input_scale,
        start_step=restored_step,
    )
    if distribute.is_single_device(strategy):
        return iter(train_ds)
    return iter(strategy.experimental_distribute_dataset(train_ds))


def _eval_split_names(dataset: data_lib.Dataset) -> list[str]:
    return ["test"] + (["validation"] if dataset.validation is not None else [])


def _eval_arrays(dataset: data_lib.Dataset) -> dict[str, tuple[tf.Tensor, tf.Tensor]]:
    """The held-out splits as resident tensors, evaluated without tf.data."""
    return {
        name: (
            tf.constant(getattr(dataset, name).images),
            tf.constant(getattr(dataset, name).labels, tf.int32),
        )
        for name in _eval_split_names(dataset)
    }


def _checkpoint_manager(
    config: TrainConfig,
    run_dir: RunDir,
    checkpoint: tf.train.Checkpoint,
    step_var: tf.Variable,
) -> tf.train.CheckpointManager:
    """The run's checkpoint manager (checkpoints named by step)."""
    return tf.train.CheckpointManager(
        checkpoint,
        str(run_dir.checkpoint_dir),
        max_to_keep=config.max_checkpoints,
        step_counter=step_var,
    )


def build_train_state(
    config: TrainConfig,
    run_dir: RunDir,
    dataset: data_lib.Dataset,
    strategy: tf.distribute.Strategy,
    restore_point: RestorePoint,
    print_fn: Callable[[str], None],
    checkpointed: Mapping[str, object] = MappingProxyType({}),
) -> TrainState:
    """Builds the model, data, checkpointing and logging of a run, and restores
    `restore_point` into them. Every worker of a distributed run builds the same.

    `checkpointed` is what the actions add to the checkpoint (trackables by
    name, `Action.checkpointed`): saved and restored with the run."""
    restored_step = restore_point.step
    is_chief = distribute.is_chief(strategy)
    if is_chief:
        events.write_session_start(
            run_dir.path,
            ["train", *_eval_split_names(dataset)],
            events.session_start_step(restored_step),
        )
    model, optimizer, precision = _model_and_optimizer(config, strategy)
    summary = models.summary_text(model) + "\n" + precision.describe()
    print_fn(summary)
    iterator = _train_iterator(config, dataset, strategy, restored_step)
    eval_arrays = _eval_arrays(dataset)
    step_var = tf.Variable(0, dtype=tf.int64, trainable=False, name="global_step")
    checkpoint = tf.train.Checkpoint(
        model=model,
        **steps.optimizer_trackables(optimizer),
        step=step_var,
        rng=rng_state_variables(model),
        **checkpointed,
    )
    manager = _checkpoint_manager(config, run_dir, checkpoint, step_var)
    state = TrainState(
        config=config,
        run_dir=run_dir,
        dataset=dataset,
        strategy=strategy,
        restore_point=restore_point,
        print_fn=print_fn,
        model=model,
        optimizer=optimizer,
        step_var=step_var,
        iterator=iterator,
        checkpoint=checkpoint,
        manager=manager,
        # Summaries are written by a background thread, off the training path.
        logger=SummaryLogger(
            run_dir.path,
            enabled=is_chief,
            background=True,
            flush_secs=config.flush_secs,
        ),
        eval_arrays=eval_arrays,
        train_loop=steps.make_train_loop(
            steps.make_train_step(model, optimizer, config.batch_size),
            strategy,
            jit_compile=use_jit_compile(config),
            histograms=config.histogram_every > 0,
        ),
        evaluate=steps.make_eval_fn(model, input_scale=config.input_scale),
        model_summary=summary,
        step=restored_step,
        last_saved=restored_step,
    )
    # Created before the restore: it adds its own counter to the checkpoint.
    state.preemption = distribute.make_preemption_handler(
        strategy, manager, state.raise_preempted
    )
    state.restore(restore_point)
    run_dir.write_file(MODEL_SUMMARY_NAME, summary.rstrip("\n") + "\n")
    return state
