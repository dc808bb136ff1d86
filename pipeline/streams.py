"""Output streams that close: `pipeline-train | head`, quitting `less`, a dead parent.

Python ignores SIGPIPE, so a write to a pipe whose reader has gone raises
`BrokenPipeError` wherever it happens: in a progress line, a table, at exit.
`guard_output()` (called by every entry point before anything is printed)
wraps `sys.stdout` and `sys.stderr` so that such a write ends the output, not
the program: the stream is pointed at /dev/null and `output_closed()` says so
from then on. What happens next is the program's decision: a training run
stops at its next chunk with a checkpoint, recorded `interrupted` and
resumable (`pipeline.training.actions.StopOnSignal`), as a shell's `| head`
stops its writer; a short command (compare, eval, ...) finishes its work.

`output_closed()` also notices a closed stdout pipe that nothing wrote to
(`poll` reports POLLERR on a pipe whose reader exited), so a child whose
parent died, having read its output, notices it at its next check.

No TensorFlow; usable by any program of the pipeline.
"""

from __future__ import annotations

import contextlib
import os
import select
import stat
import sys
from typing import Any, TextIO

_closed: set[int] = set()


class _Guarded:
    """A text stream whose writes to a closed pipe go to /dev/null instead."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream

    def _call(self, name: str, *args: Any) -> Any:
        try:
            return getattr(self._stream, name)(*args)
        except BrokenPipeError:
            _point_at_devnull(self._stream)
            return None

    def write(self, text: str) -> int:
        written = self._call("write", text)
        return len(text) if written is None else written

    def writelines(self, lines) -> None:
        for line in lines:
            self.write(line)

    def flush(self) -> None:
        self._call("flush")

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


def _point_at_devnull(stream: TextIO) -> None:
    """Redirects `stream`'s file descriptor to /dev/null (its buffered text
    with it): later writes and the flush at exit succeed and go nowhere."""
    try:
        fd = stream.fileno()
    except (OSError, ValueError):
        return
    _closed.add(fd)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, fd)
    finally:
        os.close(devnull)
    with contextlib.suppress(OSError, ValueError):
        stream.flush()


def guard_output() -> None:
    """Wraps `sys.stdout` and `sys.stderr` (once) so a closed pipe ends only
    the output; see the module docstring."""
    for name in ("stdout", "stderr"):
        stream = getattr(sys, name)
        if stream is not None and not isinstance(stream, _Guarded):
            setattr(sys, name, _Guarded(stream))


def _reader_gone(fd: int) -> bool:
    """True when `fd` is a pipe whose reading end is closed (POLLERR)."""
    try:
        if not stat.S_ISFIFO(os.fstat(fd).st_mode):
            return False
        poller = select.poll()
        poller.register(fd, select.POLLOUT)
        return any(event & select.POLLERR for _, event in poller.poll(0))
    except OSError:
        return False


def output_closed() -> bool:
    """Whether standard output was closed by its reader (a write failed, or
    the pipe reports its reader gone); it is then pointed at /dev/null."""
    if 1 in _closed:
        return True
    if _reader_gone(1):
        _point_at_devnull(sys.stdout)
        return True
    return False
