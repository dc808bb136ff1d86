"""`pipeline-sweep` from its options to a finished study: plan, open, work, sum up.

Everything that can be refused is refused before the first trial: a search
space naming an unknown flag or a malformed range, values the flags reject,
a storage that cannot be reached, a study that exists with another space,
direction or base flags. The exit status says whether the search ran, not
what it found: 0 when every trial ended as a trial can (completed, pruned,
diverged); 1 when a trial crashed or the input or storage was bad; 130 when
interrupted.
"""

from __future__ import annotations

import dataclasses
import pathlib
import sys

import optuna

from pipeline import config as config_lib
from pipeline.runs import rundir
from pipeline.sweep import SweepError, runs, space
from pipeline.sweep import storage as storage_lib
from pipeline.sweep import study as study_lib
from pipeline.sweep import trainer as trainer_lib
from pipeline.sweep.worker import (
    Progress,
    Sweep,
    dead_trial_runs_failed,
    run_workers,
    seeds,
)


@dataclasses.dataclass(frozen=True)
class Request:
    """The sweep's options as the user gave them (plain values, no FLAGS)."""

    base: config_lib.TrainConfig
    sweep_name: str
    grid: tuple[str, ...] = ()
    search: tuple[str, ...] = ()
    sampler: str | None = None
    trials: int | None = None
    repeats: int = 1
    pruner: str = "none"
    startup_trials: int = 5
    prune_worse_than: float | None = None
    prune_from_step: int = 0
    metric: str = "test/accuracy"
    direction: str | None = None
    storage: str | None = None
    trainer_growth_mb: int = trainer_lib.GROWTH_MB


def _total(request: Request, sampler: str, axes: list[space.Axis]) -> int:
    if sampler != "grid":
        if request.trials is None:
            raise SweepError(f"--trials: required with --sampler={sampler}")
        return request.trials
    points = space.grid_size(axes)
    if request.trials is not None and request.trials > points:
        raise SweepError(f"--trials={request.trials}: the grid has {points} points")
    return request.trials or points


def plan(request: Request) -> Sweep:
    """Checks the options and returns the sweep every worker will run.

    Raises:
      SweepError: one line naming the option at fault.
    """
    grid = space.parse_grid(request.grid)
    axes = grid + space.parse_search(request.search, seen=grid)
    space.check_repeats(axes, request.repeats)
    space.check_last_seed(request.base, request.repeats)
    space.check_against_flags(request.base, axes)
    sampler = request.sampler or ("tpe" if request.search else "grid")
    total = _total(request, sampler, axes)
    base = request.base
    rundir.check_name(base.logdir, request.sweep_name, "--sweep_name")
    experiment = pathlib.Path(base.logdir) / request.sweep_name
    if sampler == "grid" and all(axis.is_choice for axis in axes):
        # The longest run name the grid gives must fit the filesystem too.
        longest = [(axis.flag, max(axis.choices, key=len)) for axis in axes]
        name = space.run_name(longest, base.seed + request.repeats - 1)
        rundir.check_name(experiment, name, f"--grid (run name {name[:40]}...)")
    direction = request.direction or study_lib.METRICS[request.metric]
    storage_url = request.storage or storage_lib.default_storage(experiment)
    return Sweep(
        name=request.sweep_name,
        experiment=experiment,
        base=base,
        axes=tuple(axes),
        repeats=request.repeats,
        total=total,
        metric=request.metric,
        direction=direction,
        storage_url=storage_url,
        sampler=sampler,
        pruner=study_lib.PrunerSpec(
            name=request.pruner,
            startup_trials=request.startup_trials,
            min_resource=min(base.eval_every or base.steps, base.steps),
            max_resource=base.steps * request.repeats,
            worse_than=request.prune_worse_than,
            floor_from_step=request.prune_from_step,
            direction=direction,
        ),
        startup_trials=request.startup_trials,
        trainer_growth_mb=request.trainer_growth_mb,
    )


def headline(sweep: Sweep) -> str:
    """`sweep NAME: 8 trials x 2 seeds (16 runs), tpe sampler, ...`."""
    runs_text = f"{sweep.total} trials x {seeds(sweep.repeats)}"
    runs_text += f" ({sweep.total * sweep.repeats} runs), {sweep.sampler} sampler"
    pruner = sweep.pruner
    floor = ""
    if pruner.worse_than is not None:
        bound = "<" if pruner.direction == "maximize" else ">"
        floor = (
            f" + floor {sweep.metric} {bound} {pruner.worse_than:g} "
            f"from step {pruner.floor_from_step}"
        )
    return (
        f"sweep {sweep.name}: {runs_text}, pruner {pruner.name}{floor}, "
        f"{sweep.direction} {sweep.metric} in {sweep.experiment}"
    )


def print_plan(sweep: Sweep) -> None:
    """What `--dry_run` shows: the space, the total and, for a grid, every run."""
    print(headline(sweep))
    for axis in sweep.axes:
        print(f"  {axis.flag}: {axis.spec}")
    if sweep.sampler == "grid":
        for run in runs.grid_runs(sweep.base, sweep.axes, sweep.repeats, sweep.name):
            print(f"  {run.name}")
    print(f"study: {storage_lib.safe_url(sweep.storage_url)}")


def open_sweep_study(sweep: Sweep) -> tuple[optuna.Study, optuna.storages.BaseStorage]:
    """Connects, creates or joins the study, and checks it is this sweep's."""
    study_lib.quiet_optuna()
    storage = storage_lib.connect(sweep.storage_url)
    # A variant's flags, and the seed: it seeds every trial's draw.
    base = runs.defining(config_lib.config_to_dict(sweep.base))
    base["seed"] = sweep.base.seed
    definition = study_lib.StudyDefinition(
        space=space.describe(sweep.axes),
        sampler=sweep.sampler,
        metric=sweep.metric,
        direction=sweep.direction,
        repeats=sweep.repeats,
        base=base,
    )
    with storage_lib.claim_lock(sweep.storage_url, sweep.name):
        study = study_lib.open_study(
            storage, sweep.storage_url, sweep.name, definition, sweep.pruner.build()
        )
    # Completed runs here trained with other flags are named first (by run).
    completed = study.get_trials(
        deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)
    )
    planned = [r for t in completed for r in sweep.trial_runs(t.number, t.params)]
    runs.triage(sorted((r for r in planned if r.path.exists()), key=lambda r: r.name))
    study_lib.check_base(study, sweep.storage_url, definition)
    return study, storage


def run(sweep: Sweep, workers: int) -> int:
    """Runs `workers` local workers on the sweep's study; the exit status.

    Raises:
      SweepError: one line for bad input, or a storage that cannot be opened
        or stops answering (its runs stop at their last checkpoint; the same
        command continues them).
    """
    print(headline(sweep))
    with storage_lib.lost_is_one_line(sweep.storage_url):
        return _run(sweep, workers)


def _run(sweep: Sweep, workers: int) -> int:
    study, storage = open_sweep_study(sweep)
    progress = Progress(sweep, study)
    with storage_lib.claim_lock(sweep.storage_url, sweep.name):
        for dead in study_lib.fail_dead_trials(study, storage):
            dead_trial_runs_failed(sweep, dead, progress)
    counts = progress.counts()
    to_run = max(0, sweep.total - counts.finished - counts.running)
    others = [
        f"{n} {what}"
        for n, what in (
            (counts.diverged, "diverged"),
            (counts.pruned, "pruned"),
            (counts.failed, "failed"),
            (counts.running, "running elsewhere"),
        )
        if n
    ]
    print(
        f"{counts.completed} already completed, {to_run} to run, {workers} at a "
        "time" + (f" ({', '.join(others)})" if others else "")
    )
    differing = {axis.flag for axis in sweep.axes} | (
        {"seed"} if sweep.repeats > 1 else set()
    )
    try:
        # Nothing to run: no worker, so no training process (a TensorFlow
        # import) is started only to be closed.
        outcomes = run_workers(
            sweep, storage, workers if to_run else 0, progress, differing
        )
    except KeyboardInterrupt:
        print(
            "pipeline-sweep: interrupted; run the same command again to finish",
            file=sys.stderr,
        )
        return 130
    counts = progress.counts()
    print(
        f"sweep {sweep.name}: {counts.completed}/{sweep.total} completed, "
        f"{counts.diverged} diverged, {counts.pruned} pruned, {counts.failed} failed, "
        f"{counts.running} running; {progress.best_text()} by {sweep.metric}, "
        f"mean of {seeds(sweep.repeats)}. Compare: pipeline-compare {sweep.experiment}"
    )
    failed = [o for o in outcomes if o.state == "failed"]
    if failed:
        print(
            f"pipeline-sweep: error: {len(failed)} trials failed: "
            + "; ".join(
                f"trial {o.number} ({o.runs[-1].name}): {o.message}" for o in failed
            ),
            file=sys.stderr,
        )
        return 1
    return 0
