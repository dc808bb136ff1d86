"""Where a study lives, and the lock that keeps `--trials` exact.

  sqlite:///PATH            one machine (the default: LOGDIR/SWEEP_NAME/study.db)
  postgresql://USER@HOST/DB  workers on several machines
  journal:PATH              Optuna's journal file, for several machines on a
                            shared filesystem (where SQLite must not go)

"Is the total reached? If not, take a trial" must be atomic across every
worker, so it runs under one lock per study: a file lock next to a SQLite
database or journal file, a PostgreSQL advisory lock, MySQL's GET_LOCK.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import pathlib
import re
import threading
import warnings
import zlib
from collections.abc import Iterator
from typing import Any

import optuna
import sqlalchemy

from pipeline.sweep import SweepError

JOURNAL_PREFIX = "journal:"
HEARTBEAT_INTERVAL_S = 10
# A trial whose worker has not beaten for this long is failed and retried.
GRACE_PERIOD_S = 60
USAGE = "sqlite:///PATH, postgresql://USER@HOST:PORT/DB or journal:PATH"

_PROCESS_LOCK = threading.Lock()
_ENGINES: dict[str, sqlalchemy.engine.Engine] = {}


def default_storage(experiment_dir: str | os.PathLike) -> str:
    """`sqlite:///<logdir>/<sweep_name>/study.db` (absolute, escaped: a `?` or
    `%` in the path stays part of the path)."""
    path = pathlib.Path(experiment_dir).absolute() / "study.db"
    url = sqlalchemy.engine.URL.create("sqlite", database=str(path))
    return url.render_as_string(hide_password=False)


def journal_path(url: str) -> pathlib.Path | None:
    """The journal file a `journal:PATH` storage names, else None."""
    if not url.startswith(JOURNAL_PREFIX):
        return None
    return pathlib.Path(url[len(JOURNAL_PREFIX) :]).absolute()


def safe_url(url: str) -> str:
    """A storage URL with its password masked, for records and messages."""
    if journal_path(url) is not None:
        return url
    try:
        return sqlalchemy.engine.make_url(url).render_as_string(hide_password=True)
    except sqlalchemy.exc.ArgumentError:
        return url.rpartition("@")[2]


def _parse(url: str) -> sqlalchemy.engine.URL:
    """The URL, checked before anything is written.

    Raises:
      SweepError: one line: not a URL, a SQLite URL with no file (two
        slashes), or a database whose driver is not installed.
    """
    where = f"--storage={safe_url(url)}"
    try:
        parsed = sqlalchemy.engine.make_url(url)
    except sqlalchemy.exc.ArgumentError:
        raise SweepError(f"{where}: not a storage URL ({USAGE})") from None
    if parsed.get_backend_name() == "sqlite":
        if not parsed.database or parsed.host:
            raise SweepError(
                f"{where}: names no database file; write sqlite:///RELATIVE/PATH "
                "or sqlite:////ABSOLUTE/PATH"
            )
        return parsed
    try:
        _lock_engine(url)
    except (ImportError, sqlalchemy.exc.NoSuchModuleError) as err:
        raise SweepError(
            f"{where}: cannot use {parsed.drivername} here ({err}); "
            "use sqlite, postgresql or journal"
        ) from None
    return parsed


def where(url: str) -> str:
    """The file or host:port a storage is at, for messages."""
    path = journal_path(url)
    if path is not None:
        return str(path)
    parsed = sqlalchemy.engine.make_url(url)
    if parsed.get_backend_name() == "sqlite":
        return str(pathlib.Path(parsed.database).absolute())
    return f"{parsed.host or 'localhost'}:{parsed.port or 'default port'}"


def unreachable(url: str, err: BaseException) -> SweepError:
    """The one line for a storage that cannot be opened or read."""
    return SweepError(
        f"--storage={safe_url(url)}: cannot open the study storage at "
        f"{where(url)} ({_reason(err)})"
    )


def _reason(err: BaseException) -> str:
    """The driver's first line (`connection failed: ...`), without SQLAlchemy's
    `(module.Error)` prefix."""
    original = getattr(err, "orig", None) or err
    lines = [line.strip() for line in str(original).splitlines() if line.strip()]
    return re.sub(r"^\([\w.]+\) ", "", lines[0] if lines else type(err).__name__)


# What a storage that stopped answering raises through Optuna (a server
# stopped, a connection dropped): SQLAlchemy's errors, or Optuna's own wrapper
# of them ("... e.g. exceeding max length", whatever the cause).
STORAGE_ERRORS = (
    sqlalchemy.exc.SQLAlchemyError,
    optuna.exceptions.StorageInternalError,
)


def storage_failure(err: BaseException | None) -> BaseException | None:
    """The storage error behind `err` (itself, or its cause or context: Optuna
    may raise another error while handling one), else None."""
    seen = set()
    while err is not None and id(err) not in seen:
        if isinstance(err, STORAGE_ERRORS):
            # Optuna's wrapper hides the reason: prefer the error it wraps.
            inner = storage_failure(err.__cause__ or err.__context__)
            return inner if isinstance(inner, sqlalchemy.exc.SQLAlchemyError) else err
        seen.add(id(err))
        err = err.__cause__ or err.__context__
    return None


def lost(url: str, err: BaseException) -> SweepError:
    """The one line for a storage that stopped answering mid-sweep."""
    return SweepError(
        f"--storage={safe_url(url)}: the study storage at {where(url)} stopped "
        f"answering ({_reason(err)}); a run in training stopped at its last "
        "checkpoint: run the same command again when the storage is back, to "
        "continue"
    )


@contextlib.contextmanager
def lost_is_one_line(url: str) -> Iterator[None]:
    """A storage error raised inside (however Optuna wrapped it) becomes
    `lost(url, ...)`: one line, no chained tracebacks."""
    try:
        yield
    except SweepError:
        raise
    except Exception as err:
        failure = storage_failure(err)
        if failure is None:
            raise
        raise lost(url, failure) from None


def connect(url: str) -> optuna.storages.BaseStorage:
    """Opens the storage (creating it on first use); RDB storages with
    Optuna's heartbeats, so a worker that dies elsewhere is found.

    Raises:
      SweepError: one line naming the file or host (never a password).
    """
    path = journal_path(url)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        backend = optuna.storages.journal.JournalFileBackend(str(path))
        return optuna.storages.JournalStorage(backend)
    parsed = _parse(url)
    engine_kwargs: dict[str, Any] = {"connect_args": {"connect_timeout": 10}}
    if parsed.get_backend_name() == "sqlite":
        pathlib.Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        # Workers on one machine take turns to write; wait rather than fail.
        engine_kwargs["connect_args"] = {"timeout": 60}
    # The first workers of a storage would race to create its tables.
    with warnings.catch_warnings(), claim_lock(url, ""):
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        try:
            return optuna.storages.RDBStorage(
                url,
                engine_kwargs=engine_kwargs,
                heartbeat_interval=HEARTBEAT_INTERVAL_S,
                grace_period=GRACE_PERIOD_S,
                heartbeat_stale_trial_callback=(
                    optuna.storages.RetryHeartbeatStaleTrialCallback(
                        inherit_intermediate_values=True
                    )
                ),
            )
        except (sqlalchemy.exc.SQLAlchemyError, ImportError) as err:
            raise unreachable(url, err) from None


@contextlib.contextmanager
def _file_lock(path: pathlib.Path) -> Iterator[None]:
    with open(path, "a") as lock_file:
        fcntl.flock(lock_file, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock_file, fcntl.LOCK_UN)


@contextlib.contextmanager
def claim_lock(url: str, study_name: str) -> Iterator[None]:
    """Serialises "check the total, then take a trial" across all workers.

    `study_name` "" locks the whole storage (while its tables are created).
    """
    with _PROCESS_LOCK:
        journal = journal_path(url)
        parsed = _parse(url) if journal is None else None
        # Not `JOURNAL.lock`: Optuna's own journal lock is a symlink of that name.
        path = pathlib.Path(f"{journal}.sweep-lock") if journal else None
        if path is None and parsed.get_backend_name() == "sqlite":
            path = pathlib.Path(f"{parsed.database}.lock")
        if path is not None:
            with _file_lock(path):
                yield
            return
        yield from _database_lock(url, parsed.get_backend_name(), study_name)


def _database_lock(url: str, backend: str, study_name: str) -> Iterator[None]:
    key = zlib.crc32(f"pipeline-sweep/{study_name}".encode())
    lock, unlock = {
        "postgresql": ("SELECT pg_advisory_lock(:k)", "SELECT pg_advisory_unlock(:k)"),
        "mysql": ("SELECT GET_LOCK(:k, -1)", "SELECT RELEASE_LOCK(:k)"),
    }.get(backend, (None, None))
    if lock is None:
        raise SweepError(
            f"--storage={safe_url(url)}: {backend} has no lock the sweep can use; "
            f"use {USAGE}"
        )
    try:
        connection = _lock_engine(url).connect()
    except sqlalchemy.exc.SQLAlchemyError as err:
        raise unreachable(url, err) from None
    with connection:
        connection.execute(sqlalchemy.text(lock), {"k": key})
        try:
            yield
        finally:
            connection.execute(sqlalchemy.text(unlock), {"k": key})
            connection.commit()


def _lock_engine(url: str) -> sqlalchemy.engine.Engine:
    if url not in _ENGINES:
        _ENGINES[url] = sqlalchemy.create_engine(url, poolclass=sqlalchemy.NullPool)
    return _ENGINES[url]
