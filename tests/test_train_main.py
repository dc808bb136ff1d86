"""`pipeline-train` as a user runs it.

Its rules (flagfiles, refusals) run its parser and main in this process
(`conftest.main_in_process`); help and a warning before an error run the real
program, whose exit status and stderr filter only a process shows.
"""

import json

from conftest import REPO, main_in_process, run_cli, scalar_series


def test_flagfile_with_override_trains_and_saves_a_rerunnable_flagfile(tmp_path):
    proc = main_in_process(
        "pipeline-train",
        f"--flagfile={REPO / 'flags/logreg_is_one.cfg'}",
        "--steps=30",
        "--eval_every=15",
        "--print_every=15",
        f"--logdir={tmp_path}",
        "--run_name=cli",
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert any(line.startswith("step     15/30  train loss=") for line in lines)
    assert lines[-1].startswith("done: cli  step 30  test_accuracy=")
    run = tmp_path / "cli"
    record = json.loads((run / "run.json").read_text())
    assert record["status"] == "completed"
    assert record["config"]["binary_class"] == 1
    assert record["config"]["steps"] == 30
    saved = [
        line
        for line in (run / "flags.cfg").read_text().splitlines()
        if not line.startswith("#")
    ]
    assert "--binary_class=1" in saved
    assert "--steps=30" in saved
    assert not [line for line in saved if line.startswith("--run_name")]
    assert [s for s, _ in scalar_series(run / "test", "accuracy")] == [15, 30]
    assert "Traceback" not in proc.stderr


def test_existing_run_is_refused_and_left_untouched(tmp_path):
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "run.json").write_text('{"status": "completed"}')
    proc = main_in_process(
        "pipeline-train", f"--logdir={tmp_path}", "--run_name=taken", "--steps=1"
    )
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1] == (
        f"pipeline-train: error: {tmp_path / 'taken'}: run already exists (status "
        "completed); choose another --run_name, or pass --resume to continue it "
        "(runs are never overwritten)"
    )
    assert (tmp_path / "taken" / "run.json").read_text() == '{"status": "completed"}'
    assert sorted(p.name for p in (tmp_path / "taken").iterdir()) == ["run.json"]


def test_bad_flag_is_one_line_naming_it(tmp_path):
    proc = run_cli("pipeline-train", "--batch_size=0", f"--logdir={tmp_path}")
    assert proc.returncode != 0
    assert "--batch_size=0" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert list(tmp_path.iterdir()) == []


def test_missing_data_dir_is_one_line(tmp_path):
    proc = run_cli(
        "pipeline-train",
        "--dataset=fashion_mnist",
        f"--data_dir={tmp_path / 'nope'}",
        f"--logdir={tmp_path}",
    )
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1] == (
        f"pipeline-train: error: {tmp_path / 'nope'}: data directory not found"
    )
    assert "Traceback" not in proc.stderr


def test_help_lists_every_training_flag():
    from pipeline import config as config_lib

    proc = run_cli("pipeline-train", "--help")
    assert "Traceback" not in proc.stderr
    for field in config_lib.FIELDS:
        prefix = "--[no]" if field.kind == "boolean" else "--"
        assert f"  {prefix}{field.name}:" in proc.stdout, field.name
    for flag in ("--[no]resume", "--run", "--replay", "--replay_rtol"):
        assert f"  {flag}:" in proc.stdout, flag


def test_helpfull_lists_the_public_flags():
    proc = run_cli("pipeline-train", "--helpfull")
    assert "Traceback" not in proc.stderr
    for flag in (
        "--model",
        "--dataset",
        "--data_dir",
        "--steps",
        "--batch_size",
        "--shuffle_buffer",
        "--learning_rate",
        "--optimizer",
        "--logdir",
        "--run_name",
        "--seed",
        "--log_every",
        "--eval_every",
        "--histogram_every",
        "--checkpoint_every",
        "--flagfile",
    ):
        assert f"  {flag}" in proc.stdout, flag


def test_flag_the_model_does_not_use_is_one_warning_line(tmp_path):
    flagfile = tmp_path / "shared.cfg"
    flagfile.write_text("--hidden_units=64\n--kernel_size=5\n")
    proc = run_cli(
        "pipeline-train",
        f"--flagfile={flagfile}",
        "--model=mlp",
        "--conv_filters=16",
        "--dataset=fashion_mnist",
        f"--data_dir={tmp_path / 'nope'}",
        f"--logdir={tmp_path}",
    )
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [
        "pipeline-train: warning: --conv_filters does not apply to --model=mlp; "
        "ignored",
        f"pipeline-train: error: {tmp_path / 'nope'}: data directory not found",
    ]
