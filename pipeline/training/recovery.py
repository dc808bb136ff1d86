"""Surviving kills: which run to resume, and with which config.

A resumed run continues from its latest checkpoint under its *saved* config:
flags that would change the math are refused, so a resumed run computes what
the uninterrupted run would have. Everything here that runs before training
(finding the run, checking it, cleaning it) avoids importing TensorFlow, so
bad input fails in well under a second. Which checkpoint it continues from
is `pipeline.runs.checkpoints`' rule; whether a run's process lives is
`pipeline.processes`'.

The `SessionLog.START` writer and the scalar reader below are event-file
code, left here for the event-file owner (issue 20b) to move.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import shutil
from collections.abc import Callable, Iterable

from pipeline import config as config_lib
from pipeline import processes
from pipeline.config import Launch, TrainConfig
from pipeline.errors import ConfigError, DataError, RunDirError
from pipeline.runs import checkpoints
from pipeline.runs.rundir import RunDir, RunRecord, open_run_dir


def resolve_run(launch: Launch) -> RunDir:
    """The run directory that `--run` or `--logdir/--run_name` names."""
    if launch.run_path is not None:
        path = pathlib.Path(launch.run_path)
    else:
        path = pathlib.Path(launch.config.logdir) / str(launch.config.run_name)
    return open_run_dir(path)


def saved_config(run_dir: RunDir) -> TrainConfig:
    """The config a run was started with, as recorded in its run.json."""
    return run_dir.record().train_config()


def _flag_text(value: object) -> str:
    if isinstance(value, tuple | list):
        return ",".join(str(v) for v in value)
    return str(value)


def merge_overrides(
    saved: TrainConfig,
    given: TrainConfig,
    explicit: Iterable[str],
    action: str = "resume",
) -> TrainConfig:
    """The saved config with the allowed command-line overrides applied.

    A flag given explicitly with the saved value is accepted (re-running the
    original command line plus `--resume` works); a different value is refused
    unless its declaration in `pipeline.config` says a resume may change it.

    Raises:
      ConfigError: naming the first flag whose value differs from the run's.
    """
    explicit = set(explicit)
    mutable = config_lib.RESUME_MUTABLE_FLAGS
    may_change = [f"--{f}" for f in sorted(mutable - config_lib.LOCATION_FLAGS)]
    for name in sorted(explicit - mutable):
        if getattr(given, name) != getattr(saved, name):
            raise ConfigError(
                f"--{name}={_flag_text(getattr(given, name))} differs from the run's "
                f"saved --{name}={_flag_text(getattr(saved, name))}; --{action} keeps "
                f"the run's config (only {', '.join(may_change)} may change)"
            )
    updates = {
        name: getattr(given, name)
        for name in explicit & mutable - config_lib.LOCATION_FLAGS
    }
    # --steps and --epochs are one setting: `given` holds the one that applies
    # (the other is 0 or ignored), so a resume given either takes both.
    for pair in config_lib.EPOCH_ALTERNATIVES:
        if set(pair) & updates.keys() and set(pair) <= mutable:
            updates.update({name: getattr(given, name) for name in pair})
    return dataclasses.replace(saved, **updates)


def check_not_running(run_dir: RunDir) -> None:
    """Refuses to resume a run whose recorded process is still alive.

    A run left `running` by a process that died (`kill -9`, a crash, a
    reboot) is resumable; only a live process on this host blocks it.
    """
    record = run_dir.record()
    if record.status != "running":
        return
    pid = record.pid
    if pid != os.getpid() and processes.owner_alive(record):
        raise RunDirError(
            f"{run_dir.path}: still being trained by pid {pid}; stop it first "
            "(SIGINT/SIGTERM saves a checkpoint) or wait for it"
        )


def _refuse_multi_worker(config: TrainConfig, action: str) -> None:
    # A replay runs as one process; a multi-worker job needs its cluster.
    if config.strategy == "multi_worker":
        raise ConfigError(
            f"{action} of a --strategy=multi_worker run is not supported "
            "(it runs as a single process)"
        )


def prepare_resume(launch: Launch) -> tuple[RunDir, TrainConfig]:
    """Finds, checks, locks and cleans the run to resume; returns it and its config.

    The checks run before the lock (a refused resume leaves the run's files
    as they were) and again once it is held (another process may have
    finished the run meanwhile). The lock is held for the rest of the process.

    Raises:
      RunDirError: no such run, damaged record, or another process owns it.
      ConfigError: a flag that would change the run, or nothing left to train.
    """
    run_dir = resolve_run(launch)
    _check_resumable(run_dir, launch)
    run_dir.lock("pipeline-train --resume")
    config = _check_resumable(run_dir, launch)
    checkpoints.clean_temp_checkpoints(run_dir.checkpoint_dir)
    return run_dir, config


# Statuses whose recorded `step` was saved in a checkpoint (a completed or
# pruned run saves at its end; an interrupted one records its last save).
SAVED_STATUSES = ("completed", "pruned", "interrupted")


def check_files_match_record(run_dir: RunDir) -> None:
    """Refuses a resume the run's files cannot back: its record says a
    checkpoint was saved at step S > 0, and `checkpoints/` holds none.

    Resuming would train from step 0 and write a start marker that hides the
    run's curves in TensorBoard: its history lost without a word.
    """
    record = run_dir.record()
    step = record.step or 0
    if record.status not in SAVED_STATUSES or step <= 0:
        return
    # Files without their index still count: the restore names what is wrong.
    if not checkpoints.list_checkpoints(run_dir.checkpoint_dir):
        raise RunDirError(
            f"{run_dir.path}: run.json says {record.status} at step {step}, but "
            f"{run_dir.checkpoint_dir} holds no checkpoint (deleted?); a resume "
            "would retrain from step 0 over its history, so the run is left as "
            "it is: restore the checkpoints, or start a new run with --run_name"
        )


def _check_resumable(run_dir: RunDir, launch: Launch) -> TrainConfig:
    check_not_running(run_dir)
    check_files_match_record(run_dir)
    config = merge_overrides(saved_config(run_dir), launch.config, launch.explicit)
    # The latest by the one rule (`pipeline.runs.checkpoints`), the one the
    # resume then continues from.
    step = checkpoints.latest_restorable_step(run_dir.checkpoint_dir, config.steps)
    if config.steps <= step:
        raise ConfigError(
            f"{run_dir.path}: status {run_dir.status}, latest checkpoint at step "
            f"{step}; --steps={config.steps} leaves nothing to train (pass --steps > "
            f"{step} to train further)"
        )
    return config


def choose_resume_checkpoint(
    run_dir: RunDir, config: TrainConfig, report: Callable[[str], None]
) -> checkpoints.Checkpoint | None:
    """The checkpoint a resume continues from: the newest that restores.

    Chosen by `checkpoints.choose_restorable`, which verifies it (every
    tensor read back once); the loop then restores it once, into the run's
    own model and optimizer. Each newer checkpoint that does not verify is
    skipped with one `report` line; the `checkpoint` state file is then
    rewritten to name the chosen one, so the checkpoint manager continues
    from it. None: the run saved no checkpoint yet (it starts again from
    step 0).

    Raises:
      CheckpointError: checkpoints exist but none restores (the run is left
        as it was rather than trained over from step 0).
    """
    try:
        chosen, _ = checkpoints.choose_restorable(
            run_dir.checkpoint_dir, max_step=config.steps, report=report
        )
    except checkpoints.NoCheckpointError:
        return None
    checkpoints.write_state(run_dir.checkpoint_dir, chosen)
    return chosen


def prepare_worker_resume(launch: Launch) -> tuple[RunDir, TrainConfig]:
    """For a non-chief worker: the chief's run (read only) and its config.

    Unlike `prepare_resume`, this neither checks who owns the run (the chief
    is resuming it right now) nor cleans anything: the chief does that.
    """
    run_dir = resolve_run(launch)
    check_files_match_record(run_dir)
    config = merge_overrides(saved_config(run_dir), launch.config, launch.explicit)
    return run_dir, config


def prepare_replay(launch: Launch) -> tuple[RunDir, TrainConfig]:
    """The run to replay and the config to replay it with (`--steps` may shrink).

    Raises:
      RunDirError: no such run or no saved config.
      ConfigError: a flag that would change the run, or more steps than it had.
    """
    original = open_run_dir(launch.run_path)
    saved = saved_config(original)
    config = merge_overrides(saved, launch.config, launch.explicit, "replay")
    _refuse_multi_worker(config, "--replay")
    if config.steps > saved.steps:
        raise ConfigError(
            f"--steps={config.steps}: {original.path} trained only {saved.steps} steps"
        )
    return original, config


def prepare_rerun(launch: Launch) -> tuple[RunRecord, Launch]:
    """The run to re-run and a new-run launch with its flags.

    Every flag given on the command line replaces the run's value; where the
    new run lives (--logdir, --run_name) and its --note are its own.

    Raises:
      RunDirError, RecordError: no such run, or its record is damaged.
      ConfigError: the merged flags do not make a valid run.
    """
    original = open_run_dir(launch.run_path).record()
    saved = original.train_config()
    own = config_lib.LOCATION_FLAGS | {"note"}
    updates = {name: getattr(launch.config, name) for name in launch.explicit | own}
    for pair in config_lib.EPOCH_ALTERNATIVES:
        if set(pair) & launch.explicit:
            updates.update({name: getattr(launch.config, name) for name in pair})
    config = config_lib.validate(dataclasses.replace(saved, **updates))
    return original, Launch("new", config, launch.explicit | own)


def copy_chosen_checkpoint(
    source: pathlib.Path, target: pathlib.Path, config: TrainConfig
) -> None:
    """Copies the checkpoint the chief resumes from (same rule) into `target`.

    For a non-chief worker of a multi-worker resume: its own checkpoint
    directory then holds exactly that checkpoint, so every worker agrees.
    """
    try:
        chosen, _ = checkpoints.choose_restorable(
            source,
            max_step=config.steps,
            report=lambda _: None,  # the chief names what it skipped
        )
    except checkpoints.NoCheckpointError:
        return
    target.mkdir(parents=True, exist_ok=True)
    for path in chosen.files:
        shutil.copy2(path, target / path.name)
    checkpoints.write_state(target, checkpoints.list_checkpoints(target)[-1])


def check_same_data(run_dir: RunDir, dataset) -> None:
    """Refuses to continue or replay a run on data that differ from its own.

    Raises:
      DataError: the dataset's fingerprint is not the one in run.json.
    """
    recorded = run_dir.record().dataset.get("fingerprint")
    if recorded and recorded != dataset.fingerprint():
        raise DataError(
            f"{dataset.source}: data differ from the data {run_dir.path} was "
            f"trained on (fingerprint {dataset.fingerprint()[:12]}..., recorded "
            f"{recorded[:12]}...)"
        )
