"""pipeline-sweep: grid planning, and resume that skips completed runs."""

import os
import subprocess

import pytest
from conftest import (
    LOGREG,
    LOGREG_FLAGS,
    kill_once_started,
    main_in_process,
    record,
    run_sweep,
    sweep_command,
)
from study_fixtures import sweep_in_process

from pipeline.sweep import SweepError, space
from pipeline.sweep import runs as sweep_runs
from pipeline.tensorboard import hparams


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("learning_rate", "expected FLAG=VALUE1,VALUE2"),
        ("learning_rate=", "expected FLAG=VALUE1,VALUE2"),
        ("no_such_flag=1,2", "'no_such_flag' is not a training flag"),
        ("logdir=a,b", "'logdir' is not a training flag"),
        ("learning_rate=0.1,,0.2", "empty value"),
        ("learning_rate=0.1,0.1", "repeated value"),
    ],
)
def test_parse_grid_rejects_bad_specs(spec, message):
    with pytest.raises(SweepError, match=message):
        space.parse_grid([spec])


def test_parse_grid_axes_and_list_values():
    axes = space.parse_grid(["learning_rate=0.1,0.01", "conv_filters=16,32|32,64"])
    assert [(axis.flag, axis.choices) for axis in axes] == [
        ("learning_rate", ("0.1", "0.01")),
        ("conv_filters", ("16,32", "32,64")),
    ]
    with pytest.raises(SweepError, match="already a grid axis"):
        space.parse_grid(["seed=1,2", "seed=3"])


def test_plan_names_seeds_and_configs():
    axes = space.parse_grid(["learning_rate=0.1,0.01", "activation=sigmoid,relu"])
    runs = sweep_runs.grid_runs(LOGREG, axes, repeats=2, sweep_name="s")
    assert len(runs) == 8
    assert runs[0].name == "learning_rate=0.1,activation=sigmoid,seed=0"
    assert runs[1].name == "learning_rate=0.1,activation=sigmoid,seed=1"
    assert runs[-1].name == "learning_rate=0.01,activation=relu,seed=1"
    assert [r.config.seed for r in runs[:2]] == [0, 1]
    assert runs[-1].config.learning_rate == 0.01
    assert runs[-1].config.activation == "relu"
    assert runs[-1].config.logdir == os.path.join("logs", "s")
    assert runs[-1].config.steps == LOGREG.steps
    # Planning is deterministic: the same sweep always names the same runs.
    assert [r.name for r in sweep_runs.grid_runs(LOGREG, axes, 2, "s")] == [
        r.name for r in runs
    ]


def test_plan_rejects_values_the_flag_rejects():
    with pytest.raises(SweepError, match="activation"):
        sweep_runs.grid_runs(
            LOGREG, space.parse_grid(["activation=relu,swiggle"]), 1, "s"
        )
    with pytest.raises(SweepError, match="learning_rate must be > 0"):
        sweep_runs.grid_runs(LOGREG, space.parse_grid(["learning_rate=0.1,-1"]), 1, "s")
    with pytest.raises(SweepError, match="--repeats"):
        sweep_runs.grid_runs(LOGREG, space.parse_grid(["seed=1,2"]), 2, "s")


@pytest.mark.slow
def test_sweep_runs_the_grid_then_skips_completed_runs(tmp_path):
    args = ["--grid=learning_rate=0.1,0.5", "--sweep_name=grid", "--parallel=2"]
    first = run_sweep(tmp_path, *args)
    assert first.returncode == 0, first.stderr
    experiment = tmp_path / "grid"
    names = ["learning_rate=0.1,seed=0", "learning_rate=0.5,seed=0"]
    assert sorted(p.name for p in experiment.iterdir() if p.is_dir()) == names
    assert (experiment / hparams.CONFIG_FILENAME).is_file()
    for name in names:
        assert record(experiment / name)["status"] == "completed"
        assert (experiment / name / "train.log").is_file()
    assert "0 already completed, 2 to run, 2 at a time" in first.stdout
    assert "[  2/2] completed" in first.stdout
    assert "best 0." in first.stdout
    starts = {n: record(experiment / n)["start_time"] for n in names}

    # Run again (in this process: the sweep's own process is proven above).
    again = sweep_in_process(tmp_path, *args)
    assert again.returncode == 0, again.stderr
    assert "2 already completed, 0 to run" in again.stdout
    assert "started" not in again.stdout
    assert {n: record(experiment / n)["start_time"] for n in names} == starts

    # Same sweep name, other base flags: refuse rather than mix two experiments.
    changed = sweep_in_process(tmp_path, *args, "--steps=30")
    assert changed.returncode == 1
    assert changed.stderr.strip().splitlines()[-1] == (
        f"pipeline-sweep: error: {experiment / names[0]}: completed with other flags "
        "(steps=20 there, 30 now); use another --sweep_name"
    )


@pytest.mark.slow
def test_killed_sweep_resumes_and_moves_the_half_done_run_aside(tmp_path):
    experiment = tmp_path / "killed"
    first_run = experiment / "learning_rate=0.1,seed=0"
    args = ["--grid=learning_rate=0.1", "--sweep_name=killed"]
    process = subprocess.Popen(
        sweep_command(tmp_path, *args, "--steps=1000000", "--eval_every=0"),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    kill_once_started(process, first_run, "the first run")
    assert record(first_run)["status"] == "running"

    resumed = sweep_in_process(tmp_path, *args)
    assert resumed.returncode == 0, resumed.stderr
    assert f"moved half-done {first_run} aside to {first_run.name}.incomplete-1" in (
        resumed.stdout
    )
    assert "0 already completed, 1 to run" in resumed.stdout
    aside = experiment / f"{first_run.name}.incomplete-1"
    assert record(aside)["status"] == "failed"
    assert record(aside)["error"].startswith("interrupted")
    assert list(aside.glob("*.session_end"))  # the HParams dashboard shows it failed
    assert record(first_run)["status"] == "completed"


def test_sweep_flag_errors_are_one_line(tmp_path):
    result = run_sweep(tmp_path, "--grid=activation=relu,nope", "--sweep_name=bad")
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith("pipeline-sweep: error: --grid (activation=nope):")
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "bad").exists()


@pytest.mark.parametrize(
    ("args", "names"),
    [
        (["--seed=4294967296"], "--seed=4294967296"),
        (["--seed=4294967295", "--repeats=2"], "--repeats=2 with --seed=4294967295"),
        (["--prune_worse_than=nan"], "--prune_worse_than=nan"),
        (["--trials=3"], "--trials=3"),
        (["--trainer_growth_mb=-1"], "--trainer_growth_mb=-1"),
        (["--storage=sqlite://relative.db"], "--storage=sqlite://relative.db"),
        (["--storage=mysql://u@127.0.0.1/d"], "--storage=mysql://u@127.0.0.1/d"),
        (["--grid=seed=4294967296"], "--grid (seed=4294967296)"),
        (["--search=learning_rate=log:1:0"], "--search=learning_rate=log:1:0"),
        (["extra"], "unexpected argument extra"),
    ],
)
def test_a_sweep_flag_error_leaves_nothing_on_disk(tmp_path, args, names):
    """Any flag or argument the sweep refuses is refused before its study,
    logdir or lock files exist (here or in the current directory)."""
    cwd, logdir = tmp_path / "cwd", tmp_path / "logs"
    cwd.mkdir()
    result = main_in_process(
        "pipeline-sweep",
        *LOGREG_FLAGS,
        f"--logdir={logdir}",
        "--sweep_name=s",
        "--grid=learning_rate=0.1",
        *args,
        cwd=cwd,
    )
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("pipeline-sweep: error: "), line
    assert names in line
    assert not logdir.exists()
    assert list(cwd.iterdir()) == []
