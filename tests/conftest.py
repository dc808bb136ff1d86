"""Shared fixtures: real models trained once per session on the bundled digits."""

from __future__ import annotations

import dataclasses
import os
import pathlib

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pytest

from pipeline.config import TrainConfig

REPO = pathlib.Path(__file__).resolve().parents[1]

TINY = TrainConfig(
    dataset="mnist_sample",
    steps=20,
    batch_size=32,
    shuffle_buffer=500,
    learning_rate=0.01,
    optimizer="adam",
    hidden_layers=1,
    hidden_units=16,
    conv_filters=(4, 8),
    dense_units=(16,),
    log_every=1,
    print_every=0,
    eval_every=10,
    histogram_every=10,
    checkpoint_every=10,
    image_count=8,
)


@dataclasses.dataclass
class TrainedRun:
    """A run trained in this session: its config, directory and result."""

    config: TrainConfig
    path: pathlib.Path
    result: object


def train_run(
    tmp_dir: pathlib.Path,
    config: TrainConfig,
    name: str,
    *,
    resume: bool = False,
    print_fn=lambda _: None,
) -> TrainedRun:
    """Trains `config` into `tmp_dir/name` with the real loop and bundled data.

    With `resume`, continues the run already there from its latest checkpoint.
    """
    from pipeline import data
    from pipeline.runs import rundir
    from pipeline.training import loop as train

    dataset = data.load_dataset(
        config.dataset, config.data_dir, config.validation_split, config.binary_class
    )
    if resume:
        run_dir = rundir.open_run_dir(tmp_dir / name)
    else:
        run_dir = rundir.create_run_dir(tmp_dir, name)
    result = train.train_and_evaluate(
        config, run_dir, dataset, print_fn=print_fn, resume=resume
    )
    return TrainedRun(config, run_dir.path, result)


@pytest.fixture(scope="session")
def sample_dataset():
    """The bundled digits, loaded once."""
    from pipeline import data

    return data.load_dataset("mnist_sample")


@pytest.fixture(scope="session")
def trained_runs(tmp_path_factory) -> dict[str, TrainedRun]:
    """One tiny run per model family, trained once per session."""
    logdir = tmp_path_factory.mktemp("logs")
    return {
        model: train_run(logdir, dataclasses.replace(TINY, model=model), model)
        for model in ("logreg", "mlp", "cnn")
    }


def read_events(split_dir: pathlib.Path):
    """TensorBoard's own loader over one split directory, every event kept."""
    from tensorboard.backend.event_processing import plugin_event_accumulator as pea

    acc = pea.EventAccumulator(str(split_dir), size_guidance={pea.TENSORS: 0})
    acc.Reload()
    return acc


def scalar_series(split_dir: pathlib.Path, tag: str) -> list[tuple[int, float]]:
    """(step, value) of a TF2 scalar tag, read back with TensorBoard's loader."""
    import tensorflow as tf

    return [
        (e.step, float(tf.make_ndarray(e.tensor_proto)))
        for e in read_events(split_dir).Tensors(tag)
    ]
