"""Shared plumbing for the absl entry points: one-line user errors, quiet TF logs."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable


def quiet_tensorflow(argv: list[str]) -> None:
    """Hides TensorFlow's info logs and start-up lines unless `--verbosity` asks.

    Call before TensorFlow is imported: its start-up lines are printed on
    import, by C++, and only a filter on file descriptor 2 keeps them off
    the console (`stderr_filter`).
    """
    from pipeline.cli import stderr_filter  # noqa: PLC0415

    if not stderr_filter.wants_logs(argv):
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        stderr_filter.install(argv)
    logging.getLogger("tensorflow").setLevel(logging.WARNING)


def default_to_warnings(flag_values) -> None:
    """Call after parsing: absl's app.run logs INFO; keep WARNING unless --verbosity."""
    from absl import logging as absl_logging  # noqa: PLC0415

    if not flag_values["verbosity"].present:
        absl_logging.set_verbosity(absl_logging.WARNING)


def user_error_types() -> tuple[type[BaseException], ...]:
    """Exceptions that are the user's to fix: shown as one line, no traceback."""
    from pipeline.config import ConfigError  # noqa: PLC0415
    from pipeline.data import DataError  # noqa: PLC0415
    from pipeline.runs.rundir import RunDirError  # noqa: PLC0415
    from pipeline.training.distribute import DistributeError  # noqa: PLC0415

    types: list[type[BaseException]] = [
        ConfigError,
        DataError,
        RunDirError,
        DistributeError,
    ]
    if "pipeline.training.loop" in sys.modules:
        types.append(sys.modules["pipeline.training.loop"].TrainingError)
    return tuple(types)


def run_reporting_errors(prog: str, body: Callable[[], int | None]) -> int:
    """Runs `body`; a user error becomes `prog: error: ...` on stderr and exit 1.

    Call from an absl `main` (flags parsed): it also keeps absl's Python log
    at WARNING unless the user passed --verbosity. An error with an
    `exit_code` attribute (an interrupted run: 128 + signal) exits with that
    code instead; Ctrl-C before training starts exits 130.
    """
    from absl import flags  # noqa: PLC0415

    default_to_warnings(flags.FLAGS)
    try:
        return body() or 0
    except user_error_types() as err:
        print(f"{prog}: error: {err}", file=sys.stderr)
        return getattr(err, "exit_code", 1)
    except KeyboardInterrupt:
        print(f"{prog}: error: interrupted (SIGINT)", file=sys.stderr)
        return 130


def one_line_flags_parser(prog: str) -> Callable[[list[str]], list[str]]:
    """An `app.run(flags_parser=...)` that reports a bad flag in one line.

    absl's default parser prints `FATAL Flags parsing error: ...` plus a hint
    line (and indents multi-line messages); this keeps the message, names the
    flag, and matches the `prog: error: ...` form of every other user error.
    """
    from absl import flags  # noqa: PLC0415

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
    """
    from absl import app, flags  # noqa: PLC0415

    quiet_tensorflow(sys.argv)
    define_flags(flags.FLAGS)
    app.run(main, flags_parser=one_line_flags_parser(prog))
