"""`pipeline-sweep` from its options to a finished study: plan, open, work, sum up.

Everything that can be refused is refused before the first trial: a search
space naming an unknown flag or a malformed range, values the flags reject,
a storage that cannot be reached, a study that exists with another space,
direction or base flags.
"""

from __future__ import annotations

import dataclasses
import pathlib
import sys

from optuna.trial import TrialState

from pipeline import config as config_lib
from pipeline.runs import rundir
from pipeline.tensorboard import hparams as hparams_lib
from pipeline.tools import search_space, worker
from pipeline.tools import study as study_lib
from pipeline.tools import sweep as sweep_lib
from pipeline.training import trial as trial_lib

SweepError = sweep_lib.SweepError


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


def _axes(request: Request) -> list[search_space.Axis]:
    grid = search_space.from_grid(sweep_lib.parse_grid(request.grid))
    axes = grid + search_space.parse_search(request.search, seen=grid)
    if request.repeats > 1 and any(axis.flag == "seed" for axis in axes):
        raise SweepError("--grid=seed=... and --repeats>1 both set the seed; use one")
    search_space.check_against_flags(request.base, axes)
    return axes


def _total(request: Request, sampler: str, axes: list[search_space.Axis]) -> int:
    if sampler != "grid":
        if request.trials is None:
            raise SweepError(f"--trials: required with --sampler={sampler}")
        return request.trials
    points = search_space.grid_size(axes)
    if request.trials is not None and request.trials > points:
        raise SweepError(f"--trials={request.trials}: the grid has {points} points")
    return request.trials or points


def plan(request: Request) -> worker.Sweep:
    """Checks the options and returns the sweep every worker will run.

    Raises:
      SweepError: one line naming the option at fault.
    """
    axes = _axes(request)
    sampler = request.sampler or ("tpe" if request.search else "grid")
    total = _total(request, sampler, axes)
    base = request.base
    rundir.check_name(base.logdir, request.sweep_name, "--sweep_name")
    experiment = pathlib.Path(base.logdir) / request.sweep_name
    if sampler == "grid" and all(axis.is_choice for axis in axes):
        # The longest run name the grid gives must fit the filesystem too.
        longest = [(axis.flag, max(axis.choices, key=len)) for axis in axes]
        name = sweep_lib.run_name(longest, base.seed + request.repeats - 1)
        rundir.check_name(experiment, name, f"--grid (run name {name[:40]}...)")
    steps = base.steps * request.repeats
    direction = request.direction or study_lib.METRICS[request.metric]
    return worker.Sweep(
        name=request.sweep_name,
        experiment=experiment,
        base=base,
        axes=tuple(axes),
        repeats=request.repeats,
        total=total,
        metric=request.metric,
        direction=direction,
        storage_url=request.storage or study_lib.default_storage(experiment),
        sampler=sampler,
        pruner=trial_lib.PrunerSpec(
            name=request.pruner,
            startup_trials=request.startup_trials,
            min_resource=min(base.eval_every or base.steps, base.steps),
            max_resource=steps,
            worse_than=request.prune_worse_than,
            floor_from_step=request.prune_from_step,
            direction=direction,
        ),
        startup_trials=request.startup_trials,
    )


def print_plan(sweep: worker.Sweep) -> None:
    """What `--dry_run` shows: the space, the total and, for a grid, every run."""
    print(_headline(sweep))
    for axis in sweep.axes:
        print(f"  {axis.flag}: {axis.spec}")
    if sweep.sampler == "grid":
        for run in sweep_lib.plan(
            sweep.base,
            [sweep_lib.GridAxis(a.flag, a.choices) for a in sweep.axes],
            sweep.repeats,
            sweep.name,
        ):
            print(f"  {run.name}")
    print(f"study: {trial_lib.safe_url(sweep.storage_url)}")


def _headline(sweep: worker.Sweep) -> str:
    if sweep.sampler == "grid":
        size = (
            f"{sweep.total * sweep.repeats} runs "
            f"({sweep.total} combinations x {sweep.repeats} repeats)"
        )
    else:
        pruner = sweep.pruner
        floor = ""
        if pruner.worse_than is not None:
            bound = "<" if pruner.direction == "maximize" else ">"
            floor = (
                f" + floor {sweep.metric} {bound} {pruner.worse_than:g} "
                f"from step {pruner.floor_from_step}"
            )
        size = (
            f"{sweep.total} trials x {sweep.repeats} repeats, {sweep.sampler} "
            f"sampler, pruner {pruner.name}{floor}, {sweep.direction} {sweep.metric}"
        )
    return f"sweep {sweep.name}: {size} in {sweep.experiment}"


def _definition(sweep: worker.Sweep) -> study_lib.StudyDefinition:
    base = config_lib.config_to_dict(sweep.base)
    return study_lib.StudyDefinition(
        space=search_space.describe(sweep.axes),
        sampler=sweep.sampler,
        metric=sweep.metric,
        direction=sweep.direction,
        repeats=sweep.repeats,
        base={k: v for k, v in base.items() if k not in config_lib.NOT_HPARAMS},
    )


def open_sweep_study(sweep: worker.Sweep):
    """Connects, creates or joins the study, and checks it is this sweep's."""
    study_lib.quiet_optuna()
    storage = study_lib.connect(sweep.storage_url)
    sampler = study_lib.make_sampler(
        sweep.sampler, sweep.axes, sweep.base.seed, sweep.startup_trials
    )
    definition = _definition(sweep)
    study = study_lib.open_study(
        storage,
        sweep.storage_url,
        sweep.name,
        definition,
        sampler,
        sweep.pruner.build(),
    )
    worker.check_completed_runs(sweep, study)
    study_lib.check_base(study, sweep.storage_url, definition)
    return study


def run(sweep: worker.Sweep, workers: int) -> int:
    """Runs `workers` local workers on the sweep's study; the exit status.

    No lock on the sweep directory: several workers (threads here, other
    `pipeline-sweep` processes, other machines) share one sweep by design;
    `study.claim_lock` serialises what must not happen twice.
    """
    print(_headline(sweep))
    study = open_sweep_study(sweep)
    progress = worker.Progress(sweep, study)
    with study_lib.claim_lock(sweep.storage_url, sweep.name):
        for dead in study_lib.fail_dead_trials(study):
            worker.runs_of_dead_trial_failed(sweep, dead, progress)
    counts = study_lib.counts(study.get_trials(deepcopy=False))
    to_run = max(0, sweep.total - counts.finished - counts.running)
    others = [
        f"{n} {what}"
        for n, what in (
            (counts.pruned, "pruned"),
            (counts.failed, "failed"),
            (counts.running, "running elsewhere"),
        )
        if n
    ]
    print(
        f"{counts.completed} already completed, {to_run} to run, "
        f"{workers} at a time" + (f" ({', '.join(others)})" if others else "")
    )
    differing = {axis.flag for axis in sweep.axes}
    if sweep.repeats > 1:
        differing.add("seed")
    hparams_lib.write_experiment_config(sweep.experiment, differing)
    try:
        outcomes = worker.run_workers(sweep, study, workers, progress)
    except KeyboardInterrupt:
        print(
            "pipeline-sweep: interrupted; run the same command again to finish",
            file=sys.stderr,
        )
        return 130
    return _summary(sweep, study, progress, outcomes)


def _summary(sweep, study, progress, outcomes) -> int:
    counts = study_lib.counts(study.get_trials(deepcopy=False))
    print(
        f"sweep {sweep.name}: {counts.completed}/{sweep.total} completed, "
        f"{counts.pruned} pruned, {counts.failed} failed, {counts.running} running; "
        f"{progress.best_text()}. Compare: pipeline-compare {sweep.experiment}"
    )
    failed = [o for o in outcomes if o.state == TrialState.FAIL]
    if failed:
        print(
            f"pipeline-sweep: error: {len(failed)} trials failed: "
            + "; ".join(
                f"trial {o.number} ({o.runs[0].name}): {o.message}" for o in failed
            ),
            file=sys.stderr,
        )
        return 1
    return 0
