"""pipeline-board: TensorBoard on the log directory, on localhost, on a free port.

usage: pipeline-board [--logdir=logs] [--port=0] [--host=127.0.0.1]
  pipeline-board
  pipeline-board --logdir=logs/mlp_tuning --port=6006

Prints the address and serves until Ctrl-C; runs whose run.json is damaged
are named, one line each.
"""

from __future__ import annotations

import sys

from absl import flags

from pipeline import cli
from pipeline.config import help_group
from pipeline.tensorboard import board

FLAGS = flags.FLAGS


def define_flags(flag_values: flags.FlagValues = FLAGS) -> None:
    """Flags of pipeline-board."""
    fv = {"flag_values": flag_values}
    flags.DEFINE_string("logdir", "logs", "Directory of runs to serve.", **fv)
    flags.DEFINE_string(
        "host",
        "127.0.0.1",
        "Interface to bind. The default keeps the board on this machine; "
        "0.0.0.0 exposes it to the network.",
        **fv,
    )
    flags.DEFINE_integer(
        "port", 0, "Port (0: a free one).", lower_bound=0, upper_bound=65535, **fv
    )
    flags.DEFINE_enum(
        "load_fast",
        "auto",
        ["false", "true", "auto"],
        "TensorBoard's --load_fast.",
        **fv,
    )
    help_group(flag_values, "server", ["logdir", "host", "port", "load_fast"])


def main(argv: list[str]) -> None:
    """Starts TensorBoard, prints its address, serves until Ctrl-C."""
    cli.no_arguments(argv)
    cli.default_to_warnings(FLAGS)

    def body() -> int:
        from pipeline.runs import rundir
        from pipeline.tensorboard import hparams

        # Damaged runs are named (one line each); TensorBoard shows the rest.
        runs = rundir.find_run_paths(FLAGS.logdir)
        for _ in rundir.scan_records(runs, cli.warner("pipeline-board")):
            pass
        if runs:  # HParams: one table of every run below, sweeps included
            hparams.write_experiment_config(FLAGS.logdir)
        server = board.TensorBoardServer(
            FLAGS.logdir, host=FLAGS.host, port=FLAGS.port, load_fast=FLAGS.load_fast
        )
        server.start()
        print(
            f"TensorBoard: {server.url}/  (logdir {FLAGS.logdir}; Ctrl-C stops it)",
            flush=True,
        )
        try:
            return server.wait()
        except KeyboardInterrupt:
            return 0
        finally:
            server.stop()

    sys.exit(cli.run_reporting_errors("pipeline-board", body))


def run() -> None:
    """Console-script entry point."""
    # TensorBoard serves from a process of its own; this one only reads the
    # HParams config (`trains=False`: without TensorFlow, ~1.8 s of CPU less).
    cli.start("pipeline-board", define_flags, main, __doc__, trains=False)


if __name__ == "__main__":
    run()
