"""Child processes that die with their parent.

A child started with `subprocess.Popen(..., preexec_fn=die_with_parent())`
gets a signal (SIGTERM by default) from the Linux kernel when the thread
that started it exits, however it exits: `kill -9`, a crash, a SIGTERM whose
default action skips every `finally`. Without it a TensorBoard server (or a
training run started by a sweep) outlives its parent and keeps running
unseen. Linux only (`prctl(PR_SET_PDEATHSIG)`); elsewhere it does nothing.

The kernel watches the *thread* that forked the child: start children from
a thread that lives as long as they should (the main thread, usually).

No TensorFlow; usable by any program of the pipeline.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import signal
import sys
from collections.abc import Callable

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
