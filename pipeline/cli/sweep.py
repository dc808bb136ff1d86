"""`pipeline-sweep`: a grid of training runs over a base flagfile, resumable.

    pipeline-sweep --flagfile=flags/mlp_relu_10x30.cfg \
        --grid=learning_rate=0.1,0.01 --grid=activation=sigmoid,relu \
        --grid=hidden_layers=3,11 --repeats=3 --sweep_name=mlp_tuning --parallel=2

Every training flag is accepted too and sets the base of each run (so
`--flagfile` may name a training flagfile, or a sweep file under
`flags/sweeps/` that includes one). Runs go to LOGDIR/SWEEP_NAME/RUN.
"""

from __future__ import annotations

import pathlib
import signal
import sys

from absl import app, flags

from pipeline import cli
from pipeline import config as config_lib
from pipeline.tensorboard import hparams as hparams_lib
from pipeline.tools import sweep

FLAGS = flags.FLAGS


def define_flags(flag_values: flags.FlagValues = FLAGS) -> None:
    """The training flags (the base of every run) plus the sweep's own."""
    config_lib.define_flags(flag_values)
    fv = {"flag_values": flag_values}
    flags.DEFINE_multi_string(
        "grid",
        [],
        "FLAG=V1,V2,...: one axis of the grid (repeat the flag for more axes). "
        "List-valued flags take FLAG=A,B|C,D.",
        **fv,
    )
    flags.DEFINE_integer(
        "repeats",
        1,
        "Runs per combination, with seeds SEED, SEED+1, ...",
        lower_bound=1,
        **fv,
    )
    flags.DEFINE_string(
        "sweep_name", None, "Sweep directory under --logdir (required).", **fv
    )
    flags.DEFINE_integer(
        "parallel",
        1,
        "Training processes at once.",
        lower_bound=1,
        upper_bound=64,
        **fv,
    )
    flags.DEFINE_boolean("dry_run", False, "Print the plan and exit.", **fv)
    flags.register_validator(
        "sweep_name",
        lambda v: (
            v is not None
            and bool(config_lib.RUN_NAME_PATTERN.match(v))
            and ".." not in v
        ),
        message="--sweep_name is required: letters, digits and . _ = , + - only",
        flag_values=flag_values,
    )


def _raise_keyboard_interrupt(signum, frame):
    raise KeyboardInterrupt


def main(argv: list[str]) -> None:
    """Plans the grid, skips completed runs, trains the rest."""
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    cli.default_to_warnings(FLAGS)

    def body() -> int:
        if FLAGS.run_name:
            raise sweep.SweepError("--run_name: the sweep names its runs; drop it")
        base = config_lib.config_from_flags(FLAGS, sys.argv)
        axes = sweep.parse_grid(FLAGS.grid)
        runs = sweep.plan(base, axes, FLAGS.repeats, FLAGS.sweep_name)
        experiment = pathlib.Path(base.logdir) / FLAGS.sweep_name
        print(
            f"sweep {FLAGS.sweep_name}: {len(runs)} runs "
            f"({len(runs) // FLAGS.repeats} combinations x {FLAGS.repeats} repeats) "
            f"in {experiment}"
        )
        if FLAGS.dry_run:
            for run in runs:
                print(f"  {run.name}")
            return 0
        done, todo, notes = sweep.triage(runs)
        for note in notes:
            print(note)
        print(
            f"{len(done)} already completed, {len(todo)} to run, "
            f"{FLAGS.parallel} at a time"
        )
        grid_flags = {axis.flag for axis in axes} | (
            {"seed"} if FLAGS.repeats > 1 else set()
        )
        hparams_lib.write_experiment_config(experiment, grid_flags)
        signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
        try:
            outcomes = sweep.execute(todo, FLAGS.parallel, len(runs), done)
        except KeyboardInterrupt:
            print(
                "pipeline-sweep: interrupted; run the same command again to finish",
                file=sys.stderr,
            )
            return 130
        failed = [o for o in outcomes if o.status != "completed"]
        print(
            f"sweep {FLAGS.sweep_name}: "
            f"{len(runs) - len(failed)}/{len(runs)} completed. "
            f"Compare: pipeline-compare {experiment}"
        )
        if failed:
            print(
                f"pipeline-sweep: error: {len(failed)} runs failed: "
                + "; ".join(f"{o.run.name}: {o.message}" for o in failed),
                file=sys.stderr,
            )
            return 1
        return 0

    sys.exit(cli.run_reporting_errors("pipeline-sweep", body))


def run() -> None:
    """Console-script entry point."""
    cli.start("pipeline-sweep", define_flags, main)


if __name__ == "__main__":
    run()
