"""Early stopping and SIGINT/SIGTERM handling."""

from __future__ import annotations

import os
import signal

import pytest
from conftest import (
    read_events,
    record,
    signal_as_a_handler_goes_back,
    signal_at,
    tensor_series,
    train_run,
)

from pipeline.config import TrainConfig

EARLY = TrainConfig(
    model="mlp",
    hidden_units=32,
    optimizer="adam",
    learning_rate=0.05,
    validation_split=0.2,
    early_stopping_patience=2,
    steps=300,
    batch_size=16,
    eval_every=10,
    checkpoint_every=50,
    print_every=50,
    histogram_every=0,
    image_count=0,
)


@pytest.fixture(scope="module")
def early_runs(tmp_path_factory):
    """An early-stopped run, and the same run interrupted at step 50 and resumed."""
    from pipeline.training import loop

    logdir = tmp_path_factory.mktemp("early")
    whole = train_run(logdir, EARLY, "whole")

    with pytest.raises(loop.TrainingInterruptedError):
        train_run(logdir, EARLY, "split", extra_actions=[signal_at(50, signal.SIGINT)])
    split = train_run(logdir, EARLY, "split", resume=True)
    return {"whole": whole.path, "split": split.path, "result": whole.result}


def test_early_stopping_records_why_and_when(early_runs):
    rec = record(early_runs["whole"])
    assert rec["status"] == "completed"
    assert rec["stopped_early"] is True
    assert rec["step"] < EARLY.steps
    assert rec["best_step"] < rec["step"]
    assert (
        rec["step"] - rec["best_step"]
        == EARLY.early_stopping_patience * EARLY.eval_every
    )
    assert rec["stop_reason"] == (
        f"early stopping at step {rec['step']}: validation loss has not improved for "
        f"2 evaluations (patience 2); best {rec['best_validation_loss']:.6f} at step "
        f"{rec['best_step']}"
    )
    train_series = tensor_series(early_runs["whole"] / "train")
    assert train_series["events/early_stopped"] == [
        (rec["step"], float(rec["best_step"]))
    ]
    assert (
        early_runs["whole"] / "checkpoints" / "best" / f"ckpt-{rec['best_step']}.index"
    ).exists()


def test_early_stopping_text_summary(early_runs):
    acc = read_events(early_runs["whole"] / "train")
    events = acc.Tensors("early_stopping")
    assert [e.step for e in events] == [record(early_runs["whole"])["step"]]
    assert acc.SummaryMetadata("early_stopping").plugin_data.plugin_name == "text"


def test_final_test_metrics_are_the_best_models(early_runs):
    rec = record(early_runs["whole"])
    test = dict(
        (tag, dict(points)[rec["best_step"]])
        for tag, points in tensor_series(early_runs["whole"] / "test").items()
    )
    assert rec["final_metrics"]["test"]["loss"] == pytest.approx(test["loss"], rel=1e-6)
    assert rec["final_metrics"]["test"]["accuracy"] == pytest.approx(test["accuracy"])
    last = tensor_series(early_runs["whole"] / "validation")["loss"][-1][1]
    assert rec["best_validation_loss"] < last
    assert early_runs["result"].checkpoint.endswith(f"best/ckpt-{rec['best_step']}")


def test_interrupted_early_stopping_run_stops_at_the_same_step(early_runs):
    whole, split = record(early_runs["whole"]), record(early_runs["split"])
    assert split["resumes"][0]["previous_status"] == "interrupted"
    for key in ("step", "best_step", "stop_reason", "final_metrics"):
        assert split[key] == whole[key], key


def test_graceful_stop_records_the_signal_and_restores_handlers():
    from pipeline.training import signals

    before = signal.getsignal(signal.SIGTERM)
    with signals.GracefulStop() as stop:
        assert not stop.requested
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.requested
        assert stop.signal_name == "SIGTERM"
        # After the first signal the previous handler is back: a second
        # signal would act at once.
        assert signal.getsignal(signal.SIGTERM) == before
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_a_signal_landing_while_the_handlers_go_back_is_the_same_request():
    """Two stop signals can come together (they did when a test killed a
    sweep): one arriving while the first one's handler puts the handlers
    back is part of the same request. (It once raised
    "dictionary changed size during iteration" out of the training loop, and
    the run was recorded failed instead of interrupted.) The second signal is
    sent, for real, right after the first handler is put back."""
    from pipeline.training import signals

    pair = (signal.SIGUSR1, signal.SIGUSR2)
    before = [signal.getsignal(s) for s in pair]
    with (
        signals.GracefulStop(pair) as stop,
        signal_as_a_handler_goes_back("uninstall", pair[1]) as sent,
    ):
        os.kill(os.getpid(), pair[0])
    assert sent == [pair[1]]
    assert stop.signal_name == "SIGUSR1"
    assert [signal.getsignal(s) for s in pair] == before


@pytest.mark.parametrize(
    ("losses", "stops_after", "best_step"),
    [
        ([1.0, 0.9, 0.95, 0.97], 4, 2),
        ([1.0, 0.9, 0.8, 0.7], None, 4),
        ([1.0, 1.0, 1.0], 3, 1),  # equal is not better
    ],
)
def test_early_stopping_patience(losses, stops_after, best_step):
    from pipeline.training.early_stopping import EarlyStopping

    es = EarlyStopping(patience=2)
    stopped = None
    for i, loss in enumerate(losses, start=1):
        es.update(i, loss)
        if es.should_stop and stopped is None:
            stopped = i
    assert stopped == stops_after
    assert int(es.best_step.numpy()) == best_step
