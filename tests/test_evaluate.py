import json

import numpy as np
import pytest
import tensorflow as tf
from conftest import (
    CHECKPOINT_STEPS,
    copy_run,
    error_lines,
    main_in_process,
    read_events,
    run_cli,
    snapshot,
)

from pipeline.runs import restore
from pipeline.tools import evaluate, predict

MLP_TAGS = {
    "loss": "scalars",
    "accuracy": "scalars",
    "precision_macro": "scalars",
    "recall_macro": "scalars",
    "f1_macro": "scalars",
    "confusion_matrix": "images",
    "most_confident_mistakes": "images",
    **{f"pr_curve/class_{k}": "pr_curves" for k in range(10)},
}


def load_events(directory):
    return read_events(directory)


def logged_value(directory, tag, step):
    (event,) = [e for e in load_events(directory).Tensors(tag) if e.step == step]
    return float(tf.make_ndarray(event.tensor_proto))


@pytest.fixture(scope="module")
def evaluated(mlp_run, tmp_path_factory):
    """The mlp run's step-20 checkpoint evaluated and written, in a private copy."""
    run = copy_run(mlp_run, tmp_path_factory.mktemp("evaluated"))
    restored = restore.open_run(run, 20)
    report, outputs, split = evaluate.evaluate_run(restored)
    evaluate.write_summaries(restored, report, outputs, split)
    return restored, report, outputs, split


@pytest.mark.parametrize("step", CHECKPOINT_STEPS["mlp"])
def test_accuracy_and_loss_equal_what_training_logged_at_that_step(mlp_run, step):
    report, _, _ = evaluate.evaluate_run(restore.open_run(mlp_run, step))
    assert report.step == step
    assert report.examples == 2000
    assert np.float32(report.accuracy) == logged_value(
        mlp_run / "test", "accuracy", step
    )
    assert report.loss == pytest.approx(
        logged_value(mlp_run / "test", "loss", step), rel=1e-5
    )


def test_latest_checkpoint_is_the_last_step(mlp_run):
    assert restore.open_run(mlp_run).step == 30


def test_eval_writes_every_tag_once_at_the_checkpoint_step(evaluated):
    restored = evaluated[0]
    acc = load_events(restored.run_dir.path / "eval")
    tags = acc.Tags()["tensors"]
    assert {tag: acc.SummaryMetadata(tag).plugin_data.plugin_name for tag in tags} == (
        MLP_TAGS
    )
    assert {tag: [e.step for e in acc.Tensors(tag)] for tag in tags} == {
        tag: [20] for tag in MLP_TAGS
    }


def test_eval_scalars_are_the_report(evaluated):
    restored, report = evaluated[:2]
    eval_dir = restored.run_dir.path / "eval"
    assert logged_value(eval_dir, "accuracy", 20) == np.float32(report.accuracy)
    assert logged_value(eval_dir, "precision_macro", 20) == np.float32(
        report.macro["precision"]
    )


def test_images_are_png_of_the_expected_size(evaluated):
    acc = load_events(evaluated[0].run_dir.path / "eval")
    shapes = {}
    for tag in ("confusion_matrix", "most_confident_mistakes"):
        width, height, png = tf.make_ndarray(acc.Tensors(tag)[0].tensor_proto)
        shapes[tag] = tf.io.decode_png(png).shape.as_list()
        assert shapes[tag] == [int(height), int(width), 3]
    # 24 mistakes: 3 rows of 8 tiles, 112 px digit + 32 px caption + 2 px border.
    assert shapes["most_confident_mistakes"] == [3 * 146 + 2, 8 * 114 + 2, 3]


def test_pr_curves_at_threshold_half_match_numpy(evaluated):
    restored, _, _, split = evaluated
    # Probabilities through pipeline-predict's path, not eval's, so the check
    # does not reuse the numbers the curves were built from.
    probs = predict.predict_probabilities(restored.load_model(), split.images)
    acc = load_events(restored.run_dir.path / "eval")
    for k in range(10):
        data = tf.make_ndarray(acc.Tensors(f"pr_curve/class_{k}")[0].tensor_proto)
        assert data.shape == (6, evaluate.NUM_THRESHOLDS)
        tp, fp, tn, fn, precision, recall = data[:, 100]  # threshold 100/200 = 0.5
        called = probs[:, k] >= 0.5
        actual = split.labels == k
        expected_tp = np.sum(called & actual)
        expected_fp = np.sum(called & ~actual)
        assert (tp, fp, tn, fn) == (
            expected_tp,
            expected_fp,
            np.sum(~called & ~actual),
            np.sum(~called & actual),
        )
        assert precision == pytest.approx(
            expected_tp / max(expected_tp + expected_fp, 1), abs=1e-6
        )
        assert recall == pytest.approx(expected_tp / np.sum(actual), abs=1e-6)


def test_mistakes_are_wrong_and_most_confident_first(evaluated):
    outputs = evaluated[2]
    wrong = evaluate.most_confident_mistakes(outputs, 24)
    predicted = outputs.predicted
    assert len(wrong) == 24
    assert np.all(predicted[wrong] != outputs.labels[wrong])
    confidence = outputs.probabilities[wrong, predicted[wrong]]
    assert np.all(np.diff(confidence) <= 0)
    others = np.setdiff1d(np.flatnonzero(predicted != outputs.labels), wrong)
    assert outputs.probabilities[others, predicted[others]].max() <= confidence[-1]


def test_confusion_matrix_and_per_class_metrics_by_hand():
    labels = np.array([0, 0, 1, 1, 2])
    predicted = np.array([0, 1, 1, 1, 0])
    matrix = evaluate.confusion_matrix(labels, predicted, 3)
    assert matrix.tolist() == [[1, 1, 0], [0, 2, 0], [1, 0, 0]]
    rows = evaluate.per_class_metrics(matrix, ["0", "1", "2"])
    assert [(r["precision"], r["recall"], r["support"]) for r in rows] == [
        (0.5, 0.5, 2),
        (pytest.approx(2 / 3), 1.0, 2),
        (0.0, 0.0, 1),  # never predicted: undefined precision counts as 0
    ]
    assert rows[1]["f1"] == pytest.approx(0.8)
    assert evaluate.macro_average(rows)["recall"] == pytest.approx(0.5)


def test_pr_curve_data_by_hand():
    curve = evaluate.pr_curve_data(
        np.array([True, False, True, False]),
        np.array([0.9, 0.6, 0.4, 0.2]),
        num_thresholds=3,
    )
    assert curve["thresholds"].tolist() == [0.0, 0.5, 1.0]
    assert curve["tp"].tolist() == [2, 1, 0]
    assert curve["fp"].tolist() == [2, 1, 0]
    assert curve["tn"].tolist() == [0, 1, 2]
    assert curve["fn"].tolist() == [0, 1, 2]
    assert curve["precision"].tolist() == [0.5, 0.5, 0.0]
    assert curve["recall"].tolist() == [1.0, 0.5, 0.0]


def test_text_report_shows_tables(evaluated):
    report = evaluated[1]
    text = evaluate.format_report(report)
    assert f"accuracy    {report.accuracy:.4f}" in text
    assert "class  precision  recall  f1      support" in text
    assert "confusion matrix (rows: true class, columns: predicted class)" in text
    matrix_lines = text.split("columns: predicted class)\n")[1].splitlines()
    assert matrix_lines[0].split() == [str(k) for k in range(10)]
    row_3 = matrix_lines[4]
    assert [int(v) for v in row_3.split()[1:]] == report.confusion[3].tolist()


def test_binary_run_uses_true_false_positive_definitions(binary_run, tmp_path):
    run = copy_run(binary_run, tmp_path)
    restored = restore.open_run(run)
    report, outputs, split = evaluate.evaluate_run(restored)
    evaluate.write_summaries(restored, report, outputs, split)

    p = predict.predict_probabilities(restored.load_model(), split.images)
    assert p.shape == (2000,)
    called, actual = p > 0.5, split.labels == 1
    tp, fp = np.sum(called & actual), np.sum(called & ~actual)
    tn, fn = np.sum(~called & ~actual), np.sum(~called & actual)
    binary = report.binary
    assert (binary["tp"], binary["fp"], binary["tn"], binary["fn"]) == (tp, fp, tn, fn)
    assert binary["positive_class"] == 3
    assert binary["precision"] == pytest.approx(tp / (tp + fp))
    assert binary["recall"] == pytest.approx(tp / (tp + fn))
    assert report.accuracy == pytest.approx((tp + tn) / 2000)
    assert np.float32(report.accuracy) == logged_value(run / "test", "accuracy", 20)
    assert "precision  TP/(TP+FP)" in evaluate.format_report(report)

    acc = load_events(run / "eval")
    assert set(acc.Tags()["tensors"]) == {
        "loss",
        "accuracy",
        "precision",
        "recall",
        "f1",
        "confusion_matrix",
        "most_confident_mistakes",
        "pr_curve/is_3",
    }
    curve = tf.make_ndarray(acc.Tensors("pr_curve/is_3")[0].tensor_proto)
    assert curve[:4, 100].tolist() == [tp, fp, tn, fn]


def test_cli_json_report_and_eval_summaries(mlp_run, tmp_path):
    run = copy_run(mlp_run, tmp_path)
    # pipeline-eval's main in this process (test_console.py runs the real
    # program to exit 0, test_cli_run_without_checkpoint to exit 1).
    result = main_in_process(
        "pipeline-eval", f"--run={run}", "--checkpoint=10", "--format=json"
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["step"] == 10
    assert report["examples"] == 2000
    assert np.float32(report["accuracy"]) == logged_value(run / "test", "accuracy", 10)
    assert np.sum(report["confusion_matrix"]) == 2000
    assert [row["class"] for row in report["per_class"]] == [str(k) for k in range(10)]
    assert report["summaries"] == str(run / "eval")
    acc = load_events(run / "eval")
    assert [e.step for e in acc.Tensors("accuracy")] == [10]


def test_cli_text_report_without_summaries_writes_nothing(mlp_run):
    before = snapshot(mlp_run)
    result = main_in_process("pipeline-eval", f"--run={mlp_run}", "--nowrite_summaries")
    assert result.returncode == 0, result.stderr
    assert f"checkpoint  {mlp_run}/checkpoints/ckpt-30 (step 30)" in result.stdout
    assert "macro  " in result.stdout
    assert snapshot(mlp_run) == before


@pytest.mark.parametrize(
    ("make_args", "message"),
    [
        (
            lambda run, tmp: [f"--run={tmp / 'missing'}"],
            "missing: run directory not found",
        ),
        (
            lambda run, tmp: [f"--run={run}", "--checkpoint=25"],
            "--checkpoint=25: no checkpoint at that step",
        ),
        (
            lambda run, tmp: [f"--run={run}", "--split=validation"],
            "--split=validation: run mlp was trained without --validation_split",
        ),
    ],
    ids=["missing-run", "unknown-step", "no-validation-split"],
)
def test_cli_bad_input_is_one_line_and_writes_nothing(
    mlp_run, tmp_path, make_args, message
):
    before = snapshot(mlp_run)
    result = main_in_process("pipeline-eval", *make_args(mlp_run, tmp_path))
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    (line,) = error_lines(result.stderr, "pipeline-eval")
    assert message in line
    assert snapshot(mlp_run) == before


def test_cli_run_without_checkpoint(mlp_run, tmp_path):
    run = tmp_path / "fresh"
    run.mkdir()
    (run / "run.json").write_text((mlp_run / "run.json").read_text())
    result = run_cli("pipeline-eval", f"--run={run}")
    assert result.returncode == 1
    (line,) = error_lines(result.stderr, "pipeline-eval")
    assert line == (
        f"pipeline-eval: error: {run / 'checkpoints'}: no checkpoint saved yet "
        "(nothing to restore)"
    )
    assert sorted(p.name for p in run.iterdir()) == ["run.json"]


def test_other_splits_get_their_own_writer(mlp_run):
    restored = restore.open_run(mlp_run)
    assert evaluate.writer_name(restored, "mnist_sample", "test") == "eval"
    assert (
        evaluate.writer_name(restored, "mnist_sample", "train")
        == "eval_mnist_sample_train"
    )
    assert (
        evaluate.writer_name(restored, "fashion_mnist", "test")
        == "eval_fashion_mnist_test"
    )
