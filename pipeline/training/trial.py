"""A sweep trial seen from its training process: where to report, and the pruner.

A `pipeline-sweep` worker asks its study for a trial, then starts a normal
`pipeline-train` process for each of the trial's runs. It tells that process
which trial it trains through the `PIPELINE_SWEEP_TRIAL` environment variable
(JSON: storage URL, study, trial number, metric, pruner) rather than argv,
where a PostgreSQL URL's password would be visible to every user of the
machine. The training process reports the metric to the trial at every
evaluation and asks the study's pruner whether to go on (the loop action
in `pipeline.training.pruning`); the worker, not this process, tells the
study how the trial ended.

No TensorFlow here: Optuna's storage calls only.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Mapping
from typing import Any

from pipeline.errors import TrainingError

ENV_VAR = "PIPELINE_SWEEP_TRIAL"
PRUNERS = ("none", "median", "hyperband")


@dataclasses.dataclass(frozen=True)
class PrunerSpec:
    """Which pruner a study uses and its settings: every process builds the same."""

    name: str = "none"
    startup_trials: int = 5
    min_resource: int = 1
    max_resource: int = 1
    # The floor: a trial whose metric is worse than `worse_than` at an
    # evaluation from step `floor_from_step` on is pruned, whatever `name` says.
    worse_than: float | None = None
    floor_from_step: int = 0
    direction: str = "maximize"

    def below_floor(self, step: int, value: float) -> bool:
        """True if `value` at `step` is worse than the floor (and the floor applies).

        A fixed bound, like Optuna's `ThresholdPruner`, checked here rather
        than through a pruner wrapper so it combines with any `name`
        (Hyperband's brackets are read by the sampler from the study's own
        pruner) and the run can say which rule stopped it.
        """
        if self.worse_than is None or step < self.floor_from_step:
            return False
        if self.direction == "maximize":
            return value < self.worse_than
        return value > self.worse_than

    def build(self):
        """The Optuna pruner (`none` never prunes)."""
        import optuna  # noqa: PLC0415

        if self.name == "median":
            return optuna.pruners.MedianPruner(n_startup_trials=self.startup_trials)
        if self.name == "hyperband":
            return optuna.pruners.HyperbandPruner(
                min_resource=self.min_resource, max_resource=self.max_resource
            )
        return optuna.pruners.NopPruner()


@dataclasses.dataclass(frozen=True)
class TrialLink:
    """Which study trial a training run belongs to, and how it reports.

    `step_offset` places repeat R's evaluations after the earlier repeats'
    (R x steps): a trial's steps count every step it trained, so the pruner
    compares trials at equal cost.
    """

    storage: str
    study: str
    number: int
    metric: str
    repeat: int = 0
    step_offset: int = 0
    pruner: PrunerSpec = PrunerSpec()

    def to_env(self) -> dict[str, str]:
        return {ENV_VAR: json.dumps(dataclasses.asdict(self))}

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> TrialLink | None:
        """The link the worker passed, or None for a run outside any sweep."""
        text = environ.get(ENV_VAR)
        if not text:
            return None
        values = json.loads(text)
        values["pruner"] = PrunerSpec(**values.get("pruner", {}))
        return cls(**values)

    def record(self) -> dict[str, Any]:
        """What the run record says about its trial (no storage password)."""
        return {
            "study": self.study,
            "number": self.number,
            "repeat": self.repeat,
            "storage": safe_url(self.storage),
            "metric": self.metric,
        }


def safe_url(url: str) -> str:
    """A storage URL with its password masked, for records and messages."""
    import sqlalchemy  # noqa: PLC0415

    try:
        return sqlalchemy.engine.make_url(url).render_as_string(hide_password=True)
    except sqlalchemy.exc.ArgumentError:
        return url.rpartition("@")[2]


class TrialFinishedError(TrainingError):
    """The study already ended this trial (its worker died and it was retried)."""


class StudyReporter:
    """Reports a run's evaluations to its trial and relays the pruner's verdict."""

    def __init__(self, link: TrialLink):
        import optuna  # noqa: PLC0415

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        self.link = link
        self.study = optuna.load_study(
            study_name=link.study, storage=link.storage, pruner=link.pruner.build()
        )
        storage = self.study._storage
        trial_id = storage.get_trial_id_from_study_id_trial_number(
            self.study._study_id, link.number
        )
        self.trial = optuna.trial.Trial(self.study, trial_id)
        self._trial_id = trial_id
        self.split, _, self.name = link.metric.partition("/")

    def report(self, step: int, split: str, values: Mapping[str, float]) -> str:
        """Reports `split`'s `values` at `step` if they hold the metric.

        Returns:
          What says stop (`"median pruner"`, `"floor (--prune_worse_than=F)"`),
          or "" to go on.

        Raises:
          TrialFinishedError: the study ended the trial already.
        """
        if split != self.split or self.name not in values:
            return ""
        value = float(values[self.name])
        if not math.isfinite(value):
            return ""
        state = self.study._storage.get_trial(self._trial_id).state
        if state.is_finished():
            raise TrialFinishedError(
                f"trial {self.link.number} of study {self.link.study!r} was "
                f"ended ({state.name}) while this run trained it"
            )
        self.trial.report(value, self.link.step_offset + step)
        pruner = self.link.pruner
        if pruner.below_floor(step, value):
            return f"floor (--prune_worse_than={pruner.worse_than:g})"
        if pruner.name != "none" and self.trial.should_prune():
            return f"{pruner.name} pruner"
        return ""
