"""A sweep's Optuna study: its definition, sampler, pruner, counts, dead workers.

The study is the source of truth for what is done, running, pruned, diverged
or failed, and every worker that names the same study and storage joins it.
It records its definition (search space, sampler, metric, direction,
repeats, base flags) when created; a worker asking for anything else is
refused, naming what differs. A running trial whose worker died is failed and
queued again with the same parameters (Optuna's
`RetryHeartbeatStaleTrialCallback`): by its heartbeat (`fail_stale_trials`),
or at once by its pid when the worker ran on this machine.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import socket
import threading
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import optuna
from optuna.trial import FrozenTrial, TrialState

from pipeline import processes
from pipeline.sweep import SweepError, optuna_adapter, space
from pipeline.sweep.storage import safe_url

# Metric -> the direction it implies.
METRICS = {"test/accuracy": "maximize", "test/loss": "minimize"}
DEFINITION_ATTR = "pipeline_sweep"
# A trial's user attribute `outcome` is "diverged" when its loss or weights
# turned NaN/Inf; Optuna's state for it is FAIL (its NaN-objective rule).
DIVERGED = "diverged"


def quiet_optuna() -> None:
    """The sweep prints every trial's outcome itself; Optuna's own lines
    (a trial FAILed for a NaN value, experimental features) would repeat them."""
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    logging.getLogger("optuna").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    warnings.filterwarnings("ignore", module="optuna")


@dataclasses.dataclass(frozen=True)
class StudyDefinition:
    """What a study is: every worker joining it must ask for exactly this."""

    space: dict[str, str]
    sampler: str
    metric: str
    direction: str
    repeats: int
    base: dict[str, Any]

    def to_attr(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class PrunerSpec:
    """Which pruner a study uses: every worker builds the same one.

    The floor is Optuna's `ThresholdPruner`, judged first, then `name`'s.
    Steps are the trial's: repeat R's evaluations come after the earlier
    repeats' (R x steps), so trials are compared at equal cost.
    """

    name: str = "none"
    startup_trials: int = 5
    min_resource: int = 1
    max_resource: int = 1
    worse_than: float | None = None
    floor_from_step: int = 0
    direction: str = "maximize"

    def build(self) -> optuna.pruners.BasePruner:
        if self.name == "median":
            pruner = optuna.pruners.MedianPruner(n_startup_trials=self.startup_trials)
        elif self.name == "hyperband":
            pruner = optuna.pruners.HyperbandPruner(
                min_resource=self.min_resource, max_resource=self.max_resource
            )
        else:
            pruner = optuna.pruners.NopPruner()
        if self.worse_than is None:
            return pruner  # unwrapped: samplers read Hyperband's brackets
        bound = "lower" if self.direction == "maximize" else "upper"
        floor = optuna.pruners.ThresholdPruner(
            **{bound: self.worse_than}, n_warmup_steps=self.floor_from_step
        )
        label = f"floor (--prune_worse_than={self.worse_than:g})"
        return FirstSaysStop([(label, floor), (f"{self.name} pruner", pruner)])

    def said_stop(self, pruner: optuna.pruners.BasePruner) -> str:
        """Which rule stopped the trial this thread just asked about."""
        if isinstance(pruner, FirstSaysStop):
            return pruner.said.label
        return f"{self.name} pruner"


class FirstSaysStop(optuna.pruners.BasePruner):
    """Pruners asked in order; the first that says stop stops the trial, and
    is remembered (per thread: each worker thread asks for its own trial)."""

    def __init__(self, pruners: Sequence[tuple[str, optuna.pruners.BasePruner]]):
        self.pruners = list(pruners)
        self.said = threading.local()

    def prune(self, study: optuna.Study, trial: FrozenTrial) -> bool:
        for label, pruner in self.pruners:
            if pruner.prune(study, trial):
                self.said.label = label
                return True
        return False


def trial_seed(base_seed: int, number: int) -> int:
    """The sampler's seed for drawing trial `number`: seeding per trial, not per
    process, is what lets processes share a study without replaying each
    other's draws (a second machine, a re-run continuing the study)."""
    return int(np.random.SeedSequence([base_seed, number]).generate_state(1)[0])


def make_sampler(
    name: str, axes: Sequence[space.Axis], seed: int, startup_trials: int
) -> optuna.samplers.BaseSampler:
    """`tpe`, `random` or `grid` (every axis a choice)."""
    if name == "grid":
        grid = {a.flag: list(a.choices) for a in axes}
        return optuna.samplers.GridSampler(grid, seed=seed)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=startup_trials)


def open_study(
    storage: optuna.storages.BaseStorage,
    url: str,
    name: str,
    definition: StudyDefinition,
    pruner: optuna.pruners.BasePruner,
) -> optuna.Study:
    """Creates the study, or joins it if it exists with the same definition.
    (The caller holds the study's claim lock.)

    Raises:
      SweepError: naming the study and the first thing that differs.
    """
    study = optuna.create_study(
        storage=storage,
        study_name=name,
        pruner=pruner,
        direction=definition.direction,
        load_if_exists=True,
    )
    theirs = study.user_attrs.get(DEFINITION_ATTR)
    if theirs is None:
        study.set_user_attr(DEFINITION_ATTR, definition.to_attr())
        return study
    where = f"study {name!r} in {safe_url(url)}"
    if study.direction.name.lower() != definition.direction:
        raise SweepError(
            f"--direction={definition.direction}: {where} is "
            f"{study.direction.name.lower()}; use another --sweep_name"
        )
    ours = definition.to_attr()
    labels = {"space": "search space", "sampler": "--sampler", "metric": "--metric"}
    for key, label in {**labels, "repeats": "--repeats"}.items():
        if theirs.get(key) != ours[key]:
            raise SweepError(
                f"{where} has another {label} ({_text(theirs.get(key))} there, "
                f"{_text(ours[key])} now); use another --sweep_name"
            )
    return study


def check_base(study: optuna.Study, url: str, definition: StudyDefinition) -> None:
    """Refuses other base flags once a trial finished with the study's; a study
    with no finished trial takes the new ones (a sweep killed in its first
    trial may be re-run with others)."""
    where = f"study {study.study_name!r} in {safe_url(url)}"
    theirs = study.user_attrs.get(DEFINITION_ATTR, {}).get("base", {})
    ours = definition.base
    # Flags both define: a study recorded by an older version may name more.
    differ = sorted(k for k in ours.keys() & theirs.keys() if ours[k] != theirs[k])
    if not differ:
        return
    finished = study.get_trials(
        deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)
    )
    if not finished:
        study.set_user_attr(DEFINITION_ATTR, definition.to_attr())
        return
    k = differ[0]
    raise SweepError(
        f"{where} has other base flags ({k}={theirs.get(k)} there, "
        f"{ours.get(k)} now); use another --sweep_name"
    )


def _text(value: Any) -> str:
    if isinstance(value, Mapping):
        return " ".join(f"{k}={v}" for k, v in value.items()) or "none"
    return str(value)


@dataclasses.dataclass(frozen=True)
class Counts:
    """Where the study's trials stand, in trials; `used` counts against --trials."""

    completed: int = 0
    diverged: int = 0
    pruned: int = 0
    failed: int = 0
    running: int = 0
    waiting: int = 0

    @property
    def finished(self) -> int:
        return self.completed + self.diverged + self.pruned + self.failed

    @property
    def used(self) -> int:
        return self.finished + self.running + self.waiting


def outcome(trial: FrozenTrial) -> str:
    """`completed`, `diverged`, `pruned`, `failed`, `running` or `waiting`."""
    if trial.state == TrialState.FAIL and trial.user_attrs.get("outcome") == DIVERGED:
        return DIVERGED
    return {TrialState.COMPLETE: "completed", TrialState.FAIL: "failed"}.get(
        trial.state, trial.state.name.lower()
    )


def counts(trials: Sequence[FrozenTrial]) -> Counts:
    """The study's counts; a failed trial queued again is counted by its retry."""
    retried = {n for t in trials for n in t.system_attrs.get("retry_history", [])}
    tally = {field.name: 0 for field in dataclasses.fields(Counts)}
    for trial in trials:
        if trial.number not in retried or trial.state != TrialState.FAIL:
            tally[outcome(trial)] += 1
    return Counts(**tally)


def worker_attr() -> dict[str, Any]:
    """Who runs a trial: recorded on it so a dead worker here is seen at once."""
    return {"host": socket.gethostname(), "pid": os.getpid()}


def fail_dead_trials(
    study: optuna.Study, storage: optuna.storages.BaseStorage
) -> list[FrozenTrial]:
    """Fails, and queues again, running trials whose worker is gone: on this
    machine by its pid, elsewhere by Optuna's heartbeat. Returns them."""
    failed = []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        worker = trial.user_attrs.get("worker")
        if not worker or worker.get("host") != socket.gethostname():
            continue
        if processes.owner_alive(worker):
            continue
        dead = optuna_adapter.fail_running_trial(
            storage, study.study_name, trial.number
        )
        if dead is not None:
            retry = optuna.storages.RetryHeartbeatStaleTrialCallback
            retry(inherit_intermediate_values=True)(study, dead)
            failed.append(dead)
    before = {t.number for t in study.get_trials(states=(TrialState.FAIL,))}
    optuna.storages.fail_stale_trials(study)
    return failed + [
        t for t in study.get_trials(states=(TrialState.FAIL,)) if t.number not in before
    ]
