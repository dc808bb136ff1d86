"""Sweeps on an Optuna study in SQLite: workers, a killed worker, bad input."""

import dataclasses
import pathlib
import shutil
import socket
import subprocess

import pytest
from conftest import kill_once_started, main_in_process, record, run_sweep
from optuna.trial import TrialState
from study_fixtures import (
    SEARCH,
    check_study_and_runs_agree,
    load,
    run_dirs,
    start_worker,
    sweep_in_process,
)

# Sweeps of real training processes (the two bad-input tests ride along).
pytestmark = pytest.mark.slow


@dataclasses.dataclass
class SharedStudy:
    """What two workers on one study left: its logdir, their flags and output."""

    logdir: pathlib.Path
    args: list[str]
    workers: list[subprocess.Popen]
    outputs: list[tuple[str, str]]

    @property
    def experiment(self) -> pathlib.Path:
        return self.logdir / "shared"

    @property
    def storage(self) -> str:
        return f"sqlite:///{self.experiment / 'study.db'}"


@pytest.fixture(scope="module")
def shared(tmp_path_factory) -> SharedStudy:
    """Two `pipeline-sweep` processes on one study of four trials, run once
    for the tests below (they read it; one that changes it works on a copy)."""
    logdir = tmp_path_factory.mktemp("sweeps")
    args = [*SEARCH, "--sweep_name=shared", "--trials=4"]
    workers = [start_worker(logdir, *args) for _ in range(2)]
    outputs = [w.communicate(timeout=600) for w in workers]
    return SharedStudy(logdir, args, workers, outputs)


def _accuracies(experiment: pathlib.Path) -> dict[str, float]:
    return {
        p.name: record(p)["final_metrics"]["test"]["accuracy"]
        for p in run_dirs(experiment)
    }


def test_two_workers_share_one_study_and_train_each_trial_once(shared):
    workers, outputs, experiment = shared.workers, shared.outputs, shared.experiment
    for worker, (_, stderr) in zip(workers, outputs, strict=True):
        assert worker.returncode == 0, stderr

    study = load(shared.storage, "shared")
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 4
    assert [t.number for t in study.trials] == [0, 1, 2, 3]
    # Two processes, one study: four different configurations, not two twice.
    assert len({t.params["learning_rate"] for t in study.trials}) == 4
    # Both workers trained: each trial once, by one of them.
    pids = {t.user_attrs["worker"]["pid"] for t in study.trials}
    assert pids == {w.pid for w in workers}
    assert [p.name for p in run_dirs(experiment)] == [
        f"trial={n:04d},seed=0" for n in range(4)
    ]
    check_study_and_runs_agree(study, experiment)
    # The study's best is the best run on disk, and the workers say so.
    accuracies = _accuracies(experiment)
    best = study.best_trial
    assert best.value == max(accuracies.values())
    assert accuracies[best.user_attrs["runs"][0]] == best.value
    last_lines = [stdout.strip().splitlines()[-1] for stdout, _ in outputs]
    assert any(
        f"best {best.value:.4f} trial {best.number} (learning_rate=" in line
        for line in last_lines
    )

    # pipeline-compare adds the study's view below the runs table.
    compared = main_in_process("pipeline-compare", str(experiment))
    assert compared.returncode == 0, compared.stderr
    assert (
        f"study shared (sqlite:///{experiment}/study.db): 4 trials: 4 completed, "
        "0 diverged, 0 pruned, 0 failed, 0 running; random sampler, maximize "
        "test/accuracy\n"
        "steps trained: 80\n"
        f"best trial {best.number}: test/accuracy={best.value:.4f} (learning_rate="
    ) in compared.stdout


def test_a_complete_study_run_again_trains_nothing(shared):
    again = sweep_in_process(shared.logdir, *shared.args)
    assert again.returncode == 0, again.stderr
    assert "4 already completed, 0 to run" in again.stdout
    assert "started" not in again.stdout
    assert len(load(shared.storage, "shared").trials) == 4


def test_compare_names_the_best_run_still_there_when_the_best_is_gone(shared, tmp_path):
    """The best trial's run deleted: compare names the best run still there,
    and says why the study's best is not counted."""
    experiment = pathlib.Path(shutil.copytree(shared.experiment, tmp_path / "shared"))
    best = load(f"sqlite:///{experiment / 'study.db'}", "shared").best_trial
    accuracies = _accuracies(experiment)
    best_run = best.user_attrs["runs"][0]
    shutil.rmtree(experiment / best_run)
    runner_up = max(v for k, v in accuracies.items() if k != best_run)
    compared = main_in_process("pipeline-compare", str(experiment))
    assert compared.returncode == 0, compared.stderr
    assert f"best trial {best.number}:" not in compared.stdout
    assert f"test/accuracy={runner_up:.4f}" in compared.stdout
    assert (
        f"not counted as best, their runs are gone from {experiment}: "
        f"trial {best.number} ({best_run})"
    ) in compared.stdout


def test_a_continued_study_draws_what_one_command_would_have(tmp_path, shared):
    """Each trial is drawn with a seed of its own (the sweep's seed and the
    trial's number): continuing a study, or joining it from another process,
    never replays the first process's draws."""
    # Two trials, the second drawn by a second command (in this process: the
    # draws are the sweep's; each trial still trains in a training process).
    first = sweep_in_process(tmp_path, *SEARCH, "--sweep_name=continued", "--trials=1")
    second = sweep_in_process(tmp_path, *SEARCH, "--sweep_name=continued", "--trials=2")
    for result in (first, second):
        assert result.returncode == 0, result.stderr

    def drawn(logdir, name):
        study = load(f"sqlite:///{logdir / name / 'study.db'}", name)
        return [t.params["learning_rate"] for t in study.trials]

    # The reference: the shared study's first two trials, drawn by the same
    # flags (its name is not part of the draw); its two processes drew four
    # different rates (test_two_workers_...), as one command would have.
    reference = drawn(shared.logdir, "shared")[:2]
    assert len(set(reference)) == 2
    assert drawn(tmp_path, "continued") == reference


def test_a_worker_killed_mid_trial_leaves_study_and_runs_agreeing(tmp_path):
    experiment = tmp_path / "killed"
    args = [*SEARCH, "--sweep_name=killed", "--trials=2"]
    process = start_worker(
        tmp_path, *args, "--steps=1000000", "--eval_every=0", start_new_session=True
    )
    first_run = experiment / "trial=0000,seed=0"
    kill_once_started(process, first_run, "the first trial")
    storage = f"sqlite:///{experiment / 'study.db'}"
    assert [t.state for t in load(storage, "killed").trials] == [TrialState.RUNNING]
    assert record(first_run)["status"] == "running"

    resumed = sweep_in_process(tmp_path, *args)
    assert resumed.returncode == 0, resumed.stderr
    assert "trial 0: its worker died; failed, queued again" in resumed.stdout
    study = load(storage, "killed")
    states = {t.number: t.state for t in study.trials}
    assert states == {
        0: TrialState.FAIL,
        1: TrialState.COMPLETE,
        2: TrialState.COMPLETE,
    }
    # The killed trial was retried with its parameters, under its own number.
    (retry,) = [t for t in study.trials if t.system_attrs.get("failed_trial") == 0]
    assert retry.params == study.trials[0].params
    killed = record(first_run)
    assert killed["status"] == "failed"
    assert killed["error"].startswith("interrupted: its sweep worker died")
    assert list(first_run.glob("*.session_end"))  # HParams shows it failed
    check_study_and_runs_agree(study, experiment)
    assert (
        "sweep killed: 2/2 completed, 0 diverged, 0 pruned, 0 failed" in resumed.stdout
    )


def _one_line_error(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 1, result.stdout
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


def test_bad_search_space_is_one_line(tmp_path):
    # As a process, once; the second refusal's rule needs no process of its own
    # (test_sweep.py: test_sweep_flag_errors_are_one_line is another).
    unknown = run_sweep(
        tmp_path, "--sweep_name=bad", "--trials=2", "--search=nope=int:1:3"
    )
    assert _one_line_error(unknown) == (
        "pipeline-sweep: error: --search=nope=int:1:3: 'nope' is not a training flag"
    )
    malformed = sweep_in_process(
        tmp_path, "--sweep_name=bad", "--trials=2", "--search=hidden_layers=int:5:1"
    )
    assert _one_line_error(malformed) == (
        "pipeline-sweep: error: --search=hidden_layers=int:5:1: LOW must be below HIGH"
    )
    assert not (tmp_path / "bad").exists()


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_storage_names_the_host_not_the_password(tmp_path):
    # In this process: test_study_postgres.py's server stopped before the
    # sweep proves the same exit path as a process.
    port = _closed_port()
    url = f"postgresql://sweep:hunter2@127.0.0.1:{port}/studies"
    result = sweep_in_process(
        tmp_path, *SEARCH, "--sweep_name=away", "--trials=2", f"--storage={url}"
    )
    line = _one_line_error(result)
    assert line.startswith(
        f"pipeline-sweep: error: --storage=postgresql://sweep:***@127.0.0.1:{port}/"
        f"studies: cannot open the study storage at 127.0.0.1:{port} ("
    )
    assert "hunter2" not in result.stderr + result.stdout


def test_a_study_with_another_space_or_direction_is_refused(shared):
    """Refused before any trial (in this process: a refusal starts no
    training process), the study left as it was."""
    storage = shared.storage
    other_space = sweep_in_process(
        shared.logdir,
        *SEARCH,
        "--sweep_name=shared",
        "--trials=1",
        "--search=hidden_layers=int:1:3",
    )
    assert _one_line_error(other_space) == (
        f"pipeline-sweep: error: study 'shared' in {storage} has another search "
        "space (learning_rate=log:0.01:0.5 there, learning_rate=log:0.01:0.5 "
        "hidden_layers=int:1:3 now); use another --sweep_name"
    )
    other_direction = sweep_in_process(
        shared.logdir,
        *SEARCH,
        "--sweep_name=shared",
        "--trials=1",
        "--direction=minimize",
    )
    assert _one_line_error(other_direction) == (
        f"pipeline-sweep: error: --direction=minimize: study 'shared' in {storage} "
        "is maximize; use another --sweep_name"
    )
    assert len(load(storage, "shared").trials) == 4
