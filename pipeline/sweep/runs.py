"""A trial's runs on disk: their names and configs, and what an earlier life left.

One trial is one variant (a configuration); its `--repeats` runs train it
with seeds SEED, SEED+1, ... under `LOGDIR/SWEEP_NAME/`. Runs are named by
their values for a grid (`learning_rate=0.1,seed=0`) and by trial number
otherwise (`trial=0007,seed=0`), so a sweep always plans the same names. A
run directory an earlier life of the sweep left is taken as it is when it
completed with the same flags, refused when it completed with others, and
moved aside (`NAME.incomplete-N`, marked failed) when it is half done.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import itertools
import os
import pathlib
import sys
from collections.abc import Mapping, Sequence
from typing import Any

from pipeline import config as config_lib
from pipeline import processes, variants
from pipeline.runs import checkpoints, rundir
from pipeline.runs.rundir import config_to_flagfile
from pipeline.sweep import SweepError, space
from pipeline.tensorboard import hparams as hparams_lib


@dataclasses.dataclass(frozen=True)
class PlannedRun:
    """One seed of one variant, with its resolved config."""

    name: str
    config: config_lib.TrainConfig
    repeat: int

    @property
    def path(self) -> pathlib.Path:
        return pathlib.Path(self.config.logdir) / self.name


def trial_runs(
    base: config_lib.TrainConfig,
    experiment: pathlib.Path,
    axes: Sequence[space.Axis],
    repeats: int,
    params: Mapping[str, Any],
    number: int | None = None,
) -> list[PlannedRun]:
    """The runs of a trial with `params`, one per repeat; named by trial
    `number`, or by their values when `number` is None (a grid)."""
    pairs = space.overrides(axes, params)
    runs = []
    for repeat in range(repeats):
        seed = int(params.get("seed", base.seed + repeat))
        if number is None:
            name = space.run_name(pairs, seed)
        else:
            name = f"trial={number:04d},seed={seed}"
        config = space.resolve(base, pairs, seed)
        config = dataclasses.replace(config, logdir=str(experiment), run_name=name)
        runs.append(PlannedRun(name, config, repeat))
    return runs


def grid_runs(
    base: config_lib.TrainConfig,
    axes: Sequence[space.Axis],
    repeats: int,
    sweep_name: str,
) -> list[PlannedRun]:
    """Every grid point x repeat, in grid order (what `--dry_run` lists).

    Raises:
      SweepError: a value its flag refuses, `seed` both an axis and repeated,
        a name too long, or two runs with the same name.
    """
    space.check_repeats(axes, repeats)
    rundir.check_name(base.logdir, sweep_name, "--sweep_name")
    experiment = pathlib.Path(base.logdir) / sweep_name
    runs = []
    for point in itertools.product(*(axis.choices for axis in axes)):
        params = dict(zip((axis.flag for axis in axes), point, strict=True))
        runs += trial_runs(base, experiment, axes, repeats, params)
    for run in runs:
        rundir.check_name(experiment, run.name, f"--grid (run {run.name[:40]}...)")
    counts = collections.Counter(run.name for run in runs)
    clashes = [name for name, n in counts.items() if n > 1]
    if clashes:
        raise SweepError(f"grid values give the same run name twice: {clashes[0]}")
    return runs


def read_record(path: pathlib.Path) -> dict:
    """The run's record as a dict, or {} if it has none (yet) or it is damaged."""
    try:
        return rundir.load_record(path).data
    except rundir.RecordError:
        return {}


def defining(config: dict) -> dict:
    """The flags that define a variant (`pipeline.variants`, the one rule)."""
    return variants.defining_config(config)


def resumable(path: pathlib.Path) -> bool:
    """Whether an interrupted sweep left this run to continue: recorded
    `interrupted` (or `running`, its process gone) with a checkpoint."""
    record = read_record(path)
    status = record.get("status")
    if status == "running" and processes.owner_alive(record):
        return False
    has_checkpoint = checkpoints.latest_step(path / rundir.CHECKPOINT_DIR) > 0
    return status in ("interrupted", "running") and has_checkpoint


def mark_failed(path: pathlib.Path, reason: str) -> None:
    """Marks a run whose process is gone `failed` (record and HParams session),
    by `RunDir.mark_failed`, the rule the training loop uses too."""
    rundir.RunDir(path).mark_failed(
        reason, end_session=functools.partial(hparams_lib.end_failed_run, refresh=False)
    )


def move_aside(path: pathlib.Path, record: dict) -> pathlib.Path:
    """Renames a half-done run to `NAME.incomplete-N` and marks it failed: it
    stays visible (TensorBoard, compare) and its name is free for a fresh run."""
    n = 1
    while path.with_name(f"{path.name}.incomplete-{n}").exists():
        n += 1
    target = path.with_name(f"{path.name}.incomplete-{n}")
    os.replace(path, target)
    mark_failed(
        target,
        record.get("error")
        or "interrupted: the process ended without recording a status "
        "(found by pipeline-sweep)",
    )
    return target


def triage(
    runs: Sequence[PlannedRun],
) -> tuple[list[PlannedRun], list[PlannedRun], list[str]]:
    """(already completed, to run, notes); half-done runs are moved aside.

    Raises:
      SweepError: a completed run was trained with other flags, or a
        half-done run's process is still alive.
    """
    done, todo, notes = [], [], []
    for run in runs:
        if not run.path.exists():
            todo.append(run)
            continue
        record = read_record(run.path)
        if record.get("status") == "completed":
            theirs = defining(record.get("config", {}))
            ours = defining(config_lib.config_to_dict(run.config))
            diff = sorted(
                k for k in ours.keys() & theirs.keys() if ours[k] != theirs[k]
            )
            if diff:
                k = diff[0]
                raise SweepError(
                    f"{run.path}: completed with other flags ({k}={theirs[k]} there, "
                    f"{ours[k]} now); use another --sweep_name"
                )
            done.append(run)
            continue
        if record.get("status") == "running" and processes.owner_alive(record):
            raise SweepError(
                f"{run.path}: still running (pid {record['pid']}); "
                "wait for it or stop it"
            )
        target = move_aside(run.path, record)
        notes.append(f"moved half-done {run.path} aside to {target.name}")
        todo.append(run)
    return done, todo, notes


def metric_value(record: dict[str, Any], metric: str) -> float | None:
    """The run's final value of `metric` (`test/accuracy`) from its record."""
    split, _, name = metric.partition("/")
    value = record.get("final_metrics", {}).get(split, {}).get(name)
    return float(value) if isinstance(value, (int, float)) else None


def train_command(run: PlannedRun, resume: bool = False) -> list[str]:
    """The `pipeline-train` command line of `run` (its full resolved flags),
    or the one that continues it from its checkpoint."""
    return [sys.executable, "-m", "pipeline.cli.train", *train_flags(run, resume)]


def train_flags(run: PlannedRun, resume: bool = False) -> list[str]:
    """The flags of `train_command` (what a warm trainer parses)."""
    if resume:
        return ["--resume", f"--run={run.path}"]
    lines = config_to_flagfile(run.config).splitlines()
    return [*lines, f"--run_name={run.name}"]
