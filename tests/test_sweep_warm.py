"""A sweep worker trains its trials in one warm process (`pipeline.sweep.trainer`):
a trial trained after others there gets the weights it gets trained alone;
a trial that diverges or crashes, or whose process is killed, fails alone,
and the next trial trains with clean state (a new process after a kill)."""

import os
import pathlib
import signal
import subprocess
import time

import pytest
from conftest import read_events, record, run_cli, run_sweep
from study_fixtures import check_study_and_runs_agree, load, run_dirs, start_worker

# A two-hidden-layer MLP: Keras names its layers, so a name counter left over
# from an earlier run would rename the next run's tags.
MLP = ["--model=mlp", "--hidden_layers=2", "--hidden_units=8"]

# Each test runs a sweep of real training processes.
pytestmark = pytest.mark.slow


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


def test_a_warm_trial_has_the_weights_of_the_same_run_trained_alone(tmp_path):
    result = run_sweep(
        tmp_path, *MLP, "--grid=learning_rate=0.1,0.05,1e38", "--sweep_name=warm"
    )
    assert result.returncode == 0, result.stderr
    experiment = tmp_path / "warm"
    order = _trained_order(experiment, "warm")
    # One process trained all three: TensorFlow was imported once.
    assert len({record(run)["pid"] for run in order}) == 1
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


def test_a_crashed_trial_leaves_the_next_one_clean(tmp_path):
    """A run that raises while training (a batch larger than the data) fails
    its trial only; the trial after it trains in the same process, with the
    weights it gets alone."""
    result = run_sweep(
        tmp_path, *MLP, "--grid=batch_size=16,32,20000", "--sweep_name=crash"
    )
    assert result.returncode == 1
    experiment = tmp_path / "crash"
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
    the sweep goes on in a new process, the study and the runs agree."""
    args = ["--grid=steps=1000000,20", "--eval_every=0", "--sweep_name=kill"]
    sweep = start_worker(tmp_path, *args)
    experiment = tmp_path / "kill"
    long_run = experiment / "steps=1000000,seed=0"
    deadline = time.monotonic() + 180
    while not ((long_run / "run.json").is_file() and (long_run / "train").is_dir()):
        assert time.monotonic() < deadline, "the long run never started"
        assert sweep.poll() is None, sweep.communicate()
        time.sleep(0.2)
    time.sleep(1)  # into the training loop
    killed = record(long_run)["pid"]
    assert killed != sweep.pid
    os.kill(killed, signal.SIGKILL)
    try:
        out, err = sweep.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        sweep.kill()
        raise
    assert sweep.returncode == 1, err
    assert "1 trials failed" in err
    assert record(long_run)["status"] == "failed"
    short = experiment / "steps=20,seed=0"
    assert record(short)["status"] == "completed"
    study = load(f"sqlite:///{experiment / 'study.db'}", "kill")
    assert sorted(t.state.name for t in study.trials) == ["COMPLETE", "FAIL"]
    check_study_and_runs_agree(study, experiment)
    assert len(run_dirs(experiment)) == 2
