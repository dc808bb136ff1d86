"""Resume: same result as an uninterrupted run; restart markers; run checks."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import signal
import subprocess
import sys

import numpy as np
import pytest
from conftest import (
    REPO,
    parse_train_flags,
    raw_step_counts,
    record,
    run_cli,
    run_to_completion,
    signal_at,
    tensor_series,
    train_run,
)

from pipeline import config as config_lib
from pipeline.config import ConfigError, TrainConfig
from pipeline.runs import checkpoints, rundir
from pipeline.runs.rundir import RunDirError
from pipeline.tensorboard import events
from pipeline.training import recovery

TINY = TrainConfig(
    model="mlp",
    hidden_units=32,
    dropout=0.3,
    steps=40,
    batch_size=16,
    checkpoint_every=10,
    eval_every=20,
    print_every=10,
    histogram_every=0,
    image_count=0,
    seed=1,
)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """An uninterrupted run, and the same run stopped by SIGTERM at 20 and resumed."""
    from pipeline.training import loop

    logdir = tmp_path_factory.mktemp("resume")
    whole = train_run(logdir, TINY, "whole")

    with pytest.raises(loop.TrainingInterruptedError) as interrupted:
        train_run(logdir, TINY, "split", extra_actions=[signal_at(20, signal.SIGTERM)])
    after_signal = record(logdir / "split")
    split = train_run(logdir, TINY, "split", resume=True)
    return {
        "whole": whole.path,
        "split": split.path,
        "interrupted": interrupted.value,
        "after_signal": after_signal,
    }


def test_sigterm_saves_records_interrupted_and_exits_143(runs):
    assert runs["interrupted"].exit_code == 128 + signal.SIGTERM
    assert "interrupted by SIGTERM at step 20" in str(runs["interrupted"])
    assert runs["after_signal"]["status"] == "interrupted"
    assert runs["after_signal"]["step"] == 20
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


def test_resumed_run_has_the_uninterrupted_weights(runs):
    from pipeline import models

    def weights(path):
        latest = checkpoints.latest_step(path / "checkpoints")
        model = models.restore_model(TINY, str(path / "checkpoints" / f"ckpt-{latest}"))
        return [v.numpy() for v in model.weights]

    for a, b in zip(weights(runs["whole"]), weights(runs["split"]), strict=True):
        np.testing.assert_array_equal(a, b)
    assert (
        record(runs["split"])["final_metrics"] == record(runs["whole"])["final_metrics"]
    )


def test_resumed_series_continue_without_duplicates(runs):
    whole, split = (
        tensor_series(runs["whole"] / "train"),
        tensor_series(runs["split"] / "train"),
    )
    assert split["loss"] == whole["loss"]
    assert [s for s, _ in split["loss"]] == list(range(1, 41))
    assert split["events/resumed_from"] == [(21, 20.0)]
    assert "events/resumed_from" not in whole
    assert (
        tensor_series(runs["split"] / "test")["loss"]
        == tensor_series(runs["whole"] / "test")["loss"]
    )


def test_checkpoint_holds_the_input_position_not_the_iterator(runs):
    """The data position is the step: no iterator state (its shuffle buffer)
    in a checkpoint, which stays in proportion to the model."""
    import tensorflow as tf

    prefix = runs["split"] / "checkpoints" / "ckpt-20"
    names = [name for name, _ in tf.train.list_variables(str(prefix))]
    assert not [n for n in names if n.startswith("iterator")], names
    assert "step/.ATTRIBUTES/VARIABLE_VALUE" in names
    data = prefix.parent / "ckpt-20.data-00000-of-00001"
    # 784*32 + 32*10 (+ biases) weights, with Adam's two slots: ~0.3 MB.
    assert data.stat().st_size < 400_000


def test_checkpoint_with_iterator_state_from_older_runs_resumes_exactly(runs, tmp_path):
    """Runs saved before the input position was recomputed also checkpointed
    the data iterator; they resume from their step all the same."""
    import tensorflow as tf

    from pipeline.training import loop
    from pipeline.training.actions import Action

    class CheckpointTheIterator(Action):
        """What every checkpoint held before: the `iterator` object."""

        def start(self, state) -> None:
            state.checkpoint.iterator = state.iterator

    with pytest.raises(loop.TrainingInterruptedError):
        train_run(
            tmp_path,
            TINY,
            "older",
            extra_actions=[CheckpointTheIterator(), signal_at(20, signal.SIGTERM)],
        )
    prefix = str(tmp_path / "older" / "checkpoints" / "ckpt-20")
    assert any(n.startswith("iterator") for n, _ in tf.train.list_variables(prefix))
    resumed = train_run(tmp_path, TINY, "older", resume=True)
    assert resumed.result.weights_digest == record(runs["whole"])["weights_digest"]


def test_dropout_rng_state_is_checkpointed_and_advances(runs):
    import tensorflow as tf

    names = [
        name
        for name, _ in tf.train.list_variables(
            str(runs["split"] / "checkpoints" / "ckpt-20")
        )
    ]
    rng = [n for n in names if n.startswith("rng/")]
    assert len(rng) == 2  # one SeedGenerator per Dropout layer
    state = tf.train.load_variable(
        str(runs["split"] / "checkpoints" / "ckpt-20"), rng[0]
    )
    later = tf.train.load_variable(
        str(runs["split"] / "checkpoints" / "ckpt-40"), rng[0]
    )
    assert not np.array_equal(state, later)


def test_every_start_writes_a_session_start_marker(runs):
    steps = []
    for path in events.event_files(runs["split"] / "train"):
        for event in events.load(path):
            if event.HasField("session_log"):
                steps.append(event.step)
    assert steps == [0, 21]


def test_session_start_marker_drops_orphaned_points(tmp_path):
    """What a killed process logged after its checkpoint disappears from the
    loader. Each writer opens at once after its marker, in the same second
    as a rule: the marker's name sorts first."""
    import tensorflow as tf

    split = tmp_path / "train"
    events.write_session_start(tmp_path, ["train"], 0)
    with tf.summary.create_file_writer(str(split)).as_default():
        for step in range(1, 9):  # checkpoint at 5, then killed after 8
            tf.summary.scalar("loss", 1.0, step=step)
    events.write_session_start(tmp_path, ["train"], events.session_start_step(5))
    with tf.summary.create_file_writer(str(split)).as_default():
        for step in range(6, 11):
            tf.summary.scalar("loss", 2.0, step=step)
    assert raw_step_counts(split)[("loss", 7)] == 2
    assert tensor_series(split)["loss"] == [(s, 1.0) for s in range(1, 6)] + [
        (s, 2.0) for s in range(6, 11)
    ]


@pytest.mark.parametrize(("restored", "marker"), [(0, 0), (20, 21), (1, 2)])
def test_session_start_step(restored, marker):
    assert events.session_start_step(restored) == marker


def test_latest_step_comes_from_the_files_not_the_state_file(tmp_path):
    assert checkpoints.latest_step(tmp_path) == 0
    (tmp_path / "checkpoint").write_text('model_checkpoint_path: "ckpt-300"\n')
    for step in (100, 200):
        (tmp_path / f"ckpt-{step}.index").write_bytes(b"i")
        (tmp_path / f"ckpt-{step}.data-00000-of-00001").write_bytes(b"d")
    (tmp_path / "ckpt-400.data-00000-of-00001").write_bytes(b"d")  # no .index
    assert checkpoints.latest_step(tmp_path) == 200


def test_clean_temp_checkpoints_removes_only_unfinished_saves(tmp_path):
    (tmp_path / "ckpt-20_temp" / "part-00000-of-00001").mkdir(parents=True)
    (tmp_path / "best" / "ckpt-10_temp").mkdir(parents=True)
    (tmp_path / "ckpt-10.index").write_text("x")
    removed = checkpoints.clean_temp_checkpoints(tmp_path)
    assert sorted(p.name for p in removed) == ["ckpt-10_temp", "ckpt-20_temp"]
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["best", "ckpt-10.index"]


def test_merge_overrides_allows_steps_and_same_values_only():
    saved = TINY
    given = dataclasses.replace(TINY, steps=80, learning_rate=TINY.learning_rate)
    merged = recovery.merge_overrides(saved, given, {"steps", "learning_rate"})
    assert merged.steps == 80
    changed = dataclasses.replace(TINY, dropout=0.5)
    with pytest.raises(
        ConfigError, match=r"--dropout=0.5 differs from the run's saved --dropout=0.3"
    ):
        recovery.merge_overrides(saved, changed, {"dropout"})
    # A default that differs from the saved value is not an override.
    assert recovery.merge_overrides(saved, TrainConfig(), set()) == saved


def test_resume_refuses_a_run_whose_process_is_alive(tmp_path):
    run_dir = rundir.RunDir(tmp_path)
    sleeper = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(60)", "pipeline"]
    )
    try:
        run_dir.update_record(
            status="running", pid=sleeper.pid, host=os.uname().nodename
        )
        with pytest.raises(
            RunDirError, match=f"still being trained by pid {sleeper.pid}"
        ):
            recovery.check_not_running(run_dir)
    finally:
        sleeper.kill()
        sleeper.wait()
    recovery.check_not_running(run_dir)  # dead process: resumable


def test_launch_from_flags_modes():
    fv = parse_train_flags("--resume", "--run=logs/x", "--steps=50")
    launch = config_lib.launch_from_flags(fv)
    assert (launch.mode, launch.run_path, launch.config.steps) == (
        "resume",
        "logs/x",
        50,
    )
    assert "steps" in launch.explicit
    assert "model" not in launch.explicit


def test_divergence_stops_with_one_line_and_keeps_finite_checkpoints(tmp_path):
    import tensorflow as tf

    result = run_cli(
        "pipeline-train",
        f"--logdir={tmp_path}",
        "--run_name=diverged",
        "--model=mlp",
        "--activation=linear",
        "--optimizer=sgd",
        "--learning_rate=3",
        "--steps=60",
        "--batch_size=16",
        "--checkpoint_every=2",
        "--print_every=2",
        "--eval_every=0",
        "--image_count=0",
    )
    assert result.returncode == 1
    lines = [
        line for line in result.stderr.splitlines() if line.startswith("pipeline-train")
    ]
    assert len(lines) == 1
    assert "Traceback" not in result.stderr
    match = re.fullmatch(
        r"pipeline-train: error: loss is nan at step (\d+); "
        r"last good checkpoint: (.*ckpt-(\d+))",
        lines[0],
    )
    assert match, lines[0]
    assert int(match.group(3)) < int(match.group(1))
    run = tmp_path / "diverged"
    assert record(run)["status"] == "diverged"
    assert checkpoints.latest_step(run / "checkpoints") == int(match.group(3))
    for step in range(2, int(match.group(3)) + 1, 2):
        path = str(run / "checkpoints" / f"ckpt-{step}")
        if not os.path.exists(path + ".index"):
            continue  # rotated out (max_checkpoints)
        reader = tf.train.load_checkpoint(path)
        for name, dtype in reader.get_variable_to_dtype_map().items():
            if not dtype.is_floating:
                continue
            value = reader.get_tensor(name)
            assert not np.isnan(value).any(), (step, name)
            if name.startswith(("model/", "optimizer/")):
                assert np.isfinite(value).all(), (step, name)
    losses = [v for _, v in tensor_series(run / "train")["loss"]]
    assert np.isfinite(losses).all()


def test_all_finite():
    import tensorflow as tf

    from pipeline.training import state as train_state

    assert train_state.all_finite([tf.Variable([1.0, 2.0]), tf.Variable(3)])
    assert not train_state.all_finite([tf.Variable([1.0, np.inf])])
    assert not train_state.all_finite([tf.Variable([np.nan])])


# Three runs in one process with two logical CPU devices (they must be set
# before TensorFlow starts, so not in the test's process): one of 40 steps,
# one of 20 extended to 40 by a resume.
MIRRORED_RUNS = """
import dataclasses, sys
from conftest import train_run
from pipeline import config as config_lib
from pipeline.training import distribute

logdir = sys.argv[1]
config = config_lib.config_from_args(sys.argv[2:])
strategy = distribute.make_strategy(config.strategy, config.cpu_devices)
train_run(logdir, dataclasses.replace(config, steps=40), "whole", strategy=strategy)
short = dataclasses.replace(config, steps=20)
train_run(logdir, short, "split", strategy=strategy)
longer = dataclasses.replace(config, steps=40)
train_run(logdir, longer, "split", resume=True, strategy=strategy)
"""


@pytest.mark.slow
def test_mirrored_run_extended_by_resume_equals_one_long_run(tmp_path):
    """Under MirroredStrategy the iterator is not checkpointable: the data
    position comes back through dataset.skip(step); weights must still match."""
    flags = [
        "--model=mlp",
        "--dropout=0.3",
        "--batch_size=32",
        "--checkpoint_every=10",
        "--eval_every=20",
        "--image_count=0",
        "--histogram_every=0",
        "--strategy=mirrored",
        "--cpu_devices=2",
    ]
    done = run_to_completion(
        [sys.executable, "-c", MIRRORED_RUNS, str(tmp_path), *flags],
        pythonpath=f"{REPO / 'tests'}{os.pathsep}{REPO}",
    )
    assert done.returncode == 0, done.stderr
    whole, split = record(tmp_path / "whole"), record(tmp_path / "split")
    assert whole["config"]["strategy"] == split["config"]["strategy"] == "mirrored"
    assert split["resumes"][0]["previous_status"] == "completed"
    assert split["weights_digest"] == whole["weights_digest"]
    assert split["final_metrics"] == whole["final_metrics"]


def test_an_unexpected_error_is_one_line_in_run_json_with_its_trace_beside(tmp_path):
    """A multi-line error (TensorFlow's carry an op trace) is recorded as its
    first line; the whole traceback goes to the run's error.log."""
    from pipeline.training.actions import Action

    class Explode(Action):
        def next_boundary(self, step):
            return 3 if step < 3 else None

        def __call__(self, state, chunk):
            if chunk.step == 3:
                raise RuntimeError("collective failed\n\t [[{{node while/x}}]]\nmore")

    with pytest.raises(RuntimeError):
        train_run(tmp_path, TINY, "boom", extra_actions=[Explode()])
    saved = json.loads((tmp_path / "boom" / "run.json").read_text())
    log = tmp_path / "boom" / "error.log"
    assert saved["status"] == "failed"
    assert saved["error"] == (f"RuntimeError: collective failed (full trace: {log})")
    trace = log.read_text()
    assert "Traceback (most recent call last):" in trace
    assert "[[{{node while/x}}]]" in trace


def test_any_error_written_to_run_json_is_one_line(tmp_path):
    """Whoever records an error (a sweep marking a trial's run failed too)."""
    from pipeline.runs.rundir import RunDir

    run_dir = RunDir(tmp_path)
    run_dir.update_record(status="running")
    run_dir.update_record(status="failed", error="first line\n  second\nthird")
    assert run_dir.read_record()["error"] == "first line"
