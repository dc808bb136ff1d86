"""Sweeps whose pruner (median, Hyperband, a floor) stops a hopeless trial.

Split from test_study.py so that `make test`'s two workers share the sweeps:
each file goes to one worker. The sweeps run in this process
(`sweep_in_process`: no `pipeline-sweep` process and its TensorFlow import);
their trials train, and are pruned, in a real training process.
"""

import pytest
from conftest import main_in_process, read_events, record
from optuna.trial import TrialState
from study_fixtures import check_study_and_runs_agree, load, sweep_in_process

# Each test runs a sweep of real training processes.
pytestmark = pytest.mark.slow


def _plugin_content(run_dir):
    return read_events(run_dir)


def _sweep_pruning_the_hopeless_second_trial(tmp_path, pruner: str, *flags: str):
    """Two 20-step trials of a grid: 0.3 (Optuna's grid order for seed 0) then
    the hopeless 0.00001, which `pruner` must stop at its first evaluation
    (step 10). Returns the experiment, its study and the pruned run's record."""
    result = sweep_in_process(
        tmp_path,
        "--grid=learning_rate=0.5,0.00001,0.3",
        "--trials=2",
        f"--pruner={pruner}",
        *flags,
        f"--sweep_name={pruner}",
    )
    assert result.returncode == 0, result.stderr
    experiment = tmp_path / pruner
    assert (
        "[  2/2] pruned    trial 1 (learning_rate=0.00001): pruned after 10 steps"
        in result.stdout
    )
    study = load(f"sqlite:///{experiment / 'study.db'}", pruner)
    assert [t.state for t in study.trials] == [TrialState.COMPLETE, TrialState.PRUNED]
    assert sorted(study.trials[1].intermediate_values) == [10]
    check_study_and_runs_agree(study, experiment)
    run = record(experiment / "learning_rate=0.00001,seed=0")
    assert (run["status"], run["step"]) == ("pruned", 10)
    assert run["stop_reason"].startswith(
        f"pruned at step 10 by the study's {pruner} pruner (test/accuracy="
    )
    return experiment, study


def test_the_median_pruner_stops_a_hopeless_trial_as_pruned(tmp_path):
    from tensorboard.plugins.hparams import api_pb2, metadata
    from tensorboard.util import tensor_util

    # With one trial completed, the second is judged against it at its first
    # evaluation.
    experiment, study = _sweep_pruning_the_hopeless_second_trial(
        tmp_path, "median", "--startup_trials=1"
    )
    assert sorted(study.trials[0].intermediate_values) == [10, 20]
    pruned = experiment / "learning_rate=0.00001,seed=0"
    assert (pruned / "checkpoints" / "ckpt-10.index").is_file()
    train = _plugin_content(pruned / "train")
    (event,) = train.Tensors("events/pruned")
    assert event.step == 10
    session = _plugin_content(pruned)
    end = metadata.parse_session_end_info_plugin_data(
        session.PluginTagToContent(metadata.PLUGIN_NAME)[metadata.SESSION_END_INFO_TAG]
    )
    assert end.status == api_pb2.STATUS_UNKNOWN  # HParams has no "pruned"
    (text,) = session.Tensors("run_status")
    assert (
        tensor_util.make_ndarray(text.tensor_proto)
        .item()
        .decode()
        .startswith("**pruned**: pruned at step 10")
    )

    compared = main_in_process("pipeline-compare", str(experiment))
    assert compared.returncode == 0, compared.stderr
    assert (
        "pruned (stopped early by the study's pruner, not ranked): 1\n"
        "  learning_rate=0.00001,seed=0  at step 10  test accuracy "
    ) in compared.stdout
    assert "1 completed, 0 diverged, 1 pruned, 0 failed" in compared.stdout


def test_the_hyperband_pruner_stops_a_hopeless_trial_as_pruned(tmp_path):
    # Hyperband over 20 steps evaluated every 10: one bracket, whose first rung
    # (step 10) promotes only the best trial there.
    _sweep_pruning_the_hopeless_second_trial(tmp_path, "hyperband")


def test_a_floor_prunes_a_trial_at_chance_without_completed_trials(tmp_path):
    # No pruner and nothing completed yet: only the floor judges, from step 10.
    result = sweep_in_process(
        tmp_path,
        "--grid=learning_rate=0.00001,0.5",
        "--trials=2",
        "--prune_worse_than=0.3",
        "--prune_from_step=10",
        "--sweep_name=floor",
    )
    assert result.returncode == 0, result.stderr
    experiment = tmp_path / "floor"
    study = load(f"sqlite:///{experiment / 'study.db'}", "floor")
    states = {t.params["learning_rate"]: t.state for t in study.trials}
    assert states == {"0.00001": TrialState.PRUNED, "0.5": TrialState.COMPLETE}
    run = record(experiment / "learning_rate=0.00001,seed=0")
    assert (run["status"], run["step"]) == ("pruned", 10)
    assert run["stop_reason"].startswith(
        "pruned at step 10 by the study's floor (--prune_worse_than=0.3) "
        "(test/accuracy="
    )
