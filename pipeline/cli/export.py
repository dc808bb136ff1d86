"""pipeline-export: write a run's checkpoint as a SavedModel serving uint8 digits.

usage: pipeline-export --run=RUN_DIR --out=DIR [--checkpoint=latest|STEP]
                       [--format=saved_model|tflite]
  pipeline-export --run=logs/demo-cnn --out=export/demo-cnn
  pipeline-export --run=logs/demo-cnn --out=export/demo-cnn-lite --format=tflite

Signatures serving_default (uint8 [N, 28, 28]) and serving_channels
(uint8 [N, 28, 28, 1]) return probabilities and classes.
"""

from __future__ import annotations

import sys

from absl import flags

from pipeline import cli
from pipeline.cli import run_flags
from pipeline.config import help_group

FLAGS = flags.FLAGS


def define_export_flags(flag_values: flags.FlagValues = FLAGS) -> None:
    """Flags of `pipeline-export`."""
    run_flags.define_run_flags(flag_values)
    flags.DEFINE_string(
        "out",
        None,
        "Directory for the SavedModel; must not exist yet (or be empty).",
        flag_values=flag_values,
    )
    flags.mark_flag_as_required("out", flag_values=flag_values)
    flags.DEFINE_enum(
        "format",
        "saved_model",
        ["saved_model", "tflite"],
        "saved_model: a SavedModel; tflite: also OUT/model.tflite, its "
        "serving_default signature converted for TensorFlow Lite.",
        flag_values=flag_values,
    )
    help_group(flag_values, "output", ["out", "format"])


def main(argv: list[str]) -> None:
    """Reads FLAGS once, checks the run and destination, exports."""
    cli.no_arguments(argv)

    def body() -> None:
        restored = run_flags.open_run(FLAGS, "pipeline-export")
        from pipeline.tools import export  # TensorFlow import

        out = export.export_run(restored, FLAGS.out, tflite=FLAGS.format == "tflite")
        print(
            f"exported {restored.run_dir.path} step {restored.step} -> {out}\n"
            "signatures: serving_default (uint8 [N, 28, 28]), "
            "serving_channels (uint8 [N, 28, 28, 1]) -> probabilities, classes"
        )
        if FLAGS.format == "tflite":
            print(f"TensorFlow Lite: {out / export.TFLITE_NAME} (serving_default)")

    sys.exit(cli.run_reporting_errors("pipeline-export", body))


def run() -> None:
    """Console-script entry point."""
    cli.start("pipeline-export", define_export_flags, main, __doc__)


if __name__ == "__main__":
    run()
