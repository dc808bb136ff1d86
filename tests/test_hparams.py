"""HParams records: the config's domains come from the flags; runs log sessions."""

import dataclasses
import json
import pathlib

import pytest
from conftest import LOGREG, read_events, train_run
from tensorboard.plugins.hparams import api_pb2, metadata
from tensorboard.util import tensor_util

from pipeline import config as config_lib
from pipeline.tensorboard import board, events, hparams


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """One completed and one diverged (NaN) tiny run in one experiment directory."""
    logdir = tmp_path_factory.mktemp("hparams_logs")
    ok = train_run(logdir, LOGREG, "ok").path
    with pytest.raises(Exception, match="loss is nan"):
        train_run(logdir, dataclasses.replace(LOGREG, learning_rate=1e38), "nan")
    return logdir, ok, logdir / "nan"


def _accumulator(path: pathlib.Path):
    return read_events(path)


def _values(acc, tag: str) -> list[tuple[int, float]]:
    return [
        (e.step, float(tensor_util.make_ndarray(e.tensor_proto)))
        for e in acc.Tensors(tag)
    ]


def test_config_domains_come_from_flag_definitions():
    infos = {info.name: info for info in hparams.experiment_pb().hparam_infos}
    assert list(infos["model"].domain_discrete) == sorted(config_lib.MODELS)
    assert list(infos["optimizer"].domain_discrete) == sorted(config_lib.OPTIMIZERS)
    assert list(infos["deterministic"].domain_discrete) == [False, True]
    assert infos["hidden_layers"].domain_interval == api_pb2.Interval(
        min_value=0, max_value=100
    )
    assert infos["validation_split"].domain_interval.max_value == pytest.approx(0.9)
    # Unbounded numbers keep their type (the dashboard's range filter needs it).
    assert infos["learning_rate"].type == api_pb2.DATA_TYPE_FLOAT64
    assert not infos["learning_rate"].HasField("domain_interval")
    assert infos["conv_filters"].type == api_pb2.DATA_TYPE_STRING
    # Issue 19: a variant's seeds are one session group, which shows only
    # what its sessions share, so the seed is no column.
    assert "seed" not in infos
    for bookkeeping in ("logdir", "run_name", "print_every", "checkpoint_every"):
        assert bookkeeping not in infos


def test_config_metrics_read_the_test_writer():
    names = {(m.name.group, m.name.tag) for m in hparams.experiment_pb().metric_infos}
    assert {
        ("test", "accuracy"),
        ("test", "loss"),
        ("test", "best/accuracy"),
        ("test", "best/loss"),
        ("train", "accuracy"),
    } <= names
    # Issue 19: no step numbers as metrics.
    assert not [tag for _, tag in names if tag.endswith("_step")]


def test_experiment_config_is_written_once_and_replaced_only_when_stale(tmp_path):
    assert hparams.write_experiment_config(tmp_path) is True
    path = tmp_path / hparams.CONFIG_FILENAME
    first = path.read_bytes()
    assert hparams.write_experiment_config(tmp_path) is False
    assert path.read_bytes() == first
    # A config from an older version of the flags is replaced, not appended to.
    stale = hparams.hp.hparams_config_pb([hparams.hp.HParam("model")], [])
    path.unlink()
    events.replace_event_file(path, [events.summary_event(stale)])
    assert len(hparams.read_experiment(tmp_path).hparam_infos) == 1
    assert hparams.write_experiment_config(tmp_path) is True
    assert hparams.read_experiment(tmp_path) is not None
    assert len(hparams.read_experiment(tmp_path).hparam_infos) > 20
    assert sorted(p.name for p in tmp_path.iterdir()) == [hparams.CONFIG_FILENAME]


def test_flags_that_differ_between_runs_are_marked_and_never_unmarked(runs):
    logdir, _, _ = runs
    infos = hparams.read_experiment(logdir).hparam_infos
    assert [i.name for i in infos if i.differs] == ["learning_rate"]
    assert hparams.write_experiment_config(logdir) is False
    assert hparams.write_experiment_config(logdir, {"batch_size"}) is True
    infos = hparams.read_experiment(logdir).hparam_infos
    assert sorted(i.name for i in infos if i.differs) == [
        "batch_size",
        "learning_rate",
    ]
    assert hparams.write_experiment_config(logdir) is False


def test_a_runs_end_reads_no_other_run_and_the_boards_start_reads_all(runs, tmp_path):
    """Issue 20: a run's end adds only itself to the config, so its cost does
    not grow with the logdir; `pipeline-board`'s start rebuilds it from every
    run (here a run the config was never told about)."""
    _, ok, _ = runs
    record = json.loads((ok / "run.json").read_text())

    def run(name: str, **flags) -> pathlib.Path:
        path = tmp_path / name
        path.mkdir()
        config = {**record["config"], **flags}
        (path / "run.json").write_text(json.dumps({**record, "config": config}))
        return path

    run("first")
    assert hparams.write_experiment_config(tmp_path) is True
    run("unseen", batch_size=64)
    assert hparams.add_run(tmp_path, run("ended", learning_rate=0.5)) is True
    infos = hparams.read_experiment(tmp_path).hparam_infos
    assert sorted(i.name for i in infos if i.differs) == ["learning_rate"]
    assert hparams.write_experiment_config(tmp_path) is True  # the board's start
    infos = hparams.read_experiment(tmp_path).hparam_infos
    assert sorted(i.name for i in infos if i.differs) == [
        "batch_size",
        "learning_rate",
    ]


def test_session_values_are_the_defining_flags():
    config = config_lib.TrainConfig(
        model="mlp", conv_filters=(16, 32), learning_rate=0.01
    )
    values = hparams.session_hparams(config)
    assert values["model"] == "mlp"
    assert values["learning_rate"] == 0.01
    # Issue 19: only flags that apply to the model (no conv filters on an
    # MLP), and not the seed.
    assert "conv_filters" not in values
    assert "seed" not in values
    assert values["deterministic"] is True
    assert "binary_class" not in values  # None: not set for this run
    assert "logdir" not in values


def test_run_writes_config_at_experiment_root_and_session_in_run_root(runs):
    logdir, ok, _ = runs
    assert (logdir / hparams.CONFIG_FILENAME).is_file()
    acc = _accumulator(ok)
    content = acc.PluginTagToContent(metadata.PLUGIN_NAME)
    assert set(content) == {
        metadata.SESSION_START_INFO_TAG,
        metadata.SESSION_END_INFO_TAG,
    }
    start = metadata.parse_session_start_info_plugin_data(
        content[metadata.SESSION_START_INFO_TAG]
    )
    assert start.hparams["model"].string_value == "logreg"
    assert start.hparams["learning_rate"].number_value == pytest.approx(0.1)
    assert start.hparams["steps"].number_value == 20
    assert start.group_name == f"{logdir.name}/ok"
    end = metadata.parse_session_end_info_plugin_data(
        content[metadata.SESSION_END_INFO_TAG]
    )
    assert end.status == api_pb2.STATUS_SUCCESS


def test_best_metrics_are_the_running_best_of_the_test_curve(runs):
    _, ok, _ = runs
    acc = _accumulator(ok / "test")
    accuracy = _values(acc, "accuracy")
    loss = _values(acc, "loss")
    assert [s for s, _ in accuracy] == [10, 20]
    best = _values(acc, "best/accuracy")
    assert [s for s, _ in best] == [10, 20]
    assert best[-1][1] == pytest.approx(max(v for _, v in accuracy))
    # Issue 19: the step of the best is no scalar series.
    assert "best/accuracy_step" not in acc.Tags()["tensors"]
    assert _values(acc, "best/loss")[-1][1] == pytest.approx(min(v for _, v in loss))


def test_failed_run_shows_as_failed_with_the_reason(runs):
    _, _, failed = runs
    acc = _accumulator(failed)
    content = acc.PluginTagToContent(metadata.PLUGIN_NAME)
    end = metadata.parse_session_end_info_plugin_data(
        content[metadata.SESSION_END_INFO_TAG]
    )
    assert end.status == api_pb2.STATUS_FAILURE
    (event,) = acc.Tensors(hparams.STATUS_TAG)
    text = tensor_util.make_ndarray(event.tensor_proto).item().decode()
    assert text.startswith("**diverged**: NonFiniteLossError: loss is nan at step")


def test_best_metrics_tracker_keeps_step_of_best():
    best = hparams.BestMetrics()
    assert best.update(10, {"accuracy": 0.5, "loss": 2.0}) == {
        "best/accuracy": 0.5,
        "best/loss": 2.0,
    }
    out = best.update(20, {"accuracy": 0.4, "loss": 1.0})
    assert out["best/accuracy"] == 0.5
    assert best.accuracy_step == 10
    assert best.loss_step == 20


def test_logdir_config_covers_the_sweep_inside_it(readme_layout):
    # Written by the runs' ends, with no board started.
    infos = {i.name: i for i in hparams.read_experiment(readme_layout).hparam_infos}
    assert sorted(n for n, i in infos.items() if i.differs) == [
        "learning_rate",
        "model",
    ]
    assert "hidden_units" in infos  # the MLP's
    assert not {"conv_filters", "kernel_size", "seed"} & set(infos)
    metrics = {m.name.tag for m in hparams.read_experiment(readme_layout).metric_infos}
    assert not {t for t in metrics if t.endswith("_step")}


def test_a_variants_seeds_are_one_row_with_their_mean(readme_layout):
    name = readme_layout.name
    with board.TensorBoardServer(readme_layout) as server:
        experiment = server.get(
            "/data/plugin/hparams/experiment", {"experimentName": ""}
        )
        first = [h["name"] for h in experiment["hparamInfos"]][:2]
        assert first == ["learning_rate", "model"]  # what the dashboard checks
        groups = {g["name"]: g for g in server.session_groups()}
    assert sorted(groups) == [
        f"{name}/logreg-1",
        f"{name}/mlp-1",
        "s/learning_rate=0.05",
        "s/learning_rate=0.1",
    ]
    group = groups["s/learning_rate=0.1"]
    assert sorted(s["name"] for s in group["sessions"]) == [
        "s/learning_rate=0.1,seed=0",
        "s/learning_rate=0.1,seed=1",
    ]
    assert group["hparams"]["learning_rate"] == pytest.approx(0.1)
    assert "seed" not in group["hparams"]
    accuracy = [
        _values(_accumulator(readme_layout / s["name"] / "test"), "accuracy")[-1][1]
        for s in group["sessions"]
    ]
    (mean,) = [
        m["value"]
        for m in group["metricValues"]
        if m["name"] == {"group": "test", "tag": "accuracy"}
    ]
    assert mean == pytest.approx(sum(accuracy) / 2, abs=1e-6)


def test_the_swept_flag_is_marked_first_and_at_most_five_are():
    demo = [
        {"model": m, "hidden_units": 128, "hidden_layers": 2, "steps": 500}
        for m in ("logreg", "mlp", "cnn")
    ]
    sweep = [
        {"model": "mlp", "hidden_units": 30, "hidden_layers": 10, "steps": 600}
        | {"activation": "sigmoid", "batch_size": 10, "input_scale": "raw"}
        | {"learning_rate": rate, "seed": seed}
        for rate in (0.01, 0.05)
        for seed in (0, 1)
    ]
    marked = hparams.marked_flags({"logs": demo, "logs/s": sweep})
    assert marked[:2] == ["model", "learning_rate"]  # vary inside a directory
    assert len(marked) == hparams.VISIBLE_HPARAMS
    assert "seed" not in marked
    # A sweep's axes come first, whatever else varies.
    assert hparams.marked_flags({"logs": demo}, given=["batch_size"])[0] == "batch_size"


def test_differing_tags_are_marked_last_in_their_tier():
    side = [
        {"model": "mlp", "learning_rate": rate, "tag": [tag]}
        for rate, tag in ((0.1, "baseline"), (0.05, "exp1"))
    ]
    assert hparams.marked_flags({"logs": side}) == ["learning_rate", "tag"]
    # Tags differing only between directories rank with such flags.
    other = [{"model": "cnn", "learning_rate": 0.1, "tag": ["b"]}]
    marked = hparams.marked_flags({"logs": side, "logs/x": other})
    assert marked == ["learning_rate", "tag", "model"]
    # Five flags swept side by side keep every mark: the tag gets none.
    swept = [
        {"model": "mlp", "learning_rate": 0.1 * i, "batch_size": 10 * i}
        | {"hidden_units": 30 + i, "dropout": 0.1 * i, "hidden_layers": i}
        | {"tag": [f"t{i}"]}
        for i in (1, 2, 3)
    ]
    assert "tag" not in hparams.marked_flags({"s": swept})
