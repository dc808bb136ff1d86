"""The pipeline's errors: one base class; each says the exit code it ends with.

Every error a user can fix or act on (a bad flag combination, a missing file,
an interrupted run) is a `PipelineError`. `cli.run_reporting_errors` catches
this one class, prints `prog: error: MESSAGE` and exits with `exit_code`; any
other exception is a bug and keeps its traceback. The module imports nothing,
so the CLI can name these classes without loading TensorFlow.

Each class also keeps the built-in base it had (`ValueError` for bad values,
`RuntimeError` for a state that cannot go on), so code that catches those
still does.
"""

from __future__ import annotations

import os

# TensorFlow's restart code for preempted workers (tf.distribute's
# `failure_handling` and cluster managers restart a worker that exits with it).
PREEMPTED_EXIT_CODE = 42


class PipelineError(Exception):
    """An error the program reports as one line; exits with `exit_code`."""

    exit_code: int = 1


class ConfigError(PipelineError, ValueError):
    """A combination of flag values that cannot define a run."""


class DataError(PipelineError, ValueError):
    """A dataset file is missing, corrupt or inconsistent."""


class RunDirError(PipelineError, RuntimeError):
    """The run directory cannot be created, written or found."""


class RecordError(RunDirError):
    """A run's `run.json` is missing, unreadable or not a run record."""


class RunLockedError(RunDirError):
    """Another live process holds the run's (or sweep's) lock."""


class CheckpointError(RunDirError):
    """No checkpoint (or not the one asked for) can be restored."""


class NoCheckpointError(CheckpointError):
    """The checkpoint directory holds no checkpoint files at all."""


class DistributeError(PipelineError, RuntimeError):
    """The requested strategy cannot be set up (bad TF_CONFIG, devices)."""


class TrainingError(PipelineError, RuntimeError):
    """Training cannot go on (bad combination of data and flags, divergence)."""


class NonFiniteLossError(TrainingError):
    """The loss became NaN or Inf; names the step and the last good checkpoint."""


class TrainingInterruptedError(TrainingError):
    """SIGINT/SIGTERM stopped the run after a checkpoint; exits 128 + signal."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.exit_code = 128 + signum


class PeerLostError(TrainingInterruptedError):
    """Another worker of a multi-worker job is gone: this one stops, the run
    is recorded `interrupted` at its last checkpoint; exits 1."""

    def __init__(self, message: str):
        super().__init__(message, signum=0)
        self.exit_code = 1


class WorkerPreemptedError(TrainingInterruptedError):
    """A worker of a multi-worker job got SIGTERM: all saved; exits 42."""

    def __init__(self, message: str):
        super().__init__(message, signum=0)
        self.exit_code = PREEMPTED_EXIT_CODE


# The longest message kept in a one-line record (run.json's `error`, a
# study's attribute); the whole text goes to a log file where one exists.
ONE_LINE_LIMIT = 400


def one_line(text: str, limit: int = ONE_LINE_LIMIT) -> str:
    """`text` as one line of at most `limit` characters.

    TensorFlow's errors carry a multi-line op trace after their first line,
    and a traceback is many lines: a record keeps the first non-empty line
    (the error itself; a chained message's first line names it), cut at
    `limit` with an ellipsis. Shared by every writer of a one-line error.
    """
    first = next((line.strip() for line in text.splitlines() if line.strip()), "")
    first = " ".join(first.split())
    return first if len(first) <= limit else first[: limit - 3].rstrip() + "..."


def os_reason(err: OSError) -> str:
    """`No space left on device`: the OS's words for an OSError."""
    return err.strerror or (os.strerror(err.errno) if err.errno else str(err))
