"""A run's checkpoints, found from the files on disk, and which one to restore.

`tf.train.CheckpointManager` writes `ckpt-STEP.index` and
`ckpt-STEP.data-SHARD-of-N` (via a `ckpt-STEP_temp/` directory it renames
when the save is complete) and a `checkpoint` state file naming the latest.
The state file can be missing, stale or garbled while good checkpoints sit
beside it, so nothing here trusts it: the checkpoints are the files.

The one rule for "the latest checkpoint", used by every program (the
`--resume` pre-check, resume, eval, predict, export): the newest checkpoint
that restores. Newer ones whose files are incomplete, whose tensors do not
read back (a checksum, a short read) or whose step counter disagrees with
their name are skipped, each with one line saying why; an error names the
directory when none restores. An intact checkpoint that does not fit the
run's model (another model's, copied in) is an error naming it, in every
program alike: nothing is trained or reported from an older one past it. Checkpoints
after the run's `--steps` are not the run's (`max_step`). `choose_restorable`
applies the rule; `latest_restorable_step` answers "is the latest at or after
step N?" with the same rule, verifying only the checkpoints that can change
the answer, so a resume that extends a run needs no TensorFlow to be checked.
`latest_step` (newest complete-looking, no TensorFlow) is only an upper bound
on the rule's answer.
Listing needs no TensorFlow; verifying a checkpoint imports it lazily.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import re
import shutil
import time
from collections.abc import Callable
from typing import Any

from pipeline import files
from pipeline.errors import CheckpointError, NoCheckpointError
from pipeline.runs.rundir import warn

STATE_NAME = "checkpoint"
# tf.train.CheckpointManager writes `ckpt-N_temp/` and renames it when the save
# is complete; a kill mid-save leaves the directory behind and nothing else
# removes it.
TEMP_CHECKPOINT_PATTERN = "*_temp*"
_FILE = re.compile(r"^ckpt-(\d+)\.(?:index|data-(\d+)-of-(\d+))$")
# The saved step counter inside a checkpoint written by the training loop.
STEP_KEY = "step/.ATTRIBUTES/VARIABLE_VALUE"


@dataclasses.dataclass(frozen=True)
class Checkpoint:
    """One `ckpt-STEP` on disk: its prefix and the files found for it."""

    step: int
    prefix: pathlib.Path
    files: tuple[pathlib.Path, ...]

    @property
    def name(self) -> str:
        return self.prefix.name

    def problem(self) -> str | None:
        """What is structurally wrong with the files (None: looks complete).

        TensorFlow-free: a missing or empty `.index`, missing or empty data
        shards. A truncated or corrupt data file needs `verify` to be found.
        """
        index = self.prefix.with_name(self.name + ".index")
        if index not in self.files:
            return "no .index file (an unfinished or damaged save)"
        shards = [f for f in self.files if f != index]
        if not shards:
            return "no data file"
        for path in self.files:
            if path.stat().st_size == 0:
                return f"{path.name} is empty (0 bytes)"
        total = {_FILE.match(f.name).group(3) for f in shards}
        if len(total) != 1 or len(shards) != int(total.pop()):
            return "data shards missing"
        return None


def list_checkpoints(directory: str | os.PathLike) -> list[Checkpoint]:
    """Every `ckpt-STEP` with files directly in `directory`, by step (ascending).

    Damaged ones are listed too (see `Checkpoint.problem`); `ckpt-N_temp/`
    leftovers of a killed save and subdirectories (`best/`) are not.
    """
    directory = pathlib.Path(directory)
    if not directory.is_dir():
        return []
    files: dict[int, list[pathlib.Path]] = {}
    for path in directory.iterdir():
        match = _FILE.match(path.name)
        if match and path.is_file():
            files.setdefault(int(match.group(1)), []).append(path)
    return [
        Checkpoint(step, directory / f"ckpt-{step}", tuple(sorted(paths)))
        for step, paths in sorted(files.items())
    ]


def complete_steps(directory: str | os.PathLike) -> list[int]:
    """Steps of the checkpoints that look complete (no TensorFlow), ascending."""
    return [c.step for c in list_checkpoints(directory) if c.problem() is None]


def latest_step(directory: str | os.PathLike) -> int:
    """Step of the newest complete-looking checkpoint, 0 if none (no TensorFlow).

    An upper bound on the rule's latest (module docstring), not the rule.
    """
    steps = complete_steps(directory)
    return steps[-1] if steps else 0


def latest_restorable_step(directory: str | os.PathLike, at_least: int) -> int:
    """The rule's latest step (0: none restores) wherever it is >= `at_least`.

    Below `at_least` the answer is only known to be below it: checkpoints
    there are not verified (the caller asks "is anything left to do after
    the latest?"), so a resume to a larger `--steps` imports no TensorFlow.
    """
    for checkpoint in reversed(list_checkpoints(directory)):
        if checkpoint.problem() is not None:
            continue
        if checkpoint.step < at_least:
            return checkpoint.step
        try:
            verify(checkpoint)
        except CheckpointError:
            continue
        return checkpoint.step
    return 0


def verify(checkpoint: Checkpoint) -> None:
    """Reads every tensor of `checkpoint` (CRC-checked by TensorFlow).

    Also checks that a saved step counter agrees with the file name.

    Raises:
      CheckpointError: with TensorFlow's reason, first line only.
    """
    import tensorflow as tf

    try:
        reader = tf.train.load_checkpoint(str(checkpoint.prefix))
        for key, dtype in reader.get_variable_to_dtype_map().items():
            if dtype == tf.variant:
                # The data iterator's state: the reader cannot return it,
                # but restoring it alone checks its checksums just the same.
                tf.raw_ops.RestoreV2(
                    prefix=str(checkpoint.prefix),
                    tensor_names=[key],
                    shape_and_slices=[""],
                    dtypes=[tf.variant],
                )
                continue
            value = reader.get_tensor(key)
            if key == STEP_KEY and int(value) != checkpoint.step:
                raise CheckpointError(
                    f"holds step {int(value)}, not the {checkpoint.step} its name says"
                )
    except (tf.errors.OpError, ValueError) as err:
        raise CheckpointError(describe(err)) from None


def describe(err: BaseException) -> str:
    """A one-line reason from TensorFlow's (often multi-line) error text."""
    text = getattr(err, "message", None) or str(err) or type(err).__name__
    text = re.sub(r"\{\{function_node [^}]*\}\}\s*", "", text)
    text = re.sub(r"\s*\[Op:\w+\]", "", text)
    line = next((s.strip() for s in text.splitlines() if s.strip()), text)
    return line if len(line) <= 240 else line[:237] + "..."


def choose_restorable(
    directory: str | os.PathLike,
    restore: Callable[[str], Any] | None = None,
    *,
    step: int | None = None,
    max_step: int | None = None,
    report: Callable[[str], None] = warn,
) -> tuple[Checkpoint, Any]:
    """The newest checkpoint in `directory` that restores, and what `restore` gave.

    Tries newest first: a checkpoint is skipped (one `report` line naming it
    and why) if its files are incomplete, it lies beyond `max_step` (the
    run's --steps: not this run's), a tensor does not read back, or
    `restore(prefix)` raises on a checkpoint that is damaged too. An intact
    checkpoint that `restore` refuses (another model family's) raises
    `CheckpointError` naming it: the resume, which restores after choosing,
    stops there as well.

    Args:
      directory: The run's checkpoint directory.
      restore: Restores the prefix into what the caller will use (a model);
        it must raise if that fails. None: `verify` alone.
      step: Only this step (`--checkpoint=N`): an error if it does not restore.
      max_step: Checkpoints after this step are not the run's.
      report: Receives one line per skipped checkpoint.

    Raises:
      NoCheckpointError: no checkpoint files at all.
      CheckpointError: none restores (or not `step`); names the directory.
    """
    directory = pathlib.Path(directory)
    found = list_checkpoints(directory)
    if not found:
        raise NoCheckpointError(
            f"{directory}: no checkpoint saved yet (nothing to restore)"
        )
    candidates = found
    if step is not None:
        candidates = [c for c in found if c.step == step]
        if not candidates:
            listed = ", ".join(str(c.step) for c in found)
            raise CheckpointError(
                f"--checkpoint={step}: no checkpoint at that step in {directory} "
                f"(saved steps: {listed})"
            )
    reasons = []
    for checkpoint in reversed(candidates):
        reason = _why_not(checkpoint, restore, max_step)
        if isinstance(reason, _Restored):
            return checkpoint, reason.value
        if step is not None:
            raise CheckpointError(f"--checkpoint={step}: {checkpoint.prefix} {reason}")
        reasons.append(reason)
        report(f"skipped checkpoint {checkpoint.prefix}: {reason}")
    raise CheckpointError(
        f"{directory}: none of its {len(candidates)} checkpoint(s) restores "
        f"(newest, {candidates[-1].name}: {reasons[0]})"
    )


@dataclasses.dataclass(frozen=True)
class _Restored:
    value: Any


def _why_not(
    checkpoint: Checkpoint, restore: Callable[[str], Any] | None, max_step: int | None
) -> str | _Restored:
    problem = checkpoint.problem()
    if problem:
        return problem
    if max_step is not None and checkpoint.step > max_step:
        return f"step {checkpoint.step} is beyond the run's --steps={max_step}"
    try:
        # The caller's restore first: it names a mismatch of model families;
        # `verify` then reads everything else (optimizer, step counter).
        value = restore(str(checkpoint.prefix)) if restore else None
        verify(checkpoint)
        return _Restored(value)
    except CheckpointError as err:
        return str(err)
    except (AssertionError, ValueError, TypeError, KeyError) as err:
        misfit = f"does not fit this run's model ({describe(err)})"
    except Exception as err:  # TensorFlow's OpError family, raised on restore
        return describe(err)
    # An intact checkpoint of another model is not damage to skip: a resume,
    # which verifies before it restores into the run, stops at it too.
    try:
        verify(checkpoint)
    except CheckpointError:
        return misfit
    raise CheckpointError(f"{checkpoint.prefix}: {misfit}")


def write_state(directory: str | os.PathLike, chosen: Checkpoint) -> None:
    """Rewrites the `checkpoint` state file to name `chosen` as the latest.

    Lists every complete-looking checkpoint up to `chosen` (the manager's
    rotation then continues from them); newer, skipped ones are left on disk,
    unlisted, until a save at their step replaces them. Written atomically,
    in the text format `tf.train.get_checkpoint_state` reads.
    """
    directory = pathlib.Path(directory)
    kept = [
        c
        for c in list_checkpoints(directory)
        if c.step <= chosen.step and c.problem() is None
    ]
    if chosen not in kept:
        kept.append(chosen)
    lines = [f'model_checkpoint_path: "{chosen.name}"']
    lines += [f'all_model_checkpoint_paths: "{c.name}"' for c in kept]
    lines += [
        f"all_model_checkpoint_timestamps: {c.files[0].stat().st_mtime:.6f}"
        for c in kept
    ]
    lines.append(f"last_preserved_timestamp: {time.time():.6f}")
    files.write_atomic(directory / STATE_NAME, "\n".join(lines) + "\n")


def clean_temp_checkpoints(checkpoint_dir: pathlib.Path) -> list[pathlib.Path]:
    """Removes half-written checkpoint saves left by a killed process."""
    removed = []
    if not checkpoint_dir.is_dir():
        return removed
    for path in sorted(checkpoint_dir.rglob(TEMP_CHECKPOINT_PATTERN)):
        if not path.exists():
            continue
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink()
        removed.append(path)
    return removed
