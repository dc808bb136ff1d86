"""pipeline-predict: class probabilities for images, .npy arrays or dataset rows.

usage: pipeline-predict --run=RUN_DIR (--image=FILE_OR_DIR | --index=N)... [...]
  pipeline-predict --run=logs/demo-cnn --image=eight.png --image=more_digits/
  pipeline-predict --run=logs/demo-cnn --index=9 --index=10 --format=json

Images of any size and colour are made to look like MNIST digits (grayscale,
inverted when the background is light, centred in 28x28) first.
"""

from __future__ import annotations

import sys

from absl import flags

from pipeline import cli
from pipeline.cli import run_flags
from pipeline.config import help_group

FLAGS = flags.FLAGS


def define_predict_flags(flag_values: flags.FlagValues = FLAGS) -> None:
    """Flags of `pipeline-predict`."""
    run_flags.define_run_data_format_flags(flag_values)
    fv = {"flag_values": flag_values}
    flags.DEFINE_multi_string(
        "image",
        None,
        "PNG/JPEG/... of any size and colour, a .npy array ([28,28] or [N,28,28]) "
        "or a folder of them; repeat the flag for several.",
        **fv,
    )
    flags.DEFINE_multi_integer(
        "index",
        None,
        "Example N of --split of the run's dataset (or --dataset); repeatable.",
        lower_bound=0,
        **fv,
    )
    flags.register_multi_flags_validator(
        ["image", "index"],
        lambda v: bool(v["image"] or v["index"]),
        message="give at least one --image or --index",
        flag_values=flag_values,
    )
    help_group(flag_values, "inputs", ["image", "index"])


def main(argv: list[str]) -> None:
    """Reads FLAGS once, loads the inputs, restores the model, prints one row each."""
    cli.no_arguments(argv)

    def body() -> None:
        from pipeline.tools import predict

        restored = run_flags.open_run(FLAGS, "pipeline-predict")
        examples = predict.load_inputs(FLAGS.image or [])
        if FLAGS.index:
            name, split = restored.load_split(
                FLAGS.split, FLAGS.dataset, FLAGS.data_dir
            )
            examples += predict.dataset_examples(split, FLAGS.index, name, FLAGS.split)
        model = restored.load_model()
        images = [example.image for example in examples]
        probabilities = predict.predict_probabilities(
            model, images, restored.config.input_scale
        )
        binary_class = restored.config.binary_class
        rows = predict.prediction_rows(examples, probabilities, binary_class)
        if FLAGS.format == "json":
            header = {
                "run": str(restored.run_dir.path),
                "step": restored.step,
                "checkpoint": restored.checkpoint_prefix,
            }
            print(predict.rows_json_text(header, rows))
        else:
            print(f"{restored.run_dir.path} at step {restored.step}")
            print(predict.format_rows(rows, binary_class))

    sys.exit(cli.run_reporting_errors("pipeline-predict", body))


def run() -> None:
    """Console-script entry point."""
    cli.start("pipeline-predict", define_predict_flags, main, __doc__)


if __name__ == "__main__":
    run()
