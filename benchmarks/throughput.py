"""Steady-state training examples/s: Keras `fit` variants vs this pipeline.

    python -m benchmarks.throughput [--families=logreg,mlp,cnn] [--rounds=N]

For each family (benchmarks/common.py: the flagfiles users run, on full-size
Fashion-MNIST), five variants train the same model with the same batch size,
optimizer and tf.data pipeline:

  fit          model.fit, no callbacks (compiled with loss + accuracy metric)
  fit_spe      fit compiled with steps_per_execution=K (K = --steps_per_loop)
  fit_tb       fit + keras.callbacks.TensorBoard(update_freq=1, histogram_freq=1)
  pipe_off     pipeline.training.loop.train_and_evaluate, logging off
  pipe_default train_and_evaluate with the default logging: scalars every
               step, test eval every 500 steps, histograms every 100 steps

Steady state excludes compile warm-up: a `fit` variant is timed from
`on_epoch_begin` to `on_epoch_end` of a one-epoch call after a warm-up call
(the timer is the last callback, so TensorBoard's epoch-end histograms are
inside); a pipeline variant is timed between its own progress lines at the
first and last chunk boundary of the window (the first chunk, which traces and
compiles, and the final step's end-of-run work are outside). The pipeline runs
the real loop into a temporary run directory: what is measured is what users
get. Variants are interleaved and repeated in one process, so load from other
processes hits them alike; the table shows median, min-max and the ratio of
medians to plain `fit`.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import pathlib
import sys
import tempfile
import threading
import time

from absl import app, flags

from benchmarks import common, flops

FLAGS = flags.FLAGS
flags.DEFINE_list("families", list(common.FAMILIES), "Model families to measure.")
flags.DEFINE_integer("rounds", 0, "Interleaved rounds (0: per-family default).")
flags.DEFINE_integer("steps_per_loop", 100, "K for fit_spe and the pipeline.")
flags.DEFINE_string("json_out", None, "Also write the results as JSON here.")
flags.DEFINE_boolean(
    "compare_xla",
    False,
    "Add pipe_off with --jit_compile flipped from its auto value (XLA check).",
)

# Steady-state window in steps for pipe_default: a multiple of eval_every=500
# keeps exactly one test evaluation per 500 steps inside it. Variants with no
# periodic work (fit, fit_spe, pipe_off) may use a shorter window (the CNN
# needs ~25 s per 500 steps here); fit_tb's epoch, and so its histogram
# write, is then that window. Rounds per family.
WINDOW = {"logreg": 1000, "mlp": 1000, "cnn": 500}
SHORT_WINDOW = {"cnn": 100}
ROUNDS = {"logreg": 8, "mlp": 6, "cnn": 2}
WARMUP_STEPS = 100  # the first chunk: tracing + compilation
# Checkpoints are not logging and fit does not save any: only the final one,
# outside the window, in both pipeline variants.
NO_CHECKPOINTS = "--checkpoint_every=0"
LOGGING_OFF = (
    "--log_every=0",
    "--histogram_every=0",
    "--eval_every=0",
    "--image_count=0",
)


class EpochTimer:
    """Keras callback timing each epoch (add it last)."""

    def __new__(cls):
        import keras

        class _Timer(keras.callbacks.Callback):
            def on_epoch_begin(self, epoch, logs=None):
                self.start = time.perf_counter()

            def on_epoch_end(self, epoch, logs=None):
                self.seconds = time.perf_counter() - self.start

        return _Timer()


class Baton:
    """Lets one variant run at a time, in a fixed rotation, so they interleave.

    Each variant runs in its own thread and holds the baton for one
    measurement window at a time; the pipeline variants keep one training run
    (one compile) across all their windows and wait for their turn inside the
    loop's progress callback, so paused time is never counted.
    """

    def __init__(self, names: list[str]):
        self._active = list(names)
        self._index = 0
        self._cond = threading.Condition()

    def acquire(self, name: str) -> None:
        with self._cond:
            self._cond.wait_for(lambda: self._active[self._index] == name)

    def release(self, name: str, done: bool = False) -> None:
        with self._cond:
            index = self._active.index(name)
            if done:
                self._active.remove(name)
                self._index = index
            else:
                self._index = index + 1
            if self._active:
                self._index %= len(self._active)
            self._cond.notify_all()


def fit_worker(config, dataset, window: int, spe: int = 1, tensorboard_dir=None):
    """A worker that trains `window` steps per turn with Keras fit."""
    import keras

    from pipeline import data as data_lib
    from pipeline import models
    from pipeline.training import steps

    def work(name: str, baton: Baton, rounds: int, rates: list[float]) -> None:
        baton.acquire(name)
        keras.utils.set_random_seed(config.seed)
        model = models.build_model(config)
        model.compile(
            optimizer=steps.make_optimizer(
                config.optimizer, config.learning_rate, config.momentum
            ),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            metrics=["accuracy"],
            steps_per_execution=spe,
        )
        train_ds = data_lib.make_dataset(
            dataset.train,
            batch_size=config.batch_size,
            shuffle_buffer=config.shuffle_buffer,
            seed=config.seed,
        )
        model.fit(train_ds, steps_per_epoch=2 * spe, epochs=1, verbose=0)  # compile
        for round_index in range(rounds):
            if round_index:
                baton.acquire(name)
            callbacks = [EpochTimer()]
            if tensorboard_dir is not None:
                callbacks.insert(
                    0,
                    keras.callbacks.TensorBoard(
                        log_dir=str(tensorboard_dir), update_freq=1, histogram_freq=1
                    ),
                )
            model.fit(
                train_ds,
                steps_per_epoch=window,
                epochs=1,
                verbose=0,
                callbacks=callbacks,
            )
            rates.append(window * config.batch_size / callbacks[-1].seconds)
            report(name, round_index, rates[-1])
            baton.release(name, done=round_index == rounds - 1)

    return work


def window_timer(name, baton, rounds: int, window: int, batch_size: int, rates):
    """An action that times each `window` steps after the warm-up chunk and
    passes the baton between windows (one window per turn)."""
    from pipeline.training.actions import Action

    class WindowTimer(Action):
        window_start = 0.0

        def next_boundary(self, step: int) -> int | None:
            # Chunks end on every window boundary after the warm-up.
            done = max(step - WARMUP_STEPS, -window) // window + 1
            return WARMUP_STEPS + done * window

        def __call__(self, state, chunk) -> None:
            now = time.perf_counter()
            done, rest = divmod(chunk.step - WARMUP_STEPS, window)
            if chunk.step < WARMUP_STEPS or rest or done > rounds:
                return
            if done > 0:
                rates.append(window * batch_size / (now - self.window_start))
                report(name, done - 1, rates[-1])
                if done == rounds:
                    return  # keep the baton through the run's end-of-run work
                baton.release(name)
                baton.acquire(name)
            self.window_start = time.perf_counter()

    return WindowTimer()


def pipeline_worker(config, dataset, window: int, workdir: pathlib.Path, results):
    """A worker running one real training run, one window per turn."""
    from pipeline.runs import rundir
    from pipeline.training import loop as train

    def work(name: str, baton: Baton, rounds: int, rates: list[float]) -> None:
        run_config = dataclasses.replace(
            config,
            steps=WARMUP_STEPS + rounds * window + 1,
            print_every=WARMUP_STEPS,
            logdir=str(workdir),
        )
        baton.acquire(name)
        run_dir = rundir.create_run_dir(workdir, name)
        timer = window_timer(name, baton, rounds, window, config.batch_size, rates)
        try:
            results.append(
                train.train_and_evaluate(
                    run_config,
                    run_dir,
                    dataset,
                    print_fn=lambda _: None,
                    extra_actions=[timer],
                )
            )
        finally:
            baton.release(name, done=True)

    return work


def report(name: str, round_index: int, rate: float) -> None:
    print(f"  round {round_index + 1} {name:18s} {rate:>10,.0f}")


@dataclasses.dataclass
class FamilyResult:
    family: str
    batch_size: int
    window: int
    short_window: int
    rates: dict[str, list[float]]
    train_flops: float
    event_bytes_per_1000: dict[str, float]
    trace_counts: dict[str, int]
    ceiling_gflops: list[float]


def measure_family(family: str, workdir: pathlib.Path) -> FamilyResult:
    """Builds every variant once, then interleaves them for several rounds."""
    from pipeline import data as data_lib
    from pipeline import models
    from pipeline.config import use_jit_compile

    config = common.family_config(
        family, f"--steps_per_loop={FLAGS.steps_per_loop}", NO_CHECKPOINTS
    )
    dataset = data_lib.load_dataset(config.dataset)
    window = WINDOW[family]
    short = SHORT_WINDOW.get(family, window)
    off = common.family_config(
        family, f"--steps_per_loop={FLAGS.steps_per_loop}", NO_CHECKPOINTS, *LOGGING_OFF
    )
    default_runs: list = []
    workers = {
        "fit": fit_worker(config, dataset, short),
        "fit_spe": fit_worker(config, dataset, short, spe=FLAGS.steps_per_loop),
        "fit_tb": fit_worker(config, dataset, short, tensorboard_dir=workdir / "tb"),
        "pipe_off": pipeline_worker(off, dataset, short, workdir / "off", []),
        "pipe_default": pipeline_worker(
            config, dataset, window, workdir / "default", default_runs
        ),
    }
    if FLAGS.compare_xla:
        flipped = "false" if use_jit_compile(off) else "true"
        workers[f"pipe_off_xla_{flipped}"] = pipeline_worker(
            dataclasses.replace(off, jit_compile=flipped),
            dataset,
            short,
            workdir / "xla",
            [],
        )
    rounds = FLAGS.rounds or ROUNDS[family]
    rates: dict[str, list[float]] = {name: [] for name in workers}
    ceiling: list[float] = []
    baton = Baton([*workers, "matmul"])
    errors: list[BaseException] = []

    def matmul_work() -> None:
        # The ceiling is measured in every round too: load moves it as much as
        # it moves the training rates.
        for round_index in range(rounds):
            baton.acquire("matmul")
            sizes = (512, 1024)
            ceiling.append(max(flops.matmul_gflops(2, 0.3, sizes).values()))
            report("matmul GFLOP/s", round_index, ceiling[-1])
            baton.release("matmul", done=round_index == rounds - 1)

    def guarded(name, work) -> None:
        try:
            work()
        except BaseException as err:  # surfaced in the main thread below
            errors.append(err)
            baton.release(name, done=True)

    threads = [
        threading.Thread(
            target=guarded,
            args=(name, functools.partial(work, name, baton, rounds, rates[name])),
        )
        for name, work in workers.items()
    ]
    threads.append(threading.Thread(target=guarded, args=("matmul", matmul_work)))
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]
    last = default_runs[-1]
    steps_run = WARMUP_STEPS + rounds * window + 1
    one_time = {"graph_run_metadata_graph", "graph_keras_model", "text", "images"}
    per_1000 = {
        plugin: size * 1000 / steps_run
        for plugin, size in last.event_bytes.items()
        if plugin not in one_time
    }
    per_1000["one-time (graph, model, text, images)"] = sum(
        size for plugin, size in last.event_bytes.items() if plugin in one_time
    )
    _, train_flops = common.train_flops_per_example(models.build_model(config))
    return FamilyResult(
        family,
        config.batch_size,
        window,
        short,
        rates,
        train_flops,
        per_1000,
        last.trace_counts,
        ceiling,
    )


def print_table(results: list[FamilyResult]) -> None:
    print()
    print(
        "% ceiling: training FLOP/s (3x forward, from layer shapes) over the best "
        "float32 tf.matmul GFLOP/s, median of the same rounds"
    )
    header = (
        f"{'family':7s} {'variant':14s} {'median ex/s':>12s} {'min-max':>21s} "
        f"{'vs fit':>7s} {'% ceiling':>9s}"
    )
    print(header)
    print("-" * len(header))
    for res in results:
        fit_median = common.summarize(res.rates["fit"])[0]
        ceiling_gflops = common.summarize(res.ceiling_gflops)[0]
        for name, values in res.rates.items():
            median, lo, hi = common.summarize(values)
            share = median * res.train_flops / (ceiling_gflops * 1e9) * 100
            print(
                f"{res.family:7s} {name:14s} {median:>12,.0f} "
                f"{f'{lo:,.0f}-{hi:,.0f}':>21s} {median / fit_median:>6.2f}x "
                f"{share:>8.1f}%"
            )
        off = common.summarize(res.rates["pipe_off"])[0]
        default = common.summarize(res.rates["pipe_default"])[0]
        cost = (1 - default / off) * 100
        print(
            f"{res.family:7s} default logging cost vs off: {cost:+.1f}%"
            f"   (batch {res.batch_size}, windows {res.short_window}/{res.window} "
            "steps, "
            f"{len(res.rates['fit'])} rounds)"
        )
        print(
            f"{res.family:7s} event bytes per 1,000 steps at default logging: "
            + ", ".join(
                f"{k} {v / 1000:,.1f} kB"
                for k, v in res.event_bytes_per_1000.items()
                if not k.startswith("one-time")
            )
        )
        print(
            f"{res.family:7s} matmul ceiling {ceiling_gflops:.0f} GFLOP/s "
            f"(min-max {min(res.ceiling_gflops):.0f}-{max(res.ceiling_gflops):.0f}); "
            f"training {res.train_flops / 1e6:.2f} MFLOP/example"
        )
        print(f"{res.family:7s} trace counts: {res.trace_counts}")
        print()


def main(argv: list[str]) -> None:
    del argv
    sys.stdout.reconfigure(line_buffering=True)
    from pipeline.training import loop as train

    # The pipeline enables op determinism (its default --deterministic) and the
    # switch is process-wide: turn it on first so every variant runs under it.
    train.seed_everything(0, deterministic=True)
    results = []
    with tempfile.TemporaryDirectory(prefix="throughput-") as tmp:
        for family in FLAGS.families:
            print(f"{family}: measuring", flush=True)
            results.append(measure_family(family, pathlib.Path(tmp) / family))
    print_table(results)
    if FLAGS.json_out:
        path = pathlib.Path(FLAGS.json_out)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(
            json.dumps(
                {
                    "families": [dataclasses.asdict(r) for r in results],
                },
                indent=2,
            )
        )


if __name__ == "__main__":
    app.run(main)
