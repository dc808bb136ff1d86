"""pipeline-eval: evaluate a run's checkpoint on a full split; log it to TensorBoard.

usage: pipeline-eval --run=RUN_DIR [--checkpoint=latest|STEP] [--split=test] [...]
  pipeline-eval --run=logs/demo-cnn
  pipeline-eval --run=logs/demo-cnn --checkpoint=200 --format=json
  pipeline-eval --run=logs/demo-cnn --split=train --nowrite_summaries

Prints loss, accuracy, per-class precision/recall/F1 and the confusion
matrix; writes scalars, images, PR curves and Projector embeddings into
RUN_DIR/eval/ (another split or dataset: RUN_DIR/eval_DATASET_SPLIT/).
"""

from __future__ import annotations

import sys

from absl import flags

from pipeline import cli
from pipeline.cli import run_flags
from pipeline.config import help_group

FLAGS = flags.FLAGS


def define_eval_flags(flag_values: flags.FlagValues = FLAGS) -> None:
    """Flags of `pipeline-eval` (run, checkpoint, data, format and its own)."""
    run_flags.define_run_data_format_flags(flag_values)
    fv = {"flag_values": flag_values}
    flags.DEFINE_integer(
        "batch_size", 1000, "Examples per evaluation batch.", lower_bound=1, **fv
    )
    flags.DEFINE_integer(
        "mistakes",
        24,
        "Most confident mistakes shown in TensorBoard's Images tab (0: none).",
        lower_bound=0,
        upper_bound=256,
        **fv,
    )
    flags.DEFINE_boolean(
        "write_summaries",
        True,
        "Write the results into the run (eval/ for its own test split, "
        "eval_<dataset>_<split>/ otherwise) at the checkpoint's step.",
        **fv,
    )
    help_group(flag_values, "evaluation", ["batch_size", "mistakes", "write_summaries"])


def main(argv: list[str]) -> None:
    """Reads FLAGS once, evaluates, writes summaries, prints the report."""
    cli.no_arguments(argv)

    def body() -> None:
        restored = run_flags.open_run(FLAGS, "pipeline-eval")
        dataset, split = restored.load_split(FLAGS.split, FLAGS.dataset, FLAGS.data_dir)
        if FLAGS.write_summaries:
            # Writing into the run: not while another process writes it (and
            # refused before the evaluation's work, not after it).
            restored.run_dir.lock("pipeline-eval")
        from pipeline.tools import evaluate  # TensorFlow import

        model = restored.load_model()
        report, outputs = evaluate.evaluate_split(
            restored, dataset, FLAGS.split, split, FLAGS.batch_size, model=model
        )
        summaries = None
        if FLAGS.write_summaries:
            writer = evaluate.writer_name(restored, report.dataset, report.split)
            evaluate.write_summaries(
                restored, report, outputs, split, writer=writer, mistakes=FLAGS.mistakes
            )
            summaries = str(restored.run_dir.path / writer)
            from pipeline.tensorboard import projector  # TensorFlow import

            embedded = 0
            if projector.has_learned_embedding(model):
                embedded = projector.write_projector(
                    summaries,
                    model,
                    split,
                    report.class_names,
                    input_scale=restored.config.input_scale,
                )
        if FLAGS.format == "json":
            print(evaluate.report_json_text(report, summaries))
        else:
            print(evaluate.format_report(report))
            if summaries:
                print(f"\nTensorBoard summaries: {summaries} (step {report.step})")
                if embedded:
                    print(
                        f"Projector: penultimate-layer embeddings of {embedded:,} "
                        f"of {report.examples:,} examples (at most "
                        f"{projector.MAX_EXAMPLES:,})"
                    )
                else:
                    print(
                        "Projector: none (the model has no learned embedding: "
                        "its penultimate layer is the input)"
                    )

    sys.exit(cli.run_reporting_errors("pipeline-eval", body))


def run() -> None:
    """Console-script entry point."""
    cli.start("pipeline-eval", define_eval_flags, main, __doc__)


if __name__ == "__main__":
    run()
