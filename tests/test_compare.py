"""pipeline-compare: variants, repeats, the data guard, filters and formats."""

import dataclasses
import json
import re
import shutil
import statistics

import pytest
from conftest import LOGREG, main_in_process, run_cli, run_without_tensorflow, train_run
from PIL import Image

from pipeline.runs import restore
from pipeline.tools import compare, evaluate


@pytest.fixture(scope="module")
def logdir(tmp_path_factory):
    """lr 0.1 twice (seeds 0, 1), lr 0.5 once, and a binary run (other data)."""
    root = tmp_path_factory.mktemp("compare_logs")
    train_run(root, dataclasses.replace(LOGREG, learning_rate=0.1, seed=0), "lr0.1-s0")
    train_run(root, dataclasses.replace(LOGREG, learning_rate=0.1, seed=1), "lr0.1-s1")
    train_run(root, dataclasses.replace(LOGREG, learning_rate=0.5, seed=0), "lr0.5-s0")
    train_run(root / "binary", dataclasses.replace(LOGREG, binary_class=1), "ones")
    return root


@pytest.fixture(scope="module")
def runs(logdir):
    return [compare.load_run(path) for path in compare.find_runs([str(logdir)])]


def _record(path):
    return json.loads((path / "run.json").read_text())


def test_find_runs_recurses_and_globs(logdir):
    assert {p.name for p in compare.find_runs([str(logdir)])} == {
        "lr0.1-s0",
        "lr0.1-s1",
        "lr0.5-s0",
        "ones",
    }
    assert [p.name for p in compare.find_runs([str(logdir / "lr0.1-*")])] == [
        "lr0.1-s0",
        "lr0.1-s1",
    ]
    with pytest.raises(compare.CompareError, match="no such file or directory"):
        compare.find_runs([str(logdir / "nope*")])


def test_load_run_reads_the_test_curve_with_tensorboards_loader(runs):
    run = next(r for r in runs if r.name == "lr0.1-s0")
    assert [s for s, _ in run.accuracy_curve] == [10, 20]
    record = _record(run.path)
    assert run.metrics["final/accuracy"] == pytest.approx(
        record["final_metrics"]["test"]["accuracy"]
    )
    assert run.metrics["best/accuracy"] == max(v for _, v in run.accuracy_curve)
    assert run.metrics["steps"] == 20
    assert run.metrics["wall_time"] == record["wall_time_s"]


def test_seeds_are_repeats_of_one_variant(runs):
    same_data = [r for r in runs if r.name != "ones"]
    variants, differing = compare.group_variants(same_data)
    assert differing == ["learning_rate"]
    by_lr = {v.flags["learning_rate"]: v for v in variants}
    assert sorted(r.name for r in by_lr[0.1].runs) == ["lr0.1-s0", "lr0.1-s1"]
    finals = [r.metrics["final/accuracy"] for r in by_lr[0.1].runs]
    mean, std = by_lr[0.1].stat("final/accuracy")
    assert mean == pytest.approx(statistics.fmean(finals))
    assert std == pytest.approx(statistics.stdev(finals))
    assert by_lr[0.5].stat("final/accuracy")[1] == 0.0


def test_runs_on_other_data_are_never_ranked_together(runs):
    variants, differing = compare.group_variants(runs)
    assert set(differing) == {"binary_class", "learning_rate"}
    ranked = compare.rank(variants)
    assert sorted(len(group) for group in ranked) == [1, 2]
    table = compare.format_ranked(ranked, differing)
    assert "NOT COMPARABLE with the table above (different data)" in table
    assert table.count("data: mnist_sample ") == 2
    together = compare.rank(variants, allow_mismatch=True)
    assert [len(g) for g in together] == [3]
    wide = compare.format_ranked(together, differing, allow_mismatch=True)
    assert wide.splitlines()[0].split()[-1] == "data"


def test_sort_top_and_filter(runs):
    variants, _ = compare.group_variants([r for r in runs if r.name != "ones"])
    (ranked,) = compare.rank(variants, sort="best/loss")
    losses = [v.stat("best/loss")[0] for v in ranked]
    assert losses == sorted(losses)
    (ranked,) = compare.rank(variants, sort="-best/loss", top=1)
    assert [v.stat("best/loss")[0] for v in ranked] == [max(losses)]
    (ranked,) = compare.rank(
        variants, predicate=compare.parse_filter("learning_rate<0.3")
    )
    assert [v.flags["learning_rate"] for v in ranked] == [0.1]
    with pytest.raises(compare.CompareError, match="--sort=bogus: unknown field"):
        compare.rank(variants, sort="bogus")


ROW = {"model": "cnn", "best/accuracy": 0.985, "steps": 2000.0, "deterministic": True}


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        ("model==cnn", True),
        ("model!=cnn", False),
        ("model==cnn and best/accuracy>0.98", True),
        ("model==mlp and best/accuracy>0.98", False),
        ("model==mlp or best/accuracy>0.98", True),
        ("not model==mlp", True),
        ("model==mlp or steps>=2000 and best/accuracy<0.9", False),  # and binds tighter
        ("(model==mlp or steps>=2000) and best/accuracy>0.9", True),
        ("model=='cnn'", True),
        ('model=="mlp"', False),
        ("steps==2e3", True),
        ("deterministic==true", True),
        ("model>0.5", False),  # text vs number: never ordered
    ],
)
def test_filter_expressions(expression, expected):
    assert compare.parse_filter(expression)(ROW) is expected


@pytest.mark.parametrize(
    ("expression", "message"),
    [
        ("model==", "expected word, found 'end of filter'"),
        ("model cnn", "expected op, found 'cnn'"),
        ("(model==cnn", "missing '\\)'"),
        ("model==cnn)", "unexpected '\\)'"),
        ("model!cnn", "cannot read '!cnn'"),
        ("model==cnn __import__('os')", "unexpected '__import__'"),
    ],
)
def test_filter_syntax_errors(expression, message):
    with pytest.raises(compare.CompareError, match=message):
        compare.parse_filter(expression)


def test_filter_names_unknown_fields():
    with pytest.raises(compare.CompareError, match="unknown field 'modle'"):
        compare.parse_filter("modle==cnn")(ROW)


def test_formats(runs):
    variants, differing = compare.group_variants([r for r in runs if r.name != "ones"])
    ranked = compare.rank(variants)
    table = compare.format_ranked(ranked, differing).splitlines()
    assert table[0].split()[:4] == ["learning_rate", "runs", "final", "acc"]
    assert len(table) == 4
    assert " ± " in next(line for line in table[2:] if line.split()[0] == "0.1")
    markdown = compare.format_ranked(ranked, differing, "markdown").splitlines()
    assert markdown[0].startswith("| learning_rate | runs | final acc |")
    assert markdown[1].startswith("|---|")
    records = json.loads(compare.format_ranked(ranked, differing, "json"))
    assert {r["learning_rate"]: r["repeats"] for r in records} == {0.1: 2, 0.5: 1}
    assert records[0]["comparable_group"] == 0
    csv_lines = compare.format_ranked(ranked, differing, "csv").splitlines()
    assert csv_lines[0].startswith("learning_rate,repeats,final/accuracy_mean,")
    assert len(csv_lines) == 3


def test_plot_draws_a_png(runs, tmp_path):
    variants, differing = compare.group_variants([r for r in runs if r.name != "ones"])
    compare.plot_curves(variants, tmp_path / "curves.png", differing)
    with Image.open(tmp_path / "curves.png") as image:
        assert image.format == "PNG"
        assert image.size == (1100, 500)


def test_cli_prints_the_table_and_reports_skipped_runs(logdir, tmp_path):
    broken = logdir / "binary" / "broken"
    broken.mkdir(exist_ok=True)
    record = _record(logdir / "lr0.5-s0")
    record.update(status="failed", error="KeyboardInterrupt: ")
    (broken / "run.json").write_text(json.dumps(record))
    # A few MB of events: TensorBoard's own reader, no TensorFlow to import
    # (`budget.EVENT_BYTES_WORTH_TENSORFLOW`).
    result, attempted = run_without_tensorflow(
        "pipeline-compare",
        str(logdir),
        "--top=1",
        "--format=markdown",
        f"--plot={tmp_path / 'c.png'}",
        timeout=120,
    )
    assert (result.returncode, attempted) == (0, []), result.stderr
    assert result.stdout.count("| binary_class | learning_rate | runs |") == 2
    assert "2 data sets: tables are not comparable" in result.stderr
    assert f"skipped {broken} (failed: KeyboardInterrupt: )" in result.stderr
    assert (tmp_path / "c.png").is_file()
    missing = run_cli("pipeline-compare", str(tmp_path / "none"), timeout=120)
    assert missing.returncode == 1
    assert missing.stderr.strip().splitlines()[-1] == (
        f"pipeline-compare: error: {tmp_path / 'none'}: no such file or directory"
    )


def test_readme_layout_names_each_row_and_fits_120_columns(readme_layout, tmp_path):
    layout = tmp_path / "logs"
    shutil.copytree(readme_layout, layout)
    restored = restore.open_run(layout / "mlp-1")
    report, outputs, split = evaluate.evaluate_run(restored)
    evaluate.write_summaries(restored, report, outputs, split)
    result = main_in_process("pipeline-compare", str(layout))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert max(len(line) for line in lines) <= 120, result.stdout
    assert lines[0].split() == [
        "model",
        "learning_rate",
        "runs",
        "final",
        "acc",
        "eval",
        "acc",
        "eval",
        "F1",
        "status",
        "started",
    ]
    rows = {line.split()[2]: line for line in lines[2:]}
    assert sorted(rows) == [
        "logreg-1",
        "mlp-1",
        "s/learning_rate=0.05",
        "s/learning_rate=0.1",
    ]
    assert "s/learning_rate=0.1 (2 runs)" in rows["s/learning_rate=0.1"]
    assert f"{report.accuracy:.4f}" in rows["mlp-1"]
    assert rows["logreg-1"].split()[-3:-2] == ["completed"]
    assert re.search(r"completed  \d\d-\d\d \d\d:\d\d$", rows["mlp-1"])

    each = main_in_process(
        "pipeline-compare", str(layout / "s"), "--runs", "--columns=final/loss"
    )
    assert each.returncode == 0, each.stderr
    each_lines = each.stdout.splitlines()
    at = each_lines[0].index("runs")
    names = [line[at:].split()[0] for line in each_lines[2:]]
    assert names == [
        "learning_rate=0.1",
        "learning_rate=0.1,seed=0",
        "learning_rate=0.1,seed=1",
        "learning_rate=0.05",
        "learning_rate=0.05,seed=0",
        "learning_rate=0.05,seed=1",
    ] or names == [
        "learning_rate=0.05",
        "learning_rate=0.05,seed=0",
        "learning_rate=0.05,seed=1",
        "learning_rate=0.1",
        "learning_rate=0.1,seed=0",
        "learning_rate=0.1,seed=1",
    ]
    assert "final loss" in each_lines[0]


def _summary(path, **config):
    return compare.RunSummary(
        path=path,
        status="completed",
        config={"model": "cnn", **config},
        data="d",
        metrics={"final/accuracy": 0.9, "best/accuracy": 0.95},
        accuracy_curve=[],
        start_time="2026-12-06T19:40:12+00:00",
    )


def test_flags_that_do_not_fit_are_left_out_and_named(tmp_path):
    runs = [
        _summary(
            tmp_path / f"run-{i}",
            learning_rate=0.1 * (i + 1),
            batch_size=100 + i % 2,
            optimizer=("adam", "sgd")[i % 2],
            conv_filters=[32 + i % 2, 64],
            dense_units=[128 + i % 2],
            kernel_size=3 + i % 2,
            pool_size=2 + i % 2,
            conv_kernel_init=("glorot_uniform", "truncated_normal:0.1")[i % 2],
        )
        for i in range(4)
    ]
    variants, differing = compare.group_variants(runs)
    notes = []
    table = compare.format_ranked(compare.rank(variants), differing, notes=notes)
    assert max(len(line) for line in table.splitlines()) <= 120
    header = table.splitlines()[0].split()
    assert "learning_rate" in header  # the most varied flag stays
    (note,) = notes
    assert note.startswith("not shown to fit 120 columns: ")
    left_out = note.split(": ")[1].split(" (")[0].split(", ")
    assert set(left_out) | (set(header) & set(differing)) == set(differing)
    wide = compare.format_ranked(
        compare.rank(variants), differing, extra_columns=left_out
    )
    assert set(differing) <= set(wide.splitlines()[0].split())
    with pytest.raises(compare.CompareError, match="--columns=bogus: unknown column"):
        compare.format_ranked(
            compare.rank(variants), differing, extra_columns=["bogus"]
        )


def test_the_commit_column_counts_in_the_fit(tmp_path):
    runs = [
        dataclasses.replace(
            _summary(
                tmp_path / f"run-{i}",
                learning_rate=0.1 * (i + 1),
                batch_size=100 + i,
                optimizer=("adam", "sgd")[i % 2],
                kernel_size=3 + i,
                pool_size=2 + i,
                dense_units=[128 + i],
            ),
            commit=f"{i}a2b3c4+9f8e7d",
            tags=("exp1",) if i else (),
        )
        for i in range(3)
    ]
    variants, differing = compare.group_variants(runs)
    notes = []
    table = compare.format_ranked(compare.rank(variants), differing, notes=notes)
    lines = table.splitlines()
    assert lines[0].split()[-1] == "commit"
    assert max(len(line) for line in lines) <= 120
    (note,) = notes
    assert note.startswith("not shown to fit 120 columns: ")
    assert compare.code_note(compare.rank(variants)).startswith(
        "these runs ran different code (0a2b3c4+9f8e7d, 1a2b3c4+9f8e7d"
    )
    records = json.loads(
        compare.format_ranked(compare.rank(variants), differing, "json")
    )
    assert {r["commit"] for r in records} == {f"{i}a2b3c4+9f8e7d" for i in range(3)}
    tagged = compare.rank(variants, predicate=compare.parse_filter("tag==exp1"))
    assert len([v for g in tagged for v in g]) == 2
    same = [dataclasses.replace(r, commit="1a2b3c4") for r in runs]
    variants, differing = compare.group_variants(same)
    assert "commit" not in compare.format_ranked(compare.rank(variants), differing)
    assert compare.code_note(compare.rank(variants)) is None
