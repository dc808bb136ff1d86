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
- Memory: TensorFlow keeps every graph it traced, also after Keras' session
  is cleared and the heap collected (tensorflow/tensorflow#124972): a
  process grows by ~4 MB a 20-step logreg run, ~6 MB an MLP run, ~23 MB a
  CNN run (`python -m benchmarks.warm_memory`). Once it has grown by more
  than `--trainer_growth_mb` since its first run, it says so with that run's
  status and exits; the next run gets a new process.
- Temporary files: the process's TMPDIR is a folder of its own, removed
  once the process ended (SIGTERM, SIGKILL and crashes skip the exit
  handlers that remove what TensorFlow and the libraries under it put in
  the temporary directory).

A process that runs several sweeps in turn (a notebook, a test session) can
keep the idle training processes of one sweep for the next, inside
`kept_between_sweeps()`: `start` takes a kept one with the same settings,
environment and working directory, and `release` keeps a process that is
idle, alive and was started by the main thread (the parent-death signal
follows the starting thread, so one a worker thread started would die with
that thread). Outside it, and on leaving it, `release` ends them.

The protocol, on a SOCK_SEQPACKET socket pair (one message per datagram):
the worker sends `{"argv": [...], "link": {...}}` with two file descriptors
(the run's log, its end of the run's `link` socket); the process answers
`{"exit": STATUS, "retiring": BOOL}` when the run ended (retiring: it exits
now, having outgrown its bound). End of file: the process exits.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import shutil
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator, Mapping

from pipeline import config as config_lib
from pipeline import processes

# What a run sets for the whole process and cannot set back: the strategy and
# its logical CPU devices (configured before TensorFlow's runtime starts),
# op determinism (TensorFlow has no public switch back).
PROCESS_WIDE = ("strategy", "cpu_devices", "deterministic")
MAX_MESSAGE = 1 << 20
# Idle training processes kept between sweeps, at most this many per process.
KEPT_AT_MOST = 2
# `pipeline-sweep --trainer_growth_mb`'s default: with 4-23 MB a run, a new
# process (a TensorFlow import, a few seconds) every 20-140 runs.
GROWTH_MB = 512


def process_settings(config: config_lib.TrainConfig) -> tuple:
    """What a run needs of its process: runs with equal settings share one."""
    return tuple(getattr(config, name) for name in PROCESS_WIDE)


class Trainer:
    """The worker's end: starts the process, hands it runs, sees it end."""

    def __init__(
        self,
        env: Mapping[str, str],
        settings: tuple,
        preexec_fn: Callable | None,
        growth_mb: int = GROWTH_MB,
    ):
        self.settings = settings
        self.key = _key(env, settings, growth_mb)
        self.busy = False  # a run handed over and its status not yet read
        self.retiring = False  # it said it exits after its run
        self.in_main_thread = threading.current_thread() is threading.main_thread()
        # Its temporary files (removed at a normal exit by the exit handlers
        # of whatever made them) go in a folder of its own, removed after it ended:
        # `close` ends it with SIGTERM, which skips Python's exit handlers.
        # (Named by this process: if it is killed, the training process dies
        # with it, and the next `temp_folder` call removes the folder.)
        self.tmpdir = processes.temp_folder("trainer")
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        with theirs:
            self.process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "pipeline.cli.sweep_trainer",
                    str(theirs.fileno()),
                    str(growth_mb),
                ],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                env=dict(env, TMPDIR=self.tmpdir),
                pass_fds=(theirs.fileno(),),
                preexec_fn=preexec_fn,
            )
        self.control = ours

    def start_run(self, argv: list[str], link: dict, log_fd: int, link_fd: int) -> None:
        """Hands the process one run (returns at once; `poll` says when it ends)."""
        message = json.dumps({"argv": argv, "link": link}).encode()
        self.busy = True
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
                self.busy = False
                reply = json.loads(answer)
                self.retiring = bool(reply.get("retiring"))
                return int(reply["exit"])
            return self.process.wait()
        return self.process.poll()

    @property
    def alive(self) -> bool:
        """Whether it can take another run (not dead, not retiring)."""
        return not self.retiring and self.process.poll() is None

    def close(self) -> None:
        """Ends the process between runs: nothing of a run is left to write
        (each run closed its files), so SIGTERM ends it at once, without
        TensorFlow's seconds of teardown."""
        self.control.close()
        if self.process.poll() is None:
            self.process.terminate()
        self.process.wait()
        shutil.rmtree(self.tmpdir, ignore_errors=True)


def _key(env: Mapping[str, str], settings: tuple, growth_mb: int) -> tuple:
    """What a kept process must share with the sweep that takes it."""
    return settings, tuple(sorted(env.items())), os.getcwd(), growth_mb


_kept: list[Trainer] | None = None  # None: not inside kept_between_sweeps()
_kept_lock = threading.Lock()


@contextlib.contextmanager
def kept_between_sweeps() -> Iterator[None]:
    """Within it, `release` keeps idle training processes for the next
    sweep of this process; on leaving, every kept one is ended."""
    global _kept
    with _kept_lock:
        outer, _kept = _kept, []
    try:
        yield
    finally:
        with _kept_lock:
            kept, _kept = _kept, outer
        for trainer in kept:
            trainer.close()


def start(
    env: Mapping[str, str],
    settings: tuple,
    preexec_fn: Callable | None,
    growth_mb: int = GROWTH_MB,
) -> Trainer:
    """A training process for runs of `settings` that exits once it has grown
    by more than `growth_mb` (0: after every run): a kept one that matches
    (see `kept_between_sweeps`), else a new one."""
    key = _key(env, settings, growth_mb)
    with _kept_lock:
        for trainer in list(_kept or ()):
            if trainer.key == key:
                _kept.remove(trainer)
                if trainer.alive:
                    return trainer
                trainer.close()
    return Trainer(env, settings, preexec_fn, growth_mb)


def release(trainer: Trainer) -> None:
    """Ends the training process, or keeps it (see `kept_between_sweeps`)."""
    keep = trainer.in_main_thread and not trainer.busy and trainer.alive
    with _kept_lock:
        if _kept is not None and keep:
            _kept.append(trainer)
            if len(_kept) <= KEPT_AT_MOST:
                return
            trainer = _kept.pop(0)  # the one kept longest goes
    trainer.close()
