"""What passes between the loop and its actions: a chunk's request and its findings.

Before a chunk, each action says what it needs of the compiled call
(`Wants`: histograms, the op graph, a profiled step); the loop merges them
into one `ChunkRequest` that `TrainState.train_until` executes as it is.
After the chunk, the actions are called in order with the `Chunk`; what one
finds for the others (an `Evaluation`, a `StopRequest`, entries for the run
record) goes on a copy of the chunk it returns, never into shared state, and
each action declares the findings it `produces` and `consumes`, so an order
in which a consumer runs before its producer is refused
(`pipeline.training.actions.check_order`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import numpy as np

# The findings an action may put on a chunk (`Action.produces`).
FINDINGS = ("evaluation", "stop", "record")


@dataclasses.dataclass(frozen=True)
class Wants:
    """What one action needs of the next compiled call."""

    # Histograms of the weights after its last step and of the gradients that
    # step applied.
    histograms: bool = False
    # Its op graph written as the run graph (`SummaryLogger.trace_graph`).
    graph: bool = False
    # One step, outside the compiled loop, marked as a step in the trace.
    profiled_step: bool = False

    def __or__(self, other: Wants) -> Wants:
        return Wants(
            *(a or b for a, b in zip(self.astuple(), other.astuple(), strict=True))
        )

    def astuple(self) -> tuple[bool, ...]:
        return dataclasses.astuple(self)


@dataclasses.dataclass(frozen=True)
class ChunkRequest:
    """The next compiled call: train up to step `end`, doing what `wants` says."""

    end: int
    wants: Wants = Wants()


@dataclasses.dataclass(frozen=True)
class Evaluation:
    """Loss and accuracy per held-out split (`test`, `validation`) at `step`."""

    step: int
    splits: Mapping[str, Mapping[str, float]]

    @property
    def test(self) -> dict[str, float]:
        return dict(self.splits.get("test", {}))

    @property
    def validation(self) -> dict[str, float]:
        return dict(self.splits.get("validation", {}))


@dataclasses.dataclass(frozen=True)
class StopRequest:
    """An action asks the run to end cleanly after this chunk (a checkpoint is
    saved at its step), recorded with `status` (`completed`, or `pruned`)."""

    reason: str
    status: str = "completed"


@dataclasses.dataclass(frozen=True)
class Chunk:
    """What one compiled call trained (steps `first_step`..`step`) and what the
    actions called so far found there.

    `outputs[name][i]` is the value of metric `name` (loss, accuracy) at step
    `first_step + i`.
    """

    first_step: int
    step: int
    last_step: int  # --steps: the run's final step
    outputs: dict[str, np.ndarray]
    seconds: float
    examples: int
    # On a histogram chunk (`Wants.histograms`): the TensorBoard histogram
    # buckets of the trainable variables after its last step and of the
    # gradients that step applied, one `[weights + gradients, buckets, 3]`
    # tensor, weights first (computed in the chunk's compiled call:
    # `steps.make_train_loop`'s `with_histograms`); None on other chunks.
    histograms: object = None
    # Findings (`FINDINGS`). The latest evaluation, at its own step (`Evaluate`
    # puts it on every chunk; `evaluated` says whether it is this chunk's).
    evaluation: Evaluation | None = None
    stop: StopRequest | None = None
    # What the run record (run.json) adds at a clean end (`Action.completed`).
    record: Mapping[str, object] = dataclasses.field(default_factory=dict)

    @property
    def is_last(self) -> bool:
        """True for the chunk that ends at the run's final step."""
        return self.step == self.last_step

    @property
    def evaluated(self) -> bool:
        """True when the held-out splits were evaluated at this chunk's step."""
        return self.evaluation is not None and self.evaluation.step == self.step

    @property
    def examples_per_sec(self) -> float:
        return self.examples / self.seconds

    @property
    def train_metrics(self) -> dict[str, float]:
        """Loss and accuracy at the chunk's last step."""
        return {
            name: float(self.outputs[name][-1])
            for name in ("loss", "accuracy")
            if name in self.outputs and len(self.outputs[name])
        }

    def found(self, **findings) -> Chunk:
        """This chunk with `findings` (`evaluation=`, `stop=`, `record=`) added."""
        return dataclasses.replace(self, **findings)
