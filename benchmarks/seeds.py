"""`make seeds`: every tutorial flagfile, trained by its own recipe, in one table.

Each tutorial flagfile under flags/ names its tutorial and what the tutorial
reported in two header lines (`# Tutorial: ...`, `# Reported: ...`). This
trains every one of them with `pipeline-train --flagfile=...` (the command a
user runs, one process each, runs kept under build/seeds/) on the bundled
digits (8,000 train, 2,000 test) and prints one table: the tutorial, what it
reported on 60,000 training digits, the test accuracy reached here, the steps
trained and the wall time. For every MLP row it also trains the same recipe
with plain Keras `model.fit` on the same split, built the way the tutorial
wrote it (`Dense` + `Activation` layers, one-hot labels, categorical
cross-entropy), as a reference the pipeline's number can be checked against.

The table goes into WORKSPACE.md and README.md between `<!-- seeds -->`
markers, with the commit and the machine's load average.

    .venv/bin/python -m benchmarks.seeds [--configs=softmax,cnn_keras] [--nowrite_docs]
        [--extra_flags=--precision=mixed_bfloat16]
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import re
import shutil
import statistics
import subprocess
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags

from pipeline import config as config_lib

ROOT = pathlib.Path(__file__).resolve().parent.parent
FLAGS_DIR = ROOT / "flags"
RUNS_DIR = ROOT / "build" / "seeds"
# The tutorial flagfiles, in the order the table lists them (the MLP tuning
# rows in the tutorial's own order).
TUTORIALS = (
    "logreg_is_one",
    "softmax",
    "mlp_sigmoid_2x30",
    "mlp_sigmoid_2x30_lr0.01",
    "mlp_sigmoid_10x30",
    "mlp_relu_10x30",
    "cnn_tf1",
    "cnn_tutorial",
    "cnn_keras",
    "cnn_course",
)
BEGIN = "<!-- seeds:begin (written by `make seeds`; edits here are overwritten) -->"
END = "<!-- seeds:end -->"

_CONFIGS = flags.DEFINE_list("configs", list(TUTORIALS), "Flagfiles under flags/.")
_WRITE_DOCS = flags.DEFINE_boolean(
    "write_docs", True, "Write the table into WORKSPACE.md and README.md."
)
_EXTRA = flags.DEFINE_multi_string(
    "extra_flags", [], "A flag added to every pipeline-train command (repeatable)."
)
_KERAS_REFERENCE = flags.DEFINE_boolean(
    "keras_reference", True, "Train the MLP rows with plain Keras fit as well."
)
_MLP_SEEDS = flags.DEFINE_integer(
    "mlp_seeds",
    3,
    "Seeds (0..N-1) each MLP row is trained with, by the pipeline and by Keras: "
    "they train in seconds, and the first row (sigmoids saturated by raw "
    "pixels at a high rate) differs by several points from seed to seed.",
    lower_bound=1,
)


@dataclasses.dataclass(frozen=True)
class Header:
    """What a flagfile's header says about its tutorial."""

    tutorial: str
    reported: str


def read_header(path: pathlib.Path) -> Header:
    """The `# Tutorial:` and `# Reported:` lines of a flagfile's header."""
    values = {}
    for line in path.read_text().splitlines():
        match = re.match(r"#\s*(Tutorial|Reported):\s*(.+)", line)
        if match:
            values[match.group(1).lower()] = match.group(2).strip()
    missing = {"tutorial", "reported"} - set(values)
    if missing:
        raise ValueError(f"{path}: header has no {', '.join(sorted(missing))} line")
    return Header(**values)


@dataclasses.dataclass(frozen=True)
class Row:
    """One tutorial's line of the table: test accuracy per seed trained."""

    name: str
    header: Header
    accuracies: list[float]
    steps: int
    epochs: float
    wall_s: float  # per run
    keras_accuracies: list[float] = dataclasses.field(default_factory=list)
    keras_wall_s: float | None = None  # per run
    note: str = ""

    @property
    def accuracy(self) -> float:
        return statistics.mean(self.accuracies)

    @property
    def keras_accuracy(self) -> float | None:
        return statistics.mean(self.keras_accuracies) if self.keras_accuracies else None


def flagfile_config(name: str, *extra: str) -> config_lib.TrainConfig:
    """The flagfile parsed by the real flag definitions."""
    flag_values = flags.FlagValues()
    config_lib.define_flags(flag_values)
    flag_values(["seeds", f"--flagfile={FLAGS_DIR / (name + '.cfg')}", *extra])
    return config_lib.config_from_flags(flag_values)


def train_with_pipeline(name: str, run_name: str, extra: list[str]) -> dict:
    """Runs `pipeline-train --flagfile=flags/NAME.cfg` and returns its run record.

    Only what is printed or written for inspection is turned down (progress
    lines, histograms): neither changes what is trained.
    """
    from pipeline.runs import rundir

    command = [
        sys.executable,
        "-m",
        "pipeline.cli.train",
        f"--flagfile={FLAGS_DIR / (name + '.cfg')}",
        f"--logdir={RUNS_DIR}",
        f"--run_name={run_name}",
        "--print_every=0",
        "--histogram_every=0",
        *extra,
    ]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode:
        tail = "\n".join((done.stdout + done.stderr).splitlines()[-15:])
        raise RuntimeError(f"{name}: pipeline-train exited {done.returncode}\n{tail}")
    return rundir.open_run_dir(RUNS_DIR / run_name).read_record()


def keras_fit_reference(config: config_lib.TrainConfig) -> tuple[float, float]:
    """The MLP recipe with plain Keras `fit`: (test accuracy, wall seconds).

    Built as the tutorial wrote it: `Dense(units, input_dim=784)` +
    `Activation`, more `Dense` + `Activation` pairs, `Dense(10)` + softmax,
    one-hot labels, categorical cross-entropy, the same optimizer, batch,
    input scale, split and number of updates as the pipeline run; `fit`
    shuffles the arrays every epoch and takes a last partial batch, as Keras
    users get by default, and runs `steps_per_execution` steps per call (the
    run's --steps_per_loop), which changes the speed, not the updates.
    """
    import keras
    import numpy as np

    from pipeline import data as data_lib

    dataset = data_lib.load_dataset(
        config.dataset, config.data_dir, config.validation_split, config.binary_class
    )
    divisor = 255.0 if config.input_scale == "unit" else 1.0

    def arrays(split):
        x = split.images.reshape(len(split), 784).astype("float32") / divisor
        return x, keras.utils.to_categorical(split.labels, 10)

    x_train, y_train = arrays(dataset.train)
    x_test, y_test = arrays(dataset.test)
    keras.utils.set_random_seed(config.seed)
    model = keras.Sequential([keras.Input((784,))])
    for _ in range(config.hidden_layers):
        model.add(keras.layers.Dense(config.hidden_units))
        model.add(keras.layers.Activation(config.activation))
    model.add(keras.layers.Dense(10))
    model.add(keras.layers.Activation("softmax"))
    optimizer = {
        "sgd": keras.optimizers.SGD,
        "adam": keras.optimizers.Adam,
    }[config.optimizer](config.learning_rate)
    # 100 steps per compiled call, as the pipeline's --steps_per_loop: the
    # same updates, without a Python round trip per step.
    model.compile(
        optimizer=optimizer,
        loss="categorical_crossentropy",
        metrics=["accuracy"],
        steps_per_execution=config.steps_per_loop,
    )
    steps_per_epoch = config_lib.steps_per_epoch(config.batch_size, len(x_train))
    epochs = config.steps / steps_per_epoch
    start = time.perf_counter()
    # Whole epochs as fit counts them, then the fraction of one that the
    # pipeline's update count leaves (37.5 epochs = 37 + 80 steps).
    whole = int(epochs)
    if whole:
        model.fit(
            x_train, y_train, batch_size=config.batch_size, epochs=whole, verbose=0
        )
    rest = config.steps - whole * steps_per_epoch
    if rest:
        order = np.random.default_rng(config.seed).permutation(len(x_train))
        take = order[: rest * config.batch_size]
        model.fit(
            x_train[take],
            y_train[take],
            batch_size=config.batch_size,
            epochs=1,
            verbose=0,
        )
    wall = time.perf_counter() - start
    _, accuracy = model.evaluate(x_test, y_test, verbose=0)
    return float(accuracy), wall


def run_row(name: str, extra: list[str], keras_reference: bool, mlp_seeds: int) -> Row:
    """Trains one flagfile (an MLP once per seed, each with its Keras reference)."""
    header = read_header(FLAGS_DIR / f"{name}.cfg")
    seeds = range(mlp_seeds if flagfile_config(name).model == "mlp" else 1)
    records = [
        train_with_pipeline(name, f"{name}-seed{seed}", [*extra, f"--seed={seed}"])
        if len(seeds) > 1
        else train_with_pipeline(name, name, extra)
        for seed in seeds
    ]
    record = records[0]
    config = config_lib.config_from_dict(record["config"])
    steps = int(record["step"])
    epochs = steps / record["steps_per_epoch"]
    note = ""
    if record.get("stopped_early"):
        best_epoch = config_lib.epoch_of(record["best_step"], record["steps_per_epoch"])
        note = f"early stop; best: epoch {best_epoch}"
    keras = []
    if keras_reference and config.model == "mlp":
        keras = [
            keras_fit_reference(dataclasses.replace(config, seed=seed))
            for seed in seeds
        ]
    return Row(
        name,
        header,
        [float(r["final_metrics"]["test"]["accuracy"]) for r in records],
        steps,
        epochs,
        statistics.mean(float(r["wall_time_s"]) for r in records),
        [accuracy for accuracy, _ in keras],
        statistics.mean(wall for _, wall in keras) if keras else None,
        note,
    )


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def _per_seed(values: list[float]) -> str:
    """`71.3% (seeds 0-2: 76.9, 67.8, 69.3)`, or one value as `96.5%`."""
    if not values:
        return "-"
    mean = _percent(statistics.mean(values))
    if len(values) == 1:
        return mean
    each = ", ".join(f"{100 * v:.1f}" for v in values)
    return f"{mean} (seeds 0-{len(values) - 1}: {each})"


def markdown_table(rows: list[Row]) -> str:
    """The full table (WORKSPACE.md)."""
    lines = [
        "| tutorial | flagfile | reported (60,000 digits) | reached here (8,000) "
        "| Keras `fit`, same split | steps (bundled epochs) | wall s per run |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        reached = _per_seed(row.accuracies) + (f" ({row.note})" if row.note else "")
        keras_text = _per_seed(row.keras_accuracies)
        if row.keras_wall_s is not None:
            keras_text += f"; {row.keras_wall_s:.0f} s"
        lines.append(
            f"| {row.header.tutorial} | `{row.name}.cfg` | {row.header.reported} "
            f"| {reached} | {keras_text} | {row.steps:,} ({row.epochs:.1f}) "
            f"| {row.wall_s:.0f} |"
        )
    return "\n".join(lines)


def short_table(rows: list[Row]) -> str:
    """The README's table: tutorial, what it reported, what is reached here."""
    lines = [
        "| tutorial | flagfile | reported | reached here |",
        "|---|---|---|---|",
    ]
    for row in rows:
        lines.append(
            f"| {row.header.tutorial} | `flags/{row.name}.cfg` "
            f"| {row.header.reported} | {_percent(row.accuracy)}"
            + (
                f" (mean of {len(row.accuracies)} seeds)"
                if len(row.accuracies) > 1
                else ""
            )
            + " |"
        )
    return "\n".join(lines)


def replace_between_markers(text: str, body: str) -> str:
    """`text` with what lies between BEGIN and END replaced by `body`."""
    start, end = text.find(BEGIN), text.find(END)
    if start < 0 or end < start:
        raise ValueError(f"markers {BEGIN!r} ... {END!r} not found")
    return text[: start + len(BEGIN)] + "\n" + body + "\n" + text[end:]


def _git(*args: str) -> str:
    """What `git ARGS` prints in this checkout ("" outside one)."""
    return subprocess.run(
        ["git", "-C", str(ROOT), *args], capture_output=True, text=True, check=False
    ).stdout.strip()


def provenance(wall_s: float, load_before: float, load_after: float) -> str:
    """Which commit, how long, how loaded the machine was."""
    commit = _git("rev-parse", "--short", "HEAD")
    dirty = _git("status", "--porcelain", "--untracked-files=no")
    modified = " (modified)" if dirty else ""
    return (
        f"`make seeds` on commit {commit or 'unknown'}{modified}, "
        f"{os.cpu_count()} cores, {wall_s / 60:.1f} min in all; 1-minute load "
        f"average {load_before:.1f} at the start, {load_after:.1f} at the end."
    )


def main(argv: list[str]) -> None:
    del argv
    unknown = sorted(set(_CONFIGS.value) - set(TUTORIALS))
    if unknown:
        raise app.UsageError(f"not tutorial flagfiles: {', '.join(unknown)}")
    names = [name for name in TUTORIALS if name in _CONFIGS.value]
    shutil.rmtree(RUNS_DIR, ignore_errors=True)
    load_before = os.getloadavg()[0]
    start = time.perf_counter()
    rows = []
    for name in names:
        row = run_row(
            name, list(_EXTRA.value), _KERAS_REFERENCE.value, _MLP_SEEDS.value
        )
        rows.append(row)
        keras_text = ""
        if row.keras_accuracy is not None:
            keras_text = f"  keras fit {row.keras_accuracy:.4f}"
        print(
            f"{name:<26} test_accuracy={row.accuracy:.4f}{keras_text}  "
            f"steps={row.steps}  wall {row.wall_s:.0f}s",
            flush=True,
        )
    source = provenance(time.perf_counter() - start, load_before, os.getloadavg()[0])
    table = markdown_table(rows)
    print()
    print(table)
    print()
    print(source)
    if _WRITE_DOCS.value and names == list(TUTORIALS) and not _EXTRA.value:
        for doc, body in (
            ("WORKSPACE.md", f"{table}\n\n{source}"),
            ("README.md", f"{short_table(rows)}\n\n{source}"),
        ):
            path = ROOT / doc
            path.write_text(replace_between_markers(path.read_text(), body))
        print("wrote the table into WORKSPACE.md and README.md")


if __name__ == "__main__":
    app.run(main)
