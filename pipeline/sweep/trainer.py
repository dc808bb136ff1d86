"""A sweep worker's training process: TensorFlow imported once, runs trained in turn.

This module is the worker's end (`Trainer`); the process's own end is the
program `pipeline.cli.sweep_trainer` (it runs `pipeline-train`'s entry point,
so it sits in cli/, above sweep/).

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
import json
import select
import socket
import subprocess
import sys
from collections.abc import Callable, Mapping

from pipeline import config as config_lib

# What a run sets for the whole process and cannot set back: the strategy and
# its logical CPU devices (configured before TensorFlow's runtime starts),
# op determinism (TensorFlow has no public switch back).
PROCESS_WIDE = ("strategy", "cpu_devices", "deterministic")
MAX_MESSAGE = 1 << 20


def process_settings(config: config_lib.TrainConfig) -> tuple:
    """What a run needs of its process: runs with equal settings share one."""
    return tuple(getattr(config, name) for name in PROCESS_WIDE)


class Trainer:
    """The worker's end: starts the process, hands it runs, sees it end."""

    def __init__(
        self, env: Mapping[str, str], settings: tuple, preexec_fn: Callable | None
    ):
        self.settings = settings
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        with theirs:
            self.process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "pipeline.cli.sweep_trainer",
                    str(theirs.fileno()),
                ],
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
                answer = self.control.recv(MAX_MESSAGE)
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
