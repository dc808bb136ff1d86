"""Processes: children that die with their parent, and whether a run's is alive.

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

import ctypes
import ctypes.util
import os
import pathlib
import signal
import socket
import sys
from collections.abc import Callable
from typing import Any

PR_SET_PDEATHSIG = 1


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
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie (killed, not yet reaped) is dead; an unrelated process that
    # reused the pid does not mention the pipeline on its command line.
    proc = pathlib.Path(f"/proc/{pid}")
    try:
        state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
        cmdline = (proc / "cmdline").read_bytes()
    except (OSError, IndexError):
        return True
    if state == "Z":
        return False
    return not cmdline or b"pipeline" in cmdline


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
