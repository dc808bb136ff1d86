"""Import rules: the TensorFlow-free modules stay free of it, and no import circle.

Bad flags, missing runs and corrupt data files are reported in well under a
second because the entry points, the config, the errors, the run records and
the data readers import no TensorFlow (or Keras) until training starts. A new
module-level import that pulls TensorFlow into one of them fails here. Which
modules may import TensorFlow is declared by folder in `test_layers.py`
(`TF_AT_IMPORT`): every other module is checked.
"""

from __future__ import annotations

import sys

import pytest
from conftest import (
    LOGREG_FLAGS,
    RUN_PROGRAM,
    import_without_tensorflow,
    run_to_completion,
    run_without_tensorflow,
)
from test_layers import imported_modules, module_files, tf_free_modules


def test_tf_free_modules_import_with_tensorflow_blocked():
    modules = tf_free_modules()
    assert "pipeline.cli.train" in modules
    proc, attempted = import_without_tensorflow(*modules)
    assert (proc.returncode, attempted) == (0, []), proc.stderr


def test_the_blocker_catches_a_tensorflow_import():
    proc, attempted = import_without_tensorflow("pipeline.training.loop")
    assert proc.returncode != 0
    assert attempted[0] in ("tensorflow", "keras")
    assert f"{attempted[0]} is blocked" in proc.stderr


@pytest.mark.parametrize(
    ("args", "line"),
    [
        (["--run_name=taken"], "{logdir}/taken: run already exists"),
        (["--run_name=a/b"], "--run_name"),
        (["--resume", "--run_name=missing"], "{logdir}/missing"),
    ],
    ids=["taken_run_name", "bad_run_name", "resume_missing_run"],
)
def test_run_errors_are_said_before_tensorflow_loads(tmp_path, args, line):
    (tmp_path / "taken").mkdir()
    proc, attempted = run_without_tensorflow(
        "pipeline-train", f"--logdir={tmp_path}", *args
    )
    assert (proc.returncode, attempted) == (1, []), proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("pipeline-train: error:")
    assert line.format(logdir=tmp_path) in proc.stderr


@pytest.mark.slow
def test_a_sweep_worker_runs_a_sweep_without_tensorflow(tmp_path):
    """The worker process orchestrates; its training process imports
    TensorFlow. Its own reads (the HParams config, seed bands over the test
    split) go through TensorBoard's TensorFlow-free reader."""
    proc, attempted = run_without_tensorflow(
        "pipeline-sweep",
        *LOGREG_FLAGS,
        f"--logdir={tmp_path}",
        "--steps=5",
        "--repeats=2",
        "--sweep_name=s",
        "--grid=learning_rate=0.1",
    )
    assert (proc.returncode, attempted) == (0, []), proc.stderr
    assert (tmp_path / "s" / "seed_bands").is_dir()


def test_no_import_circle():
    files = module_files()
    graph = {
        name: imported_modules(path, set(files)) - {name}
        for name, path in files.items()
    }
    circles = []
    done: set[str] = set()

    def visit(name: str, stack: list[str]) -> None:
        for dep in sorted(graph[name]):
            if dep in stack:
                circles.append(" -> ".join([*stack[stack.index(dep) :], dep]))
            elif dep not in done:
                visit(dep, [*stack, dep])
        done.add(name)

    for name in sorted(graph):
        visit(name, [name])
    assert circles == []


def test_a_deferred_module_runs_on_first_use_only(tmp_path, monkeypatch):
    """`cli.defer_pyplot`'s stand-in: an `import ... as` binds it without
    running the module; the first attribute read runs it, once."""
    import types

    from pipeline import cli

    (tmp_path / "late_module.py").write_text(
        "import sys\nsys.late_module_runs = getattr(sys, 'late_module_runs', 0) + 1\n"
        "value = 42\n"
    )
    monkeypatch.syspath_prepend(tmp_path)
    monkeypatch.setitem(sys.modules, "late_module", cli.DeferredModule("late_module"))
    monkeypatch.setattr(sys, "late_module_runs", 0, raising=False)

    import late_module as bound

    assert sys.late_module_runs == 0
    assert (bound.value, bound.value) == (42, 42)
    assert sys.late_module_runs == 1
    assert type(sys.modules["late_module"]) is types.ModuleType


# A program started as its console script, which prints the garbage
# collector's first threshold as it exits (here: refused before TensorFlow).
_GC_AT_EXIT = """
import atexit, gc
atexit.register(lambda: print("gc threshold:", gc.get_threshold()[0]))
"""
# TensorFlow's import after `processes.collect_less_often`: the collector's passes.
_GC_PASSES = """
import gc
from pipeline import processes
processes.collect_less_often()
import tensorflow
print("passes:", sum(generation["collections"] for generation in gc.get_stats()))
"""


def test_programs_collect_garbage_less_often_from_their_start():
    """Every `pipeline-*` program raises the collector's first threshold at
    its start, before TensorFlow loads: TensorFlow's import then takes a few
    dozen passes over its ~340,000 objects, not Python's ~800 (measured)."""
    from pipeline import processes

    program = run_to_completion(
        [
            sys.executable,
            "-c",
            _GC_AT_EXIT + RUN_PROGRAM,
            "pipeline-train",
            "--batch_size=0",
        ]
    )
    assert program.returncode == 1, program.stderr
    assert f"gc threshold: {processes.GC_FIRST_GENERATION}" in program.stdout
    imported = run_to_completion([sys.executable, "-c", _GC_PASSES])
    assert imported.returncode == 0, imported.stderr
    passes = int(imported.stdout.split("passes:")[1])
    assert passes < 100, passes


def test_what_a_run_left_is_collected_and_the_imports_frozen(tiny_run):
    """After a run in this process (`tiny_run`), TensorFlow's import objects
    are frozen out of every later collection; a young cycle goes at the
    young collection after a test, one that aged goes at the full one after
    a run."""
    import gc
    import weakref

    from pipeline import processes

    class Left:
        pass

    assert "tensorflow" in sys.modules
    assert gc.get_freeze_count() > 100_000
    old = Left()
    old.cycle = old
    old_gone = weakref.ref(old)
    gc.collect(1)  # `old` survives it: into the oldest generation
    young = Left()
    young.cycle = young
    young_gone = weakref.ref(young)
    del young, old
    processes.collect_what_a_run_left(generation=1)
    assert young_gone() is None
    assert old_gone() is not None
    processes.collect_what_a_run_left()
    assert old_gone() is None
