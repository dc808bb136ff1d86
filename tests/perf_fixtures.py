"""A tiny real training run shared by the performance-feature tests."""

from __future__ import annotations

import dataclasses
import pathlib

import pytest

# 37 steps with chunks of 10 and eval every 15: chunk lengths 10, 5, 10, 10,
# 2 ... nothing divides evenly, so a retrace on a new length would show.
TINY = {
    "model": "mlp",
    "dataset": "mnist_sample",
    "steps": 37,
    "batch_size": 32,
    "hidden_layers": 1,
    "hidden_units": 8,
    "steps_per_loop": 10,
    "eval_every": 15,
    "histogram_every": 10,
    "checkpoint_every": 0,
    "print_every": 0,
    "image_count": 4,
}


@dataclasses.dataclass
class TinyRun:
    path: pathlib.Path
    result: object
    lines: list[str]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> TinyRun:
    from pipeline import data as data_lib
    from pipeline.config import TrainConfig
    from pipeline.runs import rundir
    from pipeline.training import loop as train

    config = TrainConfig(**TINY, logdir=str(tmp_path_factory.mktemp("logs")))
    dataset = data_lib.load_dataset(config.dataset)
    run_dir = rundir.create_run_dir(config.logdir, "tiny")
    lines: list[str] = []
    result = train.train_and_evaluate(config, run_dir, dataset, print_fn=lines.append)
    return TinyRun(run_dir.path, result, lines)
