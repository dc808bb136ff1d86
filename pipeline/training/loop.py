"""The training loop: stitches data, model, compiled steps, summaries, checkpoints.

`train_and_evaluate` owns *when* things happen (logging, evaluation,
histograms, checkpoints, progress lines); `pipeline.training.steps` owns the math. Steps
run in chunks of up to `steps_per_loop` per compiled call; chunks end exactly at
every evaluation, histogram, checkpoint and progress boundary, and each step's
train scalars are written at their own step.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import pathlib
import shutil
import signal
import time
from collections.abc import Callable

import keras
import numpy as np
import tensorflow as tf

from pipeline import data as data_lib
from pipeline import models
from pipeline.config import (
    TrainConfig,
    epoch_of,
    resolve_epochs,
    steps_per_epoch,
    use_jit_compile,
)
from pipeline.errors import (
    NonFiniteLossError,
    RunDirError,
    TrainingError,
    TrainingInterruptedError,
    WorkerPreemptedError,
)
from pipeline.runs.rundir import MODEL_SUMMARY_NAME, RunDir
from pipeline.tensorboard import budget
from pipeline.tensorboard import hparams as hparams_lib
from pipeline.tensorboard.summaries import SummaryLogger, variable_name
from pipeline.training import distribute, recovery, steps, stopping

EVAL_BATCH_SIZE = 1000


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


def is_due(step: int, every: int) -> bool:
    """True when a periodic action (every N steps; 0 = never) falls on `step`."""
    return every > 0 and step % every == 0


def next_boundary(
    step: int, total: int, intervals: list[int], steps_per_loop: int
) -> int:
    """The step the next chunk ends at: no interval boundary is skipped over."""
    end = min(total, step + steps_per_loop)
    for every in intervals:
        if every > 0:
            end = min(end, (step // every + 1) * every)
    return end


def seed_everything(seed: int, deterministic: bool) -> None:
    """Seeds Python, NumPy, TensorFlow and Keras; optionally forces op determinism."""
    keras.utils.set_random_seed(seed)
    if deterministic:
        tf.config.experimental.enable_op_determinism()


def _format_metrics(values: dict[str, float]) -> str:
    return " ".join(f"{k}={v:.4f}" for k, v in values.items())


def check_data_fits(config: TrainConfig, dataset: data_lib.Dataset) -> None:
    """Raises TrainingError if `config` cannot train on `dataset` (call before
    creating the run directory, so a refused job leaves nothing behind)."""
    if config.batch_size > len(dataset.train):
        raise TrainingError(
            f"--batch_size={config.batch_size} is larger than the train split "
            f"({len(dataset.train)} examples)"
        )


def copy_latest_checkpoint(source: pathlib.Path, target: pathlib.Path) -> None:
    """Copies `source`'s latest checkpoint into `target` and points its state at it."""
    latest = tf.train.latest_checkpoint(str(source))
    if latest is None:
        return
    target.mkdir(parents=True, exist_ok=True)
    for path in pathlib.Path(latest).parent.glob(pathlib.Path(latest).name + ".*"):
        shutil.copy2(path, target / path.name)
    tf.compat.v1.train.update_checkpoint_state(
        str(target), str(target / pathlib.Path(latest).name)
    )


def train_and_evaluate(
    config: TrainConfig,
    run_dir: RunDir,
    dataset: data_lib.Dataset,
    print_fn: Callable[[str], None] = print,
    strategy: tf.distribute.Strategy | None = None,
    resume: bool = False,
    restore_dir: pathlib.Path | None = None,
) -> TrainResult:
    """Trains `config`'s model on `dataset`, logging into `run_dir`.

    Under a multi-worker `strategy` every worker calls this with the same
    config; only the chief writes summaries, and each non-chief worker must be
    given a temporary `run_dir` (its checkpoints are written there, because
    every worker has to take part in a save).

    The run record says `running` from before the first step, then
    `completed` with final metrics, `interrupted` after SIGINT/SIGTERM (a
    checkpoint saved first), or `failed` with the error if anything raises
    (the exception is re-raised for the caller to report). With `resume`,
    training continues from the run's latest checkpoint (model, optimizer,
    step, data position, dropout RNG and early-stopping state); a non-chief
    worker passes the chief's checkpoint directory as `restore_dir` and its
    scratch `run_dir`.
    """
    check_data_fits(config, dataset)
    # Epoch settings become steps here, where the train split is known.
    config = resolve_epochs(config, len(dataset.train))
    per_epoch = steps_per_epoch(config.batch_size, len(dataset.train))
    strategy = strategy or tf.distribute.get_strategy()
    replicas = strategy.num_replicas_in_sync
    if config.batch_size % replicas:
        raise TrainingError(
            f"--batch_size={config.batch_size} must be divisible by the "
            f"{replicas} replicas"
        )
    is_chief = distribute.is_chief(strategy)
    restored_step = 0
    if resume and restore_dir is not None and restore_dir != run_dir.checkpoint_dir:
        # The preemption handler restores its step counter from the worker's
        # own checkpoint directory, so a non-chief worker restores from a copy
        # of the chief's latest checkpoint: every worker then agrees.
        copy_latest_checkpoint(restore_dir, run_dir.checkpoint_dir)
    if resume:
        restored_step = recovery.latest_checkpoint_step(run_dir.checkpoint_dir)
        print_fn(f"resuming {run_dir.name} from step {restored_step}")
    if resume and is_chief:
        run_dir.resume(config, from_step=restored_step)
    else:
        run_dir.start(
            config,
            {
                "name": dataset.name,
                "source": dataset.source,
                "fingerprint": dataset.fingerprint(),
                "sizes": dataset.sizes(),
            },
        )
    if is_chief and restored_step == 0:
        hparams_lib.start_run(run_dir.path, config)
    splits = ["train", "test"]
    if dataset.validation is not None:
        splits.append("validation")
    writers_not_before = 0.0
    if is_chief:
        writers_not_before = recovery.write_session_start(
            run_dir.path, splits, recovery.session_start_step(restored_step)
        )
    seed_everything(config.seed, config.deterministic)
    with strategy.scope():
        model = models.build_model(config)
        optimizer = steps.make_optimizer(
            config.optimizer, config.learning_rate, config.momentum
        )
        optimizer.build(model.trainable_variables)
    summary = models.summary_text(model)
    print_fn(summary)

    train_ds = data_lib.make_dataset(
        dataset.train,
        batch_size=config.batch_size,
        shuffle_buffer=config.shuffle_buffer,
        seed=config.seed,
        input_scale=config.input_scale,
    )
    eval_sets = {"test": dataset.test}
    if dataset.validation is not None:
        eval_sets["validation"] = dataset.validation
    eval_arrays = {
        name: (tf.constant(split.images), tf.constant(split.labels, tf.int32))
        for name, split in eval_sets.items()
    }
    step_var = tf.Variable(0, dtype=tf.int64, trainable=False, name="global_step")
    early_stopping = stopping.EarlyStopping(
        config.early_stopping_patience, config.early_stopping_min_delta
    )
    trackables = {
        "model": model,
        "optimizer": optimizer,
        "step": step_var,
        "rng": recovery.rng_state_variables(model),
        "early_stopping": early_stopping,
    }
    if distribute.iterator_is_checkpointable(strategy):
        iterator = iter(train_ds)
        trackables["iterator"] = iterator
    else:
        # A distributed iterator cannot be checkpointed: skip the seeded
        # pipeline to the restored step instead (bit-identical, TF-FACTS.md).
        iterator = iter(
            strategy.experimental_distribute_dataset(train_ds.skip(restored_step))
        )
    checkpoint = tf.train.Checkpoint(**trackables)
    manager = tf.train.CheckpointManager(
        checkpoint,
        str(run_dir.checkpoint_dir),
        max_to_keep=config.max_checkpoints,
        step_counter=step_var,
    )
    # The best model (by validation loss) has its own manager, so the
    # rotation of the regular checkpoints can never delete it.
    best_manager = (
        tf.train.CheckpointManager(
            tf.train.Checkpoint(model=model),
            str(run_dir.checkpoint_dir / "best"),
            max_to_keep=1,
        )
        if early_stopping.enabled
        else None
    )

    def on_preempted() -> None:
        nonlocal last_saved
        last_saved = int(step_var.numpy())
        raise WorkerPreemptedError(
            f"preempted: a worker got SIGTERM; every worker saved step "
            f"{int(step_var.numpy())}; restart each one with --resume"
        )

    preemption = distribute.make_preemption_handler(strategy, manager, on_preempted)
    if restored_step:
        checkpoint.restore(manager.latest_checkpoint).assert_existing_objects_matched()
    (run_dir.path / MODEL_SUMMARY_NAME).write_text(summary.rstrip("\n") + "\n")
    best = hparams_lib.BestMetrics()
    # A resumed run's running best starts from what its earlier lives logged.
    for logged_step, values in recovery.logged_evaluations(
        run_dir.path / "test", restored_step
    ):
        best.update(logged_step, values)

    train_loop = steps.make_train_loop(
        steps.make_train_step(model, optimizer, config.batch_size),
        strategy,
        jit_compile=use_jit_compile(config),
    )
    evaluate = steps.make_array_eval_fn(model, EVAL_BATCH_SIZE, config.input_scale)
    gradients = steps.make_gradient_fn(model)
    # A fixed batch for gradient histograms, so they never consume the
    # training iterator (which would change the run they observe).
    probe_images = tf.constant(
        dataset.train.images[: config.batch_size, ..., None]
        / data_lib.INPUT_SCALE_DIVISORS[config.input_scale],
        tf.float32,
    )
    probe_labels = tf.constant(dataset.train.labels[: config.batch_size])

    recovery.wait_until(writers_not_before)
    logger = SummaryLogger(run_dir.path, enabled=is_chief)
    histogram_schedule = budget.ThinningSchedule(
        config.histogram_every, config.steps, round(config.summary_budget_mb * 1e6)
    )
    start = time.perf_counter()
    last_test: dict[str, float] = {}
    last_validation: dict[str, float] = {}
    last_train: dict[str, float] = {}
    trained_examples = 0
    step = restored_step
    last_saved = restored_step
    stopped_early = ""
    # Under multi_worker, SIGTERM belongs to the preemption handler, which
    # stops every worker at the same step.
    stop_signals = (signal.SIGINT,) if preemption else stopping.STOP_SIGNALS
    stop = stopping.GracefulStop(stop_signals).install()
    try:
        if step == 0:
            logger.keras_model("train", model)
            logger.text("train", 0, "model_summary", f"```\n{summary}\n```")
            if config.image_count:
                logger.image_grid(
                    "train", 0, "inputs", dataset.train.images[: config.image_count]
                )
        if resume:
            logger.scalars(
                "train",
                restored_step + 1,
                {"events/resumed_from": float(restored_step)},
            )

        def run_evaluation(log: bool = True) -> None:
            nonlocal last_test, last_validation
            for name, (images, labels) in eval_arrays.items():
                metrics = evaluate(images, labels)
                values = {k: float(v) for k, v in metrics.items() if k != "count"}
                if log:
                    logger.scalars(name, step, values)
                if name == "test":
                    last_test = values
                    if log:
                        logger.scalars(name, step, best.update(step, values))
                else:
                    last_validation = values

        def save_checkpoint() -> None:
            nonlocal last_saved
            if not recovery.all_finite(model.variables + optimizer.variables):
                raise NonFiniteLossError(
                    f"weights are NaN/Inf at step {step}; not saved; last good "
                    f"checkpoint: {manager.latest_checkpoint or 'none'}"
                )
            # Flush first: what the checkpoint covers is then on disk too.
            logger.flush()
            try:
                manager.save(checkpoint_number=step)
            except (OSError, tf.errors.OpError) as err:
                reason = getattr(err, "message", None) or str(err)
                raise RunDirError(
                    f"{run_dir.checkpoint_dir}: cannot save the step-{step} "
                    f"checkpoint ({reason.splitlines()[0]}); last good checkpoint: "
                    f"{manager.latest_checkpoint or 'none'}"
                ) from None
            last_saved = step
            logger.scalars("train", step, {"events/checkpoint_saved": float(step)})
            logger.flush()

        def write_histograms() -> None:
            grads = gradients(probe_images, probe_labels)
            named = [(variable_name(v), v) for v in model.trainable_variables]
            named += [
                (f"gradients/{variable_name(v)}", g)
                for v, g in zip(model.trainable_variables, grads, strict=True)
            ]
            logger.histograms("train", step, named)
            if histogram_schedule.budget_bytes > 0:
                logger.flush()
                write_bytes = sum(budget.histogram_event_bytes(n) for n, _ in named)
                spent = budget.event_bytes(run_dir.path)
                histogram_schedule.record(step, spent, write_bytes)

        # Compile the evaluation now (on zero examples), with the train loop,
        # rather than inside the first evaluation interval.
        images, labels = next(iter(eval_arrays.values()))
        evaluate(images[:0], labels[:0])
        if is_chief and step == 0 and histogram_schedule.due(step):
            write_histograms()  # the initial weights (a resumed run has them)
        # Chunks end on every multiple of --histogram_every, on every worker
        # alike (collectives need equal chunks); the budget only decides
        # whether a histogram is written there (thinned steps are multiples).
        intervals = [
            config.eval_every,
            config.histogram_every,
            config.checkpoint_every,
            config.print_every,
        ]
        while step < config.steps and not stopped_early:
            if stop.requested:
                break
            end = next_boundary(step, config.steps, intervals, config.steps_per_loop)
            chunk = tf.constant(end - step, tf.int32)
            chunk_start = time.perf_counter()
            if step == 0:
                outputs = logger.trace_graph("train", train_loop, iterator, chunk)
            else:
                outputs = train_loop(iterator, chunk)
            series = {k: v.numpy() for k, v in outputs.items()}
            elapsed = time.perf_counter() - chunk_start
            first_step = step + 1
            bad = np.flatnonzero(~np.isfinite(series["loss"]))
            if bad.size:
                bad_step = first_step + int(bad[0])
                raise NonFiniteLossError(
                    f"loss is {series['loss'][bad[0]]} at step {bad_step}; "
                    f"last good checkpoint: {manager.latest_checkpoint or 'none'}"
                )
            step = end
            step_var.assign(step)
            trained_examples += (end - first_step + 1) * config.batch_size
            examples_per_sec = (end - first_step + 1) * config.batch_size / elapsed
            logger.scalar_series("train", first_step, series, config.log_every)
            if config.log_every > 0:
                # Constant within a chunk: once per chunk, at its last step.
                logger.scalar_series(
                    "train",
                    step,
                    {
                        "learning_rate": np.array([optimizer.learning_rate.numpy()]),
                        "examples_per_sec": np.array([examples_per_sec]),
                    },
                )
            last_train = {
                "loss": float(series["loss"][-1]),
                "accuracy": float(series["accuracy"][-1]),
            }

            if is_chief and histogram_schedule.due(step):
                write_histograms()
            if is_due(step, config.eval_every) or step == config.steps:
                run_evaluation()
                if early_stopping.enabled:
                    if early_stopping.update(step, last_validation["loss"]):
                        best_manager.save(checkpoint_number=step)
                    if early_stopping.should_stop:
                        stopped_early = early_stopping.reason(step)
                        logger.text("train", step, "early_stopping", stopped_early)
                        best_step = float(early_stopping.best_step.numpy())
                        logger.scalars(
                            "train", step, {"events/early_stopped": best_step}
                        )
                        print_fn(stopped_early)
            if (
                is_due(step, config.checkpoint_every)
                or step == config.steps
                or stopped_early
            ):
                save_checkpoint()
            if is_due(step, config.print_every) or step == config.steps:
                # What the progress line reports is on the charts too.
                logger.flush()
                test_acc = last_test.get("accuracy")
                test_text = "-" if test_acc is None else f"{test_acc:.4f}"
                epoch_text = (
                    f"epoch {epoch_of(step, per_epoch)}/{config.epochs}  "
                    if config.epochs
                    else ""
                )
                print_fn(
                    f"step {step:>6}/{config.steps}  {epoch_text}"
                    f"train {_format_metrics(last_train)}"
                    f"  test_accuracy={test_text}  {examples_per_sec:,.0f} examples/s"
                )
            if preemption is not None:
                # Every worker calls this after every chunk; after a SIGTERM
                # anywhere, all save this step and `on_preempted` raises.
                logger.flush()
                preemption.save_checkpoint_if_preempted(checkpoint_number=step)
        if stop.requested and step < config.steps and not stopped_early:
            if step > last_saved:
                save_checkpoint()
            logger.flush()
            raise TrainingInterruptedError(
                f"interrupted by {stop.signal_name} at step {step}; checkpoint "
                f"{manager.latest_checkpoint or 'none'} saved; continue with: "
                f"pipeline-train --resume --run={run_dir.path}",
                stop.signum,
            )
        stop.uninstall()
        extra: dict[str, object] = {}
        if best_manager is not None and best_manager.latest_checkpoint:
            # Final metrics are the best model's, as Keras' EarlyStopping
            # (restore_best_weights=True) reports them.
            tf.train.Checkpoint(model=model).restore(
                best_manager.latest_checkpoint
            ).assert_existing_objects_matched()
            run_evaluation(log=False)
            extra = {
                "stopped_early": bool(stopped_early),
                "stop_reason": stopped_early or f"reached --steps={config.steps}",
                "best_step": int(early_stopping.best_step.numpy()),
                "best_validation_loss": float(early_stopping.best_loss.numpy()),
                "best_checkpoint": best_manager.latest_checkpoint,
            }
        wall = time.perf_counter() - start
        logger.close()
        plugin_bytes = budget.bytes_per_plugin(run_dir.path)
        print_fn("event files: " + budget.describe(plugin_bytes))
        result = TrainResult(
            step=step,
            test=last_test,
            train=last_train,
            wall_time_s=wall,
            examples_per_sec=trained_examples / wall,
            checkpoint=extra.get("best_checkpoint", manager.latest_checkpoint),
            weights_digest=weights_digest(model),
            trace_counts=trace_counts(train_loop, evaluate, gradients, logger),
            event_bytes=plugin_bytes,
        )
        run_dir.finish(
            "completed",
            step=step,
            final_metrics={"test": last_test, "train": last_train},
            wall_time_s=round(wall, 3),
            examples_per_sec=round(result.examples_per_sec, 1),
            weights_digest=result.weights_digest,
            event_bytes=plugin_bytes,
            epoch=epoch_of(step, per_epoch),
            steps_per_epoch=per_epoch,
            **extra,
        )
        if is_chief:
            hparams_lib.write_session_end(run_dir.path, "completed")
        return result
    except (TrainingInterruptedError, KeyboardInterrupt) as err:
        _record_end(run_dir, "interrupted", last_saved, err)
        raise
    except BaseException as err:
        _record_end(run_dir, "failed", step, err)
        if is_chief:
            reason = f"{type(err).__name__}: {err}"
            hparams_lib.write_session_end(run_dir.path, "failed", reason)
        raise
    finally:
        stop.uninstall()
        logger.close()


def trace_counts(
    train_loop: Callable, evaluate: Callable, gradients: Callable, logger: SummaryLogger
) -> dict[str, int]:
    """Traces per compiled function (`experimental_get_tracing_count`).

    1 each means nothing retraced (a retrace costs a recompile mid-run).
    """
    counts = {
        "train_loop": train_loop.experimental_get_tracing_count(),
        "train_step": train_loop.step_fn.experimental_get_tracing_count(),
        "evaluate": evaluate.experimental_get_tracing_count(),
        "gradients": gradients.experimental_get_tracing_count(),
    }
    counts.update(logger.tracing_counts())
    return counts


def _record_end(run_dir: RunDir, status: str, step: int, err: BaseException) -> None:
    """Records how a run ended; if even that fails (a full disk), the record
    stays `running` with a dead pid, which `--resume` accepts."""
    with contextlib.suppress(RunDirError):
        run_dir.finish(status, step=step, error=f"{type(err).__name__}: {err}")
