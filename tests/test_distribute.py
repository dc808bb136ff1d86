"""The same job under tf.distribute: mirrored replicas and two real workers."""

import json
import os
import signal
import socket
import subprocess
import time

import pytest
from conftest import (
    REPO,
    cli_command,
    cli_env,
    scalar_series,
    signal_as_a_handler_goes_back,
    train_run,
)

from pipeline import config as config_lib
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


def train_cli(*args, env_extra=None, job=JOB, **popen):
    env = {**cli_env(), **(env_extra or {})}
    return subprocess.Popen(
        [*cli_command("pipeline-train"), *job, *args],
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


@pytest.mark.slow
def test_mirrored_on_two_cpu_devices_matches_the_default_strategy(tmp_path):
    # The default strategy in this process; the two logical CPU devices need
    # a process of their own (they are set before TensorFlow starts).
    mirrored = train_cli(
        f"--logdir={tmp_path}",
        "--run_name=mirrored",
        "--strategy=mirrored",
        "--cpu_devices=2",
    )
    train_run(tmp_path, config_lib.config_from_args(JOB), "default")
    rc_m, _, err_m = finish(mirrored)
    assert rc_m == 0, err_m
    loss_d = [v for _, v in scalar_series(tmp_path / "default" / "train", "loss")]
    loss_m = [v for _, v in scalar_series(tmp_path / "mirrored" / "train", "loss")]
    assert len(loss_d) == len(loss_m) == 30
    assert loss_m == pytest.approx(loss_d, rel=1e-4, abs=1e-5)
    acc_d = scalar_series(tmp_path / "default" / "test", "accuracy")
    acc_m = scalar_series(tmp_path / "mirrored" / "test", "accuracy")
    assert [s for s, _ in acc_m] == [15, 30]
    assert [v for _, v in acc_m] == pytest.approx([v for _, v in acc_d], abs=1e-3)


def test_multi_worker_without_tf_config_is_one_line(tmp_path, monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    with pytest.raises(distribute.DistributeError, match="needs the TF_CONFIG"):
        distribute.make_strategy("multi_worker")


def test_bad_tf_config_is_named(monkeypatch):
    monkeypatch.setenv("TF_CONFIG", "{not json")
    with pytest.raises(distribute.DistributeError, match="TF_CONFIG is not valid"):
        distribute.make_strategy("multi_worker")


# --- workers that wait, peers that are lost, TF_CONFIG that is wrong -------

LOGREG_JOB = [
    "--model=logreg",
    "--batch_size=64",
    "--eval_every=0",
    "--histogram_every=0",
    "--image_count=0",
    "--projector=false",
    "--steps_per_loop=50",
    "--print_every=100",
    "--checkpoint_every=200",
    "--run_name=mw",
    "--strategy=multi_worker",
]


def tf_config(ports: list[int], index: int) -> str:
    cluster = {"worker": [f"127.0.0.1:{p}" for p in ports]}
    return json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}})


def one_worker(logdir, ports, index, *args, **popen):
    return train_cli(
        f"--logdir={logdir}",
        *LOGREG_JOB,
        *args,
        env_extra={"TF_CONFIG": tf_config(ports, index)},
        job=[],
        **popen,
    )


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if "pipeline-train: error:" in line]


BAD_TF_CONFIGS = [
    (
        "index_is_a_string",
        {
            "cluster": {"worker": ["127.0.0.1:1", "127.0.0.1:2"]},
            "task": {"type": "worker", "index": "0"},
        },
        "TF_CONFIG: task.index '0' must be an integer",
    ),
    (
        "index_out_of_range",
        {
            "cluster": {"worker": ["127.0.0.1:1", "127.0.0.1:2"]},
            "task": {"type": "worker", "index": 2},
        },
        "TF_CONFIG: task.index 2 is out of range: cluster.worker has 2 address(es)",
    ),
    (
        "index_negative",
        {
            "cluster": {"worker": ["127.0.0.1:1"]},
            "task": {"type": "worker", "index": -1},
        },
        "TF_CONFIG: task.index -1 is out of range",
    ),
    (
        "worker_list_is_a_string",
        {
            "cluster": {"worker": "127.0.0.1:1,127.0.0.1:2"},
            "task": {"type": "worker", "index": 0},
        },
        "TF_CONFIG: cluster.worker must be a non-empty list of 'host:port' strings",
    ),
    (
        "port_not_a_number",
        {
            "cluster": {"worker": ["127.0.0.1:1", "127.0.0.1:http"]},
            "task": {"type": "worker", "index": 0},
        },
        "TF_CONFIG: cluster.worker[1] '127.0.0.1:http': port 'http' is not a number",
    ),
    (
        "port_out_of_range",
        {
            "cluster": {"worker": ["127.0.0.1:70000"]},
            "task": {"type": "worker", "index": 0},
        },
        "port '70000' is not a number 1-65535",
    ),
    (
        "task_type_not_in_cluster",
        {"cluster": {"worker": ["127.0.0.1:1"]}, "task": {"type": "ps", "index": 0}},
        "TF_CONFIG: task.type 'ps' is not a job of 'cluster'",
    ),
    (
        "not_an_object",
        ["127.0.0.1:1"],
        "TF_CONFIG: it must be a JSON object",
    ),
]


@pytest.mark.parametrize(
    ("tf_config_value", "expected"),
    [c[1:] for c in BAD_TF_CONFIGS],
    ids=[c[0] for c in BAD_TF_CONFIGS],
)
def test_wrong_tf_config_is_one_line_before_tensorflow(
    tmp_path, tf_config_value, expected
):
    proc = train_cli(
        f"--logdir={tmp_path / 'logs'}",
        *LOGREG_JOB,
        env_extra={"TF_CONFIG": json.dumps(tf_config_value)},
    )
    rc, out, err = finish(proc, timeout=120)
    assert rc == 1, err
    assert "Traceback" not in out + err
    assert error_lines(err) == [
        f"pipeline-train: error: {err.split('error: ', 1)[1].strip()}"
    ]
    assert expected in error_lines(err)[0], err
    assert not (tmp_path / "logs").exists()


@pytest.mark.slow
def test_a_worker_alone_gives_up_naming_its_peer_and_honours_signals(tmp_path):
    """Start one of two workers: it says whom it waits for, gives up after
    --peer_timeout, and SIGINT/SIGTERM end the wait at once; nothing is written."""
    logdir = tmp_path / "logs"
    ports = free_ports(2)
    peer = f"worker 1 at 127.0.0.1:{ports[1]}"
    # 6 s: past the first "waiting for" line (at 5 s), no longer.
    alone = one_worker(logdir, ports, 0, "--peer_timeout=6")
    rc, _, err = finish(alone, timeout=120)
    assert rc == 1, err
    assert "Traceback" not in err
    assert f"worker 0: waiting for {peer} to start" in err
    assert error_lines(err) == [
        f"pipeline-train: error: gave up after 6 s (--peer_timeout) waiting for "
        f"{peer}: start it with the same flags and its own TF_CONFIG task, or "
        "check that address; nothing was trained or written"
    ]
    for signum, code in ((signal.SIGTERM, 143), (signal.SIGINT, 130)):
        waiting = one_worker(logdir, ports, 0)
        deadline = time.monotonic() + 60
        # It is waiting once it listens on its own port.
        while not distribute._listening(f"127.0.0.1:{ports[0]}"):
            assert time.monotonic() < deadline
            assert waiting.poll() is None
            time.sleep(0.1)
        waiting.send_signal(signum)
        rc, _, err = finish(waiting, timeout=30)
        assert rc == code, err
        assert error_lines(err) == [
            f"pipeline-train: error: interrupted by {signal.Signals(signum).name} "
            f"while waiting for {peer} to start; nothing was trained or written"
        ]
    assert not logdir.exists()


def wait_for_checkpoint(workers, run, step: int) -> None:
    """Returns once the chief has saved `step` (printed lines lag behind)."""
    deadline = time.monotonic() + 240
    while not (run / "checkpoints" / f"ckpt-{step}.index").exists():
        assert time.monotonic() < deadline, f"no checkpoint at step {step}"
        assert all(w.poll() is None for w in workers), [finish(w) for w in workers]
        time.sleep(0.1)


def test_a_second_signal_as_the_peer_wait_ends_neither_raises_nor_stays():
    """The peer wait's handlers raise for the first SIGINT/SIGTERM only. A
    second signal landing while they are put back (sent, for real, right
    after the first handler is restored) must not raise out of that, nor
    leave its handler raising for the rest of the run."""
    pair = (signal.SIGINT, signal.SIGTERM)
    before = [signal.getsignal(s) for s in pair]
    try:
        with (
            signal_as_a_handler_goes_back("_signals_raise", pair[1]) as sent,
            pytest.raises(distribute._WaitStoppedError, match="^SIGINT$"),
            distribute._signals_raise(),
        ):
            os.kill(os.getpid(), pair[0])
    finally:
        after = [signal.getsignal(s) for s in pair]
        for signum, handler in zip(pair, before, strict=True):
            signal.signal(signum, handler)
    assert sent == [pair[1]]
    assert after == before


@pytest.mark.slow
def test_two_workers_survive_sigterm_and_a_lost_worker_and_finish_as_one_run(
    tmp_path,
):
    """Two workers on loopback, one run. SIGTERM to one: every worker saves
    the same step and exits 42. Resumed, kill -9 one: the other names it and
    the command that continues the run, and run.json says interrupted with
    that one line. That command on both workers finishes the run: they agree,
    and only the chief's run is left (the non-chief's scratch is gone).
    800 steps after each wait are several seconds of training: time enough to
    signal or kill mid-run, and little to redo."""
    logdir = tmp_path / "logs"
    run = logdir / "mw"
    ports = free_ports(2)
    job = ["--steps=1000", "--eval_every=500"]
    workers = [one_worker(logdir, ports, i, *job) for i in range(2)]
    wait_for_checkpoint(workers, run, 200)
    workers[1].send_signal(signal.SIGTERM)
    results = [finish(w, timeout=120) for w in workers]
    assert [r[0] for r in results] == [42, 42], results
    assert "Traceback" not in results[0][2]
    assert (
        "pipeline-train: error: preempted: a worker got SIGTERM; every worker "
        "saved step" in results[0][2]
    )
    record = json.loads((run / "run.json").read_text())
    assert record["status"] == "interrupted"
    preempted = int(record["step"])
    # (A save past 800 would leave the kill below no checkpoint to wait for.)
    assert 200 <= preempted < 800, "SIGTERM acted too late for the kill"
    assert (run / "checkpoints" / f"ckpt-{preempted}.index").exists()

    command = (
        "pipeline-train --resume --strategy=multi_worker "
        f"--logdir={logdir} --run_name=mw"
    )

    def resume_both():
        return [
            train_cli(
                *command.split()[1:],
                env_extra={"TF_CONFIG": tf_config(ports, i)},
                job=[],
            )
            for i in range(2)
        ]

    workers = resume_both()
    wait_for_checkpoint(workers, run, (preempted // 200 + 1) * 200)
    workers[1].kill()
    killed_scratch = finish(workers[1])[1].split("run directory: ", 1)[1].split()[0]
    rc, out, err = finish(workers[0], timeout=120)
    assert rc == 1, err
    assert f"resuming mw from step {preempted}" in out
    assert "Traceback" not in err
    [line] = error_lines(err)
    assert line.startswith(
        f"pipeline-train: error: worker 1 at 127.0.0.1:{ports[1]} is gone (at step "
    ), line
    assert line.endswith(
        "the run stops at its last checkpoint; continue it by running on every "
        f"worker, each with its own TF_CONFIG: {command}"
    ), line
    saved = json.loads((run / "run.json").read_text())
    assert saved["status"] == "interrupted"
    assert saved["error"] == "PeerLostError: " + line.split("error: ", 1)[1]
    lost = saved["step"]
    assert lost > preempted
    assert (run / "checkpoints" / f"ckpt-{lost}.index").exists()

    resumed = resume_both()
    resumed_pids = [w.pid for w in resumed]
    results = [finish(w, timeout=300) for w in resumed]
    assert [r[0] for r in results] == [0, 0], results
    outs = [r[1] for r in results]
    assert f"resuming mw from step {lost}" in outs[0]
    assert digest(outs[0]) == digest(outs[1])
    done = json.loads((run / "run.json").read_text())
    assert done["status"] == "completed"
    assert done["step"] == 1000
    assert [r["from_step"] for r in done["resumes"]] == [preempted, lost]
    assert [s for s, _ in scalar_series(run / "train", "loss")] == list(range(1, 1001))
    assert [s for s, _ in scalar_series(run / "test", "accuracy")] == [500, 1000]
    assert (run / "checkpoints" / "ckpt-1000.index").exists()
    # One run, and the HParams experiment config the chief wrote beside it.
    assert sorted(p.name for p in logdir.iterdir()) == [
        "events.out.tfevents.hparams_config",
        "mw",
    ]
    # The non-chief's scratch directory is gone, and so is the one its killed
    # life left (the resumed worker removed it: its process was gone).
    assert f"run directory: /tmp/pipeline-worker-1-{resumed_pids[1]}-" in outs[1]
    scratch = outs[1].split("run directory: ", 1)[1].split()[0]
    assert not os.path.exists(scratch)
    assert killed_scratch.startswith("/tmp/pipeline-worker-1-")
    assert not os.path.exists(killed_scratch)
