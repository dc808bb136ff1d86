"""The sweep trial's side of training (a loop action): after each evaluation,
ask the worker whether to go on (`link.RunEnd`); stop `pruned` when told.

A pruned run saves a checkpoint at that step, logs `events/pruned` and a
`pruned` text, and ends cleanly with status `pruned`: its record, its HParams
session and `pipeline-compare` say so, and it is not `failed`.
"""

from __future__ import annotations

import math

from pipeline.sweep.link import RunEnd, TrialLink
from pipeline.training.actions import Action
from pipeline.training.chunks import Chunk, StopRequest
from pipeline.training.state import TrainState


class ReportToStudy(Action):
    """Reports each evaluation of the sweep's metric; stops when pruned."""

    consumes = frozenset({"evaluation"})
    produces = frozenset({"stop"})

    def __init__(self, link: TrialLink):
        self.link = link
        self.split, _, self.name = link.metric.partition("/")
        self.worker: RunEnd | None = None

    def start(self, state: TrainState) -> None:
        # The run record names its trial from its first write on: the
        # loop's begin write (`record_fields` of `train_and_evaluate`).
        self.worker = RunEnd(self.link.fd)

    def __call__(self, state: TrainState, chunk: Chunk) -> Chunk | None:
        if not chunk.evaluated:
            return None
        value = chunk.evaluation.splits.get(self.split, {}).get(self.name)
        if value is None or not math.isfinite(value):
            return None
        pruned_by = self.worker.ask(chunk.step, float(value))
        if not pruned_by or chunk.is_last:
            return None  # go on; or trained to the end anyway: completed
        stop = StopRequest(
            f"pruned at step {chunk.step} by the study's {pruned_by} "
            f"({self.link.metric}={value:.4f}, trial {self.link.number} "
            f"of {self.link.study})",
            status="pruned",
        )
        if chunk.step > state.last_saved:
            state.save_checkpoint(chunk.step)
        state.logger.text("train", chunk.step, "pruned", stop.reason)
        state.logger.scalars("train", chunk.step, {"events/pruned": float(chunk.step)})
        state.print_fn(stop.reason)
        return chunk.found(stop=stop)
