"""A process's temporary folder (`processes.temp_folder`: a non-chief
worker's scratch, a sweep's training process's TMPDIR) outlives a process
that was killed; the next one made on the machine removes it, and only it."""

import os
import subprocess
import sys
import tempfile

from pipeline import processes


def test_the_folders_of_processes_that_are_gone_go_and_the_rest_stay(
    tmp_path, monkeypatch
):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    # A process that made its folder and ended without removing it, as a
    # killed one does.
    made = subprocess.run(
        [sys.executable, "-c", "from pipeline import processes as p; "
         "print(p.temp_folder('worker-1'))"],
        env={**os.environ, "TMPDIR": str(tmp_path)},
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    assert made.startswith(f"{tmp_path}/pipeline-worker-1-")
    # A live process of another program (a notebook runs sweeps too).
    with subprocess.Popen(["sleep", "60"]) as sleeper:
        live = tmp_path / f"pipeline-trainer-{sleeper.pid}-abcd1234"
        live.mkdir()
        ours = processes.temp_folder("trainer")
        other = tmp_path / "pipeline-pg-abcd1234"  # not one of these folders
        other.mkdir()

        newest = processes.temp_folder("worker-1")
        sleeper.kill()

    assert not os.path.exists(made)
    assert [live.is_dir(), other.is_dir()] == [True, True]
    assert [os.path.isdir(ours), os.path.isdir(newest)] == [True, True]
    assert os.path.basename(ours).startswith(f"pipeline-trainer-{os.getpid()}-")
