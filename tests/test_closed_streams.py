"""Output streams that close: `pipeline-train | head`, quitting `less`.

A closed stdout ends the output, not the work, and never a traceback:
training stops at its next chunk with a checkpoint, recorded `interrupted`
and resumable, exiting 141 as a shell's writer stopped by SIGPIPE does;
every other program finishes quietly.
"""

from __future__ import annotations

import os
import subprocess

import pytest
from conftest import (
    LOGREG,
    LOGREG_FLAGS,
    REPO,
    cli_command,
    cli_env,
    main_in_process,
    record,
    train_run,
)


def closed_pipe() -> int:
    """The write end of a pipe whose reader is already gone."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    return write_end


def run_with_closed_stdout(program: str, *args: str) -> subprocess.CompletedProcess:
    write_end = closed_pipe()
    try:
        return subprocess.run(
            [*cli_command(program), *args],
            stdout=write_end,
            stderr=subprocess.PIPE,
            text=True,
            env=cli_env(),
            cwd=REPO,
            timeout=300,
            check=False,
        )
    finally:
        os.close(write_end)


def test_training_whose_reader_quits_stops_interrupted_and_resumes(tmp_path):
    """`pipeline-train | head -1`: the reader takes one line and exits."""
    run = tmp_path / "logs" / "piped"
    proc = subprocess.Popen(
        [
            *cli_command("pipeline-train"),
            *LOGREG_FLAGS,
            f"--logdir={run.parent}",
            "--run_name=piped",
            "--steps=20000",
            "--print_every=10",
            "--steps_per_loop=10",
            "--checkpoint_every=0",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=cli_env(),
        cwd=REPO,
    )
    assert proc.stdout.readline().startswith("run directory: ")
    proc.stdout.close()  # what `head -1` does after its line
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 141, err
    assert "Traceback" not in err
    saved = record(run)
    assert saved["status"] == "interrupted"
    step = saved["step"]
    assert 0 < step < 20000
    message = (
        f"interrupted because its output was closed at step {step}; checkpoint "
        f"{run}/checkpoints/ckpt-{step} saved; continue with: "
        f"pipeline-train --resume --run={run}"
    )
    assert saved["error"] == f"TrainingInterruptedError: {message}"
    assert err.strip().splitlines()[-1] == f"pipeline-train: error: {message}"
    # The printed command continues the run (in this process: the resume is
    # the rule here, not the process; 10 more steps, not the 20,000).
    resumed = main_in_process(
        "pipeline-train", "--resume", f"--run={run}", f"--steps={step + 10}"
    )
    assert resumed.returncode == 0, resumed.stderr
    assert f"resuming piped from step {step}" in resumed.stdout
    assert record(run)["status"] == "completed"


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """A small completed run (trained in this process: the programs under
    test are the readers of it)."""
    return train_run(tmp_path_factory.mktemp("closed_streams"), LOGREG, "done").path


@pytest.mark.parametrize(
    ("program", "args"),
    [
        ("pipeline-compare", ["{logdir}"]),
        ("pipeline-eval", ["--run={run}"]),
        ("pipeline-inspect", ["{run}"]),
    ],
)
def test_programs_writing_into_a_closed_pipe_end_quietly(finished_run, program, args):
    """`pipeline-compare LOGDIR | head -1` and friends, the reader gone first:
    main printed a BrokenPipeError traceback and exited 1."""
    fill = {"logdir": finished_run.parent, "run": finished_run}
    result = run_with_closed_stdout(program, *(a.format(**fill) for a in args))
    assert "Traceback" not in result.stderr
    assert "BrokenPipeError" not in result.stderr
    assert result.returncode == 0, result.stderr
