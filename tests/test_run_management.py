"""Notes, tags, the run list, archive and delete, on real runs and real programs.

Notes and tags set after training are read back where a user meets them:
`pipeline-runs list`, `pipeline-compare --filter`, and TensorBoard's Text and
HParams data served by the real server.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
import time

import pytest
from conftest import (
    LOGREG,
    error_lines,
    kill_once_started,
    main_in_process,
    record,
    run_cli,
    run_without_tensorflow,
    sweep_command,
    train_run,
)
from study_fixtures import sweep_in_process

from pipeline.runs import archive, rundir
from pipeline.tensorboard.board import TensorBoardServer


@pytest.fixture(scope="module")
def logdir(tmp_path_factory):
    """Two finished logreg runs: `base` (tagged and noted at start) and `other`."""
    logdir = tmp_path_factory.mktemp("managed")
    train_run(logdir, dataclasses.replace(LOGREG, tag=("baseline",), note="v1"), "base")
    train_run(logdir, dataclasses.replace(LOGREG, learning_rate=0.05), "other")
    return logdir


def runs(*args: str) -> subprocess.CompletedProcess:
    """`pipeline-runs ARGS`, its main in this process (it is TensorFlow-free;
    test_a_run_being_trained_is_refused_in_one_line and test_provenance.py
    run the real program)."""
    return main_in_process("pipeline-runs", *args)


def listed(proc: subprocess.CompletedProcess) -> dict[str, list[str]]:
    """`pipeline-runs list` output: run name -> its cells."""
    assert proc.returncode == 0, proc.stderr
    return {line.split()[0]: line.split() for line in proc.stdout.splitlines()[1:]}


def test_tags_and_notes_given_at_start_are_recorded(logdir):
    base = record(logdir / "base")
    assert base["config"]["tag"] == ["baseline"]
    assert base["config"]["note"] == "v1"
    assert "--tag=baseline\n" in (logdir / "base" / "flags.cfg").read_text()
    rows = listed(runs("list", str(logdir)))
    assert rows["base"][-1] == "baseline"
    assert rows["other"][-1] == "-"


def test_notes_and_tags_set_after_training_show_everywhere(logdir, tmp_path):
    other = logdir / "other"
    proc = runs("note", str(other), "lr 0.05: does the smaller step help?")
    assert proc.returncode == 0, proc.stderr
    proc = runs("tag", str(other), "exp1", "small-lr")
    assert proc.stdout.strip() == f"{other}: tags exp1,small-lr"
    proc = runs("tag", str(other), "--remove=small-lr")
    assert proc.stdout.strip() == f"{other}: tags exp1"
    assert record(other)["config"]["tag"] == ["exp1"]

    rows = listed(runs("list", str(logdir), "--tag=exp1"))
    assert list(rows) == ["other"]
    assert rows["other"][-1] == "exp1"
    with_notes = runs("list", str(logdir), "--tag=exp1", "--notes").stdout
    assert "    note: lr 0.05: does the smaller step help?" in with_notes

    compared = main_in_process("pipeline-compare", str(logdir), "--filter=tag==exp1")
    assert compared.returncode == 0, compared.stderr
    table = compared.stdout.splitlines()
    assert len(table) == 3  # header, rule, one row
    assert "0.05" in table[2]

    with TensorBoardServer(logdir) as server:
        texts = server.get("/data/plugin/text/text?run=other&tag=note")
        assert "does the smaller step help?" in texts[-1]["text"]
        assert "exp1" in texts[-1]["text"]
        experiment = server.get(
            "/data/plugin/hparams/experiment", {"experimentName": ""}
        )
        infos = {info["name"]: info for info in experiment["hparamInfos"]}
        assert infos["tag"]["type"] == "DATA_TYPE_STRING"
        sessions = {
            s["name"]: s for g in server.session_groups() for s in g["sessions"]
        }
        hparams = {g["name"]: g["hparams"] for g in server.session_groups()}
        assert set(sessions) == {"base", "other"}
        assert hparams[f"{logdir.name}/other"]["tag"] == "exp1"
        assert hparams[f"{logdir.name}/base"]["tag"] == "baseline"


def test_a_run_being_trained_is_refused_in_one_line(logdir):
    run = logdir / "base"
    before = (run / "run.json").read_bytes()
    with rundir.locked(run, "pipeline-train"):
        proc = run_cli("pipeline-runs", "note", str(run), "a note", timeout=120)
        archived = run_cli("pipeline-runs", "archive", str(run), timeout=120)
    assert proc.returncode == 1
    (line,) = error_lines(proc.stderr, "pipeline-runs")
    assert f"{run}: in use by pid" in line
    assert "(pipeline-train, since" in line
    assert archived.returncode == 1
    assert "in use by pid" in archived.stderr
    assert (run / "run.json").read_bytes() == before


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("note", "no-such-run", "x"), "no-such-run: no such run"),
        (("tag", "no-such-run", "x"), "no-such-run: no such run"),
        (("tag", "BASE", "two words"), "tag=two words: a tag is a word"),
        (("list", "/no/such/dir"), "/no/such/dir: no such directory"),
        (("list", "--since=yesterday"), "--since=yesterday: not a date"),
        (("diff", "BASE"), "diff RUN_A RUN_B: give two runs"),
        (("delete", "BASE"), "delete would remove 1 run(s)"),
        (("frobnicate",), "unknown command 'frobnicate'"),
    ],
)
def test_bad_input_is_one_line_and_changes_nothing(logdir, args, message):
    before = (logdir / "base" / "run.json").read_bytes()
    args = [str(logdir / "base") if a == "BASE" else a for a in args]
    proc = main_in_process("pipeline-runs", *args)
    assert proc.returncode == 1
    (line,) = error_lines(proc.stderr, "pipeline-runs")
    assert message in line
    assert "Traceback" not in proc.stderr
    assert (logdir / "base" / "run.json").read_bytes() == before


def test_list_filters_by_status_and_time(logdir):
    assert set(listed(runs("list", str(logdir), "--status=completed"))) == {
        "base",
        "other",
    }
    assert listed(runs("list", str(logdir), "--status=failed")) == {}
    assert set(listed(runs("list", str(logdir), "--since=1d"))) == {"base", "other"}
    assert listed(runs("list", str(logdir), "--since=2999-01-01")) == {}


def test_list_and_diff_never_import_tensorflow(logdir):
    for args in (["list", str(logdir)], ["diff", *map(str, [logdir / "base"] * 2)]):
        proc, attempted = run_without_tensorflow("pipeline-runs", *args, timeout=60)
        assert (proc.returncode, attempted) == (0, []), proc.stderr
        assert "base" in proc.stdout


def test_runs_from_before_these_fields_load_list_diff_and_compare(logdir, tmp_path):
    old = tmp_path / "old"
    shutil.copytree(logdir / "other", old / "legacy")
    data = record(old / "legacy")
    data.pop("sessions")
    for key in ("note", "tag"):
        data["config"].pop(key)
    (old / "legacy" / "run.json").write_text(json.dumps(data))
    rows = listed(runs("list", str(old)))
    assert rows["legacy"][-2:] == ["-", "-"]
    diff = runs("diff", str(old / "legacy"), str(logdir / "base"))
    assert diff.returncode == 0, diff.stderr
    assert "A: not recorded (run made before code was recorded)" in diff.stdout
    assert "A: no environment recorded" in diff.stdout
    assert "--learning_rate: 0.05 -> 0.1" in diff.stdout
    compared = main_in_process("pipeline-compare", str(old))
    assert compared.returncode == 0, compared.stderr
    tagged = runs("tag", str(old / "legacy"), "rescued")
    assert tagged.returncode == 0, tagged.stderr
    assert record(old / "legacy")["config"]["tag"] == ["rescued"]


def test_archive_moves_out_of_the_logdir_and_delete_removes(logdir, tmp_path):
    # Three finished runs of its own: copies of `other` (a run is its folder).
    source, logdir = logdir / "other", tmp_path / "logs"
    for name in ("keep", "old", "gone"):
        shutil.copytree(source, logdir / name)
    proc = runs("archive", str(logdir / "old"))
    assert proc.returncode == 0, proc.stderr
    target = tmp_path / "logs.archive" / "old"
    assert proc.stdout.strip() == f"archived {logdir / 'old'} -> {target}"
    assert record(target)["status"] == "completed"
    assert not (logdir / "old").exists()
    assert set(listed(runs("list", str(logdir)))) == {"keep", "gone"}
    proc = runs("delete", str(logdir / "gone"), "--yes")
    assert proc.returncode == 0, proc.stderr
    assert not (logdir / "gone").exists()
    manifest = json.loads((logdir / archive.MANIFEST_NAME).read_text())["runs"]
    assert manifest["old"]["action"] == "archived"
    assert manifest["old"]["to"] == str(target)
    assert manifest["old"]["status"] == "completed"
    assert manifest["gone"]["action"] == "deleted"
    again = runs("archive", str(target))
    assert again.returncode == 1
    assert f"{target}: already in an archive folder" in again.stderr


@pytest.mark.slow
def test_an_archived_trial_is_not_trained_again_and_the_study_counts_it(tmp_path):
    experiment = tmp_path / "swept"
    args = ["--grid=learning_rate=0.1,0.05", "--sweep_name=swept", "--tag=swept"]
    process = subprocess.Popen(
        sweep_command(tmp_path, *args, "--steps=1000000", "--eval_every=0"),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    # The grid sampler picks either point first: kill the sweep in that one.
    deadline = time.monotonic() + 120
    while not list(experiment.glob("*/train")) and time.monotonic() < deadline:
        time.sleep(0.2)
    first = next(experiment.glob("*/train"), experiment / "none").parent
    kill_once_started(process, first, "the first run")
    second = (
        {"learning_rate=0.1,seed=0", "learning_rate=0.05,seed=0"} - {first.name}
    ).pop()
    # The user archives the half-done run of the killed sweep.
    proc = runs("archive", str(first))
    assert proc.returncode == 0, proc.stderr
    assert not first.exists()

    # In this process (test_sweep_warm's crashed sweep is the process that
    # exits 1 for a failed trial).
    resumed = sweep_in_process(tmp_path, *args)
    # The sweep says which trial ended without a value, and why, as it does
    # for every failed trial (exit 1): the user's archive, not a crash.
    assert resumed.returncode == 1
    (line,) = error_lines(resumed.stderr, "pipeline-sweep")
    assert line.endswith(f"({first.name}): archived by the user")
    assert f"{first}: archived; not trained again" in resumed.stdout
    assert not first.exists()
    assert not list(experiment.glob(f"{first.name}*"))
    assert record(experiment / second)["status"] == "completed"
    # A tag given to the sweep is on every run it trains.
    assert record(experiment / second)["config"]["tag"] == ["swept"]
    summary = main_in_process("pipeline-compare", str(experiment))
    assert summary.returncode == 0, summary.stderr
    # The killed trial's retry failed (archived), the other completed; the
    # first, retried attempt is not counted again.
    assert "1 completed, 0 diverged, 0 pruned, 1 failed, 0 running" in summary.stdout


def test_diff_names_only_the_flags_that_apply_and_differ(tmp_path):
    from pipeline.runs import rundiff

    def mlp(**changes):
        config = {"model": "mlp", "steps": 20, "epochs": 0, "hidden_units": 30}
        config.update(changes)
        return rundir.RunRecord(tmp_path / "run.json", {"config": config})

    lines = rundiff.flag_lines(
        mlp(conv_filters=[4, 8], note="a", tag=["x"]),
        mlp(conv_filters=[16, 32], hidden_units=64, note="b", tag=["y"]),
    )
    # conv_filters means nothing to an MLP; note and tags are not flags of the math.
    assert lines == ["  --hidden_units: 30 -> 64"]
