"""Evaluate a checkpoint on a full split: metrics, confusion matrix, PR curves.

`evaluate_run` restores a run's checkpoint, evaluates every example of a split
with the same compiled evaluation training uses (`steps.make_eval_fn`: the
same preprocessing, batching and float64 sums), and returns an `EvalReport`;
`write_summaries` puts it into the run's `eval/` writer at the checkpoint's
step. Everything is computed before anything is written, so a
failure leaves the run untouched.

Multi-class runs report per-class precision/recall/F1 (one class against the
rest) and their unweighted (macro) means. Binary runs ("is it a K?") report
the true/false positive/negative counts and precision = TP / (TP + FP),
recall = TP / (TP + FN), accuracy = (TP + TN) / N for the positive class K.
Undefined ratios (no predicted or no actual positives) count as 0.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from typing import Any

import keras
import numpy as np
import tensorflow as tf
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image, ImageDraw, ImageFont

from pipeline import data as data_lib
from pipeline import models
from pipeline.runs.restore import RestoredRun
from pipeline.tensorboard.summaries import SummaryLogger
from pipeline.training import steps
from pipeline.training.steps import EVAL_BATCH_SIZE

# 201 evenly spaced thresholds put one exactly at 0.5 (index 100).
NUM_THRESHOLDS = 201
DEFAULT_MISTAKES = 24


@dataclasses.dataclass(frozen=True)
class Outputs:
    """Per-example model outputs over one split, in the split's order."""

    logits: np.ndarray  # float32 [N, C] (C = 1 for a binary run)
    labels: np.ndarray  # int32 [N]
    loss: float  # mean cross-entropy over the split (float64 sum)

    @functools.cached_property
    def predicted(self) -> np.ndarray:
        """Predicted class per example (threshold 0 on a single logit)."""
        return models.predicted_class(tf.constant(self.logits)).numpy()

    @functools.cached_property
    def probabilities(self) -> np.ndarray:
        """[N, 10] softmax, or [N, 2] = [1 - p, p] for a binary run."""
        probs = models.probabilities(tf.constant(self.logits)).numpy()
        if probs.ndim == 1:
            return np.stack([1.0 - probs, probs], axis=1)
        return probs


@dataclasses.dataclass(frozen=True)
class EvalReport:
    """Everything `pipeline-eval` prints and writes, as plain values."""

    run: str
    step: int
    checkpoint: str
    dataset: str
    split: str
    examples: int
    loss: float
    accuracy: float
    class_names: list[str]
    confusion: np.ndarray  # int64 [K, K]: rows true class, columns predicted
    per_class: list[dict[str, float]]
    macro: dict[str, float]
    binary_class: int | None = None

    @property
    def binary(self) -> dict[str, float] | None:
        """TP/FP/TN/FN and positive-class precision/recall/F1 for a binary run."""
        if self.binary_class is None:
            return None
        (tn, fp), (fn, tp) = self.confusion.tolist()
        positive = self.per_class[1]
        return {
            "positive_class": self.binary_class,
            "tp": tp,
            "fp": fp,
            "tn": tn,
            "fn": fn,
            "precision": positive["precision"],
            "recall": positive["recall"],
            "f1": positive["f1"],
        }

    def scalars(self) -> dict[str, float]:
        """The values written as TensorBoard scalars.

        `loss` and `accuracy` share their tags with train/ and test/, so the
        eval point lands on the same charts as training's curves.
        """
        values = {"loss": self.loss, "accuracy": self.accuracy}
        if self.binary is not None:
            for key in ("precision", "recall", "f1"):
                values[key] = self.binary[key]
        else:
            for key in ("precision", "recall", "f1"):
                values[f"{key}_macro"] = self.macro[key]
        return values

    def to_json(self) -> dict[str, Any]:
        """JSON-ready dict (`pipeline-eval --format=json`)."""
        return {
            "run": self.run,
            "step": self.step,
            "checkpoint": self.checkpoint,
            "dataset": self.dataset,
            "split": self.split,
            "examples": self.examples,
            "loss": self.loss,
            "accuracy": self.accuracy,
            "classes": self.class_names,
            "per_class": self.per_class,
            "macro": self.macro,
            "confusion_matrix": self.confusion.tolist(),
            "binary": self.binary,
        }


def predict_outputs(
    model: keras.Model,
    split: data_lib.Split,
    batch_size: int = EVAL_BATCH_SIZE,
    input_scale: str = "unit",
) -> Outputs:
    """Logits for every example and the mean loss, by training's evaluation
    (`input_scale`: the run's --input_scale)."""
    evaluate = steps.make_eval_fn(model, batch_size, input_scale, with_logits=True)
    labels = split.labels.astype(np.int32)
    metrics = evaluate(tf.constant(split.images), tf.constant(labels))
    return Outputs(metrics["logits"].numpy(), labels, float(metrics["loss"]))


def confusion_matrix(
    labels: np.ndarray, predicted: np.ndarray, num_classes: int
) -> np.ndarray:
    """[K, K] counts: row = true class, column = predicted class."""
    matrix = np.zeros((num_classes, num_classes), np.int64)
    np.add.at(matrix, (np.asarray(labels), np.asarray(predicted)), 1)
    return matrix


def _ratio(numerator: float, denominator: float) -> float:
    return float(numerator / denominator) if denominator else 0.0


def per_class_metrics(confusion: np.ndarray, names: list[str]) -> list[dict[str, Any]]:
    """Precision, recall, F1 and support of each class against the rest."""
    rows = []
    for k, name in enumerate(names):
        tp = confusion[k, k]
        precision = _ratio(tp, confusion[:, k].sum())
        recall = _ratio(tp, confusion[k, :].sum())
        rows.append(
            {
                "class": name,
                "precision": precision,
                "recall": recall,
                "f1": _ratio(2 * precision * recall, precision + recall),
                "support": int(confusion[k, :].sum()),
            }
        )
    return rows


def macro_average(per_class: list[dict[str, Any]]) -> dict[str, float]:
    """Unweighted means over classes (every class counts the same)."""
    return {
        key: float(np.mean([row[key] for row in per_class]))
        for key in ("precision", "recall", "f1")
    }


def pr_curve_data(
    is_positive: np.ndarray, scores: np.ndarray, num_thresholds: int = NUM_THRESHOLDS
) -> dict[str, np.ndarray]:
    """Counts and precision/recall at `num_thresholds` thresholds over [0, 1].

    An example is predicted positive at threshold t when its score >= t (the
    pr_curve plugin's convention); precision and recall are 0 where undefined.
    """
    is_positive = np.asarray(is_positive, bool)
    scores = np.asarray(scores, np.float64)
    thresholds = np.arange(num_thresholds) / (num_thresholds - 1)
    pos_scores = np.sort(scores[is_positive])
    neg_scores = np.sort(scores[~is_positive])
    tp = len(pos_scores) - np.searchsorted(pos_scores, thresholds, side="left")
    fp = len(neg_scores) - np.searchsorted(neg_scores, thresholds, side="left")
    fn = len(pos_scores) - tp
    tn = len(neg_scores) - fp
    precision = np.where(tp + fp > 0, tp / np.maximum(tp + fp, 1), 0.0)
    recall = np.where(tp + fn > 0, tp / np.maximum(tp + fn, 1), 0.0)
    return {
        "thresholds": thresholds,
        "tp": tp.astype(np.float64),
        "fp": fp.astype(np.float64),
        "tn": tn.astype(np.float64),
        "fn": fn.astype(np.float64),
        "precision": precision,
        "recall": recall,
    }


def pr_curves(
    outputs: Outputs, binary_class: int | None
) -> dict[str, dict[str, np.ndarray]]:
    """One curve per class (one against the rest); one curve for a binary run."""
    probs = outputs.probabilities
    if binary_class is not None:
        return {
            f"pr_curve/is_{binary_class}": pr_curve_data(
                outputs.labels == 1, probs[:, 1]
            )
        }
    return {
        f"pr_curve/class_{k}": pr_curve_data(outputs.labels == k, probs[:, k])
        for k in range(probs.shape[1])
    }


def most_confident_mistakes(outputs: Outputs, count: int) -> np.ndarray:
    """Indices of up to `count` wrong predictions, most confident first."""
    predicted = outputs.predicted
    wrong = np.flatnonzero(predicted != outputs.labels)
    confidence = outputs.probabilities[wrong, predicted[wrong]]
    order = np.argsort(-confidence, kind="stable")
    return wrong[order[:count]]


def build_report(
    restored: RestoredRun, dataset: str, split: str, outputs: Outputs
) -> EvalReport:
    """Turns a split's outputs into the metrics `pipeline-eval` reports."""
    binary_class = restored.config.binary_class
    names = data_lib.class_names(binary_class)
    confusion = confusion_matrix(outputs.labels, outputs.predicted, len(names))
    per_class = per_class_metrics(confusion, names)
    return EvalReport(
        run=str(restored.run_dir.path),
        step=restored.step,
        checkpoint=restored.checkpoint_prefix,
        dataset=dataset,
        split=split,
        examples=len(outputs.labels),
        loss=outputs.loss,
        accuracy=float(np.trace(confusion) / confusion.sum()),
        class_names=names,
        confusion=confusion,
        per_class=per_class,
        macro=macro_average(per_class),
        binary_class=binary_class,
    )


def writer_name(restored: RestoredRun, dataset: str, split: str) -> str:
    """`eval` for the run's own test split; `eval_<dataset>_<split>` otherwise,
    so evaluations of other data never mix with the run's own curve."""
    if dataset == restored.config.dataset and split == "test":
        return "eval"
    return f"eval_{dataset}_{split}"


def confusion_matrix_image(confusion: np.ndarray, names: list[str]) -> np.ndarray:
    """The matrix as a heatmap with counts: uint8 [H, W, 3]."""
    size = 2.0 + 0.5 * len(names)
    figure = Figure(figsize=(size, size), dpi=80)
    canvas = FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    row_totals = np.maximum(confusion.sum(axis=1, keepdims=True), 1)
    axes.imshow(confusion / row_totals, cmap="Blues", vmin=0.0, vmax=1.0)
    ticks = np.arange(len(names))
    axes.set_xticks(ticks, names)
    axes.set_yticks(ticks, names)
    axes.set_xlabel("predicted class")
    axes.set_ylabel("true class")
    for (i, j), count in np.ndenumerate(confusion):
        share = count / row_totals[i, 0]
        axes.text(
            j,
            i,
            str(count),
            ha="center",
            va="center",
            fontsize=8,
            color="white" if share > 0.5 else "black",
        )
    figure.tight_layout()
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


def mistakes_grid(
    images: np.ndarray,
    true_names: list[str],
    predicted_names: list[str],
    confidences: np.ndarray,
    columns: int = 8,
    scale: int = 4,
) -> np.ndarray:
    """Digits enlarged `scale` times, each captioned `true X` / `pred Y 0.97`.

    Returns uint8 [H, W, 3]; an empty grid (no mistakes) is one blank tile.
    """
    font = ImageFont.load_default(size=13)
    tile_w = 28 * scale
    caption_h = 32
    tile_h = tile_w + caption_h
    n = max(len(images), 1)
    columns = min(columns, n)
    rows = -(-n // columns)
    grid = Image.new(
        "RGB", (columns * (tile_w + 2) + 2, rows * (tile_h + 2) + 2), (96, 96, 96)
    )
    draw = ImageDraw.Draw(grid)
    for i, image in enumerate(images):
        r, c = divmod(i, columns)
        x, y = 2 + c * (tile_w + 2), 2 + r * (tile_h + 2)
        digit = Image.fromarray(np.asarray(image, np.uint8)).resize(
            (tile_w, tile_w), Image.Resampling.NEAREST
        )
        grid.paste(digit.convert("RGB"), (x, y))
        draw.rectangle(
            (x, y + tile_w, x + tile_w - 1, y + tile_h - 1), fill=(255, 255, 255)
        )
        draw.text(
            (x + 3, y + tile_w + 1),
            f"true {true_names[i]}",
            fill=(0, 110, 0),
            font=font,
        )
        draw.text(
            (x + 3, y + tile_w + 16),
            f"pred {predicted_names[i]} {confidences[i]:.2f}",
            fill=(200, 0, 0),
            font=font,
        )
    return np.asarray(grid)


def write_summaries(
    restored: RestoredRun,
    report: EvalReport,
    outputs: Outputs,
    split: data_lib.Split,
    writer: str = "eval",
    mistakes: int = DEFAULT_MISTAKES,
) -> None:
    """Writes the report into the run's `writer` directory at the checkpoint's step."""
    names = report.class_names
    step = restored.step
    confusion_image = confusion_matrix_image(report.confusion, names)
    curves = pr_curves(outputs, report.binary_class)
    grid = None
    if mistakes > 0:
        wrong = most_confident_mistakes(outputs, mistakes)
        predicted = outputs.predicted[wrong]
        grid = mistakes_grid(
            split.images[wrong],
            [names[k] for k in outputs.labels[wrong]],
            [names[k] for k in predicted],
            outputs.probabilities[wrong, predicted],
        )
    with SummaryLogger(restored.run_dir.path) as logger:
        logger.scalars(writer, step, report.scalars())
        logger.image(writer, step, "confusion_matrix", confusion_image)
        for tag, curve in curves.items():
            logger.pr_curve(writer, step, tag, curve)
        if grid is not None:
            logger.image(writer, step, "most_confident_mistakes", grid)


def evaluate_split(
    restored: RestoredRun,
    dataset: str,
    split_name: str,
    split: data_lib.Split,
    batch_size: int = EVAL_BATCH_SIZE,
    model: keras.Model | None = None,
) -> tuple[EvalReport, Outputs]:
    """Evaluates `split` in full with `model` (by default the restored
    checkpoint's; pass it when the caller uses the model again, so the
    checkpoint is read once). Writes nothing."""
    if model is None:
        model = restored.load_model()
    outputs = predict_outputs(model, split, batch_size, restored.config.input_scale)
    return build_report(restored, dataset, split_name, outputs), outputs


def evaluate_run(
    restored: RestoredRun,
    split: str = "test",
    dataset: str | None = None,
    data_dir: str | None = None,
    batch_size: int = EVAL_BATCH_SIZE,
) -> tuple[EvalReport, Outputs, data_lib.Split]:
    """Loads the split the way training cut it, then `evaluate_split`."""
    dataset_name, chosen = restored.load_split(split, dataset, data_dir)
    report, outputs = evaluate_split(restored, dataset_name, split, chosen, batch_size)
    return report, outputs, chosen


def format_report(report: EvalReport) -> str:
    """The report as aligned plain-text tables."""
    lines = [
        f"run         {report.run}",
        f"checkpoint  {report.checkpoint} (step {report.step})",
        f"data        {report.dataset} / {report.split} ({report.examples:,} examples)",
        f"loss        {report.loss:.4f}",
        f"accuracy    {report.accuracy:.4f}",
        "",
    ]
    binary = report.binary
    if binary is not None:
        k = binary["positive_class"]
        lines += [
            f"positive class: {k} (TP: a {k} called {k}; FP: another digit called {k})",
            "  ".join(
                f"{key.upper()} {binary[key]}" for key in ("tp", "fp", "tn", "fn")
            ),
            f"precision  TP/(TP+FP)         {binary['precision']:.4f}",
            f"recall     TP/(TP+FN)         {binary['recall']:.4f}",
            f"f1         2PR/(P+R)          {binary['f1']:.4f}",
            f"accuracy   (TP+TN)/N          {report.accuracy:.4f}",
            "",
        ]
    width = max(len(name) for name in report.class_names + ["macro"])
    lines.append(f"{'class':<{width}}  precision  recall  f1      support")
    for row in report.per_class:
        lines.append(
            f"{row['class']:<{width}}  {row['precision']:9.4f}  {row['recall']:6.4f}"
            f"  {row['f1']:6.4f}  {row['support']:7d}"
        )
    macro = report.macro
    lines.append(
        f"{'macro':<{width}}  {macro['precision']:9.4f}  {macro['recall']:6.4f}"
        f"  {macro['f1']:6.4f}  {report.examples:7d}"
    )
    lines += ["", "confusion matrix (rows: true class, columns: predicted class)"]
    cell = max(len(str(report.confusion.max())), *(len(n) for n in report.class_names))
    header = " " * width + "".join(f"  {name:>{cell}}" for name in report.class_names)
    lines.append(header)
    for name, row in zip(report.class_names, report.confusion, strict=True):
        lines.append(
            f"{name:<{width}}" + "".join(f"  {count:>{cell}d}" for count in row)
        )
    return "\n".join(lines)


def report_json_text(report: EvalReport, summaries: str | None) -> str:
    """`--format=json` output: the report plus where summaries went."""
    return json.dumps({**report.to_json(), "summaries": summaries}, indent=2)
