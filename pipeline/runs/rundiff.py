"""`pipeline-runs diff A B`: what differs between two runs, and why it might matter.

Four parts, each left out when equal: the flags that apply to the runs and
differ; the code (the two commits, `git diff --stat` between them when the
repository that made them is at hand, and the saved diffs of a dirty tree);
the data fingerprint; the environment (package lines that differ, the CPU
and TensorFlow's build). Reads run records and side files only: no
TensorFlow.
"""

from __future__ import annotations

import contextlib
import json
import pathlib
import shutil
import subprocess
from typing import Any

from pipeline import config as config_lib
from pipeline import variants as variants_lib
from pipeline.runs import provenance, rundir


def _applies(name: str, config: dict[str, Any]) -> bool:
    """Whether flag `name` means something for the run's model family."""
    if name not in config_lib.FIELDS_BY_NAME:
        return True
    return name in variants_lib.applicable_fields(str(config.get("model")))


def _text(value: Any) -> str:
    if isinstance(value, list):
        return ",".join(str(v) for v in value) or "(none)"
    return "(unset)" if value is None else str(value)


def flag_lines(a: rundir.RunRecord, b: rundir.RunRecord) -> list[str]:
    """`  --name: A -> B` for each flag that applies to either run and differs."""
    ca, cb = a.config, b.config
    # The note and tags say what the user thinks of a run, not how it ran.
    skip = {"run_name", "note", "tag"}
    for config in (ca, cb):
        with contextlib.suppress(TypeError, ValueError):
            skip |= config_lib.unused_alternatives(config_lib.config_from_dict(config))
    lines = []
    for name in sorted(ca.keys() | cb.keys()):
        if name in skip or ca.get(name) == cb.get(name):
            continue
        if not (_applies(name, ca) or _applies(name, cb)):
            continue
        lines.append(f"  --{name}: {_text(ca.get(name))} -> {_text(cb.get(name))}")
    return lines


def _describe_code(label: str, record: rundir.RunRecord) -> list[str]:
    lines = []
    for session in record.sessions or [{}]:
        code = session.get("code") or {}
        git = code.get("git")
        kind = session.get("kind", "start")
        if not record.sessions:
            lines.append(f"  {label}: not recorded (run made before code was recorded)")
        elif not git:
            version = code.get("package_version") or "unknown"
            lines.append(
                f"  {label} ({kind}): no commit ({code.get('reason')}); "
                f"package version {version}"
            )
        else:
            where = f" on {git['branch']}" if git.get("branch") else ""
            line = f"  {label} ({kind}): {git['commit'][:12]}{where}"
            diff = code.get("diff")
            if git.get("dirty") and diff:
                cut = ", TRUNCATED" if diff.get("truncated") else ""
                saved = record.path.parent / diff["file"]
                line += (
                    f", uncommitted changes saved in {saved} "
                    f"({diff['bytes']:,} bytes{cut})"
                )
            elif git.get("dirty"):
                line += ", uncommitted changes (diff not saved)"
            lines.append(line)
    return lines


def _commit(record: rundir.RunRecord) -> tuple[str | None, str | None]:
    git = record.code.get("git") or {}
    return git.get("commit"), git.get("root")


def diff_stat(repo: pathlib.Path, first: str, second: str) -> list[str] | None:
    """`git diff --stat FIRST SECOND` in `repo`, or None when it cannot tell."""
    git = shutil.which("git")
    if git is None or not repo.is_dir():
        return None
    try:
        proc = subprocess.run(
            [git, "-C", str(repo), "diff", "--stat", first, second],
            capture_output=True,
            text=True,
            timeout=provenance.GIT_TIMEOUT_S,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    if proc.returncode != 0:
        return None
    return ["    " + line for line in proc.stdout.splitlines()]


def _ran_dirty(record: rundir.RunRecord) -> bool:
    return any(
        ((s.get("code") or {}).get("git") or {}).get("dirty") for s in record.sessions
    )


def _stat_between(first: str, second: str, roots: list[str | None]) -> list[str]:
    """`git diff --stat` from the first repository at hand that holds both."""
    candidates = [provenance.source_root()]
    candidates += [pathlib.Path(r).expanduser() for r in roots if r]
    for root in dict.fromkeys(candidates):
        stat = diff_stat(root, first, second)
        if stat is not None:
            where = provenance.home_relative(root)
            return [
                f"  git diff --stat {first[:12]} {second[:12]} (in {where}):",
                *stat,
            ]
    return ["  (no repository at hand holds both commits: no diff --stat)"]


def code_lines(a: rundir.RunRecord, b: rundir.RunRecord) -> list[str]:
    """Both runs' commits (per session) and the diff between them if at hand.

    Empty when both ran once, clean, on one commit.
    """
    (first, root_a), (second, root_b) = _commit(a), _commit(b)
    clean = not (_ran_dirty(a) or _ran_dirty(b))
    if first and first == second and clean and len(a.sessions) == len(b.sessions) == 1:
        return []
    lines = _describe_code("A", a) + _describe_code("B", b)
    if first and second and first != second:
        lines += _stat_between(first, second, [root_a, root_b])
    return lines


def _environment(record: rundir.RunRecord) -> dict[str, str] | None:
    sessions = record.sessions
    if not sessions:
        return None
    name = (sessions[-1].get("environment") or {}).get("file")
    try:
        text = (record.path.parent / name).read_text() if name else None
    except OSError:
        return None
    if text is None:
        return None
    packages = {}
    for line in text.splitlines():
        package, _, version = line.partition("==")
        packages[package.lower()] = line
    return packages


def environment_lines(a: rundir.RunRecord, b: rundir.RunRecord) -> list[str]:
    """Package lines in only one run's environment; CPU and TF build if they differ."""
    lines = []
    env_a, env_b = _environment(a), _environment(b)
    if env_a is None or env_b is None:
        missing = [label for label, env in (("A", env_a), ("B", env_b)) if env is None]
        lines.append(f"  {' and '.join(missing)}: no environment recorded")
    else:
        for key in sorted(env_a.keys() | env_b.keys()):
            if env_a.get(key) != env_b.get(key):
                lines.append(
                    f"  {env_a.get(key, '(not installed)')} -> "
                    f"{env_b.get(key, '(not installed)')}"
                )
    machine_a = (a.sessions[-1].get("machine") if a.sessions else None) or {}
    machine_b = (b.sessions[-1].get("machine") if b.sessions else None) or {}
    for key in sorted(machine_a.keys() | machine_b.keys()):
        if machine_a.get(key) != machine_b.get(key):
            lines.append(
                f"  machine {key}: {json.dumps(machine_a.get(key), sort_keys=True)} -> "
                f"{json.dumps(machine_b.get(key), sort_keys=True)}"
            )
    return lines


def data_lines(a: rundir.RunRecord, b: rundir.RunRecord) -> list[str]:
    da, db = a.dataset, b.dataset
    keys = ("name", "fingerprint", "sizes")
    if all(da.get(k) == db.get(k) for k in keys):
        return []
    return [
        f"  {k}: {json.dumps(da.get(k), sort_keys=True)} -> "
        f"{json.dumps(db.get(k), sort_keys=True)}"
        for k in keys
        if da.get(k) != db.get(k)
    ]


def _title(label: str, record: rundir.RunRecord) -> str:
    parts = [f"{label}: {record.path.parent}  ({record.status}"]
    if record.tags:
        parts.append(f"; tags {','.join(record.tags)}")
    if record.note:
        parts.append(f"; note: {record.note}")
    return "".join(parts) + ")"


def diff_runs(a: rundir.RunRecord, b: rundir.RunRecord) -> str:
    """The report `pipeline-runs diff A B` prints."""
    out = [_title("A", a), _title("B", b)]
    for title, lines in (
        ("flags", flag_lines(a, b)),
        ("code", code_lines(a, b)),
        ("data", data_lines(a, b)),
        ("environment", environment_lines(a, b)),
    ):
        out.append(f"{title}:" if lines else f"{title}: same")
        out += lines
    return "\n".join(out)
