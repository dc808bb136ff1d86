"""Runs you can trust after anything: damage a finished run, then use it.

A fault-injection layer over the real programs. Each test damages a copy of a
real run (checkpoints, state file, record, lock, disk) the way a crash, a
full disk or a careless user would, runs the program, and checks the outcome
from the outside: the exit code, the one line it prints, the run's recorded
status, the TensorBoard series read back with TensorBoard's own loader, and
that no checkpoint was lost. Rules (which checkpoint, which record, a
read-only or full disk under eval) run the program's main in this process
(`conftest.main_in_process`); each program's error exit (once before
TensorFlow loads, and for eval, export and train once after), a lock held
by another process, the lock race, the training disk faults, the file-size
limit and the kill run the real console script in a subprocess.
"""

from __future__ import annotations

import contextlib
import csv
import fcntl
import json
import os
import pathlib
import resource
import shutil
import struct
import subprocess
import zlib

import pytest
from conftest import (
    cli_command,
    cli_env,
    copy_run,
    main_in_process,
    raw_step_counts,
    record,
    run_cli,
    snapshot,
    tensor_series,
)

LATEST, EARLIER = 30, 20  # the mlp run saves ckpt-10, -20, -30 (KINDS["mlp"])


def saved_steps(run: pathlib.Path) -> list[int]:
    """Steps of the checkpoints whose every tensor reads back."""
    import tensorflow as tf

    steps = []
    for index in (run / "checkpoints").glob("ckpt-*.index"):
        prefix = str(index.with_suffix(""))
        reader = tf.train.load_checkpoint(prefix)
        for key, dtype in reader.get_variable_to_dtype_map().items():
            if dtype != tf.variant:
                reader.get_tensor(key)
        steps.append(int(index.stem.split("-")[1]))
    return sorted(steps)


def ckpt_files(run: pathlib.Path, step: int) -> list[pathlib.Path]:
    return sorted((run / "checkpoints").glob(f"ckpt-{step}.*"))


def data_file(run: pathlib.Path, step: int) -> pathlib.Path:
    return run / "checkpoints" / f"ckpt-{step}.data-00000-of-00001"


def _truncate(run, _):
    path = data_file(run, LATEST)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _garble(run, _):
    path = data_file(run, LATEST)
    payload = bytearray(path.read_bytes())
    payload[len(payload) // 3 : len(payload) // 3 + 64] = b"\xa5" * 64
    path.write_bytes(bytes(payload))


def _copy_as_latest(source_run, source_step, run):
    for path in ckpt_files(run, LATEST):
        path.unlink()
    for path in ckpt_files(source_run, source_step):
        suffix = path.name.split(".", 1)[1]
        shutil.copy(path, run / "checkpoints" / f"ckpt-{LATEST}.{suffix}")


def _garble_first_tensors(run, _):
    # Tensors sit in the data file in key order, right after the small object
    # graph (checkpoints of older runs held the data iterator's state here).
    path = data_file(run, LATEST)
    payload = bytearray(path.read_bytes())
    start = len(payload) // 20
    payload[start : start + 64] = b"\x5a" * 64
    path.write_bytes(bytes(payload))


# Damage to the newest checkpoint -> words the skip line must contain.
DAMAGES = {
    "truncated_data": (_truncate, "Read less bytes than requested"),
    "garbled_data": (_garble, "does not match"),  # a checksum, worded by where
    "garbled_first_tensors": (_garble_first_tensors, "does not match"),
    "zero_byte_data": (
        lambda run, _: data_file(run, LATEST).write_bytes(b""),
        "is empty (0 bytes)",
    ),
    "zero_byte_index": (
        lambda run, _: (run / "checkpoints" / f"ckpt-{LATEST}.index").write_bytes(b""),
        "is empty (0 bytes)",
    ),
    "missing_index": (
        lambda run, _: (run / "checkpoints" / f"ckpt-{LATEST}.index").unlink(),
        "no .index file",
    ),
    "step_counter_disagrees": (
        lambda run, _: _copy_as_latest(run, 10, run),
        f"holds step 10, not the {LATEST} its name says",
    ),
    "other_model_family": (
        lambda run, other: _copy_as_latest(other, 20, run),
        "does not fit this run's model",
    ),
}


def damaged_copy(mlp_run, binary_run, tmp_path, damage: str) -> pathlib.Path:
    run = copy_run(mlp_run, tmp_path)
    DAMAGES[damage][0](run, binary_run)
    return run


def only_line(stderr: str, prefix: str) -> str:
    lines = [line for line in stderr.splitlines() if line.startswith(prefix)]
    assert len(lines) == 1, stderr
    return lines[0]


def assert_one_error(result, prog: str, *fragments: str) -> str:
    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    assert "Traceback" not in output, output
    line = only_line(result.stderr, f"{prog}: error: ")
    for fragment in fragments:
        assert fragment in line, line
    return line


# --- checkpoint choice --------------------------------------------------------


@pytest.mark.parametrize("damage", sorted(DAMAGES))
def test_damaged_latest_checkpoint_is_skipped_with_one_line(
    mlp_run, binary_run, tmp_path, damage
):
    run = damaged_copy(mlp_run, binary_run, tmp_path, damage)
    result = main_in_process(
        "pipeline-eval", f"--run={run}", "--format=json", "--nowrite_summaries"
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["step"] == EARLIER
    line = only_line(result.stderr, "pipeline-eval: warning: ")
    assert line.startswith(
        f"pipeline-eval: warning: skipped checkpoint {run}/checkpoints/ckpt-{LATEST}: "
    )
    assert DAMAGES[damage][1] in line


def test_eval_predict_and_export_choose_the_same_checkpoint(
    mlp_run, binary_run, tmp_path
):
    """The rule, through each program's main in this process (each exits 0
    in a real process in test_console.py, test_predict.py, test_export.py)."""
    run = damaged_copy(mlp_run, binary_run, tmp_path, "truncated_data")
    evaluated = main_in_process(
        "pipeline-eval", f"--run={run}", "--format=json", "--nowrite_summaries"
    )
    predicted = main_in_process(
        "pipeline-predict", f"--run={run}", "--index=0", "--format=json"
    )
    exported = main_in_process(
        "pipeline-export", f"--run={run}", f"--out={tmp_path / 'm'}"
    )
    skip = f"skipped checkpoint {run}/checkpoints/ckpt-{LATEST}: "
    for result, prog in (
        (evaluated, "pipeline-eval"),
        (predicted, "pipeline-predict"),
        (exported, "pipeline-export"),
    ):
        assert result.returncode == 0, result.stderr
        assert "Traceback" not in result.stderr
        assert only_line(result.stderr, f"{prog}: warning: ").startswith(
            f"{prog}: warning: {skip}"
        )
    assert json.loads(evaluated.stdout)["step"] == EARLIER
    assert json.loads(predicted.stdout)["step"] == EARLIER
    assert f"step {EARLIER} -> " in exported.stdout
    metadata = json.loads((tmp_path / "m" / "pipeline_export.json").read_text())
    assert metadata["step"] == EARLIER


def test_checkpoint_beyond_the_runs_steps_is_not_the_runs(mlp_run, tmp_path):
    run = copy_run(mlp_run, tmp_path)
    for path in ckpt_files(run, LATEST):
        suffix = path.name.split(".", 1)[1]
        shutil.copy(path, run / "checkpoints" / f"ckpt-90.{suffix}")
    (run / "checkpoints" / "ckpt-40_temp").mkdir()
    result = main_in_process("pipeline-eval", f"--run={run}", "--format=json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["step"] == LATEST
    line = only_line(result.stderr, "pipeline-eval: warning: ")
    assert "ckpt-90: step 90 is beyond the run's --steps=30" in line


def test_no_restorable_checkpoint_is_one_line_naming_the_directory(mlp_run, tmp_path):
    run = copy_run(mlp_run, tmp_path)
    for step in (10, 20, 30):
        data_file(run, step).write_bytes(b"")
    result = main_in_process(
        "pipeline-export", f"--run={run}", f"--out={tmp_path / 'm'}"
    )
    assert_one_error(
        result,
        "pipeline-export",
        f"{run}/checkpoints: none of its 3 checkpoint(s) restores",
    )
    assert not (tmp_path / "m").exists()


def test_requested_damaged_checkpoint_is_an_error_not_a_substitute(mlp_run, tmp_path):
    run = copy_run(mlp_run, tmp_path)
    _truncate(run, None)
    # The real program: an error after TensorFlow has loaded is still its
    # one line past the stderr filter, exit 1.
    result = run_cli("pipeline-eval", f"--run={run}", f"--checkpoint={LATEST}")
    assert_one_error(result, "pipeline-eval", f"--checkpoint={LATEST}: ")


# --- resume -------------------------------------------------------------------


def _series_steps(split_dir: pathlib.Path, tag: str) -> list[int]:
    return [step for step, _ in tensor_series(split_dir)[tag]]


def test_resume_skips_a_truncated_latest_checkpoint_and_continues(
    mlp_run, binary_run, tmp_path
):
    run = damaged_copy(mlp_run, binary_run, tmp_path, "truncated_data")
    result = main_in_process("pipeline-train", "--resume", f"--run={run}", "--steps=40")
    assert result.returncode == 0, result.stderr
    warning = only_line(result.stdout, "warning: ")
    assert warning.startswith(f"warning: skipped checkpoint {run}/checkpoints/ckpt-30")
    assert f"resuming mlp from step {EARLIER}" in result.stdout
    assert record(run)["status"] == "completed"
    assert record(run)["resumes"][-1]["from_step"] == EARLIER
    # TensorBoard's loader shows every evaluation once, in order, and the
    # resumed run's step-30 checkpoint replaced the damaged one.
    assert _series_steps(run / "test", "accuracy") == [10, 20, 30, 40]
    assert saved_steps(run)[-2:] == [30, 40]


def test_finished_run_with_a_garbled_latest_resumes_by_the_same_rule(
    mlp_run, binary_run, tmp_path
):
    """One rule for "the latest checkpoint": the pre-check of `--resume`, the
    resume itself and eval all take ckpt-20 when a finished run's ckpt-30 is
    garbled, so the same --steps trains 20 -> 30 again instead of being
    refused as "nothing to train"."""
    run = damaged_copy(mlp_run, binary_run, tmp_path, "garbled_data")
    before = main_in_process(
        "pipeline-eval", f"--run={run}", "--format=json", "--nowrite_summaries"
    )
    assert json.loads(before.stdout)["step"] == EARLIER, before.stderr
    result = main_in_process(
        "pipeline-train", "--resume", f"--run={run}", f"--steps={LATEST}"
    )
    assert result.returncode == 0, result.stdout + result.stderr
    warning = only_line(result.stdout, "warning: ")
    assert warning.startswith(f"warning: skipped checkpoint {run}/checkpoints/ckpt-30")
    assert f"resuming mlp from step {EARLIER}" in result.stdout
    assert record(run)["status"] == "completed"
    assert record(run)["resumes"][-1]["from_step"] == EARLIER
    assert saved_steps(run)[-1] == LATEST
    after = main_in_process(
        "pipeline-eval", f"--run={run}", "--format=json", "--nowrite_summaries"
    )
    assert after.returncode == 0, after.stderr
    assert json.loads(after.stdout)["step"] == LATEST
    assert "warning" not in after.stderr


def test_an_intact_checkpoint_of_another_model_stops_eval_and_resume_alike(
    mlp_run, binary_run, tmp_path
):
    """Not damage to skip: eval and the resume both name it, in one line."""
    run = copy_run(mlp_run, tmp_path)
    for path in ckpt_files(run, LATEST) + ckpt_files(run, EARLIER):
        path.unlink()
    for path in ckpt_files(binary_run, EARLIER):  # the same step, another model
        suffix = path.name.split(".", 1)[1]
        shutil.copy(path, run / "checkpoints" / f"ckpt-{EARLIER}.{suffix}")
    misfit = f"{run}/checkpoints/ckpt-{EARLIER}: does not fit this run's model ("
    evaluated = main_in_process("pipeline-eval", f"--run={run}", "--nowrite_summaries")
    assert evaluated.returncode == 1
    assert misfit in only_line(evaluated.stderr, "pipeline-eval: error: ")
    resumed = main_in_process(
        "pipeline-train", "--resume", f"--run={run}", "--steps=40"
    )
    assert resumed.returncode == 1
    assert misfit in only_line(resumed.stderr, "pipeline-train: error: ")
    assert "Traceback" not in resumed.stderr
    assert saved_steps(run) == [10, EARLIER]


@pytest.mark.parametrize(
    "state",
    [None, b"\x00\xffgarbage{{{", b'model_checkpoint_path: "ckpt-0"\n'],
    ids=["missing", "garbled", "points_at_step_0"],
)
def test_resume_without_a_trustworthy_state_file_continues_from_the_files(
    mlp_run, tmp_path, state
):
    run = copy_run(mlp_run, tmp_path)
    state_file = run / "checkpoints" / "checkpoint"
    state_file.unlink()
    if state is not None:
        state_file.write_bytes(state)
    (run / "flags.cfg").write_bytes(b"--no_such_flag=\xff\n\x00garbage")
    result = main_in_process("pipeline-train", "--resume", f"--run={run}", "--steps=40")
    assert result.returncode == 0, result.stderr
    assert f"resuming mlp from step {LATEST}" in result.stdout
    assert record(run)["status"] == "completed"
    assert _series_steps(run / "test", "accuracy") == [10, 20, 30, 40]
    assert "--steps=40" in (run / "flags.cfg").read_text()


def test_resume_with_no_restorable_checkpoint_leaves_the_run_as_it_was(
    mlp_run, tmp_path
):
    run = copy_run(mlp_run, tmp_path)
    for step in (10, 20, 30):
        (run / "checkpoints" / f"ckpt-{step}.index").unlink()
    before = snapshot(run)
    result = main_in_process("pipeline-train", "--resume", f"--run={run}", "--steps=40")
    assert_one_error(
        result, "pipeline-train", f"{run}/checkpoints: none of its 3 checkpoint(s)"
    )
    after = snapshot(run)
    after.pop("run.lock", None)  # held while it tried
    assert after == before
    assert record(run)["status"] == "completed"


# --- the lock -------------------------------------------------------------------


@pytest.mark.slow
def test_two_resumes_started_together_train_the_run_once(mlp_run, tmp_path):
    run = copy_run(mlp_run, tmp_path)
    env = cli_env()
    command = [*cli_command("pipeline-train"), "--resume", f"--run={run}", "--steps=60"]
    procs = [
        subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
        )
        for _ in range(2)
    ]
    results = [(*p.communicate(timeout=300), p.returncode) for p in procs]
    results = [(code, out, err) for out, err, code in results]
    codes = sorted(code for code, _, _ in results)
    assert codes == [0, 1], results
    _, _, stderr = next(r for r in results if r[0] == 1)
    line = only_line(stderr, "pipeline-train: error: ")
    assert line.startswith(f"pipeline-train: error: {run}: in use by pid ")
    assert "pipeline-train --resume" in line
    assert record(run)["status"] == "completed"
    for split in ("train", "test"):
        steps = [s for s, _ in _points(run / split)]
        assert steps == sorted(set(steps)), split
    assert _series_steps(run / "test", "accuracy") == [10, 20, 30, 40, 50, 60]
    assert max(raw_step_counts(run / "test").values()) == 1


def _points(split_dir):
    return tensor_series(split_dir)["loss"]


@contextlib.contextmanager
def held_by_this_process(directory: pathlib.Path, program: str):
    """Holds `directory/run.lock` as a writing pipeline process would."""
    with open(directory / "run.lock", "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        lock.truncate(0)
        lock.write(f"pid {os.getpid()} on {os.uname().nodename} ({program}, since now)")
        lock.flush()
        yield f"in use by pid {os.getpid()} on "


def test_eval_writing_into_a_run_in_use_is_refused(mlp_run, tmp_path):
    run = copy_run(mlp_run, tmp_path)
    with held_by_this_process(run, "pipeline-train") as holder:
        result = run_cli("pipeline-eval", f"--run={run}")
    assert_one_error(result, "pipeline-eval", f"{run}: {holder}")
    assert not (run / "eval").exists()


def test_resume_through_a_symlink_sees_the_lock_of_the_real_directory(
    mlp_run, tmp_path
):
    run = copy_run(mlp_run, tmp_path / "real")
    link = tmp_path / "link"
    link.symlink_to(run)
    with held_by_this_process(run, "pipeline-train") as holder:
        result = run_cli("pipeline-train", "--resume", f"--run={link}", "--steps=40")
    assert_one_error(result, "pipeline-train", holder)
    assert record(run)["status"] == "completed"


# --- malformed records ----------------------------------------------------------

RECORDS = {
    "a_list": (b"[1, 2, 3]\n", "not a run record (a JSON list, not an object)"),
    "a_string": (b'"completed"\n', "not a run record (a JSON str, not an object)"),
    "empty": (b"", "unreadable"),
    "not_utf8": (b'{"status": "\xff"}', "unreadable"),
    "unknown_status": (b'{"status": 5}', "unknown status 5"),
    "config_a_list": (b'{"status": "completed", "config": []}', "'config' is a list"),
    "steps_a_string": (
        b'{"status": "completed", "config": {"steps": "many"}}',
        "saved config has steps='many' (str), not a valid --steps",
    ),
}


STRICT_READERS = [
    "pipeline-eval",
    "pipeline-export",
    "pipeline-predict",
    "pipeline-train",
]


def _read_malformed_record(run_program, mlp_run, tmp_path, kind, prog) -> None:
    run = copy_run(mlp_run, tmp_path)
    payload, words = RECORDS[kind]
    (run / "run.json").write_bytes(payload)
    args = {
        "pipeline-eval": [],
        "pipeline-export": [f"--out={tmp_path / 'm'}"],
        "pipeline-predict": ["--index=0"],
        "pipeline-train": ["--resume", "--steps=40"],
    }[prog]
    result = run_program(prog, f"--run={run}", *args)
    assert_one_error(result, prog, f"{run}/run.json: {words}")
    assert (run / "run.json").read_bytes() == payload


@pytest.mark.parametrize("kind", sorted(RECORDS))
@pytest.mark.parametrize("prog", STRICT_READERS)
def test_malformed_record_is_one_line_for_strict_readers(mlp_run, tmp_path, kind, prog):
    """Every damage x every reader, through each program's main in this process."""
    _read_malformed_record(main_in_process, mlp_run, tmp_path, kind, prog)


@pytest.mark.parametrize(
    ("prog", "kind"),
    list(
        zip(
            STRICT_READERS,
            ["a_list", "empty", "unknown_status", "steps_a_string"],
            strict=True,
        )
    ),
)
def test_malformed_record_in_the_real_program_exits_1_with_one_line(
    mlp_run, tmp_path, kind, prog
):
    """Each reader once as its own process: exit 1, the line past the stderr filter."""
    _read_malformed_record(run_cli, mlp_run, tmp_path, kind, prog)


def test_record_that_is_a_directory(mlp_run, tmp_path):
    run = copy_run(mlp_run, tmp_path)
    (run / "run.json").unlink()
    (run / "run.json").mkdir()
    result = main_in_process("pipeline-eval", f"--run={run}")
    assert_one_error(result, "pipeline-eval", "is a directory, not a run record")


def test_compare_skips_a_damaged_run_and_tables_the_rest(mlp_run, tmp_path):
    logdir = tmp_path / "logs"
    good = copy_run(mlp_run, logdir)
    bad = copy_run(mlp_run, logdir / "more")
    (bad / "run.json").write_text("[]\n")
    result = main_in_process("pipeline-compare", str(logdir), "--format=csv")
    assert result.returncode == 0, result.stderr
    line = only_line(result.stderr, "pipeline-compare: warning: ")
    assert line == (
        f"pipeline-compare: warning: skipped {bad}/run.json: not a run record "
        "(a JSON list, not an object)"
    )
    rows = result.stdout.strip().splitlines()
    assert len(rows) == 2, result.stdout  # header + the good run's variant
    (row,) = csv.DictReader(rows)
    assert (row["runs"], row["repeats"]) == (str(good), "1")


# --- input limits ---------------------------------------------------------------


def test_run_name_longer_than_the_filesystem_allows_is_one_line(tmp_path):
    name = "a" * 300
    result = main_in_process(
        "pipeline-train", f"--logdir={tmp_path}", f"--run_name={name}"
    )
    limit = os.pathconf(tmp_path, "PC_NAME_MAX") - 24
    assert_one_error(
        result, "pipeline-train", f"--run_name: 300 bytes long; at most {limit} fit"
    )
    assert list(tmp_path.iterdir()) == []


def test_sweep_whose_run_names_would_not_fit_is_refused(tmp_path):
    long_value = "1" + "0" * 240
    result = main_in_process(
        "pipeline-sweep",
        f"--logdir={tmp_path}",
        "--sweep_name=long",
        f"--grid=steps={long_value}",
        "--model=logreg",
    )
    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    assert "Traceback" not in output
    line = only_line(result.stderr, "pipeline-sweep: error: ")
    assert line.startswith("pipeline-sweep: error: --grid (run name steps=1000")
    assert "254 bytes long; at most" in line
    assert not (tmp_path / "long").exists()


def test_sweep_name_too_long_is_one_line(tmp_path):
    result = main_in_process(
        "pipeline-sweep",
        f"--logdir={tmp_path}",
        f"--sweep_name={'s' * 260}",
        "--grid=learning_rate=0.1,0.2",
        "--model=logreg",
    )
    assert_one_error(result, "pipeline-sweep", "--sweep_name: 260 bytes long")


def _png_header_only(path: pathlib.Path, width: int, height: int) -> None:
    """A valid PNG that claims `width` x `height` 1-bit pixels: a few bytes on
    disk, gigabytes if decoded."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    row = b"\x00" + b"\x00" * ((width + 7) // 8)
    idat = zlib.compress(row * 16, 9)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", idat)
        + chunk(b"IEND", b"")
    )


@pytest.mark.parametrize(
    ("side", "words"),
    [
        (5000, "5000x5000 image is 25,000,000 pixels, over the limit of 16,777,216"),
        (60000, "refused: Pillow considers it a decompression bomb"),
    ],
)
def test_oversized_image_is_refused_before_decoding(mlp_run, tmp_path, side, words):
    image = tmp_path / "bomb.png"
    _png_header_only(image, side, side)
    result = main_in_process("pipeline-predict", f"--run={mlp_run}", f"--image={image}")
    assert_one_error(result, "pipeline-predict", f"{image}: {words}")


# --- diverging weights ------------------------------------------------------------


def test_weights_diverging_between_histograms_are_one_line_not_a_graph_error(
    tmp_path,
):
    """Histograms at every step see the weights turn Inf/NaN before the loss
    does; the run still ends with the pipeline's own line."""
    result = main_in_process(
        "pipeline-train",
        "--flagfile=flags/mlp_relu_10x30.cfg",
        "--learning_rate=5",
        "--steps=300",
        "--histogram_every=1",
        f"--logdir={tmp_path}",
        "--run_name=diverged",
    )
    assert_one_error(result, "pipeline-train", "weights are NaN/Inf at step")
    assert "bincount" not in result.stderr
    assert record(tmp_path / "diverged")["status"] == "diverged"


# --- full disks, read-only and size-limited filesystems -------------------------


@contextlib.contextmanager
def tmpfs(path: pathlib.Path, size: str, readonly: bool = False):
    """A tmpfs of `size` mounted at `path` (needs root)."""
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a tmpfs needs root")
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
        capture_output=True,
        check=False,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def remount_readonly(path: pathlib.Path) -> None:
    subprocess.run(["mount", "-o", "remount,ro", str(path)], check=True)


def fill(path: pathlib.Path, leave: int = 0) -> None:
    """Fills the filesystem at `path` to its last byte (less `leave`)."""
    with (
        open(path / "filler", "wb", buffering=0) as filler,
        contextlib.suppress(OSError),
    ):
        while True:
            filler.write(b"\0" * 4096)
    if leave:
        os.truncate(path / "filler", max(0, (path / "filler").stat().st_size - leave))


def empty_files(root: pathlib.Path) -> list[str]:
    return [
        str(p)
        for p in root.rglob("*")
        if p.is_file() and p.stat().st_size == 0 and p.name != "run.lock"
    ]


def train_writing_histograms_every_step(
    logdir: pathlib.Path, run_name: str, **kwargs
) -> subprocess.CompletedProcess:
    """A 4000-step MLP run whose histograms at every step write megabytes of
    events long before its only checkpoint (at the end)."""
    return run_cli(
        "pipeline-train",
        f"--logdir={logdir}",
        f"--run_name={run_name}",
        "--model=mlp",
        "--hidden_units=256",
        "--steps=4000",
        "--batch_size=8",
        "--checkpoint_every=0",
        "--eval_every=0",
        "--histogram_every=1",
        "--print_every=5",
        "--image_count=0",
        timeout=300,
        **kwargs,
    )


@pytest.mark.slow
def test_full_disk_during_event_writes_is_one_line_and_leaves_no_empty_file(
    tmp_path,
):
    with tmpfs(tmp_path / "disk", "384k") as disk:
        # Histograms at every step fill 384 KiB long before the only checkpoint
        # (the run's other files take ~100 KiB; the fuller, the sooner it fails).
        result = train_writing_histograms_every_step(disk, "full")
        line = assert_one_error(
            result, "pipeline-train", "cannot write (No space left on device)"
        )
        assert f"{disk}/full/train/events.out.tfevents." in line, line
        assert empty_files(disk) == []
        assert record(disk / "full")["status"] == "failed"


def _limit_file_size(limit: int):
    def apply():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return apply


@pytest.mark.slow
def test_file_size_limit_during_event_writes_records_the_run_failed(tmp_path):
    result = train_writing_histograms_every_step(
        tmp_path, "limited", preexec_fn=_limit_file_size(500_000)
    )
    line = assert_one_error(result, "pipeline-train", "cannot write (File too large)")
    assert f"{tmp_path}/limited/train/events.out.tfevents." in line
    assert record(tmp_path / "limited")["status"] == "failed"
    assert record(tmp_path / "limited")["error"] == line.removeprefix(
        "pipeline-train: error: "
    )
    assert empty_files(tmp_path) == []


@pytest.mark.slow
def test_export_onto_a_full_disk_is_one_line_and_leaves_nothing(mlp_run, tmp_path):
    with tmpfs(tmp_path / "disk", "256k") as disk:
        fill(disk, leave=8192)
        result = run_cli("pipeline-export", f"--run={mlp_run}", f"--out={disk}/model")
        assert_one_error(
            result, "pipeline-export", "cannot write (No space left on device)"
        )
        assert sorted(p.name for p in disk.iterdir()) == ["filler"]


def test_eval_into_a_read_only_run_is_one_line_and_changes_nothing(mlp_run, tmp_path):
    with tmpfs(tmp_path / "ro", "16m") as mount:
        run = copy_run(mlp_run, mount)
        remount_readonly(mount)
        result = main_in_process("pipeline-eval", f"--run={run}")
        assert_one_error(result, "pipeline-eval", "(Read-only file system)")
        assert not (run / "eval").exists()


def test_eval_onto_a_full_disk_leaves_no_empty_event_file(mlp_run, tmp_path):
    with tmpfs(tmp_path / "disk", "16m") as disk:
        run = copy_run(mlp_run, disk)
        fill(disk)
        result = main_in_process("pipeline-eval", f"--run={run}")
        assert_one_error(
            result, "pipeline-eval", "cannot write (No space left on device)"
        )
        assert empty_files(run) == []
        assert record(run)["status"] == "completed"


# --- kills at random moments ----------------------------------------------------


def restorable_steps(run: pathlib.Path) -> list[int]:
    """Steps of the checkpoints that restore completely (TensorFlow's reader)."""
    import tensorflow as tf

    steps = []
    for index in (run / "checkpoints").glob("ckpt-*.index"):
        try:
            reader = tf.train.load_checkpoint(str(index.with_suffix("")))
            for key, dtype in reader.get_variable_to_dtype_map().items():
                if dtype != tf.variant:
                    reader.get_tensor(key)
        except (tf.errors.OpError, ValueError):
            continue
        steps.append(int(index.stem.split("-")[1]))
    return sorted(steps)


@pytest.mark.slow
def test_resume_killed_at_a_random_moment_loses_no_checkpoint(mlp_run, tmp_path):
    """SIGKILL a resume at a random moment (start-up, restore, a chunk, a
    save, the record's rewrite): no restorable checkpoint is lost, the run's
    lock dies with the process, and a last resume finishes the run with every
    evaluation shown once by TensorBoard's loader. One kill a run: each kill
    draws its moment from the same range, so more rounds in one test only
    repeat the draw (FAULT_SEED=N replays one)."""
    import random
    import time

    seed = int(os.environ.get("FAULT_SEED", random.randrange(10**6)))
    rng = random.Random(seed)
    # Long enough that the killed life cannot finish before its kill, short
    # enough that the last resume's training stays a few seconds. Here a
    # life starts in ~4.5 s and trains 2,000 steps in ~7.5 s: the kill, 1-6 s
    # in, lands in start-up, restore or training even on a machine twice as
    # fast (kills up to 8 s in could come after a fast life had ended).
    total = 2000
    run = copy_run(mlp_run, tmp_path)
    args = ["--resume", f"--run={run}", f"--steps={total}", "--print_every=100"]
    newest = max(restorable_steps(run))
    proc = subprocess.Popen(
        [*cli_command("pipeline-train"), *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=cli_env(),
    )
    time.sleep(rng.uniform(1.0, 6.0))
    assert proc.poll() is None, f"FAULT_SEED={seed}: finished before the kill"
    proc.kill()
    proc.wait(timeout=30)
    saved = restorable_steps(run)
    assert saved, f"FAULT_SEED={seed}"
    assert max(saved) >= newest, f"FAULT_SEED={seed}: {saved}"
    # The last resume runs in this process: it takes the lock the killed
    # process held, so that lock died with it.
    result = main_in_process("pipeline-train", *args)
    assert result.returncode == 0, f"FAULT_SEED={seed}\n{result.stderr}"
    assert record(run)["status"] == "completed"
    steps = _series_steps(run / "test", "accuracy")
    assert steps == list(range(10, total + 1, 10)), f"FAULT_SEED={seed}"
    loss_steps = [s for s, _ in _points(run / "train")]
    assert loss_steps == sorted(set(loss_steps)), f"FAULT_SEED={seed}"
