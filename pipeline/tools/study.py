"""A sweep's Optuna study: its storage, its definition, and who may take a trial.

The study is the source of truth for what is done, running, pruned or failed.
Every worker that names the same study and storage joins it: a second
`pipeline-sweep` on this machine, or the same command on another machine with
`--storage=postgresql://...`. What makes that safe:

- The study records its definition (search space, sampler, metric and
  direction, repeats, base flags) in its user attributes when it is created;
  a worker that asks for anything else is refused, naming what differs.
- Trials are taken under one lock per study (a file lock next to a SQLite
  database, a PostgreSQL advisory lock, MySQL's GET_LOCK): "is the total
  reached? if not, ask for a trial" is atomic, so `--trials` is exact with any
  number of workers.
- Each running trial has a heartbeat (Optuna's, kept by its worker). A trial
  whose heartbeat stopped is failed and queued again with the same parameters
  (Optuna's `RetryHeartbeatStaleTrialCallback`); a dead worker on this machine
  is recognised at once by its pid, without waiting for the grace period.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import os
import pathlib
import re
import socket
import threading
import warnings
import zlib
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import optuna
import sqlalchemy
from optuna.trial import FrozenTrial, TrialState

from pipeline.tools import search_space
from pipeline.tools import sweep as sweep_lib
from pipeline.training import recovery
from pipeline.training.trial import safe_url

# Metric -> the direction it implies.
METRICS = {"test/accuracy": "maximize", "test/loss": "minimize"}
SAMPLERS = ("tpe", "random", "grid")
HEARTBEAT_INTERVAL_S = 10
# A trial whose worker has not beaten for this long is failed and retried.
GRACE_PERIOD_S = 60
DEFINITION_ATTR = "pipeline_sweep"

_PROCESS_LOCK = threading.Lock()


@dataclasses.dataclass(frozen=True)
class StudyDefinition:
    """What a study is: every worker joining it must ask for exactly this."""

    space: dict[str, str]
    sampler: str
    metric: str
    direction: str
    repeats: int
    base: dict[str, Any]

    def to_attr(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def quiet_optuna() -> None:
    """Keeps Optuna to warnings that matter to a sweep's user.

    Heartbeats, retries and stale-trial checks are marked experimental, and
    heartbeats outside `Study.optimize` warn: the sweep uses both on purpose.
    """
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed")


def default_storage(experiment_dir: str | os.PathLike) -> str:
    """`sqlite:///<logdir>/<sweep_name>/study.db` (absolute), next to the runs."""
    return f"sqlite:///{pathlib.Path(experiment_dir).absolute() / 'study.db'}"


def _where(url: str) -> str:
    parsed = sqlalchemy.engine.make_url(url)
    if parsed.get_backend_name() == "sqlite":
        return parsed.database or ":memory:"
    return f"{parsed.host or 'localhost'}:{parsed.port or 'default port'}"


def connect(url: str) -> optuna.storages.RDBStorage:
    """Opens the storage (creating its tables on first use), with heartbeats.

    Raises:
      SweepError: one line naming the storage's host (never its password)
        and the reason, if the URL is malformed or the server cannot be
        reached.
    """
    try:
        parsed = sqlalchemy.engine.make_url(url)
    except sqlalchemy.exc.ArgumentError:
        raise sweep_lib.SweepError(
            f"--storage={safe_url(url)}: not a database URL "
            "(sqlite:///PATH or postgresql://USER@HOST:PORT/DB)"
        ) from None
    engine_kwargs: dict[str, Any] = {}
    if parsed.get_backend_name() == "sqlite":
        if parsed.database:
            pathlib.Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        # Workers on one machine take turns to write; wait rather than fail.
        engine_kwargs["connect_args"] = {"timeout": 60}
    else:
        engine_kwargs["connect_args"] = {"connect_timeout": 10}
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
                    optuna.storages.RetryHeartbeatStaleTrialCallback()
                ),
            )
        except (sqlalchemy.exc.SQLAlchemyError, ImportError) as err:
            raise sweep_lib.SweepError(
                f"--storage={safe_url(url)}: cannot open the study storage at "
                f"{_where(url)} ({_reason(err)})"
            ) from None


def _reason(err: BaseException) -> str:
    original = getattr(err, "orig", None) or err
    lines = [line.strip() for line in str(original).splitlines() if line.strip()]
    text = lines[0] if lines else type(err).__name__
    return re.sub(r"^\([\w.]+\) ", "", text)


@contextlib.contextmanager
def claim_lock(url: str, study_name: str) -> Iterator[None]:
    """Serialises "check the total, then take a trial" across all workers.

    `study_name` "" locks the whole storage (while its tables are created).
    """
    parsed = sqlalchemy.engine.make_url(url)
    backend = parsed.get_backend_name()
    with _PROCESS_LOCK:
        if backend == "sqlite":
            lock_path = pathlib.Path(f"{parsed.database}.lock")
            with open(lock_path, "a") as lock_file:
                fcntl.flock(lock_file, fcntl.LOCK_EX)
                try:
                    yield
                finally:
                    fcntl.flock(lock_file, fcntl.LOCK_UN)
            return
        key = zlib.crc32(f"pipeline-sweep/{study_name}".encode())
        lock, unlock = {
            "postgresql": (
                "SELECT pg_advisory_lock(:k)",
                "SELECT pg_advisory_unlock(:k)",
            ),
            "mysql": ("SELECT GET_LOCK(:k, -1)", "SELECT RELEASE_LOCK(:k)"),
        }.get(backend, (None, None))
        if lock is None:
            raise sweep_lib.SweepError(
                f"--storage={safe_url(url)}: {backend} has no lock the sweep can "
                "use; use sqlite, postgresql or mysql"
            )
        engine = _lock_engine(url)
        try:
            connection = engine.connect()
        except sqlalchemy.exc.SQLAlchemyError as err:
            raise sweep_lib.SweepError(
                f"--storage={safe_url(url)}: cannot open the study storage at "
                f"{_where(url)} ({_reason(err)})"
            ) from None
        with connection:
            connection.execute(sqlalchemy.text(lock), {"k": key})
            try:
                yield
            finally:
                connection.execute(sqlalchemy.text(unlock), {"k": key})
                connection.commit()


_ENGINES: dict[str, sqlalchemy.engine.Engine] = {}


def _lock_engine(url: str) -> sqlalchemy.engine.Engine:
    if url not in _ENGINES:
        _ENGINES[url] = sqlalchemy.create_engine(url, poolclass=sqlalchemy.NullPool)
    return _ENGINES[url]


class _AskTellGridSampler(optuna.samplers.GridSampler):
    """Optuna's grid sampler for ask-and-tell workers.

    Its `after_trial` calls `study.stop()`, which only works inside
    `study.optimize()`; the workers count the grid's trials themselves.
    """

    def after_trial(self, study, trial, state, values) -> None:
        del study, trial, state, values


def trial_seed(base_seed: int, number: int) -> int:
    """The sampler's seed for drawing trial `number` of a sweep with `base_seed`.

    Seeding per trial, not per process, is what lets several processes share
    one study: a sampler seeded once per process replays the same random
    draws in every process (a second machine, a re-run continuing the study)
    and trains configurations again. This way trial N's draw depends only on
    the seed, N and the study's history, whoever draws it.
    """
    return int(np.random.SeedSequence([base_seed, number]).generate_state(1)[0])


def make_sampler(
    name: str, axes: Sequence[search_space.Axis], seed: int, startup_trials: int
) -> optuna.samplers.BaseSampler:
    """`tpe`, `random` or `grid` (every axis a choice), seeded with the base seed."""
    if name == "grid":
        return _AskTellGridSampler({a.flag: list(a.choices) for a in axes}, seed=seed)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=startup_trials)


def open_study(
    storage: optuna.storages.RDBStorage,
    url: str,
    name: str,
    definition: StudyDefinition,
    sampler: optuna.samplers.BaseSampler,
    pruner: optuna.pruners.BasePruner,
) -> optuna.Study:
    """Creates the study, or joins it if it exists with the same definition.

    Raises:
      SweepError: naming the study and the first thing that differs.
    """
    with claim_lock(url, name):
        study = optuna.create_study(
            storage=storage,
            study_name=name,
            sampler=sampler,
            pruner=pruner,
            direction=definition.direction,
            load_if_exists=True,
        )
        theirs = study.user_attrs.get(DEFINITION_ATTR)
        if theirs is None:
            study.set_user_attr(DEFINITION_ATTR, definition.to_attr())
            return study
    where = f"study {name!r} in {safe_url(url)}"
    if study.direction.name.lower() != definition.direction:
        raise sweep_lib.SweepError(
            f"--direction={definition.direction}: {where} is "
            f"{study.direction.name.lower()}; use another --sweep_name"
        )
    ours = definition.to_attr()
    for key, label in (
        ("space", "search space"),
        ("sampler", "--sampler"),
        ("metric", "--metric"),
        ("repeats", "--repeats"),
    ):
        if theirs.get(key) != ours[key]:
            raise sweep_lib.SweepError(
                f"{where} has another {label} ({_text(theirs.get(key))} there, "
                f"{_text(ours[key])} now); use another --sweep_name"
            )
    return study


def check_base(study: optuna.Study, url: str, definition: StudyDefinition) -> None:
    """Refuses other base flags once a trial finished with the study's.

    A study none of whose trials completed or was pruned takes the new base
    flags (a sweep killed in its first trial may be re-run with others).

    Raises:
      SweepError: naming the first flag that differs.
    """
    theirs = study.user_attrs.get(DEFINITION_ATTR, {}).get("base", {})
    ours = definition.base
    differ = sorted(
        k for k in ours.keys() | theirs.keys() if ours.get(k) != theirs.get(k)
    )
    if not differ:
        return
    finished = study.get_trials(
        deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)
    )
    if not finished:
        study.set_user_attr(DEFINITION_ATTR, definition.to_attr())
        return
    k = differ[0]
    raise sweep_lib.SweepError(
        f"study {study.study_name!r} in {safe_url(url)} has other base flags "
        f"({k}={theirs.get(k)} there, {ours.get(k)} now); use another --sweep_name"
    )


def _text(value: Any) -> str:
    if isinstance(value, Mapping):
        return " ".join(f"{k}={v}" for k, v in value.items()) or "none"
    return str(value)


@dataclasses.dataclass(frozen=True)
class Counts:
    """Where the study's trials stand; `used` counts against the total."""

    completed: int
    pruned: int
    failed: int
    running: int
    waiting: int

    @property
    def finished(self) -> int:
        return self.completed + self.pruned + self.failed

    @property
    def used(self) -> int:
        return self.finished + self.running + self.waiting


def retried_numbers(trials: Sequence[FrozenTrial]) -> set[int]:
    """Failed trials queued again (their retry, not they, counts)."""
    out: set[int] = set()
    for trial in trials:
        out.update(trial.system_attrs.get("retry_history", []))
    return out


def counts(trials: Sequence[FrozenTrial]) -> Counts:
    retried = retried_numbers(trials)
    by_state = {state: 0 for state in TrialState}
    for trial in trials:
        if not (trial.state == TrialState.FAIL and trial.number in retried):
            by_state[trial.state] += 1
    return Counts(
        completed=by_state[TrialState.COMPLETE],
        pruned=by_state[TrialState.PRUNED],
        failed=by_state[TrialState.FAIL],
        running=by_state[TrialState.RUNNING],
        waiting=by_state[TrialState.WAITING],
    )


def worker_attr() -> dict[str, Any]:
    """Who runs a trial: recorded on it so a dead worker here is seen at once."""
    return {"host": socket.gethostname(), "pid": os.getpid()}


def fail_dead_trials(study: optuna.Study) -> list[FrozenTrial]:
    """Fails (and queues again) running trials whose worker is gone.

    A worker on this machine is checked by its pid; one elsewhere by Optuna's
    heartbeat (after `GRACE_PERIOD_S`). Returns the trials failed here.
    """
    failed = []
    storage = study._storage
    callback = optuna.storages.RetryHeartbeatStaleTrialCallback()
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        worker = trial.user_attrs.get("worker")
        if not worker or worker.get("host") != socket.gethostname():
            continue
        if recovery.owner_alive(worker):
            continue
        with contextlib.suppress(optuna.exceptions.UpdateFinishedTrialError):
            if storage.set_trial_state_values(trial._trial_id, TrialState.FAIL):
                failed.append(storage.get_trial(trial._trial_id))
    for trial in failed:
        callback(study, trial)
    before = {t.number for t in study.get_trials(states=(TrialState.FAIL,))}
    optuna.storages.fail_stale_trials(study)
    failed += [
        t for t in study.get_trials(states=(TrialState.FAIL,)) if t.number not in before
    ]
    return failed
