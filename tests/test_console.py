"""What a user sees on the console: no TensorFlow start-up noise, real errors kept."""

import json
import os
import pty
import subprocess
import sys
import textwrap

import pytest
from conftest import LOGREG_FLAGS, cli_command, cli_env, run_cli

from pipeline.cli import stderr_filter

# Printed by TensorFlow 2.21's C++ on import, before absl logging starts.
STARTUP_LINES = [
    b"WARNING: All log messages before absl::InitializeLog() is called are written"
    b" to STDERR",
    b"I0000 00:00:1796124337.696497   26425 port.cc:153] oneDNN custom operations"
    b" are on. You may see slightly different numerical results due to"
    b" floating-point round-off errors from different computation orders. To turn"
    b" them off, set the environment variable `TF_ENABLE_ONEDNN_OPTS=0`.",
    b"I0000 00:00:1796124337.774822   26425 cpu_feature_guard.cc:227] This"
    b" TensorFlow binary is optimized to use available CPU instructions in"
    b" performance-critical operations.",
    b"To enable the following instructions: AVX2 AVX512F AVX512_VNNI AVX512_BF16"
    b" AVX_VNNI FMA, in other operations, rebuild TensorFlow with the appropriate"
    b" compiler flags.",
]


@pytest.mark.parametrize("line", STARTUP_LINES)
def test_known_startup_lines_are_noise(line):
    assert stderr_filter.is_noise(line)


@pytest.mark.parametrize(
    "line",
    [
        b"pipeline-eval: error: logs/x: run directory not found",
        b"E0000 00:00:1796124337.1 26425 some_op.cc:12] Check failed: x == y",
        b"W0000 00:00:1796124337.1 26425 port.cc:153] something else",
        b"Traceback (most recent call last):",
        b"",
    ],
)
def test_other_lines_are_kept(line):
    assert not stderr_filter.is_noise(line)


def test_verbosity_on_the_command_line_turns_the_filter_off():
    assert stderr_filter.wants_logs(["prog", "--verbosity=0"])
    assert stderr_filter.wants_logs(["prog", "-v", "1"])
    assert not stderr_filter.wants_logs(["prog", "--run=logs/verbosity"])


def python_with_filter(body: str) -> subprocess.CompletedProcess:
    script = "from pipeline.cli import stderr_filter\nstderr_filter.install(['x'])\n"
    return subprocess.run(
        [sys.executable, "-c", script + textwrap.dedent(body)],
        capture_output=True,
        timeout=60,
        check=False,
    )


def test_lines_written_just_before_a_hard_crash_still_arrive():
    result = python_with_filter(
        """
        import os, signal
        os.write(2, b"WARNING: All log messages before absl::InitializeLog() is "
                    b"called are written to STDERR\\n")
        os.write(2, b"F0000 00:00:1.0 1 x.cc:1] Check failed: fatal\\nno newline")
        os.kill(os.getpid(), signal.SIGKILL)
        """
    )
    assert result.returncode == -9
    assert result.stderr == b"F0000 00:00:1.0 1 x.cc:1] Check failed: fatal\nno newline"


def test_progress_output_passes_as_it_is_written():
    result = python_with_filter(
        """
        import sys
        for i in range(3):
            sys.stderr.write(f"\\rstep {i}")
        sys.stderr.write("\\n")
        """
    )
    assert result.returncode == 0
    assert result.stderr == b"\rstep 0\rstep 1\rstep 2\n"


def test_a_program_prints_no_tensorflow_startup_lines(mlp_run):
    # --nowrite_summaries: the session's shared run stays as trained.
    result = run_cli(
        "pipeline-eval", f"--run={mlp_run}", "--format=json", "--nowrite_summaries"
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    assert json.loads(result.stdout)["step"] == 30


def test_with_verbosity_everything_reaches_stderr(mlp_run):
    result = run_cli(
        "pipeline-eval",
        f"--run={mlp_run}",
        "--format=json",
        "--verbosity=0",
        "--nowrite_summaries",
    )
    assert result.returncode == 0, result.stderr
    assert "absl::InitializeLog() is called" in result.stderr
    assert json.loads(result.stdout)["step"] == 30


def test_a_user_error_still_reaches_stderr(tmp_path):
    result = run_cli("pipeline-eval", f"--run={tmp_path / 'missing'}")
    assert result.returncode == 1
    assert result.stderr == (
        f"pipeline-eval: error: {tmp_path / 'missing'}: run directory not found\n"
    )


def test_on_a_terminal_training_shows_a_live_progress_bar(tmp_path):
    controller, terminal = pty.openpty()
    process = subprocess.Popen(
        [
            *cli_command("pipeline-train"),
            *LOGREG_FLAGS,
            "--steps=40",
            "--steps_per_loop=5",
            f"--logdir={tmp_path}",
            "--run_name=tty",
        ],
        stdin=subprocess.DEVNULL,
        stdout=terminal,
        stderr=terminal,
        env=cli_env(),
    )
    os.close(terminal)
    output = b""
    while True:
        try:
            data = os.read(controller, 65536)
        except OSError:  # the terminal closed: the program ended
            break
        if not data:
            break
        output += data
    assert process.wait(timeout=60) == 0, output.decode(errors="replace")
    os.close(controller)
    text = output.decode(errors="replace")
    redraws = [part for part in text.split("\r") if "/40" in part]
    assert len(redraws) >= 4  # redrawn in place, chunk after chunk
    last = redraws[-1]
    for field in (
        "40/40",
        "step",
        "loss:",
        "accuracy:",
        "test_accuracy:",
        "examples/s:",
    ):
        assert field in last, last
    assert "step     40/40  train" not in text  # no plain lines on a terminal
    assert "absl::InitializeLog" not in text
