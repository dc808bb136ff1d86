"""`--replay`: re-run a run from its saved config and compare its train losses.

Proof that a result can be reproduced: the replay trains in a temporary
directory (deleted afterwards, so it never shows up next to real runs) with
the original's saved config, reads both runs' `train/loss` series back with
TensorBoard's loader and fails at the first logged step that differs.
"""

from __future__ import annotations

import dataclasses
import tempfile
from collections.abc import Callable

import numpy as np

from pipeline import data as data_lib
from pipeline.config import TrainConfig
from pipeline.errors import ConfigError, TrainingError
from pipeline.runs import rundir
from pipeline.tensorboard import events
from pipeline.training import distribute, loop, recovery


class ReplayMismatchError(TrainingError):
    """The replay's loss differs from the original's at some step."""


def first_difference(
    original: dict[int, float], replayed: dict[int, float], rtol: float = 0.0
) -> int | None:
    """The first step of `original` whose value `replayed` lacks or differs from."""
    for step in sorted(original):
        if step not in replayed:
            return step
        a, b = np.float32(original[step]), np.float32(replayed[step])
        if rtol == 0.0:
            if a != b:
                return step
        elif not np.isclose(a, b, rtol=rtol, atol=0.0):
            return step
    return None


def replay_run(
    original: rundir.RunDir,
    config: TrainConfig,
    rtol: float = 0.0,
    print_fn: Callable[[str], None] = print,
) -> None:
    """Replays `original` with `config` (from `recovery.prepare_replay`), compares.

    Raises:
      ReplayMismatchError: naming the first differing step and both values.
      ConfigError, DataError: nothing to compare with, or different data.
    """
    # Strategies configure devices: before any other TensorFlow work.
    strategy = distribute.make_strategy(config.strategy, config.cpu_devices)
    reference = {
        step: loss
        for step, loss in events.scalar_series(original.path / "train", "loss").items()
        if step <= config.steps
    }
    if not reference:
        raise ConfigError(
            f"{original.path / 'train'}: no train loss logged in steps "
            f"1..{config.steps} to compare with (was --log_every=0?)"
        )
    dataset = data_lib.load_dataset(
        config.dataset, config.data_dir, config.validation_split, config.binary_class
    )
    recovery.check_same_data(original, dataset)
    with tempfile.TemporaryDirectory(prefix="pipeline-replay-") as tmp:
        replay_config = dataclasses.replace(config, logdir=tmp, run_name="replay")
        replay_dir = rundir.create_run_dir(tmp, "replay")
        print_fn(f"replaying {original.path} for {config.steps} steps in {tmp}")
        loop.train_and_evaluate(
            replay_config,
            replay_dir,
            dataset,
            print_fn=lambda _: None,
            strategy=strategy,
        )
        replayed = events.scalar_series(replay_dir.path / "train", "loss")
    step = first_difference(reference, replayed, rtol)
    if step is not None:
        raise ReplayMismatchError(
            f"replay differs from {original.path} at step {step}: train loss "
            f"{replayed.get(step, float('nan')):.9g}, original {reference[step]:.9g}"
        )
    steps = sorted(reference)
    print_fn(
        f"replay matches {original.path}: {len(steps)} logged train losses "
        f"(steps {steps[0]}..{steps[-1]}) "
        + ("bit-identical" if rtol == 0 else f"within rtol={rtol}")
    )
