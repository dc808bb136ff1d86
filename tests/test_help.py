"""`--help` guides: what the program does, usage, its own flags by concern, exit 0.

Each program is the real console script in a subprocess, as a user runs it
(no TensorFlow is imported to answer `--help`, so each takes well under a
second).
"""

from __future__ import annotations

import re
import subprocess

import pytest
from conftest import cli_command, cli_env, run_cli

from pipeline import config as config_lib

PROGRAMS = (
    "pipeline-train",
    "pipeline-eval",
    "pipeline-predict",
    "pipeline-export",
    "pipeline-sweep",
    "pipeline-compare",
    "pipeline-board",
    "pipeline-inspect",
)
SWEEP_GROUPS = (
    "sweep: what is searched",
    "sweep: judging and pruning trials",
    "sweep: name, storage and workers",
)
HEADING = re.compile(r"^(\S[^:]*(?:: [^:]+)?):$")


def _blocks(text: str) -> dict[str, list[str]]:
    """Heading -> the flag names listed under it (`  --name:` / `  --[no]name:`)."""
    blocks: dict[str, list[str]] = {}
    current = None
    for line in text.splitlines():
        heading = HEADING.match(line)
        if heading:
            current = blocks.setdefault(heading.group(1), [])
        flag = re.match(r"^  --(?:\[no\])?(\w+):", line)
        if flag and current is not None:
            current.append(flag.group(1))
    return blocks


@pytest.mark.parametrize("program", PROGRAMS)
def test_help_says_what_it_does_how_to_use_it_and_exits_0(program):
    proc = run_cli(program, "--help", timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    lines = proc.stdout.splitlines()
    assert lines[0].startswith(f"{program}: "), lines[0]
    assert lines[2].startswith(f"usage: {program} "), lines[2]
    examples = [line for line in lines[3:10] if line.startswith(f"  {program} ")]
    assert examples, "a usage example after the usage line"
    blocks = _blocks(proc.stdout)
    assert blocks["flagfiles and help"] == ["flagfile", "help"]
    assert len(blocks) >= 2, "the program's own flags under at least one heading"
    # Own flags only: absl's logging and help machinery wait for --helpfull.
    assert "--verbosity:" not in proc.stdout
    assert "absl.logging:" not in proc.stdout


def test_train_help_lists_each_flag_under_its_group():
    proc = run_cli("pipeline-train", "--help", timeout=60)
    blocks = _blocks(proc.stdout)
    headings = [h for h in blocks if h != "flagfiles and help"]
    assert headings == list(config_lib.HELP_GROUPS)
    for field in config_lib.FIELDS:
        assert field.name in blocks[field.option.group], field.name
    for launch_flag in ("resume", "run", "replay", "replay_rtol"):
        assert launch_flag in blocks[config_lib.LAUNCH_GROUP]
    listed = [name for names in blocks.values() for name in names]
    assert len(listed) == len(set(listed)), "each flag once"


def test_sweep_help_shows_its_own_flags_apart_from_training_flags():
    short = run_cli("pipeline-sweep", "--help", timeout=60)
    assert short.returncode == 0, short.stderr
    blocks = _blocks(short.stdout)
    assert list(blocks) == [*SWEEP_GROUPS, "flagfiles and help"]
    assert "  --learning_rate:" not in short.stdout
    assert "pipeline-train --help" in short.stdout

    full = run_cli("pipeline-sweep", "--helpfull", timeout=60)
    assert full.returncode == 0, full.stderr
    blocks = _blocks(full.stdout)
    headings = list(blocks)
    assert headings[:3] == list(SWEEP_GROUPS)
    assert headings[3 : 3 + len(config_lib.HELP_GROUPS)] == list(config_lib.HELP_GROUPS)
    assert "learning_rate" in blocks["optimiser"]
    assert "absl.logging:" in full.stdout


def test_help_wins_over_a_bad_flag():
    proc = run_cli("pipeline-train", "--batch_size=0", "--help", timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("pipeline-train: ")


def test_a_missing_dashes_argument_is_one_line_pointing_to_help(tmp_path):
    proc = run_cli(
        "pipeline-train", "learning_rate=0.1", f"--logdir={tmp_path}", timeout=60
    )
    assert proc.returncode == 1
    assert proc.stdout == ""
    assert proc.stderr.splitlines() == [
        "pipeline-train: error: unexpected argument learning_rate=0.1 "
        "(did you mean --learning_rate=0.1?) (see pipeline-train --help)"
    ]
    assert list(tmp_path.iterdir()) == []


def test_a_missing_positional_argument_is_one_line():
    proc = run_cli("pipeline-compare", timeout=60)
    assert proc.returncode == 1
    assert proc.stderr.splitlines() == [
        "pipeline-compare: error: usage: pipeline-compare [flags] "
        "RUN_OR_DIR_OR_GLOB ... (see pipeline-compare --help)"
    ]


def test_help_into_a_pipe_closed_early_is_no_error():
    """`pipeline-train --help | head -1`: the reader may leave before it is written."""
    proc = subprocess.Popen(
        [*cli_command("pipeline-train"), "--help"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=cli_env(),
    )
    proc.stdout.close()  # before the program starts writing (it starts in ~0.3 s)
    stderr = proc.stderr.read().decode()
    assert proc.wait(timeout=60) == 0, stderr
    assert "Traceback" not in stderr
