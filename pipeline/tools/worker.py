"""A sweep worker: takes trials from the study and trains each as normal runs.

One trial is one configuration; its `--repeats` runs (seeds SEED, SEED+1,
...) are `pipeline-train` processes under `LOGDIR/SWEEP_NAME/`, one after
another. Runs are named deterministically: by their values for a grid
(`learning_rate=0.1,seed=0`, the names grid sweeps always had) and by trial
number otherwise (`trial=0007,seed=0`). Each run reports the metric at every
evaluation to its trial; when the pruner says stop it ends `pruned`, and the
trial's later repeats are not trained. The worker then tells the study the
outcome: the mean of the repeats' final metric, PRUNED, or FAIL.

A run directory left by an earlier life of the sweep is handled as grid
sweeps always did: a completed one with the same flags is taken as it is
(nothing is trained twice), a half-done one is moved aside and marked failed.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from typing import Any

import optuna
from optuna.trial import TrialState

from pipeline import config as config_lib
from pipeline.runs import archive
from pipeline.runs.rundir import RECORD_NAME, RunDir
from pipeline.tensorboard import hparams as hparams_lib
from pipeline.tensorboard import seed_bands
from pipeline.tools import search_space
from pipeline.tools import study as study_lib
from pipeline.tools import sweep as sweep_lib
from pipeline.training import trial as trial_lib


@dataclasses.dataclass(frozen=True)
class Sweep:
    """What every worker of one sweep shares."""

    name: str
    experiment: pathlib.Path
    base: config_lib.TrainConfig
    axes: tuple[search_space.Axis, ...]
    repeats: int
    total: int
    metric: str
    direction: str
    storage_url: str
    sampler: str
    pruner: trial_lib.PrunerSpec
    startup_trials: int = 5

    @property
    def named_by_values(self) -> bool:
        return self.sampler == "grid"


def trial_runs(
    sweep: Sweep, number: int, params: dict[str, Any]
) -> list[sweep_lib.PlannedRun]:
    """The runs of trial `number` with `params`: one per repeat."""
    overrides = search_space.overrides(sweep.axes, params)
    runs = []
    for repeat in range(sweep.repeats):
        seed = sweep.base.seed + repeat
        seed = int(params.get("seed", seed))
        if sweep.named_by_values:
            name = sweep_lib.run_name(overrides, seed)
        else:
            name = f"trial={number:04d},seed={seed}"
        config = sweep_lib.resolve(sweep.base, overrides, seed)
        config = dataclasses.replace(
            config, logdir=str(sweep.experiment), run_name=name
        )
        runs.append(sweep_lib.PlannedRun(name, config, overrides, repeat))
    return runs


@dataclasses.dataclass
class TrialOutcome:
    """How one trial ended in this worker."""

    number: int
    state: TrialState
    value: float | None
    runs: list[pathlib.Path]
    params: dict[str, Any]
    message: str = ""
    seconds: float = 0.0
    steps: int = 0


def mark_failed(path: pathlib.Path, reason: str) -> None:
    """Marks a run whose process is gone `failed` (record and HParams session)."""
    record = sweep_lib.read_record(path)
    if record.get("status") not in (None, "running", "interrupted"):
        return
    if record:
        RunDir(path).update_record(status="failed", error=reason)
    if any(path.glob("*.session_start")) and not any(path.glob("*.session_end")):
        hparams_lib.write_session_end(path, "failed", reason)


def metric_value(record: dict[str, Any], metric: str) -> float | None:
    """The run's final value of `metric` (`test/accuracy`) from its record."""
    split, _, name = metric.partition("/")
    value = record.get("final_metrics", {}).get(split, {}).get(name)
    return float(value) if isinstance(value, (int, float)) else None


def runs_of_dead_trial_failed(
    sweep: Sweep, trial: optuna.trial.FrozenTrial, progress: Progress
) -> None:
    """After the study failed a trial whose worker died: its runs say so too."""
    progress.note(f"trial {trial.number}: its worker died; failed, queued again")
    for repeat, name in enumerate(trial.user_attrs.get("runs", [])):
        path = sweep.experiment / name
        mark_failed(
            path, "interrupted: its sweep worker died (found by pipeline-sweep)"
        )
        if (path / RECORD_NAME).is_file():
            link = trial_link(sweep, trial.number, repeat)
            RunDir(path).update_record(trial=link.record())


def trial_link(sweep: Sweep, number: int, repeat: int) -> trial_lib.TrialLink:
    """How repeat `repeat` of trial `number` reports to the study."""
    return trial_lib.TrialLink(
        storage=sweep.storage_url,
        study=sweep.name,
        number=number,
        metric=sweep.metric,
        repeat=repeat,
        step_offset=repeat * sweep.base.steps,
        pruner=sweep.pruner,
    )


def trial_finished(sweep: Sweep, outcome: TrialOutcome) -> None:
    """Called once after every trial, its runs final on disk: the hook point.

    What is built from a sweep's finished runs (the HParams experiment config
    today; TensorBoard views over the variants' seeds) is refreshed here.
    """
    hparams_lib.write_experiment_config(sweep.experiment)
    seed_bands.update(sweep.experiment)


class Worker:
    """Takes trials until the study's total is reached, trains and tells them."""

    def __init__(
        self,
        sweep: Sweep,
        study: optuna.Study,
        progress: Progress,
        stop: threading.Event,
    ):
        self.sweep = sweep
        self.study = study
        self.progress = progress
        self.stop = stop
        self.process: subprocess.Popen | None = None
        self.env = dict(
            os.environ,
            TF_CPP_MIN_LOG_LEVEL=os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2"),
        )

    def run(self) -> list[TrialOutcome]:
        outcomes = []
        while not self.stop.is_set():
            trial = self.claim()
            if trial is None:
                break
            outcome = self.train(trial)
            outcomes.append(outcome)
            trial_finished(self.sweep, outcome)
            self.progress.finished(outcome)
        return outcomes

    def claim(self) -> optuna.Trial | None:
        """The next trial (a queued retry first), or None when the total is reached."""
        sweep = self.sweep
        with study_lib.claim_lock(sweep.storage_url, sweep.name):
            for dead in study_lib.fail_dead_trials(self.study):
                runs_of_dead_trial_failed(sweep, dead, self.progress)
            counts = study_lib.counts(self.study.get_trials(deepcopy=False))
            if counts.waiting == 0 and counts.used >= sweep.total:
                return None
            if sweep.sampler != "grid":
                # Seeded for this trial number (`study.trial_seed`), so no
                # process replays another's draws. (A grid needs no reseed: it
                # takes an unvisited point of the grid, read from the study.)
                self.study.sampler = study_lib.make_sampler(
                    sweep.sampler,
                    sweep.axes,
                    study_lib.trial_seed(
                        sweep.base.seed, len(self.study.get_trials(deepcopy=False))
                    ),
                    sweep.startup_trials,
                )
            trial = self.study.ask({a.flag: a.distribution for a in sweep.axes})
            runs = trial_runs(sweep, trial.number, trial.params)
            trial.set_user_attr("worker", study_lib.worker_attr())
            trial.set_user_attr("runs", [run.name for run in runs])
        self.study._storage.record_heartbeat(trial._trial_id)
        return trial

    def train(self, trial: optuna.Trial) -> TrialOutcome:
        """Trains the trial's runs, one after another; tells the study the outcome."""
        started = time.monotonic()
        runs = trial_runs(self.sweep, trial.number, trial.params)
        outcome = TrialOutcome(
            trial.number, TrialState.RUNNING, None, [r.path for r in runs], trial.params
        )
        values: list[float] = []
        try:
            for run in runs:
                self.progress.started(trial.number, run.name)
                state, value, message, steps = self.train_run(trial, run)
                outcome.steps += steps
                if state != TrialState.COMPLETE:
                    outcome.state, outcome.message = state, message
                    break
                values.append(value)
            else:
                outcome.state = TrialState.COMPLETE
                outcome.value = statistics.fmean(values)
        finally:
            outcome.seconds = time.monotonic() - started
            if outcome.state == TrialState.RUNNING:  # interrupted mid-trial
                outcome.state = TrialState.FAIL
                outcome.message = "interrupted"
            self.tell(trial, outcome)
        return outcome

    def tell(self, trial: optuna.Trial, outcome: TrialOutcome) -> None:
        if outcome.message:
            trial.set_user_attr("error", outcome.message)
        if outcome.state == TrialState.COMPLETE:
            self.study.tell(trial, outcome.value)
        else:
            self.study.tell(trial, state=outcome.state)
        if outcome.message == "interrupted":
            # Stopped by the user, not by the trial itself: train it again later.
            frozen = self.study._storage.get_trial(trial._trial_id)
            optuna.storages.RetryHeartbeatStaleTrialCallback()(self.study, frozen)

    def train_run(
        self, trial: optuna.Trial, run: sweep_lib.PlannedRun
    ) -> tuple[TrialState, float | None, str, int]:
        """(state, final metric, message, steps trained) of one run."""
        done = self.existing(run)
        if done is not None:
            return done
        link = trial_link(self.sweep, trial.number, run.repeat)
        returncode, log = self.wait(trial, run, link)
        if (run.path / RECORD_NAME).is_file():
            # The process is gone: nothing else writes the record now.
            RunDir(run.path).update_record(trial=link.record())
        record = sweep_lib.read_record(run.path)
        status = record.get("status")
        steps = int(record.get("step") or 0)
        if returncode == 0 and status == "completed":
            os.replace(log, run.path / "train.log")
            return TrialState.COMPLETE, metric_value(record, link.metric), "", steps
        if status == "pruned":
            os.replace(log, run.path / "train.log")
            return TrialState.PRUNED, None, record.get("stop_reason", "pruned"), steps
        message = _last_line(log) or f"exit status {returncode}"
        if self.stop.is_set():
            message = "interrupted"
        if run.path.is_dir():
            os.replace(log, run.path / "train.log")
            mark_failed(run.path, record.get("error") or message)
        else:
            log.unlink(missing_ok=True)
        return TrialState.FAIL, None, message, steps

    def existing(
        self, run: sweep_lib.PlannedRun
    ) -> tuple[TrialState, float | None, str, int] | None:
        """A run left by an earlier life of the sweep: kept, or moved aside.

        Raises:
          SweepError: it is being trained by a live process.
        """
        gone = archive.entry(run.path)
        if gone is not None and not run.path.exists():
            # Archived or deleted by the user (pipeline-runs): its recorded
            # outcome stands, and it is never trained again.
            self.progress.note(f"{run.path}: {gone['action']}; not trained again")
            if gone.get("status") == "completed":
                value = metric_value(gone, self.sweep.metric)
                return TrialState.COMPLETE, value, "", 0
            return TrialState.FAIL, None, f"{gone['action']} by the user", 0
        if not run.path.exists():
            return None
        done, _, notes = sweep_lib.triage([run])
        for note in notes:
            self.progress.note(note)
        if not done:
            return None
        self.progress.note(f"{run.path}: completed before; taken as it is")
        record = sweep_lib.read_record(run.path)
        return TrialState.COMPLETE, metric_value(record, self.sweep.metric), "", 0

    def wait(
        self, trial: optuna.Trial, run: sweep_lib.PlannedRun, link: trial_lib.TrialLink
    ) -> tuple[int, pathlib.Path]:
        """Runs `pipeline-train` for `run`, beating the trial's heartbeat meanwhile."""
        fd, log_name = tempfile.mkstemp(
            prefix=f".{run.name}.", suffix=".log", dir=run.path.parent
        )
        with os.fdopen(fd, "w") as log:
            self.process = subprocess.Popen(
                sweep_lib.train_command(run),
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**self.env, **link.to_env()},
            )
        last_beat = time.monotonic()
        while self.process.poll() is None:
            time.sleep(0.2)
            if time.monotonic() - last_beat >= study_lib.HEARTBEAT_INTERVAL_S:
                self.study._storage.record_heartbeat(trial._trial_id)
                last_beat = time.monotonic()
        returncode = self.process.returncode
        self.process = None
        return returncode, pathlib.Path(log_name)

    def interrupt(self) -> None:
        """SIGINT to the training process: it saves, records `interrupted`, exits."""
        process = self.process
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGINT)


def _last_line(log: pathlib.Path) -> str:
    try:
        lines = [
            ln for ln in log.read_text(errors="replace").splitlines() if ln.strip()
        ]
    except OSError:
        return ""
    return lines[-1] if lines else ""


class Progress:
    """Prints one line per started and finished run/trial, with the study's counts."""

    def __init__(
        self,
        sweep: Sweep,
        study: optuna.Study,
        print_fn: Callable[[str], None] = print,
    ):
        self.sweep = sweep
        self.study = study
        self.print_fn = print_fn
        self._lock = threading.Lock()

    def _say(self, text: str) -> None:
        with self._lock:
            self.print_fn(text)
            sys.stdout.flush()

    def _counts(self) -> study_lib.Counts:
        return study_lib.counts(self.study.get_trials(deepcopy=False))

    def note(self, text: str) -> None:
        self._say(text)

    def started(self, number: int, name: str) -> None:
        counts = self._counts()
        self._say(
            f"[{counts.finished:>3}/{self.sweep.total}] started   trial {number} {name}"
        )

    def best_text(self) -> str:
        """`best 0.9312 trial 7 (learning_rate=0.01, ...)`, from the study."""
        try:
            best = self.study.best_trial
        except ValueError:
            return "best: none yet"
        flags = ", ".join(
            f"{flag}={search_space.value_text(value)}"
            for flag, value in best.params.items()
        )
        return f"best {best.value:.4f} trial {best.number} ({flags})"

    def finished(self, outcome: TrialOutcome) -> None:
        counts = self._counts()
        if outcome.state == TrialState.COMPLETE and outcome.value is not None:
            result = f"{self.sweep.metric}={outcome.value:.4f}"
        elif outcome.state == TrialState.PRUNED:
            result = f"PRUNED after {outcome.steps} steps"
        else:
            result = f"FAILED: {outcome.message}"
        state = {
            TrialState.COMPLETE: "completed",
            TrialState.PRUNED: "pruned",
            TrialState.FAIL: "failed",
        }[outcome.state]
        names = ",".join(p.name for p in outcome.runs[:1])
        self._say(
            f"[{counts.finished:>3}/{self.sweep.total}] {state:<9} trial "
            f"{outcome.number} {names}  {result}  ({outcome.seconds:.0f}s)  "
            f"running {counts.running}, pruned {counts.pruned}, "
            f"failed {counts.failed}  {self.best_text()}"
        )


def run_workers(
    sweep: Sweep, study: optuna.Study, workers: int, progress: Progress
) -> list[TrialOutcome]:
    """Runs `workers` workers in threads until the study's total is reached.

    Ctrl-C (or SIGTERM, turned into KeyboardInterrupt by the entry point)
    interrupts every training process; each records `interrupted`, its trial
    is failed and queued again, and the KeyboardInterrupt is re-raised.
    """
    stop = threading.Event()
    pool = [Worker(sweep, study, progress, stop) for _ in range(workers)]
    results: list[list[TrialOutcome]] = [[] for _ in pool]
    errors: list[BaseException] = []

    def target(i: int) -> None:
        try:
            results[i] = pool[i].run()
        except BaseException as err:  # reported by the main thread
            errors.append(err)
            stop.set()

    threads = [
        threading.Thread(target=target, args=(i,), daemon=True)
        for i in range(len(pool))
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


def check_completed_runs(sweep: Sweep, study: optuna.Study) -> None:
    """Refuses a sweep whose completed runs here were trained with other flags.

    Raises:
      SweepError: naming the first such run (by name) and a flag that differs.
    """
    runs = [
        run
        for trial in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        for run in trial_runs(sweep, trial.number, trial.params)
        if run.path.exists()
    ]
    sweep_lib.triage(sorted(runs, key=lambda run: run.name))
