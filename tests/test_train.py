"""The training loop: cadence, determinism, checkpoints that restore exactly."""

import dataclasses
import json
import re

import numpy as np
import pytest
from conftest import LOGREG, TINY, scalar_series, train_run

from pipeline import data, models
from pipeline.training import actions, loop


@pytest.mark.parametrize(
    ("step", "every", "due"),
    [(10, 10, True), (20, 10, True), (15, 10, False), (5, 0, False), (1, 1, True)],
)
def test_is_due(step, every, due):
    assert actions.is_due(step, every) is due


@pytest.mark.parametrize(
    ("step", "intervals", "expected"),
    [
        (0, [500, 100], 100),
        (0, [30, 0], 30),
        (30, [30, 45], 45),
        (90, [0, 0], 190),
        (950, [0], 1000),
        (990, [0], 1000),
    ],
)
def test_next_boundary_never_skips_an_interval(step, intervals, expected):
    periodic = [actions.EveryNSteps(every) for every in intervals]
    assert loop.chunk_end(step, 1000, 100, periodic) == expected


def test_run_record_completed_with_final_metrics(trained_runs):
    run = trained_runs["mlp"]
    record = json.loads((run.path / "run.json").read_text())
    assert record["status"] == "completed"
    assert record["step"] == 20
    assert record["final_metrics"]["test"]["accuracy"] == pytest.approx(
        run.result.test["accuracy"]
    )
    assert record["dataset"]["sizes"] == {"train": 8000, "test": 2000}
    assert len(record["dataset"]["fingerprint"]) == 64
    assert set(record["versions"]) >= {"tensorflow", "keras", "tensorboard", "numpy"}


def test_final_checkpoint_restores_the_final_test_accuracy(
    trained_runs, sample_dataset
):
    import tensorflow as tf

    from pipeline.training import steps

    run = trained_runs["cnn"]
    assert run.result.checkpoint.endswith("ckpt-20")
    model = models.restore_model(run.config, run.result.checkpoint)
    test = sample_dataset.test
    restored = steps.make_eval_fn(model)(test.images, test.labels)
    assert float(restored["accuracy"]) == run.result.test["accuracy"]
    assert float(restored["loss"]) == pytest.approx(run.result.test["loss"], rel=1e-6)
    assert tf.train.list_variables(run.result.checkpoint)


def test_same_flags_and_seed_give_the_same_metric_series(tmp_path):
    config = dataclasses.replace(
        TINY, model="mlp", dropout=0.2, steps=15, eval_every=0, histogram_every=0
    )
    first = train_run(tmp_path, config, "a")
    second = train_run(tmp_path, config, "b")
    other_seed = train_run(tmp_path, dataclasses.replace(config, seed=1), "c")
    series = [
        scalar_series(r.path / "train", "loss") for r in (first, second, other_seed)
    ]
    assert series[0] == series[1]
    assert series[0] != series[2]
    assert first.result.test == second.result.test


def test_binary_task_trains_one_logit_on_is_it_a_one(tmp_path):
    config = dataclasses.replace(
        TINY,
        model="logreg",
        binary_class=1,
        steps=30,
        learning_rate=0.1,
        optimizer="sgd",
    )
    run = train_run(tmp_path, config, "is_one")
    # Only ~11% of digits are 1s: predicting "no" for all scores about 0.89.
    assert run.result.test["accuracy"] > 0.9
    assert (
        json.loads((run.path / "run.json").read_text())["config"]["binary_class"] == 1
    )


def test_validation_split_gets_its_own_writer(tmp_path):
    config = dataclasses.replace(TINY, model="logreg", validation_split=0.25, steps=10)
    run = train_run(tmp_path, config, "val")
    assert [s for s, _ in scalar_series(run.path / "validation", "loss")] == [10]
    record = json.loads((run.path / "run.json").read_text())
    assert record["dataset"]["sizes"] == {
        "train": 6000,
        "validation": 2000,
        "test": 2000,
    }


def test_batch_larger_than_train_split_is_an_error(tmp_path):
    from pipeline.runs import rundir

    tiny = data.Dataset(
        "tiny",
        data.Split(np.zeros((4, 28, 28), np.uint8), np.zeros(4, np.int32)),
        data.Split(np.zeros((4, 28, 28), np.uint8), np.zeros(4, np.int32)),
    )
    with pytest.raises(loop.TrainingError, match="--batch_size=32 is larger"):
        loop.train_and_evaluate(TINY, rundir.create_run_dir(tmp_path, "x"), tiny)


def test_progress_says_when_it_compiles_and_which_step_test_accuracy_is_from(
    tmp_path,
):
    config = dataclasses.replace(
        LOGREG, steps=20, eval_every=15, print_every=10, steps_per_loop=5
    )
    lines = train_run(tmp_path, config, "progress").lines
    compiling = [line for line in lines if "compiling" in line]
    assert compiling == [
        "step      0/20  compiling the logreg train step (its first call waits for it)"
    ]
    assert lines.index(compiling[0]) < min(
        i for i, line in enumerate(lines) if line.startswith("step     10/20")
    )
    (at_10,) = [line for line in lines if line.startswith("step     10/20  ")]
    assert at_10.endswith(" test_accuracy=-  " + at_10.split("  ")[-1])
    (at_20,) = [line for line in lines if line.startswith("step     20/20  ")]
    assert re.search(r" test_accuracy=\d\.\d{4} \(step 20\)  [\d,]+ examples/s$", at_20)
