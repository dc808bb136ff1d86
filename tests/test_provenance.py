"""What made a run: code (real git repositories in temp dirs), command, environment.

The end-to-end cases train real runs with a copy of this package committed
in a fresh repository, as a user's checkout would be.
"""

from __future__ import annotations

import json
import os
import pathlib
import re
import shutil
import subprocess
import sys

import pytest
from conftest import REPO, record, run_to_completion

from pipeline.files import write_atomic
from pipeline.runs import provenance

GIT = shutil.which("git")
pytestmark = pytest.mark.skipif(GIT is None, reason="git is not installed")


def git(repo: pathlib.Path, *args: str) -> str:
    return subprocess.run(
        [GIT, "-C", str(repo), *args],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "GIT_AUTHOR_DATE": "2026-01-01T00:00:00Z"},
    ).stdout.strip()


def make_repo(path: pathlib.Path) -> pathlib.Path:
    path.mkdir(parents=True, exist_ok=True)
    git(path, "init", "-q", "-b", "main")
    git(path, "config", "user.email", "test@example.com")
    git(path, "config", "user.name", "test")
    return path


def commit_all(repo: pathlib.Path, message: str) -> str:
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", message)
    return git(repo, "rev-parse", "HEAD")


def applies_to(repo: pathlib.Path, commit: str, diff: pathlib.Path, tmp: pathlib.Path):
    """A clean clone of `repo` at `commit` with `diff` applied; returns it."""
    clone = tmp / "clone"
    subprocess.run([GIT, "clone", "-q", str(repo), str(clone)], check=True)
    git(clone, "checkout", "-q", commit)
    git(clone, "apply", "--check", str(diff))
    git(clone, "apply", str(diff))
    return clone


def test_clean_and_dirty_trees_with_a_diff_that_reapplies(tmp_path):
    repo = make_repo(tmp_path / "repo")
    (repo / "model.py").write_text("units = 30\n")
    (repo / "data.bin").write_bytes(b"\0\1\2")
    head = commit_all(repo, "first")
    clean = provenance.code_state(repo, tmp_path / "clean.diff", write_atomic)
    assert clean["git"] == {
        "commit": head,
        "branch": "main",
        "dirty": False,
        "root": str(repo),
    }
    assert "diff" not in clean
    assert not (tmp_path / "clean.diff").exists()

    (repo / "model.py").write_text("units = 64  # wider\n")
    (repo / "data.bin").write_bytes(b"\0\1\2\3")
    (repo / "new_untracked.py").write_text("x = 1\n")
    saved = tmp_path / "run" / "code.diff"
    saved.parent.mkdir()
    dirty = provenance.code_state(repo / "model.py", saved, write_atomic)
    assert dirty["git"]["commit"] == head
    assert dirty["git"]["dirty"] is True
    assert dirty["untracked"] == 1
    assert dirty["diff"]["file"] == "code.diff"
    assert dirty["diff"]["truncated"] is False
    assert dirty["diff"]["bytes"] == saved.stat().st_size
    clone = applies_to(repo, head, saved, tmp_path)
    assert (clone / "model.py").read_text() == "units = 64  # wider\n"
    assert (clone / "data.bin").read_bytes() == b"\0\1\2\3"


def test_a_diff_over_the_cap_is_cut_and_says_so(tmp_path):
    repo = make_repo(tmp_path / "repo")
    (repo / "big.txt").write_text("a\n")
    commit_all(repo, "first")
    (repo / "big.txt").write_text("".join(f"line {i}\n" for i in range(5000)))
    saved = tmp_path / "code.diff"
    state = provenance.code_state(repo, saved, write_atomic, cap=4096)
    diff = state["diff"]
    assert diff["truncated"] is True
    assert diff["cap_bytes"] == 4096
    assert diff["saved_bytes"] == saved.stat().st_size <= 4096
    assert diff["bytes"] > 30000
    assert saved.read_bytes().endswith(b"\n")


def test_outside_a_checkout_and_without_git(tmp_path, monkeypatch):
    plain = tmp_path / "plain"
    plain.mkdir()
    state = provenance.code_state(plain)
    assert state["git"] is None
    assert "is not in a git checkout" in state["reason"]
    assert state["package_version"] == "0.1.0"
    empty = make_repo(tmp_path / "empty")
    assert (
        provenance.code_state(empty)["reason"] == "the git checkout has no commit yet"
    )
    no_git = tmp_path / "bin"
    no_git.mkdir()
    monkeypatch.setenv("PATH", str(no_git))
    state = provenance.code_state(REPO)
    assert state == {
        "git": None,
        "reason": "git is not installed",
        "package_version": "0.1.0",
    }
    assert provenance.short_commit(state) == "-"


def test_command_line_keeps_no_password_and_no_home(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path))
    argv = [
        str(REPO / "pipeline" / "cli" / "sweep.py"),
        "--storage=postgresql://alice:s3cret@db.example:5432/studies",
        f"--logdir={tmp_path}/logs",
    ]
    assert provenance.command_line(argv) == [
        "python",
        "-m",
        "pipeline.cli.sweep",
        "--storage=postgresql://alice:***@db.example:5432/studies",
        "--logdir=~/logs",
    ]
    assert provenance.command_line(["/x/bin/pipeline-train", "--steps=5"]) == [
        "pipeline-train",
        "--steps=5",
    ]


def test_environment_is_pip_freeze_form():
    lines = provenance.environment_text().splitlines()
    assert all(re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*==\S+", ln) for ln in lines)
    assert lines == sorted(lines, key=lambda ln: ln.split("==")[0].lower())
    names = {ln.split("==")[0].lower() for ln in lines}
    assert {"absl-py", "tensorboard", "numpy", "tb-pipeline"} <= names


def test_cpu_info_names_the_kernel_flags(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(
        "processor\t: 0\nmodel name\t: Example CPU 9000\n"
        "flags\t\t: fpu sse4_2 avx avx2 avx512f avx512_bf16 amx_bf16 amx_tile\n"
    )
    info = provenance.cpu_info(cpuinfo)
    assert info["model"] == "Example CPU 9000"
    assert info["kernel_flags"] == [
        "sse4_2",
        "avx",
        "avx2",
        "avx512f",
        "avx512_bf16",
        "amx_tile",
        "amx_bf16",
    ]


# --- end to end: a copy of the package in a fresh repository ------------------

TRAIN_FLAGS = [
    "--model=logreg",
    "--batch_size=32",
    "--shuffle_buffer=256",
    "--learning_rate=0.1",
    "--optimizer=sgd",
    "--eval_every=10",
    "--checkpoint_every=10",
    "--histogram_every=0",
    "--image_count=0",
    "--noprojector",
    "--print_every=0",
]


def project_repo(path: pathlib.Path) -> pathlib.Path:
    """A git repository holding a copy of `pipeline/`, committed."""
    repo = make_repo(path)
    (repo / ".gitignore").write_text("__pycache__/\n")
    shutil.copytree(
        REPO / "pipeline",
        repo / "pipeline",
        ignore=shutil.ignore_patterns("__pycache__"),
    )
    commit_all(repo, "the pipeline")
    return repo


def train_in(repo: pathlib.Path, *args: str) -> subprocess.CompletedProcess:
    """`python -m pipeline.cli.train ARGS` with the repository's copy of the
    code, as its own process: the record names the code that really ran."""
    proc = run_to_completion(
        [sys.executable, "-m", "pipeline.cli.train", *TRAIN_FLAGS, *args],
        cwd=repo,
        pythonpath=str(repo),
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc


def train_here_as_in(repo: pathlib.Path, *args: str) -> subprocess.CompletedProcess:
    """`pipeline-train ARGS`, its main in this process (no TensorFlow import
    of its own), recording `repo` as the checkout of the code that runs:
    `train_in`'s run proves that a real process records its own checkout;
    the rules on top of that (sessions, diffs, reruns) are tested here."""
    from conftest import main_in_process

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(provenance, "source_root", lambda: repo)
        proc = main_in_process("pipeline-train", *TRAIN_FLAGS, *args, cwd=repo)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc


@pytest.fixture(scope="module")
def two_commits(tmp_path_factory):
    """Runs on a dirty tree (then resumed), and on the next commit.

    Returns (repo, logdir, first commit, second commit).
    """
    tmp = tmp_path_factory.mktemp("provenance")
    repo = project_repo(tmp / "repo")
    first = git(repo, "rev-parse", "HEAD")
    models = repo / "pipeline" / "models.py"
    models.write_text(models.read_text() + "\n# an experiment in progress\n")
    logdir = tmp / "logs"
    train_in(repo, f"--logdir={logdir}", "--run_name=dirty", "--steps=10")
    train_here_as_in(
        repo, f"--logdir={logdir}", "--run_name=dirty", "--resume", "--steps=20"
    )
    second = commit_all(repo, "keep the experiment")
    train_here_as_in(
        repo, f"--logdir={logdir}", "--run_name=clean", "--steps=20", "--tag=v2"
    )
    return repo, logdir, first, second


def test_a_dirty_run_records_its_commit_and_a_diff_that_reapplies(
    two_commits, tmp_path
):
    repo, logdir, first, _ = two_commits
    run = logdir / "dirty"
    start, resume = record(run)["sessions"]
    assert start["kind"] == "start"
    assert resume["kind"] == "resume"
    assert start["code"]["git"]["commit"] == first
    assert start["code"]["git"]["dirty"] is True
    assert start["code"]["diff"]["file"] == "code.diff"
    assert resume["code"]["diff"]["file"] == "code.resume-1.diff"
    clone = applies_to(repo, first, run / "code.diff", tmp_path)
    assert (
        (clone / "pipeline" / "models.py")
        .read_text()
        .endswith("# an experiment in progress\n")
    )
    # The exact command lines, every session's, beside flags.cfg.
    assert start["command"][:3] == ["python", "-m", "pipeline.cli.train"]
    assert start["command"][-2:] == ["--run_name=dirty", "--steps=10"]
    assert resume["command"][-2:] == ["--resume", "--steps=20"]
    command_txt = (run / "command.txt").read_text()
    assert "--run_name=dirty --steps=10\n" in command_txt
    assert "--run_name=dirty --resume --steps=20\n" in command_txt
    # One environment file: the packages did not change between the sessions.
    assert start["environment"]["file"] == resume["environment"]["file"]
    environment = (run / "environment.txt").read_text()
    assert re.search(r"^tensorflow([-_]cpu)?==2\.21", environment, re.MULTILINE)
    assert start["environment"]["packages"] == len(environment.splitlines())
    machine = start["machine"]
    assert machine["tensorflow_version"].startswith("2.21")
    assert machine["cpu"]["cores"] >= 1
    assert "gpus" in machine
    # Nothing secret: no environment variables in the record.
    text = (run / "run.json").read_text()
    assert os.environ["PATH"] not in text


def test_diff_of_runs_on_two_commits_names_both(two_commits):
    from conftest import run_cli

    _, logdir, first, second = two_commits
    proc = run_cli(
        "pipeline-runs", "diff", str(logdir / "dirty"), str(logdir / "clean")
    )
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert f"A (start): {first[:12]} on main, uncommitted changes saved in" in out
    assert f"A (resume): {first[:12]} on main" in out
    assert f"B (start): {second[:12]} on main" in out
    assert f"git diff --stat {first[:12]} {second[:12]}" in out
    assert "pipeline/models.py | 2 ++" in out
    assert "--steps" not in out  # both trained 20 steps
    assert "environment: same" in out
    assert "tags v2" in out.splitlines()[1]


def test_list_shows_short_commits_dirty_marked(two_commits):
    from conftest import run_cli

    _, logdir, first, second = two_commits
    proc = run_cli("pipeline-runs", "list", str(logdir))
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].split() == [
        "run", "status", "started", "model", "test", "acc", "commit", "tags"
    ]  # fmt: skip
    dirty, clean = (ln.split() for ln in lines[1:])
    assert dirty[0] == "dirty"
    assert dirty[-2:] == [first[:7] + "+", "-"]
    assert clean[0] == "clean"
    assert clean[-2:] == [second[:7], "v2"]


def test_rerun_warns_when_the_code_differs(two_commits):
    repo, logdir, _, _ = two_commits
    proc = train_here_as_in(
        repo,
        f"--rerun={logdir / 'dirty'}",
        f"--logdir={logdir}",
        "--run_name=again",
    )
    warnings = [ln for ln in proc.stderr.splitlines() if "warning" in ln]
    assert len(warnings) == 1
    assert "code" in warnings[0]
    assert "then," in warnings[0]
    again = record(logdir / "again")
    assert again["config"]["steps"] == 20
    assert again["config"]["run_name"] == "again"
    same = train_here_as_in(
        repo, f"--rerun={logdir / 'clean'}", f"--logdir={logdir}", "--run_name=same"
    )
    assert "warning" not in same.stderr
    assert json.loads((logdir / "same" / "run.json").read_text())["config"]["tag"] == [
        "v2"
    ]


def test_compare_shows_the_commit_when_runs_ran_different_code(two_commits):
    from conftest import main_in_process

    _, logdir, first, second = two_commits
    proc = main_in_process(
        "pipeline-compare", str(logdir / "dirty"), str(logdir / "clean"), "--top=5"
    )
    assert proc.returncode == 0, proc.stderr
    header, _, row = proc.stdout.splitlines()[:3]
    assert header.split()[-1] == "commit"
    diff_digest = record(logdir / "dirty")["sessions"][0]["code"]["diff"]["sha256"]
    # One variant (equal flags), two repeats that ran different code.
    assert row.split()[-1] == f"{first[:7]}+{diff_digest[:6]},{second[:7]}"
    (note,) = [ln for ln in proc.stderr.splitlines() if "different code" in ln]
    assert note.startswith(f"these runs ran different code ({first[:7]}+")
    same_code = main_in_process("pipeline-compare", str(logdir / "clean"))
    assert "commit" not in same_code.stdout
    assert "different code" not in same_code.stderr
