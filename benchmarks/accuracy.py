"""Held-out accuracy of the tutorial flagfiles on the bundled digits, per precision.

Trains each flagfile under flags/ (default: all but demo.cfg) with the real
pipeline on the `mnist_sample` train part (8,000 digits), once per
`--precisions` entry, and prints the test-part accuracy (2,000 digits), wall
time and, for mixed_bfloat16, the difference to float32 in points: it must stay
within 0.5 points (`--precision` accuracy target). CNNs train at most
`--cnn_steps` steps to fit `make bench`; the others their flagfile's steps. A
flagfile trained to its own steps is also held to its tutorial target (the
course CNN: >= 97%).

    .venv/bin/python -m benchmarks.accuracy [--configs=cnn_course,softmax,...]
        [--precisions=float32,mixed_bfloat16] [--cnn_steps=300]
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags

REPO = pathlib.Path(__file__).resolve().parents[1]
TARGETS = {"cnn_course": 0.97}
MAX_POINTS = 0.5  # bfloat16 may differ from float32 by at most this much
NOT_TUTORIALS = {"demo"}

_CONFIGS = flags.DEFINE_list(
    "configs", None, "Flagfiles under flags/ (default: every tutorial flagfile)."
)
_PRECISIONS = flags.DEFINE_list(
    "precisions", ["float32", "mixed_bfloat16"], "Precisions to train each under."
)
_CNN_STEPS = flags.DEFINE_integer(
    "cnn_steps",
    300,
    "At most this many steps for CNN flagfiles (0: the file's).",
    lower_bound=0,
)


def tutorial_flagfiles() -> list[str]:
    """Every flagfile directly under flags/ except the demo's."""
    return sorted(
        path.stem
        for path in (REPO / "flags").glob("*.cfg")
        if path.stem not in NOT_TUTORIALS
    )


def train_flagfile(name: str, precision: str, logdir: pathlib.Path):
    from pipeline import config as config_lib
    from pipeline import data
    from pipeline.runs import rundir
    from pipeline.training import loop

    # Parsed as pipeline-train parses it: a later --eval_every replaces a
    # flagfile's --eval_every_epochs.
    config = config_lib.config_from_args(
        [
            f"--flagfile={REPO / 'flags' / (name + '.cfg')}",
            "--print_every=0",
            "--histogram_every=0",
            "--eval_every=0",
            "--checkpoint_every=0",
            "--image_count=0",
        ]
    )
    dataset = data.load_dataset(
        config.dataset, config.data_dir, config.validation_split, config.binary_class
    )
    # Epoch settings become steps of this train split, so the cap below holds.
    config = config_lib.resolve_epochs(config, len(dataset.train))
    config = dataclasses.replace(
        config,
        precision=precision,
        **{epochs: 0 for _, epochs in config_lib.EPOCH_ALTERNATIVES},
    )
    flagfile_steps = config.steps
    if config.model == "cnn" and _CNN_STEPS.value:
        config = dataclasses.replace(config, steps=min(config.steps, _CNN_STEPS.value))
    run_dir = rundir.create_run_dir(logdir, f"{name}-{precision}")
    result = loop.train_and_evaluate(config, run_dir, dataset, print_fn=lambda _: None)
    return config, config.steps == flagfile_steps, result


def main(argv: list[str]) -> None:
    del argv
    names = _CONFIGS.value or tutorial_flagfiles()
    precisions = _PRECISIONS.value
    print(
        f"{'flagfile':<22} {'steps':>6} "
        + " ".join(f"{p:>15}" for p in precisions)
        + f" {'points':>7} {'wall s':>14}  verdict"
    )
    failed = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            accuracies, walls = {}, {}
            for precision in precisions:
                config, full, result = train_flagfile(
                    name, precision, pathlib.Path(tmp)
                )
                accuracies[precision] = result.test["accuracy"]
                walls[precision] = result.wall_time_s
            verdicts = []
            points = ""
            if {"float32", "mixed_bfloat16"} <= accuracies.keys():
                diff = (accuracies["mixed_bfloat16"] - accuracies["float32"]) * 100
                points = f"{diff:+.2f}"
                ok = abs(diff) <= MAX_POINTS
                verdicts.append(f"bf16 within {MAX_POINTS}: {'ok' if ok else 'MISSED'}")
                if not ok:
                    failed.append(f"{name} (bfloat16 {diff:+.2f} points)")
            target = TARGETS.get(name)
            if target is not None and full and "float32" in accuracies:
                ok = accuracies["float32"] >= target
                verdicts.append(f">= {target:.2f}: {'ok' if ok else 'MISSED'}")
                if not ok:
                    failed.append(name)
            print(
                f"{name:<22} {config.steps:>6} "
                + " ".join(f"{accuracies[p]:>15.4f}" for p in precisions)
                + f" {points:>7} "
                + f"{'/'.join(f'{walls[p]:.1f}' for p in precisions):>14}  "
                + "; ".join(verdicts),
                flush=True,
            )
    if failed:
        raise SystemExit(f"accuracy target missed: {', '.join(failed)}")


if __name__ == "__main__":
    app.run(main)
