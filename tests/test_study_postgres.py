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

import pytest
from optuna.trial import TrialState
from study_fixtures import (
    SEARCH,
    check_study_and_runs_agree,
    load,
    run_dirs,
    start_worker,
)

PASSWORD = "s3cret-sweep"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def postgres_url():
    """`postgresql://sweep:...@127.0.0.1:PORT/postgres` of a fresh, private server."""
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
    run(str(bindir / "pg_ctl"), "-D", str(data), "-l", str(root / "log"),
        "-o", options, "-w", "start")  # fmt: skip
    try:
        yield f"postgresql://sweep:{PASSWORD}@127.0.0.1:{port}/postgres"
    finally:
        run(str(bindir / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop")
        shutil.rmtree(root, ignore_errors=True)


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
