"""How a sweep worker's warm training process grows, run after run.

    python -m benchmarks.warm_memory [--families=logreg,mlp,cnn] [--runs=8]

Trains `--runs` runs of each family in this one process exactly as the
sweep's training process does (`pipeline-train`'s entry point through
`cli.run_in_process`, then `sweep_trainer.fresh_state`: Keras' session
cleared, locks released, the heap collected) and prints the process's
resident memory after each, as `sweep_trainer` measures it for
`--trainer_growth_mb`. TensorFlow keeps every graph it traced
(tensorflow/tensorflow#124972), so the growth per run is what a long sweep
adds to a worker's process until the bound replaces it.
"""

from __future__ import annotations

import os
import tempfile

from absl import app, flags

FLAGS = flags.FLAGS
flags.DEFINE_list("families", ["logreg", "mlp", "cnn"], "Families, each its own runs.")
flags.DEFINE_integer("runs", 8, "Runs per family.", lower_bound=2)
flags.DEFINE_integer("run_steps", 20, "Steps per run (the bundled digits).")


def main(argv: list[str]) -> None:
    del argv
    from pipeline import cli
    from pipeline import config as config_lib
    from pipeline.cli import sweep_trainer, train

    # Each run parses its flags afresh (`cli.run_in_process`): ours first.
    families, runs, steps = FLAGS.families, FLAGS.runs, FLAGS.run_steps
    sweep_trainer.streams_ready()
    config_lib.define_flags(FLAGS)
    logdir = tempfile.mkdtemp(prefix="warm-memory-")
    print(f"{'family':8} {'run':>4} {'resident MB':>12} {'since run 1':>12}")
    for family in families:
        first = None
        growth = []
        for index in range(runs):
            argv = [
                train.PROG,
                f"--model={family}",
                "--dataset=mnist_sample",
                f"--steps={steps}",
                f"--logdir={logdir}",
                f"--run_name={family}-{index}",
                "--projector=false",
            ]
            with open(os.devnull, "w") as quiet, _StdoutTo(quiet):
                status = cli.run_in_process(train.PROG, train.main, argv)
            assert status == 0, (family, index, status)
            sweep_trainer.fresh_state(os.open(os.devnull, os.O_RDONLY))
            resident = sweep_trainer.resident_mb()
            first = resident if first is None else first
            grown = resident - first
            growth.append(grown)
            print(f"{family:8} {index + 1:>4} {resident:>12.0f} {grown:>+12.0f}")
        per_run = growth[-1] / (runs - 1)
        print(f"{family}: {per_run:+.1f} MB a run after the first")


class _StdoutTo:
    """Points file descriptors 1 and 2 at `target` (a run's progress lines)."""

    def __init__(self, target):
        self._target = target

    def __enter__(self):
        import sys

        sys.stdout.flush()
        sys.stderr.flush()
        self._saved = os.dup(1), os.dup(2)
        os.dup2(self._target.fileno(), 1)
        os.dup2(self._target.fileno(), 2)

    def __exit__(self, *exc):
        import sys

        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(self._saved[0], 1)
        os.dup2(self._saved[1], 2)
        os.close(self._saved[0])
        os.close(self._saved[1])


if __name__ == "__main__":
    app.run(main)
