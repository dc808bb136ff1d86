"""pipeline-runs: list, annotate, compare, archive and delete runs.

usage: pipeline-runs COMMAND [flags] ARGS
  pipeline-runs list [DIR] [--since=7d] [--status=completed] [--tag=baseline]
  pipeline-runs note RUN "why this run was made"     ('' removes the note)
  pipeline-runs tag RUN NAME... [--remove=NAME] [--clear]
  pipeline-runs diff RUN_A RUN_B
  pipeline-runs archive RUN_OR_SWEEP... [--archive_dir=DIR]
  pipeline-runs delete RUN_OR_SWEEP... --yes

RUN is a run directory (logs/NAME) or a name under --logdir. note, tag,
archive and delete take each run's lock: a run being trained is refused.
Nothing here imports TensorFlow (docs/run-tracking.md).
"""

from __future__ import annotations

import pathlib
import sys

from absl import flags

from pipeline import cli
from pipeline.config import help_group
from pipeline.errors import ConfigError, RunDirError
from pipeline.runs import annotations, archive, listing, rundiff, rundir

FLAGS = flags.FLAGS
PROG = "pipeline-runs"
COMMANDS = ("list", "note", "tag", "diff", "archive", "delete")
USAGE = "give one of list, note, tag, diff, archive, delete (see --help)"


def define_flags(flag_values: flags.FlagValues = FLAGS) -> None:
    """Flags of pipeline-runs (each names the subcommand it serves)."""
    fv = {"flag_values": flag_values}
    flags.DEFINE_string(
        "logdir",
        "logs",
        "Where runs are: list's default DIR; RUN names under it.",
        **fv,
    )
    flags.DEFINE_string(
        "since",
        None,
        "list: runs started at or after this UTC date/time (2026-12-01, "
        "2026-12-01T09:30) or within this age (7d, 12h, 30m).",
        **fv,
    )
    flags.DEFINE_enum(
        "status", None, rundir.STATUSES, "list: only runs with this status.", **fv
    )
    flags.DEFINE_multi_string(
        "tag", [], "list: only runs with this tag (repeat: all of them).", **fv
    )
    flags.DEFINE_boolean("notes", False, "list: print each run's note under it.", **fv)
    flags.DEFINE_multi_string("remove", [], "tag: remove this tag (repeatable).", **fv)
    flags.DEFINE_boolean("clear", False, "tag: remove every tag first.", **fv)
    flags.DEFINE_string(
        "archive_dir",
        None,
        "archive: the folder runs move to (default: beside the top directory "
        "of the path, named TOP.archive: logs/sweep/run -> logs.archive/sweep/run).",
        **fv,
    )
    flags.DEFINE_boolean(
        "yes", False, "delete: really delete (without it, nothing is removed).", **fv
    )
    help_group(flag_values, "where", ["logdir"])
    help_group(flag_values, "list", ["since", "status", "tag", "notes"])
    help_group(flag_values, "tag (the command)", ["remove", "clear"])
    help_group(flag_values, "archive and delete", ["archive_dir", "yes"])


def run_path(name: str) -> pathlib.Path:
    """A run directory named by path, or by name under --logdir.

    Raises:
      RunDirError: neither holds a run.
    """
    for candidate in (pathlib.Path(name), pathlib.Path(FLAGS.logdir) / name):
        if (candidate / rundir.RECORD_NAME).is_file():
            return candidate
    raise RunDirError(
        f"{name}: no such run (no {rundir.RECORD_NAME} there or under "
        f"--logdir={FLAGS.logdir})"
    )


def _existing(name: str) -> pathlib.Path:
    path = pathlib.Path(name)
    if path.exists():
        return path
    return run_path(name)


def _args(args: list[str], count: int | None, what: str) -> list[str]:
    if (count is None and not args) or (count is not None and len(args) != count):
        raise ConfigError(f"{PROG} {what}")
    return args


def list_command(args: list[str]) -> None:
    root = args[0] if args else FLAGS.logdir
    since = listing.parse_since(FLAGS.since) if FLAGS.since else None
    rows = listing.list_runs(
        root, since, FLAGS.status, FLAGS.tag, report=cli.warner(PROG)
    )
    print(listing.format_rows(rows, FLAGS.notes))


def note_command(args: list[str]) -> None:
    name, text = _args(args, 2, "note RUN TEXT: give a run and one note ('' clears)")
    record = annotations.annotate(run_path(name), note=text)
    print(f"{record.path.parent}: note {'set' if record.note else 'removed'}")


def tag_command(args: list[str]) -> None:
    name, *tags = _args(args, None, "tag RUN NAME... [--remove=NAME] [--clear]")
    if not (tags or FLAGS.remove or FLAGS.clear):
        raise ConfigError(f"{PROG} tag {name}: give tags to add, --remove or --clear")
    annotations.check_tags(tags, "tag")
    record = annotations.annotate(
        run_path(name), add=tags, remove=FLAGS.remove, clear_tags=FLAGS.clear
    )
    print(f"{record.path.parent}: tags {','.join(record.tags) or '(none)'}")


def diff_command(args: list[str]) -> None:
    first, second = _args(args, 2, "diff RUN_A RUN_B: give two runs")
    print(
        rundiff.diff_runs(
            rundir.load_record(run_path(first)), rundir.load_record(run_path(second))
        )
    )


def archive_command(args: list[str]) -> None:
    for name in _args(args, None, "archive RUN_OR_SWEEP...: give what to archive"):
        target = archive.archive(_existing(name), FLAGS.archive_dir)
        print(f"archived {name} -> {target}")


def delete_command(args: list[str]) -> None:
    paths = [_existing(n) for n in _args(args, None, "delete RUN_OR_SWEEP...")]
    if not FLAGS.yes:
        count = sum(len(rundir.find_run_paths(p)) for p in paths)
        raise ConfigError(
            f"delete would remove {count} run(s) in {' '.join(map(str, paths))}; "
            "pass --yes to delete them (archive keeps them instead)"
        )
    for path in paths:
        removed = archive.delete(path)
        print(f"deleted {path} ({len(removed)} run(s))")


HANDLERS = {
    "list": list_command,
    "note": note_command,
    "tag": tag_command,
    "diff": diff_command,
    "archive": archive_command,
    "delete": delete_command,
}


def main(argv: list[str]) -> None:
    """Dispatches to the subcommand named by the first argument."""
    if len(argv) < 2 or argv[1] not in COMMANDS:
        given = f"unknown command {argv[1]!r}; " if len(argv) > 1 else ""
        print(f"{PROG}: error: {given}{USAGE}", file=sys.stderr)
        sys.exit(1)
    command, args = argv[1], argv[2:]
    sys.exit(cli.run_reporting_errors(PROG, lambda: HANDLERS[command](args)))


def run() -> None:
    """Console-script entry point."""
    cli.start(PROG, define_flags, main, __doc__)


if __name__ == "__main__":
    run()
