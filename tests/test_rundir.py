"""Run directories: never overwritten, a record that tells the truth."""

import json

import pytest
from conftest import TINY, parse_train_flags

from pipeline import config as config_lib
from pipeline.runs import rundir


def test_existing_run_is_never_overwritten(tmp_path):
    rundir.create_run_dir(tmp_path, "r")
    (tmp_path / "r" / "keep").write_text("x")
    with pytest.raises(rundir.RunDirError, match="run already exists"):
        rundir.create_run_dir(tmp_path, "r")
    assert (tmp_path / "r" / "keep").read_text() == "x"


def test_unwritable_logdir_names_the_flag(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(rundir.RunDirError, match=r"--logdir=.*file/sub: cannot create"):
        rundir.create_run_dir(blocker / "sub", "r")


def test_saved_flagfile_reruns_the_same_config(tmp_path):
    config = config_lib.TrainConfig(
        model="cnn", conv_filters=(8, 16), binary_class=3, run_name="x"
    )
    run = rundir.create_run_dir(tmp_path, "r")
    (run.path / rundir.FLAGFILE_NAME).write_text(rundir.config_to_flagfile(config))
    flag_values = parse_train_flags(f"--flagfile={run.path / rundir.FLAGFILE_NAME}")
    assert config_lib.config_from_flags(flag_values) == config_lib.TrainConfig(
        model="cnn", conv_filters=(8, 16), binary_class=3
    )


def test_record_status_moves_from_running_to_completed(tmp_path):
    run = rundir.create_run_dir(tmp_path, "r")
    run.start(TINY, {"name": "mnist_sample"})
    assert run.status == "running"
    run.finish("completed", step=3)
    record = json.loads(run.record_path.read_text())
    assert record["status"] == "completed"
    assert record["step"] == 3
    assert record["end_time"] >= record["start_time"]
    assert not list(tmp_path.glob("r/.run.json.*"))


def test_default_run_name_is_model_and_timestamp():
    import datetime

    name = rundir.default_run_name(TINY, datetime.datetime(2026, 1, 2, 3, 4, 5))
    assert name == "cnn-20260102-030405"


def test_a_record_from_before_a_field_took_a_list_still_loads(tmp_path):
    saved = config_lib.config_to_dict(TINY)
    saved["dense_dropout"] = 0.25  # how runs recorded it before
    (tmp_path / "run.json").write_text(
        json.dumps({"status": "completed", "config": saved})
    )
    record = rundir.load_record(tmp_path)
    assert config_lib.config_from_dict(record.config).dense_dropout == (0.25,)


def test_mark_failed_records_the_failure_and_closes_the_session_once(tmp_path):
    """One "mark failed" for the loop and the sweep: the record and the HParams
    session say `failed`; a sweep never turns a run that ended into a failure."""
    from pipeline.tensorboard import hparams

    run = rundir.create_run_dir(tmp_path, "r")
    run.update_record(status="running", pid=1)
    hparams.write_session_start(run.path, TINY)
    closed = []

    def end_session(path, status, reason):
        closed.append((path, status, reason))
        hparams.write_session_end(path, status, reason)

    assert run.mark_failed("it died", step=7, end_session=end_session)
    saved = json.loads((run.path / "run.json").read_text())
    assert (saved["status"], saved["error"], saved["step"]) == ("failed", "it died", 7)
    assert closed == [(run.path, "failed", "it died")]
    assert list(run.path.glob("*.session_end"))

    done = rundir.create_run_dir(tmp_path, "done")
    done.update_record(status="running")
    done.finish("completed")
    assert not rundir.RunDir(done.path).mark_failed("late", end_session=end_session)
    assert rundir.load_record(done.path).status == "completed"
    assert len(closed) == 1


def test_a_lock_holder_reads_its_record_once(tmp_path):
    """The lock holder is the record's only writer: after the read that
    follows `lock`, what it wrote is what it reads (no re-read of run.json)."""
    run = rundir.create_run_dir(tmp_path, "r")
    run.lock("test")
    try:
        run.start(TINY, {"name": "mnist_sample"}, precision={"policy": "float32"})
        (run.path / "run.json").write_text("[]")  # only a rogue writer does this
        assert run.record().status == "running"
        assert run.record().data["precision"] == {"policy": "float32"}
        run.lock("test")  # held already: still re-reads afterwards
        with pytest.raises(rundir.RecordError, match="not a run record"):
            run.record()
    finally:
        rundir.release_lock(run.path)
