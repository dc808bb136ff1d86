"""Processes: children that die with their parent, whether a run's is alive,
and the garbage collector in a process that loads TensorFlow (its pace,
what a finished run left).

A child started with `subprocess.Popen(..., preexec_fn=die_with_parent())`
gets a signal (SIGTERM by default) from the Linux kernel when the thread
that started it exits, however it exits: `kill -9`, a crash, a SIGTERM whose
default action skips every `finally`. Without it a TensorBoard server (or a
training run started by a sweep) outlives its parent and keeps running
unseen. Linux only (`prctl(PR_SET_PDEATHSIG)`); elsewhere it does nothing.

The kernel watches the *thread* that forked the child: start children from
a thread that lives as long as they should (the main thread, usually).

`owner_alive` tells a live run from one whose process died, for `--resume`
and sweeps alike.

No TensorFlow; usable by any program of the pipeline.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import gc
import os
import pathlib
import re
import resource
import shutil
import signal
import socket
import sys
import tempfile
from collections.abc import Callable
from typing import Any

PR_SET_PDEATHSIG = 1

# Python's cyclic garbage collector, first generation: collect after this many
# new container objects (Python's default is 700; the older generations keep
# theirs). TensorFlow and Keras leave ~340,000 objects after their import, and
# with the default every tenth first-generation pass walks older objects,
# every hundredth all of them: 828 passes while the training loop imports,
# 1,050 in a 200-step MLP run. Measured on the 2-core machine, in alternation
# (docs/performance.md): the import 3.58 s of CPU by default, 2.96 s with
# this (21 passes); `pipeline-train --model=mlp --dataset=mnist_sample
# --steps=200` 6.55 s and 6.27 s (84 passes); a TensorBoard server 4.59 s and
# 3.93 s. A pass is then due every 100,000 objects: memory stays bounded.
GC_FIRST_GENERATION = 100_000
# Whether `collect_what_a_run_left` froze the imports' objects yet.
_imports_frozen = False


def collect_less_often() -> None:
    """Has Python's garbage collector walk TensorFlow's objects less often.

    Every program that loads TensorFlow calls it before the import (and
    the test session, which trains in its own process, as they do).
    Garbage is still collected: only how often is changed.
    """
    _, second, third = gc.get_threshold()
    gc.set_threshold(GC_FIRST_GENERATION, second, third)


def collect_what_a_run_left(generation: int = 2) -> None:
    """Collects the reference cycles a finished run left in a process that
    goes on: a sweep trainer between trials, the test session after a run
    it trained in its own process.

    A run's `tf.data` iterator is in such cycles (the functions TensorFlow
    traced hold the frames that built it). Destroying an iterator waits for
    its autotuning thread, which sleeps ever longer between tunings (up to a
    minute): collected long after its run, that wait took 15-40 s in the
    test session; collected right after, at most about as long as the run.

    The first call after TensorFlow's import also freezes what is left
    (`gc.freeze`: the objects of TensorFlow's and Keras' imports, ~300,000),
    so a collection walks only what runs made since: ~0.03 s after a tiny
    run instead of ~0.17 s. `generation` < 2 collects only the young ones.
    """
    global _imports_frozen
    gc.collect(generation)
    # A flag, not `gc.get_freeze_count()`: that walks every frozen object
    # (0.028 s for 314,000 here), and a test session calls this after every
    # test.
    if "tensorflow" in sys.modules and not _imports_frozen:
        gc.freeze()
        _imports_frozen = True


def die_with_parent(signum: int = signal.SIGTERM) -> Callable[[], None] | None:
    """A `preexec_fn` that has the child receive `signum` when its parent
    dies (None where the platform cannot: pass it anyway)."""
    if not sys.platform.startswith("linux"):
        return None
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    parent = os.getpid()

    def arrange() -> None:
        libc.prctl(PR_SET_PDEATHSIG, int(signum), 0, 0, 0)
        # The parent may have died between fork and prctl.
        if os.getppid() != parent:
            os.kill(os.getpid(), signum)

    return arrange


def process_alive(pid: int) -> bool:
    """Whether process `pid` (of the pipeline) is alive on this host."""
    if not _pid_in_use(pid):
        return False
    # An unrelated process that reused the pid does not mention the pipeline
    # on its command line.
    try:
        cmdline = pathlib.Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return True
    return not cmdline or b"pipeline" in cmdline


def resident_bytes(pid: int | None = None) -> int | None:
    """Resident memory of process `pid` (this one by default) in bytes; None
    once it has exited. Without /proc: this process's peak instead."""
    try:
        statm = pathlib.Path(f"/proc/{pid or 'self'}/statm").read_text()
        return int(statm.split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (FileNotFoundError, ProcessLookupError):
        if pid is not None:
            return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


def _pid_in_use(pid: int) -> bool:
    """Whether any process has `pid` on this host (a zombie, killed and not
    yet reaped, does not count)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = pathlib.Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


# `pipeline-KIND-PID-XXXXXXXX`: a folder `temp_folder` made for process PID.
_TEMP_FOLDER = re.compile(r"pipeline-[a-z0-9_-]+?-(\d+)-[a-z0-9_]{8}")


def temp_folder(kind: str) -> str:
    """A new folder `pipeline-KIND-PID-...` in the temporary directory for
    this process (PID) to write into and remove when done.

    A process killed (SIGKILL, a crash, its parent's death) cannot remove
    its folder: first this removes the ones, of any kind, that this user
    owns and whose PID no process has (a process of any program: a notebook
    that runs sweeps does not name the pipeline on its command line).
    """
    root = pathlib.Path(tempfile.gettempdir())
    for old in root.glob("pipeline-*"):
        owner = _TEMP_FOLDER.fullmatch(old.name)
        with contextlib.suppress(OSError):
            if (
                owner
                and old.is_dir()
                and old.stat().st_uid == os.getuid()
                and not _pid_in_use(int(owner.group(1)))
            ):
                shutil.rmtree(old)
    return tempfile.mkdtemp(prefix=f"pipeline-{kind}-{os.getpid()}-")


def owner_alive(record: Any) -> bool:
    """Whether the process a run record names is alive on this host.

    `record` is a run's `run.json` (`RunRecord` or its dict: anything with
    `.get`). Used by `--resume` and by sweeps to tell a live run from one
    whose process died (`kill -9`, a crash, a reboot).
    """
    pid = record.get("pid")
    if record.get("host") != socket.gethostname() or not isinstance(pid, int):
        return False
    return process_alive(pid)
