"""Helpers shared by the issue-6 tests: run the real CLI, read event files back."""

from __future__ import annotations

import collections
import json
import os
import pathlib
import subprocess
import sys

REPO = pathlib.Path(__file__).resolve().parents[1]
PROG = [sys.executable, "-m", "pipeline.cli.train"]


def cli_env() -> dict[str, str]:
    """Environment for a `pipeline-train` subprocess: quiet TF, unbuffered output."""
    env = dict(os.environ)
    env.update(TF_CPP_MIN_LOG_LEVEL="3", PYTHONUNBUFFERED="1", PYTHONPATH=str(REPO))
    return env


def run_cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """Runs `pipeline-train ARGS` to completion and returns its result."""
    return subprocess.run(
        [*PROG, *args],
        capture_output=True,
        text=True,
        env=cli_env(),
        cwd=REPO,
        timeout=timeout,
        check=False,
    )


def record(run_path: pathlib.Path) -> dict:
    return json.loads((run_path / "run.json").read_text())


def tensor_series(split_dir: pathlib.Path) -> dict[str, list[tuple[int, float]]]:
    """Each tag's (step, value) points as TensorBoard's Python loader shows them."""
    from tensorboard.backend.event_processing import plugin_event_accumulator as ea
    from tensorboard.util import tensor_util

    acc = ea.EventAccumulator(str(split_dir), size_guidance={ea.TENSORS: 0})
    acc.Reload()
    out = {}
    for tag in acc.Tags()[ea.TENSORS]:
        points = []
        for event in acc.Tensors(tag):
            value = tensor_util.make_ndarray(event.tensor_proto)
            points.append(
                (
                    event.step,
                    float(value)
                    if value.size == 1 and value.dtype.kind == "f"
                    else None,
                )
            )
        out[tag] = points
    return out


def raw_step_counts(split_dir: pathlib.Path) -> collections.Counter:
    """(tag, step) -> how many times it is in the files, before any purging."""
    from tensorboard.backend.event_processing import event_file_loader

    counts: collections.Counter = collections.Counter()
    for path in sorted(split_dir.glob("events.out.tfevents.*")):
        for event in event_file_loader.EventFileLoader(str(path)).Load():
            if event.HasField("summary"):
                for value in event.summary.value:
                    counts[(value.tag, event.step)] += 1
    return counts


def tree_digest(path: pathlib.Path) -> dict[str, bytes]:
    """Every file under `path` with its bytes: equal digests = nothing changed."""
    return {
        str(p.relative_to(path)): p.read_bytes()
        for p in sorted(path.rglob("*"))
        if p.is_file()
    }


def signal_at(step: int, signum: int):
    """An action that sends this process `signum` when the chunk ending at
    `step` is done: what Ctrl-C or `kill` does to a run in the middle."""
    import signal

    from pipeline.training.actions import Action

    class SignalAt(Action):
        def next_boundary(self, current: int) -> int | None:
            return step if current < step else None

        def __call__(self, state, chunk) -> None:
            if chunk.step == step:
                signal.raise_signal(signum)

    return SignalAt()
