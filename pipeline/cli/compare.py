"""pipeline-compare: one row per variant of the runs named, repeats as mean +/- std.

usage: pipeline-compare [--runs] [--columns=A,B] [--filter=EXPR] [...] RUN_OR_DIR ...
  pipeline-compare logs/mlp_tuning
  pipeline-compare logs --runs --columns=final/loss,wall_time
  pipeline-compare 'logs/*' --filter 'model==cnn and best/accuracy>0.98' --top 5
  pipeline-compare logs/mlp_tuning --format=markdown --plot=curves.png
  pipeline-compare logs/mlp_tuning --export=scalars.csv

Runs equal in every defining flag but --seed are repeats of one variant
(pipeline/variants.py). Each row names its run, or its variant with the run
count (--runs lists each run under it), with status and start time, and
the commit when the runs shown ran different code; the table fits 120
columns (--columns adds more). --filter 'tag==X' keeps the rows whose runs
carry tag X. For a sweep directory it adds the study's view: trials, steps,
the best trial.
"""

from __future__ import annotations

import sys

from absl import app, flags

from pipeline import cli
from pipeline.config import help_group
from pipeline.sweep import summary as study_summary
from pipeline.tensorboard import budget, events
from pipeline.tools import compare
from pipeline.tools.compare import FORMATS, METRICS

FLAGS = flags.FLAGS


def define_flags(flag_values: flags.FlagValues = FLAGS) -> None:
    """Flags of pipeline-compare."""
    fv = {"flag_values": flag_values}
    flags.DEFINE_string(
        "sort",
        "best/accuracy",
        f"Rank by this field ({', '.join(METRICS)}, or a flag); best first. "
        "Prefix '-' for descending, '+' for ascending.",
        **fv,
    )
    flags.DEFINE_integer(
        "top", None, "Show only the first N rows.", lower_bound=1, **fv
    )
    flags.DEFINE_string(
        "filter",
        None,
        "Keep rows matching e.g. 'model==cnn and best/accuracy>0.98' or "
        "'tag==baseline' (a row whose runs carry that tag) "
        "(and/or/not, parentheses, == != < <= > >=).",
        **fv,
    )
    flags.DEFINE_enum("format", "table", FORMATS, "Output format.", **fv)
    flags.DEFINE_list(
        "columns",
        [],
        "More table columns: metrics (final/loss, best/loss, steps, wall_time, "
        "examples_per_sec, best/accuracy_step, eval/... from pipeline-eval), "
        "'all' for every metric, or flag names. Without it the table fits "
        "120 characters and says which differing flags it left out.",
        **fv,
    )
    flags.DEFINE_boolean(
        "runs",
        False,
        "Also list each run of a variant (its repeats) under the variant's row.",
        **fv,
    )
    flags.DEFINE_string(
        "plot", None, "Also save the test-accuracy curves to this PNG.", **fv
    )
    flags.DEFINE_string(
        "export",
        None,
        "Also write every scalar series of the runs shown to this CSV file, "
        "in long form: run, split, tag, step, wall_time, value.",
        **fv,
    )
    flags.DEFINE_string(
        "storage",
        None,
        "The sweeps' study storage when it is not SWEEP_DIR/study.db "
        "(e.g. postgresql://USER@HOST:PORT/DB); each directory named is a study.",
        **fv,
    )
    flags.DEFINE_boolean(
        "allow_mismatch",
        False,
        "Rank runs trained or evaluated on different data in one table.",
        **fv,
    )
    help_group(flag_values, "ranking", ["sort", "top", "filter", "allow_mismatch"])
    help_group(flag_values, "output", ["format", "plot", "export"])
    help_group(flag_values, "sweeps", ["storage"])


def main(argv: list[str]) -> None:
    """Loads the runs named by the positional arguments and prints the comparison."""
    if len(argv) < 2:
        raise app.UsageError("usage: pipeline-compare [flags] RUN_OR_DIR_OR_GLOB ...")
    cli.default_to_warnings(FLAGS)

    def body() -> int:
        predicate = compare.parse_filter(FLAGS.filter) if FLAGS.filter else None
        paths = compare.find_runs(argv[1:])
        if not budget.tensorflow_reads_faster(paths):
            # 0.6-0.8 s of CPU against 3.3 s for one 20,000-step run.
            events.read_without_tensorflow()
        runs = compare.load_runs(paths, cli.warner("pipeline-compare"))
        completed = [r for r in runs if r.status == "completed"]
        pruned = [r for r in runs if r.status == "pruned"]
        skipped = [r for r in runs if r.status not in ("completed", "pruned")]
        if not completed:
            raise compare.CompareError(
                f"{' '.join(argv[1:])}: no completed runs "
                f"({len(skipped)} not completed)"
            )
        variants, differing = compare.group_variants(completed)
        ranked = compare.rank(
            variants, FLAGS.sort, FLAGS.top, predicate, FLAGS.allow_mismatch
        )
        notes: list[str] = []
        print(
            compare.format_ranked(
                ranked,
                differing,
                FLAGS.format,
                FLAGS.allow_mismatch,
                extra_columns=FLAGS.columns,
                each_run=FLAGS.runs,
                notes=notes,
            )
        )
        if pruned:
            print("\n" + compare.format_pruned(pruned))
        for url, name, path in study_summary.find_studies(argv[1:], FLAGS.storage):
            print("\n" + study_summary.describe(url, name, path))
        different_code = compare.code_note(ranked)
        if different_code:
            notes.append(different_code)
        if len(ranked) > 1:
            notes.append(
                f"{len(ranked)} data sets: tables are not comparable with each other "
                "(--allow_mismatch ranks them together)"
            )
        for run in skipped:
            reason = f": {run.error}" if run.error else ""
            notes.append(f"skipped {run.path} ({run.status}{reason})")
        if FLAGS.plot:
            compare.plot_curves(
                [v for group in ranked for v in group], FLAGS.plot, differing
            )
            notes.append(f"curves: {FLAGS.plot}")
        if FLAGS.export:
            shown = [run.path for group in ranked for v in group for run in v.runs]
            rows = compare.export_scalars(shown, FLAGS.export)
            notes.append(
                f"scalars: {FLAGS.export} ({rows:,} rows from {len(shown)} runs)"
            )
        for note in notes:
            print(note, file=sys.stderr)
        return 0

    sys.exit(cli.run_reporting_errors("pipeline-compare", body))


def run() -> None:
    """Console-script entry point."""
    cli.start("pipeline-compare", define_flags, main, __doc__)


if __name__ == "__main__":
    run()
