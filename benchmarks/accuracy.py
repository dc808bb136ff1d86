"""Held-out accuracy of the tutorial flagfiles on the bundled digits.

Trains each named flagfile (default: cnn_course) with the real pipeline on the
`mnist_sample` train part (8,000 digits) and prints its test-part accuracy
(2,000 digits) and wall time. The course CNN must reach >= 97%.

    .venv/bin/python benchmarks/accuracy.py [--configs=cnn_course,softmax,...]
"""

from __future__ import annotations

import os
import pathlib
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags

REPO = pathlib.Path(__file__).resolve().parents[1]
TARGETS = {"cnn_course": 0.97}

_CONFIGS = flags.DEFINE_list("configs", ["cnn_course"], "Flagfiles under flags/.")


def train_flagfile(name: str, logdir: pathlib.Path):
    from pipeline import config as config_lib
    from pipeline import data
    from pipeline.runs import rundir
    from pipeline.training import loop as train

    config = config_lib.config_from_args(
        [
            f"--flagfile={REPO / 'flags' / (name + '.cfg')}",
            "--print_every=0",
            "--histogram_every=0",
            "--eval_every=0",
        ]
    )
    dataset = data.load_dataset(
        config.dataset, config.data_dir, config.validation_split, config.binary_class
    )
    run_dir = rundir.create_run_dir(logdir, name)
    return config, train.train_and_evaluate(
        config, run_dir, dataset, print_fn=lambda _: None
    )


def main(argv: list[str]) -> None:
    del argv
    print(f"{'flagfile':<20} {'steps':>6} {'test acc':>9} {'wall s':>8}  target")
    failed = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in _CONFIGS.value:
            config, result = train_flagfile(name, pathlib.Path(tmp))
            acc = result.test["accuracy"]
            target = TARGETS.get(name)
            verdict = (
                ""
                if target is None
                else (f">= {target:.2f} {'ok' if acc >= target else 'MISSED'}")
            )
            if target is not None and acc < target:
                failed.append(name)
            row = f"{name:<20} {result.step:>6} {acc:>9.4f} {result.wall_time_s:>8.1f}"
            print(f"{row}  {verdict}", flush=True)
    if failed:
        raise SystemExit(f"accuracy target missed: {', '.join(failed)}")


if __name__ == "__main__":
    app.run(main)
