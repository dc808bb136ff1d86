"""What a sweep costs beside its training: 4 one-step MLP trials on one worker.

`pipeline-sweep --flagfile=flags/mlp_relu_10x30.cfg --steps=1
--grid=learning_rate=0.1,0.2,0.3,0.4 --workers=1` (the bundled digits), timed
as a user runs it, from the command to its exit, and each trial's seconds as
its progress line gives them. A worker trains its trials in one warm process
(`pipeline.sweep.trainer`), so TensorFlow's import is paid once per worker,
not once per trial; the target is at most 20 s for the whole command.

usage: python -m benchmarks.sweep [--rounds=N]
"""

from __future__ import annotations

import argparse
import pathlib
import re
import statistics
import subprocess
import sys
import tempfile
import time

from benchmarks.common import ROOT

COMMAND = [
    "--flagfile=flags/mlp_relu_10x30.cfg",
    "--steps=1",
    "--grid=learning_rate=0.1,0.2,0.3,0.4",
    "--workers=1",
    "--sweep_name=warm",
]
TARGET_S = 20.0


def one_sweep() -> tuple[float, list[int]]:
    """(the command's wall seconds, each trial's seconds from its line)."""
    program = str(pathlib.Path(sys.executable).parent / "pipeline-sweep")
    with tempfile.TemporaryDirectory() as logdir:
        started = time.monotonic()
        out = subprocess.run(
            [program, *COMMAND, f"--logdir={logdir}"],
            capture_output=True,
            text=True,
            cwd=ROOT,
            check=False,
        )
        wall = time.monotonic() - started
    if out.returncode != 0:
        sys.exit(f"benchmarks.sweep: pipeline-sweep failed: {out.stderr[-500:]}")
    trials = [int(s) for s in re.findall(r"completed trial .*\((\d+)s\)", out.stdout)]
    return wall, trials


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    rounds = parser.parse_args().rounds
    print(f"sweep: 4 one-step MLP trials on one worker, {rounds} rounds")
    walls = []
    for i in range(rounds):
        wall, trials = one_sweep()
        walls.append(wall)
        seconds = ", ".join(f"{s}" for s in trials)
        print(f"  round {i + 1}: {wall:.1f} s (trials {seconds} s)")
    median = statistics.median(walls)
    verdict = "met" if median <= TARGET_S else "MISSED"
    print(f"  median {median:.1f} s, target <= {TARGET_S:.0f} s: {verdict}")


if __name__ == "__main__":
    main()
