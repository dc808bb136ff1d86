"""Early stopping, whole: the rule, its checkpointed state, the best model.

One object (`EarlyStopping`) is both the loop action and the state it keeps:
after each evaluation (the `Evaluate` action's finding on the chunk) it
updates the best validation loss, saves a new best model into
`checkpoints/best/` (its own manager, so the rotation of the regular
checkpoints never deletes it), and asks the run to stop once the loss has not
improved for `patience` evaluations. Its variables go into the run's
checkpoint under `early_stopping` (`Action.checkpointed`), so a resumed run
stops exactly where an uninterrupted one would. At a clean end it puts the
best model's weights back and reports its metrics, as Keras' `EarlyStopping`
(`restore_best_weights=True`) does.
"""

from __future__ import annotations

import math

import tensorflow as tf

from pipeline.training.actions import Action
from pipeline.training.chunks import Chunk, StopRequest
from pipeline.training.state import TrainState

BEST_DIR = "best"  # under the run's checkpoints/


class EarlyStopping(tf.Module, Action):
    """Stops when the validation loss has not improved for `patience` evaluations
    (0 = never); keeps the best model."""

    consumes = frozenset({"evaluation"})
    produces = frozenset({"stop"})

    def __init__(self, patience: int, min_delta: float = 0.0) -> None:
        super().__init__(name="early_stopping")
        self.patience = patience
        self.min_delta = min_delta
        self.best_loss = tf.Variable(math.inf, dtype=tf.float64, trainable=False)
        self.best_step = tf.Variable(0, dtype=tf.int64, trainable=False)
        self.bad_evaluations = tf.Variable(0, dtype=tf.int64, trainable=False)
        self.best_manager: tf.train.CheckpointManager | None = None

    @property
    def enabled(self) -> bool:
        return self.patience > 0

    def update(self, step: int, loss: float) -> bool:
        """Records one evaluation; True when `loss` is a new best."""
        if loss < float(self.best_loss.numpy()) - self.min_delta:
            self.best_loss.assign(loss)
            self.best_step.assign(step)
            self.bad_evaluations.assign(0)
            return True
        self.bad_evaluations.assign_add(1)
        return False

    @property
    def should_stop(self) -> bool:
        return self.enabled and int(self.bad_evaluations.numpy()) >= self.patience

    def reason(self, step: int) -> str:
        """One sentence saying why training stopped at `step`."""
        return (
            f"early stopping at step {step}: validation loss has not improved "
            f"for {int(self.bad_evaluations.numpy())} evaluations "
            f"(patience {self.patience}); best {float(self.best_loss.numpy()):.6f} "
            f"at step {int(self.best_step.numpy())}"
        )

    # The loop action.

    def checkpointed(self) -> dict[str, tf.Module]:
        return {"early_stopping": self}

    def start(self, state: TrainState) -> None:
        if self.enabled:
            self.best_manager = tf.train.CheckpointManager(
                tf.train.Checkpoint(model=state.model),
                str(state.run_dir.checkpoint_dir / BEST_DIR),
                max_to_keep=1,
            )

    def __call__(self, state: TrainState, chunk: Chunk) -> Chunk | None:
        if not self.enabled or not chunk.evaluated:
            return None
        if self.update(chunk.step, chunk.evaluation.validation["loss"]):
            self.best_manager.save(checkpoint_number=chunk.step)
        if not self.should_stop:
            return None
        stop = StopRequest(self.reason(chunk.step))
        state.logger.text("train", chunk.step, "early_stopping", stop.reason)
        best_step = float(self.best_step.numpy())
        state.logger.scalars("train", chunk.step, {"events/early_stopped": best_step})
        state.print_fn(stop.reason)
        return chunk.found(stop=stop)

    def completed(self, state: TrainState, chunk: Chunk) -> Chunk | None:
        """Puts the best model back; its metrics become the run's final ones."""
        manager = self.best_manager
        if manager is None or not manager.latest_checkpoint:
            return None
        best = manager.latest_checkpoint
        tf.train.Checkpoint(model=state.model).restore(
            best
        ).assert_existing_objects_matched()
        best_step = int(self.best_step.numpy())
        stop = chunk.stop
        record = {
            "stopped_early": stop is not None,
            "stop_reason": stop.reason
            if stop
            else f"reached --steps={chunk.last_step}",
            "best_step": best_step,
            "best_validation_loss": float(self.best_loss.numpy()),
            "best_checkpoint": best,
        }
        return chunk.found(
            evaluation=state.evaluate_splits(best_step),
            record={**chunk.record, **record},
        )
