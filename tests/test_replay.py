"""`--replay`: re-run a run from its saved config and compare its train losses."""

from __future__ import annotations

import json
import shutil

import pytest
from conftest import copy_run, main_in_process, parse_train_flags, train_run

from pipeline import config as config_lib
from pipeline.config import TrainConfig
from pipeline.training import recovery

ORIGINAL = TrainConfig(
    model="mlp",
    hidden_units=32,
    dropout=0.2,
    steps=30,
    batch_size=16,
    checkpoint_every=0,
    eval_every=0,
    print_every=0,
    histogram_every=0,
    image_count=0,
    seed=4,
)


@pytest.fixture(scope="module")
def original(tmp_path_factory):
    """The run to replay, alone in its directory (a replay must add nothing there)."""
    trained = train_run(tmp_path_factory.mktemp("logs"), ORIGINAL, "original")
    return copy_run(trained.path, tmp_path_factory.mktemp("replay"))


def _launch(*argv: str) -> config_lib.Launch:
    return config_lib.launch_from_flags(parse_train_flags(*argv))


def test_replay_cli_matches_its_original(original):
    # In this process: --replay is a mode of pipeline-train, not an exit path.
    result = main_in_process("pipeline-train", f"--replay={original}", "--steps=20")
    assert result.returncode == 0, result.stderr
    assert (
        f"replay matches {original}: 20 logged train losses (steps 1..20) "
        "bit-identical" in result.stdout
    )
    assert sorted(p.name for p in original.parent.iterdir()) == ["original"]


def test_replay_fails_at_the_first_differing_step(original, tmp_path):
    from pipeline.training import replay

    tampered = tmp_path / "tampered"
    shutil.copytree(original, tampered)
    rec = json.loads((tampered / "run.json").read_text())
    rec["config"]["learning_rate"] = 0.01
    (tampered / "run.json").write_text(json.dumps(rec))

    run_dir, config = recovery.prepare_replay(
        _launch(f"--replay={tampered}", "--steps=5")
    )
    with pytest.raises(replay.ReplayMismatchError) as err:
        replay.replay_run(run_dir, config, print_fn=lambda _: None)
    # Step 1's loss comes before the first update, so the two runs part at 2.
    assert str(err.value).startswith(
        f"replay differs from {tampered} at step 2: train loss "
    )


def test_replay_refuses_flags_that_change_the_run(original):
    with pytest.raises(config_lib.ConfigError, match="--dropout=0.5 differs"):
        recovery.prepare_replay(_launch(f"--replay={original}", "--dropout=0.5"))


@pytest.mark.parametrize(
    ("replayed", "rtol", "first"),
    [
        ({1: 1.0, 2: 2.0}, 0.0, None),
        ({1: 1.0, 2: 2.0000002}, 0.0, 2),
        ({1: 1.0, 2: 2.0000002}, 1e-6, None),
        ({1: 1.0}, 0.0, 2),
    ],
)
def test_first_difference(replayed, rtol, first):
    from pipeline.training import replay

    assert replay.first_difference({1: 1.0, 2: 2.0}, replayed, rtol) == first
