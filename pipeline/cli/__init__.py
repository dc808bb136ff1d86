"""Shared plumbing for the absl entry points: one-line user errors, quiet TF logs."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable

from absl import app, flags
from absl import logging as absl_logging

from pipeline.cli import stderr_filter
from pipeline.errors import PipelineError


def quiet_tensorflow(argv: list[str]) -> None:
    """Hides TensorFlow's info logs and start-up lines unless `--verbosity` asks.

    Call before TensorFlow is imported: its start-up lines are printed on
    import, by C++, and only a filter on file descriptor 2 keeps them off
    the console (`stderr_filter`).
    """
    if not stderr_filter.wants_logs(argv):
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        stderr_filter.install(argv)
    logging.getLogger("tensorflow").setLevel(logging.WARNING)


def default_to_warnings(flag_values) -> None:
    """Call after parsing: absl's app.run logs INFO; keep WARNING unless --verbosity."""
    if not flag_values["verbosity"].present:
        absl_logging.set_verbosity(absl_logging.WARNING)


def warner(prog: str) -> Callable[[str], None]:
    """Prints `prog: warning: ...` lines on stderr (stdout stays for results)."""

    def warn(message: str) -> None:
        print(f"{prog}: warning: {message}", file=sys.stderr, flush=True)

    return warn


def run_reporting_errors(prog: str, body: Callable[[], int | None]) -> int:
    """Runs `body`; a `PipelineError` becomes `prog: error: ...` on stderr.

    Call from an absl `main` (flags parsed): it also keeps absl's Python log
    at WARNING unless the user passed --verbosity. The exit status is the
    error's `exit_code` (1 for a user error, 128 + signal for an interrupted
    run, 42 for a preempted worker); Ctrl-C before training starts exits 130.
    """
    default_to_warnings(flags.FLAGS)
    try:
        return body() or 0
    except PipelineError as err:
        print(f"{prog}: error: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print(f"{prog}: error: interrupted (SIGINT)", file=sys.stderr)
        return 130
    except Exception as err:
        # A write the disk refused (full, read-only, too large) is one line
        # naming the path; anything else is a bug and keeps its traceback.
        from pipeline.runs.rundir import write_failure

        failure = write_failure(err)
        if failure is None:
            raise
        print(f"{prog}: error: {failure}", file=sys.stderr)
        return 1


def one_line_flags_parser(prog: str) -> Callable[[list[str]], list[str]]:
    """An `app.run(flags_parser=...)` that reports a bad flag in one line.

    absl's default parser prints `FATAL Flags parsing error: ...` plus a hint
    line (and indents multi-line messages); this keeps the message, names the
    flag, and matches the `prog: error: ...` form of every other user error.
    """

    def parse(argv: list[str]) -> list[str]:
        try:
            return flags.FLAGS(argv)
        except flags.Error as err:
            message = " ".join(str(err).split()).removeprefix("ERROR:: ")
            print(f"{prog}: error: {message} (see --helpfull)", file=sys.stderr)
            sys.exit(1)

    return parse


def start(
    prog: str,
    define_flags: Callable[..., None],
    main: Callable[[list[str]], None],
) -> None:
    """Console-script entry point shared by every `pipeline-*` program.

    Quiets TensorFlow's logs, defines the program's flags on absl's FLAGS,
    and runs `main` with a parser that reports a bad flag in one line.
    The program's flags are made key flags of the main module, so `--help`
    lists them (absl's `--help` shows only the main module's key flags, and
    these are defined in library modules; `--helpfull` adds absl's own).
    """
    quiet_tensorflow(sys.argv)
    defined_before = set(flags.FLAGS)
    define_flags(flags.FLAGS)
    for name in sorted(set(flags.FLAGS) - defined_before):
        flags.FLAGS.register_key_flag_for_module(sys.argv[0], flags.FLAGS[name])
    app.run(main, flags_parser=one_line_flags_parser(prog))
