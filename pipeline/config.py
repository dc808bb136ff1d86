"""TrainConfig, declared once, and the absl flags generated from it.

Each `TrainConfig` field is declared in one place, with `option(...)`: its
default, help text, bounds or choices, an extra check with its error message,
whether it is a hyperparameter (a column of TensorBoard's HParams table) and
whether `--resume` may change it. Everything else is generated from that
declaration: the absl flags and their validators (`define_flags`), the
parsed-flags -> config copy (`config_from_flags`), the HParams domains
(`tensorboard/hparams.py`), a sweep's checks (`sweep/space.py`) and the
resume rules (`training/recovery.py`), via `FIELDS`, `NOT_HPARAMS` and
`RESUME_MUTABLE_FLAGS`. Adding a field is one `option(...)` line here.

Entry points call `define_flags()` once, let absl parse argv (so `--flagfile`,
`--helpfull` and later-flag-wins overrides behave as absl users expect), then
turn the parsed values into a `TrainConfig` with `config_from_flags()`. Library
code receives the config, never `FLAGS`. Nothing here imports TensorFlow.
"""

from __future__ import annotations

import dataclasses
import math
import re
import typing
from collections.abc import Callable, Sequence
from typing import Any

from absl import flags

from pipeline.errors import ConfigError

MODELS = ("logreg", "mlp", "cnn")
DATASETS = ("mnist_sample", "mnist", "fashion_mnist")
OPTIMIZERS = ("sgd", "momentum", "adam", "adadelta", "rmsprop")
ACTIVATIONS = ("relu", "sigmoid", "tanh", "elu", "selu", "gelu", "swish", "linear")
PADDINGS = ("same", "valid")
STRATEGIES = ("default", "mirrored", "multi_worker", "tpu")
JIT_COMPILE = ("auto", "true", "false")
# The pixel range a model sees (`data.INPUT_SCALE_DIVISORS` has the divisor).
INPUT_SCALES = ("unit", "raw")
# Kernel initializers by Keras name; the random ones also take a scale
# (`truncated_normal:0.1`: stddev 0.1, TF1's tf.truncated_normal(stddev=0.1)).
KERNEL_INITIALIZERS = (
    "glorot_uniform",
    "glorot_normal",
    "he_uniform",
    "he_normal",
    "lecun_uniform",
    "lecun_normal",
    "orthogonal",
    "zeros",
    "ones",
    "truncated_normal",
    "random_normal",
    "random_uniform",
)
SCALED_INITIALIZERS = ("truncated_normal", "random_normal", "random_uniform")
PRECISIONS = ("auto", "float32", "mixed_bfloat16", "mixed_float16")
# The families `--jit_compile=auto` and `--precision=auto` turn a speed-up
# on for, from the benchmark CPU's measurements (docs/performance.md has the
# figures): XLA made no family's train step faster; mixed_bfloat16 made the
# CNN faster at test accuracy within 0.5 points of float32 (`make bench`).
JIT_AUTO_MODELS: tuple[str, ...] = ()
BF16_AUTO_MODELS: tuple[str, ...] = ("cnn",)
# NumPy's RandomState (used to shuffle and split) takes seeds below 2**32.
SEED_MAX = 2**32 - 1
RUN_NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._=,+-]*$")
# A tag is one word: it is shown comma-joined in tables and the HParams column.
TAG_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/+-]*$")

# The headings `pipeline-train --help` lists its flags under, in this order;
# every field names one with `option(..., group=...)`.
HELP_GROUPS = (
    "model",
    "data",
    "optimiser",
    "training",
    "logging",
    "run management",
    "devices and speed",
)
# The group of pipeline-train's launch flags (--resume, --run, --replay).
LAUNCH_GROUP = "run management"

# What `--resume` (and `--replay`) may do with a field that differs from the
# run's saved config: refuse it (the default: it would change the math), take
# it (it extends the run or changes only what is printed and kept on disk),
# or use it to find the run.
FIXED = "fixed"
MAY_CHANGE = "may change"
LOCATES_RUN = "locates the run"


def _positive_ints(values: Sequence[str]) -> bool:
    return all(v.strip().isdigit() and int(v) > 0 for v in values)


def _is_step_range(values: Sequence[str]) -> bool:
    """Empty, or two steps A,B with 1 <= A <= B (as the flag's strings)."""
    if not values:
        return True
    if len(values) != 2 or not _positive_ints(values):
        return False
    return int(values[0]) <= int(values[1])


def is_tag(value: str) -> bool:
    """A tag is a word of letters, digits and . _ : / + - (no comma, no space)."""
    return bool(TAG_PATTERN.match(value))


def _is_rate(value: float) -> bool:
    return 0.0 <= value < 1.0


def _are_rates(values: Sequence[str]) -> bool:
    try:
        return len(values) > 0 and all(_is_rate(float(v)) for v in values)
    except ValueError:
        return False


def _is_initializer(spec: str) -> bool:
    name, colon, scale = spec.partition(":")
    if name not in KERNEL_INITIALIZERS:
        return False
    if not colon:
        return True
    try:
        return name in SCALED_INITIALIZERS and float(scale) > 0
    except ValueError:
        return False


def _initializer(help: str, **kwargs: Any) -> Any:
    """A kernel initializer flag (see KERNEL_INITIALIZERS)."""
    return option(
        "glorot_uniform",
        help + " A Keras initializer name (" + ", ".join(KERNEL_INITIALIZERS) + "); "
        "the random ones take a scale: truncated_normal:S and random_normal:S "
        "(stddev S), random_uniform:S (in [-S, S]). TF1 tutorials used "
        "truncated_normal:0.1.",
        check=_is_initializer,
        message="{flag} must be a Keras initializer name from the help, or "
        "truncated_normal:S, random_normal:S or random_uniform:S with S > 0",
        **kwargs,
    )


@dataclasses.dataclass(frozen=True)
class Option:
    """How one TrainConfig field is offered: as a flag, an hparam, on resume.

    `choices` makes a string field an enum flag (and a discrete HParams
    domain); `lower`/`upper` are the flag's bounds (both set: an HParams
    interval); `check` is one more validator, reported as `message` (where
    `{flag}` stands for `--NAME`). `applies_to` names the model families
    the field means something for (an MLP has no conv layers, logreg no
    hidden layers): `pipeline.variants` reads it, and each family's builder
    in `models.py` takes exactly its family-specific fields.
    `group` is the heading `--help` lists the flag under (one of HELP_GROUPS).
    `hparam=False` keeps a field out of what defines a variant; `column`
    still shows it in the HParams table. `repeatable` makes a
    `tuple[str, ...]` field a flag given once per value (`--tag=a --tag=b`)
    rather than a comma-separated list.
    """

    help: str
    group: str = ""
    choices: tuple[str, ...] | None = None
    lower: float | None = None
    upper: float | None = None
    check: Callable[[Any], bool] | None = None
    message: str = ""
    hparam: bool = True
    resume: str = FIXED
    applies_to: tuple[str, ...] = MODELS
    repeatable: bool = False
    # Shown as a column of TensorBoard's HParams table (None: when `hparam`).
    # A run's tags are a column to filter by without defining a variant.
    column: bool | None = None

    @property
    def hparams_column(self) -> bool:
        return self.hparam if self.column is None else self.column


def option(default: Any, help: str, **kwargs: Any) -> Any:
    """A TrainConfig field with its default and its `Option` (see there)."""
    return dataclasses.field(
        default=default, metadata={"option": Option(help, **kwargs)}
    )


def _rate(help: str, **kwargs: Any) -> Any:
    """A dropout rate in [0, 1), checked by a validator (no HParams bounds)."""
    return option(
        0.0, help, check=_is_rate, message="{flag} must be in [0, 1)", **kwargs
    )


def _every(default: int, help: str, **kwargs: Any) -> Any:
    """How often to write, print, evaluate or save (0 turns it off or to the
    end): a count of steps or epochs, never an hparam (it changes no math)."""
    return option(default, help, lower=0, hparam=False, **kwargs)


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Everything that defines a training run, as plain values."""

    model: str = option("cnn", "Model family.", choices=MODELS, group="model")
    dataset: str = option(
        "mnist_sample",
        "mnist_sample: the bundled official MNIST test set (10,000 digits; first "
        "8,000 train, last 2,000 test). mnist: IDX files or mnist.npz under "
        "--data_dir, else Keras' downloader (needs a network). fashion_mnist: IDX "
        "files under --data_dir, default /usr/share/datasets/fashion-mnist.",
        choices=DATASETS,
        group="data",
    )
    data_dir: str | None = option(
        None, "Directory holding the dataset's files.", hparam=False, group="data"
    )
    binary_class: int | None = option(
        None,
        "If set to K, train a binary 'is it class K?' classifier (one logit).",
        lower=0,
        upper=9,
        group="data",
    )
    validation_split: float = option(
        0.0,
        "Fraction of the training data (its last part) held out for validation.",
        lower=0.0,
        upper=0.9,
        group="data",
    )
    steps: int = option(
        2000,
        "Training steps (or give --epochs).",
        lower=1,
        resume=MAY_CHANGE,
        group="training",
    )
    epochs: int = option(
        0,
        "Train N epochs instead of --steps: an epoch is ceil(train examples / "
        "--batch_size) steps of the train split left after --validation_split "
        "(0: train --steps). --steps and --epochs are one setting: give one; a "
        "command-line one replaces a flagfile's.",
        lower=0,
        resume=MAY_CHANGE,
        group="training",
    )
    batch_size: int = option(100, "Examples per step.", lower=1, group="optimiser")
    shuffle_buffer: int = option(
        10000,
        "tf.data shuffle buffer size (1 means no shuffling).",
        lower=1,
        group="data",
    )
    input_scale: str = option(
        "unit",
        "Pixel range the model sees: unit = [0, 1] (pixels / 255), raw = the "
        "0-255 values as floats (what the Keras MLP tuning tutorial fed). "
        "Recorded with the run; pipeline-eval, pipeline-predict and "
        "pipeline-export apply it as training did.",
        choices=INPUT_SCALES,
        group="data",
    )
    learning_rate: float = option(
        0.001,
        "Optimizer learning rate (> 0).",
        check=lambda v: v > 0.0,
        message="--learning_rate must be > 0",
        group="optimiser",
    )
    optimizer: str = option("adam", "Optimizer.", choices=OPTIMIZERS, group="optimiser")
    momentum: float = option(
        0.9,
        "Momentum for --optimizer=momentum.",
        lower=0.0,
        upper=0.999,
        group="optimiser",
    )
    hidden_layers: int = option(
        2,
        "mlp: number of hidden layers, the input-side one included (Keras' "
        "Dense(30, input_dim=784) followed by N more Dense(30) is N+1).",
        lower=0,
        upper=100,
        applies_to=("mlp",),
        group="model",
    )
    hidden_units: int = option(
        30, "mlp: units per hidden layer.", lower=1, applies_to=("mlp",), group="model"
    )
    activation: str = option(
        "relu",
        "Hidden-layer activation.",
        choices=ACTIVATIONS,
        applies_to=("mlp", "cnn"),
        group="model",
    )
    dropout: float = _rate(
        "mlp: dropout rate after each hidden layer, in [0, 1).",
        applies_to=("mlp",),
        group="model",
    )
    conv_filters: tuple[int, ...] = option(
        (32, 64),
        "cnn: filters of each conv layer; each conv is followed by max pooling.",
        check=lambda v: len(v) > 0 and _positive_ints(v),
        message="--conv_filters must be a non-empty list of positive integers",
        applies_to=("cnn",),
        group="model",
    )
    kernel_size: int = option(
        3,
        "cnn: conv kernel size.",
        lower=1,
        upper=28,
        applies_to=("cnn",),
        group="model",
    )
    conv_padding: tuple[str, ...] = option(
        ("same",),
        "cnn: 'same' or 'valid', one value for all conv layers or one per layer.",
        check=lambda v: len(v) > 0 and all(p in PADDINGS for p in v),
        message="--conv_padding values must be 'same' or 'valid'",
        applies_to=("cnn",),
        group="model",
    )
    pool_size: int = option(
        2, "cnn: max-pool size.", lower=1, upper=14, applies_to=("cnn",), group="model"
    )
    conv_dropout: float = _rate(
        "cnn: dropout rate after the conv stack, before the dense layers, in [0, 1).",
        applies_to=("cnn",),
        group="model",
    )
    dense_units: tuple[int, ...] = option(
        (128,),
        "cnn: units of each hidden dense layer (empty for none).",
        check=_positive_ints,
        message="--dense_units must be a list of positive integers",
        applies_to=("cnn",),
        group="model",
    )
    dense_dropout: tuple[float, ...] = option(
        (0.0,),
        "cnn: dropout rate after each hidden dense layer, in [0, 1): one for "
        "every layer or one per --dense_units entry (TF1's keep_prob 0.2 then "
        "0.5 is 0.8,0.5).",
        check=_are_rates,
        message="--dense_dropout values must be rates in [0, 1)",
        applies_to=("cnn",),
        group="model",
    )
    conv_kernel_init: str = _initializer(
        "cnn: initializer of the conv kernels.", applies_to=("cnn",), group="model"
    )
    dense_kernel_init: str = _initializer(
        "Initializer of every dense layer's kernel, the logits layer included.",
        group="model",
    )
    bias_init: float = option(
        0.0, "Constant every bias starts at (TF1 tutorials used 0.1).", group="model"
    )
    logdir: str = option(
        "logs",
        "TensorBoard log directory; runs go in LOGDIR/RUN_NAME.",
        hparam=False,
        resume=LOCATES_RUN,
        group="run management",
    )
    run_name: str | None = option(
        None,
        "Run directory name under --logdir (default: MODEL-YYYYmmdd-HHMMSS). "
        "Letters, digits and . _ = , + - only.",
        check=lambda v: v is None or bool(RUN_NAME_PATTERN.match(v)) and ".." not in v,
        message="--run_name may hold only letters, digits and . _ = , + - "
        "(no '/', no '..')",
        hparam=False,
        resume=LOCATES_RUN,
        group="run management",
    )
    seed: int = option(
        0,
        "Seed for shuffling, initialisers, dropout (0 to 2**32-1: NumPy's seed range).",
        lower=0,
        upper=SEED_MAX,
        group="training",
    )
    deterministic: bool = option(
        True,
        "Enable TensorFlow op determinism: same flags + seed -> same metrics.",
        group="training",
    )
    log_every: int = _every(
        1,
        "Write train scalars every N steps (0: never).",
        group="logging",
    )
    print_every: int = _every(
        100,
        "Print a progress line every N steps (0: only the final line).",
        resume=MAY_CHANGE,
        group="logging",
    )
    flush_secs: float = option(
        1.0,
        "Write the summaries to disk with a progress line at most every N "
        "seconds (0: with every one), as tf.summary's flush_millis; checkpoints "
        "and the run's end always write them.",
        lower=0.0,
        hparam=False,
        resume=MAY_CHANGE,
        group="logging",
    )
    eval_every: int = _every(
        500,
        "Evaluate the full test split every N steps and at the end "
        "(0: only at the end).",
        group="logging",
    )
    eval_every_epochs: int = _every(
        0,
        "Evaluate every N epochs instead of every --eval_every steps (0: use "
        "--eval_every); one setting with --eval_every, like --steps/--epochs.",
        group="logging",
    )
    histogram_every: int = _every(
        # Every 500 steps, as --eval_every: every 100 cost a small model (the
        # 10x30 MLP) ~6-13% of its throughput, 500 ~2% (docs/performance.md).
        500,
        "Write weight and gradient histograms every N steps (0: never).",
        group="logging",
    )
    checkpoint_every: int = _every(
        1000,
        "Save a checkpoint every N steps; one is always saved at the end "
        "(0: only then).",
        group="run management",
    )
    checkpoint_every_epochs: int = _every(
        0,
        "Save a checkpoint every N epochs instead of every --checkpoint_every "
        "steps (0: use --checkpoint_every); one setting with --checkpoint_every.",
        group="run management",
    )
    image_count: int = option(
        32,
        "Input images shown in TensorBoard's Images tab (0: none).",
        lower=0,
        upper=256,
        hparam=False,
        group="logging",
    )
    projector: bool = option(
        True,
        "At the end of training, write the test split's penultimate-layer "
        "embeddings (at most 2,000 examples), their digits and labels into the "
        "run's test/ directory for TensorBoard's Projector.",
        hparam=False,
        resume=MAY_CHANGE,
        group="logging",
    )
    profile_steps: tuple[int, ...] = option(
        (),
        "A,B: record a tf.profiler trace of steps A to B into the run's train/ "
        "directory, for TensorBoard's Profile tab (empty: no trace).",
        check=_is_step_range,
        message="--profile_steps must be two steps A,B with 1 <= A <= B",
        hparam=False,
        resume=MAY_CHANGE,
        group="logging",
    )
    max_checkpoints: int = option(
        3,
        "Checkpoints kept in the run directory.",
        lower=1,
        hparam=False,
        resume=MAY_CHANGE,
        group="run management",
    )
    # How the job is spread over devices is not an hparam: tf.distribute
    # computes the same math.
    strategy: str = option(
        "default",
        "tf.distribute strategy. default: one device. mirrored: all local GPUs, "
        "or --cpu_devices logical CPUs. multi_worker: MultiWorkerMirroredStrategy "
        "over the cluster in the TF_CONFIG environment variable (needs "
        "--run_name); its gRPC servers listen on ALL interfaces whatever "
        "TF_CONFIG says: run it only on a trusted network. tpu: TPUStrategy. "
        "--batch_size is the global batch, split evenly over replicas; the loss "
        "is averaged over the global batch, so --learning_rate means the same "
        "as on one device with that batch.",
        choices=STRATEGIES,
        hparam=False,
        group="devices and speed",
    )
    cpu_devices: int = option(
        0,
        "Split the CPU into N logical devices (mirrored/multi_worker replicas on "
        "a machine without GPUs; 0: no split).",
        lower=0,
        upper=64,
        hparam=False,
        group="devices and speed",
    )
    # What the user says about a run: not what is trained (no variant is
    # defined by it), and changeable later (`pipeline-runs note|tag`).
    note: str | None = option(
        None,
        "A note on why this run was made; shown in TensorBoard's Text tab for "
        "the run and by pipeline-runs. Change it later with pipeline-runs note.",
        check=lambda v: v is None or "\n" not in v,
        message="{flag} must be one line (flags.cfg holds one flag a line)",
        hparam=False,
        resume=MAY_CHANGE,
        group="run management",
    )
    tag: tuple[str, ...] = option(
        (),
        "A tag for the run; repeat the flag for more (--tag=baseline "
        "--tag=bf16). pipeline-runs list --tag and pipeline-compare --filter "
        "'tag==NAME' select by it; pipeline-runs tag changes them later.",
        check=lambda v: all(is_tag(t) for t in v),
        message="{flag} must be a word of letters, digits and . _ : / + - "
        "(no comma or space)",
        hparam=False,
        resume=MAY_CHANGE,
        repeatable=True,
        column=True,
        group="run management",
    )
    early_stopping_patience: int = option(
        0,
        "Stop when the validation loss has not improved for N evaluations "
        "(every --eval_every steps or --eval_every_epochs epochs) and restore "
        "the best checkpoint; needs "
        "--validation_split > 0 (0: off).",
        lower=0,
        group="training",
    )
    early_stopping_min_delta: float = option(
        0.0,
        "Smallest decrease of the validation loss that counts as an improvement.",
        lower=0.0,
        group="training",
    )
    steps_per_loop: int = option(
        100,
        "Training steps per compiled call (Orbit's steps_per_loop, Keras' "
        "steps_per_execution); 1 is a plain per-step loop. Every step's scalars are "
        "still written at their own step, and a call also ends at each eval, "
        "histogram, checkpoint or print boundary (docs/performance.md has its "
        "measured effect).",
        lower=1,
        upper=100_000,
        group="devices and speed",
    )
    jit_compile: str = option(
        "auto",
        "XLA-compile the train step (the step only: the loop reads a tf.data "
        "iterator, which XLA cannot compile). true/false force it; auto turns it "
        "on for the model families in config.JIT_AUTO_MODELS: "
        f"{', '.join(JIT_AUTO_MODELS) or 'none'} (docs/performance.md has the "
        "measurements behind the list).",
        choices=JIT_COMPILE,
        group="devices and speed",
    )
    summary_budget_mb: float = option(
        100.0,
        "Event-file budget for the run, in MB (0: unlimited). When the projected "
        "size would exceed it, the histogram interval doubles (histograms are "
        "still written at the first and last step); per-step scalars are never "
        "thinned. The bytes written per plugin are printed at exit.",
        lower=0.0,
        group="logging",
    )
    precision: str = option(
        "auto",
        "Keras mixed-precision policy. float32; mixed_bfloat16 / mixed_float16: "
        "hidden layers compute in 16 bits while variables, optimizer state, "
        "logits, loss, metrics and summaries stay float32 (float16 adds dynamic "
        "loss scaling, Keras' LossScaleOptimizer); checkpoints restore at any "
        "precision. auto: mixed_bfloat16 where the hardware computes bfloat16 "
        "natively (a GPU of compute capability >= 8.0, or a CPU whose "
        "/proc/cpuinfo flags list avx512_bf16 or amx_bf16) for the model "
        f"families in config.BF16_AUTO_MODELS ({', '.join(BF16_AUTO_MODELS)}), "
        "else float32 (docs/performance.md has the measurements behind the "
        "list). The choice and its reason go to run.json and the model summary.",
        choices=PRECISIONS,
        group="devices and speed",
    )

    @property
    def num_classes(self) -> int:
        """Width of the model's output: 1 logit for a binary task, else 10."""
        return 1 if self.binary_class is not None else 10


@dataclasses.dataclass(frozen=True)
class PairedRule:
    """A rule between two flags: `holds` gets their values by name.

    Declared once: `define_flags` registers it as an absl validator (so a
    bad pair is a flags error, as a bad value is) and `validate` applies it
    to configs built in code. `holds` sees lists as the flag has them
    (strings) or as the config does (numbers), so it compares lengths only.
    """

    names: tuple[str, str]
    holds: Callable[[dict[str, Any]], bool]
    message: str


PAIRED_RULES = (
    PairedRule(
        ("conv_padding", "conv_filters"),
        lambda v: len(v["conv_padding"]) in (1, len(v["conv_filters"])),
        "--conv_padding must have one value or one per --conv_filters entry",
    ),
    PairedRule(
        ("dense_dropout", "dense_units"),
        lambda v: len(v["dense_dropout"]) in (1, len(v["dense_units"])),
        "--dense_dropout must have one rate or one per --dense_units entry",
    ),
)


@dataclasses.dataclass(frozen=True)
class Field:
    """A TrainConfig field as the generators see it: name, type, default, Option.

    `kind` is the flag type: enum, string, integer, float, boolean, list
    (a comma-separated flag whose items have type `item`) or multi (a string
    flag given once per value).
    """

    name: str
    kind: str
    default: Any
    option: Option
    item: type | None = None

    @property
    def description(self) -> str:
        """The help text as absl shows it (enums prefixed with their choices)."""
        if self.kind == "enum":
            return f"<{'|'.join(self.option.choices)}>: {self.option.help}"
        return self.option.help

    def from_flag(self, value: Any) -> Any:
        """A parsed flag value as the config holds it (lists become tuples)."""
        if self.kind in ("list", "multi"):
            return tuple(self.item(v) for v in value or ())
        return value


_KINDS = {str: "string", int: "integer", float: "float", bool: "boolean"}


def _field(field: dataclasses.Field, hint: Any) -> Field:
    opt = field.metadata.get("option")
    if opt is None:
        raise TypeError(f"TrainConfig.{field.name}: declare it with option(...)")
    if opt.group not in HELP_GROUPS:
        raise TypeError(
            f"TrainConfig.{field.name}: option(..., group=) must be one of "
            f"{', '.join(HELP_GROUPS)} (the --help heading it is listed under)"
        )
    if typing.get_origin(hint) is tuple:
        kind = "multi" if opt.repeatable else "list"
        return Field(field.name, kind, field.default, opt, typing.get_args(hint)[0])
    base = [t for t in typing.get_args(hint) if t is not type(None)] or [hint]
    if opt.choices:
        return Field(field.name, "enum", field.default, opt)
    if base[0] not in _KINDS:
        raise TypeError(f"TrainConfig.{field.name}: no flag type for {hint}")
    return Field(field.name, _KINDS[base[0]], field.default, opt)


def _fields() -> tuple[Field, ...]:
    hints = typing.get_type_hints(TrainConfig)
    return tuple(_field(f, hints[f.name]) for f in dataclasses.fields(TrainConfig))


FIELDS: tuple[Field, ...] = _fields()
FIELDS_BY_NAME: dict[str, Field] = {f.name: f for f in FIELDS}
# Fields that say where and how often to write, not what is trained.
NOT_HPARAMS = frozenset(f.name for f in FIELDS if not f.option.hparam)
# Fields a resumed run may take from the command line (every other one would
# change the math, so a resume refuses it).
RESUME_MUTABLE_FLAGS = frozenset(f.name for f in FIELDS if f.option.resume != FIXED)
# Fields that say where the run lives: they find the run to resume, and a
# sweep sets them itself.
LOCATION_FLAGS = frozenset(f.name for f in FIELDS if f.option.resume == LOCATES_RUN)


def _define(field: Field, flag_values: flags.FlagValues) -> None:
    opt = field.option
    fv = {"flag_values": flag_values}
    bounds = {"lower_bound": opt.lower, "upper_bound": opt.upper}
    if field.kind == "enum":
        flags.DEFINE_enum(field.name, field.default, opt.choices, opt.help, **fv)
    elif field.kind == "string":
        flags.DEFINE_string(field.name, field.default, opt.help, **fv)
    elif field.kind == "integer":
        flags.DEFINE_integer(field.name, field.default, opt.help, **bounds, **fv)
    elif field.kind == "float":
        flags.DEFINE_float(field.name, field.default, opt.help, **bounds, **fv)
    elif field.kind == "boolean":
        flags.DEFINE_boolean(field.name, field.default, opt.help, **fv)
    elif field.kind == "multi":
        flags.DEFINE_multi_string(field.name, list(field.default), opt.help, **fv)
    else:
        default = [str(v) for v in field.default]
        flags.DEFINE_list(field.name, default, opt.help, **fv)


def help_group(
    flag_values: flags.FlagValues, heading: str, names: Sequence[str]
) -> None:
    """Lists the flags `names` under `heading` in a program's `--help`.

    A group is an absl key-flag pseudo-module named after its heading
    (absl's help renders a module's key flags as one block);
    `pipeline.cli.usage` prints the groups in the order they were first
    registered.
    """
    for name in names:
        flag_values.register_key_flag_for_module(heading, flag_values[name])


def require_finite(flag_values: flags.FlagValues, name: str) -> None:
    """Refuses `inf` and `nan` for float flag `name`: absl parses both, and
    neither trains anything (nor prunes sensibly)."""
    flags.register_validator(
        name,
        lambda v: v is None or math.isfinite(v),
        message=f"--{name} must be a finite number",
        flag_values=flag_values,
    )


def define_flags(flag_values: flags.FlagValues = flags.FLAGS) -> None:
    """Defines every training flag, with help text and validators, on `flag_values`.

    Also defines the launch flags of `pipeline-train` (--resume, --run,
    --replay, --replay_rtol), which say what to do with the config. Each
    flag is listed in `--help` under its field's group.
    """
    for field in FIELDS:
        _define(field, flag_values)
    for group in HELP_GROUPS:
        names = [field.name for field in FIELDS if field.option.group == group]
        help_group(flag_values, group, names)
    for field in FIELDS:
        if field.kind == "float":
            require_finite(flag_values, field.name)
        if field.option.check is not None:
            flags.register_validator(
                field.name,
                field.option.check,
                message=field.option.message.replace("{flag}", f"--{field.name}"),
                flag_values=flag_values,
            )
    for rule in PAIRED_RULES:
        flags.register_multi_flags_validator(
            list(rule.names), rule.holds, message=rule.message, flag_values=flag_values
        )
    _define_launch_flags(flag_values)


def _check_declared(config: TrainConfig) -> None:
    """The declared bounds and choices, for configs built in code.

    The flags check the same declaration (absl's bounds and enums), so a
    config read from flags passes here; a config built in code or read from
    a run.json is refused with the flag's name. A field's `check` judges the
    flag's text (`--conv_filters=32,64`), so only the flag applies it.
    """
    for field in FIELDS:
        value = getattr(config, field.name)
        if field.kind == "enum" and value not in field.option.choices:
            raise ConfigError(
                f"--{field.name}={value} must be one of "
                + ", ".join(field.option.choices)
            )
        if field.kind not in ("integer", "float") or value is None:
            continue
        lower, upper = field.option.lower, field.option.upper
        too_low = lower is not None and value < lower
        if too_low or (upper is not None and value > upper) or not math.isfinite(value):
            raise ConfigError(
                f"--{field.name}={value} is out of range"
                + (f" [{lower}, {upper}]" if None not in (lower, upper) else "")
            )


def validate(config: TrainConfig) -> TrainConfig:
    """Checks a whole config; raises ConfigError naming the flags.

    The one place for rules that only the whole config can tell; the
    declared per-field rules and PAIRED_RULES are applied again here (the
    flags already applied them) for configs built in code rather than from
    flags.
    """
    _check_declared(config)
    for rule in PAIRED_RULES:
        if not rule.holds({name: getattr(config, name) for name in rule.names}):
            raise ConfigError(rule.message)
    if config.model == "cnn":
        size = 28
        paddings = config.conv_padding
        if len(paddings) == 1:
            paddings = paddings * len(config.conv_filters)
        for padding in paddings:
            if padding == "valid":
                size -= config.kernel_size - 1
            size //= config.pool_size
            if size < 1:
                raise ConfigError(
                    "--conv_filters/--kernel_size/--pool_size shrink the 28x28 "
                    "image to nothing; use fewer conv layers, 'same' padding or "
                    "a smaller pool"
                )
    if config.profile_steps and config.profile_steps[1] > config.steps:
        raise ConfigError(
            f"--profile_steps={','.join(map(str, config.profile_steps))} ends "
            f"after --steps={config.steps}"
        )
    if config.early_stopping_patience > 0 and config.validation_split <= 0:
        raise ConfigError(
            f"--early_stopping_patience={config.early_stopping_patience} needs "
            "--validation_split > 0 (it watches the validation loss)"
        )
    if config.strategy == "multi_worker" and not config.run_name:
        raise ConfigError(
            "--strategy=multi_worker needs --run_name: every worker must agree on "
            "the run directory"
        )
    if config.cpu_devices and config.strategy not in ("mirrored", "multi_worker"):
        raise ConfigError(
            "--cpu_devices applies only to --strategy=mirrored/multi_worker"
        )
    replicas = config.cpu_devices or 1
    if config.batch_size % replicas:
        raise ConfigError(
            f"--batch_size={config.batch_size} must be divisible by "
            f"--cpu_devices={replicas} (the global batch is split evenly)"
        )
    if config.dataset == "mnist_sample" and config.data_dir:
        raise ConfigError(
            "--data_dir is not used with --dataset=mnist_sample (the data ships "
            "with the package); drop it or pick --dataset=mnist/fashion_mnist"
        )
    return config


# Settings given either in steps or in epochs of the train split: each pair
# (steps flag, epochs flag) is one setting, and exactly one of the two applies.
EPOCH_ALTERNATIVES = (
    ("steps", "epochs"),
    ("eval_every", "eval_every_epochs"),
    ("checkpoint_every", "checkpoint_every_epochs"),
)


def _flag_name(arg: str) -> str:
    return arg.lstrip("-").split("=", 1)[0] if arg.startswith("-") else ""


def _choose_alternatives(
    values: dict[str, Any],
    flag_values: flags.FlagValues,
    argv: Sequence[str] | None,
    refuse_on_command_line: bool,
) -> None:
    """Keeps one of each EPOCH_ALTERNATIVES pair given both ways (in `values`).

    The one given last wins, as absl lets a later flag win (flagfiles count
    where they are included), so `--flagfile=F --epochs=5` replaces F's
    `--steps`. Both written on the command line itself is refused, and so is
    both given when the order is unknown (`argv` None). An epochs flag at 0
    counts as not given.
    """
    order: dict[str, int] = {}
    if argv is not None:
        expanded = flag_values.read_flags_from_files(list(argv[1:]))
        order = {_flag_name(arg): i for i, arg in enumerate(expanded)}
    direct = {_flag_name(arg) for arg in (argv or ())[1:]}
    for steps_name, epochs_name in EPOCH_ALTERNATIVES:
        if not (flag_values[steps_name].present and values[epochs_name]):
            continue
        if argv is None or (
            refuse_on_command_line and {steps_name, epochs_name} <= direct
        ):
            raise ConfigError(
                f"--{steps_name} and --{epochs_name} are one setting given two "
                f"ways; give exactly one (--{epochs_name}=N: N epochs of the "
                f"train split)"
            )
        if order.get(steps_name, -1) > order.get(epochs_name, -1):
            values[epochs_name] = 0


def config_from_flags(
    flag_values: flags.FlagValues = flags.FLAGS,
    argv: Sequence[str] | None = None,
    *,
    refuse_both_on_command_line: bool = True,
) -> TrainConfig:
    """Reads the parsed flags once and returns the frozen, validated config.

    `argv` is the program's command line as parsed (flagfiles unexpanded):
    it says which of `--steps`/`--epochs` (and the other EPOCH_ALTERNATIVES)
    came last when both were given; without it, both given is an error, and
    so is both written on the command line itself unless
    `refuse_both_on_command_line` is False (an argument list a program built).
    """
    values = {f.name: f.from_flag(flag_values[f.name].value) for f in FIELDS}
    _choose_alternatives(values, flag_values, argv, refuse_both_on_command_line)
    return validate(TrainConfig(**values))


def unused_alternatives(config: TrainConfig) -> frozenset[str]:
    """The member of each EPOCH_ALTERNATIVES pair that does not apply to `config`.

    A config's flags written out without these say each setting one way (a
    run's flags.cfg, a sweep's child command line).
    """
    return frozenset(
        steps_name if getattr(config, epochs_name) else epochs_name
        for steps_name, epochs_name in EPOCH_ALTERNATIVES
    )


def steps_per_epoch(batch_size: int, train_examples: int) -> int:
    """Steps in one epoch: ceil(train examples / batch), as Keras counts them."""
    return -(-train_examples // batch_size)


def resolve_epochs(config: TrainConfig, train_examples: int) -> TrainConfig:
    """`config` with every setting given in epochs turned into steps.

    `train_examples` is the size of the train split after any validation
    split. A config without epoch settings comes back unchanged; the epoch
    fields stay, so the run record shows both what was asked and the steps.
    """
    per_epoch = steps_per_epoch(config.batch_size, train_examples)
    updates = {
        steps_name: getattr(config, epochs_name) * per_epoch
        for steps_name, epochs_name in EPOCH_ALTERNATIVES
        if getattr(config, epochs_name)
    }
    return dataclasses.replace(config, **updates) if updates else config


def epoch_of(step: int, per_epoch: int) -> int:
    """The epoch `step` falls in (1-based; step 0 is before epoch 1)."""
    return -(-step // per_epoch)


def config_from_args(argv: Sequence[str]) -> TrainConfig:
    """Parses flag arguments (`--name=value`, no program name) into a config.

    Uses the same generated flags and validators as `pipeline-train` on a
    fresh `FlagValues`, so a sweep checks its grid values exactly as training
    would, without touching the program's own FLAGS.

    Raises:
      flags.Error: a value a flag refuses, or an unknown flag.
      ConfigError: values that cannot define a run together.
    """
    flag_values = flags.FlagValues()
    define_flags(flag_values)
    args = ["pipeline-train", *argv]
    flag_values(args)
    # Built argument lists (a sweep's base flags plus its grid values) let a
    # later --epochs replace an earlier --steps.
    return config_from_flags(flag_values, args, refuse_both_on_command_line=False)


def use_jit_compile(config: TrainConfig) -> bool:
    """Resolves `--jit_compile`: `auto` follows the measurements per model family."""
    if config.jit_compile == "auto":
        return config.model in JIT_AUTO_MODELS
    return config.jit_compile == "true"


def config_to_dict(config: TrainConfig) -> dict:
    """Returns the config as JSON-ready plain values (tuples become lists)."""
    return {
        k: list(v) if isinstance(v, tuple) else v
        for k, v in dataclasses.asdict(config).items()
    }


def _define_launch_flags(flag_values: flags.FlagValues) -> None:
    """--resume, --run, --replay, --rerun, --replay_rtol, --peer_timeout: what
    to do with the config (and how long a multi-worker start waits)."""
    fv = {"flag_values": flag_values}
    may_change = [f"--{f.name}" for f in FIELDS if f.option.resume == MAY_CHANGE]
    flags.DEFINE_boolean(
        "resume",
        False,
        "Continue an existing run (--run_name=NAME under --logdir, or --run=DIR) "
        "from its latest checkpoint, with its saved config; only "
        f"{', '.join(may_change[:-1])} and {may_change[-1]} may change.",
        **fv,
    )
    flags.DEFINE_string(
        "run",
        None,
        "With --resume: the run directory to continue, e.g. logs/NAME.",
        **fv,
    )
    flags.DEFINE_string(
        "replay",
        None,
        "Re-run the run in this directory from its saved config (into a "
        "temporary directory, for --steps steps, default all) and compare its "
        "train losses with the original's event file; exit 1 at the first "
        "step that differs.",
        **fv,
    )
    flags.DEFINE_string(
        "rerun",
        None,
        "Start a new run with the flags of the run in this directory (e.g. "
        "logs/NAME); flags given here replace its values, --logdir/--run_name/"
        "--note are this run's own. Warns in one line when the code or the "
        "installed packages differ from what that run recorded.",
        **fv,
    )
    flags.DEFINE_integer(
        "peer_timeout",
        600,
        "--strategy=multi_worker: seconds to wait for every worker of TF_CONFIG "
        "to join before giving up (naming the ones missing); Ctrl-C or SIGTERM "
        "stops the wait at once.",
        lower_bound=1,
        upper_bound=7 * 24 * 3600,
        **fv,
    )
    flags.DEFINE_float(
        "replay_rtol",
        0.0,
        "--replay: relative tolerance when comparing losses (0: bit-identical "
        "float32, which op determinism gives on the same machine).",
        lower_bound=0.0,
        **fv,
    )
    help_group(
        flag_values,
        LAUNCH_GROUP,
        ["resume", "run", "replay", "replay_rtol", "rerun", "peer_timeout"],
    )


@dataclasses.dataclass(frozen=True)
class Launch:
    """What `pipeline-train` was asked to do: a new run, a resume or a replay.

    `config` is built from the flags as given (defaults included); `explicit`
    names the flags set on the command line or in a flagfile, so a resume or
    replay can tell a deliberate override from a default.
    """

    mode: str  # "new", "resume", "replay" or "rerun"
    config: TrainConfig
    explicit: frozenset[str]
    run_path: str | None = None
    replay_rtol: float = 0.0
    peer_timeout: int = 600


def launch_from_flags(
    flag_values: flags.FlagValues = flags.FLAGS, argv: Sequence[str] | None = None
) -> Launch:
    """Reads the mode flags (--resume, --run, --replay) and the config.

    `argv` is the command line absl parsed (see `config_from_flags`).

    Raises:
      ConfigError: contradictory mode flags.
    """
    f = flag_values
    explicit = frozenset(field.name for field in FIELDS if f[field.name].present)
    if f.run is not None and not f.resume:
        raise ConfigError("--run is only used with --resume (or use --replay=DIR)")
    if f.resume and f.replay is not None:
        raise ConfigError("--resume and --replay contradict each other; pick one")
    if f.rerun is not None and (f.resume or f.replay is not None):
        raise ConfigError(
            "--rerun starts a new run; it cannot be combined with --resume or --replay"
        )
    if f.replay is not None and "run_name" in explicit:
        raise ConfigError(
            "--replay runs in a temporary directory and keeps nothing; drop --run_name"
        )
    if f.resume:
        if f.run is None and f.run_name is None:
            raise ConfigError(
                "--resume needs the run: --run=LOGDIR/NAME or --run_name=NAME"
            )
        if f.run is not None and f.run_name is not None:
            raise ConfigError("--resume takes --run=DIR or --run_name=NAME, not both")
    config = config_from_flags(f, argv)
    timeout = {"peer_timeout": f.peer_timeout}
    if f.resume:
        return Launch("resume", config, explicit, f.run, f.replay_rtol, **timeout)
    if f.replay is not None:
        return Launch("replay", config, explicit, f.replay, f.replay_rtol, **timeout)
    if f.rerun is not None:
        return Launch("rerun", config, explicit, f.rerun, **timeout)
    return Launch("new", config, explicit, **timeout)


def config_from_dict(values: dict) -> TrainConfig:
    """Inverse of `config_to_dict`: a run's saved config back as a TrainConfig.

    Keys this version does not know are ignored and missing ones take their
    defaults, so runs recorded by older or newer versions still load.
    """
    kwargs = {}
    for key, value in values.items():
        if key in FIELDS_BY_NAME:
            kind = FIELDS_BY_NAME[key].kind
            if kind in ("list", "multi") and not isinstance(value, list):
                value = [value]  # recorded before the field took a list
            kwargs[key] = tuple(value) if isinstance(value, list) else value
    return TrainConfig(**kwargs)
