"""Sweep workers as real processes, and what their study and runs say afterwards."""

from __future__ import annotations

import os
import pathlib
import signal
import subprocess
import threading
from unittest import mock

import optuna
from conftest import LOGREG_FLAGS, cli_env, main_in_process, record, sweep_command

from pipeline.sweep import study as study_lib

# A small search over the tiny logreg run's learning rate.
SEARCH = ["--search=learning_rate=log:0.01:0.5", "--sampler=random"]


def start_worker(logdir: pathlib.Path, *args: str, **kwargs) -> subprocess.Popen:
    """One `pipeline-sweep` process: a worker on the study its flags name."""
    return subprocess.Popen(
        sweep_command(logdir, *args),
        env=cli_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kwargs,
    )


def sweep_in_process(logdir: pathlib.Path, *args: str) -> subprocess.CompletedProcess:
    """`run_sweep(logdir, *args)` in this process: no `pipeline-sweep` process.
    The trials still train in a real training process, kept warm from the
    previous in-process sweep on this pytest worker (conftest's
    `warm_sweep_trainers`): one TensorFlow import per worker, not per sweep.
    The variable pytest sets per test is left out of the sweep's environment,
    so that the next test's sweep finds the same one and takes the process.

    What the sweep sets for its whole process (its SIGTERM handler, the
    thread excepthook that keeps a lost storage to one line) is set back
    afterwards. Keep one `run_sweep` per exit path to prove what `cli.start`
    does to the process; use this for reruns, refusals and continuations.
    One worker only: trials name their worker's pid, and this process's
    command line does not name the pipeline, so a second worker here would
    take the first's running trial for a dead worker's and fail it.
    """
    sigterm, excepthook = signal.getsignal(signal.SIGTERM), threading.excepthook
    try:
        with mock.patch.dict(os.environ):
            os.environ.pop("PYTEST_CURRENT_TEST", None)
            return main_in_process(
                "pipeline-sweep", *LOGREG_FLAGS, f"--logdir={logdir}", *args
            )
    finally:
        signal.signal(signal.SIGTERM, sigterm)
        threading.excepthook = excepthook


def load(storage: str, name: str) -> optuna.Study:
    study_lib.quiet_optuna()
    return optuna.load_study(study_name=name, storage=storage)


def run_dirs(experiment: pathlib.Path) -> list[pathlib.Path]:
    return sorted(p for p in experiment.iterdir() if (p / "run.json").is_file())


def check_study_and_runs_agree(
    study: optuna.Study, experiment: pathlib.Path, local_only: bool = False
) -> None:
    """Every trial's runs exist and say what the study says; no other runs.

    With `local_only`, only the trials whose runs are in `experiment` (a
    worker on another machine trained the rest).
    """
    trials = study.trials
    if local_only:
        trials = [t for t in trials if (experiment / t.user_attrs["runs"][0]).exists()]
        assert trials, f"no trial was trained in {experiment}"
    # A run an interrupted trial left is continued by that trial's retry,
    # which names it too: the last trial naming a run is the one it reports to.
    owner = {}
    for trial in trials:
        for repeat, name in enumerate(trial.user_attrs["runs"]):
            if repeat and not (experiment / name).exists():
                continue  # a seed after one pruned, diverged or failed: untrained
            owner[name] = trial
    for name, trial in owner.items():
        run = record(experiment / name)
        # `diverged` is a FAIL trial whose outcome says so (Optuna's rule for
        # a NaN objective); completed, pruned and failed match states.
        assert run["status"] == study_lib.outcome(trial), (trial.number, run)
        assert run["trial"]["number"] == trial.number
        assert run["trial"]["study"] == study.study_name
    assert sorted(owner) == [p.name for p in run_dirs(experiment)]
