"""Flags shared by the binaries that work on a trained run (eval, predict, export).

Training flags live in `pipeline.config`; these only name a run, a
checkpoint, the data to read and the output format. Each entry point defines
the groups it needs on its own `FlagValues` and reads them once in `main`.
"""

from __future__ import annotations

from absl import flags

from pipeline.config import DATASETS, help_group
from pipeline.runs import restore
from pipeline.runs.restore import SPLITS

FORMATS = ("text", "json")


def _is_checkpoint(value: str) -> bool:
    return value == "latest" or value.isdigit()


def define_run_flags(flag_values: flags.FlagValues = flags.FLAGS) -> None:
    """--run (required) and --checkpoint."""
    fv = {"flag_values": flag_values}
    flags.DEFINE_string(
        "run",
        None,
        "Run directory written by pipeline-train, e.g. logs/cnn-20250101-120000.",
        **fv,
    )
    flags.DEFINE_string(
        "checkpoint",
        "latest",
        "Checkpoint to restore: 'latest' or the step it was saved at "
        "(checkpoints/ckpt-<step>).",
        **fv,
    )
    flags.mark_flag_as_required("run", flag_values=flag_values)
    flags.register_validator(
        "checkpoint",
        _is_checkpoint,
        message="--checkpoint must be 'latest' or a step number",
        flag_values=flag_values,
    )
    help_group(flag_values, "run", ["run", "checkpoint"])


def define_data_flags(flag_values: flags.FlagValues = flags.FLAGS) -> None:
    """--dataset, --data_dir, --split: default to the run's own data."""
    fv = {"flag_values": flag_values}
    flags.DEFINE_enum(
        "dataset",
        None,
        DATASETS,
        "Dataset to read (default: the one the run was trained on).",
        **fv,
    )
    flags.DEFINE_string(
        "data_dir", None, "Directory of the dataset's files (default: the run's).", **fv
    )
    flags.DEFINE_enum(
        "split",
        "test",
        SPLITS,
        "Split, cut the way the run cut it (validation only if it held one out).",
        **fv,
    )
    help_group(flag_values, "data", ["dataset", "data_dir", "split"])


def define_format_flag(flag_values: flags.FlagValues = flags.FLAGS) -> None:
    """--format=text|json."""
    flags.DEFINE_enum(
        "format",
        "text",
        FORMATS,
        "text: aligned tables for people; json: one JSON document for scripts.",
        flag_values=flag_values,
    )
    help_group(flag_values, "output", ["format"])


def define_run_data_format_flags(flag_values: flags.FlagValues = flags.FLAGS) -> None:
    """The run, data and format flags: what a program that reads a run's data needs."""
    define_run_flags(flag_values)
    define_data_flags(flag_values)
    define_format_flag(flag_values)


def open_run(flag_values: flags.FlagValues, prog: str = "pipeline"):
    """The run and checkpoint that --run/--checkpoint name (no TensorFlow).

    A checkpoint skipped when the model is loaded is named on stderr as
    `prog: warning: ...`.
    """
    from pipeline import cli

    return restore.open_run(
        flag_values.run,
        checkpoint_value(flag_values.checkpoint),
        report=cli.warner(prog),
    )


def checkpoint_value(value: str) -> str | int:
    """The --checkpoint flag as `latest` or an int step."""
    return "latest" if value == "latest" else int(value)
