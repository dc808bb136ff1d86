"""FLOPs per example of each family, and this machine's measured matmul ceilings.

    python -m benchmarks.flops

The ceiling is the best `tf.matmul` rate over a few square sizes, in float32
and in bfloat16
(compiled loop, several trials, the maximum kept: on a shared machine the
maximum is the least disturbed figure). `throughput.py` divides each
variant's FLOP rate by it.

The ceiling is checked three ways, so a wrong one shows: its FLOP count
(2*M*N*K a product) against TensorFlow's profiler's float-op count of the
same op; its timing against the CPU seconds the process spent (the cores
TensorFlow really kept busy); and its rate against the documented peak of
the CPU the machine reports (`cpu_peak`: cores x FLOP per cycle per core x
clock). These sessions run on different cloud CPUs: a figure is only
comparable with the peak of the CPU it was measured on.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import time

from absl import app

from benchmarks import common

MATMUL_SIZES = (512, 1024, 2048)
# /proc/cpuinfo's clock is the nominal one in a VM; turbo runs up to ~1.5x it.
TURBO_ALLOWANCE = 1.6
REPORTED_CLOCK = "/proc/cpuinfo's clock"
# Documented maximum boost clocks (GHz) by (vendor, family, model), for VMs
# whose /proc/cpuinfo gives only the nominal clock and whose model name hides
# the part: a peak at the nominal clock is one the CPU exceeds whenever it
# boosts (this 2-core Zen 4 VM: matmuls at 118% of it).
MAX_BOOST_GHZ = {
    # AMD EPYC 9004 "Genoa" (Zen 4): "max. boost clock up to 3.7 GHz" for the
    # many-core parts cloud VMs run on (9654, 9634, 9554).
    ("AuthenticAMD", 25, 17): 3.7,
}


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


@dataclasses.dataclass(frozen=True)
class CpuPeak:
    """The documented peak of the CPU this process runs on."""

    description: str  # vendor, family/model, the flags that decide the peak
    cores: int  # CPUs this process may run on
    # The highest clock known for this CPU: cpufreq's maximum, else its
    # documented max boost (`MAX_BOOST_GHZ`), else /proc/cpuinfo's (nominal
    # in a VM; turbo may be higher). `clock` says which.
    ghz: float
    flop_per_cycle: dict[str, int]  # per core, by dtype
    clock: str

    def gflops(self, dtype: str) -> float:
        return self.cores * self.flop_per_cycle[dtype] * self.ghz

    @property
    def clock_allowance(self) -> float:
        """How far a measured rate may exceed the peak at `ghz`: turbo's
        headroom over a nominal clock, a margin of error over a maximum one."""
        return TURBO_ALLOWANCE if self.clock == REPORTED_CLOCK else 1.05


def cpu_peak(cpuinfo: str | None = None) -> CpuPeak:
    """Cores x FLOP/cycle/core x GHz from /proc/cpuinfo, by the vendors' figures.

    float32 FLOP/cycle/core: two FMA units of the widest vector width, x2 for
    multiply+add. AMD Zen 4 (family 25 with AVX-512) runs 512-bit FMAs on two
    256-bit pipes: 32; Zen 5 (family 26): 64; Intel Xeon with AVX-512 (two
    512-bit FMA units): 64; AVX2 + FMA: 32. bfloat16: AMX tiles 1024 per
    core (Intel), AVX512_BF16's dot products twice float32, otherwise
    float32's (bfloat16 is computed in float32).
    """
    text = cpuinfo if cpuinfo is not None else pathlib.Path("/proc/cpuinfo").read_text()
    fields: dict[str, str] = {}
    for line in text.splitlines():
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    flags = set(fields.get("flags", "").split())
    vendor, family = fields.get("vendor_id", "?"), int(fields.get("cpu family", 0))
    if vendor == "AuthenticAMD":
        fp32 = 64 if family >= 26 and "avx512f" in flags else 32
    elif "avx512f" in flags:
        fp32 = 64
    else:
        fp32 = 32 if "fma" in flags else 16
    if "amx_bf16" in flags:
        bf16 = 1024
    elif "avx512_bf16" in flags:
        bf16 = 2 * fp32
    else:
        bf16 = fp32
    shown = [f for f in ("avx512f", "avx512_bf16", "amx_bf16") if f in flags]
    reported = float(fields.get("cpu MHz", 0.0)) / 1000
    ghz, clock = reported, REPORTED_CLOCK
    boost = MAX_BOOST_GHZ.get((vendor, family, int(fields.get("model", -1))))
    cpufreq = pathlib.Path("/sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq")
    if cpuinfo is None and cpufreq.is_file():
        ghz, clock = int(cpufreq.read_text()) / 1e6, "cpufreq's maximum clock"
    elif boost:
        ghz = boost
        clock = f"its documented max boost clock (/proc/cpuinfo: {reported:.2f} GHz)"
    return CpuPeak(
        description=f"{vendor} family {family} model {fields.get('model', '?')} "
        f"({fields.get('model name', '?')}; {', '.join(shown) or 'no AVX-512'})",
        cores=len(os.sched_getaffinity(0)),
        ghz=ghz,
        flop_per_cycle={"float32": fp32, "bfloat16": bf16},
        clock=clock,
    )


def profiler_matmul_flops(size: int) -> int:
    """TensorFlow's profiler's float-op count of one [size, size] product."""
    import tensorflow as tf

    graph = tf.Graph()
    with graph.as_default():
        a = tf.compat.v1.placeholder(tf.float32, [size, size])
        tf.matmul(a, a)
        options = tf.compat.v1.profiler.ProfileOptionBuilder.float_operation()
        options["output"] = "none"
        return tf.compat.v1.profiler.profile(graph, options=options).total_float_ops


def matmul_cores_busy(size: int = 1024, seconds: float = 0.5) -> tuple[float, float]:
    """(GFLOP/s, cores busy) of float32 `tf.matmul` over `seconds`: the
    process's CPU seconds over the wall seconds, an independent check that
    the timing saw no more than the cores there are."""
    wall, cpu = time.perf_counter(), time.process_time()
    rate = matmul_gflops(1, seconds, (size,))[size]
    return rate, (time.process_time() - cpu) / (time.perf_counter() - wall)


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
    for size in MATMUL_SIZES:
        counted = profiler_matmul_flops(size)
        print(
            f"FLOP count of a {size}x{size} product: 2*M*N*K = {2 * size**3:,}, "
            f"tf.profiler {counted:,}" + ("" if counted == 2 * size**3 else " DIFFER")
        )
    peak = cpu_peak()
    print(
        f"CPU: {peak.description}, {peak.cores} cores at {peak.ghz:.2f} GHz "
        f"({peak.clock})"
    )
    rate, busy = matmul_cores_busy()
    per_cycle = rate / max(busy, 1e-9) / peak.ghz
    print(
        f"tf.matmul 1024x1024 float32: {rate:.1f} GFLOP/s with {busy:.2f} cores busy "
        f"(CPU seconds / wall seconds) = {per_cycle:.0f} FLOP/cycle per busy core "
        f"at {peak.ghz:.2f} GHz, documented {peak.flop_per_cycle['float32']}"
        + (
            ""
            if busy <= peak.cores * 1.05
            and per_cycle <= peak.clock_allowance * peak.flop_per_cycle["float32"]
            else ": ABOVE what this CPU can do - the timing or the count is wrong"
        )
    )
    for dtype in ("float32", "bfloat16"):
        rates = matmul_gflops(dtype=dtype)
        for size, rate in rates.items():
            print(f"tf.matmul {size}x{size} {dtype}: {rate:6.1f} GFLOP/s")
        ceiling = max(rates.values())
        documented = peak.gflops(dtype)
        print(
            f"{dtype} ceiling {ceiling:.1f} GFLOP/s = {ceiling / documented:.0%} of "
            f"the documented peak {documented:.0f} GFLOP/s ({peak.cores} cores x "
            f"{peak.flop_per_cycle[dtype]} FLOP/cycle x {peak.ghz:.2f} GHz) -> CNN "
            f"at most {ceiling * 1e9 / cnn_train:,.0f} training examples/s"
        )


if __name__ == "__main__":
    app.run(main)
