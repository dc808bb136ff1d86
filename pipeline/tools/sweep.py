"""A sweep's runs: the grid, their names and configs, and what is left to train.

Runs are named from their grid values and seed (`learning_rate=0.1,seed=1`),
so the same sweep always plans the same names under `LOGDIR/SWEEP_NAME/`.
Re-running a sweep therefore skips runs whose `run.json` says `completed`
(after checking they were trained with the same flags) and moves a half-done
run left by a killed sweep aside (`NAME.incomplete-1`, marked failed for the
HParams dashboard). The sweep worker (`pipeline.tools.worker`) trains each run
as its own `pipeline-train` process (`train_command`), so a crash or NaN in
one never takes the others down.
"""

from __future__ import annotations

import collections
import dataclasses
import itertools
import os
import pathlib
import re
import sys
from collections.abc import Sequence

from absl import flags

from pipeline import config as config_lib
from pipeline.errors import ConfigError
from pipeline.runs import rundir
from pipeline.runs.rundir import config_to_flagfile
from pipeline.tensorboard import hparams as hparams_lib
from pipeline.training import recovery

_UNSAFE = re.compile(r"[^A-Za-z0-9._+-]")


class SweepError(ConfigError):
    """The sweep cannot be planned or resumed as asked."""


@dataclasses.dataclass(frozen=True)
class GridAxis:
    """One `--grid=FLAG=V1,V2` argument: a training flag and its values (as typed)."""

    flag: str
    values: tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class PlannedRun:
    """One combination x repeat, with its resolved config."""

    name: str
    config: config_lib.TrainConfig
    overrides: tuple[tuple[str, str], ...]
    repeat: int

    @property
    def path(self) -> pathlib.Path:
        return pathlib.Path(self.config.logdir) / self.name


def parse_grid(specs: Sequence[str]) -> list[GridAxis]:
    """Parses `FLAG=V1,V2,...` (or `FLAG=A,B|C,D` for list-valued flags).

    Raises:
      SweepError: naming the spec if it is malformed, the flag is not a
        training flag, or a flag appears twice.
    """
    axes: list[GridAxis] = []
    for spec in specs:
        flag, sep, values_text = spec.partition("=")
        flag = flag.strip().lstrip("-")
        if not sep or not flag or not values_text.strip():
            raise SweepError(f"--grid={spec}: expected FLAG=VALUE1,VALUE2,...")
        if flag not in config_lib.FIELDS_BY_NAME or flag in config_lib.LOCATION_FLAGS:
            raise SweepError(f"--grid={spec}: {flag!r} is not a training flag")
        if any(axis.flag == flag for axis in axes):
            raise SweepError(f"--grid={spec}: {flag} is already a grid axis")
        separator = "|" if "|" in values_text else ","
        values = tuple(v.strip() for v in values_text.split(separator))
        if any(not v for v in values):
            raise SweepError(f"--grid={spec}: empty value")
        if len(set(values)) != len(values):
            raise SweepError(f"--grid={spec}: repeated value")
        axes.append(GridAxis(flag, values))
    return axes


def run_name(overrides: Sequence[tuple[str, str]], seed: int) -> str:
    """`flag=value,...,seed=N`: readable, and the same every time the sweep runs."""
    parts = [f"{flag}={_UNSAFE.sub('+', value)}" for flag, value in overrides]
    if not any(flag == "seed" for flag, _ in overrides):
        parts.append(f"seed={seed}")
    return ",".join(parts)


def resolve(
    base: config_lib.TrainConfig, overrides: Sequence[tuple[str, str]], seed: int
) -> config_lib.TrainConfig:
    """The base config with `overrides` applied, parsed and validated like flags."""
    argv = [*config_to_flagfile(base).splitlines(), f"--seed={seed}"]
    argv += [f"--{flag}={value}" for flag, value in overrides]
    where = ", ".join(f"{f}={v}" for f, v in overrides) or "base flags"
    try:
        return config_lib.config_from_args(argv)
    except flags.Error as err:
        raise SweepError(f"--grid ({where}): {err}") from None
    except ConfigError as err:
        raise SweepError(f"--grid ({where}): {err}") from None


def plan(
    base: config_lib.TrainConfig,
    axes: Sequence[GridAxis],
    repeats: int,
    sweep_name: str,
) -> list[PlannedRun]:
    """Every combination x repeat, in grid order; repeat r uses seed `base.seed + r`.

    Raises:
      SweepError: if a value is invalid for its flag, `seed` is both a grid
        axis and repeated, or two runs would get the same name.
    """
    if repeats > 1 and any(axis.flag == "seed" for axis in axes):
        raise SweepError("--grid=seed=... and --repeats>1 both set the seed; use one")
    rundir.check_name(base.logdir, sweep_name, "--sweep_name")
    experiment = pathlib.Path(base.logdir) / sweep_name
    runs = []
    for combination in itertools.product(*(axis.values for axis in axes)):
        overrides = tuple(zip((axis.flag for axis in axes), combination, strict=True))
        for repeat in range(repeats):
            seed = base.seed + repeat
            name = run_name(overrides, seed)
            config = resolve(base, overrides, seed)
            config = dataclasses.replace(config, logdir=str(experiment), run_name=name)
            runs.append(PlannedRun(name, config, overrides, repeat))
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


def _defining(config: dict) -> dict:
    # A run given in epochs records the steps they came to as well; a plan
    # knows only the epochs, so each pair is compared the way it was given.
    unused = config_lib.unused_alternatives(config_lib.config_from_dict(config))
    skip = config_lib.NOT_HPARAMS | unused
    return {k: v for k, v in config.items() if k not in skip}


def move_aside(path: pathlib.Path, record: dict) -> pathlib.Path:
    """Renames a half-done run to `NAME.incomplete-N` and marks it failed.

    The run stays visible (TensorBoard shows it as failed, compare lists it
    as not completed) and its name is free for a fresh run.
    """
    n = 1
    while path.with_name(f"{path.name}.incomplete-{n}").exists():
        n += 1
    target = path.with_name(f"{path.name}.incomplete-{n}")
    os.replace(path, target)
    reason = record.get("error") or (
        "interrupted: the process ended without recording a status "
        "(found by pipeline-sweep)"
    )
    if record:
        rundir.RunDir(target).update_record(status="failed", error=reason)
    if any(target.glob("*.session_start")) and not any(target.glob("*.session_end")):
        hparams_lib.write_session_end(target, "failed", reason)
    return target


def triage(
    runs: Sequence[PlannedRun],
) -> tuple[list[PlannedRun], list[PlannedRun], list[str]]:
    """Splits planned runs into (already completed, to run); moves half-done ones aside.

    Returns:
      (done, todo, notes): `notes` says what was moved aside.

    Raises:
      SweepError: if a completed run was trained with other flags, or a
        half-done run's process is still alive.
    """
    done, todo, notes = [], [], []
    for run in runs:
        if not run.path.exists():
            todo.append(run)
            continue
        record = read_record(run.path)
        if record.get("status") == "completed":
            theirs = _defining(record.get("config", {}))
            ours = _defining(config_lib.config_to_dict(run.config))
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
        if record.get("status") == "running" and recovery.owner_alive(record):
            raise SweepError(
                f"{run.path}: still running (pid {record['pid']}); "
                "wait for it or stop it"
            )
        target = move_aside(run.path, record)
        notes.append(f"moved half-done {run.path} aside to {target.name}")
        todo.append(run)
    return done, todo, notes


def train_command(run: PlannedRun) -> list[str]:
    """The `pipeline-train` command line of `run` (its full resolved flags)."""
    lines = config_to_flagfile(run.config).splitlines()
    return [
        sys.executable,
        "-m",
        "pipeline.cli.train",
        *lines,
        f"--run_name={run.name}",
    ]
