"""Memory over a long run, event files vs budget (start-up: benchmarks/startup.py).

    python -m benchmarks.footprint [--long_steps=10000] [--budget_mb=6]

Runs the real `pipeline-train` console script in subprocesses on full-size
Fashion-MNIST:

* one long MLP run at default logging with `--summary_budget_mb`: resident
  memory sampled from /proc every 0.25 s and mapped to steps by the progress
  lines; growth per 1,000 steps is the least-squares slope over the second
  half (flat = no per-step leak). The run's event bytes are checked against
  the budget and its histogram steps read back with TensorBoard's loader.
"""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys
import tempfile
import threading
import time

from absl import app, flags

from benchmarks import common
from pipeline import processes

FLAGS = flags.FLAGS
flags.DEFINE_integer("long_steps", 10_000, "Steps of the long MLP run.")
flags.DEFINE_float("budget_mb", 6.0, "--summary_budget_mb of the long run.")

TRAIN = pathlib.Path(sys.executable).parent / "pipeline-train"


def rss_mb(pid: int) -> float | None:
    """Current resident memory of `pid` in MB (MiB, as before; None once it
    has exited)."""
    resident = processes.resident_bytes(pid)
    return None if resident is None else resident / 2**20


def run_train(args: list[str], sample_every: float | None = None) -> dict:
    """Runs pipeline-train; returns step times, RSS samples, peak RSS, output."""
    env = dict(os.environ, PYTHONUNBUFFERED="1", TF_CPP_MIN_LOG_LEVEL="2")
    start = time.perf_counter()
    proc = subprocess.Popen(
        [str(TRAIN), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    samples: list[tuple[float, float]] = []
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            value = rss_mb(proc.pid)
            if value is not None:
                samples.append((time.perf_counter() - start, value))
            done.wait(sample_every)

    sampler = threading.Thread(target=sample, daemon=True)
    if sample_every:
        sampler.start()
    step_times: dict[int, float] = {}
    lines = []
    assert proc.stdout is not None
    for line in proc.stdout:
        lines.append(line.rstrip())
        if line.startswith("step "):
            step_times[int(line.split()[1].split("/")[0])] = time.perf_counter() - start
    _, status, usage = os.wait4(proc.pid, 0)
    done.set()
    if sample_every:
        sampler.join()
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError("pipeline-train failed:\n" + "\n".join(lines[-20:]))
    return {
        "wall": time.perf_counter() - start,
        "step_times": step_times,
        "samples": samples,
        "peak_rss_mb": usage.ru_maxrss / 1024,
        "lines": lines,
    }


def slope(points: list[tuple[float, float]]) -> float:
    """Least-squares slope of y over x."""
    n = len(points)
    mean_x = sum(x for x, _ in points) / n
    mean_y = sum(y for _, y in points) / n
    var = sum((x - mean_x) ** 2 for x, _ in points)
    return sum((x - mean_x) * (y - mean_y) for x, y in points) / var if var else 0.0


def main(argv: list[str]) -> None:
    del argv
    from tensorboard.backend.event_processing import (
        plugin_event_accumulator as pea,
    )

    from pipeline.tensorboard import budget

    with tempfile.TemporaryDirectory(prefix="footprint-") as tmp:
        steps = FLAGS.long_steps
        flagfile = common.ROOT / "flags" / common.FAMILIES["mlp"]
        out = run_train(
            [
                f"--flagfile={flagfile}",
                "--dataset=fashion_mnist",
                f"--shuffle_buffer={common.FASHION_TRAIN_SIZE}",
                f"--steps={steps}",
                "--print_every=1000",
                f"--summary_budget_mb={FLAGS.budget_mb}",
                f"--logdir={tmp}",
                "--run_name=long-mlp",
            ],
            sample_every=0.25,
        )
        # Map each RSS sample to the step reached by then (progress lines).
        marks = sorted((t, s) for s, t in out["step_times"].items())
        by_step = []
        for t, rss in out["samples"]:
            done = [s for mt, s in marks if mt <= t]
            if done:
                by_step.append((done[-1], rss))
        second_half = [(s, r) for s, r in by_step if steps // 2 <= s < steps]
        print(
            f"\nlong run: MLP, {steps:,} steps, default logging, budget "
            f"{FLAGS.budget_mb} MB"
        )
        for target in (1000, steps // 4, steps // 2, 3 * steps // 4, steps - 1000):
            at = [r for s, r in by_step if s == target]
            if at:
                print(f"  RSS at step {target:>6,}: {max(at):,.0f} MB")
        print(
            f"  RSS growth over the second half: "
            f"{slope(second_half) * 1000:+.2f} MB per 1,000 steps "
            f"({len(second_half)} samples); peak {out['peak_rss_mb']:,.0f} MB"
        )
        run_dir = pathlib.Path(tmp) / "long-mlp"
        plugin_bytes = budget.bytes_per_plugin(run_dir)
        total = sum(plugin_bytes.values())
        print(
            f"  event files {budget.format_bytes(total)} of a "
            f"{FLAGS.budget_mb} MB budget: "
            + ", ".join(
                f"{k} {budget.format_bytes(v)}" for k, v in plugin_bytes.items()
            )
        )
        acc = pea.EventAccumulator(
            str(run_dir / "train"), size_guidance={pea.TENSORS: 0}
        )
        acc.Reload()
        kernel = next(t for t in acc.Tags()["tensors"] if t.endswith("logits/kernel"))
        hist_steps = [e.step for e in acc.Tensors(kernel)]
        gaps = sorted({b - a for a, b in zip(hist_steps, hist_steps[1:], strict=False)})
        print(
            f"  histograms of {kernel}: {len(hist_steps)} steps, first "
            f"{hist_steps[0]}, last {hist_steps[-1]}; gaps {gaps}"
        )
        loss_steps = len(acc.Tensors("loss"))
        print(f"  train loss scalars: {loss_steps:,} (one per step)")
        print(
            "  " + next(line for line in out["lines"] if line.startswith("event files"))
        )


if __name__ == "__main__":
    app.run(main)
