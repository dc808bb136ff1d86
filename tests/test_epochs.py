"""`--epochs` and per-epoch cadences: an epoch is ceil(train examples / batch) steps.

The bundled digits have 8,000 train examples; a validation split takes its
share first, so the epoch is counted on what is left.
"""

from __future__ import annotations

import dataclasses
import json

import pytest
from conftest import REPO, TINY, config_from_argv, scalar_series, train_run

from pipeline import config as config_lib

# 8,000 digits minus a 25% validation split = 6,000: 6 steps of 1,000.
SPLIT = dataclasses.replace(
    TINY,
    model="logreg",
    validation_split=0.25,
    batch_size=1000,
    shuffle_buffer=10000,
    eval_every=0,
    histogram_every=0,
    checkpoint_every=0,
    image_count=0,
)


parse = config_from_argv


def test_an_epoch_is_ceil_of_train_examples_over_batch():
    assert config_lib.steps_per_epoch(batch_size=100, train_examples=8000) == 80
    assert config_lib.steps_per_epoch(batch_size=128, train_examples=8000) == 63
    assert config_lib.steps_per_epoch(batch_size=128, train_examples=6400) == 50


def test_epochs_resolve_to_steps_of_the_split_left_after_validation():
    config = dataclasses.replace(SPLIT, epochs=3, eval_every_epochs=1)
    resolved = config_lib.resolve_epochs(config, train_examples=6000)
    assert (resolved.steps, resolved.eval_every, resolved.epochs) == (18, 6, 3)
    # Without a split the same flags mean 8 steps an epoch.
    whole = config_lib.resolve_epochs(config, train_examples=8000)
    assert (whole.steps, whole.eval_every) == (24, 8)


def test_epochs_run_trains_exact_steps_and_evaluates_and_saves_every_epoch(
    tmp_path,
):
    config = dataclasses.replace(
        SPLIT, epochs=3, eval_every_epochs=1, checkpoint_every_epochs=1
    )
    lines: list[str] = []
    run = train_run(tmp_path, config, "epochs", print_fn=lines.append)
    assert run.result.step == 18
    assert [s for s, _ in scalar_series(run.path / "train", "loss")] == list(
        range(1, 19)
    )
    assert [s for s, _ in scalar_series(run.path / "test", "accuracy")] == [6, 12, 18]
    assert [s for s, _ in scalar_series(run.path / "validation", "loss")] == [
        6,
        12,
        18,
    ]
    saved = sorted(int(p.name[5:-6]) for p in run.path.glob("checkpoints/ckpt-*.index"))
    assert saved == [6, 12, 18]
    record = json.loads((run.path / "run.json").read_text())
    assert record["config"]["epochs"] == 3
    assert record["config"]["steps"] == 18
    assert record["config"]["eval_every"] == 6
    assert record["epoch"] == 3
    assert record["steps_per_epoch"] == 6
    assert any(line.startswith("step     18/18  epoch 3/3  train ") for line in lines)


def test_resume_across_an_epoch_boundary_matches_an_uninterrupted_run(tmp_path):
    """Stopped mid-epoch 2 (step 9 of 6-step epochs), resumed to 3 epochs."""
    config = dataclasses.replace(SPLIT, epochs=3, checkpoint_every=3)
    whole = train_run(tmp_path, config, "whole")
    first = train_run(
        tmp_path, dataclasses.replace(config, epochs=0, steps=9), "resumed"
    )
    assert first.result.step == 9
    resumed = train_run(tmp_path, config, "resumed", resume=True)
    assert resumed.result.step == 18
    assert resumed.result.weights_digest == whole.result.weights_digest
    losses = dict(scalar_series(resumed.path / "train", "loss"))
    assert losses == dict(scalar_series(whole.path / "train", "loss"))


def test_steps_and_epochs_together_on_the_command_line_are_refused():
    with pytest.raises(config_lib.ConfigError, match="--steps and --epochs"):
        parse("--steps=100", "--epochs=2")
    with pytest.raises(config_lib.ConfigError, match="--eval_every and"):
        parse("--eval_every=100", "--eval_every_epochs=1")


def test_epochs_on_the_command_line_replace_a_flagfiles_steps():
    flagfile = f"--flagfile={REPO / 'flags/mlp_sigmoid_2x30.cfg'}"
    assert parse(flagfile).steps == 6000
    assert parse(flagfile).epochs == 0
    in_epochs = parse(flagfile, "--epochs=5")
    assert in_epochs.epochs == 5
    assert config_lib.resolve_epochs(in_epochs, 8000).steps == 800
    # And the other way round: a later --steps replaces a flagfile's --epochs.
    course = f"--flagfile={REPO / 'flags/cnn_course.cfg'}"
    assert parse(course).epochs == 20
    assert (parse(course, "--steps=30").epochs, parse(course, "--steps=30").steps) == (
        0,
        30,
    )


def test_resume_may_switch_between_steps_and_epochs():
    from pipeline.training import recovery

    saved = dataclasses.replace(SPLIT, epochs=3, steps=18)
    longer = recovery.merge_overrides(saved, parse("--steps=30"), {"steps"})
    assert (longer.epochs, longer.steps) == (0, 30)
    more = recovery.merge_overrides(saved, parse("--epochs=5"), {"epochs"})
    assert config_lib.resolve_epochs(more, 6000).steps == 30
