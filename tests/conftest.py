"""What the tests share: one base config, one way to train, one way to run a program.

- `TINY` is the base config of every test run; a test states what it changes
  with `dataclasses.replace(TINY, ...)`.
- `train_run` trains a config with the real loop on the bundled digits, or
  resumes a run (`signal_at` interrupts one at a step); every fixture below
  (one run per model family, the eval/predict/export runs, the multi-step
  loop run) is built with it.
- `run_cli("pipeline-train", ...)` runs an installed console script in a
  subprocess, as a user does; `cli_command`/`cli_env` start one by hand;
  `sweep_command`/`run_sweep` do so for `pipeline-sweep` on tiny runs, and
  `kill_once_started` kills one the moment its run starts training;
  `signal_as_a_handler_goes_back` sends a second signal at the exact moment
  a first one's handler is putting the handlers back.
- `read_events`, `scalar_series`, `tensor_series`, `raw_step_counts` read
  event files back with TensorBoard's own loaders; `record`, `snapshot`,
  `tree_digest` and `copy_run` look at a run directory.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import functools
import gc
import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pytest

from pipeline import cli, processes
from pipeline.config import TrainConfig
from pipeline.runs.rundir import config_to_flagfile

# The tests train in this process too: set up as the programs set theirs.
cli.before_tensorflow()
# The tests press Ctrl-C (SIGINT) on their programs. A shell starts a
# background command (`make test &` in a script) with SIGINT ignored, which
# every child would inherit: the suite runs with Python's own handler.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

REPO = pathlib.Path(__file__).resolve().parents[1]

TINY = TrainConfig(
    dataset="mnist_sample",
    steps=20,
    batch_size=32,
    shuffle_buffer=500,
    learning_rate=0.01,
    optimizer="adam",
    hidden_layers=1,
    hidden_units=16,
    conv_filters=(4, 8),
    dense_units=(16,),
    log_every=1,
    print_every=0,
    eval_every=10,
    histogram_every=10,
    checkpoint_every=10,
    image_count=8,
    # The Projector files at the end (tested in test_projector.py): off here,
    # so the many tiny runs stay lean.
    projector=False,
)
# Logistic regression with plain SGD, scalars every 5 steps, no checkpoint
# but the last: the runs of the hparams, sweep, compare and board tests.
LOGREG = dataclasses.replace(
    TINY,
    model="logreg",
    shuffle_buffer=256,
    learning_rate=0.1,
    optimizer="sgd",
    log_every=5,
    checkpoint_every=0,
)
# The same run as `pipeline-train`/`pipeline-sweep` flags (logdir left out).
LOGREG_FLAGS = [
    line
    for line in config_to_flagfile(LOGREG).splitlines()
    if not line.startswith("--logdir=")
]


@dataclasses.dataclass
class TrainedRun:
    """A run trained in this session: its config, directory, result, printed lines."""

    config: TrainConfig
    path: pathlib.Path
    result: object
    lines: list[str] = dataclasses.field(default_factory=list)


@functools.cache
def _dataset(data_dir: str | None, validation_split: float, binary_class: int | None):
    from pipeline import data

    return data.load_dataset("mnist_sample", data_dir, validation_split, binary_class)


def train_run(
    logdir: pathlib.Path,
    config: TrainConfig,
    name: str,
    *,
    resume: bool = False,
    print_fn=None,
    **kwargs,
) -> TrainedRun:
    """Trains `config` into `logdir/name` with the real loop and the bundled digits.

    Creates the run directory, or with `resume` continues the run already
    there from its latest checkpoint; the config's `logdir` and `run_name`
    say where, as `pipeline-train`'s would. Progress lines go to `print_fn`, or are
    kept in the result's `lines`; other `kwargs` go to `train_and_evaluate`.
    Raises what training raises (the run directory is kept).
    """
    from pipeline.runs import rundir
    from pipeline.training import loop

    config = dataclasses.replace(config, logdir=str(logdir), run_name=name)
    if resume:
        run_dir = rundir.open_run_dir(pathlib.Path(logdir) / name)
    else:
        run_dir = rundir.create_run_dir(logdir, name)
    lines: list[str] = []
    dataset = _dataset(config.data_dir, config.validation_split, config.binary_class)
    try:
        result = loop.train_and_evaluate(
            config,
            run_dir,
            dataset,
            print_fn=print_fn or lines.append,
            resume=resume,
            **kwargs,
        )
    finally:
        collect_after_a_run()
    return TrainedRun(config, run_dir.path, result, lines)


def collect_after_a_run() -> None:
    """Collects the whole heap after a run trained in this process, as the
    sweep trainer does between trials (see `collected_after_each_test`), and
    freezes what survives.

    What survives a run's collection stays: the session's fixtures, and the
    graphs TensorFlow traced, which it never frees (5,000-8,000 objects a
    tiny run; tensorflow/tensorflow#124972). Walked again by every later
    collection, they made each one slower as the session went on.
    """
    processes.collect_what_a_run_left()
    gc.freeze()


# `make test` hands whole files to its workers (`--dist loadfile`: a
# file's module fixtures are built once, on one worker) in collection order
# (`--no-loadscope-reorder`). The files that take longest go first, so the
# short ones fill the gaps at the end instead of one long file running alone
# on one worker while the others idle. Longest first, from `make test
# --durations=0` on main 81d5bd9 (752 passed in 6 min 52 s on the idle
# machine; test_distribute 66 s of worker time, test_trusted_runs 65, ...).
LONGEST_FIRST = (
    "test_distribute.py",
    "test_trusted_runs.py",
    "test_study_postgres.py",
    "test_study.py",
    "test_board.py",
    "test_sweep_warm.py",
    "test_study_outcomes.py",
    "test_fault.py",
    "test_recovery.py",
    "test_study_pruning.py",
    "test_run_management.py",
    "test_seed_bands.py",
    "test_compare.py",
    "test_closed_streams.py",
    "test_sweep.py",
    "test_hparams.py",
    "test_console.py",
    "test_train.py",
    "test_profile.py",
    "test_export.py",
    "test_imports.py",
    "test_projector.py",
    "test_provenance.py",
)


# Files that read the same session fixture go to the same worker, so that
# it is built once, not once per worker: `readme_layout` (6 runs),
# `trained_runs` (3 runs). The file named on the right brings the other one.
SAME_WORKER_AS = {
    "test_hparams.py": "test_compare.py",
    "test_summaries.py": "test_train.py",
}


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    """`--dist loadfile`, with the files of `SAME_WORKER_AS` one unit each."""
    if config.getvalue("dist") != "loadfile":
        return None
    from xdist.scheduler import LoadFileScheduling

    class FilesSharingFixtures(LoadFileScheduling):
        def _split_scope(self, nodeid: str) -> str:
            file = super()._split_scope(nodeid)
            head, _, name = file.rpartition("/")
            partner = SAME_WORKER_AS.get(name)
            return f"{head}/{partner}" if partner else file

    return FilesSharingFixtures(config, log)


def pytest_collection_modifyitems(config, items):
    """Orders the collected files as `LONGEST_FIRST` says (the rest after,
    in their own order); the tests within a file keep theirs."""
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))


@pytest.fixture(scope="session", autouse=True)
def warm_sweep_trainers():
    """Sweeps run in this process (`study_fixtures.sweep_in_process`) hand
    their idle training process on to the next one: one TensorFlow import
    per pytest worker instead of one per sweep. Ended with the session."""
    from pipeline.sweep import trainer

    with trainer.kept_between_sweeps():
        yield


@pytest.fixture(scope="session")
def sample_dataset():
    """The bundled digits, loaded once."""
    return _dataset(None, 0.0, None)


@pytest.fixture(scope="session")
def trained_runs(tmp_path_factory) -> dict[str, TrainedRun]:
    """One tiny run per model family, trained once per session."""
    logdir = tmp_path_factory.mktemp("logs")
    return {
        model: train_run(logdir, dataclasses.replace(TINY, model=model), model)
        for model in ("logreg", "mlp", "cnn")
    }


# The runs that eval, predict and export read: checkpoints every 10 steps
# (all kept), scalars every 10, no histograms or images. 30 mlp steps leave
# plenty of mistakes for the confusion matrix and the mistakes grid.
_RESTORABLE = dataclasses.replace(
    TINY,
    eval_every=10,
    checkpoint_every=10,
    log_every=10,
    histogram_every=0,
    image_count=0,
    max_checkpoints=5,
)
MLP_RUN = dataclasses.replace(
    _RESTORABLE,
    model="mlp",
    hidden_units=32,
    steps=30,
    shuffle_buffer=10000,
    learning_rate=0.001,
)
BINARY_RUN = dataclasses.replace(
    _RESTORABLE, model="logreg", binary_class=3, shuffle_buffer=10000
)
CHECKPOINT_STEPS = {
    name: list(
        range(config.checkpoint_every, config.steps + 1, config.checkpoint_every)
    )
    for name, config in (("mlp", MLP_RUN), ("binary", BINARY_RUN))
}


@pytest.fixture(scope="session")
def mlp_run(tmp_path_factory) -> pathlib.Path:
    """A finished 30-step MLP run with checkpoints at steps 10, 20 and 30."""
    logdir = tmp_path_factory.mktemp("logs_mlp")
    return train_run(logdir, MLP_RUN, "mlp").path


@pytest.fixture(scope="session")
def binary_run(tmp_path_factory) -> pathlib.Path:
    """A finished 20-step 'is it a 3?' logistic regression, checkpoints at 10, 20."""
    logdir = tmp_path_factory.mktemp("logs_binary")
    return train_run(logdir, BINARY_RUN, "binary").path


# The session's shared runs, as trained: a test that writes into one (an
# eval's summaries, a resume) changes what every later test on its worker
# reads, and which tests those are depends on the scheduling.
SHARED_RUNS = ("mlp_run", "binary_run")


@pytest.fixture(autouse=True)
def collected_after_each_test():
    """Collects the young generations, where a test's garbage is, after each
    test, as `train_run` collects the whole heap after each run
    (`processes.collect_what_a_run_left`, which the sweep trainer calls
    between trials). Without them a run's `tf.data` iterator was collected
    at some later test and held it up for 15-40 s (a garbage collection that
    long, the process idle, in 5 of 6 runs watched; gdb showed the
    iterator's autotuning thread in `Model::OptimizeLoop`'s timed wait)."""
    yield
    processes.collect_what_a_run_left(generation=1)


@pytest.fixture(autouse=True)
def shared_runs_stay_as_trained(request):
    """Fails the test that changed a shared run (work on `copy_run` instead)."""
    used = [name for name in SHARED_RUNS if name in request.fixturenames]
    before = {name: snapshot(request.getfixturevalue(name)) for name in used}
    yield
    for name in used:
        changed = snapshot(request.getfixturevalue(name)) != before[name]
        assert not changed, f"the test wrote into the shared {name}: use copy_run"


# 37 steps with chunks of 10 and eval every 15: chunk lengths 10, 5, 10, 10,
# 2 ... nothing divides evenly, so a retrace on a new length would show.
MULTI_STEP = dataclasses.replace(
    TINY,
    model="mlp",
    steps=37,
    hidden_units=8,
    steps_per_loop=10,
    eval_every=15,
    checkpoint_every=0,
    image_count=4,
)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> TrainedRun:
    """`MULTI_STEP` trained once per test module, with its printed lines."""
    return train_run(tmp_path_factory.mktemp("logs"), MULTI_STEP, "tiny")


def signal_at(step: int, signum: int):
    """An action that sends this process `signum` when the chunk ending at
    `step` is done: what Ctrl-C or `kill` does to a run in the middle."""
    from pipeline.training.actions import Action

    class SignalAt(Action):
        def next_boundary(self, current: int) -> int | None:
            return step if current < step else None

        def __call__(self, state, chunk) -> None:
            if chunk.step == step:
                signal.raise_signal(signum)

    return SignalAt()


def cli_env() -> dict[str, str]:
    """Environment for a `pipeline-*` subprocess: quiet TF, unbuffered output."""
    env = dict(os.environ)
    env.update(TF_CPP_MIN_LOG_LEVEL="3", PYTHONUNBUFFERED="1", PYTHONPATH=str(REPO))
    return env


def cli_command(program: str) -> list[str]:
    """The command line that starts console script `program` (`pipeline-train`, ...)."""
    return [str(pathlib.Path(sys.executable).parent / program)]


def run_cli(
    program: str,
    *args: str,
    timeout: float = 300,
    cwd: pathlib.Path = REPO,
    **kwargs,
) -> subprocess.CompletedProcess:
    """Runs `program ARGS` (e.g. `pipeline-train --steps=5`) to completion.

    `kwargs` go to `subprocess.run` (e.g. `preexec_fn` to set a limit).
    """
    return run_to_completion(
        [*cli_command(program), *args], timeout=timeout, cwd=cwd, **kwargs
    )


def run_to_completion(
    argv: list[str],
    timeout: float = 300,
    cwd: pathlib.Path = REPO,
    pythonpath: str = str(REPO),
    **kwargs,
) -> subprocess.CompletedProcess:
    """Runs `argv` to completion in `cli_env()` (with `pythonpath` as its
    PYTHONPATH), its output captured; the exit status is the caller's to
    check."""
    return subprocess.run(
        argv,
        capture_output=True,
        text=True,
        env={**cli_env(), "PYTHONPATH": pythonpath},
        cwd=cwd,
        timeout=timeout,
        check=False,
        **kwargs,
    )


@functools.cache
def _entry_module(program: str):
    """The `pipeline.cli` module whose `run()` is console script `program`."""
    import importlib
    from importlib import metadata

    (entry,) = metadata.entry_points(group="console_scripts", name=program)
    return importlib.import_module(entry.value.partition(":")[0])


def main_in_process(
    program: str, *args: str, cwd: pathlib.Path | None = None
) -> subprocess.CompletedProcess:
    """Runs `program ARGS` as `run_cli` does, but in this process: no
    subprocess, no second TensorFlow import (~5 s each on this machine).

    The program defines its flags on a fresh `FlagValues` (absl's FLAGS is
    swapped for it while it runs), parses ARGS with its own one-line parser
    and runs its `main`; stdout, stderr and the exit status come back as a
    `CompletedProcess`. What `cli.start` does to the process (the stderr
    filter on fd 2, the output guard, the `ulimit -v` check, `--help`) stays
    out: keep one `run_cli` per program and exit path to prove those, and
    use this for the rules behind them (checkpoint choice, run records, bad
    flags). `cwd`: the working directory while it runs. A lock a program
    takes stays held by this process until its file is closed: use it on
    private copies of runs.
    """
    import contextlib
    import io
    from unittest import mock

    from absl import flags

    from pipeline import cli

    module = _entry_module(program)
    entry = {}

    def capture(prog, define_flags, main, doc, full_only=(), trains=True):
        entry.update(prog=prog, define_flags=define_flags, main=main)

    with mock.patch.object(cli, "start", capture):
        module.run()
    fresh = flags.FlagValues()
    # absl.logging's --verbosity & co., which every program reads.
    fresh.append_flag_values(flags.FLAGS)
    entry["define_flags"](fresh)
    argv = [program, *args]
    stdout, stderr = io.StringIO(), io.StringIO()
    code = 0
    old_cwd = os.getcwd()
    with (
        mock.patch.object(flags, "FLAGS", fresh),
        mock.patch.object(module, "FLAGS", fresh),
        mock.patch.object(sys, "argv", argv),
        contextlib.redirect_stdout(stdout),
        contextlib.redirect_stderr(stderr),
    ):
        try:
            if cwd is not None:
                os.chdir(cwd)
            remaining = cli.one_line_flags_parser(entry["prog"])(argv)
            cli._one_line_usage_errors(entry["prog"], entry["main"])(remaining)
        except SystemExit as done:
            if isinstance(done.code, str):  # sys.exit(message): printed, status 1
                print(done.code, file=sys.stderr)
            code = done.code if isinstance(done.code, int) else int(bool(done.code))
        finally:
            os.chdir(old_cwd)
            fresh.unparse_flags()
            # A program that trained here left its iterator in cycles that
            # outlive the young-generation collection after the test; the
            # next full collection, a file later, waited 36-41 s for it.
            collect_after_a_run()
    return subprocess.CompletedProcess(
        argv, int(code), stdout.getvalue(), stderr.getvalue()
    )


def parse_train_flags(*argv: str):
    """`pipeline-train ARGV`'s flags, defined on a fresh `FlagValues` and
    parsed (flagfiles expanded), without touching absl's FLAGS."""
    from absl import flags

    from pipeline import config as config_lib

    flag_values = flags.FlagValues()
    config_lib.define_flags(flag_values)
    flag_values(["pipeline-train", *argv])
    return flag_values


def config_from_argv(*argv: str) -> TrainConfig:
    """The config `pipeline-train ARGV` trains (the command line read as the
    program reads it: given last wins over a flagfile's `--steps`/`--epochs`)."""
    from pipeline import config as config_lib

    return config_lib.config_from_flags(
        parse_train_flags(*argv), ["pipeline-train", *argv]
    )


# A fresh interpreter where importing TensorFlow or Keras fails (and is
# recorded, in case the code swallows the ImportError); at exit it prints the
# attempts as its last line. Then either a console script runs
# (`run_without_tensorflow`) or modules are imported (`import_without_tensorflow`).
_REFUSE_TENSORFLOW = """
import atexit, importlib, sys
attempts = []
class RefuseTensorFlow:
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in ("tensorflow", "keras"):
            attempts.append(name)
            raise ImportError(f"{name} is blocked")
        return None
sys.meta_path.insert(0, RefuseTensorFlow())
atexit.register(lambda: print("\\ntensorflow imports:", ",".join(attempts)))
"""
# `python -c SETUP + RUN_PROGRAM NAME ARGS` runs console script NAME as its
# entry point does, after SETUP.
RUN_PROGRAM = """
import importlib, sys
from importlib import metadata
sys.argv = sys.argv[1:]
(entry,) = metadata.entry_points(group="console_scripts", name=sys.argv[0])
importlib.import_module(entry.module).run()
"""
_MODULES = """
for module in sys.argv[1:]:
    importlib.import_module(module)
"""


def run_without_tensorflow(
    program: str, *args: str, timeout: float = 300
) -> tuple[subprocess.CompletedProcess, list[str]]:
    """Runs console script `program ARGS` as `run_cli` does, in a process
    where TensorFlow and Keras cannot be imported; returns the process and
    the imports it attempted (none: what it did needs no TensorFlow)."""
    return _without_tensorflow(RUN_PROGRAM, [program, *args], timeout)


def import_without_tensorflow(
    *modules: str,
) -> tuple[subprocess.CompletedProcess, list[str]]:
    """Imports `modules` in such a process; returns it and the attempts."""
    return _without_tensorflow(_MODULES, list(modules), timeout=300)


def _without_tensorflow(
    then: str, args: list[str], timeout: float
) -> tuple[subprocess.CompletedProcess, list[str]]:
    script = _REFUSE_TENSORFLOW + then
    proc = run_to_completion([sys.executable, "-c", script, *args], timeout)
    last = proc.stdout.rstrip().splitlines()[-1:] or [""]
    assert last[0].startswith("tensorflow imports:"), proc.stderr
    attempted = last[0].partition(":")[2].strip()
    return proc, attempted.split(",") if attempted else []


def sweep_command(logdir: pathlib.Path, *args: str) -> list[str]:
    """`pipeline-sweep` on the tiny logreg runs; `args` say what to sweep."""
    return [*cli_command("pipeline-sweep"), *LOGREG_FLAGS, f"--logdir={logdir}", *args]


def run_sweep(logdir: pathlib.Path, *args: str) -> subprocess.CompletedProcess:
    """Runs `sweep_command(logdir, *args)` to completion."""
    return run_cli(
        "pipeline-sweep", *LOGREG_FLAGS, f"--logdir={logdir}", *args, timeout=600
    )


@contextlib.contextmanager
def signal_as_a_handler_goes_back(restorer: str, signum: int):
    """Sends `signum` to this process, for real, right after the first
    `signal.signal` call made by the function named `restorer` returns: the
    moment a first signal's handler has put one handler back. Two signals
    arriving together, made exact. Yields the list of signals it sent."""
    sent: list[int] = []

    def hook(frame, event, arg) -> None:
        if (
            event == "return"
            and frame.f_code is signal.signal.__code__
            and frame.f_back.f_code.co_name == restorer
            and not sent
        ):
            sent.append(signum)
            os.kill(os.getpid(), signum)

    sys.setprofile(hook)
    try:
        yield sent
    finally:
        sys.setprofile(None)


def kill_once_started(
    process: subprocess.Popen, run_path: pathlib.Path, what: str
) -> None:
    """SIGKILLs `process`'s session (it and its training child, as a crash
    would) as soon as `run_path` has started training (its run.json and
    train/ exist); fails naming `what` if that takes over two minutes.
    `process` must have been started with `start_new_session=True`."""
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if (run_path / "run.json").is_file() and (run_path / "train").is_dir():
                break
            time.sleep(0.2)
        else:
            pytest.fail(f"{what} never started")
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
        # Its training process dies with it, but a large multi-threaded
        # process lets go of its files (the run's lock) only once its last
        # thread has exited, a moment after its pid reads as a zombie: what a
        # user sees after a crash is the state once the lock is free.
        _wait_until_unlocked(run_path / "run.lock", timeout=30)


def _wait_until_unlocked(lock: pathlib.Path, timeout: float) -> None:
    """Returns once no process holds `lock` (a run's `flock`), or at `timeout`."""
    import fcntl

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            fd = os.open(lock, os.O_RDONLY)
        except FileNotFoundError:
            return
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            time.sleep(0.1)
        finally:
            os.close(fd)


def error_lines(stderr: str, prog: str) -> list[str]:
    """stderr lines from our error reporter (TF may log other lines first)."""
    return [line for line in stderr.splitlines() if line.startswith(f"{prog}: error:")]


def record(run_path: pathlib.Path) -> dict:
    """The run's `run.json`."""
    return json.loads((run_path / "run.json").read_text())


def copy_run(run: pathlib.Path, tmp_path: pathlib.Path) -> pathlib.Path:
    """A private copy, for tests that write into the run."""
    return pathlib.Path(shutil.copytree(run, tmp_path / run.name))


def snapshot(path: pathlib.Path) -> dict[str, tuple[int, int]]:
    """Every file under `path` with its size and mtime: equal means untouched."""
    return {
        str(p.relative_to(path)): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in sorted(path.rglob("*"))
    }


def tree_digest(path: pathlib.Path) -> dict[str, bytes]:
    """Every file under `path` with its bytes: equal digests = nothing changed."""
    return {
        str(p.relative_to(path)): p.read_bytes()
        for p in sorted(path.rglob("*"))
        if p.is_file()
    }


def read_events(split_dir: pathlib.Path):
    """TensorBoard's own loader over one split directory, every event kept."""
    from pipeline.tensorboard import events

    return events.accumulate(split_dir)


def scalar_series(split_dir: pathlib.Path, tag: str) -> list[tuple[int, float]]:
    """(step, value) of a TF2 scalar tag, read back with TensorBoard's loader."""
    from pipeline.tensorboard import events

    return [(p.step, p.value) for p in events.read_scalars(split_dir, [tag])[tag]]


def tensor_series(split_dir: pathlib.Path) -> dict[str, list[tuple[int, float]]]:
    """Each tag's (step, value) points as TensorBoard's Python loader shows them."""
    from tensorboard.backend.event_processing import plugin_event_accumulator as ea
    from tensorboard.util import tensor_util

    acc = read_events(split_dir)
    out = {}
    for tag in acc.Tags()[ea.TENSORS]:
        points = []
        for event in acc.Tensors(tag):
            value = tensor_util.make_ndarray(event.tensor_proto)
            scalar = value.size == 1 and value.dtype.kind == "f"
            points.append((event.step, float(value) if scalar else None))
        out[tag] = points
    return out


def raw_step_counts(split_dir: pathlib.Path) -> collections.Counter:
    """(tag, step) -> how many times it is in the files, before any purging."""
    from pipeline.tensorboard import events

    counts: collections.Counter = collections.Counter()
    for path in events.event_files(split_dir):
        for event in events.load(path):
            if event.HasField("summary"):
                for value in event.summary.value:
                    counts[(value.tag, event.step)] += 1
    return counts


@pytest.fixture(scope="session")
def readme_layout(tmp_path_factory) -> pathlib.Path:
    """The README's layout: single runs in a logdir and a sweep with repeats in it.

    The sweep's runs are named as `pipeline-sweep` names them: two variants
    (learning rates) x two seeds in `s/`; beside them a logreg and an MLP.
    """
    logdir = tmp_path_factory.mktemp("readme_logs")
    train_run(logdir, dataclasses.replace(LOGREG, learning_rate=0.2), "logreg-1")
    train_run(logdir, dataclasses.replace(LOGREG, model="mlp"), "mlp-1")
    for rate in ("0.05", "0.1"):
        for seed in (0, 1):
            config = dataclasses.replace(LOGREG, learning_rate=float(rate), seed=seed)
            train_run(logdir / "s", config, f"learning_rate={rate},seed={seed}")
    return logdir
