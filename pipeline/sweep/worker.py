"""Sweep workers: take trials from the study, train each as `pipeline-train` runs.

A worker takes one trial at a time with `Study.optimize(n_trials=1)`, so
Optuna itself asks, keeps the trial's heartbeat, fails stale trials and tells
the outcome. The study's claim lock is held from "is the total reached?"
until the objective owns its trial, which keeps `--trials` exact for any
number of workers. The objective trains the trial's runs one after another
(seeds SEED, SEED+1, ...), answering each run's reports (`link`), and ends:

  completed  all runs completed: the mean of their final metric
  pruned     a run was pruned (`TrialPruned`); later seeds are not trained
  diverged   a run's loss or weights turned NaN/Inf: the objective returns
             NaN, which Optuna records as FAIL and goes on; the trial's
             `outcome` attribute says `diverged`. A result, not a failure.
  failed     a run crashed (`TrialCrashedError`): the sweep exits non-zero
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import pathlib
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from typing import Any

import optuna

from pipeline import config as config_lib
from pipeline import processes
from pipeline.runs import archive
from pipeline.runs.rundir import RECORD_NAME, RunDir
from pipeline.sweep import link as link_lib
from pipeline.sweep import runs as runs_lib
from pipeline.sweep import space
from pipeline.sweep import storage as storage_lib
from pipeline.sweep import study as study_lib
from pipeline.sweep import trainer as trainer_lib
from pipeline.tensorboard import hparams as hparams_lib
from pipeline.tensorboard import seed_bands


@dataclasses.dataclass(frozen=True)
class Sweep:
    """What every worker of one sweep shares."""

    name: str
    experiment: pathlib.Path
    base: config_lib.TrainConfig
    axes: tuple[space.Axis, ...]
    repeats: int
    total: int
    metric: str
    direction: str
    storage_url: str
    sampler: str
    pruner: study_lib.PrunerSpec
    startup_trials: int = 5
    # A worker's training process is replaced once it grew by this (MB).
    trainer_growth_mb: int = trainer_lib.GROWTH_MB

    @property
    def named_by_values(self) -> bool:
        return self.sampler == "grid"

    def trial_runs(self, number: int, params: dict[str, Any]) -> list:
        """Trial `number`'s runs: named by values in a grid, else by number."""
        named_by = None if self.named_by_values else number
        return runs_lib.trial_runs(
            self.base, self.experiment, self.axes, self.repeats, params, named_by
        )


class TrialCrashedError(Exception):
    """A run of the trial failed for a reason other than the model's outcome."""


class _InterruptedError(Exception):
    """The sweep was interrupted while the trial trained."""


class _StorageLostError(BaseException):
    """The study storage stopped answering while the trial trained. Not an
    `Exception`: Optuna would try to tell the storage the trial failed, fail
    again, and chain three tracebacks; the trial stays RUNNING instead, and
    the next sweep finds its worker dead and continues its runs."""

    def __init__(self, err: BaseException):
        super().__init__(str(err))
        self.err = err


@dataclasses.dataclass
class RunOutcome:
    """How one run (one seed) ended: `completed`, `pruned`, `diverged`, ..."""

    name: str
    seed: int
    status: str
    value: float | None = None
    message: str = ""
    steps: int = 0


@dataclasses.dataclass
class TrialOutcome:
    """How one trial ended in this worker."""

    number: int = -1
    params: dict[str, Any] = dataclasses.field(default_factory=dict)
    state: str = "interrupted"
    value: float | None = None
    message: str = ""
    runs: list[RunOutcome] = dataclasses.field(default_factory=list)
    seconds: float = 0.0


def dead_trial_runs_failed(
    sweep: Sweep, trial: optuna.trial.FrozenTrial, progress: Progress
) -> None:
    """After the study failed a trial whose worker died: its runs say so too."""
    progress.note(f"trial {trial.number}: its worker died; failed, queued again")
    for repeat, name in enumerate(trial.user_attrs.get("runs", [])):
        path = sweep.experiment / name
        if runs_lib.resumable(path):  # its retry continues it
            if runs_lib.read_record(path).get("status") == "running":
                RunDir(path).update_record(status="interrupted")
        else:
            runs_lib.mark_failed(
                path, "interrupted: its sweep worker died (found by pipeline-sweep)"
            )
        if (path / RECORD_NAME).is_file():
            RunDir(path).update_record(
                trial=_link(sweep, trial.number, repeat).record()
            )


def _link(sweep: Sweep, number: int, repeat: int, fd: int = -1) -> link_lib.TrialLink:
    return link_lib.TrialLink(
        study=sweep.name,
        number=number,
        metric=sweep.metric,
        repeat=repeat,
        storage=storage_lib.safe_url(sweep.storage_url),
        fd=fd,
    )


class Worker:
    """Takes trials until the study's total is reached, trains and tells them."""

    def __init__(self, sweep, storage, progress: Progress, stop: threading.Event):
        self.sweep, self.storage, self.progress, self.stop = (
            sweep,
            storage,
            progress,
            stop,
        )
        # A Study object per worker thread: Optuna runs one optimize() per object.
        self.study = optuna.load_study(
            study_name=sweep.name, storage=storage, pruner=sweep.pruner.build()
        )
        if sweep.sampler == "grid":  # a grid takes unvisited points: seed once
            self.study.sampler = self.sampler(sweep.base.seed)
        self.process: subprocess.Popen | None = None  # training a run now
        self.lost: BaseException | None = None  # the storage's error, once lost
        level = os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2")
        self.env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL=level)
        self.trainer: trainer_lib.Trainer | None = None
        # Started now, so that TensorFlow's import overlaps the sweep's set-up.
        self.warm_trainer(sweep.base)

    def sampler(self, seed: int) -> optuna.samplers.BaseSampler:
        sweep = self.sweep
        return study_lib.make_sampler(
            sweep.sampler, sweep.axes, seed, sweep.startup_trials
        )

    def run(self) -> list[TrialOutcome]:
        outcomes = []
        try:
            while not self.stop.is_set():
                outcome = self.take_trial()
                if outcome is None:
                    break
                outcomes.append(outcome)
                hparams_lib.write_experiment_config(self.sweep.experiment)
                seed_bands.update(self.sweep.experiment)
                self.progress.trial_finished(outcome)
        finally:
            self.close_trainer()
        return outcomes

    def take_trial(self) -> TrialOutcome | None:
        """Takes and trains one trial; None when the study's total is reached."""
        sweep, study = self.sweep, self.study
        outcome = TrialOutcome()
        with contextlib.ExitStack() as claim:
            claim.enter_context(storage_lib.claim_lock(sweep.storage_url, sweep.name))
            for dead in study_lib.fail_dead_trials(study, self.storage):
                dead_trial_runs_failed(sweep, dead, self.progress)
            trials = study.get_trials(deepcopy=False)
            counts = study_lib.counts(trials)
            if counts.waiting == 0 and counts.used >= sweep.total:
                return None
            if sweep.sampler != "grid":
                study.sampler = self.sampler(
                    study_lib.trial_seed(sweep.base.seed, len(trials))
                )

            def objective(trial: optuna.Trial) -> float:
                runs = self.claim_runs(trial)
                claim.close()  # the trial is ours: let other workers take theirs
                return self.objective(trial, runs, outcome)

            try:
                study.optimize(objective, n_trials=1, catch=(TrialCrashedError,))
            except _StorageLostError as lost:
                raise storage_lib.lost(sweep.storage_url, lost.err) from None
            except _InterruptedError:
                # Stopped by the user, not by the trial itself: train it again.
                (frozen,) = [t for t in study.trials if t.number == outcome.number]
                retry = optuna.storages.RetryHeartbeatStaleTrialCallback
                retry(inherit_intermediate_values=True)(study, frozen)
        return outcome

    def claim_runs(self, trial: optuna.Trial) -> list:
        """The trial's runs, recorded on it. A retry of an interrupted trial
        (Optuna copies its attributes) keeps the runs it can continue or take
        as they are (completed, say, when the storage stopped before the
        study heard it): they are not trained again under a new name."""
        params = space.suggest(trial, self.sweep.axes)
        named = trial.user_attrs.get("named_as", trial.number)
        runs = self.sweep.trial_runs(named, params)
        if not any(_continued(run.path) for run in runs):
            named, runs = trial.number, self.sweep.trial_runs(trial.number, params)
        trial.set_user_attr("named_as", named)
        trial.set_user_attr("worker", study_lib.worker_attr())
        trial.set_user_attr("runs", [run.name for run in runs])
        return runs

    def objective(self, trial: optuna.Trial, runs: list, outcome) -> float:
        started = time.monotonic()
        outcome.number, outcome.params = trial.number, dict(trial.params)
        for run in runs:
            self.progress.run_started(trial.number, run.name)
            result = self.train_run(trial, run)
            outcome.runs.append(result)
            self.progress.run_finished(result)
            if self.lost is not None:
                self.record_lost(run)
                raise _StorageLostError(self.lost)
            if result.status != "completed":
                break
        outcome.seconds = time.monotonic() - started
        outcome.state, outcome.message = result.status, result.message
        if result.status == "completed":
            outcome.value = statistics.fmean(r.value for r in outcome.runs)
            return outcome.value
        if result.status == "interrupted":
            raise _InterruptedError
        if result.status == "pruned":
            raise optuna.TrialPruned(result.message)
        trial.set_user_attr("outcome", result.status)
        trial.set_user_attr("error", result.message)
        if result.status == study_lib.DIVERGED:
            return float("nan")  # Optuna's rule: FAIL, and the study goes on
        raise TrialCrashedError(result.message)

    def record_lost(self, run) -> None:
        """The run's record says why it stopped (it stays `interrupted`)."""
        if runs_lib.read_record(run.path).get("status") not in (None, "completed"):
            line = storage_lib.lost(self.sweep.storage_url, self.lost)
            RunDir(run.path).update_record(error=f"StorageLostError: {line}")

    def train_run(self, trial: optuna.Trial, run) -> RunOutcome:
        """Trains one run (or takes the one an earlier life completed)."""
        seed = run.config.seed
        archived = self.archived_outcome(run)
        if archived is not None:
            return archived
        resume = runs_lib.resumable(run.path)
        if resume:
            self.progress.note(f"{run.path}: interrupted; continuing it")
        elif run.path.exists():
            done, _, notes = runs_lib.triage([run])
            for note in notes:
                self.progress.note(note)
            if done:
                self.progress.note(f"{run.path}: completed before; taken as it is")
                link = _link(self.sweep, trial.number, run.repeat)  # now this trial's
                RunDir(run.path).update_record(trial=link.record())
                record = runs_lib.read_record(run.path)
                value = runs_lib.metric_value(record, self.sweep.metric)
                steps = int(record.get("step") or 0)
                return RunOutcome(run.name, seed, "completed", value, "", steps)
        returncode, log = self.train_process(trial, run, resume)
        if (run.path / RECORD_NAME).is_file():
            # The process is gone: nothing else writes the record now.
            link = _link(self.sweep, trial.number, run.repeat)
            RunDir(run.path).update_record(trial=link.record())
        record = runs_lib.read_record(run.path)
        status, steps = record.get("status"), int(record.get("step") or 0)
        if run.path.is_dir():
            os.replace(log, run.path / "train.log")
            log = run.path / "train.log"
        if returncode == 0 and status == "completed":
            value = runs_lib.metric_value(record, self.sweep.metric)
            return RunOutcome(run.name, seed, "completed", value, "", steps)
        if status in ("pruned", study_lib.DIVERGED):
            reason = record.get("stop_reason") or record.get("error", "")
            reason = reason.removeprefix("NonFiniteLossError: ")
            return RunOutcome(run.name, seed, status, None, reason, steps)
        if status == "interrupted" and runs_lib.resumable(run.path):
            message = f"interrupted at step {steps}; the next sweep continues it"
            return RunOutcome(run.name, seed, "interrupted", None, message, steps)
        message = "interrupted" if self.stop.is_set() else _last_line(log)
        message = message or f"exit status {returncode}"
        if run.path.is_dir():
            runs_lib.mark_failed(run.path, record.get("error") or message)
        else:
            log.unlink(missing_ok=True)
        status = "interrupted" if self.stop.is_set() else "failed"
        return RunOutcome(run.name, seed, status, None, message, steps)

    def archived_outcome(self, run) -> RunOutcome | None:
        """The outcome `pipeline-runs archive|delete` recorded for a run the
        user moved away: a completed run's value stands, anything else fails
        its trial; either way it is never trained again."""
        gone = archive.entry(run.path)
        if gone is None or run.path.exists():
            return None
        self.progress.note(f"{run.path}: {gone['action']}; not trained again")
        seed = run.config.seed
        if gone.get("status") == "completed":
            value = runs_lib.metric_value(gone, self.sweep.metric)
            return RunOutcome(run.name, seed, "completed", value)
        message = f"{gone['action']} by the user"
        return RunOutcome(run.name, seed, "failed", None, message)

    def train_process(self, trial, run, resume: bool) -> tuple[int, pathlib.Path]:
        """Trains `run` in the worker's warm training process (`trainer`),
        answering its reports.

        Returns:
          (its exit status as `pipeline-train`'s, its log file).
        """
        fd, log_name = tempfile.mkstemp(
            prefix=f".{run.name}.", suffix=".log", dir=run.path.parent
        )
        ours, theirs = socket.socketpair()
        link = _link(self.sweep, trial.number, run.repeat).to_env()
        trainer = self.warm_trainer(run.config)
        with theirs, os.fdopen(fd, "w") as log:
            argv = ["pipeline-train", *runs_lib.train_flags(run, resume)]
            trainer.start_run(
                argv, json.loads(link[link_lib.ENV_VAR]), log.fileno(), theirs.fileno()
            )
        self.process = trainer.process
        with ours:
            end = link_lib.WorkerEnd(ours)
            # Short waits: the run's end is seen within 50 ms of it.
            returncode = None
            while returncode is None:
                question = None if end.closed else end.question(timeout=0.05)
                if question is not None:
                    end.answer(self.judge(trial, question, run.repeat))
                else:
                    returncode = trainer.poll(timeout=0.05 if end.closed else 0)
        self.process = None
        if not trainer.alive:  # killed, crashed or outgrown: a new one for the next
            self.close_trainer()
        return returncode, pathlib.Path(log_name)

    def warm_trainer(self, config) -> trainer_lib.Trainer:
        """The training process for a run of `config`: the one already
        started when it has the process-wide settings the run needs."""
        settings = trainer_lib.process_settings(config)
        trainer = self.trainer
        if trainer is not None and (trainer.settings != settings or not trainer.alive):
            self.close_trainer()  # another kind of run, or killed between runs
        if self.trainer is None:
            self.trainer = trainer_lib.start(
                self.env,
                settings,
                processes.die_with_parent(),
                self.sweep.trainer_growth_mb,
            )
        return self.trainer

    def close_trainer(self) -> None:
        if self.trainer is not None:
            trainer_lib.release(self.trainer)
            self.trainer = None

    def judge(self, trial: optuna.Trial, question: dict, repeat: int) -> dict:
        """Reports a run's evaluation to the trial; the answer for the run."""
        step = repeat * self.sweep.base.steps + int(question["step"])
        if self.lost is not None:
            return {}  # already stopping it
        try:
            trial.report(float(question["value"]), step)
            if trial.should_prune():
                return {"prune": self.sweep.pruner.said_stop(self.study.pruner)}
        except storage_lib.STORAGE_ERRORS as err:
            # The run saves a checkpoint and stops `interrupted`; the next
            # sweep continues it inside the same trial.
            self.lost = storage_lib.storage_failure(err) or err
            self.interrupt()
            return {}
        except optuna.exceptions.UpdateFinishedTrialError:
            return {
                "ended": f"trial {trial.number} of study {self.sweep.name!r} was "
                "ended while this run trained it"
            }
        return {}

    def interrupt(self) -> None:
        """SIGINT to the training process: it saves, records `interrupted`, exits."""
        process = self.process
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGINT)


def _continued(path: pathlib.Path) -> bool:
    """Whether a retried trial keeps this run: resumable, or completed."""
    return runs_lib.resumable(path) or (
        runs_lib.read_record(path).get("status") == "completed"
    )


def seeds(n: int) -> str:
    """`1 seed`, `3 seeds`."""
    return f"{n} seed{'s' if n != 1 else ''}"


def _last_line(log: pathlib.Path) -> str:
    try:
        text = log.read_text(errors="replace")
    except OSError:
        return ""
    lines = [line for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else ""


class Progress:
    """The sweep's log: one line per started and finished run, one per
    finished trial (its variant's mean over its seeds), counted in trials."""

    def __init__(self, sweep: Sweep, study: optuna.Study, print_fn: Callable = print):
        self.sweep, self.study, self.print_fn = sweep, study, print_fn
        self._lock = threading.Lock()

    def note(self, text: str) -> None:
        with self._lock:
            self.print_fn(text)
            sys.stdout.flush()

    def counts(self) -> study_lib.Counts:
        return study_lib.counts(self.study.get_trials(deepcopy=False))

    def counter(self, counts: study_lib.Counts) -> str:
        return f"[{counts.finished:>3}/{self.sweep.total}]"

    def run_started(self, number: int, name: str) -> None:
        self.note(f"{self.counter(self.counts())} started   trial {number} run {name}")

    def run_finished(self, run: RunOutcome) -> None:
        if run.status == "completed":
            result = f"{self.sweep.metric}={run.value:.4f} after {run.steps} steps"
        else:
            result = f"{run.status}: {run.message}"
        self.note(f"{'':7} finished  run {run.name} (seed {run.seed}): {result}")

    def best_text(self) -> str:
        """`best 0.9312 trial 7 (learning_rate=0.01, ...)`, from the study."""
        try:
            best = self.study.best_trial
        except ValueError:
            return "best: none yet"
        params = space.params_text(best.params)
        return f"best {best.value:.4f} trial {best.number} ({params})"

    def trial_finished(self, trial: TrialOutcome) -> None:
        counts = self.counts()
        if trial.state == "completed":
            mean = f"mean of {seeds(len(trial.runs))}"
            result = f"{self.sweep.metric}={trial.value:.4f}, {mean}"
        elif trial.state == "pruned":
            result = f"pruned after {sum(r.steps for r in trial.runs)} steps"
        else:
            result = f"{trial.state}: {trial.message}"
        self.note(
            f"{self.counter(counts)} {trial.state:<9} trial {trial.number} "
            f"({space.params_text(trial.params)}): {result}  ({trial.seconds:.0f}s)  "
            f"{counts.running} running, {counts.diverged} diverged, {counts.pruned} "
            f"pruned, {counts.failed} failed; {self.best_text()}"
        )


def _storage_errors_quiet_in_threads() -> None:
    """Optuna's heartbeat thread dies with a traceback when the storage stops
    answering; the worker that notices reports it in one line instead."""
    default = threading.excepthook

    def hook(args: threading.ExceptHookArgs) -> None:
        if storage_lib.storage_failure(args.exc_value) is None:
            default(args)

    threading.excepthook = hook


def run_workers(
    sweep: Sweep, storage, workers: int, progress: Progress, differing=frozenset()
) -> list[TrialOutcome]:
    """Runs `workers` workers in threads until the study's total is reached
    (none: only the experiment's HParams config is written).

    The experiment's HParams config (`differing`: the flags the sweep varies)
    is written once the workers' training processes are starting.

    Ctrl-C (or SIGTERM, turned into KeyboardInterrupt by the entry point)
    interrupts every training process; each records `interrupted`, its trial
    is failed and queued again, and the KeyboardInterrupt is re-raised.
    """
    stop = threading.Event()
    _storage_errors_quiet_in_threads()
    pool = [Worker(sweep, storage, progress, stop) for _ in range(workers)]
    hparams_lib.write_experiment_config(sweep.experiment, differing)
    results: list[list[TrialOutcome]] = [[] for _ in pool]
    errors: list[BaseException] = []

    def target(i: int) -> None:
        try:
            results[i] = pool[i].run()
        except BaseException as err:  # reported by the main thread
            errors.append(err)
            stop.set()
            for worker in pool:  # they save and stop; the next sweep continues
                worker.interrupt()

    threads = [
        threading.Thread(target=target, args=(i,), daemon=True) for i in range(workers)
    ]
    for thread in threads:
        thread.start()
    try:
        while any(t.is_alive() for t in threads):
            for thread in threads:
                thread.join(timeout=0.2)
    except KeyboardInterrupt:
        stop.set()
        for worker in pool:
            worker.interrupt()
        for thread in threads:
            thread.join()
        raise
    if errors:
        raise errors[0]
    return [outcome for result in results for outcome in result]
