"""`pipeline-runs list`: one line per run under a directory, at any depth.

Reads only run records (`rundir.scan_records`, as `pipeline-compare` does)
and never imports TensorFlow, so it answers at once over hundreds of runs.
"""

from __future__ import annotations

import dataclasses
import datetime
import os
import pathlib
import re
from collections.abc import Callable, Sequence

from pipeline.errors import ConfigError
from pipeline.runs import provenance, rundir

COLUMNS = ("run", "status", "started", "model", "test acc", "commit", "tags")
_RELATIVE = re.compile(r"^(\d+)([dhm])$")


@dataclasses.dataclass(frozen=True)
class RunRow:
    """One run as the list shows it."""

    name: str
    status: str
    start_time: str
    model: str
    test_accuracy: float | None
    commit: str
    tags: tuple[str, ...]
    note: str

    def cells(self) -> list[str]:
        accuracy = "-" if self.test_accuracy is None else f"{self.test_accuracy:.4f}"
        started = self.start_time.replace("T", " ")[:16] or "-"
        return [
            self.name,
            self.status,
            started,
            self.model,
            accuracy,
            self.commit,
            ",".join(self.tags) or "-",
        ]


def parse_since(value: str, now: datetime.datetime | None = None) -> datetime.datetime:
    """`--since`: an ISO date or time (UTC unless it says), or `7d`, `12h`, `30m` ago.

    Raises:
      ConfigError: naming --since.
    """
    now = now or datetime.datetime.now(datetime.timezone.utc)
    match = _RELATIVE.match(value.strip())
    if match:
        unit = {"d": "days", "h": "hours", "m": "minutes"}[match.group(2)]
        return now - datetime.timedelta(**{unit: int(match.group(1))})
    try:
        when = datetime.datetime.fromisoformat(value.strip())
    except ValueError:
        raise ConfigError(
            f"--since={value}: not a date (2026-12-01, 2026-12-01T09:30) "
            "or an age (7d, 12h, 30m)"
        ) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=datetime.timezone.utc)
    return when


def _started(record: rundir.RunRecord) -> datetime.datetime | None:
    try:
        return datetime.datetime.fromisoformat(str(record.get("start_time")))
    except ValueError:
        return None


def row(record: rundir.RunRecord, root: pathlib.Path) -> RunRow:
    path = record.path.parent
    try:
        name = path.relative_to(root).as_posix()
    except ValueError:
        name = path.as_posix()
    return RunRow(
        name=name if name != "." else path.name,
        status=record.status or "unknown",
        start_time=str(record.get("start_time") or ""),
        model=str(record.config.get("model", "-")),
        test_accuracy=record.test_accuracy,
        commit=provenance.short_commit(record.code),
        tags=tuple(record.tags),
        note=record.note,
    )


def list_runs(
    root: str | os.PathLike,
    since: datetime.datetime | None = None,
    status: str | None = None,
    tags: Sequence[str] = (),
    report: Callable[[str], None] = rundir.warn,
) -> list[RunRow]:
    """The runs under `root` that match, oldest first.

    A run matches when it started at or after `since`, has `status` and
    carries every one of `tags`. A damaged record is one `report` line.

    Raises:
      ConfigError: `root` does not exist.
    """
    root = pathlib.Path(root)
    if not root.exists():
        raise ConfigError(f"{root}: no such directory")
    kept = []
    for record in rundir.scan_records(rundir.find_run_paths(root), report):
        started = _started(record)
        if since is not None and (started is None or started < since):
            continue
        if status is not None and record.status != status:
            continue
        if not set(tags) <= set(record.tags):
            continue
        kept.append((started, record))
    kept.sort(key=lambda item: (item[0] is None, item[0] or 0, str(item[1].path)))
    base = root if root.is_dir() and not (root / rundir.RECORD_NAME).exists() else None
    return [row(record, base or root.parent) for _, record in kept]


def format_rows(rows: Sequence[RunRow], with_notes: bool = False) -> str:
    """An aligned table, one line per run (and its note under it if asked)."""
    table = [list(COLUMNS)] + [r.cells() for r in rows]
    widths = [max(len(line[i]) for line in table) for i in range(len(COLUMNS))]
    out = []
    for i, cells in enumerate(table):
        out.append("  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)))
        out[-1] = out[-1].rstrip()
        if with_notes and i > 0 and rows[i - 1].note:
            out.append(f"    note: {rows[i - 1].note}")
    return "\n".join(out)
