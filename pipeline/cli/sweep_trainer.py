"""The training process of a sweep worker (`pipeline.sweep.trainer.Trainer`
starts it as `python -m pipeline.cli.sweep_trainer FD`): trains the runs the
worker sends over the socket FD, each exactly as `pipeline-train` would, and
clears what each left behind (how runs stay contained: the docstring of
`pipeline.sweep.trainer`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import sys
import traceback

from absl import flags

from pipeline import cli, processes, streams
from pipeline import config as config_lib
from pipeline.cli import train
from pipeline.runs import rundir
from pipeline.sweep import link as link_lib
from pipeline.sweep.trainer import MAX_MESSAGE


def serve(control_fd: int, growth_mb: int) -> int:
    """Trains the runs the worker sends until it closes the socket, or until
    the process has grown by more than `growth_mb` since its first run
    (0: after one run); see `pipeline.sweep.trainer` on memory."""
    streams_ready()
    config_lib.define_flags(flags.FLAGS)
    import tensorflow  # noqa: F401  (the import every run shares)

    control = socket.socket(fileno=control_fd)
    first_run_mb = None
    while True:
        try:
            message, fds, _, _ = socket.recv_fds(control, MAX_MESSAGE, 2)
        except (KeyboardInterrupt, OSError):
            return 130
        if not message:
            return 0
        request = json.loads(message)
        log_fd, link_fd = fds
        with run_output(log_fd):
            status = train_one(request["argv"], request["link"], link_fd)
        fresh_state(link_fd)
        resident = resident_mb()
        first_run_mb = resident if first_run_mb is None else first_run_mb
        retiring = growth_mb == 0 or resident - first_run_mb > growth_mb
        try:
            control.send(json.dumps({"exit": status, "retiring": retiring}).encode())
        except OSError:  # the worker is gone (its run said `interrupted`)
            return status
        if retiring:
            return 0


def resident_mb() -> float:
    """This process's resident memory in MB (`--trainer_growth_mb`'s unit)."""
    return processes.resident_bytes() / 1e6


def streams_ready() -> None:
    """As `cli.start` does for `pipeline-train`: quiet TF, guarded output."""
    streams.guard_output()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    logging.getLogger("tensorflow").setLevel(logging.WARNING)
    cli.before_tensorflow()


@contextlib.contextmanager
def run_output(log_fd: int):
    """The run's stdout and stderr (file descriptors 1 and 2) go to its log."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    os.dup2(log_fd, 1)
    os.dup2(log_fd, 2)
    os.close(log_fd)
    try:
        yield
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        os.close(saved[0])
        os.close(saved[1])


def train_one(argv: list[str], link: dict, link_fd: int) -> int:
    """Trains one run as `pipeline-train ARGV` would; its exit status."""
    os.environ[link_lib.ENV_VAR] = json.dumps({**link, "fd": link_fd})
    try:
        return cli.run_in_process(train.PROG, train.main, argv)
    except BaseException:  # a bug: its traceback in the log, as a crash shows it
        traceback.print_exc()
        return 1
    finally:
        os.environ.pop(link_lib.ENV_VAR, None)


def fresh_state(link_fd: int) -> None:
    """Clears what a run left in the process, so the next run starts as a
    fresh process would: Keras' session (its name counters and global seed
    generator, the graph), the run's lock, its end of the link."""
    import keras

    keras.backend.clear_session(free_memory=True)
    rundir.release_all_locks()
    # A run's objects that still hold files, sockets, an input pipeline.
    processes.collect_what_a_run_left()
    with contextlib.suppress(OSError):
        os.close(link_fd)


if __name__ == "__main__":
    sys.exit(serve(int(sys.argv[1]), int(sys.argv[2])))
