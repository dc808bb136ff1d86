"""pipeline-sweep: train many runs over a grid or search space (an Optuna study).

usage: pipeline-sweep --sweep_name=NAME (--grid=FLAG=V1,V2 | --search=FLAG=SPACE)...
                      [--flagfile=TRAINING_OR_SWEEP_FILE] [--TRAINING_FLAG=VALUE ...]
  pipeline-sweep --flagfile=flags/sweeps/mlp_tuning.cfg
  pipeline-sweep --flagfile=flags/mlp_relu_10x30.cfg --sweep_name=mlp_search \\
      --search=learning_rate=log:1e-4:1e-1 --search=hidden_layers=int:1:11 \\
      --trials=20 --pruner=median --workers=2

Every pipeline-train flag is accepted too and sets the base of each run
(pipeline-train --help lists them; --helpfull lists them here). Runs go to
LOGDIR/SWEEP_NAME/RUN, the study to --storage; the same command on another
machine, with a shared --storage, is one more worker. Re-running it
continues the study. docs/search.md has the details.
"""

from __future__ import annotations

import signal
import sys

from absl import flags

from pipeline import cli
from pipeline import config as config_lib
from pipeline.tools import sweep_driver

FLAGS = flags.FLAGS


def define_flags(flag_values: flags.FlagValues = FLAGS) -> None:
    """The training flags (the base of every run) plus the sweep's own."""
    config_lib.define_flags(flag_values)
    _define_search_flags(flag_values)
    _define_study_flags(flag_values)
    _define_workplace_flags(flag_values)


def _define_search_flags(flag_values: flags.FlagValues) -> None:
    """What is searched: the grid or search space, how trials are picked, how many."""
    fv = {"flag_values": flag_values}
    flags.DEFINE_multi_string(
        "grid",
        [],
        "FLAG=V1,V2,...: one axis of the grid (repeat the flag for more axes). "
        "List-valued flags take FLAG=A,B|C,D.",
        **fv,
    )
    flags.DEFINE_multi_string(
        "search",
        [],
        "FLAG=log:LOW:HIGH, FLAG=float:LOW:HIGH, FLAG=int:LOW:HIGH[:STEP] or "
        "FLAG=choice:V1,V2: one searched flag (repeat for more).",
        **fv,
    )
    flags.DEFINE_enum(
        "sampler",
        None,
        ["tpe", "random", "grid"],
        "How the study picks the next trial (default: grid for --grid alone, "
        "else tpe).",
        **fv,
    )
    flags.DEFINE_integer(
        "trials",
        None,
        "The study's total number of trials, over all workers and re-runs "
        "(default for a grid: every point).",
        lower_bound=1,
        **fv,
    )
    flags.DEFINE_integer(
        "repeats",
        1,
        "Runs per configuration (a trial), with seeds SEED, SEED+1, ...; the "
        "trial's value is their mean.",
        lower_bound=1,
        **fv,
    )
    config_lib.help_group(
        flag_values,
        "sweep: what is searched",
        ["grid", "search", "sampler", "trials", "repeats"],
    )


def _define_study_flags(flag_values: flags.FlagValues) -> None:
    """How trials are judged: the metric, its direction, and early stopping."""
    fv = {"flag_values": flag_values}
    flags.DEFINE_enum(
        "pruner",
        "none",
        ["none", "median", "hyperband"],
        "Stop hopeless trials early: median (below the median of earlier "
        "trials at the same step) or hyperband. A stopped run ends `pruned`.",
        **fv,
    )
    flags.DEFINE_integer(
        "startup_trials",
        5,
        "Trials sampled at random before TPE models the space, and finished "
        "before the median pruner prunes.",
        lower_bound=0,
        **fv,
    )
    flags.DEFINE_float(
        "prune_worse_than",
        None,
        "A floor, with any --pruner: a trial whose --metric is worse than this "
        "at an evaluation from --prune_from_step on is pruned (e.g. 0.2 for "
        "test/accuracy: at chance on ten classes). Unlike the median pruner "
        "it needs no completed trials to judge.",
        **fv,
    )
    flags.DEFINE_integer(
        "prune_from_step",
        0,
        "The first step at which --prune_worse_than judges (a run's first "
        "evaluations may be at chance before it learns).",
        lower_bound=0,
        **fv,
    )
    flags.DEFINE_enum(
        "metric",
        "test/accuracy",
        ["test/accuracy", "test/loss"],
        "What the study optimises: reported at every evaluation, final value "
        "at the end.",
        **fv,
    )
    flags.DEFINE_enum(
        "direction",
        None,
        ["maximize", "minimize"],
        "Default: maximize for accuracy, minimize for loss.",
        **fv,
    )
    config_lib.help_group(
        flag_values,
        "sweep: judging and pruning trials",
        [
            "metric",
            "direction",
            "pruner",
            "startup_trials",
            "prune_worse_than",
            "prune_from_step",
        ],
    )


def _define_workplace_flags(flag_values: flags.FlagValues) -> None:
    """Where the sweep lives and who works on it: its name, study database,
    local workers, and a dry run."""
    fv = {"flag_values": flag_values}
    flags.DEFINE_string(
        "storage",
        None,
        "The study's database: sqlite:///PATH (default "
        "LOGDIR/SWEEP_NAME/study.db) or postgresql://USER@HOST:PORT/DB for "
        "workers on several machines (password: PGPASSWORD or ~/.pgpass).",
        **fv,
    )
    flags.DEFINE_string(
        "sweep_name",
        None,
        "Sweep directory under --logdir, and the study's name (required).",
        **fv,
    )
    flags.DEFINE_integer(
        "workers",
        1,
        "Local workers (each trains one run at a time).",
        lower_bound=1,
        upper_bound=64,
        **fv,
    )
    flags.DEFINE_alias("parallel", "workers", flag_values=flag_values)
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
    config_lib.help_group(
        flag_values,
        "sweep: name, storage and workers",
        ["sweep_name", "storage", "workers", "dry_run"],
    )


def _raise_keyboard_interrupt(signum, frame):
    raise KeyboardInterrupt


def main(argv: list[str]) -> None:
    """Opens (or joins) the study and trains trials until its total is reached."""
    cli.no_arguments(argv)
    cli.default_to_warnings(FLAGS)

    def body() -> int:
        if FLAGS.run_name:
            raise sweep_driver.SweepError(
                "--run_name: the sweep names its runs; drop it"
            )
        request = sweep_driver.Request(
            base=config_lib.config_from_flags(FLAGS, sys.argv),
            sweep_name=FLAGS.sweep_name,
            grid=tuple(FLAGS.grid),
            search=tuple(FLAGS.search),
            sampler=FLAGS.sampler,
            trials=FLAGS.trials,
            repeats=FLAGS.repeats,
            pruner=FLAGS.pruner,
            startup_trials=FLAGS.startup_trials,
            prune_worse_than=FLAGS.prune_worse_than,
            prune_from_step=FLAGS.prune_from_step,
            metric=FLAGS.metric,
            direction=FLAGS.direction,
            storage=FLAGS.storage,
        )
        sweep = sweep_driver.plan(request)
        if FLAGS.dry_run:
            sweep_driver.print_plan(sweep)
            return 0
        signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
        return sweep_driver.run(sweep, FLAGS.workers)

    sys.exit(cli.run_reporting_errors("pipeline-sweep", body))


def run() -> None:
    """Console-script entry point."""
    cli.start(
        "pipeline-sweep", define_flags, main, __doc__, full_only=config_lib.HELP_GROUPS
    )


if __name__ == "__main__":
    run()
