"""The multi-step loop: no retracing, every step's scalars, budgeted histograms."""

from __future__ import annotations

import dataclasses

from conftest import MULTI_STEP, TINY, read_events, train_run


def _steps(path, tag):
    acc = read_events(path)
    return [e.step for e in acc.Tensors(tag)], acc


def test_each_compiled_function_traces_once(tiny_run):
    counts = tiny_run.result.trace_counts
    assert {"train_loop", "train_step", "evaluate", "gradients"} <= set(counts)
    assert counts == {name: 1 for name in counts}


def test_every_step_has_its_own_scalars(tiny_run):
    steps, acc = _steps(tiny_run.path / "train", "loss")
    assert steps == list(range(1, MULTI_STEP.steps + 1))
    assert [e.step for e in acc.Tensors("accuracy")] == steps
    assert acc.SummaryMetadata("loss").plugin_data.plugin_name == "scalars"
    # Constant within a chunk: written once, at each chunk's last step.
    assert [e.step for e in acc.Tensors("examples_per_sec")] == [10, 15, 20, 30, 37]


def test_histograms_span_first_and_last_step(tiny_run):
    steps, acc = _steps(tiny_run.path / "train", "mlp/logits/kernel")
    assert steps == [0, 10, 20, 30, 37]
    assert acc.SummaryMetadata("mlp/logits/kernel").plugin_data.plugin_name == (
        "histograms"
    )
    # The gradients each histogram step applied: none at step 0.
    assert [e.step for e in acc.Tensors("gradients/mlp/logits/kernel")] == steps[1:]


def test_eval_at_interval_and_end(tiny_run):
    steps, _ = _steps(tiny_run.path / "test", "loss")
    assert steps == [15, 30, 37]


def test_a_run_without_histograms_never_traces_the_histogram_step(tmp_path):
    """`--histogram_every=0`: the step that hands back its gradients is not
    in the compiled loop (tracing it only slowed the first chunk)."""
    config = dataclasses.replace(TINY, histogram_every=0, steps=3)
    counts = train_run(tmp_path, config, "no_histograms").result.trace_counts
    assert counts["train_loop"] == counts["train_step"] == 1
    assert counts["gradients"] == 0
