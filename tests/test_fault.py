"""The fault test: SIGKILL a real training process, resume, compare.

A real `pipeline-train` subprocess is killed with SIGKILL at random moments
three times in a row (mid-chunk, mid-save, mid-startup, wherever the moment
falls) and resumed each time; the finished run must equal an uninterrupted run
with the same seed and show continuous series in TensorBoard's Python loader
and in the TensorBoard server with both `--load_fast` settings.
"""

from __future__ import annotations

import json
import os
import queue
import random
import re
import signal
import subprocess
import threading
import time
import urllib.request

import pytest
from conftest import (
    REPO,
    cli_command,
    cli_env,
    raw_step_counts,
    record,
    tensor_series,
    train_run,
)

from pipeline import config as config_lib

pytestmark = pytest.mark.slow

STEPS = 800
CHECKPOINT_EVERY = 100
FLAGS = [
    "--model=mlp",
    "--hidden_units=64",
    "--dropout=0.2",
    "--validation_split=0.1",
    f"--steps={STEPS}",
    "--batch_size=64",
    f"--checkpoint_every={CHECKPOINT_EVERY}",
    "--eval_every=200",
    "--print_every=20",
    # A flush with every progress line (the default, at most one a second,
    # would seldom write any point past the last checkpoint of this short run).
    "--flush_secs=0",
    "--histogram_every=200",
    "--image_count=4",
    "--seed=3",
]
PROGRESS = re.compile(r"^step\s+(\d+)/")


class Life:
    """One training process whose stdout lines are read by a thread."""

    def __init__(self, *args: str):
        self.proc = subprocess.Popen(
            [*cli_command("pipeline-train"), *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=cli_env(),
            cwd=REPO,
        )
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.output: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def wait_for(self, predicate, timeout: float = 120.0) -> str:
        deadline = time.monotonic() + timeout
        while True:
            line = self.lines.get(timeout=max(0.1, deadline - time.monotonic()))
            if line is None:
                raise AssertionError("process ended early:\n" + "\n".join(self.output))
            self.output.append(line)
            if predicate(line):
                return line

    def kill(self) -> None:
        assert self.proc.poll() is None, "finished before the kill:\n" + "\n".join(
            self.output
        )
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)


def _progress_at_least(step: int):
    """A progress line at or after `step`, well before the next checkpoint.

    Writers flush with each progress line (`--flush_secs=0`), so the points
    after the last checkpoint are on disk when the kill comes: the kill
    leaves orphans.
    """

    def check(line: str) -> bool:
        match = PROGRESS.match(line)
        if not match:
            return False
        at = int(match.group(1))
        return at >= step and 0 < at % CHECKPOINT_EVERY <= 60

    return check


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The same job, uninterrupted, trained in this process."""
    config = config_lib.config_from_args(FLAGS)
    return train_run(tmp_path_factory.mktemp("reference"), config, "reference").path


@pytest.fixture(scope="module")
def killed_run(tmp_path_factory):
    """The job killed with SIGKILL three times and resumed after each kill."""
    logdir = tmp_path_factory.mktemp("fault")
    run_path = logdir / "faulty"
    # A new seed each run explores new moments; FAULT_SEED=N replays one.
    seed = int(os.environ.get("FAULT_SEED", random.randrange(10**6)))
    rng = random.Random(seed)
    moments = [f"FAULT_SEED={seed}"]
    print(moments[0], "(shown on failure)")

    life = Life(*FLAGS, f"--logdir={logdir}", "--run_name=faulty")
    target = rng.randrange(60, 300)
    life.wait_for(_progress_at_least(target))
    time.sleep(rng.uniform(0.0, 0.05))
    life.kill()
    moments.append(f"after progress step {target}")

    for i in range(2):
        life = Life(f"--run={run_path}", "--resume")
        restored = int(life.wait_for(lambda x: x.startswith("resuming")).split()[-1])
        if i == 0:
            # Anywhere from before the first compiled chunk to mid-training.
            delay = rng.uniform(0.0, 0.8)
            time.sleep(delay)
            moments.append(f"{delay:.2f}s after resuming from {restored}")
        else:
            target = min(restored + rng.randrange(20, 150), STEPS - 150)
            life.wait_for(_progress_at_least(target))
            time.sleep(rng.uniform(0.0, 0.05))
            moments.append(f"after progress step {target} (resumed from {restored})")
        life.kill()
        assert record(run_path)["status"] == "running", moments

    life = Life(f"--run={run_path}", "--resume")
    life.wait_for(lambda x: x.startswith("done:"), timeout=180)
    assert life.proc.wait(timeout=30) == 0
    print("SIGKILL moments:", moments)
    return run_path


def test_killed_run_completes_with_three_resumes(killed_run):
    rec = record(killed_run)
    assert rec["status"] == "completed"
    assert rec["step"] == STEPS
    assert len(rec["resumes"]) == 3
    assert [r["previous_status"] for r in rec["resumes"]] == ["running"] * 3
    assert not list((killed_run / "checkpoints").rglob("*_temp*"))


def test_killed_run_equals_uninterrupted_run(killed_run, reference):
    assert record(killed_run)["final_metrics"] == record(reference)["final_metrics"]
    for split in ("train", "test", "validation"):
        got, want = tensor_series(killed_run / split), tensor_series(reference / split)
        for tag in ("loss", "accuracy"):
            assert got[tag] == want[tag], (split, tag)


def test_every_series_is_continuous_in_python_loader(killed_run):
    for split in ("train", "test", "validation"):
        for tag, points in tensor_series(killed_run / split).items():
            steps = [step for step, _ in points]
            assert steps == sorted(set(steps)), (split, tag)
    assert [s for s, _ in tensor_series(killed_run / "train")["loss"]] == list(
        range(1, STEPS + 1)
    )
    resumed = tensor_series(killed_run / "train")["events/resumed_from"]
    assert len(resumed) >= 1
    assert all(step == value + 1 for step, value in resumed)


def test_killed_processes_left_orphans_that_loaders_drop(killed_run):
    """The files hold some steps twice; the purge above is what hides them."""
    counts = raw_step_counts(killed_run / "train")
    assert max(n for (tag, _), n in counts.items() if tag == "loss") >= 2


def _tensorboard_steps(logdir, load_fast: str, run: str, tag: str, expected: int):
    proc = subprocess.Popen(
        [
            str(REPO / ".venv" / "bin" / "tensorboard")
            if (REPO / ".venv" / "bin" / "tensorboard").exists()
            else "tensorboard",
            f"--logdir={logdir}",
            "--port=0",
            f"--load_fast={load_fast}",
            "--reload_interval=1",
            "--samples_per_plugin=scalars=100000",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=cli_env(),
    )
    try:
        url = None
        for line in proc.stdout:
            match = re.search(r"(http://localhost:\d+)/", line)
            if match:
                url = match.group(1)
                break
        assert url, "TensorBoard did not start"
        query = f"{url}/data/plugin/scalars/scalars?run={run}&tag={tag}"
        deadline = time.monotonic() + 60
        steps: list[int] = []
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(query, timeout=10) as response:
                    steps = [point[1] for point in json.load(response)]
            except OSError:
                steps = []
            if len(steps) >= expected:
                break
            time.sleep(0.5)
        return steps
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.mark.parametrize("load_fast", ["true", "false"])
def test_tensorboard_server_shows_each_step_once(killed_run, load_fast):
    steps = _tensorboard_steps(killed_run, load_fast, "train", "loss", STEPS)
    assert steps == list(range(1, STEPS + 1))
