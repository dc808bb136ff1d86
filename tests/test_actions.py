"""Actions: how a test, a pruner or a profiler plugs into the training loop."""

from __future__ import annotations

import dataclasses
import json

from conftest import TINY, train_run

from pipeline.runs import rundir
from pipeline.training.actions import Action
from pipeline.training.chunks import StopRequest


class Observe(Action):
    """Records what the loop shows an action."""

    def __init__(self):
        self.started_at = None
        self.chunks = []
        self.evaluated = []
        self.closed = False

    def start(self, state):
        self.started_at = state.step

    def __call__(self, state, chunk):
        self.chunks.append((chunk.first_step, chunk.step, len(chunk.outputs["loss"])))
        if chunk.evaluated:
            self.evaluated.append((chunk.step, sorted(chunk.evaluation.test)))

    def close(self, state):
        self.closed = True


class StopAt(Action):
    """Ends the run cleanly after step `at`."""

    produces = frozenset({"stop"})

    def __init__(self, at):
        self.at = at

    def next_boundary(self, step):
        return self.at if step < self.at else None

    def __call__(self, state, chunk):
        if chunk.step == self.at:
            return chunk.found(stop=StopRequest(f"stopped at step {self.at}"))
        return None


def test_an_action_sees_every_chunk_and_can_stop_the_run(tmp_path):
    config = dataclasses.replace(
        TINY, model="logreg", steps=40, steps_per_loop=7, histogram_every=0
    )
    observe = Observe()
    run = train_run(tmp_path, config, "stopped", extra_actions=[observe, StopAt(13)])
    result = run.result
    assert observe.started_at == 0
    # Chunks of at most 7 steps that end on every evaluation/checkpoint (10)
    # and on the step the stopping action asked for (13).
    assert observe.chunks == [(1, 7, 7), (8, 10, 3), (11, 13, 3)]
    assert observe.evaluated == [(10, ["accuracy", "loss"])]
    assert observe.closed
    assert result.step == 13
    record = json.loads((run.path / "run.json").read_text())
    assert (record["status"], record["step"]) == ("completed", 13)
    assert (run.path / rundir.CHECKPOINT_DIR / "ckpt-13.index").exists()


def test_an_action_before_the_one_whose_finding_it_reads_is_refused():
    import pytest

    from pipeline.training.actions import Evaluate, SaveCheckpoint, check_order
    from pipeline.training.early_stopping import EarlyStopping
    from pipeline.training.loop import run_actions

    check_order(run_actions(TINY, [StopAt(13)]))  # the run's own order holds
    with pytest.raises(ValueError, match="EarlyStopping reads \\['evaluation'\\]"):
        check_order([EarlyStopping(2), Evaluate(10)])
    with pytest.raises(ValueError, match="SaveCheckpoint reads \\['stop'\\]"):
        check_order([SaveCheckpoint(10), StopAt(13)])


def test_a_finding_an_action_does_not_declare_is_refused():
    import numpy as np
    import pytest

    from pipeline.training.actions import call_actions
    from pipeline.training.chunks import Chunk

    class SilentStop(StopAt):
        produces = frozenset()

    chunk = Chunk(1, 13, 40, {"loss": np.zeros(13)}, 1.0, 13)
    assert call_actions([StopAt(13)], None, chunk).stop.reason == "stopped at step 13"
    with pytest.raises(ValueError, match="SilentStop added \\['stop'\\]"):
        call_actions([SilentStop(13)], None, chunk)


class WantGradientsAt(Action):
    """Asks for the histogram variant of the chunk ending at `at`."""

    def __init__(self, at):
        self.at = at
        self.gradients = {}

    def wants(self, step, end):
        from pipeline.training.chunks import Wants

        return Wants(histograms=end == self.at)

    def __call__(self, state, chunk):
        # The chunk's histograms: every weight, then its gradient.
        count = 0 if chunk.histograms is None else chunk.histograms.shape[0] // 2
        self.gradients[chunk.step] = count


def test_the_chunk_does_what_an_action_wants_of_it(tmp_path):
    config = dataclasses.replace(
        TINY, model="logreg", steps=6, steps_per_loop=3, histogram_every=0
    )
    want = WantGradientsAt(3)
    train_run(tmp_path, config, "wants", extra_actions=[want])
    # logreg: a kernel and a bias; histograms are off, so only step 3 has them.
    assert want.gradients == {3: 2, 6: 0}
