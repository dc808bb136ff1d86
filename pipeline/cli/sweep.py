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

Exit status: 0 when every trial ended as a trial can: completed, pruned, or
diverged (its loss or weights turned NaN/Inf: a result the search found,
recorded `diverged` and counted apart). Non-zero when the search itself went
wrong: 1 for a crashed trial (named on stderr), bad input or a storage that
cannot be opened; 130 when interrupted (run the same command to continue).
"""

from __future__ import annotations

import signal
import sys

from absl import flags

from pipeline import cli
from pipeline import config as config_lib
from pipeline.sweep import SweepError, driver, trainer

FLAGS = flags.FLAGS
_INT = flags.DEFINE_integer
_ENUM = flags.DEFINE_enum
# (define, name, default, help, extra): the sweep's own flags.
_SWEEP_FLAGS = (
    (flags.DEFINE_multi_string, "grid", [], "FLAG=V1,V2,...: one grid axis "
     "(repeat for more; list-valued flags take FLAG=A,B|C,D).", {}),
    (flags.DEFINE_multi_string, "search", [], "FLAG=log:LOW:HIGH, "
     "FLAG=float:LOW:HIGH, FLAG=int:LOW:HIGH[:STEP] or FLAG=choice:V1,V2.", {}),
    (_ENUM, "sampler", None, "How the study picks trials (default: grid for "
     "--grid alone, else tpe).", {"enum_values": ["tpe", "random", "grid"]}),
    (_INT, "trials", None, "The study's total trials over all workers and "
     "re-runs (default for a grid: every point).", {"lower_bound": 1}),
    (_INT, "repeats", 1, "Runs per trial (variant), seeds SEED, SEED+1, ...; "
     "the trial's value is their mean.", {"lower_bound": 1}),
    (_ENUM, "pruner", "none", "Stop hopeless trials early; a stopped run ends "
     "`pruned`.", {"enum_values": ["none", "median", "hyperband"]}),
    (_INT, "startup_trials", 5, "Random trials before TPE models the space, "
     "and finished trials before the median pruner prunes.", {"lower_bound": 0}),
    (flags.DEFINE_float, "prune_worse_than", None, "A floor, with any --pruner: "
     "a trial whose --metric is worse than this at an evaluation from "
     "--prune_from_step on is pruned (e.g. 0.2 for test/accuracy).", {}),
    (_INT, "prune_from_step", 0, "The first trial step at which "
     "--prune_worse_than judges (seed 2 of --repeats starts at --steps).",
     {"lower_bound": 0}),
    (_ENUM, "metric", "test/accuracy", "What the study optimises (reported at "
     "every evaluation).", {"enum_values": ["test/accuracy", "test/loss"]}),
    (_ENUM, "direction", None, "Default: maximize for accuracy, minimize for "
     "loss.", {"enum_values": ["maximize", "minimize"]}),
    (flags.DEFINE_string, "storage", None, "The study's storage: sqlite:///PATH "
     "(default LOGDIR/SWEEP_NAME/study.db; one machine), "
     "postgresql://USER@HOST:PORT/DB (several machines; password: PGPASSWORD or "
     "~/.pgpass) or journal:PATH (Optuna's journal file on a filesystem several "
     "machines share).", {}),
    (flags.DEFINE_string, "sweep_name", None, "Sweep directory under --logdir, "
     "and the study's name (required).", {}),
    (_INT, "workers", 1, "Local workers (each trains one run at a time).",
     {"lower_bound": 1, "upper_bound": 64}),
    (_INT, "trainer_growth_mb", trainer.GROWTH_MB, "A worker trains its runs in "
     "one process; once that process has grown by more than this many MB since "
     "its first run (TensorFlow keeps every graph it traced), the next run gets "
     "a new one. 0: a new process for every run.", {"lower_bound": 0}),
    (flags.DEFINE_boolean, "dry_run", False, "Print the plan and exit.", {}),
)  # fmt: skip
_HELP_GROUPS = {
    "sweep: what is searched": ["grid", "search", "sampler", "trials", "repeats"],
    "sweep: judging and pruning trials": [
        "metric", "direction", "pruner", "startup_trials", "prune_worse_than",
        "prune_from_step",
    ],
    "sweep: name, storage and workers": [
        "sweep_name", "storage", "workers", "trainer_growth_mb", "dry_run",
    ],
}  # fmt: skip
_REQUEST_FLAGS = ("sampler", "trials", "repeats", "pruner", "startup_trials")
_REQUEST_FLAGS += ("prune_worse_than", "prune_from_step", "metric", "direction")
_REQUEST_FLAGS += ("trainer_growth_mb",)


def define_flags(flag_values: flags.FlagValues = FLAGS) -> None:
    """The training flags (the base of every run) plus the sweep's own."""
    config_lib.define_flags(flag_values)
    for define, name, default, help_text, extra in _SWEEP_FLAGS:
        define(name, default, help=help_text, flag_values=flag_values, **extra)
    flags.DEFINE_alias("parallel", "workers", flag_values=flag_values)
    for heading, names in _HELP_GROUPS.items():
        config_lib.help_group(flag_values, heading, names)
    config_lib.require_finite(flag_values, "prune_worse_than")
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
    """Opens (or joins) the study and trains trials until its total is reached."""
    cli.no_arguments(argv)
    cli.default_to_warnings(FLAGS)

    def body() -> int:
        if FLAGS.run_name:
            raise SweepError("--run_name: the sweep names its runs; drop it")
        request = driver.Request(
            base=config_lib.config_from_flags(FLAGS, sys.argv),
            sweep_name=FLAGS.sweep_name,
            grid=tuple(FLAGS.grid),
            search=tuple(FLAGS.search),
            storage=FLAGS.storage,
            **{name: FLAGS[name].value for name in _REQUEST_FLAGS},
        )
        sweep = driver.plan(request)
        if FLAGS.dry_run:
            driver.print_plan(sweep)
            return 0
        signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
        return driver.run(sweep, FLAGS.workers)

    sys.exit(cli.run_reporting_errors("pipeline-sweep", body))


def run() -> None:
    """Console-script entry point."""
    # A worker trains in its training process; it only reads small files.
    cli.start(
        "pipeline-sweep",
        define_flags,
        main,
        __doc__,
        full_only=config_lib.HELP_GROUPS,
        trains=False,
    )


if __name__ == "__main__":
    run()
