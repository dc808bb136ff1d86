"""`pipeline-train`: train one model from absl flags (`--flagfile`, `--helpfull`)."""

from __future__ import annotations

import shutil
import sys
import tempfile

from absl import app, flags

from pipeline import cli
from pipeline import config as config_lib

FLAGS = flags.FLAGS


def main(argv: list[str]) -> None:
    """Parses nothing itself: absl has parsed argv into FLAGS already."""
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")

    def body() -> None:
        config = config_lib.config_from_flags(FLAGS)
        from pipeline import data as data_lib  # noqa: PLC0415 (TensorFlow import)
        from pipeline import distribute, rundir, train  # noqa: PLC0415

        # Strategies configure devices and collectives: before any other TF work.
        strategy = distribute.make_strategy(config.strategy, config.cpu_devices)
        dataset = data_lib.load_dataset(
            config.dataset,
            config.data_dir,
            config.validation_split,
            config.binary_class,
        )
        train.check_data_fits(config, dataset)
        run_name = config.run_name or rundir.default_run_name(config)
        if distribute.is_chief(strategy):
            run_dir = rundir.create_run_dir(config.logdir, run_name)
            scratch = None
        else:
            scratch = tempfile.mkdtemp(
                prefix=f"pipeline-{distribute.worker_label(strategy)}-"
            )
            run_dir = rundir.create_run_dir(scratch, run_name)
        print(f"run directory: {run_dir.path}")
        try:
            result = train.train_and_evaluate(
                config, run_dir, dataset, strategy=strategy
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

    sys.exit(cli.run_reporting_errors("pipeline-train", body))


def run() -> None:
    """Console-script entry point."""
    cli.quiet_tensorflow()
    config_lib.define_flags(FLAGS)
    app.run(main)


if __name__ == "__main__":
    run()
