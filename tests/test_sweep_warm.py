"""A sweep worker trains its trials in one warm process (`pipeline.sweep.trainer`):
a trial trained after others there gets the weights it gets trained alone;
a trial that diverges or crashes, or whose process is killed, fails alone,
and the next trial trains with clean state (a new process after a kill).

What the sweep's exit status says is proven on the same sweeps: a diverged
trial is a result (exit 0), a crashed trial is not (exit 1, named)."""

import os
import pathlib
import signal
import subprocess
import threading
import time
from unittest import mock

import pytest
from conftest import read_events, record, run_cli, run_sweep
from optuna.trial import TrialState
from study_fixtures import (
    check_study_and_runs_agree,
    load,
    run_dirs,
    sweep_in_process,
)

from pipeline.sweep import trainer

# A two-hidden-layer MLP: Keras names its layers, so a name counter left over
# from an earlier run would rename the next run's tags.
MLP = ["--model=mlp", "--hidden_layers=2", "--hidden_units=8"]

# Each test runs a sweep of real training processes.
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def diverged_sweep(
    tmp_path_factory,
) -> tuple[pathlib.Path, subprocess.CompletedProcess]:
    """A grid of three learning rates, two seeds each, trained once for the
    tests below: 1e38 makes the loss NaN within a few steps, and the grid's
    seeded order trains it first."""
    logdir = tmp_path_factory.mktemp("sweeps")
    # In this process (the crashed sweep below is a process): the trials
    # still train in the worker's one training process.
    result = sweep_in_process(
        logdir,
        *MLP,
        "--grid=learning_rate=0.1,0.05,1e38",
        "--repeats=2",
        "--sweep_name=warm",
    )
    return logdir / "warm", result


@pytest.fixture(scope="module")
def crashed_sweep(tmp_path_factory) -> tuple[pathlib.Path, subprocess.CompletedProcess]:
    """A grid whose batch of 20000 (larger than the data) passes the flags'
    checks but cannot train, trained once for the tests below."""
    logdir = tmp_path_factory.mktemp("sweeps")
    result = run_sweep(
        logdir, *MLP, "--grid=batch_size=16,32,20000", "--sweep_name=crash"
    )
    return logdir / "crash", result


def _trained_order(experiment: pathlib.Path, name: str) -> list[pathlib.Path]:
    """The sweep's runs in the order their trials were taken."""
    study = load(f"sqlite:///{experiment / 'study.db'}", name)
    trials = sorted(study.trials, key=lambda t: t.number)
    return [experiment / t.user_attrs["runs"][0] for t in trials]


def _trained_alone(run: pathlib.Path, tmp_path: pathlib.Path) -> pathlib.Path:
    """The same flags (the run's flags.cfg) trained by `pipeline-train` alone."""
    result = run_cli(
        "pipeline-train",
        f"--flagfile={run / 'flags.cfg'}",
        f"--logdir={tmp_path / 'alone'}",
        "--run_name=alone",
    )
    assert result.returncode == 0, result.stderr
    return tmp_path / "alone" / "alone"


def _tags(run: pathlib.Path) -> set[str]:
    tags = read_events(run / "train").Tags()
    return {tag for kind in ("tensors", "histograms") for tag in tags.get(kind, [])}


def test_a_warm_trial_has_the_weights_of_the_same_run_trained_alone(
    diverged_sweep, tmp_path
):
    experiment, result = diverged_sweep
    assert result.returncode == 0, result.stderr
    order = _trained_order(experiment, "warm")
    # One process trained all five runs: TensorFlow was imported once.
    assert len({record(run)["pid"] for run in run_dirs(experiment)}) == 1
    statuses = [record(run)["status"] for run in order]
    # The grid's seeded order puts the diverging rate first: the trials after
    # it train in the process its NaN-loss exception went through.
    assert statuses == ["diverged", "completed", "completed"], order
    # A trial the process trained 2nd or 3rd must equal a run trained alone.
    warm = [run for run in order[1:] if record(run)["status"] == "completed"]
    last = warm[-1]
    alone = _trained_alone(last, tmp_path)
    assert record(last)["weights_digest"] == record(alone)["weights_digest"]
    assert _tags(last) == _tags(alone)
    check_study_and_runs_agree(
        load(f"sqlite:///{experiment / 'study.db'}", "warm"), experiment
    )


def test_a_process_past_its_growth_bound_is_replaced_and_trains_the_same(
    diverged_sweep, tmp_path
):
    """With --trainer_growth_mb=0 every run outgrows the bound: its process
    says so with the run's status and exits, and the next run gets a new
    one. The runs complete with the weights the warm process gave the same
    flags, the study counts every trial, and no process is left behind."""
    experiment, _ = diverged_sweep
    result = sweep_in_process(
        tmp_path,
        *MLP,
        "--grid=learning_rate=0.1,0.05",
        "--sweep_name=fresh",
        "--trainer_growth_mb=0",
    )
    assert result.returncode == 0, result.stderr
    assert "sweep fresh: 2/2 completed" in result.stdout
    runs = run_dirs(tmp_path / "fresh")
    assert [run.name for run in runs] == [
        "learning_rate=0.05,seed=0",
        "learning_rate=0.1,seed=0",
    ]
    pids = [record(run)["pid"] for run in runs]
    assert len(set(pids)) == 2
    assert not any(_alive(pid) for pid in pids)
    for run in runs:
        warm = record(experiment / run.name)
        assert warm["pid"] not in pids
        assert record(run)["weights_digest"] == warm["weights_digest"]


def test_a_diverged_trial_is_a_result_and_the_sweep_exits_0(diverged_sweep):
    # Moved from test_study_outcomes.py: it shares the warm trials' sweep.
    experiment, result = diverged_sweep
    assert result.returncode == 0, result.stderr
    diverged = experiment / "learning_rate=1e38,seed=0"
    run = record(diverged)
    assert run["status"] == "diverged"
    assert run["error"].startswith("NonFiniteLossError: loss is nan at step")
    # Its second seed is not trained: the variant diverged.
    assert not (experiment / "learning_rate=1e38,seed=1").exists()
    trials = load(f"sqlite:///{experiment / 'study.db'}", "warm").trials
    by_lr = {t.params["learning_rate"]: t for t in trials}
    # Optuna's rule for a NaN objective: the trial FAILs, the study goes on.
    assert by_lr["1e38"].state == TrialState.FAIL
    assert by_lr["1e38"].user_attrs["outcome"] == "diverged"
    assert by_lr["1e38"].user_attrs["error"].startswith("loss is nan at step")
    assert by_lr["0.1"].state == TrialState.COMPLETE
    out = result.stdout
    assert "finished  run learning_rate=0.1,seed=1 (seed 1): test/accuracy=" in out
    assert "(learning_rate=0.1): test/accuracy=" in out
    assert ", mean of 2 seeds" in out
    assert "diverged  trial" in out
    assert "(learning_rate=1e38): diverged: loss is nan" in out
    assert (
        "sweep warm: 2/3 completed, 1 diverged, 0 pruned, 0 failed, 0 running;" in out
    )
    assert "error" not in result.stderr


def test_a_crashed_trial_fails_the_sweep_naming_it(crashed_sweep):
    # Moved from test_study_outcomes.py: it shares the crashed trial's sweep.
    experiment, result = crashed_sweep
    assert result.returncode == 1
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("pipeline-sweep: error: 1 trials failed: trial "), (
        result.stderr
    )
    assert "(batch_size=20000,seed=0): " in last
    trials = load(f"sqlite:///{experiment / 'study.db'}", "crash").trials
    assert {t.params["batch_size"]: t.state for t in trials}["20000"] == (
        TrialState.FAIL
    )
    assert "sweep crash: 2/3 completed, 0 diverged, 0 pruned, 1 failed" in result.stdout


def test_a_crashed_trial_leaves_the_next_one_clean(crashed_sweep, tmp_path):
    """A run that raises while training (a batch larger than the data) fails
    its trial only; the trial after it trains in the same process, with the
    weights it gets alone."""
    experiment, result = crashed_sweep
    assert result.returncode == 1
    study = load(f"sqlite:///{experiment / 'study.db'}", "crash")
    states = {t.params["batch_size"]: t.state.name for t in study.trials}
    assert states == {"20000": "FAIL", "32": "COMPLETE", "16": "COMPLETE"}
    numbers = {t.params["batch_size"]: t.number for t in study.trials}
    after = [b for b in ("32", "16") if numbers[b] > numbers["20000"]]
    assert after, f"no trial came after the crash: {numbers}"
    run = experiment / f"batch_size={after[0]},seed=0"
    alone = _trained_alone(run, tmp_path)
    assert record(run)["weights_digest"] == record(alone)["weights_digest"]


def test_a_killed_training_process_fails_its_trial_and_a_new_one_trains_on(
    tmp_path,
):
    """SIGKILL to the worker's training process mid-run: that trial fails,
    the sweep goes on in a new process, the study and the runs agree.

    The sweep runs in this process (its training processes are real); a
    thread here kills the long run's training process once it trains."""
    args = ["--grid=steps=1000000,20", "--eval_every=0", "--sweep_name=kill"]
    experiment = tmp_path / "kill"
    long_run = experiment / "steps=1000000,seed=0"
    killed: list[int] = []
    sweep_done = threading.Event()

    def kill_the_long_runs_process() -> None:
        deadline = time.monotonic() + 180
        while not ((long_run / "run.json").is_file() and (long_run / "train").is_dir()):
            if sweep_done.wait(0.2):
                return
            if time.monotonic() > deadline:  # the sweep saves and stops (130)
                os.kill(os.getpid(), signal.SIGTERM)
                return
        time.sleep(1)  # into the training loop
        killed.append(record(long_run)["pid"])
        os.kill(killed[0], signal.SIGKILL)

    killer = threading.Thread(target=kill_the_long_runs_process, daemon=True)
    killer.start()
    try:
        result = sweep_in_process(tmp_path, *args)
    finally:
        sweep_done.set()
        killer.join()
    assert killed, f"the long run never started: {result.stderr}"
    assert killed[0] != os.getpid()
    assert result.returncode == 1, result.stderr
    assert "1 trials failed" in result.stderr
    assert record(long_run)["status"] == "failed"
    short = experiment / "steps=20,seed=0"
    assert record(short)["status"] == "completed"
    study = load(f"sqlite:///{experiment / 'study.db'}", "kill")
    assert sorted(t.state.name for t in study.trials) == ["COMPLETE", "FAIL"]
    check_study_and_runs_agree(study, experiment)
    assert len(run_dirs(experiment)) == 2


def test_sweeps_in_turn_take_the_training_process_the_last_one_kept(tmp_path):
    """Inside `kept_between_sweeps`, a sweep takes the idle training process
    the previous sweep left (its run has the same pid: TensorFlow was
    imported once); a sweep in another environment gets a process of its
    own; on leaving, every kept process is ended and its temporary folder
    (what SIGTERM would leave in /tmp) removed. No run had AutoGraph write a
    converted function there: nothing is converted."""

    def trained_by(name: str) -> int:
        result = sweep_in_process(
            tmp_path, "--grid=learning_rate=0.1", f"--sweep_name={name}"
        )
        assert result.returncode == 0, result.stderr
        (run,) = run_dirs(tmp_path / name)
        return record(run)["pid"]

    with trainer.kept_between_sweeps():
        first, second = trained_by("first"), trained_by("second")
        with mock.patch.dict(os.environ, {"PIPELINE_TEST_OTHER_ENV": "1"}):
            other = trained_by("other")
        assert first == second != other
        assert [_alive(first), _alive(other)] == [True, True]
        folders = [_tmpdir_of(first), _tmpdir_of(other)]
        for folder in folders:
            assert folder.is_dir(), folder
            assert not list(folder.glob("__autograph_generated_file*")), folder
    assert [_alive(first), _alive(other)] == [False, False]
    assert [folder.exists() for folder in folders] == [False, False]


def _tmpdir_of(pid: int) -> pathlib.Path:
    """The TMPDIR process `pid` was started with."""
    environ = pathlib.Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    (value,) = [v for v in environ if v.startswith(b"TMPDIR=")]
    return pathlib.Path(value.removeprefix(b"TMPDIR=").decode())


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True
