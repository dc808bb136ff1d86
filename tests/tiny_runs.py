"""Real tiny runs on the bundled digits, for the hparams/sweep/compare/board tests."""

from __future__ import annotations

import dataclasses
import functools
import pathlib

from pipeline.config import TrainConfig

TINY = TrainConfig(
    model="logreg",
    dataset="mnist_sample",
    steps=20,
    batch_size=32,
    shuffle_buffer=256,
    learning_rate=0.1,
    optimizer="sgd",
    log_every=5,
    eval_every=10,
    histogram_every=10,
    checkpoint_every=0,
    print_every=0,
    image_count=8,
)
# The same tiny flags for `pipeline-train`/`pipeline-sweep` in a subprocess.
TINY_FLAGS = [
    "--model=logreg",
    "--dataset=mnist_sample",
    "--steps=20",
    "--batch_size=32",
    "--shuffle_buffer=256",
    "--optimizer=sgd",
    "--log_every=5",
    "--eval_every=10",
    "--histogram_every=10",
    "--checkpoint_every=0",
    "--print_every=0",
    "--image_count=8",
]


@functools.cache
def _dataset(binary_class: int | None):
    from pipeline import data as data_lib

    return data_lib.load_dataset("mnist_sample", None, 0.0, binary_class)


def train_tiny(logdir: pathlib.Path, run_name: str, **overrides) -> pathlib.Path:
    """Trains TINY with `overrides` in-process into `logdir/run_name`; returns it.

    Raises whatever training raises (the run directory is kept).
    """
    from pipeline.runs import rundir
    from pipeline.training import loop as train

    config = dataclasses.replace(
        TINY, logdir=str(logdir), run_name=run_name, **overrides
    )
    run_dir = rundir.create_run_dir(logdir, run_name)
    train.train_and_evaluate(
        config, run_dir, _dataset(config.binary_class), print_fn=lambda line: None
    )
    return run_dir.path
