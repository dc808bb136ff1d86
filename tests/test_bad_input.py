"""Bad input -> one clear line naming the culprit, non-zero exit, nothing lost.

Each case runs `pipeline-train`'s own parser and main next to an existing,
completed run and checks that the run's files (checkpoints included) are
byte-for-byte unchanged and that no new run directory appeared. The matrix
runs in this process (`conftest.main_in_process`: milliseconds a case, not a
subprocess each); one case per way of refusing also runs the real program in
a subprocess, to prove its exit status and that its one line survives the
stderr filter.
"""

from __future__ import annotations

import gzip
import os
import pathlib
import shutil
import struct
import subprocess

import numpy as np
import pytest
from conftest import (
    config_from_argv,
    main_in_process,
    record,
    run_cli,
    train_run,
    tree_digest,
)

EXISTING = "existing"


def _idx(magic: int, array: np.ndarray) -> bytes:
    header = struct.pack(">I", magic) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(np.uint8).tobytes()


def _idx_dir(root: pathlib.Path, name: str, images: bytes, labels: bytes, gz=True):
    directory = root / name
    directory.mkdir()
    suffix = ".gz" if gz else ""
    for stem, payload in (
        ("train-images-idx3-ubyte", images),
        ("train-labels-idx1-ubyte", labels),
        ("t10k-images-idx3-ubyte", images),
        ("t10k-labels-idx1-ubyte", labels),
    ):
        data = gzip.compress(payload) if gz else payload
        (directory / (stem + suffix)).write_bytes(data)
    return directory


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """A logdir with one completed run, and a directory of broken inputs."""
    root = tmp_path_factory.mktemp("bad_input")
    logdir = root / "logs"
    # What `pipeline-train` trains from these flags, trained in this process.
    config = config_from_argv(
        "--model=logreg",
        "--steps=10",
        "--batch_size=16",
        "--checkpoint_every=5",
        "--eval_every=5",
        "--image_count=0",
    )
    train_run(logdir, config, EXISTING)
    assert record(logdir / EXISTING)["status"] == "completed"

    images = np.zeros((5, 28, 28), np.uint8)
    labels = np.arange(5, dtype=np.uint8)
    good_images, good_labels = _idx(0x803, images), _idx(0x801, labels)
    truncated = _idx_dir(root, "truncated", good_images, good_labels)
    gz = (truncated / "train-images-idx3-ubyte.gz").read_bytes()
    (truncated / "train-images-idx3-ubyte.gz").write_bytes(gz[: len(gz) // 2])
    _idx_dir(root, "magic", _idx(0x801, images), good_labels, gz=False)
    _idx_dir(root, "counts", good_images, _idx(0x801, labels[:4]))
    _idx_dir(root, "labels", good_images, _idx(0x801, np.full(5, 12)))
    (root / "text.npz").write_text("not a zip archive\n")
    objects = np.empty(2, dtype=object)
    np.savez(
        root / "pickled.npz",
        x_train=objects,
        y_train=objects,
        x_test=objects,
        y_test=objects,
    )
    (root / "a_file").write_text("a regular file, not a directory\n")
    (root / "unknown.cfg").write_text("--model=mlp\n--no_such_flag=3\n")
    (root / "latin1.cfg").write_bytes(b"--model=mlp\n# caf\xe9 au lait\n")
    (root / "outer.cfg").write_text(f"--flagfile={root / 'latin1.cfg'}\n")
    # A completed run whose checkpoints/ folder was deleted.
    shutil.copytree(logdir / EXISTING, logdir / "no_checkpoints")
    shutil.rmtree(logdir / "no_checkpoints" / "checkpoints")
    return {"root": root, "logdir": logdir}


# (case id, flags, text the error line must contain). `{root}` and `{logdir}`
# are filled in from the `inputs` fixture.
CASES = [
    ("batch_size_zero", ["--batch_size=0"], "--batch_size=0"),
    ("batch_size_negative", ["--batch_size=-1"], "--batch_size=-1"),
    ("learning_rate_zero", ["--learning_rate=0"], "--learning_rate"),
    ("learning_rate_negative", ["--learning_rate=-1"], "--learning_rate"),
    ("steps_zero", ["--steps=0"], "--steps=0"),
    ("seed_negative", ["--seed=-1"], "--seed=-1: -1 is not an integer in the range"),
    ("seed_2_32", ["--seed=4294967296"], "--seed=4294967296"),
    (
        "learning_rate_inf",
        ["--learning_rate=inf"],
        "--learning_rate must be a finite number",
    ),
    ("bias_init_nan", ["--bias_init=nan"], "--bias_init must be a finite number"),
    ("dropout_one", ["--dropout=1.0"], "--dropout"),
    ("dropout_negative", ["--dropout=-0.1"], "--dropout"),
    ("shuffle_buffer_zero", ["--shuffle_buffer=0"], "--shuffle_buffer=0"),
    ("unknown_model", ["--model=resnet"], "--model=resnet"),
    ("unknown_dataset", ["--dataset=cifar10"], "--dataset=cifar10"),
    ("unknown_optimizer", ["--optimizer=lbfgs"], "--optimizer=lbfgs"),
    (
        "data_dir_with_sample",
        ["--data_dir={root}/magic"],
        "--data_dir is not used with --dataset=mnist_sample",
    ),
    (
        "patience_without_validation",
        ["--early_stopping_patience=2"],
        "--early_stopping_patience=2 needs --validation_split",
    ),
    (
        "run_without_resume",
        ["--run={logdir}/existing"],
        "--run is only used with --resume",
    ),
    (
        "resume_and_replay",
        ["--resume", "--run_name=x", "--replay={logdir}/existing"],
        "--resume and --replay",
    ),
    ("resume_without_run", ["--resume"], "--resume needs the run"),
    (
        "data_dir_missing",
        ["--dataset=mnist", "--data_dir={root}/nowhere"],
        "{root}/nowhere: data directory not found",
    ),
    (
        "truncated_gzip",
        ["--dataset=fashion_mnist", "--data_dir={root}/truncated"],
        "train-images-idx3-ubyte.gz: cannot decompress",
    ),
    (
        "wrong_idx_magic",
        ["--dataset=fashion_mnist", "--data_dir={root}/magic"],
        "train-images-idx3-ubyte: wrong IDX magic 0x00000801",
    ),
    (
        "count_mismatch",
        ["--dataset=fashion_mnist", "--data_dir={root}/counts"],
        "5 images but 4 labels",
    ),
    (
        "labels_out_of_range",
        ["--dataset=fashion_mnist", "--data_dir={root}/labels"],
        "labels must be in [0, 9], found",
    ),
    (
        "not_an_npz",
        ["--dataset=mnist", "--data_dir={root}/text.npz"],
        "text.npz: not a valid .npz file",
    ),
    (
        "npz_needs_pickle",
        ["--dataset=mnist", "--data_dir={root}/pickled.npz"],
        "pickled.npz: refused to load: it holds pickled object arrays",
    ),
    (
        "logdir_under_a_file",
        ["--logdir={root}/a_file/logs"],
        "--logdir={root}/a_file/logs: cannot create run directory",
    ),
    (
        "logdir_in_proc",
        ["--logdir=/proc/pipeline-logs"],
        "--logdir=/proc/pipeline-logs",
    ),
    ("run_name_slash", ["--run_name=a/b"], "--run_name"),
    ("run_name_dotdot", ["--run_name=a..b"], "--run_name"),
    (
        "existing_run_without_resume",
        ["--run_name=existing"],
        "{logdir}/existing: run already exists (status completed)",
    ),
    (
        "flagfile_missing",
        ["--flagfile={root}/missing.cfg"],
        "error: Unable to open flagfile: [Errno 2] No such file or directory: "
        "'{root}/missing.cfg'",
    ),
    ("flagfile_unknown_flag", ["--flagfile={root}/unknown.cfg"], "no_such_flag"),
    (
        "flagfile_not_utf8",
        ["--flagfile={root}/latin1.cfg"],
        "{root}/latin1.cfg: not a UTF-8 text file",
    ),
    (
        "nested_flagfile_not_utf8",
        ["--flagfile={root}/outer.cfg"],
        "{root}/latin1.cfg: not a UTF-8 text file",
    ),
    (
        "resume_completed_run_without_checkpoints",
        ["--resume", "--run_name=no_checkpoints", "--steps=20"],
        "no_checkpoints: run.json says completed at step 10, but "
        "{logdir}/no_checkpoints/checkpoints holds no checkpoint",
    ),
    (
        "resume_missing_run",
        ["--resume", "--run={logdir}/nope"],
        "{logdir}/nope: run directory not found",
    ),
    (
        "resume_changes_learning_rate",
        ["--resume", "--run_name=existing", "--learning_rate=0.5"],
        "--learning_rate=0.5 differs from the run's saved --learning_rate=0.001",
    ),
    (
        "resume_completed_run",
        ["--resume", "--run_name=existing"],
        "existing: status completed, latest checkpoint at step 10; --steps=10 leaves",
    ),
    (
        "replay_more_steps",
        ["--replay={logdir}/existing", "--steps=20"],
        "--steps=20: {logdir}/existing trained only 10 steps",
    ),
]


def _check_rejected(result: subprocess.CompletedProcess, expected: str) -> None:
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert "Traceback" not in output, output
    # Only TensorFlow's own start-up log lines (cases that fail after its
    # import) may accompany the one line of ours.
    errors = [line for line in output.splitlines() if line.startswith("pipeline-train")]
    assert len(errors) == 1, output
    assert errors[0].startswith("pipeline-train: error: "), errors[0]
    assert expected in errors[0], errors[0]


def _reject_and_change_nothing(inputs, flags, expected, run) -> None:
    """Runs `pipeline-train` with `flags` through `run` (in this process or
    in its own) next to the existing run; checks the one line and that the
    logdir is byte-for-byte as it was."""
    logdir = inputs["logdir"]
    fill = {"root": inputs["root"], "logdir": logdir}
    before, runs_before = tree_digest(logdir), sorted(os.listdir(logdir))
    args = (
        [] if any(f.startswith("--logdir") for f in flags) else [f"--logdir={logdir}"]
    )
    if not any(
        f.startswith(("--run_name", "--resume", "--replay", "--run=")) for f in flags
    ):
        args.append("--run_name=new")
    result = run("pipeline-train", *args, *(f.format(**fill) for f in flags))
    _check_rejected(result, expected.format(**fill))
    assert tree_digest(logdir) == before
    assert sorted(os.listdir(logdir)) == runs_before


@pytest.mark.parametrize(
    ("flags", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_bad_input_gives_one_line_and_changes_nothing(inputs, flags, expected):
    """The rules, through pipeline-train's own parser and main in this process."""
    _reject_and_change_nothing(inputs, flags, expected, main_in_process)


# One case per way pipeline-train refuses (absl's flag parser, a flagfile the
# parser cannot decode, a config rule, a data file read after the config, a
# run on disk): the real program, with its stderr filter, exits 1 with the
# one line.
IN_A_PROCESS = (
    "batch_size_zero",
    "flagfile_not_utf8",
    "patience_without_validation",
    "truncated_gzip",
    "existing_run_without_resume",
)


@pytest.mark.parametrize(
    ("flags", "expected"),
    [c[1:] for c in CASES if c[0] in IN_A_PROCESS],
    ids=[c[0] for c in CASES if c[0] in IN_A_PROCESS],
)
def test_bad_input_in_the_real_program_exits_1_with_one_line(inputs, flags, expected):
    def in_a_process(*args):
        result = run_cli(*args, timeout=120)
        assert result.returncode == 1, result.stderr
        return result

    _reject_and_change_nothing(inputs, flags, expected, in_a_process)


@pytest.fixture
def full_logdir(tmp_path):
    """A 256 KiB tmpfs filled to the last byte (needs root to mount)."""
    mount = tmp_path / "full"
    mount.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a tiny tmpfs needs root")
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mount)],
        capture_output=True,
        check=False,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        with open(mount / "filler", "wb", buffering=0) as filler:
            try:
                while True:
                    filler.write(b"\0" * 4096)
            except OSError:
                pass
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=False)


def test_full_logdir_gives_one_line(full_logdir):
    """The rule, through pipeline-train's main in this process (the real
    program's one line and exit 1 are test_bad_input_in_the_real_program_...)."""
    result = main_in_process(
        "pipeline-train", f"--logdir={full_logdir}", "--run_name=new", "--steps=5"
    )
    _check_rejected(
        result, f"--logdir={full_logdir}: cannot write (No space left on device)"
    )
    assert sorted(os.listdir(full_logdir)) == ["filler"]


def test_address_space_too_small_for_tensorflow_is_one_line(inputs):
    """`ulimit -v` below what TensorFlow needs: one line before it loads
    (under 1.2 GB TensorFlow aborted in C++ after creating the run)."""
    import resource

    limit = 1_200_000 * 1024

    def limit_memory():
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    logdir = inputs["logdir"]
    before = tree_digest(logdir)
    result = run_cli(
        "pipeline-train",
        f"--logdir={logdir}",
        "--run_name=small_memory",
        timeout=120,
        preexec_fn=limit_memory,
    )
    _check_rejected(result, "the address-space limit (ulimit -v) is 1,171 MiB")
    assert tree_digest(logdir) == before
