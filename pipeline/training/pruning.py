"""Pruning as a loop action: report each evaluation to the sweep's trial, maybe stop.

`ReportToStudy` runs after the standard actions, so on an evaluation step
the test metrics are fresh. When the study's pruner says stop, the run
saves a checkpoint at that step, logs `events/pruned` and a `pruned` text,
and ends cleanly with status `pruned` (`TrainState.end_status`): its record,
its HParams session and `pipeline-compare` say so, and it is not `failed`.
"""

from __future__ import annotations

from pipeline.training.actions import Action
from pipeline.training.state import Chunk, TrainState
from pipeline.training.trial import StudyReporter, TrialLink


class ReportToStudy(Action):
    """The sweep trial's side of training: report, and stop when pruned."""

    def __init__(self, link: TrialLink):
        self.link = link
        self.reporter: StudyReporter | None = None

    def start(self, state: TrainState) -> None:
        self.reporter = StudyReporter(self.link)
        # The run record names its trial from the first step on.
        state.run_dir.update_record(trial=self.link.record())

    def __call__(self, state: TrainState, chunk: Chunk) -> None:
        if state.last_evaluated != chunk.step:
            return
        values = {"test": state.last_test, "validation": state.last_validation}
        split = self.reporter.split
        pruned_by = self.reporter.report(chunk.step, split, values.get(split, {}))
        if not pruned_by:
            return
        if chunk.is_last:
            return  # trained to the end anyway: completed
        value = values[split][self.reporter.name]
        state.stop_reason = (
            f"pruned at step {chunk.step} by the study's {pruned_by} "
            f"({self.link.metric}={value:.4f}, trial {self.link.number} "
            f"of {self.link.study})"
        )
        state.end_status = "pruned"
        if chunk.step > state.last_saved:
            state.save_checkpoint(chunk.step)
        state.logger.text("train", chunk.step, "pruned", state.stop_reason)
        state.logger.scalars("train", chunk.step, {"events/pruned": float(chunk.step)})
        state.print_fn(state.stop_reason)
