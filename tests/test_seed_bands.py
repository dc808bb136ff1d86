"""Seed bands: each variant's mean, std and range over seeds, in TensorBoard itself."""

import statistics
import time

import pytest
from conftest import read_events
from study_fixtures import sweep_in_process
from tensorboard.plugins.custom_scalar import layout_pb2
from tensorboard.plugins.custom_scalar import metadata as layout_metadata
from tensorboard.util import tensor_util

from pipeline import variants
from pipeline.tensorboard import board, seed_bands


def test_aggregate_over_the_steps_every_seed_logged():
    bands = seed_bands.aggregate([{10: 0.5, 20: 0.7}, {10: 0.7, 20: 0.9, 30: 1.0}])
    assert list(bands) == [10, 20]
    std = statistics.stdev([0.5, 0.7])
    assert bands[10] == pytest.approx(
        {
            "mean": 0.6,
            "mean_minus_std": 0.6 - std,
            "mean_plus_std": 0.6 + std,
            "min": 0.5,
            "max": 0.7,
            "seeds": 2.0,
        }
    )
    assert seed_bands.aggregate([{10: 0.5}])[10]["mean_plus_std"] == 0.5


@pytest.mark.parametrize(
    ("name", "label"),
    [
        ("learning_rate=0.1,seed=2", "learning_rate=0.1"),
        ("seed=0,learning_rate=0.1", "learning_rate=0.1"),
        ("trial=0007,seed=1", "trial=0007"),
        ("seed=3", "all"),
    ],
)
def test_variant_label_drops_the_seed(name, label):
    assert variants.variant_label(name) == label


def sweep(logdir, trials):
    """`pipeline-sweep` in this process (its trainer is still a process of its
    own): what is tested is what the sweep writes, not how it exits."""
    result = sweep_in_process(
        logdir,
        "--sweep_name=bands",
        "--grid=learning_rate=0.1,0.5",
        "--repeats=2",
        f"--trials={trials}",
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return logdir / "bands"


def read(directory):
    return read_events(directory)


def series(acc, tag):
    return [
        (e.step, float(tensor_util.make_ndarray(e.tensor_proto)))
        for e in acc.Tensors(tag)
    ]


@pytest.fixture(scope="module")
def grown_sweep(tmp_path_factory):
    """A sweep of one trial (one variant, two seeds), then grown to two trials."""
    logdir = tmp_path_factory.mktemp("bands_logs")
    experiment = sweep(logdir, trials=1)
    first = [p.name for p in (experiment / "seed_bands").iterdir() if p.is_dir()]
    sweep(logdir, trials=2)
    return experiment, first


@pytest.mark.slow
def test_each_variant_gets_its_bands_over_seeds(grown_sweep):
    experiment, first = grown_sweep
    assert len(first) == 1  # one trial done: one variant's bands
    bands_dir = experiment / "seed_bands"
    assert sorted(p.name for p in bands_dir.iterdir() if p.is_dir()) == [
        "learning_rate=0.1",
        "learning_rate=0.5",
    ]
    for lr in ("0.1", "0.5"):
        acc = read(bands_dir / f"learning_rate={lr}")
        assert set(acc.PluginTagToContent("scalars")) == {
            f"test/{metric}/{stat}"
            for metric in ("accuracy", "loss")
            for stat in ("mean", "mean_minus_std", "mean_plus_std", "min", "max")
            + ("seeds",)
        }
        per_seed = [
            dict(
                series(
                    read(experiment / f"learning_rate={lr},seed={s}" / "test"),
                    "accuracy",
                )
            )
            for s in (0, 1)
        ]
        # The sweep grew: every step appears once (no copy left from an
        # earlier rewrite), with both seeds in it.
        assert series(acc, "test/accuracy/seeds") == [(10, 2.0), (20, 2.0)]
        for step, mean in series(acc, "test/accuracy/mean"):
            values = [run[step] for run in per_seed]
            assert mean == pytest.approx(statistics.fmean(values), abs=1e-6)
        upper = dict(series(acc, "test/accuracy/mean_plus_std"))
        lowest = dict(series(acc, "test/accuracy/min"))
        for step in (10, 20):
            values = [run[step] for run in per_seed]
            std = statistics.stdev(values)
            assert upper[step] == pytest.approx(
                statistics.fmean(values) + std, abs=1e-6
            )
            assert lowest[step] == pytest.approx(min(values), abs=1e-6)
        assert len(list((bands_dir / f"learning_rate={lr}").glob("events.*"))) == 1


@pytest.mark.slow
def test_layout_has_margin_charts_of_mean_std_and_range(grown_sweep):
    experiment, _ = grown_sweep
    acc = read(experiment / "seed_bands")
    (event,) = acc.Tensors(layout_metadata.CONFIG_SUMMARY_TAG)
    layout = layout_pb2.Layout.FromString(
        tensor_util.make_ndarray(event.tensor_proto).item()
    )
    (category,) = layout.category
    assert [chart.title for chart in category.chart] == [
        "test accuracy: mean +/- std over seeds",
        "test accuracy: min to max over seeds",
        "test loss: mean +/- std over seeds",
        "test loss: min to max over seeds",
    ]
    (series_pb,) = category.chart[0].margin.series
    assert (series_pb.value, series_pb.lower, series_pb.upper) == (
        "test/accuracy/mean",
        "test/accuracy/mean_minus_std",
        "test/accuracy/mean_plus_std",
    )


@pytest.mark.slow
def test_tensorboard_serves_the_layout_and_the_bands(grown_sweep):
    experiment, _ = grown_sweep
    with board.TensorBoardServer(experiment) as server:
        deadline = time.monotonic() + 60
        while not server.get("/data/plugin/custom_scalars/layout"):
            assert time.monotonic() < deadline, "no custom scalars layout"
            time.sleep(0.5)
        layout = server.get("/data/plugin/custom_scalars/layout")
        assert layout["category"][0]["title"] == "seed bands"
        points = server.get(
            "/data/plugin/scalars/scalars?run=seed_bands/learning_rate%3D0.1"
            "&tag=test/accuracy/mean"
        )
        assert [p[1] for p in points] == [10, 20]
