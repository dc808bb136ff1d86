"""Shared plumbing for the absl entry points: one-line user errors, quiet TF logs."""

from __future__ import annotations

import importlib
import logging
import os
import resource
import sys
import types
from collections.abc import Callable, Sequence

from absl import app, flags
from absl import logging as absl_logging

from pipeline import processes, streams
from pipeline.cli import stderr_filter
from pipeline.cli.usage import help_request, help_text
from pipeline.errors import PipelineError, one_line

# The smallest address-space limit (`ulimit -v`) the programs are let start
# under: TensorFlow maps ~1 GB of libraries and reserves memory per thread.
# Measured on the 2-core test machine (pipeline-train --model=logreg
# --steps=5): 2,000,000 KiB failed, 1,600,000 KiB hung in C++ and
# 1,200,000 KiB aborted after creating the run; 2,400,000 KiB trained.
MIN_ADDRESS_SPACE = 2 * 1024**3
# How an exhausted address space shows in an ImportError of a native library.
_NO_MEMORY_WORDS = ("failed to map segment", "cannot allocate memory")


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


class DeferredModule(types.ModuleType):
    """Stands in `sys.modules` for a module until an attribute of it is read.

    `import a.b as c` finds the stand-in and binds it without running the
    module; the first attribute read imports the real module (which then
    takes the stand-in's place in `sys.modules`) and reads it there.
    `importlib.util.LazyLoader` cannot do this: the `import` statement reads
    a module's `__spec__`, which makes a lazy module load.
    """

    def __getattr__(self, attribute: str):
        if sys.modules.get(self.__name__) is self:
            del sys.modules[self.__name__]
        return getattr(importlib.import_module(self.__name__), attribute)


def defer_pyplot() -> None:
    """Keeps importing TensorFlow from importing matplotlib's pyplot.

    Keras imports `matplotlib.pyplot` (~0.4 s of CPU, an eighth of
    TensorFlow's import here) for one plotting helper, and every program that
    loads TensorFlow paid for it; the pipeline's own plots import it when
    they draw. Call before TensorFlow is imported.
    """
    if "matplotlib.pyplot" not in sys.modules:
        sys.modules["matplotlib.pyplot"] = DeferredModule("matplotlib.pyplot")


def before_tensorflow() -> None:
    """Sets up a process that is about to import TensorFlow: pyplot deferred
    (`defer_pyplot`), the garbage collector's pace
    (`processes.collect_less_often`). `start` calls it for every program;
    the sweep trainer, the TensorBoard server program, the benchmarks and the
    test session call it too, so they run as the programs do."""
    defer_pyplot()
    processes.collect_less_often()


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
    except (ImportError, MemoryError) as err:
        if isinstance(err, ImportError) and not _is_out_of_memory(err):
            raise
        print(f"{prog}: error: {out_of_memory_line(err)}", file=sys.stderr)
        return 1
    except Exception as err:
        # A write the disk refused (full, read-only, too large) is one line
        # naming the path; anything else is a bug and keeps its traceback.
        from pipeline.runs.rundir import write_failure

        failure = write_failure(err)
        if failure is None:
            raise
        print(f"{prog}: error: {failure}", file=sys.stderr)
        return 1


def _is_out_of_memory(err: ImportError) -> bool:
    text = str(err).lower()
    return any(words in text for words in _NO_MEMORY_WORDS)


def _address_space_limit() -> int | None:
    """The soft `ulimit -v` in bytes; None when there is none."""
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    return None if soft == resource.RLIM_INFINITY else soft


def out_of_memory_line(err: BaseException) -> str:
    """One line for a library that could not load or allocate: what failed
    and, when one is set, the address-space limit that made it fail."""
    limit = _address_space_limit()
    what = one_line(str(err)) or type(err).__name__
    if limit is None:
        return f"out of memory ({what})"
    return (
        f"out of memory under the address-space limit of {limit // 2**20:,} MiB "
        f"(ulimit -v) ({what}); raise or remove the limit"
    )


def check_address_space(prog: str) -> None:
    """Exits with one line when `ulimit -v` is too low for TensorFlow to load.

    Below `MIN_ADDRESS_SPACE` TensorFlow fails in C++ (an abort, a hang, an
    ImportError) at a point that depends on the limit, maybe after a run
    directory exists; refusing first leaves nothing behind.
    """
    limit = _address_space_limit()
    if limit is not None and limit < MIN_ADDRESS_SPACE:
        print(
            f"{prog}: error: the address-space limit (ulimit -v) is "
            f"{limit // 2**20:,} MiB; TensorFlow needs at least "
            f"{MIN_ADDRESS_SPACE // 2**20:,} MiB to load: raise or remove it",
            file=sys.stderr,
        )
        sys.exit(1)


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
            print(f"{prog}: error: {message} (see {prog} --help)", file=sys.stderr)
            sys.exit(1)
        except UnicodeDecodeError as err:
            # absl reads flagfiles as text and does not say which one failed.
            where = undecodable_flagfile(argv) or "a --flagfile"
            print(
                f"{prog}: error: {where}: not a UTF-8 text file ({err.reason} at "
                f"byte {err.start})",
                file=sys.stderr,
            )
            sys.exit(1)

    return parse


def no_arguments(argv: list[str]) -> None:
    """Refuses positional arguments (the program takes flags only).

    `learning_rate=0.1` without its `--` is the usual slip: the message
    shows the flag it probably meant.
    """
    if len(argv) <= 1:
        return
    hints = [
        f"--{arg}"
        for arg in argv[1:]
        if arg.partition("=")[0] in flags.FLAGS and not arg.startswith("-")
    ]
    meant = f"did you mean {' '.join(hints)}?" if hints else "it takes flags only"
    raise app.UsageError(
        f"unexpected argument{'s' if len(argv) > 2 else ''} "
        f"{' '.join(argv[1:])} ({meant})"
    )


def _one_line_usage_errors(
    prog: str, main: Callable[[list[str]], None]
) -> Callable[[list[str]], None]:
    """`main`, with absl's `UsageError` reported in one line plus a pointer to
    --help (absl itself prints the whole help before the message)."""

    def run_main(argv: list[str]) -> None:
        try:
            main(argv)
        except app.UsageError as err:
            print(f"{prog}: error: {err} (see {prog} --help)", file=sys.stderr)
            sys.exit(err.exitcode)

    return run_main


def run_in_process(
    prog: str, main: Callable[[list[str]], None], argv: list[str]
) -> int:
    """Runs an entry point's `main` on `argv` as `start` does, in this
    process, and returns its exit status instead of exiting with it: a sweep
    worker's warm training process (`pipeline.cli.sweep_trainer`) trains run
    after run this way. The flags are parsed afresh (every flag back at its
    default first); `sys.argv` is `argv` while it runs.
    """
    sys.argv = list(argv)
    flags.FLAGS.unparse_flags()
    try:
        rest = one_line_flags_parser(prog)(sys.argv)
        _one_line_usage_errors(prog, main)(rest)
    except SystemExit as done:
        code = done.code
        return code if isinstance(code, int) else (0 if code is None else 1)
    return 0


def _flagfile_args(args: list[str]) -> list[str]:
    """The files `--flagfile=F` / `--flagfile F` arguments name, in order."""
    found = []
    for i, arg in enumerate(args):
        name, eq, value = arg.lstrip("-").partition("=")
        if not arg.startswith("-") or name != "flagfile":
            continue
        if eq:
            found.append(value)
        elif i + 1 < len(args):
            found.append(args[i + 1])
    return found


def undecodable_flagfile(argv: list[str], depth: int = 0) -> str | None:
    """The first flagfile (nested ones included) that is not UTF-8 text."""
    for path in _flagfile_args(argv):
        try:
            with open(path, "rb") as file:
                text = file.read().decode("utf-8")
        except UnicodeDecodeError:
            return path
        except OSError:
            continue
        nested = [line.strip() for line in text.splitlines()]
        found = depth < 10 and undecodable_flagfile(["", *nested], depth + 1)
        if found:
            return found
    return None


def start(
    prog: str,
    define_flags: Callable[..., None],
    main: Callable[[list[str]], None],
    doc: str,
    full_only: Sequence[str] = (),
    trains: bool = True,
) -> None:
    """Console-script entry point shared by every `pipeline-*` program.

    Makes a closed output stream end the output, not the program
    (`pipeline.streams`), refuses an address-space limit TensorFlow cannot
    load under, quiets TensorFlow's logs, defines the program's flags on absl's FLAGS,
    and runs `main` with a parser that reports a bad flag in one line.
    `doc` (the program module's docstring: what it does, usage, examples)
    opens `--help`, which lists the flags by help group and exits 0;
    `full_only` names groups that only `--helpfull` lists (a sweep's
    training flags). A program that never `trains` in its own process (a
    sweep worker) reads event files without TensorFlow
    (`events.read_without_tensorflow`).
    """
    if not trains:
        from pipeline.tensorboard import events

        events.read_without_tensorflow()
    streams.guard_output()
    check_address_space(prog)
    quiet_tensorflow(sys.argv)
    before_tensorflow()
    define_flags(flags.FLAGS)
    wanted = help_request(sys.argv)
    if wanted:
        text = help_text(doc, flags.FLAGS, full=wanted == "full", full_only=full_only)
        try:
            print(text, flush=True)
        except BrokenPipeError:
            # `pipeline-train --help | head`: the reader had enough. Point
            # stdout at /dev/null so the exit's flush does not fail again.
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(0)
    app.run(
        _one_line_usage_errors(prog, main), flags_parser=one_line_flags_parser(prog)
    )
