"""Keeps TensorFlow's start-up log lines off the console; everything else passes.

TensorFlow's C++ prints a few lines on import, before absl logging starts
(`WARNING: All log messages before absl::InitializeLog() is called...`,
`oneDNN custom operations are on...`), straight to file descriptor 2:
`TF_CPP_MIN_LOG_LEVEL` does not reach them, and Python's `sys.stderr` never
sees them. `install` therefore puts a pipe on fd 2 before TensorFlow loads,
with a forked filter process on its other end that copies every line to the
real stderr except those known ones. A separate process, not a thread, so
that a crash of the program (a C++ `Check failed`, a segfault) cannot take
its last lines with it: the filter drains the pipe until every writer is
gone. Lines pass through as soon as they end (`\\n` or `\\r`), so progress
output stays live.
"""

from __future__ import annotations

import atexit
import os
import re
import signal
import sys
import time

# Whole lines (without their end) that are TensorFlow start-up noise.
NOISE = (
    re.compile(
        rb"WARNING: All log messages before absl::InitializeLog\(\) is called"
        rb" are written to STDERR"
    ),
    re.compile(
        rb"I\d{4} [\d:.]+ +\d+ port\.cc:\d+\] oneDNN custom operations are on.*"
    ),
    re.compile(rb"I\d{4} [\d:.]+ +\d+ cpu_feature_guard\.cc:\d+\] This TensorFlow .*"),
    re.compile(
        rb"To enable the following instructions: .* appropriate compiler flags\."
    ),
    # A multi-worker collective aborted because a peer died: C++ logs these
    # (and their gRPC continuation lines) before the program reports the lost
    # worker in one line (`distribute.peers_watched`).
    re.compile(
        rb"E\d{4} [\d:.]+ +\d+ (ring_alg|base_collective_executor)\.cc:\d+\] "
        rb".*(UNAVAILABLE|CANCELLED|ABORTED).*"
    ),
    re.compile(rb"Additional GRPC error information from remote target .*"),
    re.compile(rb":UNKNOWN:Error received from peer .*"),
)
# Flags that ask for TensorFlow's and absl's log lines: nothing is filtered.
VERBOSE_FLAGS = ("--verbosity", "-v", "--v")


def is_noise(line: bytes) -> bool:
    """True for one of TensorFlow's known start-up lines (`line` without its end)."""
    return any(pattern.fullmatch(line) for pattern in NOISE)


def wants_logs(argv: list[str]) -> bool:
    """True when the command line sets `--verbosity` (`-v`): show everything."""
    return any(arg.split("=", 1)[0] in VERBOSE_FLAGS for arg in argv[1:])


def _copy_filtered(source: int, target: int) -> None:
    """Copies `source` to `target` line by line, dropping noise, until EOF."""
    pending = b""
    while True:
        try:
            data = os.read(source, 65536)
        except InterruptedError:
            continue
        if not data:
            break
        pending += data
        parts = re.split(rb"(\r\n|\n|\r)", pending)
        pending = parts.pop()  # after the last line end (maybe empty)
        out = b"".join(
            line + end
            for line, end in zip(parts[::2], parts[1::2], strict=True)
            if not is_noise(line)
        )
        if out:
            os.write(target, out)
    if pending and not is_noise(pending):
        os.write(target, pending)


def install(argv: list[str] | None = None) -> bool:
    """Routes fd 2 through the filter process (call before importing TensorFlow).

    Does nothing (returns False) with `--verbosity` on the command line, or
    when fd 2 is not open. Returns True when the filter is in place.
    """
    argv = sys.argv if argv is None else argv
    if wants_logs(argv):
        return False
    try:
        real_stderr = os.dup(2)
    except OSError:
        return False
    read_end, write_end = os.pipe()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:  # the filter: ignores Ctrl-C (the program reports it)
        try:
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            os.close(write_end)
            os.dup2(real_stderr, 2)
            _copy_filtered(read_end, real_stderr)
        finally:
            os._exit(0)
    os.close(read_end)
    os.dup2(write_end, 2)
    os.close(write_end)
    os.set_inheritable(real_stderr, False)

    def drain() -> None:
        # Closing our end lets the filter finish; wait so its last lines
        # are out before the shell prompt comes back.
        sys.stderr.flush()
        os.dup2(real_stderr, 2)
        deadline = time.monotonic() + 2.0
        while time.monotonic() < deadline:
            try:
                if os.waitpid(pid, os.WNOHANG) != (0, 0):
                    return
            except ChildProcessError:
                return
            time.sleep(0.01)

    atexit.register(drain)
    return True
