"""Workers on several machines: two workers joining one study in a real PostgreSQL.

The server is Debian's `postgresql` (`make test` installs it), started here
on a free loopback port in a temporary data directory, with password
authentication, as the unprivileged `postgres` user when the tests run as
root (the server refuses to run as root), and removed at the end.
"""

from __future__ import annotations

import glob
import os
import pathlib
import shutil
import socket
import subprocess
import tempfile
import time

import pytest
from conftest import record, run_sweep
from optuna.trial import TrialState
from study_fixtures import (
    SEARCH,
    check_study_and_runs_agree,
    load,
    run_dirs,
    start_worker,
    sweep_in_process,
)

from pipeline.sweep import runs as runs_lib

# A private PostgreSQL server and sweeps of real training processes.
pytestmark = pytest.mark.slow

PASSWORD = "s3cret-sweep"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """A private PostgreSQL server that a test may stop and start again."""

    def __init__(self, url: str, pg_ctl: list[str]):
        self.url, self._pg_ctl = url, pg_ctl

    def stop(self) -> None:
        """`pg_ctl stop -m fast`: connections end at once, as in a restart."""
        subprocess.run([*self._pg_ctl, "-m", "fast", "-w", "stop"],
                       check=True, capture_output=True)  # fmt: skip

    def start(self) -> None:
        subprocess.run([*self._pg_ctl, "-w", "start"], check=True, capture_output=True)


@pytest.fixture(scope="module")
def postgres_server():
    """A fresh, private server at `postgresql://sweep:...@127.0.0.1:PORT/postgres`."""
    bindirs = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if not bindirs:
        pytest.fail("PostgreSQL is not installed: `make test` installs postgresql")
    bindir = pathlib.Path(bindirs[-1]).parent
    as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    root = pathlib.Path(tempfile.mkdtemp(prefix="pipeline-pg-"))
    data = root / "data"
    password_file = root / "password"
    password_file.write_text(PASSWORD + "\n")
    if as_user:
        shutil.chown(root, "postgres")
        shutil.chown(password_file, "postgres")
    port = _free_port()

    def run(*command: str) -> None:
        subprocess.run([*as_user, *command], check=True, capture_output=True)

    run(
        str(bindir / "initdb"),
        f"--pgdata={data}",
        "--username=sweep",
        f"--pwfile={password_file}",
        "--auth=scram-sha-256",
        "--encoding=UTF8",
    )
    options = f"-p {port} -c listen_addresses=127.0.0.1 -k {root}"
    pg_ctl = [*as_user, str(bindir / "pg_ctl"), "-D", str(data),
              "-l", str(root / "log"), "-o", options]  # fmt: skip
    server = Server(f"postgresql://sweep:{PASSWORD}@127.0.0.1:{port}/postgres", pg_ctl)
    server.start()
    try:
        yield server
    finally:
        run(str(bindir / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop")
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def postgres_url(postgres_server) -> str:
    """`postgresql://sweep:...@127.0.0.1:PORT/postgres` of a fresh, private server."""
    return postgres_server.url


def test_two_workers_join_one_postgresql_study(tmp_path, postgres_url):
    args = [*SEARCH, "--sweep_name=pg", "--trials=4", f"--storage={postgres_url}"]
    # Two machines in miniature: each worker has its own log directory.
    logdirs = [tmp_path / "machine-a", tmp_path / "machine-b"]
    workers = [start_worker(logdir, *args) for logdir in logdirs]
    outputs = [w.communicate(timeout=600) for w in workers]
    for worker, (stdout, stderr) in zip(workers, outputs, strict=True):
        assert worker.returncode == 0, stderr
        assert PASSWORD not in stdout + stderr

    study = load(postgres_url, "pg")
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 4
    assert {t.user_attrs["worker"]["pid"] for t in study.trials} == {
        w.pid for w in workers
    }
    # Every trial was trained once, on one machine or the other.
    names = [p.name for logdir in logdirs for p in run_dirs(logdir / "pg")]
    assert sorted(names) == [f"trial={n:04d},seed=0" for n in range(4)]
    for logdir in logdirs:
        experiment = logdir / "pg"
        for run in run_dirs(experiment):
            text = (run / "run.json").read_text()
            assert PASSWORD not in text
            assert '"storage": "postgresql://sweep:***@127.0.0.1:' in text
    for logdir in logdirs:
        check_study_and_runs_agree(study, logdir / "pg", local_only=True)


def _stop_server_when(server, worker, wait, run) -> str:
    """Stops `server` once `wait(run, worker)` returns, lets the worker end,
    starts the server again; returns the worker's stderr."""
    try:
        wait(run, worker)
        server.stop()
        _, stderr = worker.communicate(timeout=300)
    finally:
        if worker.poll() is None:
            worker.kill()
        server.start()
    return stderr


def _wait_for_completed(run, worker) -> None:
    deadline = time.monotonic() + 180
    while runs_lib.read_record(run).get("status") != "completed":
        if time.monotonic() > deadline or worker.poll() is not None:
            pytest.fail(f"{run} did not complete: {worker.poll()=}")
        time.sleep(0.02)


def _error_line(stderr: str) -> str:
    """The sweep's one line on stderr: no traceback, no password."""
    assert "Traceback" not in stderr, stderr
    assert PASSWORD not in stderr
    (line,) = stderr.strip().splitlines()
    assert line.startswith("pipeline-sweep: error: --storage=postgresql://sweep:***@")
    return line.removeprefix("pipeline-sweep: error: ")


def _wait_for_checkpoint(run: pathlib.Path, worker: subprocess.Popen) -> None:
    deadline = time.monotonic() + 180
    while not list(run.glob("checkpoints/ckpt-*.index")):
        if time.monotonic() > deadline or worker.poll() is not None:
            pytest.fail(f"{run} saved no checkpoint: {worker.poll()=}")
        time.sleep(0.1)


@pytest.mark.slow
def test_postgresql_stopped_mid_sweep_is_one_line_and_the_rerun_continues(
    tmp_path, postgres_server
):
    # One trial: what is proven is its run, stopped and continued.
    args = [*SEARCH, "--sweep_name=stopped", "--trials=1", "--steps=1000",
            "--eval_every=20", "--checkpoint_every=50",
            f"--storage={postgres_server.url}"]  # fmt: skip
    first = tmp_path / "stopped" / "trial=0000,seed=0"
    worker = start_worker(tmp_path, *args)
    # Stopped while trial 0 trains.
    stderr = _stop_server_when(postgres_server, worker, _wait_for_checkpoint, first)
    assert worker.returncode == 1
    line = _error_line(stderr)
    assert "stopped answering" in line
    assert "run the same command again" in line
    # The run saved and stopped; its record says why, in one line.
    stopped = record(first)
    assert stopped["status"] == "interrupted"
    assert stopped["error"] == f"StorageLostError: {line}"
    assert 0 < stopped["step"] < 1000

    # The same command again (in this process: the stopped one was a process).
    rerun = sweep_in_process(tmp_path, *args)
    assert rerun.returncode == 0, rerun.stderr
    assert f"{first}: interrupted; continuing it" in rerun.stdout
    study = load(postgres_server.url, "stopped")
    assert [t.state for t in study.trials].count(TrialState.COMPLETE) == 1
    check_study_and_runs_agree(study, tmp_path / "stopped")
    assert len(run_dirs(tmp_path / "stopped")) == 1  # trial 0's run trained once
    assert record(first)["status"] == "completed"
    assert record(first)["step"] == 1000


def test_postgresql_down_before_the_sweep_is_one_line(tmp_path, postgres_server):
    postgres_server.stop()
    try:
        result = run_sweep(tmp_path, *SEARCH, "--sweep_name=down", "--trials=1",
                           f"--storage={postgres_server.url}")  # fmt: skip
    finally:
        postgres_server.start()
    assert result.returncode == 1
    line = _error_line(result.stderr)
    assert "cannot open the study storage at 127.0.0.1:" in line
    assert not (tmp_path / "down").exists()


@pytest.mark.slow
def test_postgresql_stopped_as_a_trial_ends_trains_nothing_twice(
    tmp_path, postgres_server
):
    """The server stops as trial 0's run completes: while the sweep tells the
    study, lists its trials or takes the next (whichever it is doing)."""
    args = [*SEARCH, "--sweep_name=between", "--trials=2", "--steps=200",
            f"--storage={postgres_server.url}"]  # fmt: skip
    first = tmp_path / "between" / "trial=0000,seed=0"
    worker = start_worker(tmp_path, *args)
    stderr = _stop_server_when(postgres_server, worker, _wait_for_completed, first)
    assert worker.returncode == 1
    assert "stopped answering" in _error_line(stderr)

    rerun = sweep_in_process(tmp_path, *args)
    assert rerun.returncode == 0, rerun.stderr
    study = load(postgres_server.url, "between")
    assert [t.state for t in study.trials].count(TrialState.COMPLETE) == 2
    check_study_and_runs_agree(study, tmp_path / "between")
    # Trial 0's parameters were trained once: its retry took the completed run.
    assert len(run_dirs(tmp_path / "between")) == 2
