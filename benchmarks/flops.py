"""FLOPs per example of each family, and this machine's measured matmul ceiling.

    python -m benchmarks.flops

The ceiling is the best `tf.matmul` rate over a few square float32 sizes
(compiled loop, several trials, the maximum kept: on a shared machine the
maximum is the least disturbed figure). `throughput.py` divides each
variant's FLOP rate by it.
"""

from __future__ import annotations

import time

from absl import app

from benchmarks import common

MATMUL_SIZES = (512, 1024, 2048)


def matmul_gflops(
    trials: int = 3, seconds: float = 0.5, sizes: tuple[int, ...] = MATMUL_SIZES
) -> dict[int, float]:
    """Best GFLOP/s of float32 `tf.matmul` per square size."""
    import tensorflow as tf

    @tf.function
    def repeat_matmul(a, b, n):
        acc = tf.zeros_like(a)
        for _ in tf.range(n):
            acc += tf.matmul(a, b)
        return acc[0, 0]

    best = {}
    for size in sizes:
        a = tf.random.uniform([size, size])
        b = tf.random.uniform([size, size])
        flops_per = 2.0 * size**3
        repeat_matmul(a, b, tf.constant(1)).numpy()
        t0 = time.perf_counter()
        repeat_matmul(a, b, tf.constant(2)).numpy()
        per_call = (time.perf_counter() - t0) / 2
        n = max(1, int(seconds / max(per_call, 1e-6)))
        rates = []
        for _ in range(trials):
            t0 = time.perf_counter()
            repeat_matmul(a, b, tf.constant(n)).numpy()
            rates.append(n * flops_per / (time.perf_counter() - t0) / 1e9)
        best[size] = max(rates)
    return best


def family_flops() -> dict[str, tuple[float, float]]:
    """(forward, training) FLOPs per example for each family's model."""
    from pipeline import models

    return {
        family: common.train_flops_per_example(
            models.build_model(common.family_config(family))
        )
        for family in common.FAMILIES
    }


def main(argv: list[str]) -> None:
    del argv
    for family, (forward, train) in family_flops().items():
        print(
            f"{family:7s} forward {forward / 1e6:8.2f} MFLOP/example   "
            f"training ~{train / 1e6:8.2f} MFLOP/example"
        )
    rates = matmul_gflops()
    for size, rate in rates.items():
        print(f"tf.matmul {size}x{size} float32: {rate:6.1f} GFLOP/s")
    ceiling = max(rates.values())
    _, cnn_train = family_flops()["cnn"]
    print(
        f"ceiling {ceiling:.1f} GFLOP/s -> CNN at most "
        f"{ceiling * 1e9 / cnn_train:,.0f} training examples/s"
    )


if __name__ == "__main__":
    app.run(main)
