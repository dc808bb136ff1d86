"""The same job under tf.distribute: mirrored replicas and two real workers."""

import json
import os
import pathlib
import signal
import socket
import subprocess
import sys
import time

import pytest
from conftest import REPO, cli_command, cli_env, scalar_series

from pipeline.training import distribute

JOB = [
    "--model=mlp",
    "--hidden_layers=1",
    "--hidden_units=16",
    "--steps=30",
    "--batch_size=64",
    "--eval_every=15",
    "--histogram_every=15",
    "--checkpoint_every=15",
    "--print_every=15",
    "--learning_rate=0.01",
]


def train_cli(*args, env_extra=None, **popen):
    env = {**cli_env(), **(env_extra or {})}
    return subprocess.Popen(
        [*cli_command("pipeline-train"), *JOB, *args],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **popen,
    )


def finish(proc, timeout=240):
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        pytest.fail(f"timed out:\n{out}\n{err}")
    return proc.returncode, out, err


def digest(stdout: str) -> str:
    # The `done:` line; a worker's gRPC teardown may log after it.
    done = [line for line in stdout.splitlines() if line.startswith("done: ")]
    return done[-1].rsplit("weights ", 1)[1]


def free_ports(n: int) -> list[int]:
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def test_mirrored_on_two_cpu_devices_matches_the_default_strategy(tmp_path):
    default = train_cli(f"--logdir={tmp_path}", "--run_name=default")
    mirrored = train_cli(
        f"--logdir={tmp_path}",
        "--run_name=mirrored",
        "--strategy=mirrored",
        "--cpu_devices=2",
    )
    (rc_d, _, err_d), (rc_m, _, err_m) = finish(default), finish(mirrored)
    assert rc_d == 0, err_d
    assert rc_m == 0, err_m
    loss_d = [v for _, v in scalar_series(tmp_path / "default" / "train", "loss")]
    loss_m = [v for _, v in scalar_series(tmp_path / "mirrored" / "train", "loss")]
    assert len(loss_d) == len(loss_m) == 30
    assert loss_m == pytest.approx(loss_d, rel=1e-4, abs=1e-5)
    acc_d = scalar_series(tmp_path / "default" / "test", "accuracy")
    acc_m = scalar_series(tmp_path / "mirrored" / "test", "accuracy")
    assert [s for s, _ in acc_m] == [15, 30]
    assert [v for _, v in acc_m] == pytest.approx([v for _, v in acc_d], abs=1e-3)


def test_two_workers_on_loopback_agree_and_write_one_run(tmp_path):
    ports = free_ports(2)
    cluster = {"worker": [f"127.0.0.1:{p}" for p in ports]}
    workers = [
        train_cli(
            f"--logdir={tmp_path / 'logs'}",
            "--run_name=mw",
            "--strategy=multi_worker",
            env_extra={
                "TF_CONFIG": json.dumps(
                    {"cluster": cluster, "task": {"type": "worker", "index": i}}
                )
            },
        )
        for i in range(2)
    ]
    results = [finish(w, timeout=300) for w in workers]
    for rc, _, err in results:
        assert rc == 0, err
    assert digest(results[0][1]) == digest(results[1][1])
    # One run, and the HParams experiment config the chief wrote beside it.
    assert sorted(p.name for p in (tmp_path / "logs").iterdir()) == [
        "events.out.tfevents.hparams_config",
        "mw",
    ]
    run = tmp_path / "logs" / "mw"
    assert [s for s, _ in scalar_series(run / "train", "loss")] == list(range(1, 31))
    assert [s for s, _ in scalar_series(run / "test", "accuracy")] == [15, 30]
    assert json.loads((run / "run.json").read_text())["status"] == "completed"
    assert (run / "checkpoints" / "ckpt-30.index").exists()
    # The non-chief's scratch directory is gone.
    assert "run directory: /tmp/pipeline-worker-1-" in results[1][1]
    scratch = results[1][1].split("run directory: ", 1)[1].split()[0]
    assert not os.path.exists(scratch)


def test_multi_worker_without_tf_config_is_one_line(tmp_path, monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    with pytest.raises(distribute.DistributeError, match="needs the TF_CONFIG"):
        distribute.make_strategy("multi_worker")


def test_bad_tf_config_is_named(monkeypatch):
    monkeypatch.setenv("TF_CONFIG", "{not json")
    with pytest.raises(distribute.DistributeError, match="TF_CONFIG is not valid"):
        distribute.make_strategy("multi_worker")


def start_workers(logdir, *args, stdout_dir):
    ports = free_ports(2)
    cluster = {"worker": [f"127.0.0.1:{p}" for p in ports]}
    workers, logs = [], []
    for i in range(2):
        log = open(stdout_dir / f"worker{i}-{ports[0]}.log", "w+")  # noqa: SIM115
        env = dict(
            os.environ,
            TF_CPP_MIN_LOG_LEVEL="2",
            TF_CONFIG=json.dumps(
                {"cluster": cluster, "task": {"type": "worker", "index": i}}
            ),
        )
        workers.append(
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "pipeline.cli.train",
                    *JOB,
                    f"--logdir={logdir}",
                    "--run_name=pre",
                    "--strategy=multi_worker",
                    *args,
                ],
                cwd=REPO,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                text=True,
            )
        )
        logs.append(log)
    return workers, logs


def wait_all(workers, timeout=300):
    deadline = time.monotonic() + timeout
    codes = []
    for w in workers:
        try:
            codes.append(w.wait(timeout=max(1, deadline - time.monotonic())))
        except subprocess.TimeoutExpired:
            for other in workers:
                other.kill()
            pytest.fail("workers did not stop in time")
    return codes


def test_sigterm_to_one_worker_saves_everywhere_and_resume_finishes(tmp_path):
    logdir = tmp_path / "logs"
    steps = [
        "--steps=300",
        "--print_every=10",
        "--checkpoint_every=1000",
        "--eval_every=100",
    ]
    workers, logs = start_workers(logdir, *steps, stdout_dir=tmp_path)
    deadline = time.monotonic() + 240
    while "step     20/300" not in pathlib.Path(logs[1].name).read_text():
        assert time.monotonic() < deadline, pathlib.Path(logs[1].name).read_text()
        assert workers[1].poll() is None, pathlib.Path(logs[1].name).read_text()
        time.sleep(0.2)
    workers[1].send_signal(signal.SIGTERM)
    assert wait_all(workers) == [42, 42], [
        pathlib.Path(f.name).read_text() for f in logs
    ]
    chief_log = pathlib.Path(logs[0].name).read_text()
    assert (
        "pipeline-train: error: preempted: a worker got SIGTERM; every worker "
        "saved step" in chief_log
    )
    run = logdir / "pre"
    record = json.loads((run / "run.json").read_text())
    assert record["status"] == "interrupted"
    saved = int(record["step"])
    assert 20 <= saved < 300
    assert (run / "checkpoints" / f"ckpt-{saved}.index").exists()

    workers, logs = start_workers(logdir, *steps, "--resume", stdout_dir=tmp_path)
    assert wait_all(workers) == [0, 0], [pathlib.Path(f.name).read_text() for f in logs]
    outs = [pathlib.Path(f.name).read_text() for f in logs]
    assert f"resuming pre from step {saved}" in outs[0]
    assert digest(outs[0]) == digest(outs[1])
    record = json.loads((run / "run.json").read_text())
    assert record["status"] == "completed"
    assert [r["from_step"] for r in record["resumes"]] == [saved]
    assert [s for s, _ in scalar_series(run / "train", "loss")] == list(range(1, 301))
    assert sorted(p.name for p in logdir.iterdir() if p.is_dir()) == ["pre"]
