"""Flags -> frozen TrainConfig: the only module that reads absl FLAGS.

Entry points call `define_flags()` once, let absl parse argv (so `--flagfile`,
`--helpfull` and later-flag-wins overrides behave as absl users expect), then
turn the parsed values into a `TrainConfig` with `config_from_flags()`. Library
code receives the config, never `FLAGS`.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence

from absl import flags

MODELS = ("logreg", "mlp", "cnn")
DATASETS = ("mnist_sample", "mnist", "fashion_mnist")
OPTIMIZERS = ("sgd", "momentum", "adam", "adadelta", "rmsprop")
ACTIVATIONS = ("relu", "sigmoid", "tanh", "elu", "selu", "gelu", "swish", "linear")
PADDINGS = ("same", "valid")
STRATEGIES = ("default", "mirrored", "multi_worker", "tpu")
JIT_COMPILE = ("auto", "true", "false")
# Families whose train step XLA made faster on the 2-core benchmark CPU
# (python -m benchmarks.throughput --compare_xla): none. XLA ran the CNN 8x
# slower, and logreg and the MLP 0.7-0.8x as fast as without it.
JIT_AUTO_MODELS: tuple[str, ...] = ()
RUN_NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._=,+-]*$")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Everything that defines a training run, as plain values."""

    model: str = "cnn"
    dataset: str = "mnist_sample"
    data_dir: str | None = None
    binary_class: int | None = None
    validation_split: float = 0.0
    steps: int = 2000
    batch_size: int = 100
    shuffle_buffer: int = 10000
    learning_rate: float = 0.001
    optimizer: str = "adam"
    momentum: float = 0.9
    hidden_layers: int = 2
    hidden_units: int = 30
    activation: str = "relu"
    dropout: float = 0.0
    conv_filters: tuple[int, ...] = (32, 64)
    kernel_size: int = 3
    conv_padding: tuple[str, ...] = ("same",)
    pool_size: int = 2
    conv_dropout: float = 0.0
    dense_units: tuple[int, ...] = (128,)
    dense_dropout: float = 0.0
    logdir: str = "logs"
    run_name: str | None = None
    seed: int = 0
    deterministic: bool = True
    log_every: int = 1
    print_every: int = 100
    eval_every: int = 500
    histogram_every: int = 100
    checkpoint_every: int = 1000
    image_count: int = 32
    max_checkpoints: int = 3
    strategy: str = "default"
    cpu_devices: int = 0
    early_stopping_patience: int = 0
    early_stopping_min_delta: float = 0.0
    steps_per_loop: int = 100
    jit_compile: str = "auto"
    summary_budget_mb: float = 100.0
    precision: str = "float32"

    @property
    def num_classes(self) -> int:
        """Width of the model's output: 1 logit for a binary task, else 10."""
        return 1 if self.binary_class is not None else 10


class ConfigError(ValueError):
    """A combination of flag values that cannot define a run."""


def _positive_ints(values: Sequence[str]) -> bool:
    return all(v.strip().isdigit() and int(v) > 0 for v in values)


def define_flags(flag_values: flags.FlagValues = flags.FLAGS) -> None:
    """Defines every training flag, with help text and validators, on `flag_values`."""
    d = TrainConfig()
    fv = {"flag_values": flag_values}
    flags.DEFINE_enum("model", d.model, MODELS, "Model family.", **fv)
    flags.DEFINE_enum(
        "dataset",
        d.dataset,
        DATASETS,
        "mnist_sample: the bundled official MNIST test set (10,000 digits; first "
        "8,000 train, last 2,000 test). mnist: IDX files or mnist.npz under "
        "--data_dir, else Keras' downloader (needs a network). fashion_mnist: IDX "
        "files under --data_dir, default /usr/share/datasets/fashion-mnist.",
        **fv,
    )
    flags.DEFINE_string(
        "data_dir", None, "Directory holding the dataset's files.", **fv
    )
    flags.DEFINE_integer(
        "binary_class",
        None,
        "If set to K, train a binary 'is it class K?' classifier (one logit).",
        lower_bound=0,
        upper_bound=9,
        **fv,
    )
    flags.DEFINE_float(
        "validation_split",
        d.validation_split,
        "Fraction of the training data (its last part) held out for validation.",
        lower_bound=0.0,
        upper_bound=0.9,
        **fv,
    )
    flags.DEFINE_integer("steps", d.steps, "Training steps.", lower_bound=1, **fv)
    flags.DEFINE_integer(
        "batch_size", d.batch_size, "Examples per step.", lower_bound=1, **fv
    )
    flags.DEFINE_integer(
        "shuffle_buffer",
        d.shuffle_buffer,
        "tf.data shuffle buffer size (1 means no shuffling).",
        lower_bound=1,
        **fv,
    )
    flags.DEFINE_float(
        "learning_rate", d.learning_rate, "Optimizer learning rate (> 0).", **fv
    )
    flags.DEFINE_enum("optimizer", d.optimizer, OPTIMIZERS, "Optimizer.", **fv)
    flags.DEFINE_float(
        "momentum",
        d.momentum,
        "Momentum for --optimizer=momentum.",
        lower_bound=0.0,
        upper_bound=0.999,
        **fv,
    )
    flags.DEFINE_integer(
        "hidden_layers",
        d.hidden_layers,
        "mlp: number of hidden layers.",
        lower_bound=0,
        upper_bound=100,
        **fv,
    )
    flags.DEFINE_integer(
        "hidden_units",
        d.hidden_units,
        "mlp: units per hidden layer.",
        lower_bound=1,
        **fv,
    )
    flags.DEFINE_enum(
        "activation", d.activation, ACTIVATIONS, "Hidden-layer activation.", **fv
    )
    flags.DEFINE_float(
        "dropout",
        d.dropout,
        "mlp: dropout rate after each hidden layer, in [0, 1).",
        **fv,
    )
    flags.DEFINE_list(
        "conv_filters",
        [str(f) for f in d.conv_filters],
        "cnn: filters of each conv layer; each conv is followed by max pooling.",
        **fv,
    )
    flags.DEFINE_integer(
        "kernel_size",
        d.kernel_size,
        "cnn: conv kernel size.",
        lower_bound=1,
        upper_bound=28,
        **fv,
    )
    flags.DEFINE_list(
        "conv_padding",
        list(d.conv_padding),
        "cnn: 'same' or 'valid', one value for all conv layers or one per layer.",
        **fv,
    )
    flags.DEFINE_integer(
        "pool_size",
        d.pool_size,
        "cnn: max-pool size.",
        lower_bound=1,
        upper_bound=14,
        **fv,
    )
    flags.DEFINE_float(
        "conv_dropout",
        d.conv_dropout,
        "cnn: dropout rate after the conv stack, before the dense layers, in [0, 1).",
        **fv,
    )
    flags.DEFINE_list(
        "dense_units",
        [str(u) for u in d.dense_units],
        "cnn: units of each hidden dense layer (empty for none).",
        **fv,
    )
    flags.DEFINE_float(
        "dense_dropout",
        d.dense_dropout,
        "cnn: dropout rate after each hidden dense layer, in [0, 1).",
        **fv,
    )
    flags.DEFINE_string(
        "logdir",
        d.logdir,
        "TensorBoard log directory; runs go in LOGDIR/RUN_NAME.",
        **fv,
    )
    flags.DEFINE_string(
        "run_name",
        None,
        "Run directory name under --logdir (default: MODEL-YYYYmmdd-HHMMSS). "
        "Letters, digits and . _ = , + - only.",
        **fv,
    )
    flags.DEFINE_integer(
        "seed", d.seed, "Seed for shuffling, initialisers, dropout.", **fv
    )
    flags.DEFINE_boolean(
        "deterministic",
        d.deterministic,
        "Enable TensorFlow op determinism: same flags + seed -> same metrics.",
        **fv,
    )
    flags.DEFINE_integer(
        "log_every",
        d.log_every,
        "Write train scalars every N steps (0: never).",
        lower_bound=0,
        **fv,
    )
    flags.DEFINE_integer(
        "print_every",
        d.print_every,
        "Print a progress line every N steps (0: only the final line).",
        lower_bound=0,
        **fv,
    )
    flags.DEFINE_integer(
        "eval_every",
        d.eval_every,
        "Evaluate the full test split every N steps and at the end "
        "(0: only at the end).",
        lower_bound=0,
        **fv,
    )
    flags.DEFINE_integer(
        "histogram_every",
        d.histogram_every,
        "Write weight and gradient histograms every N steps (0: never).",
        lower_bound=0,
        **fv,
    )
    flags.DEFINE_integer(
        "checkpoint_every",
        d.checkpoint_every,
        "Save a checkpoint every N steps; one is always saved at the end "
        "(0: only then).",
        lower_bound=0,
        **fv,
    )
    flags.DEFINE_integer(
        "image_count",
        d.image_count,
        "Input images shown in TensorBoard's Images tab (0: none).",
        lower_bound=0,
        upper_bound=256,
        **fv,
    )
    flags.DEFINE_integer(
        "max_checkpoints",
        d.max_checkpoints,
        "Checkpoints kept in the run directory.",
        lower_bound=1,
        **fv,
    )

    flags.DEFINE_enum(
        "strategy",
        d.strategy,
        STRATEGIES,
        "tf.distribute strategy. default: one device. mirrored: all local GPUs, "
        "or --cpu_devices logical CPUs. multi_worker: MultiWorkerMirroredStrategy "
        "over the cluster in the TF_CONFIG environment variable (needs "
        "--run_name); its gRPC servers listen on ALL interfaces whatever "
        "TF_CONFIG says: run it only on a trusted network. tpu: TPUStrategy. "
        "--batch_size is the global batch, split evenly over replicas; the loss "
        "is averaged over the global batch, so --learning_rate means the same "
        "as on one device with that batch.",
        **fv,
    )
    flags.DEFINE_integer(
        "cpu_devices",
        d.cpu_devices,
        "Split the CPU into N logical devices (mirrored/multi_worker replicas on "
        "a machine without GPUs; 0: no split).",
        lower_bound=0,
        upper_bound=64,
        **fv,
    )
    flags.DEFINE_integer(
        "steps_per_loop",
        d.steps_per_loop,
        "Training steps per compiled call (Orbit's steps_per_loop, Keras' "
        "steps_per_execution). Every step's scalars are still written at their own "
        "step; a call also ends at each eval/histogram/checkpoint/print boundary. "
        "Larger values cut per-step Python overhead (what makes small models "
        "faster than Keras fit); 1 is a plain per-step loop.",
        lower_bound=1,
        upper_bound=100_000,
        **fv,
    )
    flags.DEFINE_enum(
        "jit_compile",
        d.jit_compile,
        JIT_COMPILE,
        "XLA-compile the train step (the step only: the loop reads a tf.data "
        "iterator, which XLA cannot compile). auto: on only for model families "
        "that XLA made faster in benchmarks/throughput.py --compare_xla; on the "
        "2-core benchmark CPU none did (cnn 8x slower, logreg and mlp 0.7-0.8x "
        "as fast), so auto is off. true/false force it.",
        **fv,
    )
    flags.DEFINE_float(
        "summary_budget_mb",
        d.summary_budget_mb,
        "Event-file budget for the run, in MB (0: unlimited). When the projected "
        "size would exceed it, the histogram interval doubles (histograms are "
        "still written at the first and last step); per-step scalars are never "
        "thinned. The bytes written per plugin are printed at exit.",
        lower_bound=0.0,
        **fv,
    )

    for rate_flag in ("dropout", "conv_dropout", "dense_dropout"):
        flags.register_validator(
            rate_flag,
            lambda v: 0.0 <= v < 1.0,
            message=f"--{rate_flag} must be in [0, 1)",
            flag_values=flag_values,
        )
    flags.register_validator(
        "learning_rate",
        lambda v: v > 0.0,
        message="--learning_rate must be > 0",
        flag_values=flag_values,
    )
    flags.register_validator(
        "conv_filters",
        lambda v: len(v) > 0 and _positive_ints(v),
        message="--conv_filters must be a non-empty list of positive integers",
        flag_values=flag_values,
    )
    flags.register_validator(
        "dense_units",
        _positive_ints,
        message="--dense_units must be a list of positive integers",
        flag_values=flag_values,
    )
    flags.register_validator(
        "conv_padding",
        lambda v: len(v) > 0 and all(p in PADDINGS for p in v),
        message="--conv_padding values must be 'same' or 'valid'",
        flag_values=flag_values,
    )
    flags.register_validator(
        "run_name",
        lambda v: v is None or bool(RUN_NAME_PATTERN.match(v)) and ".." not in v,
        message="--run_name may hold only letters, digits and . _ = , + - "
        "(no '/', no '..')",
        flag_values=flag_values,
    )
    flags.register_multi_flags_validator(
        ["conv_padding", "conv_filters"],
        lambda v: len(v["conv_padding"]) in (1, len(v["conv_filters"])),
        message="--conv_padding must have one value or one per --conv_filters entry",
        flag_values=flag_values,
    )
    _define_recovery_flags(flag_values)


def validate(config: TrainConfig) -> TrainConfig:
    """Checks rules that span several values; raises ConfigError naming the flags.

    Flag validators already cover single flags; this catches what only the
    whole config can tell (and configs built in code rather than from flags).
    """
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
    if config.steps_per_loop < 1:
        raise ConfigError(f"--steps_per_loop={config.steps_per_loop} must be >= 1")
    if config.jit_compile not in JIT_COMPILE:
        raise ConfigError(
            f"--jit_compile={config.jit_compile} must be one of "
            + ", ".join(JIT_COMPILE)
        )
    if config.summary_budget_mb < 0:
        raise ConfigError(
            f"--summary_budget_mb={config.summary_budget_mb} must be >= 0"
        )
    return config


def config_from_flags(flag_values: flags.FlagValues = flags.FLAGS) -> TrainConfig:
    """Reads the parsed flags once and returns the frozen, validated config."""
    f = flag_values
    paddings = tuple(f.conv_padding)
    return validate(
        TrainConfig(
            model=f.model,
            dataset=f.dataset,
            data_dir=f.data_dir,
            binary_class=f.binary_class,
            validation_split=f.validation_split,
            steps=f.steps,
            batch_size=f.batch_size,
            shuffle_buffer=f.shuffle_buffer,
            learning_rate=f.learning_rate,
            optimizer=f.optimizer,
            momentum=f.momentum,
            hidden_layers=f.hidden_layers,
            hidden_units=f.hidden_units,
            activation=f.activation,
            dropout=f.dropout,
            conv_filters=tuple(int(v) for v in f.conv_filters),
            kernel_size=f.kernel_size,
            conv_padding=paddings,
            pool_size=f.pool_size,
            conv_dropout=f.conv_dropout,
            dense_units=tuple(int(v) for v in f.dense_units),
            dense_dropout=f.dense_dropout,
            logdir=f.logdir,
            run_name=f.run_name,
            seed=f.seed,
            deterministic=f.deterministic,
            log_every=f.log_every,
            print_every=f.print_every,
            eval_every=f.eval_every,
            histogram_every=f.histogram_every,
            checkpoint_every=f.checkpoint_every,
            image_count=f.image_count,
            max_checkpoints=f.max_checkpoints,
            strategy=f.strategy,
            cpu_devices=f.cpu_devices,
            early_stopping_patience=f.early_stopping_patience,
            early_stopping_min_delta=f.early_stopping_min_delta,
            steps_per_loop=f.steps_per_loop,
            jit_compile=f.jit_compile,
            summary_budget_mb=f.summary_budget_mb,
        )
    )


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


# Flags that may differ from a run's saved config when it is resumed: they
# locate the run, extend it or change only what is printed and kept on disk.
# Everything else would change the math, so a resumed run refuses it.
RESUME_MUTABLE_FLAGS = frozenset(
    {"steps", "print_every", "max_checkpoints", "logdir", "run_name"}
)


def _define_recovery_flags(flag_values: flags.FlagValues) -> None:
    """Flags of issue 6: early stopping, resume, replay."""
    d = TrainConfig()
    fv = {"flag_values": flag_values}
    flags.DEFINE_integer(
        "early_stopping_patience",
        d.early_stopping_patience,
        "Stop when the validation loss has not improved for N evaluations "
        "(every --eval_every steps) and restore the best checkpoint; needs "
        "--validation_split > 0 (0: off).",
        lower_bound=0,
        **fv,
    )
    flags.DEFINE_float(
        "early_stopping_min_delta",
        d.early_stopping_min_delta,
        "Smallest decrease of the validation loss that counts as an improvement.",
        lower_bound=0.0,
        **fv,
    )
    flags.DEFINE_boolean(
        "resume",
        False,
        "Continue an existing run (--run_name=NAME under --logdir, or --run=DIR) "
        "from its latest checkpoint, with its saved config; only --steps, "
        "--print_every and --max_checkpoints may change.",
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
    flags.DEFINE_float(
        "replay_rtol",
        0.0,
        "--replay: relative tolerance when comparing losses (0: bit-identical "
        "float32, which op determinism gives on the same machine).",
        lower_bound=0.0,
        **fv,
    )


@dataclasses.dataclass(frozen=True)
class Launch:
    """What `pipeline-train` was asked to do: a new run, a resume or a replay.

    `config` is built from the flags as given (defaults included); `explicit`
    names the flags set on the command line or in a flagfile, so a resume or
    replay can tell a deliberate override from a default.
    """

    mode: str  # "new", "resume" or "replay"
    config: TrainConfig
    explicit: frozenset[str]
    run_path: str | None = None
    replay_rtol: float = 0.0


def launch_from_flags(flag_values: flags.FlagValues = flags.FLAGS) -> Launch:
    """Reads the mode flags (--resume, --run, --replay) and the config.

    Raises:
      ConfigError: contradictory mode flags.
    """
    f = flag_values
    fields = {field.name for field in dataclasses.fields(TrainConfig)}
    explicit = frozenset(name for name in fields if f[name].present)
    if f.run is not None and not f.resume:
        raise ConfigError("--run is only used with --resume (or use --replay=DIR)")
    if f.resume and f.replay is not None:
        raise ConfigError("--resume and --replay contradict each other; pick one")
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
    config = config_from_flags(f)
    if f.resume:
        return Launch("resume", config, explicit, f.run, f.replay_rtol)
    if f.replay is not None:
        return Launch("replay", config, explicit, f.replay, f.replay_rtol)
    return Launch("new", config, explicit)


def config_from_dict(values: dict) -> TrainConfig:
    """Inverse of `config_to_dict`: a run's saved config back as a TrainConfig.

    Keys this version does not know are ignored and missing ones take their
    defaults, so runs recorded by older or newer versions still load.
    """
    fields = {field.name: field for field in dataclasses.fields(TrainConfig)}
    kwargs = {}
    for key, value in values.items():
        if key in fields:
            kwargs[key] = tuple(value) if isinstance(value, list) else value
    return TrainConfig(**kwargs)
