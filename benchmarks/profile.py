"""Where a training step's time goes, by TensorFlow op type (a tf.profiler trace).

    python -m benchmarks.profile [--families=cnn] [--steps=20] [--precisions=...]

For each family (on Fashion-MNIST, as `throughput` trains it) and precision,
compiles the pipeline's train loop, warms it up, records `--steps` steps with
`tf.profiler.experimental.start/stop` and reads the trace back with XProf's
`framework_op_stats` tool (tensorboard-plugin-profile): self-time per op type
and its share of the time TensorFlow's threads were busy (the trace also
counts their idle time, shown apart). The trace stays in `--logdir` for
TensorBoard's Profile tab.

For `--loop_families` (default logreg, whose steps are short enough for the
loop's own work to matter) it also runs the real loop at the default logging
(periodic evaluation off, as in `throughput`; the end-of-run evaluation,
projector and checkpoint stay, and show as their actions) under Python's
profiler and splits the main thread's time into the compiled chunks and each
action (waiting for the summary writer thread shows in the action that waits).
"""

from __future__ import annotations

import collections
import json
import pathlib
import time

from absl import app, flags

from benchmarks import common

FLAGS = flags.FLAGS
flags.DEFINE_list("families", ["cnn"], "Families to profile.")
flags.DEFINE_list("precisions", ["float32", "mixed_bfloat16"], "Precisions.")
flags.DEFINE_integer("steps", 20, "Profiled steps.")
flags.DEFINE_string("logdir", "build/bench/profile", "Where the traces go.")
flags.DEFINE_list(
    "loop_families",
    ["logreg", "mlp"],
    "Families whose loop is profiled with cProfile and timed per chunk.",
)
flags.DEFINE_integer("loop_steps", 5000, "Steps of each cProfile'd run.")
TOP = 10


def trace(family: str, precision: str, logdir: pathlib.Path) -> tuple[float, list]:
    """Traces `--steps` train steps; returns (seconds, framework_op_stats rows)."""
    import dataclasses

    import tensorflow as tf
    from xprof.convert import raw_to_tool_data

    from pipeline import data, models
    from pipeline import precision as precision_lib
    from pipeline.training import steps

    config = dataclasses.replace(common.family_config(family), precision=precision)
    dataset = data.load_dataset(config.dataset)
    model = models.build_model(config)
    optimizer = steps.make_optimizer(
        config.optimizer,
        config.learning_rate,
        config.momentum,
        precision_lib.resolve(precision, config.model).loss_scaling,
    )
    optimizer.build(model.trainable_variables)
    train_loop = steps.make_train_loop(
        steps.make_train_step(model, optimizer, config.batch_size)
    )
    iterator = iter(
        data.make_dataset(
            dataset.train,
            batch_size=config.batch_size,
            shuffle_buffer=config.shuffle_buffer,
            seed=config.seed,
        )
    )
    train_loop(iterator, tf.constant(5))["loss"].numpy()  # trace, compile, warm
    out = logdir / f"{family}-{precision}"
    tf.profiler.experimental.start(str(out))
    start = time.perf_counter()
    train_loop(iterator, tf.constant(FLAGS.steps))["loss"].numpy()
    seconds = time.perf_counter() - start
    tf.profiler.experimental.stop()
    (xplane,) = sorted(out.rglob("*.xplane.pb"))[-1:]
    raw, _ = raw_to_tool_data.xspace_to_tool_data(
        [str(xplane)], "framework_op_stats", {}
    )
    table = json.loads(raw)[0]
    names = [col["id"] for col in table["cols"]]
    rows = [
        dict(zip(names, (c["v"] for c in row["c"]), strict=True))
        for row in table["rows"]
    ]
    return seconds, rows


def main(argv: list[str]) -> None:
    del argv
    logdir = pathlib.Path(FLAGS.logdir)
    for family in FLAGS.families:
        for precision in FLAGS.precisions:
            seconds, rows = trace(family, precision, logdir)
            by_type: collections.Counter[str] = collections.Counter()
            for row in rows:
                by_type[row["type"]] += row["total_self_time"]
            idle = by_type.pop("IDLE", 0.0)
            busy = sum(by_type.values())
            print(
                f"{family} {precision}: {FLAGS.steps} steps in {seconds:.2f} s "
                f"({seconds / FLAGS.steps * 1000:.0f} ms/step); ops busy "
                f"{busy / 1e6:.2f} thread-s, idle {idle / 1e6:.2f} thread-s "
                f"(tf.profiler trace in {logdir / f'{family}-{precision}'}); "
                "self-time by op type, share of busy time:"
            )
            for op_type, micros in by_type.most_common(TOP):
                share = micros / busy * 100
                print(f"  {op_type:40s} {micros / 1e3:9.1f} ms {share:5.1f}%")
            rest = busy - sum(v for _, v in by_type.most_common(TOP))
            other = "(other op types)"
            print(f"  {other:40s} {rest / 1e3:9.1f} ms {rest / busy * 100:5.1f}%")
    for family in FLAGS.loop_families:
        profile_loop(family)
        loop_costs(family)


def profile_loop(family: str) -> None:
    """cProfile of the training loop's main thread at the default logging."""
    import cProfile
    import dataclasses
    import inspect
    import pstats
    import tempfile

    from pipeline import data
    from pipeline.runs import rundir
    from pipeline.training import actions, loop

    config = common.family_config(family, "--eval_every=0", "--checkpoint_every=0")
    config = dataclasses.replace(config, steps=FLAGS.loop_steps)
    dataset = data.load_dataset(config.dataset)
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = rundir.create_run_dir(tmp, "profile")
        profiler = cProfile.Profile()
        start = time.perf_counter()
        profiler.enable()
        result = loop.train_and_evaluate(
            config, run_dir, dataset, print_fn=lambda _: None
        )
        profiler.disable()
        wall = time.perf_counter() - start
    stats = pstats.Stats(profiler).stats
    lines = {}
    for name, cls in inspect.getmembers(actions, inspect.isclass):
        if issubclass(cls, actions.Action) and "__call__" in vars(cls):
            lines[inspect.getsourcelines(cls.__call__)[1]] = name
    parts: dict[str, float] = {}
    for (filename, line, name), (_, _, _, cumulative, _) in stats.items():
        if filename.endswith("pipeline/training/state.py") and name == "train_until":
            parts["compiled chunks (TrainState.train_until)"] = cumulative
        elif filename.endswith("pipeline/training/actions.py") and line in lines:
            parts[f"action {lines[line]}"] = cumulative
        elif filename.endswith("pipeline/tensorboard/summaries.py") and name in (
            "wait",
            "flush",
        ):
            parts[f"  of which SummaryLogger/BackgroundWriter.{name}"] = cumulative
    print(
        f"{family} loop under cProfile: {FLAGS.loop_steps} steps, default logging, "
        f"periodic evaluation off, {wall:.2f} s wall ({result.examples_per_sec:,.0f} "
        "examples/s incl. start-up); main thread, cumulative seconds:"
    )
    for label, seconds in sorted(parts.items(), key=lambda kv: -kv[1]):
        print(f"  {label:48s} {seconds:7.2f} s {seconds / wall * 100:5.1f}%")


def loop_costs(family: str) -> None:
    """Per chunk, without a profiler: the compiled call, each action and each
    kind of the summary writer thread's jobs (its CPU), at the default
    logging. Medians over the chunks after the first few (tracing, the
    step-0 summaries); what logging adds to a chunk is the actions that write
    plus the writer thread's CPU, beside the compiled call."""
    import dataclasses
    import inspect
    import statistics
    import tempfile
    from unittest import mock

    from pipeline import data
    from pipeline.runs import rundir
    from pipeline.tensorboard import summaries
    from pipeline.training import actions, loop
    from pipeline.training import state as state_lib

    config = common.family_config(family, "--eval_every=0", "--checkpoint_every=0")
    config = dataclasses.replace(config, steps=FLAGS.loop_steps)
    dataset = data.load_dataset(config.dataset)
    wall: dict[str, list[float]] = collections.defaultdict(list)
    writer_cpu: dict[str, list[float]] = collections.defaultdict(list)

    def timed(name, call):
        def wrapper(*args):
            start = time.perf_counter()
            result = call(*args)
            wall[name].append(time.perf_counter() - start)
            return result

        return wrapper

    write = summaries.SummaryLogger._write

    def write_timed(self, work):
        def job():
            start = time.thread_time()
            result = work()
            writer_cpu[work.__qualname__.split(".")[1]].append(
                time.thread_time() - start
            )
            return result

        return write(self, job)

    write_held = summaries.SummaryLogger._write_held

    def write_held_timed(self, entries):
        # Per-step scalars and histogram chunks' records go to the writer
        # thread in batches, not via `_write`.
        start = time.thread_time()
        write_held(self, entries)
        writer_cpu["held scalars and histograms"].append(time.thread_time() - start)

    patches = [
        mock.patch.object(cls, "__call__", timed(f"action {name}", cls.__call__))
        for name, cls in inspect.getmembers(actions, inspect.isclass)
        if issubclass(cls, actions.Action) and "__call__" in vars(cls)
    ]
    patches.append(
        mock.patch.object(
            state_lib.TrainState,
            "train_until",
            timed("compiled chunk", state_lib.TrainState.train_until),
        )
    )
    patches.append(mock.patch.object(summaries.SummaryLogger, "_write", write_timed))
    patches.append(
        mock.patch.object(summaries.SummaryLogger, "_write_held", write_held_timed)
    )
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = rundir.create_run_dir(tmp, "costs")
        for patch in patches:
            patch.start()
        try:
            loop.train_and_evaluate(config, run_dir, dataset, print_fn=lambda _: None)
        finally:
            for patch in patches:
                patch.stop()
    chunks = len(wall["compiled chunk"])
    steady = slice(3, -1)  # not the first chunks, not the last (end of run)
    chunk_ms = statistics.median(wall["compiled chunk"][steady]) * 1e3
    print(
        f"{family} loop per chunk ({FLAGS.loop_steps} steps in {chunks} chunks, "
        "default logging, periodic evaluation off), median ms of the steady "
        f"chunks; compiled call {chunk_ms:.2f} ms:"
    )
    rows = [
        (name, statistics.median(values[steady]) * 1e3)
        for name, values in wall.items()
        if name != "compiled chunk" and len(values) == chunks
    ]
    for kind, values in writer_cpu.items():
        # Per chunk, without the longest jobs (the first ones trace): 3 of a
        # job every chunk has, 1 of a periodic one (histograms, every 500
        # steps at the default), whose cost is spread over the chunks.
        skipped = 3 if len(values) >= chunks - 1 else 1
        if len(values) > skipped:
            per_chunk = sum(sorted(values)[:-skipped]) / (chunks - skipped)
            rows.append((f"writer thread CPU: {kind}", per_chunk * 1e3))
    for name, ms in sorted(rows, key=lambda row: -row[1]):
        if ms >= 0.005:
            print(f"  {name:48s} {ms:7.3f} ms {ms / chunk_ms * 100:5.1f}%")


if __name__ == "__main__":
    app.run(main)
