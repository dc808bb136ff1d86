"""`pipeline-train`: train one model from absl flags (`--flagfile`, `--helpfull`).

Also continues a run (`--resume`) and replays one (`--replay`); see
WORKSPACE.md, "Resume, interruption and failures".
"""

from __future__ import annotations

import shutil
import sys
import tempfile

from absl import app, flags

from pipeline import cli
from pipeline import config as config_lib
from pipeline import data as data_lib
from pipeline.runs import rundir
from pipeline.training import distribute, recovery
from pipeline.training import trial as trial_lib

FLAGS = flags.FLAGS
PROG = "pipeline-train"


def main(argv: list[str]) -> None:
    """Parses nothing itself: absl has parsed argv into FLAGS already."""
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")

    def body() -> None:
        launch = config_lib.launch_from_flags(FLAGS, sys.argv)
        # Everything up to the strategy is TensorFlow-free: bad flags, runs and
        # data files are reported in well under a second.
        if launch.mode == "replay":
            original, config = recovery.prepare_replay(launch)
            from pipeline.training import replay  # TensorFlow import

            replay.replay_run(original, config, launch.replay_rtol)
            return
        run_dir = None
        restore_dir = None
        config = launch.config
        chief = distribute.chief_from_tf_config(config.strategy)
        if launch.mode == "new" and config.run_name:
            rundir.check_name(config.logdir, config.run_name, "--run_name")
        if launch.mode == "resume" and chief:
            run_dir, config = recovery.prepare_resume(launch)
        elif launch.mode == "resume":
            # A non-chief worker restores the chief's checkpoints and writes
            # only into its own scratch directory.
            chief_run, config = recovery.prepare_worker_resume(launch)
            restore_dir = chief_run.checkpoint_dir
        dataset = data_lib.load_dataset(
            config.dataset,
            config.data_dir,
            config.validation_split,
            config.binary_class,
        )
        if run_dir is not None:
            recovery.check_same_data(run_dir, dataset)
        # Strategies configure devices and collectives: before any other TF work.
        strategy = distribute.make_strategy(config.strategy, config.cpu_devices)
        from pipeline.training import loop as train

        train.check_data_fits(config, dataset)
        scratch = None
        if run_dir is None:
            run_name = config.run_name or rundir.default_run_name(config)
            if chief:
                run_dir = rundir.create_run_dir(config.logdir, run_name)
                run_dir.lock(PROG)
            else:
                scratch = tempfile.mkdtemp(
                    prefix=f"pipeline-{distribute.worker_label(strategy)}-"
                )
                run_dir = rundir.create_run_dir(scratch, run_name)
        print(f"run directory: {run_dir.path}", flush=True)
        extra_actions = []
        link = trial_lib.TrialLink.from_env()
        if link is not None and chief and launch.mode == "new":
            # A sweep worker started this run for one of its study's trials.
            from pipeline.training import pruning  # TensorFlow import

            extra_actions.append(pruning.ReportToStudy(link))
        try:
            result = train.train_and_evaluate(
                config,
                run_dir,
                dataset,
                strategy=strategy,
                resume=launch.mode == "resume",
                restore_dir=restore_dir,
                extra_actions=extra_actions,
            )
        finally:
            if scratch:
                shutil.rmtree(scratch, ignore_errors=True)
        test = result.test
        print(
            f"done: {run_dir.name}  step {result.step}  "
            f"test_accuracy={test.get('accuracy', float('nan')):.4f}  "
            f"test_loss={test.get('loss', float('nan')):.4f}  "
            f"wall {result.wall_time_s:.1f}s  "
            f"{result.examples_per_sec:,.0f} examples/s  "
            f"weights {result.weights_digest}"
        )

    sys.exit(cli.run_reporting_errors(PROG, body))


def run() -> None:
    """Console-script entry point."""
    cli.start(PROG, config_lib.define_flags, main)


if __name__ == "__main__":
    run()
