"""Where the seconds before the first training step go, per family.

    python -m benchmarks.startup [--families=logreg,mlp,cnn] [--repeats=3]

Each measurement is a fresh Python process (`--child`) running the family's
flagfile as users run it (the bundled digits, the default logging), so nothing
is warm:

* unprofiled, `--repeats` times: seconds from the child's first line to the
  end of TensorFlow's import, of the pipeline's import, of the dataset load,
  and to the first step's progress line (`--steps=2 --print_every=1`), plus
  the interpreter's own start (the parent's clock around the child); the
  median is shown;
* once under Python's profiler (cProfile), the run from `train_and_evaluate`
  to its first step, split into the phases below by the cumulative time of
  the functions that do them. The profiler slows Python-heavy work (tracing)
  more than TensorFlow's C++ (compiling, running), so the phases are shown
  as seconds under the profiler and as a share of the profiled total.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import resource
import statistics
import subprocess
import sys
import time

T0 = time.perf_counter()

from absl import app, flags  # noqa: E402

from benchmarks import common  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_list("families", list(common.FAMILIES), "Families to start.")
flags.DEFINE_integer("repeats", 3, "Unprofiled starts per family (median kept).")
flags.DEFINE_boolean("child", False, "Internal: be the measured process.")
flags.DEFINE_string("family", "logreg", "Internal: the child's family.")
flags.DEFINE_boolean("profile", False, "Internal: profile the child's start.")
flags.DEFINE_string("profile_out", None, "Internal: where the child writes stats.")

# (phase, file suffix, function name): cumulative time of that function.
PHASES = (
    (
        "train state built (all below, to the line)",
        "pipeline/training/state.py",
        "build_train_state",
    ),
    ("  run record, hparams session", "pipeline/runs/rundir.py", "start"),
    ("  run record, hparams session", "pipeline/tensorboard/hparams.py", "start_run"),
    ("  session-start markers", "pipeline/training/recovery.py", "write_session_start"),
    ("  model build", "pipeline/models.py", "build_model"),
    ("  optimizer build", "keras/src/optimizers/base_optimizer.py", "build"),
    ("  input pipeline", "pipeline/data.py", "make_dataset"),
    ("  summary writers' clock wait", "pipeline/training/recovery.py", "wait_until"),
    ("actions' start", "pipeline/training/actions.py", "start"),
    (
        "first chunk: trace + compile + run",
        "pipeline/tensorboard/summaries.py",
        "trace_graph",
    ),
    (
        "  of which: op graph export",
        "tensorflow/python/ops/summary_ops_v2.py",
        "trace_export",
    ),
    ("step-0 summaries, initial histograms", "pipeline/training/actions.py", "_write"),
)
TOP = 18  # functions listed from the profile


def child() -> None:
    """The measured process: imports, loads, trains one step, reports times."""
    marks = {"python ready": time.perf_counter() - T0}
    import tensorflow as tf  # noqa: F401

    marks["tensorflow imported"] = time.perf_counter() - T0
    import tempfile

    from pipeline import data
    from pipeline.runs import rundir
    from pipeline.training import loop

    marks["pipeline imported"] = time.perf_counter() - T0
    from pipeline import config as config_lib

    flag_values = flags.FlagValues()
    config_lib.define_flags(flag_values)
    flagfile = common.ROOT / "flags" / common.FAMILIES[FLAGS.family]
    # Two steps: the first progress line (step 1) then comes before any
    # end-of-run work (the final evaluation, histograms and checkpoint).
    flag_values(["startup", f"--flagfile={flagfile}", "--print_every=1"])
    config = dataclasses.replace(
        config_lib.config_from_flags(flag_values),
        steps=2,
        **{name: 0 for _, name in config_lib.EPOCH_ALTERNATIVES},
    )
    dataset = data.load_dataset(config.dataset)
    marks["dataset loaded"] = time.perf_counter() - T0

    profiler = None

    def on_line(line: str) -> None:
        # "step 1/2 ...", not the "step 0/2 compiling ..." line printed
        # before the first chunk (the first step is after its compile).
        fields = line.split()
        trained = fields[1].split("/")[0] if len(fields) > 1 else ""
        first = fields[:1] == ["step"] and trained.isdigit() and int(trained) > 0
        if first and "first step" not in marks:
            marks["first step"] = time.perf_counter() - T0
            if profiler is not None:
                profiler.disable()  # the profile covers the start-up only

    with tempfile.TemporaryDirectory() as tmp:
        run_dir = rundir.create_run_dir(tmp, "startup")
        if FLAGS.profile:
            import cProfile

            profiler = cProfile.Profile()
            profiler.enable()
            start = time.perf_counter()
            loop.train_and_evaluate(config, run_dir, dataset, print_fn=on_line)
            marks["profiled from train_and_evaluate"] = marks["first step"] - (
                start - T0
            )
            profiler.dump_stats(FLAGS.profile_out)
        else:
            loop.train_and_evaluate(config, run_dir, dataset, print_fn=on_line)
    marks["peak RSS MB"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print("MARKS " + json.dumps(marks))


def run_child(family: str, profile_out: pathlib.Path | None = None) -> dict:
    args = [sys.executable, "-m", "benchmarks.startup", "--child", f"--family={family}"]
    if profile_out is not None:
        args += ["--profile", f"--profile_out={profile_out}"]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    start = time.perf_counter()
    out = subprocess.run(
        args, capture_output=True, text=True, env=env, cwd=common.ROOT, check=False
    )
    wall = time.perf_counter() - start
    lines = [line for line in out.stdout.splitlines() if line.startswith("MARKS ")]
    if out.returncode or not lines:
        raise RuntimeError(f"startup child failed:\n{out.stdout}\n{out.stderr}")
    marks = json.loads(lines[-1].removeprefix("MARKS "))
    marks["process wall"] = wall
    return marks


def phase_seconds(stats_path: pathlib.Path) -> tuple[dict[str, float], list[str]]:
    """Cumulative seconds per phase, and the profile's top functions."""
    import pstats

    stats = pstats.Stats(str(stats_path))
    phases: dict[str, float] = {}
    for (filename, _, name), (_, _, _, cumulative, _) in stats.stats.items():
        for phase, suffix, function in PHASES:
            if name == function and filename.endswith(suffix):
                phases[phase] = phases.get(phase, 0.0) + cumulative
    rows = sorted(stats.stats.items(), key=lambda item: -item[1][3])
    top = []
    for (filename, line, name), (_, calls, own, cumulative, _) in rows:
        if "pipeline/" in filename or "tensorflow/python/eager" in filename:
            short = filename.split("site-packages/")[-1].split("perf/")[-1]
            top.append(
                f"    {cumulative:6.2f} s cum {own:6.2f} s own {calls:>6} calls  "
                f"{short}:{line}({name})"
            )
        if len(top) == TOP:
            break
    return phases, top


def main(argv: list[str]) -> None:
    del argv
    if FLAGS.child:
        child()
        return
    print(f"start-up to the first step, load average {os.getloadavg()[0]:.1f}")
    import tempfile

    for family in FLAGS.families:
        runs = [run_child(family) for _ in range(FLAGS.repeats)]
        med = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
        print(
            f"\n{family}: first step {med['first step']:.2f} s after the first line "
            f"(process wall {med['process wall']:.2f} s incl. interpreter start and "
            f"exit; peak RSS {med['peak RSS MB']:,.0f} MB; median of {len(runs)}: "
            + ", ".join(f"{r['first step']:.2f}" for r in runs)
            + ")"
        )
        previous = 0.0
        for mark in ("tensorflow imported", "pipeline imported", "dataset loaded"):
            print(f"  {mark:28s} {med[mark] - previous:6.2f} s")
            previous = med[mark]
        print(
            f"  {'model build .. first step':28s} "
            f"{med['first step'] - med['dataset loaded']:6.2f} s"
        )
        with tempfile.TemporaryDirectory() as tmp:
            stats_path = pathlib.Path(tmp) / "startup.pstats"
            profiled = run_child(family, stats_path)
            phases, top = phase_seconds(stats_path)
        total = profiled["profiled from train_and_evaluate"]
        print(f"  under cProfile, train_and_evaluate -> first step {total:.2f} s:")
        for phase in dict.fromkeys(p for p, _, _ in PHASES):
            seconds = phases.get(phase, 0.0)
            print(f"    {phase:36s} {seconds:6.2f} s  {seconds / total * 100:5.1f}%")
        if family == FLAGS.families[0]:
            print(
                f"  profile, top {TOP} functions by cumulative time (pipeline, eager):"
            )
            print("\n".join(top))


if __name__ == "__main__":
    app.run(main)
