"""What made a run: its code, command line and environment, recorded per session.

A run records one *session* when it starts and one more on every resume
(run.json `sessions`, oldest first), because a resume may run other code on
another machine. A session holds:

  code         the git commit, branch and whether tracked files had uncommitted
               changes; when they had, `git diff HEAD --binary` is saved beside
               the record (`code.diff`, `code.resume-N.diff`), cut at
               `DIFF_CAP_BYTES` with the cut recorded. Outside a git checkout,
               or without git, the reason and the package's version instead.
  command      the program and its arguments (`command.txt` lists every session's)
  environment  the installed distributions in `pip freeze`'s form
               (`environment.txt`; a resume that finds others writes
               `environment.resume-N.txt`) and their sha256
  machine      the CPU model and the flags that select kernels (AVX-512, bf16,
               AMX), the GPUs and TensorFlow's build info

Nothing secret is kept: no environment variables, URLs in arguments lose
their password, and the home directory is written `~`.

TensorFlow is imported only by `tensorflow_info`, which `RunDir.start` calls
once TensorFlow is loaded anyway.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import os
import pathlib
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Callable, Sequence
from typing import Any

import pipeline

DIFF_NAME = "code.diff"
ENVIRONMENT_NAME = "environment.txt"
COMMAND_NAME = "command.txt"
# A diff larger than this is cut (at a line end) and recorded as truncated:
# a run directory is not the place for a vendored dataset someone forgot to add.
DIFF_CAP_BYTES = 1024 * 1024
CPUINFO = pathlib.Path("/proc/cpuinfo")
# /proc/cpuinfo flags that decide which kernels oneDNN/XLA pick (and so the
# speed and, for bf16, the precision `--precision=auto` chooses).
KERNEL_FLAGS = (
    "sse4_2",
    "avx",
    "avx2",
    "fma",
    "f16c",
    "avx512f",
    "avx512bw",
    "avx512vl",
    "avx512_vnni",
    "avx512_bf16",
    "avx512_fp16",
    "avx_vnni",
    "amx_tile",
    "amx_bf16",
    "amx_int8",
)
PACKAGE = "tb-pipeline"
GIT_TIMEOUT_S = 20
# How files are written into the run directory (`files.write_atomic`,
# passed in: the run record owns its files and this module is below it).
Writer = Callable[[pathlib.Path, bytes], None]
_URL_PASSWORD = re.compile(r"(\b[A-Za-z][A-Za-z0-9+.-]*://[^:/@\s]+):[^@\s]+@")


def source_root() -> pathlib.Path:
    """The directory holding the `pipeline` package that is running."""
    return pathlib.Path(pipeline.__file__).resolve().parent.parent


def home_relative(path: str | os.PathLike) -> str:
    """`path` with the home directory written `~` (no user's home in a record)."""
    text = str(path)
    home = os.path.expanduser("~")
    if home not in ("", "/") and (text == home or text.startswith(home + os.sep)):
        return "~" + text[len(home) :]
    return text


def redact(text: str) -> str:
    """`text` with URL passwords masked and the home directory as `~`."""
    text = _URL_PASSWORD.sub(r"\1:***@", text)
    home = os.path.expanduser("~")
    if home not in ("", "/"):
        text = re.sub(re.escape(home) + r"(?=[/\s=:,]|$)", "~", text)
    return text


def package_version() -> str | None:
    try:
        return importlib.metadata.version(PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        return None


def _git(git: str, directory: pathlib.Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [git, "-C", str(directory), *args],
        capture_output=True,
        timeout=GIT_TIMEOUT_S,
        check=False,
    )


def _no_git(reason: str) -> dict[str, Any]:
    return {"git": None, "reason": reason, "package_version": package_version()}


def code_state(
    directory: str | os.PathLike,
    diff_path: pathlib.Path | None = None,
    write: Writer | None = None,
    cap: int = DIFF_CAP_BYTES,
) -> dict[str, Any]:
    """The git state of the checkout holding `directory`; saves a dirty diff.

    Returns `{"git": {"commit", "branch", "dirty", "root"}, "untracked": N}`
    plus `"diff": {"file", "bytes", "saved_bytes", "truncated", "cap_bytes"}`
    when tracked files differ from the commit and `diff_path` is given (it is
    written with `write`); or
    `{"git": None, "reason": ..., "package_version": ...}` where there is no
    git, no checkout or no commit.
    """
    directory = pathlib.Path(directory)
    if directory.is_file():
        directory = directory.parent
    git = shutil.which("git")
    if git is None:
        return _no_git("git is not installed")
    try:
        top = _git(git, directory, "rev-parse", "--show-toplevel")
        if top.returncode != 0:
            return _no_git(f"{home_relative(directory)} is not in a git checkout")
        head = _git(git, directory, "rev-parse", "HEAD")
        if head.returncode != 0:
            return _no_git("the git checkout has no commit yet")
        branch = _git(git, directory, "rev-parse", "--abbrev-ref", "HEAD")
        diff = _git(git, directory, "diff", "HEAD", "--binary")
        untracked = _git(git, directory, "ls-files", "--others", "--exclude-standard")
    except (OSError, subprocess.TimeoutExpired) as err:
        return _no_git(f"git failed ({err})")
    branch_name = branch.stdout.decode().strip()
    state: dict[str, Any] = {
        "git": {
            "commit": head.stdout.decode().strip(),
            "branch": None if branch_name in ("", "HEAD") else branch_name,
            "dirty": bool(diff.stdout),
            "root": home_relative(top.stdout.decode().strip()),
        },
        "untracked": len(untracked.stdout.decode().splitlines()),
    }
    if diff.stdout and diff_path is not None and write is not None:
        state["diff"] = save_diff(diff.stdout, diff_path, write, cap)
    return state


def save_diff(
    diff: bytes, path: pathlib.Path, write: Writer, cap: int
) -> dict[str, Any]:
    """Writes `diff` to `path`, cut at the last line end within `cap` bytes."""
    saved = diff
    if len(diff) > cap:
        cut = diff.rfind(b"\n", 0, cap)
        saved = diff[: cut + 1] if cut >= 0 else diff[:cap]
    write(path, saved)
    return {
        "file": path.name,
        "sha256": hashlib.sha256(diff).hexdigest(),
        "bytes": len(diff),
        "saved_bytes": len(saved),
        "truncated": len(saved) < len(diff),
        "cap_bytes": cap,
    }


def environment_text() -> str:
    """Installed distributions as `pip freeze` writes them: `name==version`."""
    seen: dict[str, str] = {}
    for dist in importlib.metadata.distributions():
        # Parsed once: `dist.version` would read and parse METADATA again.
        metadata = dist.metadata
        name = metadata["Name"]
        if not name:
            continue
        key = re.sub(r"[-_.]+", "-", name).lower()
        seen.setdefault(key, f"{name}=={metadata['Version']}")
    return "".join(line + "\n" for _, line in sorted(seen.items()))


def cpu_info(cpuinfo: pathlib.Path = CPUINFO) -> dict[str, Any]:
    """The CPU model and which of `KERNEL_FLAGS` it reports."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return {"model": None, "kernel_flags": [], "cores": os.cpu_count()}
    model, present = None, set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "model name" and model is None:
            model = value.strip()
        elif key == "flags" and not present:
            present = set(value.split())
    return {
        "model": model,
        "kernel_flags": [flag for flag in KERNEL_FLAGS if flag in present],
        "cores": os.cpu_count(),
    }


def tensorflow_info() -> dict[str, Any]:
    """TensorFlow's version, git version and build info, and the GPUs it sees."""
    import tensorflow as tf

    build = {
        key: value
        for key, value in tf.sysconfig.get_build_info().items()
        if isinstance(value, str | int | float | bool | list)
    }
    gpus = []
    for device in tf.config.list_physical_devices("GPU"):
        details = tf.config.experimental.get_device_details(device)
        capability = details.get("compute_capability")
        gpus.append(
            {
                "name": details.get("device_name", device.name),
                "compute_capability": list(capability) if capability else None,
            }
        )
    return {
        "tensorflow_version": tf.__version__,
        "tensorflow_git_version": tf.version.GIT_VERSION,
        "tensorflow_build": build,
        "gpus": gpus,
    }


def command_line(argv: Sequence[str]) -> list[str]:
    """The program and its arguments as a user would retype them.

    A console script is named by its name, a module run with `-m` as
    `python -m MODULE`; arguments keep their order, lose URL passwords and
    write the home directory as `~`.
    """
    if not argv:
        return []
    program = pathlib.Path(argv[0])
    head = [program.name]
    if program.suffix == ".py":
        try:
            relative = program.resolve().relative_to(source_root())
            head = ["python", "-m", ".".join(relative.with_suffix("").parts)]
        except ValueError:
            head = ["python", home_relative(argv[0])]
    return head + [redact(arg) for arg in argv[1:]]


def _session_file(base: str, index: int) -> str:
    """`environment.txt` for the start, `environment.resume-N.txt` for resume N."""
    if index == 0:
        return base
    stem, dot, suffix = base.partition(".")
    return f"{stem}.resume-{index}{dot}{suffix}"


def record_session(
    run_path: pathlib.Path,
    previous: Sequence[dict[str, Any]],
    time: str,
    write: Writer,
    argv: Sequence[str] | None = None,
    with_tensorflow: bool = True,
) -> dict[str, Any]:
    """Records what is running `run_path` now; returns the session for run.json.

    `previous` are the sessions already recorded (none at the start); a new
    environment file is written only when the packages changed since them.
    Files are written with `write`.
    """
    index = len(previous)
    run_path = pathlib.Path(run_path)
    environment = environment_text()
    digest = hashlib.sha256(environment.encode()).hexdigest()
    earlier = [s.get("environment") or {} for s in previous]
    same = next((e for e in reversed(earlier) if e.get("sha256") == digest), None)
    if same is not None and (run_path / same.get("file", "")).is_file():
        env_file = same["file"]
    else:
        env_file = _session_file(ENVIRONMENT_NAME, index)
        write(run_path / env_file, environment.encode())
    machine: dict[str, Any] = {"cpu": cpu_info()}
    if with_tensorflow:
        machine.update(tensorflow_info())
    session = {
        "kind": "start" if index == 0 else "resume",
        "time": time,
        "command": command_line(sys.argv if argv is None else argv),
        "cwd": home_relative(os.getcwd()),
        "code": code_state(
            source_root(), run_path / _session_file(DIFF_NAME, index), write
        ),
        "environment": {
            "file": env_file,
            "packages": environment.count("\n"),
            "sha256": digest,
        },
        "machine": machine,
    }
    write(run_path / COMMAND_NAME, command_text([*previous, session]).encode())
    return session


def command_text(sessions: Sequence[dict[str, Any]]) -> str:
    """`command.txt`: each session's command line, under a comment saying when."""
    lines = []
    for session in sessions:
        lines.append(f"# {session.get('kind')} {session.get('time')}")
        lines.append(f"# in {session.get('cwd')}")
        lines.append(shlex.join(session.get("command") or []))
    return "\n".join(lines) + "\n"


def short_commit(code: dict[str, Any] | None) -> str:
    """`1a2b3c4` (`+` when dirty), or `-` where no commit was recorded."""
    git = (code or {}).get("git")
    if not git or not git.get("commit"):
        return "-"
    return git["commit"][:7] + ("+" if git.get("dirty") else "")


def changes_since(sessions: Sequence[dict[str, Any]]) -> list[str]:
    """How the code and packages here differ from a run's last session.

    [] when both match (or the run recorded neither). Saves nothing.
    """
    if not sessions:
        return []
    last = sessions[-1]
    changes = []
    then = (last.get("code") or {}).get("git") or {}
    now = code_state(source_root()).get("git") or {}
    # Uncommitted changes on either side count: equal diffs cannot be told
    # from the record alone.
    moved = then.get("commit") != now.get("commit")
    if then and (moved or then.get("dirty") or now.get("dirty")):
        changes.append(
            f"code {short_commit(last.get('code'))} then, "
            f"{short_commit({'git': now}) if now else 'no commit'} now"
        )
    recorded = (last.get("environment") or {}).get("sha256")
    if recorded:
        current = hashlib.sha256(environment_text().encode()).hexdigest()
        if current != recorded:
            changes.append("installed packages differ")
    return changes


def code_identity(code: dict[str, Any] | None) -> str:
    """`short_commit`, plus the first digits of the saved diff's sha256 when
    dirty (`1a2b3c4+9f8e7d`): equal exactly when two runs ran the same code
    as far as their records tell."""
    text = short_commit(code)
    digest = ((code or {}).get("diff") or {}).get("sha256")
    return text + digest[:6] if text.endswith("+") and digest else text
