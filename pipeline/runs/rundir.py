"""The run record: one owner of a run directory's `run.json`, `flags.cfg` and lock.

Layout of `LOGDIR/RUN_NAME/`:
  train/ test/ [validation/]   TensorBoard event files, one writer per split
  checkpoints/                 tf.train.CheckpointManager, named by step
                               (listed and chosen by `pipeline.runs.checkpoints`)
  flags.cfg                    the resolved flags: `--flagfile=` re-runs the job
  model_summary.txt            layers, output shapes, parameter counts
  run.json                     versions, dataset + fingerprint, times, status,
                               final metrics
  error.log                    the full trace of an unexpected error that
                               ended the run (run.json's `error` is one line)
  run.lock                     held (`fcntl.flock`) by the process writing the run
  .space-reserve               64 KiB held back while the run is written, so
                               its final record fits on a disk it filled

Every file here is written atomically (temporary file, fsync, rename), so a
reader sees the old or the new content, never half of one. `run.json` is read
in one of two ways: `load_record` (strict: work will be built on it, any
damage is an error naming the file) or `scan_records` (lenient: for listing,
a damaged run is skipped with one line naming it). Its `status` is `running`
until the process finishes: a run is complete only when it says `completed`,
and a status changes only through `RunDir`'s transitions, after the action it
describes succeeded.

No TensorFlow at import.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import errno
import fcntl
import functools
import json
import os
import pathlib
import platform
import re
import socket
import sys
import tempfile
import time
import types
import typing
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from pipeline import config as config_lib
from pipeline import files
from pipeline.config import TrainConfig, config_to_dict, unused_alternatives
from pipeline.errors import (
    RecordError,
    RunDirError,
    RunLockedError,
    one_line,
    os_reason,
)
from pipeline.runs import provenance

RECORD_NAME = "run.json"
FLAGFILE_NAME = "flags.cfg"
CHECKPOINT_DIR = "checkpoints"
MODEL_SUMMARY_NAME = "model_summary.txt"
LOCK_NAME = "run.lock"
# The full trace of the error that ended a run (run.json keeps one line).
ERROR_LOG_NAME = "error.log"
PROBE_BYTES = 64 * 1024
# Space held back while a run is written, so its final record fits even when
# the run's own writes filled the disk.
RESERVE_NAME = ".space-reserve"
RESERVE_BYTES = 64 * 1024
# Run names leave room for the side files a sweep puts next to a run
# (`.NAME.XXXXXXXX.log`, `NAME.incomplete-N`) within the filesystem's NAME_MAX.
NAME_HEADROOM = 24

# `pruned`: a sweep's pruner stopped the run early (a clean end, not a failure).
# `diverged`: its loss or weights became NaN/Inf (the model's outcome, which a
# sweep counts as a result; the pipeline did not fail).
STATUSES = ("running", "completed", "failed", "interrupted", "pruned", "diverged")
# Which status may follow which (None: no record yet). A finished run becomes
# `running` again only through `RunDir.resume`; a sweep marks a run it moves
# aside `failed`.
TRANSITIONS: dict[str | None, frozenset[str]] = {
    None: frozenset({"running"}),
    "running": frozenset(
        {"running", "completed", "failed", "interrupted", "pruned", "diverged"}
    ),
    "completed": frozenset({"running", "failed"}),
    "failed": frozenset({"running", "failed"}),
    "interrupted": frozenset({"running", "failed"}),
    "pruned": frozenset({"running", "failed"}),
    "diverged": frozenset({"running", "failed"}),
}


def default_run_name(config: TrainConfig, now: datetime.datetime | None = None) -> str:
    """MODEL-YYYYmmdd-HHMMSS (the run's start time)."""
    now = now or datetime.datetime.now()
    return f"{config.model}-{now:%Y%m%d-%H%M%S}"


def utc_now() -> str:
    """ISO-8601 UTC timestamp with seconds."""
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


# errno values that mean "this write cannot happen here" (not a bug).
_WRITE_ERRNOS = frozenset(
    {
        errno.ENOSPC,
        errno.EDQUOT,
        errno.EROFS,
        errno.EFBIG,
        errno.EACCES,
        errno.EPERM,
        errno.EIO,
        errno.ENAMETOOLONG,
    }
)
_WRITE_REASONS = tuple(os.strerror(code) for code in sorted(_WRITE_ERRNOS))


def write_failure(err: BaseException) -> RunDirError | None:
    """The one-line error for a failed write: the path and the OS reason.

    Recognises an OSError with one of `_WRITE_ERRNOS` and TensorFlow's
    errors that carry the OS's words (an event-file flush on a full disk is
    `ResourceExhaustedError: PATH; No space left on device`). None when
    `err` is something else (a bug keeps its traceback).
    """
    if isinstance(err, RunDirError):
        return err
    if isinstance(err, OSError) and err.errno in _WRITE_ERRNOS:
        where = err.filename if err.filename is not None else "a file"
        return RunDirError(f"{where}: cannot write ({os_reason(err)})")
    if not type(err).__module__.startswith("tensorflow"):
        return None
    text = getattr(err, "message", None) or str(err)
    for reason in _WRITE_REASONS:
        if reason in text:
            match = re.search(r"(/[^\s;{}]+)[;:,]?\s*" + re.escape(reason), text)
            where = match.group(1) if match else "a file"
            return RunDirError(f"{where}: cannot write ({reason})")
    return None


def write_json_atomic(path: pathlib.Path, data: Any) -> None:
    """Writes JSON (indented, sorted keys) atomically (`files.write_atomic`)."""
    files.write_atomic(path, json.dumps(data, indent=2, sort_keys=True) + "\n")


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
        elif config_lib.FIELDS_BY_NAME[key].kind == "multi":
            lines += [f"--{key}={item}" for item in value]
        elif isinstance(value, list):
            lines.append(f"--{key}={','.join(str(v) for v in value)}")
        else:
            lines.append(f"--{key}={value}")
    return "\n".join(lines) + "\n"


def name_limit(directory: str | os.PathLike) -> int:
    """The longest run or sweep name allowed under `directory`.

    The filesystem's NAME_MAX (of the nearest existing ancestor) less
    `NAME_HEADROOM` for the side files a sweep writes next to a run.
    """
    path = pathlib.Path(directory).absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    try:
        name_max = os.pathconf(path, "PC_NAME_MAX")
    except (OSError, ValueError):
        name_max = 255
    return max(1, name_max - NAME_HEADROOM)


def check_name(directory: str | os.PathLike, name: str, flag: str) -> None:
    """Raises RunDirError (naming `flag`) if `name` is too long for `directory`."""
    limit = name_limit(directory)
    if len(name.encode()) > limit:
        raise RunDirError(
            f"{flag}: {len(name.encode())} bytes long; at most {limit} fit "
            f"under {directory} (the filesystem's name limit less {NAME_HEADROOM} "
            "for side files)"
        )


# --- the typed record ----------------------------------------------------------


def _json_types(hint: Any) -> list[type]:
    """The JSON types a value of type `hint` may be saved as."""
    union = typing.get_origin(hint) in (typing.Union, types.UnionType)
    allowed: list[type] = []
    for part in typing.get_args(hint) if union else (hint,):
        origin = typing.get_origin(part) or part
        if origin is type(None):
            allowed.append(type(None))
        elif origin in (tuple, list):
            # A list, or one item: recorded before the field took a list
            # (`config_from_dict` wraps it).
            allowed.append(list)
            for item in typing.get_args(part):
                if item is not Ellipsis:
                    allowed += _json_types(item)
        elif origin is float:
            allowed += [float, int]
        elif isinstance(origin, type):
            allowed.append(origin)
    return allowed


@functools.cache
def _expected_types() -> dict[str, tuple[type, ...]]:
    """TrainConfig field -> the JSON types its saved value may have."""
    return {
        name: tuple(_json_types(hint))
        for name, hint in typing.get_type_hints(TrainConfig).items()
    }


def _check_config_values(values: dict[str, Any], where: str) -> None:
    for name, allowed in _expected_types().items():
        if name not in values:
            continue
        value = values[name]
        wrong = not isinstance(value, allowed) or (
            isinstance(value, bool) and bool not in allowed
        )
        if wrong:
            raise RecordError(
                f"{where}: saved config has {name}={value!r} "
                f"({type(value).__name__}), not a valid --{name}"
            )


@dataclasses.dataclass(frozen=True)
class RunRecord:
    """A run's `run.json`, checked to be a record: read it through these names.

    `data` is the whole JSON object (fields this version does not know are
    kept and written back untouched).
    """

    path: pathlib.Path
    data: dict[str, Any]

    @property
    def status(self) -> str | None:
        return self.data.get("status")

    @property
    def config(self) -> dict[str, Any]:
        """The saved config as plain JSON values ({} if none was saved)."""
        return self.data.get("config") or {}

    @property
    def dataset(self) -> dict[str, Any]:
        return self.data.get("dataset") or {}

    @property
    def final_metrics(self) -> dict[str, Any]:
        return self.data.get("final_metrics") or {}

    @property
    def test_accuracy(self) -> float | None:
        value = (self.final_metrics.get("test") or {}).get("accuracy")
        return float(value) if isinstance(value, int | float) else None

    @property
    def pid(self) -> int | None:
        pid = self.data.get("pid")
        return pid if isinstance(pid, int) and not isinstance(pid, bool) else None

    @property
    def host(self) -> str | None:
        return self.data.get("host")

    @property
    def error(self) -> str | None:
        return self.data.get("error")

    @property
    def step(self) -> int | None:
        step = self.data.get("step")
        return step if isinstance(step, int) and not isinstance(step, bool) else None

    @property
    def sessions(self) -> list[dict[str, Any]]:
        """What made the run, per start and resume (`pipeline.runs.provenance`);
        [] for a run recorded before sessions were."""
        sessions = self.data.get("sessions")
        return (
            [s for s in sessions if isinstance(s, dict)]
            if isinstance(sessions, list)
            else []
        )

    @property
    def code(self) -> dict[str, Any]:
        """The code the run started with (its first session's), {} if unknown."""
        sessions = self.sessions
        return (sessions[0].get("code") or {}) if sessions else {}

    @property
    def note(self) -> str:
        """What the user said about the run (`--note`, `pipeline-runs note`)."""
        note = self.config.get("note")
        return note if isinstance(note, str) else ""

    @property
    def tags(self) -> list[str]:
        """The run's tags (`--tag`, `pipeline-runs tag`)."""
        tags = self.config.get("tag")
        return [t for t in tags if isinstance(t, str)] if isinstance(tags, list) else []

    def get(self, key: str, default: Any = None) -> Any:
        return self.data.get(key, default)

    def train_config(self) -> TrainConfig:
        """The config the run was trained with: the one way it is read back.

        Raises:
          RecordError: no config was saved, or it does not validate.
        """
        if "config" not in self.data:
            raise RecordError(f"{self.path}: has no saved config")
        try:
            return config_lib.validate(config_lib.config_from_dict(self.config))
        except (TypeError, ValueError) as err:
            raise RecordError(f"{self.path}: saved config unusable ({err})") from None


_OBJECT_FIELDS = ("config", "dataset", "final_metrics", "versions")


def parse_record(path: pathlib.Path, text: str) -> RunRecord:
    """Checks that `text` is a run record; RecordError naming `path` if not."""
    try:
        data = json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise RecordError(f"{path}: unreadable ({err})") from None
    if not isinstance(data, dict):
        raise RecordError(
            f"{path}: not a run record (a JSON {type(data).__name__}, not an object)"
        )
    status = data.get("status")
    if status is not None and status not in STATUSES:
        raise RecordError(
            f"{path}: unknown status {status!r} (expected one of {', '.join(STATUSES)})"
        )
    for name in _OBJECT_FIELDS:
        if data.get(name) is not None and not isinstance(data[name], dict):
            raise RecordError(
                f"{path}: '{name}' is a {type(data[name]).__name__}, not an object"
            )
    _check_config_values(data.get("config") or {}, str(path))
    return RunRecord(path, data)


def load_record(run_path: str | os.PathLike) -> RunRecord:
    """The strict read: the record of the run at `run_path`, or RecordError."""
    path = pathlib.Path(run_path) / RECORD_NAME
    try:
        text = path.read_bytes().decode()
    except FileNotFoundError:
        raise RecordError(f"{path}: not found (not a run directory?)") from None
    except IsADirectoryError:
        raise RecordError(f"{path}: is a directory, not a run record") from None
    except OSError as err:
        raise RecordError(f"{path}: unreadable ({os_reason(err)})") from None
    except UnicodeDecodeError as err:
        raise RecordError(f"{path}: unreadable ({err})") from None
    return parse_record(path, text)


def warn(message: str) -> None:
    """A lenient reader's one line about a skipped run (stderr)."""
    prog = pathlib.Path(sys.argv[0]).name if sys.argv and sys.argv[0] else "pipeline"
    print(f"{prog}: warning: {message}", file=sys.stderr)


def scan_records(
    run_paths: Iterable[str | os.PathLike],
    report: Callable[[str], None] = warn,
) -> Iterator[RunRecord]:
    """The lenient read, for listing: good records; one `report` line per bad run."""
    for run_path in run_paths:
        try:
            yield load_record(run_path)
        except RecordError as err:
            report(f"skipped {err}")


def find_run_paths(root: str | os.PathLike) -> list[pathlib.Path]:
    """Run directories (holding a `run.json`) at or under `root`, sorted."""
    root = pathlib.Path(root)
    if (root / RECORD_NAME).exists():
        return [root]
    if not root.is_dir():
        return []
    return sorted(p.parent for p in root.rglob(RECORD_NAME))


def child_run_paths(root: str | os.PathLike) -> list[pathlib.Path]:
    """The run directories directly inside `root` (an experiment or sweep)."""
    return sorted(p.parent for p in pathlib.Path(root).glob(f"*/{RECORD_NAME}"))


# --- the per-run lock ----------------------------------------------------------

# Locks this process holds: path -> file descriptor. The OS drops a lock when
# its process ends (however it ends), so a stale lock cannot outlive its owner.
_HELD: dict[str, int] = {}


def _holder(lock_path: pathlib.Path) -> str:
    """Who holds the lock, as its holder wrote it. The holder writes that
    just after it took the lock, so an empty file is read again briefly."""
    text = ""
    for _ in range(20):
        try:
            text = lock_path.read_text().strip()
        except OSError:
            break
        if text:
            break
        time.sleep(0.01)
    return text or "another process"


def acquire_lock(directory: str | os.PathLike, program: str) -> pathlib.Path:
    """Takes `directory/run.lock` (exclusive `flock`) for the rest of this process.

    The file then names the holder (pid, host, program, time) for the message
    a second process gets; the name is only for that message, the lock is the
    `flock`. Taking a lock this process already holds is a no-op.

    Raises:
      RunLockedError: another live process holds it (the line names it).
      RunDirError: the lock file cannot be created.
    """
    path = pathlib.Path(directory) / LOCK_NAME
    key = str(path.resolve())
    if key in _HELD:
        return path
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as err:
        raise RunDirError(f"{path}: cannot create lock ({os_reason(err)})") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as err:
        os.close(fd)
        if err.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            raise RunLockedError(
                f"{directory}: in use by {_holder(path)}; wait for it or stop it"
            ) from None
        raise RunDirError(f"{path}: cannot lock ({os_reason(err)})") from None
    holder = (
        f"pid {os.getpid()} on {socket.gethostname()} ({program}, since {utc_now()})"
    )
    with contextlib.suppress(OSError):
        os.ftruncate(fd, 0)
        os.pwrite(fd, (holder + "\n").encode(), 0)
    _HELD[key] = fd
    return path


def release_lock(directory: str | os.PathLike) -> None:
    """Drops this process's lock on `directory` (if it holds one)."""
    key = str((pathlib.Path(directory) / LOCK_NAME).resolve())
    fd = _HELD.pop(key, None)
    if fd is not None:
        os.close(fd)


def release_all_locks() -> None:
    """Drops every lock this process holds: a process that trains run after
    run (a sweep's warm trainer) lets go of each run when it ends."""
    for key in list(_HELD):
        os.close(_HELD.pop(key))


@contextlib.contextmanager
def locked(directory: str | os.PathLike, program: str) -> Iterator[pathlib.Path]:
    """`acquire_lock` for the body of a `with`, released after it."""
    held_before = str((pathlib.Path(directory) / LOCK_NAME).resolve()) in _HELD
    path = acquire_lock(directory, program)
    try:
        yield path
    finally:
        if not held_before:
            release_lock(directory)


# --- the run directory ---------------------------------------------------------


@dataclasses.dataclass
class RunDir:
    """A run's directory: its record, flagfile, lock and checkpoint directory.

    A RunDir keeps the record it last read or wrote and serves that until
    `lock` (which reads afresh once held): the process holding the lock is
    the run's only writer, so a run is read once before its lock, once after
    it, and never again while it trains. To see another process's later
    write, make a new RunDir.
    """

    path: pathlib.Path
    _record: RunRecord | None = dataclasses.field(
        default=None, repr=False, compare=False
    )

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def record_path(self) -> pathlib.Path:
        return self.path / RECORD_NAME

    @property
    def checkpoint_dir(self) -> pathlib.Path:
        return self.path / CHECKPOINT_DIR

    def record(self) -> RunRecord:
        """The strict read of this run's record (RecordError if damaged)."""
        if self._record is None:
            self._record = load_record(self.path)
        return self._record

    def read_record(self) -> dict[str, Any]:
        """The record as a plain dict; RecordError if missing or damaged."""
        return self.record().data

    def lock(self, program: str) -> pathlib.Path:
        """Holds this run's lock for the rest of the process; see `acquire_lock`.

        The record is read afresh after this: another process may have
        written it before the lock was ours.
        """
        path = acquire_lock(self.path, program)
        self._record = None
        return path

    def update_record(self, **fields: Any) -> dict[str, Any]:
        """Merges `fields` into the record and rewrites it atomically.

        A `status` in `fields` must be allowed after the current one
        (`TRANSITIONS`). An `error` is kept to one line (`errors.one_line`):
        the record is read by people and tables, a trace belongs in a log.
        """
        if fields.get("error"):
            fields["error"] = one_line(str(fields["error"]))
        known = self._record is not None or self.record_path.exists()
        record = dict(self.read_record()) if known else {}
        if "status" in fields:
            current = record.get("status")
            if fields["status"] not in TRANSITIONS.get(current, frozenset()):
                raise RunDirError(
                    f"{self.record_path}: status {current} cannot become "
                    f"{fields['status']}"
                )
        record.update(fields)
        write_json_atomic(self.record_path, record)
        self._record = RunRecord(self.record_path, record)
        return record

    @property
    def status(self) -> str | None:
        if not self.record_path.exists():
            return None
        return self.record().status

    def write_file(self, name: str, text: str) -> pathlib.Path:
        """Writes a side file of the run (e.g. model_summary.txt) atomically."""
        path = self.path / name
        files.write_atomic(path, text)
        return path

    def start(
        self, config: TrainConfig, dataset_info: dict[str, Any], **fields: Any
    ) -> None:
        """Writes the flagfile and a `running` record before the first step.

        The record is written once: `fields` (the precision a run resolved,
        the sweep trial it belongs to) go into that one write.
        """
        import keras
        import numpy as np
        import tensorboard
        import tensorflow as tf

        self.write_flagfile(config)
        self.reserve_space()
        now = utc_now()
        self.update_record(
            run_name=self.name,
            status="running",
            start_time=now,
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
            sessions=[
                provenance.record_session(self.path, [], now, files.write_atomic)
            ],
            **fields,
        )

    def write_flagfile(self, config: TrainConfig) -> None:
        """Writes `flags.cfg` (for people and `--flagfile=`; never read back)."""
        self.write_file(
            FLAGFILE_NAME,
            "# Resolved flags of this run: pipeline-train --flagfile=THIS_FILE "
            "--run_name=NEW re-runs it.\n" + config_to_flagfile(config),
        )

    def resume(self, config: TrainConfig, from_step: int, **fields: Any) -> None:
        """Marks the run `running` again, keeping its history of starts.

        Call only once the checkpoint to continue from is known to restore.
        The flagfile and the recorded config are rewritten because a resume
        may extend `--steps`; `resumes` lists every restart and its step.
        One write, with `fields` in it (as `start`).
        """
        self.write_flagfile(config)
        self.reserve_space()
        record = self.read_record()
        now = utc_now()
        sessions = list(record.get("sessions") or [])
        sessions.append(
            provenance.record_session(self.path, sessions, now, files.write_atomic)
        )
        resumes = list(record.get("resumes") or [])
        resumes.append(
            {
                "time": now,
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
            sessions=sessions,
            host=socket.gethostname(),
            pid=os.getpid(),
            **fields,
        )

    def finish(self, status: str, **fields: Any) -> None:
        """Records the final status (`completed`, `failed`, ...) and end time.

        If the disk is too full for the record, the space reserved at the
        start is given up and the write tried once more: a run that failed
        because its disk filled up can still say so.
        """
        fields.update(status=status, end_time=utc_now())
        try:
            self.update_record(**fields)
        except RunDirError:
            if not self.release_reserve():
                raise
            self.update_record(**fields)
        self.release_reserve()

    def reserve_space(self) -> None:
        """Holds back `RESERVE_BYTES` (best effort) for the run's final record."""
        with contextlib.suppress(RunDirError):
            files.write_atomic(self.path / RESERVE_NAME, b"\0" * RESERVE_BYTES)

    def release_reserve(self) -> bool:
        """Frees the reserved space; False if there was none."""
        try:
            (self.path / RESERVE_NAME).unlink()
        except OSError:
            return False
        return True

    def write_error_log(self, err: BaseException) -> pathlib.Path | None:
        """Appends `err`'s full traceback to `error.log`; None if it cannot.

        run.json's `error` is one line; this keeps what a bug report needs.
        """
        import traceback

        path = self.path / ERROR_LOG_NAME
        text = "".join(traceback.format_exception(err))
        try:
            with open(path, "a", encoding="utf-8") as log:
                log.write(f"--- {utc_now()} pid {os.getpid()}\n{text}")
        except OSError:
            return None
        return path

    def mark_failed(
        self,
        reason: str,
        *,
        status: str = "failed",
        step: int | None = None,
        end_session: Callable[[pathlib.Path, str, str], None] | None = None,
        keep_ended: bool = True,
    ) -> bool:
        """The one way a run is marked `failed` (or `diverged`), by the loop
        that ran it or by a sweep that found its process gone.

        Best effort: the record gets `status`, `reason` (and `step`), unless
        it already tells how the run ended (`completed`, `failed`, ...) and
        `keep_ended` (a sweep judging a run it did not run; the loop that
        failed after recording its end passes False); then
        the run's HParams session, if it has one, is closed with the same
        status through `end_session(path, status, reason)` (the writer lives
        in `pipeline.tensorboard.hparams`, a layer above this one; it must
        survive a full disk: `hparams.end_failed_run`).
        Returns False if the record could not be written (or was not a run
        left running).
        """
        try:
            current = self.record().status
        except RecordError:
            current, recorded = None, False
        else:
            recorded = True
        if keep_ended and current not in (None, "running", "interrupted"):
            return False
        fields: dict[str, Any] = {"error": reason}
        if step is not None:
            fields["step"] = step
        try:
            if recorded:
                self.finish(status, **fields)
        except RunDirError:
            recorded = False
        if end_session is not None and any(self.path.glob("*.session_start")):
            end_session(self.path, status, reason)
        return recorded


def refuse_existing(logdir: str | os.PathLike, run_name: str) -> pathlib.Path:
    """`logdir/run_name` if that is a valid name no run has taken; else
    `RunDirError` (an existing run is never overwritten). `pipeline-train`
    asks before it loads TensorFlow, so a taken name is said at once;
    `create_run_dir` asks again as it creates the run."""
    logdir = pathlib.Path(logdir)
    check_name(logdir, run_name, "--run_name")
    path = logdir / run_name
    if path.exists() or path.is_symlink():
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
    return path


def create_run_dir(logdir: str | os.PathLike, run_name: str) -> RunDir:
    """Creates `logdir/run_name`; refuses to touch an existing run."""
    logdir = pathlib.Path(logdir)
    path = refuse_existing(logdir, run_name)
    try:
        logdir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise RunDirError(
            f"--logdir={logdir}: cannot create run directory ({os_reason(err)})"
        ) from None
    try:
        path.mkdir()
    except FileExistsError:
        raise RunDirError(
            f"{path}: run already exists; choose another --run_name"
        ) from None
    except OSError as err:
        raise RunDirError(
            f"--logdir={logdir}: cannot create run directory ({os_reason(err)})"
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
        raise RunDirError(
            f"--logdir={logdir}: cannot write ({os_reason(err)})"
        ) from None


def open_run_dir(path: str | os.PathLike) -> RunDir:
    """An existing run directory whose record loads strictly (eval, resume, ...)."""
    run_dir = RunDir(pathlib.Path(path))
    if not run_dir.path.is_dir():
        raise RunDirError(f"{run_dir.path}: run directory not found")
    run_dir.record()
    return run_dir
