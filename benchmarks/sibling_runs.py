"""What a new run's start and end cost as its logdir grows (issue 20).

    python -m benchmarks.sibling_runs [--siblings=10,300]

For each count N: a logdir holding N finished sibling runs (copies of one real
tiny logreg run, learning rates varied so a flag differs) and one new run.

* `pipeline-train` (2 steps, the bundled digits) under
  `strace -f -e trace=open,openat`: how many of the siblings' `run.json` it
  opens, and its wall seconds (TensorFlow's import included);
* in-process, median of 5: seconds of `hparams.start_run` (what a run writes
  for HParams before its first step) and of `hparams.end_run` (after its last).
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

from pipeline import config as config_lib
from pipeline.runs import rundir
from pipeline.tensorboard import hparams

FLAGS = [
    "--dataset=mnist_sample",
    "--model=logreg",
    "--batch_size=32",
    "--shuffle_buffer=256",
    "--learning_rate=0.1",
    "--optimizer=sgd",
    "--log_every=5",
    "--checkpoint_every=0",
    "--print_every=0",
]
BIN = pathlib.Path(sys.executable).parent


def _train(logdir: pathlib.Path, name: str, steps: int, strace: pathlib.Path | None):
    command = [
        str(BIN / "pipeline-train"),
        *FLAGS,
        f"--steps={steps}",
        f"--logdir={logdir}",
        f"--run_name={name}",
    ]
    if strace is not None:
        command = ["strace", "-f", "-e", "trace=open,openat", "-o", str(strace)]
        command += [str(BIN / "pipeline-train"), *FLAGS]
        command += [f"--steps={steps}", f"--logdir={logdir}", f"--run_name={name}"]
    started = time.perf_counter()
    subprocess.run(command, check=True, capture_output=True)
    return time.perf_counter() - started


def _logdir_with_siblings(template: pathlib.Path, count: int, root: pathlib.Path):
    logdir = root / f"logs-{count}"
    for i in range(count):
        sibling = logdir / f"run-{i:03d}"
        shutil.copytree(template, sibling)
        record = json.loads((sibling / rundir.RECORD_NAME).read_text())
        record["config"]["learning_rate"] = 0.01 * (1 + i % 7)
        (sibling / rundir.RECORD_NAME).write_text(json.dumps(record))
    hparams.write_experiment_config(logdir)
    return logdir


def _sibling_opens(trace: pathlib.Path, new_run: pathlib.Path) -> int:
    return sum(
        1
        for line in trace.read_text().splitlines()
        if f'/{rundir.RECORD_NAME}"' in line
        and "ENOENT" not in line
        and str(new_run) not in line
    )


def _median_seconds(call, repeats: int = 5) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        call()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main(counts: list[int]) -> None:
    root = pathlib.Path(tempfile.mkdtemp(prefix="sibling-runs-"))
    try:
        _train(root / "template", "run", 5, None)
        template = root / "template" / "run"
        config = config_lib.TrainConfig(model="logreg")
        for count in counts:
            logdir = _logdir_with_siblings(template, count, root)
            trace = root / f"strace-{count}.txt"
            wall = _train(logdir, "new", 2, trace)
            opens = _sibling_opens(trace, logdir / "new")
            run = logdir / "timed"
            run.mkdir()
            shutil.copy(template / rundir.RECORD_NAME, run / rundir.RECORD_NAME)
            timed = dataclasses.replace(config, logdir=str(logdir), run_name="timed")
            start = _median_seconds(lambda: hparams.start_run(run, timed))  # noqa: B023
            end = _median_seconds(lambda: hparams.end_run(run, "completed", None))  # noqa: B023
            print(
                f"{count:4d} siblings: pipeline-train opened {opens} sibling "
                f"run.json, {wall:.1f} s wall; start_run {start * 1000:.1f} ms, "
                f"end_run {end * 1000:.1f} ms",
                flush=True,
            )
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    given = [a.split("=", 1)[1] for a in sys.argv[1:] if a.startswith("--siblings=")]
    main([int(n) for n in (given[-1] if given else "10,300").split(",")])
