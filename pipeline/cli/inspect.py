"""pipeline-inspect: does the real TensorBoard fill every tab a run should fill?

usage: pipeline-inspect [--check] [--timeout=60] RUN_DIR
  pipeline-inspect logs/demo-cnn
  pipeline-inspect --check logs/demo-cnn

Starts TensorBoard on the run's parent directory (the experiment root, where
the HParams config lives) on a free loopback port, asks its data API what
each tab would show, prints one line per tab and stops the server. With
--check, any empty tab makes it exit 1 with one line naming what is empty.
"""

from __future__ import annotations

import pathlib
import sys

from absl import app, flags

from pipeline import cli
from pipeline.config import help_group
from pipeline.tensorboard import board

FLAGS = flags.FLAGS


def define_flags(flag_values: flags.FlagValues = FLAGS) -> None:
    """Flags of pipeline-inspect."""
    fv = {"flag_values": flag_values}
    flags.DEFINE_boolean(
        "check", False, "Exit 1 with one line naming the empty tabs, if any.", **fv
    )
    flags.DEFINE_float(
        "timeout",
        60.0,
        "Seconds to wait for TensorBoard to load the run.",
        lower_bound=1,
        **fv,
    )
    flags.DEFINE_enum(
        "load_fast",
        "false",
        ["false", "true", "auto"],
        "TensorBoard's --load_fast: false uses the Python loaders, true/auto the "
        "Rust data server.",
        **fv,
    )
    help_group(flag_values, "check", ["check", "timeout", "load_fast"])


def main(argv: list[str]) -> None:
    """Checks the run directory given as the one positional argument."""
    if len(argv) != 2:
        raise app.UsageError("usage: pipeline-inspect [--check] RUN_DIR")
    cli.default_to_warnings(FLAGS)

    def body() -> int:
        from pipeline.runs import rundir

        run_path = pathlib.Path(argv[1]).resolve()
        if not (run_path / rundir.RECORD_NAME).is_file():
            raise board.BoardError(
                f"{argv[1]}: not a run directory (no {rundir.RECORD_NAME})"
            )
        server = board.TensorBoardServer(run_path.parent, load_fast=FLAGS.load_fast)
        with server:
            print(f"TensorBoard {server.url} on {run_path.parent}", flush=True)
            checks = board.check_run(server, run_path.name, run_path, FLAGS.timeout)
        for check in checks:
            print(f"{'ok   ' if check.ok else 'EMPTY'}  {check.tab:<26} {check.detail}")
        empty = [f"{c.tab}: {c.detail}" for c in checks if not c.ok]
        if empty and FLAGS.check:
            print(
                f"pipeline-inspect: error: {argv[1]}: empty tabs: {'; '.join(empty)}",
                file=sys.stderr,
            )
            return 1
        return 0

    sys.exit(cli.run_reporting_errors("pipeline-inspect", body))


def run() -> None:
    """Console-script entry point."""
    cli.start("pipeline-inspect", define_flags, main, __doc__)


if __name__ == "__main__":
    run()
