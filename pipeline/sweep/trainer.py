"""A sweep worker's training process: TensorFlow imported once, runs trained in turn.

Each run of a trial used to be a fresh `pipeline-train` process, which paid
TensorFlow's import (2-3 s, more under load) before every run: most of a
short trial. A worker now keeps one `Trainer` process and hands it run after
run. The process trains each run exactly as `pipeline-train` would (the same
flag parsing and entry point, `cli.train.main`, its output in the run's log,
its exit status reported instead of exited with), then clears what the run
left in the process (`fresh_state`): Keras' session (layer-name counters,
the global seed generator), the run's lock, its link and environment.
Every run seeds Python, NumPy, TensorFlow and Keras itself, so a run trained
third in a warm process gets the same weights as the same run trained alone
(tests/test_sweep_warm.py).

What stays contained, and how:

- An exception in a run (a bug, a batch larger than the data) ends that run
  with the status `pipeline-train` would exit with; the worker records it
  failed and the process goes on with clean state for the next run.
- A dead process (killed, a crash in C++) ends its run with the signal's
  status, as a dead `pipeline-train` did; the worker fails that trial and
  starts a new process for the next run.
- Process-wide settings a run cannot undo (`PROCESS_WIDE`: a strategy's
  devices, op determinism) are the process's own: a run that needs other
  ones gets a new process.
- SIGINT/SIGTERM reach the run being trained (it saves and records
  `interrupted`, as before); between runs they end the process. The
  parent-death signal is set by the worker as before.

The protocol, on a SOCK_SEQPACKET socket pair (one message per datagram):
the worker sends `{"argv": [...], "link": {...}}` with two file descriptors
(the run's log, its end of the run's `link` socket); the process answers
`{"exit": STATUS}` when the run ended. End of file: the process exits.
"""

from __future__ import annotations

import contextlib
import gc
import json
import logging
import os
import select
import socket
import subprocess
import sys
import traceback
from collections.abc import Callable, Mapping

from absl import flags

from pipeline import cli, streams
from pipeline import config as config_lib
from pipeline.cli import train
from pipeline.runs import rundir
from pipeline.sweep import link as link_lib

# What a run sets for the whole process and cannot set back: the strategy and
# its logical CPU devices (configured before TensorFlow's runtime starts),
# op determinism (TensorFlow has no public switch back).
PROCESS_WIDE = ("strategy", "cpu_devices", "deterministic")
_MAX_MESSAGE = 1 << 20


def process_settings(config: config_lib.TrainConfig) -> tuple:
    """What a run needs of its process: runs with equal settings share one."""
    return tuple(getattr(config, name) for name in PROCESS_WIDE)


class Trainer:
    """The worker's end: starts the process, hands it runs, sees it end."""

    def __init__(self, env: Mapping[str, str], settings: tuple, preexec_fn: Callable):
        self.settings = settings
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        with theirs:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "pipeline.sweep.trainer", str(theirs.fileno())],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                env=dict(env),
                pass_fds=(theirs.fileno(),),
                preexec_fn=preexec_fn,
            )
        self.control = ours

    def start_run(self, argv: list[str], link: dict, log_fd: int, link_fd: int) -> None:
        """Hands the process one run (returns at once; `poll` says when it ends)."""
        message = json.dumps({"argv": argv, "link": link}).encode()
        with contextlib.suppress(OSError):  # gone: `poll` reports its status
            socket.send_fds(self.control, [message], [log_fd, link_fd])

    def poll(self, timeout: float = 0.0) -> int | None:
        """The run's exit status once it ended (the process's own status if
        the process died), else None."""
        ready, _, _ = select.select([self.control], [], [], timeout)
        if ready:
            try:
                answer = self.control.recv(_MAX_MESSAGE)
            except OSError:
                answer = b""
            if answer:
                return int(json.loads(answer)["exit"])
            return self.process.wait()
        return self.process.poll()

    @property
    def alive(self) -> bool:
        return self.process.poll() is None

    def close(self) -> None:
        """Ends the process between runs: nothing of a run is left to write
        (each run closed its files), so SIGTERM ends it at once, without
        TensorFlow's seconds of teardown."""
        self.control.close()
        if self.process.poll() is None:
            self.process.terminate()
        self.process.wait()


# --- the training process's side -------------------------------------------


def serve(control_fd: int) -> int:
    """Trains the runs the worker sends until it closes the socket."""
    streams_ready()
    config_lib.define_flags(flags.FLAGS)
    import tensorflow  # noqa: F401  (the import every run shares)

    control = socket.socket(fileno=control_fd)
    while True:
        try:
            message, fds, _, _ = socket.recv_fds(control, _MAX_MESSAGE, 2)
        except (KeyboardInterrupt, OSError):
            return 130
        if not message:
            return 0
        request = json.loads(message)
        log_fd, link_fd = fds
        with run_output(log_fd):
            status = train_one(request["argv"], request["link"], link_fd)
        fresh_state(link_fd)
        try:
            control.send(json.dumps({"exit": status}).encode())
        except OSError:  # the worker is gone (its run said `interrupted`)
            return status


def streams_ready() -> None:
    """As `cli.start` does for `pipeline-train`: quiet TF, guarded output."""
    streams.guard_output()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    logging.getLogger("tensorflow").setLevel(logging.WARNING)


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
    gc.collect()  # a run's objects that still hold files or sockets
    with contextlib.suppress(OSError):
        os.close(link_fd)


if __name__ == "__main__":
    sys.exit(serve(int(sys.argv[1])))
