"""pipeline-compare --export: every scalar, in long form, as TensorBoard reads it."""

import csv
import dataclasses

import pytest
from conftest import LOGREG, main_in_process, scalar_series, train_run


@pytest.fixture(scope="module")
def logdir(tmp_path_factory):
    root = tmp_path_factory.mktemp("export_logs")
    for seed in (0, 1):
        config = dataclasses.replace(LOGREG, seed=seed)
        train_run(root, config, f"lr=0.1,seed={seed}")
    return root


def compare(*args):
    """`pipeline-compare ARGS`, its main in this process (test_compare.py
    runs the real program, its table and its error exit)."""
    return main_in_process("pipeline-compare", *args)


def read_csv(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def test_export_writes_every_scalar_in_long_form(logdir, tmp_path):
    out = tmp_path / "scalars.csv"
    result = compare(str(logdir), f"--export={out}")
    assert result.returncode == 0, result.stderr
    rows = read_csv(out)
    assert f"scalars: {out} ({len(rows):,} rows from 2 runs)" in result.stderr
    assert list(rows[0]) == ["run", "split", "tag", "step", "wall_time", "value"]
    assert {r["run"] for r in rows} == {"lr=0.1,seed=0", "lr=0.1,seed=1"}
    assert {r["split"] for r in rows} == {"train", "test"}

    def series(run, split, tag):
        return [
            (int(r["step"]), float(r["value"]))
            for r in rows
            if (r["run"], r["split"], r["tag"]) == (run, split, tag)
        ]

    # Exactly what TensorBoard's loader reads, every point kept.
    expected = scalar_series(logdir / "lr=0.1,seed=1" / "test", "accuracy")
    assert series("lr=0.1,seed=1", "test", "accuracy") == expected
    assert [s for s, _ in expected] == [10, 20]
    assert [s for s, _ in series("lr=0.1,seed=0", "train", "loss")] == [5, 10, 15, 20]
    assert all(float(r["wall_time"]) > 1.7e9 for r in rows)


def test_export_covers_only_the_runs_named(logdir, tmp_path):
    out = tmp_path / "one.csv"
    result = compare(str(logdir / "lr=0.1,seed=0"), f"--export={out}")
    assert result.returncode == 0, result.stderr
    assert {r["run"] for r in read_csv(out)} == {"lr=0.1,seed=0"}


def test_only_csv_is_written(logdir, tmp_path):
    result = compare(str(logdir), f"--export={tmp_path / 'scalars.parquet'}")
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == (
        f"pipeline-compare: error: --export={tmp_path / 'scalars.parquet'}: only "
        ".csv is written (no Parquet library is a dependency of this pipeline)"
    )
    assert list(tmp_path.iterdir()) == []
