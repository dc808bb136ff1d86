"""FLOPs per example of each family, and this machine's measured matmul ceilings.

    python -m benchmarks.flops

The ceiling is the best `tf.matmul` rate over a few square sizes, in float32
and in bfloat16
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
    trials: int = 3,
    seconds: float = 0.5,
    sizes: tuple[int, ...] = MATMUL_SIZES,
    dtype: str = "float32",
) -> dict[int, float]:
    """Best GFLOP/s of `tf.matmul` in `dtype` (float32, bfloat16) per square size.

    The bfloat16 ceiling is what mixed_bfloat16 layers can reach: oneDNN runs
    bfloat16 matmuls on AVX512_BF16/AMX where the CPU has them.
    """
    import tensorflow as tf

    @tf.function
    def repeat_matmul(x, b, n):
        # Each product feeds the next, so no optimiser can hoist the matmul
        # out of the loop; b's entries average 1/size, so x stays bounded.
        for _ in tf.range(n):
            x = tf.matmul(x, b)
        return x[0, 0]

    best = {}
    for size in sizes:
        a = tf.cast(tf.random.uniform([size, size]), dtype)
        b = tf.cast(tf.random.uniform([size, size], maxval=2.0 / size), dtype)
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
    _, cnn_train = family_flops()["cnn"]
    for dtype in ("float32", "bfloat16"):
        rates = matmul_gflops(dtype=dtype)
        for size, rate in rates.items():
            print(f"tf.matmul {size}x{size} {dtype}: {rate:6.1f} GFLOP/s")
        ceiling = max(rates.values())
        print(
            f"{dtype} ceiling {ceiling:.1f} GFLOP/s -> CNN at most "
            f"{ceiling * 1e9 / cnn_train:,.0f} training examples/s"
        )


if __name__ == "__main__":
    app.run(main)
