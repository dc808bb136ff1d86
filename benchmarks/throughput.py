"""Steady-state training examples/s: the pipeline against Keras `fit`, paired.

    python -m benchmarks.throughput [--families=logreg,mlp,cnn] [--rounds=N]
        [--variants=pipe_off,pipe_default,pipe_switched,pipe_bf16]
        (also: fit_bf16, fit_tb, pipe_scalars, pipe_histograms, pipe_off_twin,
        pipe_flush_every_line)

For each family (benchmarks/common.py: the flagfiles users run, on full-size
Fashion-MNIST) the variants train the same model with the same batch size,
optimizer and tf.data pipeline:

  fit           model.fit, no callbacks, float32: the reference every ratio uses
  fit_bf16      fit of the same model under Keras' mixed_bfloat16 policy
  fit_tb        fit + keras.callbacks.TensorBoard(update_freq=1, histogram_freq=1)
  pipe_off      pipeline.training.loop.train_and_evaluate, logging off
  pipe_default  the real loop at the default logging (scalars every step, weight
                and gradient histograms every 500 steps, graph, images, progress
                lines and their flushes) with periodic evaluation off
  pipe_bf16     pipe_default with --precision=mixed_bfloat16
  pipe_scalars, pipe_histograms
                pipe_default with only that kind of logging (not run by
                default: they take the logging cost apart)
  pipe_off_twin a second pipe_off run (not run by default): how far two
                identical runs in one process differ, the control for a
                logging cost
  pipe_flush_every_line
                pipe_default with --flush_secs=0 (not run by default): per-step
                scalars handed to the writer, and flushed, with every progress
                line instead of at most once a second
  pipe_switched one run at the default logging whose logging actions
                (`WriteTrainScalars`, `WriteHistograms`) are switched off for
                every other window: each turn times pairs of windows back to
                back, logging on and off (on-off, off-on, ...; `SWITCHED_WINDOW`).
                The same process, run, compiled calls and memory on both
                sides, so a pair differs only in the logging work; two
                separate runs (pipe_off_twin against pipe_off) differ by up to
                5% in their medians with no logging at all. Its logging cost is
                per pair: median, min-max, mean and the mean's standard error

Windows are equal: every variant of a family is timed over the same number of
steps. A round runs the matmul ceilings, one `fit` window, then one window of
every other variant (their order rotates each round), and the next round starts
with the next `fit` window, so each variant window sits between two `fit`
windows. Its ratio is its rate over the geometric mean of those two: load that
drifts over minutes cancels in each ratio. The table shows the median and the
min-max of those per-round ratios, and says when the min-max straddles 1.0 (the
run cannot tell which side of `fit` the variant is on).

Evaluation is work the user asked for, not logging: it is off inside the
windows (fit evaluates nothing either) and timed on its own (the compiled
10,000-image evaluation the loop runs every --eval_every steps), then shown as
a share of --eval_every training steps.

`fit` is timed from `on_epoch_begin` to `on_epoch_end` of a one-epoch call of
the window's length after a compiling warm-up call; a pipeline variant is one
real training run into a temporary run directory, timed by an extra action
(after the standard ones: logging, progress) that waits for its turn between
windows, after the first 600 steps (`WARMUP_STEPS`: tracing, compiling, the
writer thread's one-off tracing of the step-0 histograms, the first histogram
chunk). A window ends once the background summary writer has written
everything handed to it (its queue drained and the files flushed), so no
write spills into the next window.
Everything runs in one process under TensorFlow op determinism (the pipeline's
default --deterministic; the switch is process-wide).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import pathlib
import statistics
import sys
import tempfile
import threading
import time

from absl import app, flags

from benchmarks import common, flops

FLAGS = flags.FLAGS
flags.DEFINE_list("families", list(common.FAMILIES), "Model families to measure.")
flags.DEFINE_list(
    "variants",
    ["pipe_off", "pipe_default", "pipe_switched", "pipe_bf16"],
    "Variants besides fit: pipe_off, pipe_default, pipe_switched, pipe_bf16, "
    "fit_bf16, fit_tb.",
)
flags.DEFINE_integer("rounds", 0, "Paired rounds (0: per-family default).")
flags.DEFINE_string("json_out", None, "Also write the results as JSON here.")

# Equal windows per family, a multiple of the default --histogram_every (500)
# and --print_every (100), so each window holds the same periodic work.
WINDOW = {"logreg": 10000, "mlp": 5000, "cnn": 500}
ROUNDS = {"logreg": 7, "mlp": 7, "cnn": 5}
# Before the first window: the first chunks' tracing and compilation, the
# writer thread's one-off tracing of the step-0 histogram writer, and the
# first histogram chunk (step 500 at the default --histogram_every), whose
# loop traces and compiles at its first call: inside the first window, it
# gave round 1 a logging cost of 22% (logreg) and 27% (MLP), where the
# medians were 2.9% and 8.0% (make bench at 694577d).
# One-off start-up costs are benchmarks.startup's; the windows measure steady
# state.
WARMUP_STEPS = 600
PRINT_EVERY = 100  # the default progress interval (a flush at most every --flush_secs)
EVAL_EVERY = 500  # the default --eval_every, for the evaluation share
BF16 = "mixed_bfloat16"
# Checkpoints are not logging and fit saves none: only the final one, after
# the last window. Evaluation is timed separately (see the module docstring).
NOT_IN_WINDOWS = ("--checkpoint_every=0", "--eval_every=0")
LOGGING_OFF = ("--log_every=0", "--histogram_every=0", "--image_count=0")
PIPELINE_VARIANTS = {
    "pipe_off": (LOGGING_OFF, "float32"),
    "pipe_default": ((), "float32"),
    "pipe_bf16": ((), BF16),
    # The logging cost taken apart (not run by default): one kind at a time.
    "pipe_scalars": (("--histogram_every=0", "--image_count=0"), "float32"),
    "pipe_histograms": (("--log_every=0", "--image_count=0"), "float32"),
    # A control (not run by default): a second, identical pipe_off run.
    "pipe_off_twin": (LOGGING_OFF, "float32"),
    # The default logging flushed with every progress line (not run by
    # default): what holding per-step scalars for --flush_secs saves.
    "pipe_flush_every_line": (("--flush_secs=0",), "float32"),
    # The default logging switched on and off between windows of one run.
    "pipe_switched": ((), "float32"),
}
SWITCHED = "pipe_switched"
# pipe_switched's windows with its logging switched off, one per round.
SWITCHED_OFF = "pipe_switched (off)"
# pipe_switched's (window steps, pairs per turn); other families: one pair
# of the family's window. A window holds whole --histogram_every intervals
# (500) and lasts about a second: this VM slows by 30-80% in bursts of
# 0.2-0.5 s with or without logging, and a window much shorter than a burst
# is either hit whole or missed (pairs of 1000-step logreg windows, 0.3 s,
# differed by -23..+28% with only the scalars switched). Logreg's 3,000
# steps are also 5 whole epochs of Fashion-MNIST at batch 100.
SWITCHED_WINDOW = {"logreg": (3000, 4), "mlp": (2500, 4)}
LOGGING_KINDS = (
    "pipe_default",
    "pipe_scalars",
    "pipe_histograms",
    "pipe_flush_every_line",
)
# Per pipeline variant: the summary writer thread's CPU seconds in each
# window, as % of the window's wall time (what logging takes from training
# on a machine with few cores).
WRITER_SHARES: dict[str, list[float]] = {}
# Per pipeline variant: the process's CPU seconds per 1,000 examples in each
# window (every thread: training, the writer, the loop). Load on other cores
# stretches wall time far more than CPU time, so logging's CPU cost is the
# steadier figure on a shared machine.
CPU_PER_1000: dict[str, list[float]] = {}
# pipe_switched's switch (its off rates, per-pair costs), by variant name.
SWITCHES: dict[str, LoggingSwitch] = {}


class Schedule:
    """Grants turns in a fixed order, so exactly one variant runs at a time.

    Each variant runs in its own thread and holds one turn per window; a
    pipeline variant keeps one training run (one compile) across all its turns
    and waits inside the loop's progress callback, so waiting is never timed.
    """

    def __init__(self, order: list[str]):
        self._order = order
        self._position = 0
        self._aborted = False
        self._cond = threading.Condition()

    def acquire(self, name: str) -> None:
        with self._cond:
            self._cond.wait_for(
                lambda: self._aborted or self._order[self._position] == name
            )
            if self._aborted:
                raise RuntimeError("schedule aborted")

    def release(self, name: str) -> None:
        with self._cond:
            assert self._order[self._position] == name, (name, self._position)
            self._position += 1
            self._cond.notify_all()

    def abort(self) -> None:
        with self._cond:
            self._aborted = True
            self._cond.notify_all()


def schedule_order(variants: list[str], rounds: int) -> list[str]:
    """Warm-ups, then per round: ceilings, fit, the variants (rotated); a last fit."""
    order = ["matmul", "fit", *variants]  # warm-up turns (compile, first chunk)
    for r in range(rounds):
        shift = r % len(variants)
        order += ["matmul", "fit", *variants[shift:], *variants[:shift]]
    return [*order, "fit"]


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


def fit_worker(config, dataset, window: int, windows: int, tensorboard_dir=None):
    """Trains `window` steps per turn with Keras fit, `windows` turns."""
    import keras

    from pipeline import data as data_lib
    from pipeline import models
    from pipeline.training import steps

    def work(name: str, schedule: Schedule, rates: list[float]) -> None:
        schedule.acquire(name)
        keras.utils.set_random_seed(config.seed)
        model = models.build_model(config)
        model.compile(
            optimizer=steps.make_optimizer(
                config.optimizer, config.learning_rate, config.momentum
            ),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            metrics=["accuracy"],
        )
        train_ds = data_lib.make_dataset(
            dataset.train,
            batch_size=config.batch_size,
            shuffle_buffer=config.shuffle_buffer,
            seed=config.seed,
        )
        model.fit(train_ds, steps_per_epoch=2, epochs=1, verbose=0)  # compile
        schedule.release(name)
        for index in range(windows):
            schedule.acquire(name)
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
            report(name, index, rates[-1])
            schedule.release(name)

    return work


def window_end(step: int, window: int) -> int:
    """The first window end after `step`: the warm-up's end, then every
    `window` steps after it."""
    done = max(step - WARMUP_STEPS, -window) // window + 1
    return WARMUP_STEPS + done * window


def window_timer(
    name: str, schedule: Schedule, window: int, windows: int, batch, rates
):
    """An action timing each `window` steps after the warm-up steps; it hands
    the turn on between windows (the run waits inside it, untimed)."""
    from pipeline.training.actions import Action

    class WindowTimer(Action):
        window_start = 0.0
        cpu_start = 0.0
        busy_start = 0.0

        def next_boundary(self, step: int) -> int | None:
            return window_end(step, window)

        def __call__(self, state, chunk) -> None:
            done, rest = divmod(chunk.step - WARMUP_STEPS, window)
            if chunk.step < WARMUP_STEPS or rest or done > windows:
                return
            # The window ends when its summaries are written: the background
            # writer's queue is drained inside it, not during the next
            # variant's window.
            state.logger.flush()
            now = time.perf_counter()
            cpu = time.process_time()
            busy = state.logger.writer_busy_seconds
            if done > 0:
                rates.append(window * batch / (now - self.window_start))
                share = (busy - self.busy_start) / (now - self.window_start)
                WRITER_SHARES.setdefault(name, []).append(share * 100)
                CPU_PER_1000.setdefault(name, []).append(
                    (cpu - self.cpu_start) * 1000 / (window * batch)
                )
                report(name, done - 1, rates[-1], share)
                if done == windows:
                    return  # keep the turn through the run's end-of-run work
            schedule.release(name)  # the warm-up turn, or the window just timed
            schedule.acquire(name)
            self.window_start = time.perf_counter()
            self.cpu_start = time.process_time()
            self.busy_start = state.logger.writer_busy_seconds

    return WindowTimer()


def switched_timer(
    name: str,
    schedule: Schedule,
    window: int,
    pairs: int,
    rounds: int,
    batch: int,
    rates: list[float],
    switch: LoggingSwitch,
):
    """pipe_switched's timer: a turn is `pairs` pairs of `window`-step
    windows, logging on in one and off in the other (on first in even pairs,
    off first in odd ones: on-off, off-on, ...). Each pair's two windows run
    back to back, so the load around them is as alike as it gets; windows
    last about a second (`SWITCHED_WINDOW` says why not shorter). The
    turn's on and off rates go to `rates` and `switch.rates_off` (one each
    per round, for the table); each pair's cost to `switch`.
    """
    from pipeline.training.actions import Action

    per_turn = 2 * pairs

    class SwitchedTimer(Action):
        def __init__(self) -> None:
            # perf_counter, process_time, writer thread's and logging
            # actions' CPU seconds
            self.began = (0.0, 0.0, 0.0, 0.0)
            self.turn = {True: [0.0, 0], False: [0.0, 0]}  # seconds, windows
            # seconds, CPU, and the seconds the window's closing flush waited
            self.pair: dict[bool, tuple[float, float, float]] = {}

        def next_boundary(self, step: int) -> int | None:
            return window_end(step, window)

        def __call__(self, state, chunk) -> None:
            done, rest = divmod(chunk.step - WARMUP_STEPS, window)
            if chunk.step < WARMUP_STEPS or rest or done > rounds * per_turn:
                return
            flushing = time.perf_counter()
            state.logger.flush()  # the window's summaries are written in it
            now, cpu = time.perf_counter(), time.process_time()
            if done > 0:
                seconds = now - self.began[0]
                self.pair[switch.on] = (seconds, cpu - self.began[1], now - flushing)
                if switch.on:  # logging's own work, as a share of the window
                    writer = state.logger.writer_busy_seconds - self.began[2]
                    acting = switch.action_seconds - self.began[3]
                    switch.own_work.append((writer / seconds, acting / seconds))
                self.turn[switch.on][0] += seconds
                self.turn[switch.on][1] += 1
                if len(self.pair) == 2:
                    (on, on_cpu, on_wait), (off, off_cpu, off_wait) = (
                        self.pair[True],
                        self.pair[False],
                    )
                    switch.costs.append(1 - off / on)
                    switch.costs_without_closing_wait.append(
                        1 - (off - off_wait) / (on - on_wait)
                    )
                    switch.cpu_costs.append(on_cpu / off_cpu - 1)
                    self.pair = {}
                if done % per_turn == 0:
                    examples = window * batch
                    for on, (total, count) in self.turn.items():
                        rate = examples * count / total
                        (rates if on else switch.rates_off).append(rate)
                        report(name if on else SWITCHED_OFF, done // per_turn - 1, rate)
                    self.turn = {True: [0.0, 0], False: [0.0, 0]}
                    if done == rounds * per_turn:
                        return  # keep the turn through the run's end-of-run work
            if done % per_turn == 0:
                schedule.release(name)  # the warm-up turn, or the turn just timed
                schedule.acquire(name)
            pair, second = divmod(done, 2)
            switch.on = (second == 0) == (pair % 2 == 0)
            self.began = (
                time.perf_counter(),
                time.process_time(),
                state.logger.writer_busy_seconds,
                switch.action_seconds,
            )

    return SwitchedTimer()


class LoggingSwitch:
    """Switches a run's logging actions on and off between windows.

    `install(loop)` has the next run wrap its actions so that
    `WriteTrainScalars` and `WriteHistograms` act only while `on`: off, they
    ask the chunk for nothing (no histogram chunk) and write nothing, and
    they keep their chunk boundaries, so both sides run the same compiled
    calls. Everything else (progress lines and their flushes, checkpoints,
    the timer) runs either way, as in pipe_off.
    """

    def __init__(self, window: int) -> None:
        self.window = window  # steps in each of its windows
        self.on = True  # the warm-up logs, as pipe_default's does
        self.rates_off: list[float] = []
        # Per pair of windows: 1 - rate on / rate off, and CPU s per example
        # on / off - 1.
        self.costs: list[float] = []
        # The same, each window's closing flush left out: a lower bound (see
        # `print_family`).
        self.costs_without_closing_wait: list[float] = []
        self.cpu_costs: list[float] = []
        # CPU seconds the logging actions took in the training thread.
        self.action_seconds = 0.0
        # Per on window: the writer thread's and the logging actions' CPU
        # seconds over the window's seconds.
        self.own_work: list[tuple[float, float]] = []

    def install(self, loop) -> None:
        """Makes the next run `loop.train_and_evaluate` starts build its
        actions with the logging ones switched (only that run: the loop
        builds its actions as it starts, within this variant's turn)."""
        from pipeline.training import actions as actions_lib
        from pipeline.training.chunks import Wants

        switch = self
        logging = (actions_lib.WriteTrainScalars, actions_lib.WriteHistograms)
        run_actions = loop.run_actions

        class Switched(actions_lib.Action):
            def __init__(self, inner):
                self.inner = inner
                self.produces, self.consumes = inner.produces, inner.consumes

            def checkpointed(self):
                return self.inner.checkpointed()

            def start(self, state):
                self.inner.start(state)

            def next_boundary(self, step):
                return self.inner.next_boundary(step)

            def wants(self, step, end):
                return self.inner.wants(step, end) if switch.on else Wants()

            def __call__(self, state, chunk):
                if not switch.on:
                    return None
                started = time.thread_time()
                try:
                    return self.inner(state, chunk)
                finally:
                    switch.action_seconds += time.thread_time() - started

            def completed(self, state, chunk):
                return self.inner.completed(state, chunk)

            def close(self, state):
                self.inner.close(state)

        def switched_run_actions(config, extra=()):
            loop.run_actions = run_actions  # one run only
            return [
                Switched(a) if isinstance(a, logging) else a
                for a in run_actions(config, extra)
            ]

        loop.run_actions = switched_run_actions


def pipeline_worker(
    config,
    dataset,
    window: int,
    windows: int,
    workdir,
    results,
    switched_window: tuple[int, int] | None = None,
):
    """One real training run, timed over one window per turn (pipe_switched:
    pairs of shorter windows, logging on and off, see `switched_timer`)."""
    from pipeline.runs import rundir
    from pipeline.training import loop

    def work(name: str, schedule: Schedule, rates: list[float]) -> None:
        if switched_window:
            short, pairs = switched_window
            steps = windows * 2 * pairs * short
            switch = SWITCHES[name] = LoggingSwitch(short)
            timer = switched_timer(
                name, schedule, short, pairs, windows, config.batch_size, rates, switch
            )
        else:
            steps = windows * window
            timer = window_timer(
                name, schedule, window, windows, config.batch_size, rates
            )
        run_config = dataclasses.replace(
            config,
            steps=WARMUP_STEPS + steps + 1,
            print_every=PRINT_EVERY,
            logdir=str(workdir),
        )
        schedule.acquire(name)
        run_dir = rundir.create_run_dir(workdir, name)
        if switched_window:
            switch.install(loop)
        results.append(
            loop.train_and_evaluate(
                run_config,
                run_dir,
                dataset,
                print_fn=lambda _: None,
                extra_actions=[timer],
            )
        )
        schedule.release(name)

    return work


def report(
    name: str, index: int, rate: float, writer_share: float | None = None
) -> None:
    writer = "" if writer_share is None else f"  writer thread {writer_share:.1%}"
    print(f"  window {index + 1} {name:19s} {rate:>10,.0f} examples/s{writer}")


def paired_ratios(rates: list[float], fit: list[float]) -> list[float]:
    """Round r's rate over the geometric mean of the fit windows around it."""
    return [rate / math.sqrt(fit[r] * fit[r + 1]) for r, rate in enumerate(rates)]


@dataclasses.dataclass
class FamilyResult:
    family: str
    batch_size: int
    window: int
    rounds: int
    rates: dict[str, list[float]]
    ratios: dict[str, list[float]]
    train_flops: float
    ceiling_gflops: dict[str, list[float]]
    eval_seconds: dict[str, float]
    event_bytes_per_1000: dict[str, float]
    trace_counts: dict[str, int]
    load_average: tuple[float, float]
    writer_shares: dict[str, list[float]] = dataclasses.field(default_factory=dict)
    cpu_per_1000: dict[str, list[float]] = dataclasses.field(default_factory=dict)
    # pipe_switched, per pair of windows: 1 - rate on / rate off, and CPU per
    # example on / off - 1.
    switched_costs: list[float] = dataclasses.field(default_factory=list)
    switched_costs_without_closing_wait: list[float] = dataclasses.field(
        default_factory=list
    )
    switched_cpu_costs: list[float] = dataclasses.field(default_factory=list)
    # Per on window of pipe_switched: writer thread CPU, logging actions' CPU
    # (training thread), as shares of the window.
    switched_own_work: list[tuple[float, float]] = dataclasses.field(
        default_factory=list
    )
    switched_window: int = 0


def variant_config(family: str, name: str):
    """The family's config for one variant (fit variants: the float32 defaults)."""
    logging, policy = PIPELINE_VARIANTS.get(name, ((), "float32"))
    if name == "fit_bf16":
        policy = BF16
    config = common.family_config(family, *NOT_IN_WINDOWS, *logging)
    return dataclasses.replace(config, precision=policy)


def eval_seconds(config, dataset, repeats: int = 3) -> float:
    """Median seconds of the loop's compiled full-test-split evaluation."""
    import tensorflow as tf

    from pipeline import models
    from pipeline.training import steps

    evaluate = steps.make_eval_fn(models.build_model(config))
    images = tf.constant(dataset.test.images)
    labels = tf.constant(dataset.test.labels, tf.int32)
    evaluate(images, labels)["loss"].numpy()  # trace + compile
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        evaluate(images, labels)["loss"].numpy()
        seconds.append(time.perf_counter() - start)
    return statistics.median(seconds)


def run_schedule(workers: dict, rounds: int, ceiling: dict[str, list[float]]):
    """Runs every worker thread through the schedule; returns the rates."""
    variants = [name for name in workers if name != "fit"]
    schedule = Schedule(schedule_order(variants, rounds))
    rates: dict[str, list[float]] = {name: [] for name in workers}
    errors: list[BaseException] = []

    def matmul_work() -> None:
        # Measured every round: load moves the ceiling as much as the rates.
        for index in range(rounds + 1):
            schedule.acquire("matmul")
            for dtype in ("float32", "bfloat16"):
                best = max(flops.matmul_gflops(2, 0.25, (512, 1024), dtype).values())
                if index:  # the first turn only compiles
                    ceiling[dtype].append(best)
            schedule.release("matmul")

    def guarded(work, *args) -> None:
        try:
            work(*args)
        except BaseException as err:  # surfaced in the main thread below
            errors.append(err)
            schedule.abort()

    threads = [
        threading.Thread(target=guarded, args=(work, name, schedule, rates[name]))
        for name, work in workers.items()
    ]
    threads.append(threading.Thread(target=guarded, args=(matmul_work,)))
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    real = [e for e in errors if str(e) != "schedule aborted"]
    if errors:
        raise (real or errors)[0]
    return rates


def measure_family(family: str, workdir: pathlib.Path) -> FamilyResult:
    """Builds every variant once, then runs the paired rounds."""
    from pipeline import data as data_lib
    from pipeline import models

    reference = variant_config(family, "fit")
    dataset = data_lib.load_dataset(reference.dataset)
    window = WINDOW.get(family, WINDOW["cnn"])
    rounds = FLAGS.rounds or ROUNDS.get(family, ROUNDS["cnn"])
    results: dict[str, list] = {}
    workers = {"fit": fit_worker(reference, dataset, window, rounds + 1)}
    for name in FLAGS.variants:
        config = variant_config(family, name)
        if name.startswith("fit"):
            tb_dir = workdir / "tb" if name == "fit_tb" else None
            workers[name] = fit_worker(config, dataset, window, rounds, tb_dir)
        else:
            results[name] = []
            workers[name] = pipeline_worker(
                config,
                dataset,
                window,
                rounds,
                workdir / name,
                results[name],
                switched_window=(
                    SWITCHED_WINDOW.get(family, (window, 1))
                    if name == SWITCHED
                    else None
                ),
            )
    ceiling: dict[str, list[float]] = {"float32": [], "bfloat16": []}
    WRITER_SHARES.clear()
    CPU_PER_1000.clear()
    SWITCHES.clear()
    load_before = os.getloadavg()[0]
    rates = run_schedule(workers, rounds, ceiling)
    switch = SWITCHES.get(SWITCHED)
    if switch is not None:
        rates[SWITCHED_OFF] = switch.rates_off
    load_after = os.getloadavg()[0]
    ratios = {
        name: paired_ratios(values, rates["fit"])
        for name, values in rates.items()
        if name != "fit"
    }
    evals = {
        "float32": eval_seconds(reference, dataset),
        "bfloat16": eval_seconds(
            dataclasses.replace(reference, precision=BF16), dataset
        ),
    }
    # Event bytes of pipe_default only (pipe_switched logs half its windows);
    # trace counts of any pipeline run.
    logged = results.get("pipe_default")
    per_1000, traces = {}, {}
    if logged:
        one_time = {"graph", "graph_keras_model", "text", "images"}
        per_1000 = {
            plugin: size * 1000 / logged[-1].step
            for plugin, size in logged[-1].event_bytes.items()
            if plugin not in one_time
        }
    ran = logged or next((r for r in results.values() if r), [])
    if ran:
        traces = ran[-1].trace_counts
    _, train_flops = common.train_flops_per_example(models.build_model(reference))
    return FamilyResult(
        family,
        reference.batch_size,
        window,
        rounds,
        rates,
        ratios,
        train_flops,
        ceiling,
        evals,
        per_1000,
        traces,
        (load_before, load_after),
        {name: list(shares) for name, shares in WRITER_SHARES.items()},
        {name: list(cpu) for name, cpu in CPU_PER_1000.items()},
        list(switch.costs) if switch else [],
        list(switch.costs_without_closing_wait) if switch else [],
        list(switch.cpu_costs) if switch else [],
        list(switch.own_work) if switch else [],
        switch.window if switch else 0,
    )


def standard_error(values: list[float]) -> float:
    """The standard error of `values`' mean."""
    if len(values) < 2:
        return math.nan
    return statistics.stdev(values) / math.sqrt(len(values))


def per_pair(costs: list[float]) -> str:
    """Per-pair costs (fractions) as a percent: median (min-max), then the
    mean and its standard error."""
    return (
        f"{spread([c * 100 for c in costs], '{:+.1f}')} %; "
        f"mean {statistics.mean(costs) * 100:+.1f} % "
        f"(standard error {standard_error(costs) * 100:.1f})"
    )


def spread(values: list[float], fmt: str = "{:.2f}") -> str:
    median, lo, hi = common.summarize(values)
    return f"{fmt.format(median)} ({fmt.format(lo)}-{fmt.format(hi)})"


def print_family(res: FamilyResult) -> list[str]:
    """Prints one family's table and lines; returns its stability warnings."""
    print(
        f"\n{res.family}: batch {res.batch_size}, {res.rounds} paired rounds of "
        f"{res.window}-step windows, load average {res.load_average[0]:.1f} -> "
        f"{res.load_average[1]:.1f}"
    )
    header = (
        f"  {'variant':19s} {'median ex/s':>12s} {'min-max':>19s}   "
        f"{'paired ratio vs fit (min-max)':>30s} {'% ceiling':>9s}  (bf16 variants: "
        "of the bfloat16 ceiling)"
    )
    print(header)
    unstable = []
    for name, values in res.rates.items():
        median, lo, hi = common.summarize(values)
        # Paired too: each window's FLOP rate over its own round's ceiling.
        ceilings = res.ceiling_gflops["bfloat16" if "bf16" in name else "float32"]
        share = statistics.median(
            rate * res.train_flops / (ceiling * 1e9) * 100
            for rate, ceiling in zip(values, ceilings, strict=False)
        )
        ratio = "1.00 (reference)"
        if name in res.ratios:
            ratio = spread(res.ratios[name]) + "x"
            if min(res.ratios[name]) < 1.0 < max(res.ratios[name]):
                unstable.append(
                    f"{res.family} {name}: paired ratios {spread(res.ratios[name])} "
                    f"straddle 1.0: {res.rounds} rounds cannot tell whether it is "
                    "faster or slower than fit"
                )
        print(
            f"  {name:19s} {median:>12,.0f} {f'{lo:,.0f}-{hi:,.0f}':>19s}   "
            f"{ratio:>30s} {share:>8.1f}%"
        )
    for logged in LOGGING_KINDS:
        if not {"pipe_off", logged} <= res.rates.keys():
            continue
        cost = [
            1 - d / o
            for d, o in zip(res.rates[logged], res.rates["pipe_off"], strict=True)
        ]
        label = "logging cost" if logged == "pipe_default" else "  of it"
        print(
            f"  {label} ({logged} vs pipe_off, per round): "
            f"{spread([c * 100 for c in cost], '{:+.1f}')} %"
        )
    if res.switched_costs:
        pairs = len(res.switched_costs)
        print(
            f"  logging cost in one run ({SWITCHED}, per pair of {res.switched_window}"
            f"-step windows, on vs off back to back, {pairs} pairs): "
            + per_pair(res.switched_costs)
        )
        # A window ends when the writer has written all it was handed, so an
        # on window ends by serializing up to --flush_secs of held per-step
        # scalars while training waits; in a run that work overlaps training.
        # Counting that wait overstates the cost, leaving it out understates
        # it (the work still competes for the cores): the cost lies between.
        print(
            "    without each window's closing wait for the writer (a lower "
            "bound; the line above is an upper one): "
            + per_pair(res.switched_costs_without_closing_wait)
        )
        writer = [w * 100 for w, _ in res.switched_own_work]
        acting = [a * 100 for _, a in res.switched_own_work]
        print(
            f"  logging's own work ({SWITCHED}, per logging window): writer thread "
            f"CPU {spread(writer, '{:.2f}')} %, logging actions' CPU in the training "
            f"thread {spread(acting, '{:.2f}')} % of the window"
        )
        print(
            f"  logging CPU in one run ({SWITCHED}, CPU s per example, per pair): "
            + per_pair(res.switched_cpu_costs)
        )
    for logged in LOGGING_KINDS:
        if not {"pipe_off", logged} <= res.cpu_per_1000.keys():
            continue
        cost = [
            d / o - 1
            for d, o in zip(
                res.cpu_per_1000[logged], res.cpu_per_1000["pipe_off"], strict=True
            )
        ]
        print(
            f"  logging CPU ({logged} vs pipe_off, CPU s per example, per round): "
            f"{spread([c * 100 for c in cost], '{:+.1f}')} %"
        )
    for logged in (*LOGGING_KINDS, SWITCHED):
        shares = res.writer_shares.get(logged)
        if shares:
            print(
                f"  writer thread CPU ({logged}, per window): "
                f"{spread(shares, '{:.1f}')} % of the window"
            )
    if {"pipe_default", "pipe_bf16"} <= res.rates.keys():
        gain = [
            b / d
            for b, d in zip(
                res.rates["pipe_bf16"], res.rates["pipe_default"], strict=True
            )
        ]
        print(
            f"  bfloat16 speed-up, pipe_bf16 / pipe_default per round: {spread(gain)}x"
        )
    if "pipe_default" in res.rates:
        step_s = res.batch_size / statistics.median(res.rates["pipe_default"])
        for dtype, seconds in res.eval_seconds.items():
            share = seconds / (seconds + EVAL_EVERY * step_s) * 100
            print(
                f"  evaluation ({dtype}): 10,000 test images in {seconds:.3f} s = "
                f"{share:.1f}% of a run at --eval_every={EVAL_EVERY} (not logging)"
            )
    print(
        f"  tf.matmul ceilings (best of 512, 1024): float32 "
        f"{spread(res.ceiling_gflops['float32'], '{:.0f}')} GFLOP/s, bfloat16 "
        f"{spread(res.ceiling_gflops['bfloat16'], '{:.0f}')} GFLOP/s; training "
        f"{res.train_flops / 1e6:.2f} MFLOP/example"
    )
    peak = flops.cpu_peak()
    measured = statistics.median(res.ceiling_gflops["float32"])
    print(
        f"  documented peaks of this CPU ({peak.description}): float32 "
        f"{peak.gflops('float32'):.0f}, bfloat16 {peak.gflops('bfloat16'):.0f} "
        f"GFLOP/s at {peak.ghz:.2f} GHz ({peak.clock}); the float32 ceiling is "
        f"{measured / peak.gflops('float32'):.0%} of it"
    )
    if res.event_bytes_per_1000:
        print(
            "  event bytes per 1,000 steps (pipe_default): "
            + ", ".join(
                f"{k} {v / 1000:,.1f} kB" for k, v in res.event_bytes_per_1000.items()
            )
        )
    if res.trace_counts:
        print(f"  trace counts: {res.trace_counts}")
    return unstable


def main(argv: list[str]) -> None:
    del argv
    sys.stdout.reconfigure(line_buffering=True)
    from pipeline.training import loop

    loop.seed_everything(0, deterministic=True)
    results = []
    with tempfile.TemporaryDirectory(prefix="throughput-") as tmp:
        for family in FLAGS.families:
            print(f"{family}: measuring", flush=True)
            results.append(measure_family(family, pathlib.Path(tmp) / family))
    unstable = []
    for res in results:
        unstable += print_family(res)
    print()
    for line in unstable:
        print(f"UNSTABLE {line}")
    if not unstable:
        print("stable: no paired ratio's min-max straddles 1.0")
    if FLAGS.json_out:
        path = pathlib.Path(FLAGS.json_out)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(
            json.dumps({"families": [dataclasses.asdict(r) for r in results]}, indent=2)
        )


if __name__ == "__main__":
    app.run(main)
