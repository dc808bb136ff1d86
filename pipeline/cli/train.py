"""pipeline-train: train one model from flags into a run directory under --logdir.

usage: pipeline-train [--flagfile=FILE] [--FLAG=VALUE ...]
  pipeline-train --flagfile=flags/cnn_course.cfg
  pipeline-train --flagfile=flags/demo.cfg --model=mlp --run_name=my-mlp
  pipeline-train --resume --run=logs/my-mlp --steps=600
  pipeline-train --replay=logs/my-mlp --steps=50

A run directory holds TensorBoard's event files, checkpoints, run.json (the
config and final metrics) and flags.cfg (the flags to train it again); open
the runs with pipeline-board. docs/resilience.md: resume, replay, signals.
"""

from __future__ import annotations

import pathlib
import shutil
import sys
from typing import TYPE_CHECKING

from absl import flags

from pipeline import cli, processes, variants
from pipeline import config as config_lib
from pipeline import data as data_lib
from pipeline.runs import provenance, rundir
from pipeline.sweep import link as trial_link
from pipeline.training import distribute, recovery

if TYPE_CHECKING:
    import tensorflow as tf

    from pipeline.training.loop import TrainResult

FLAGS = flags.FLAGS
PROG = "pipeline-train"


def main(argv: list[str]) -> None:
    """Parses nothing itself: absl has parsed argv into FLAGS already."""
    cli.no_arguments(argv)
    sys.exit(cli.run_reporting_errors(PROG, _train_from_flags))


def _train_from_flags() -> None:
    """Replays, resumes or starts the run that FLAGS describe.

    Everything up to the strategy is TensorFlow-free: bad flags, runs and data
    files are reported in well under a second.
    """
    launch = config_lib.launch_from_flags(FLAGS, sys.argv)
    if launch.mode == "rerun":
        launch = _rerun_launch(launch)
    unused = variants.inapplicable_warning(launch.config.model, sys.argv)
    if unused and launch.mode == "new":
        cli.warner(PROG)(unused)
    if launch.mode == "replay":
        original, config = recovery.prepare_replay(launch)
        from pipeline.training import replay  # TensorFlow import

        replay.replay_run(original, config, launch.replay_rtol)
        return
    chief = distribute.chief_from_tf_config(launch.config.strategy)
    run_dir, restore_dir, config = _resume_target(launch, chief)
    if run_dir is None and chief and config.run_name:
        rundir.refuse_existing(config.logdir, config.run_name)
    dataset = data_lib.load_dataset(
        config.dataset,
        config.data_dir,
        config.validation_split,
        config.binary_class,
    )
    if run_dir is not None:
        recovery.check_same_data(run_dir, dataset)
    # Strategies configure devices and collectives: before any other TF work.
    strategy = distribute.make_strategy(
        config.strategy, config.cpu_devices, launch.peer_timeout
    )
    from pipeline.training import loop

    loop.check_data_fits(config, dataset)
    scratch = None
    if run_dir is None:
        run_dir, scratch = _new_run_dir(config, strategy, chief)
    print(f"run directory: {run_dir.path}", flush=True)
    link = _study_link(launch, chief)
    extra_actions = _study_actions(link)
    try:
        result = loop.train_and_evaluate(
            config,
            run_dir,
            dataset,
            strategy=strategy,
            resume=launch.mode == "resume",
            restore_dir=restore_dir,
            extra_actions=extra_actions,
            # The record names its trial from its first write on.
            record_fields={"trial": link.record()} if link else None,
        )
    finally:
        if scratch:
            shutil.rmtree(scratch, ignore_errors=True)
    _print_done(run_dir, result)


def _rerun_launch(launch: config_lib.Launch) -> config_lib.Launch:
    """A new run with the flags of the run --rerun names; one warning line when
    the code or the installed packages here differ from what it recorded."""
    original, launch = recovery.prepare_rerun(launch)
    changes = provenance.changes_since(original.sessions)
    if changes:
        cli.warner(PROG)(
            f"--rerun={original.path.parent}: {'; '.join(changes)}; results may "
            "differ (pipeline-runs diff compares the two runs afterwards)"
        )
    return launch


def _resume_target(
    launch: config_lib.Launch, chief: bool
) -> tuple[rundir.RunDir | None, pathlib.Path | None, config_lib.TrainConfig]:
    """(run directory to continue, checkpoints to restore from, config).

    A new run has neither yet (its name is checked here, before any work). A
    resumed run continues its own directory on the chief; a non-chief worker
    restores the chief's checkpoints and writes only into its own scratch
    directory.
    """
    config = launch.config
    if launch.mode == "new":
        if config.run_name:
            rundir.check_name(config.logdir, config.run_name, "--run_name")
        return None, None, config
    if chief:
        run_dir, config = recovery.prepare_resume(launch)
        return run_dir, None, config
    chief_run, config = recovery.prepare_worker_resume(launch)
    return None, chief_run.checkpoint_dir, config


def _new_run_dir(
    config: config_lib.TrainConfig, strategy: tf.distribute.Strategy, chief: bool
) -> tuple[rundir.RunDir, str | None]:
    """(run directory, scratch folder to delete afterwards) for a new run.

    The chief creates and locks the run under --logdir; another worker of a
    multi-worker strategy writes into a scratch folder of its own.
    """
    run_name = config.run_name or rundir.default_run_name(config)
    if chief:
        run_dir = rundir.create_run_dir(config.logdir, run_name)
        run_dir.lock(PROG)
        return run_dir, None
    # `main` removes it; one a killed worker left goes when the next starts.
    scratch = processes.temp_folder(distribute.worker_label(strategy))
    return rundir.create_run_dir(scratch, run_name), scratch


def _study_link(launch: config_lib.Launch, chief: bool) -> trial_link.TrialLink | None:
    """The sweep trial a worker started this run for (on the chief), else None."""
    link = trial_link.TrialLink.from_env()
    if link is None or not chief or launch.mode == "replay":
        return None
    return link


def _study_actions(link: trial_link.TrialLink | None) -> list:
    """The loop actions a sweep worker asks for when it started this run for
    one of its study's trials (reporting to the pruner), else none."""
    if link is None:
        return []
    from pipeline.sweep import pruning  # TensorFlow import

    return [pruning.ReportToStudy(link)]


def _print_done(run_dir: rundir.RunDir, result: TrainResult) -> None:
    """The run's one-line summary: the line `make demo` prints."""
    test = result.test
    print(
        f"done: {run_dir.name}  step {result.step}  "
        f"test_accuracy={test.get('accuracy', float('nan')):.4f}  "
        f"test_loss={test.get('loss', float('nan')):.4f}  "
        f"wall {result.wall_time_s:.1f}s  "
        f"{result.examples_per_sec:,.0f} examples/s  "
        f"weights {result.weights_digest}"
    )


def run() -> None:
    """Console-script entry point."""
    cli.start(PROG, config_lib.define_flags, main, __doc__)


if __name__ == "__main__":
    run()
