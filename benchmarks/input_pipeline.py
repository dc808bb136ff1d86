"""The tf.data input pipeline alone, in examples/s, against the training rate.

    python -m benchmarks.input_pipeline [--throughput_json=PATH]

Drains `pipeline.data.make_dataset` the way the train loop does (`next()` on
the iterator inside a compiled `tf.range` loop, one batch per step), for each
family's batch size, with a full-size shuffle buffer (the gathered-batches
path the benchmarks and `--shuffle_buffer>=train size` use) and with the
flag's default buffer (per-example `shuffle`). Given the JSON that
`benchmarks.throughput --json_out` wrote, prints the ratio to each family's
measured training rate (target: >= 10x).
"""

from __future__ import annotations

import json
import pathlib
import statistics
import time

from absl import app, flags

from benchmarks import common

FLAGS = flags.FLAGS
flags.DEFINE_string(
    "throughput_json", None, "Results of benchmarks.throughput to compare against."
)
flags.DEFINE_integer("batches", 3000, "Batches drained per measurement.")
flags.DEFINE_integer("rounds", 3, "Measurements per pipeline (median kept).")


def drain_rate(dataset, batch_size: int, batches: int, rounds: int) -> list[float]:
    """Examples/s of pulling `batches` batches through a compiled loop."""
    import tensorflow as tf

    @tf.function
    def drain(iterator, n):
        total = tf.constant(0.0)
        for _ in tf.range(n):
            images, _ = next(iterator)
            total += images[0, 0, 0, 0]
        return total

    iterator = iter(dataset)
    drain(iterator, tf.constant(50)).numpy()  # trace, fill prefetch buffers
    rates = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        drain(iterator, tf.constant(batches)).numpy()
        rates.append(batches * batch_size / (time.perf_counter() - t0))
    return rates


def main(argv: list[str]) -> None:
    del argv
    from pipeline import config as config_lib
    from pipeline import data as data_lib

    training = {}
    if FLAGS.throughput_json and pathlib.Path(FLAGS.throughput_json).is_file():
        results = json.loads(pathlib.Path(FLAGS.throughput_json).read_text())
        for family in results["families"]:
            rates = family["rates"]
            training[family["family"]] = max(
                statistics.median(v) for k, v in rates.items() if k.startswith("pipe_")
            )
    dataset = data_lib.load_dataset("fashion_mnist")
    default_buffer = config_lib.TrainConfig().shuffle_buffer
    print(f"{'family':7s} {'batch':>5s} {'shuffle':>22s} {'median ex/s':>12s} ", end="")
    print(f"{'min-max':>21s} {'vs training':>12s}")
    for family in common.FAMILIES:
        config = common.family_config(family)
        for label, buffer in (
            (f"full ({len(dataset.train):,}, gather)", len(dataset.train)),
            (f"buffer {default_buffer:,} (default)", default_buffer),
        ):
            ds = data_lib.make_dataset(
                dataset.train,
                batch_size=config.batch_size,
                shuffle_buffer=buffer,
                seed=config.seed,
            )
            rates = drain_rate(ds, config.batch_size, FLAGS.batches, FLAGS.rounds)
            median, lo, hi = common.summarize(rates)
            ratio = (
                f"{median / training[family]:>11.1f}x" if family in training else "n/a"
            )
            print(
                f"{family:7s} {config.batch_size:>5d} {label:>22s} {median:>12,.0f} "
                f"{f'{lo:,.0f}-{hi:,.0f}':>21s} {ratio:>12s}",
                flush=True,
            )
    if training:
        print(
            "training rate = the faster pipeline variant's median from "
            f"{FLAGS.throughput_json}: "
            + ", ".join(f"{k} {v:,.0f}" for k, v in training.items())
        )


if __name__ == "__main__":
    app.run(main)
