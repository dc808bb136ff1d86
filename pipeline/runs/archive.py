"""Archive or delete runs (or a whole sweep), and remember it for the sweep.

An archived run moves out of the log directory into an archive folder beside
it, which TensorBoard (`--logdir logs`) does not read: by default
`logs/sweep/run` goes to `logs.archive/sweep/run` (the folder named after the
top directory of the path, plus `.archive`). A deleted run is removed.

Both take each run's lock first, so a run being trained is refused in one
line and nothing is moved. Each run archived or deleted is entered in
`archived-runs.json` in the directory it left (an experiment's, a sweep's):
with its status and final metrics, so a sweep that meets the name again
takes the recorded outcome and never trains it again, and the study's trial
count stays right (`entry`).
"""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import shutil
from collections.abc import Sequence
from typing import Any

from pipeline.errors import RecordError, RunDirError, os_reason
from pipeline.runs import rundir

MANIFEST_NAME = "archived-runs.json"
ARCHIVE_SUFFIX = ".archive"
PROGRAM = "pipeline-runs"


def default_archive_root(path: pathlib.Path) -> tuple[pathlib.Path, pathlib.Path]:
    """(archive folder, directory the path is kept relative to) for `path`.

    `logs/sweep/run` (relative, from where the command runs) ->
    (`logs.archive`, `logs`); a path outside the working directory keeps
    only its last part: `/data/logs/run` -> (`/data/logs.archive`, `/data/logs`).
    """
    absolute = path.absolute()
    try:
        relative = absolute.relative_to(pathlib.Path.cwd())
    except ValueError:
        relative = None
    if relative is not None and len(relative.parts) > 1:
        top = pathlib.Path.cwd() / relative.parts[0]
    else:
        top = absolute.parent
    return top.with_name(top.name + ARCHIVE_SUFFIX), top


def _lock_all(paths: Sequence[pathlib.Path], stack: contextlib.ExitStack) -> None:
    """Takes every run's lock (RunLockedError names the first held elsewhere)."""
    for path in paths:
        stack.enter_context(rundir.locked(path, PROGRAM))


def entry(run_path: str | os.PathLike) -> dict[str, Any] | None:
    """What `archived-runs.json` says about the run that was at `run_path`."""
    run_path = pathlib.Path(run_path)
    runs = _read_manifest(run_path.parent)
    found = runs.get(run_path.name)
    return found if isinstance(found, dict) else None


def _read_manifest(directory: pathlib.Path) -> dict[str, Any]:
    try:
        data = json.loads((directory / MANIFEST_NAME).read_text())
    except (OSError, ValueError):
        return {}
    runs = data.get("runs") if isinstance(data, dict) else None
    return runs if isinstance(runs, dict) else {}


def _remember(path: pathlib.Path, action: str, where: str | None) -> None:
    """Enters the run at `path` (about to go) in its directory's manifest."""
    try:
        record = rundir.load_record(path)
        status, metrics = record.status, record.final_metrics
    except RecordError:
        status, metrics = None, {}
    runs = _read_manifest(path.parent)
    runs[path.name] = {
        "action": action,
        "time": rundir.utc_now(),
        "to": where,
        "status": status,
        "final_metrics": metrics,
    }
    rundir.write_json_atomic(path.parent / MANIFEST_NAME, {"runs": runs})


def _runs_in(path: pathlib.Path) -> list[pathlib.Path]:
    runs = rundir.find_run_paths(path)
    if not runs:
        raise RunDirError(f"{path}: no runs here (no {rundir.RECORD_NAME} found)")
    return runs


def archive(
    path: str | os.PathLike, archive_root: str | os.PathLike | None = None
) -> pathlib.Path:
    """Moves the run or sweep at `path` into the archive folder; returns where.

    Raises:
      RunLockedError: a run in it is being trained (nothing is moved).
      RunDirError: no runs at `path`, or the target already exists.
    """
    path = pathlib.Path(path)
    if any(part.endswith(ARCHIVE_SUFFIX) for part in path.absolute().parts):
        raise RunDirError(f"{path}: already in an archive folder")
    runs = _runs_in(path)
    default_root, top = default_archive_root(path)
    root = pathlib.Path(archive_root) if archive_root else default_root
    try:
        target = root / path.absolute().relative_to(top.absolute())
    except ValueError:
        target = root / path.name
    if target.exists():
        raise RunDirError(f"{target}: already in the archive; move or delete it first")
    with contextlib.ExitStack() as stack:
        _lock_all(runs, stack)
        if path in runs:
            _remember(path, "archived", str(target))
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(str(path), str(target))
        except OSError as err:
            raise RunDirError(
                f"{path}: cannot move to {target} ({os_reason(err)})"
            ) from None
    return target


def delete(path: str | os.PathLike) -> list[pathlib.Path]:
    """Removes the run or sweep at `path`; returns the runs removed.

    Raises:
      RunLockedError: a run in it is being trained (nothing is removed).
      RunDirError: no runs at `path`.
    """
    path = pathlib.Path(path)
    runs = _runs_in(path)
    with contextlib.ExitStack() as stack:
        _lock_all(runs, stack)
        if path in runs:
            _remember(path, "deleted", None)
        try:
            shutil.rmtree(path)
        except OSError as err:
            raise RunDirError(f"{path}: cannot delete ({os_reason(err)})") from None
    return runs
