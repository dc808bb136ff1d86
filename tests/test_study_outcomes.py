"""Optuna's journal storage shared by two workers; the one adapter below
Optuna's public API, pinned; a killed or interrupted sweep and its training
processes. (What the exit status says of a diverged or crashed trial is
proven in test_sweep_warm.py, on the sweeps that test shares.)"""

import contextlib
import os
import pathlib
import signal
import time

import optuna
import pytest
from conftest import record, run_sweep
from optuna.trial import TrialState
from study_fixtures import (
    SEARCH,
    check_study_and_runs_agree,
    load,
    run_dirs,
    start_worker,
)

from pipeline.sweep import SweepError, optuna_adapter, storage, study


@pytest.mark.slow
def test_two_workers_share_one_journal_study(tmp_path):
    journal = tmp_path / "shared-fs" / "studies.log"
    args = [*SEARCH, "--sweep_name=j", "--trials=4", f"--storage=journal:{journal}"]
    logdirs = [tmp_path / "machine-a", tmp_path / "machine-b"]
    workers = [start_worker(logdir, *args) for logdir in logdirs]
    for worker in workers:
        _, stderr = worker.communicate(timeout=600)
        assert worker.returncode == 0, stderr
    loaded = optuna.load_study(
        study_name="j", storage=storage.connect(f"journal:{journal}")
    )
    assert [t.state for t in loaded.trials] == [TrialState.COMPLETE] * 4
    assert len({t.params["learning_rate"] for t in loaded.trials}) == 4
    names = [p.name for logdir in logdirs for p in run_dirs(logdir / "j")]
    assert sorted(names) == [f"trial={n:04d},seed=0" for n in range(4)]
    assert {t.user_attrs["worker"]["pid"] for t in loaded.trials} == {
        w.pid for w in workers
    }
    for logdir in logdirs:
        check_study_and_runs_agree(loaded, logdir / "j", local_only=True)


@pytest.mark.parametrize("kind", ["sqlite", "journal"])
def test_the_adapter_fails_a_trial_another_process_holds(tmp_path, kind):
    """Pins what `optuna_adapter` relies on: a trial asked by one Study object
    is failed by trial number through the storage, once, and Optuna's retry
    callback queues its parameters again."""
    url = (
        f"sqlite:///{tmp_path / 'a.db'}"
        if kind == "sqlite"
        else f"journal:{tmp_path / 'a.log'}"
    )
    study.quiet_optuna()
    holder = optuna.create_study(study_name="s", storage=storage.connect(url))
    trial = holder.ask({"x": optuna.distributions.FloatDistribution(0, 1)})
    other = storage.connect(url)
    failed = optuna_adapter.fail_running_trial(other, "s", trial.number)
    assert (failed.number, failed.state) == (trial.number, TrialState.FAIL)
    assert optuna_adapter.fail_running_trial(other, "s", trial.number) is None
    joined = optuna.load_study(study_name="s", storage=other)
    optuna.storages.RetryHeartbeatStaleTrialCallback()(joined, failed)
    retry = joined.trials[-1]
    assert (retry.state, retry.params) == (TrialState.WAITING, trial.params)
    assert retry.system_attrs["failed_trial"] == trial.number
    with pytest.raises(optuna.exceptions.UpdateFinishedTrialError):
        trial.report(0.5, 1)  # the holder's reports are refused from now on


def test_storage_paths_stay_paths_and_bad_urls_are_one_line(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    # A `?` or `%` in --logdir is part of the path, not a URL's query or escape.
    experiment = tmp_path / "q?x=1" / "p%41" / "s"
    storage.connect(storage.default_storage(experiment))
    assert (experiment / "study.db").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["q?x=1"]
    refusals = {
        "sqlite://relative.db": "--storage=sqlite://relative.db: names no database "
        "file; write sqlite:///RELATIVE/PATH or sqlite:////ABSOLUTE/PATH",
        "mysql://u@h/db": "--storage=mysql://u@h/db: cannot use mysql here (No "
        "module named 'MySQLdb'); use sqlite, postgresql or journal",
    }
    for url, message in refusals.items():
        with pytest.raises(SweepError) as caught:
            storage.connect(url)
        assert str(caught.value) == message
    assert sorted(p.name for p in tmp_path.iterdir()) == ["q?x=1"]  # no None.lock
    damaged = tmp_path / "damaged.db"
    damaged.write_bytes(b"this is not a database\n" * 200)
    with pytest.raises(SweepError) as caught:
        storage.connect(f"sqlite:///{damaged}")
    assert str(caught.value) == (
        f"--storage=sqlite:///{damaged}: cannot open the study storage at "
        f"{damaged} (file is not a database)"
    )


def _alive(pid: int) -> bool:
    """Whether `pid` runs (a zombie, dead but not yet reaped, does not)."""
    try:
        stat = pathlib.Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


@pytest.mark.slow
def test_a_killed_sweep_takes_its_training_process_with_it(tmp_path):
    """`kill -9` of pipeline-sweep alone: its pipeline-train gets SIGTERM
    (the parent-death signal) and ends instead of training on unseen."""
    args = [*SEARCH, "--sweep_name=orphan", "--trials=1", "--steps=1000000"]
    sweep = start_worker(tmp_path, *args, "--eval_every=0", start_new_session=True)
    run = tmp_path / "orphan" / "trial=0000,seed=0"
    try:
        deadline = time.monotonic() + 120
        while not ((run / "run.json").is_file() and (run / "train").is_dir()):
            assert time.monotonic() < deadline, "the run never started"
            time.sleep(0.2)
        time.sleep(2)  # into the training loop
        child = record(run)["pid"]
        os.kill(sweep.pid, signal.SIGKILL)
        sweep.communicate()
        deadline = time.monotonic() + 60
        while _alive(child):
            assert time.monotonic() < deadline, "the training process lives on"
            time.sleep(0.2)
        # `interrupted` once its SIGTERM handler is in place; a signal that
        # comes earlier ends it at once, leaving `running` with a dead pid,
        # which the next sweep finds dead.
        assert record(run)["status"] in ("interrupted", "running")
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(sweep.pid, signal.SIGKILL)


@pytest.mark.slow
def test_an_interrupted_sweep_continues_its_runs_from_their_checkpoints(tmp_path):
    """SIGTERM to a two-worker sweep: each run saves and records
    `interrupted`; the same command continues those runs from their
    checkpoints (no run trained again from step 0, none left behind)."""
    args = [*SEARCH, "--sweep_name=again", "--trials=2", "--workers=2"]
    # Long enough that the first run is still training when the second saves
    # its first checkpoint (they start a few hundred steps apart here); the
    # rerun trains the rest of both.
    args += ["--steps=2000", "--checkpoint_every=50", "--eval_every=1000"]
    sweep = start_worker(tmp_path, *args)
    experiment = tmp_path / "again"
    runs = [experiment / f"trial={n:04d},seed=0" for n in range(2)]
    deadline = time.monotonic() + 180
    while not all(list((r / "checkpoints").glob("ckpt-*.index")) for r in runs):
        assert time.monotonic() < deadline, "no checkpoint in time"
        assert sweep.poll() is None, sweep.communicate()
        time.sleep(0.05)
    sweep.send_signal(signal.SIGTERM)
    _, stderr = sweep.communicate(timeout=120)
    assert sweep.returncode == 130, stderr
    interrupted = {r.name: record(r) for r in runs}
    assert {r["status"] for r in interrupted.values()} == {"interrupted"}

    # Two workers: a process (in this one, each would take the other's trial
    # for a dead worker's: this process's command line does not name the pipeline).
    again = run_sweep(tmp_path, *args)
    assert again.returncode == 0, again.stderr
    for run in runs:
        # The whole output on failure (seen once in a full suite, not since).
        assert f"{run}: interrupted; continuing it" in again.stdout, again.stdout
        final = record(run)
        assert final["status"] == "completed"
        (resume,) = final["resumes"]
        assert resume["previous_status"] == "interrupted"
        assert resume["from_step"] == interrupted[run.name]["step"] > 0
    study = load(f"sqlite:///{experiment / 'study.db'}", "again")
    states = sorted(t.state.name for t in study.trials)
    assert states == ["COMPLETE", "COMPLETE", "FAIL", "FAIL"]  # 2 retried
    check_study_and_runs_agree(study, experiment)
    assert "sweep again: 2/2 completed, 0 diverged, 0 pruned, 0 failed" in again.stdout
