"""Run directories: created without overwriting, with a record of what ran.

Layout of `LOGDIR/RUN_NAME/`:
  train/ test/ [validation/]   TensorBoard event files, one writer per split
  checkpoints/                 tf.train.CheckpointManager, named by step
  flags.cfg                    the resolved flags: `--flagfile=` re-runs the job
  model_summary.txt            layers, output shapes, parameter counts
  run.json                     versions, dataset + fingerprint, times, status,
                               final metrics

`run.json` is replaced atomically, and its `status` is `running` until the
loop finishes: a run is complete only when it says `completed`.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
import pathlib
import platform
import socket
import tempfile
from typing import Any

from pipeline.config import TrainConfig, config_to_dict, unused_alternatives
from pipeline.errors import RunDirError

RECORD_NAME = "run.json"
FLAGFILE_NAME = "flags.cfg"
CHECKPOINT_DIR = "checkpoints"
MODEL_SUMMARY_NAME = "model_summary.txt"
PROBE_BYTES = 64 * 1024


def default_run_name(config: TrainConfig, now: datetime.datetime | None = None) -> str:
    """MODEL-YYYYmmdd-HHMMSS (the run's start time)."""
    now = now or datetime.datetime.now()
    return f"{config.model}-{now:%Y%m%d-%H%M%S}"


def utc_now() -> str:
    """ISO-8601 UTC timestamp with seconds."""
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def write_json_atomic(path: pathlib.Path, data: Any) -> None:
    """Writes JSON to a temporary file and renames it over `path`."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=2, sort_keys=True)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        pathlib.Path(tmp).unlink(missing_ok=True)
        raise


def config_to_flagfile(config: TrainConfig) -> str:
    """The config as absl flagfile lines; `--flagfile=` on it re-runs the job.

    The run name is left out on purpose: a re-run must get its own directory.
    """
    lines = []
    # Each of --steps/--epochs (and the other pairs) is written the way the
    # run was given it, never both.
    left_out = {"run_name", *unused_alternatives(config)}
    for key, value in config_to_dict(config).items():
        if key in left_out or value is None:
            continue
        if isinstance(value, bool):
            lines.append(f"--{key}" if value else f"--no{key}")
        elif isinstance(value, list):
            lines.append(f"--{key}={','.join(str(v) for v in value)}")
        else:
            lines.append(f"--{key}={value}")
    return "\n".join(lines) + "\n"


@dataclasses.dataclass
class RunDir:
    """A run's directory and its `run.json` record."""

    path: pathlib.Path

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def record_path(self) -> pathlib.Path:
        return self.path / RECORD_NAME

    @property
    def checkpoint_dir(self) -> pathlib.Path:
        return self.path / CHECKPOINT_DIR

    def read_record(self) -> dict[str, Any]:
        """The run's record; RunDirError if it is missing or unreadable."""
        try:
            return json.loads(self.record_path.read_text())
        except FileNotFoundError:
            raise RunDirError(
                f"{self.record_path}: not found (not a run directory?)"
            ) from None
        except (OSError, json.JSONDecodeError) as err:
            raise RunDirError(f"{self.record_path}: unreadable ({err})") from None

    def update_record(self, **fields: Any) -> dict[str, Any]:
        """Merges `fields` into the record and rewrites it atomically."""
        record = self.read_record() if self.record_path.exists() else {}
        record.update(fields)
        try:
            write_json_atomic(self.record_path, record)
        except OSError as err:
            raise RunDirError(
                f"{self.record_path}: cannot write ({err.strerror})"
            ) from None
        return record

    @property
    def status(self) -> str | None:
        if not self.record_path.exists():
            return None
        return self.read_record().get("status")

    def start(self, config: TrainConfig, dataset_info: dict[str, Any]) -> None:
        """Writes the flagfile and a `running` record before the first step."""
        import keras
        import numpy as np
        import tensorboard
        import tensorflow as tf

        self._write_flagfile(config)
        self.update_record(
            run_name=self.name,
            status="running",
            start_time=utc_now(),
            end_time=None,
            config=config_to_dict(config),
            dataset=dataset_info,
            versions={
                "python": platform.python_version(),
                "tensorflow": tf.__version__,
                "keras": keras.__version__,
                "tensorboard": tensorboard.__version__,
                "numpy": np.__version__,
            },
            host=socket.gethostname(),
            pid=os.getpid(),
        )

    def _write_flagfile(self, config: TrainConfig) -> None:
        path = self.path / FLAGFILE_NAME
        try:
            path.write_text(
                "# Resolved flags of this run: pipeline-train --flagfile=THIS_FILE "
                "--run_name=NEW re-runs it.\n" + config_to_flagfile(config)
            )
        except OSError as err:
            raise RunDirError(f"{path}: cannot write ({err.strerror})") from None

    def resume(self, config: TrainConfig, from_step: int) -> None:
        """Marks the run `running` again, keeping its history of starts.

        The flagfile and the recorded config are rewritten because a resume
        may extend `--steps`; `resumes` lists every restart and its step.
        """
        self._write_flagfile(config)
        record = self.read_record()
        resumes = list(record.get("resumes", []))
        resumes.append(
            {
                "time": utc_now(),
                "from_step": from_step,
                "previous_status": record.get("status"),
                "pid": os.getpid(),
            }
        )
        self.update_record(
            status="running",
            end_time=None,
            error=None,
            config=config_to_dict(config),
            resumes=resumes,
            host=socket.gethostname(),
            pid=os.getpid(),
        )

    def finish(self, status: str, **fields: Any) -> None:
        """Records the final status (`completed`, `failed`, ...) and end time."""
        self.update_record(status=status, end_time=utc_now(), **fields)


def create_run_dir(logdir: str | os.PathLike, run_name: str) -> RunDir:
    """Creates `logdir/run_name`; refuses to touch an existing run."""
    logdir = pathlib.Path(logdir)
    path = logdir / run_name
    if path.exists():
        try:
            status = RunDir(path).status
        except RunDirError:
            status = None
        raise RunDirError(
            f"{path}: run already exists"
            + (f" (status {status})" if status else "")
            + "; choose another --run_name, or pass --resume to continue it "
            "(runs are never overwritten)"
        )
    try:
        logdir.mkdir(parents=True, exist_ok=True)
        path.mkdir()
    except FileExistsError:
        raise RunDirError(
            f"{path}: run already exists; choose another --run_name"
        ) from None
    except OSError as err:
        raise RunDirError(
            f"--logdir={logdir}: cannot create run directory ({err.strerror})"
        ) from None
    if not os.access(path, os.W_OK):
        path.rmdir()
        raise RunDirError(f"--logdir={logdir}: not writable")
    _probe_writable(path, logdir)
    return RunDir(path)


def _probe_writable(path: pathlib.Path, logdir: pathlib.Path) -> None:
    """Fails now, not after minutes of setup, on a full or read-only --logdir.

    Writes (and removes) a small file; on failure the new, empty run
    directory is removed again.
    """
    try:
        with tempfile.TemporaryFile(dir=path) as probe:
            probe.write(b"\0" * PROBE_BYTES)
            probe.flush()
            os.fsync(probe.fileno())
    except OSError as err:
        path.rmdir()
        raise RunDirError(f"--logdir={logdir}: cannot write ({err.strerror})") from None


def open_run_dir(path: str | os.PathLike) -> RunDir:
    """An existing run directory (for eval, predict, export, resume)."""
    run_dir = RunDir(pathlib.Path(path))
    if not run_dir.path.is_dir():
        raise RunDirError(f"{run_dir.path}: run directory not found")
    run_dir.read_record()
    return run_dir
