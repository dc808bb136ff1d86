"""Small real runs on the bundled digits, trained once per test process.

Shared by the eval/predict/export tests (the lead owns conftest.py). The
cache is per process, so with `pytest -n 2 --dist loadfile` each worker
trains each kind at most once, however many modules ask for it.
"""

from __future__ import annotations

import os
import pathlib
import shutil
import subprocess
import sys

import pytest

# Each kind: (TrainConfig overrides, description). 30 mlp steps reach ~70%
# test accuracy: plenty of mistakes for the confusion matrix and the grid.
KINDS = {
    "mlp": {"model": "mlp", "hidden_layers": 1, "hidden_units": 32, "steps": 30},
    "binary": {
        "model": "logreg",
        "binary_class": 3,
        "steps": 20,
        "learning_rate": 0.01,
    },
    "cnn": {
        "model": "cnn",
        "conv_filters": (4, 8),
        "dense_units": (16,),
        "steps": 30,
        "learning_rate": 0.01,
    },
}
CHECKPOINT_STEPS = {"mlp": [10, 20, 30], "binary": [10, 20], "cnn": [10, 20, 30]}
_CACHE: dict[str, pathlib.Path] = {}


def trained_run(tmp_path_factory: pytest.TempPathFactory, kind: str) -> pathlib.Path:
    """The run directory of a finished run of `kind` (see KINDS)."""
    if kind not in _CACHE:
        from pipeline import data
        from pipeline.config import TrainConfig
        from pipeline.runs import rundir
        from pipeline.training import loop as train

        logdir = tmp_path_factory.mktemp(f"logs_{kind}")
        config = TrainConfig(
            dataset="mnist_sample",
            batch_size=32,
            eval_every=10,
            checkpoint_every=10,
            log_every=10,
            histogram_every=0,
            print_every=0,
            image_count=0,
            max_checkpoints=5,
            logdir=str(logdir),
            run_name=kind,
            **KINDS[kind],
        )
        dataset = data.load_dataset(config.dataset, binary_class=config.binary_class)
        run_dir = rundir.create_run_dir(logdir, kind)
        train.train_and_evaluate(config, run_dir, dataset, print_fn=lambda _: None)
        _CACHE[kind] = run_dir.path
    return _CACHE[kind]


def copy_run(run: pathlib.Path, tmp_path: pathlib.Path) -> pathlib.Path:
    """A private copy, for tests that write into the run."""
    return pathlib.Path(shutil.copytree(run, tmp_path / run.name))


def snapshot(path: pathlib.Path) -> dict[str, tuple[int, int]]:
    """Every file under `path` with its size and mtime: equal means untouched."""
    return {
        str(p.relative_to(path)): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in sorted(path.rglob("*"))
    }


def run_cli(script: str, *args: str, timeout: int = 180) -> subprocess.CompletedProcess:
    """Runs the installed console script (`pipeline-eval`, ...) with `args`."""
    executable = pathlib.Path(sys.executable).parent / script
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    return subprocess.run(
        [str(executable), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        check=False,
    )


def error_lines(stderr: str, prog: str) -> list[str]:
    """stderr lines from our error reporter (TF may log other lines first)."""
    return [line for line in stderr.splitlines() if line.startswith(f"{prog}: error:")]
