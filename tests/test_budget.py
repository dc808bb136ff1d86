"""Event-file budget: interval thinning (pure), schedule, bytes per plugin."""

from __future__ import annotations

import pytest

from pipeline.tensorboard import budget

MB = 1_000_000


@pytest.mark.parametrize(
    ("spent", "per_step", "per_write", "budget_bytes", "expected"),
    [
        # 9,900 steps left at 100 B/step = 0.99 MB + 100 writes of 1 kB: fits 2 MB.
        (0, 100, 1000, 2 * MB, 100),
        # Unlimited budget: never thins.
        (50 * MB, 1000, 10**6, 0, 100),
        # 100 writes of 20 kB = 2 MB do not fit in 1.5 MB; every 200 (50 writes) does.
        (0, 0, 20_000, int(1.5 * MB), 200),
        # Scalars alone overflow: the interval grows to the remaining steps.
        (0, 1000, 1000, MB, 12_800),
    ],
)
def test_thinned_interval(spent, per_step, per_write, budget_bytes, expected):
    got = budget.thinned_interval(
        every=100,
        step=100,
        total_steps=10_000,
        spent_bytes=spent,
        bytes_per_step=per_step,
        bytes_per_write=per_write,
        budget_bytes=budget_bytes,
    )
    assert got == expected


def test_thinned_interval_projection_fits_budget():
    interval = budget.thinned_interval(100, 0, 100_000, 0, 10, 50_000, 10 * MB)
    writes = 100_000 // interval + 1
    assert 100_000 * 10 + writes * 50_000 <= 10 * MB
    assert 100_000 * 10 + (100_000 // (interval // 2) + 1) * 50_000 > 10 * MB


def test_schedule_writes_first_and_last_step_and_thins():
    schedule = budget.ThinningSchedule(every=10, total_steps=95, budget_bytes=3000)
    written, spent, step = [], 0, 0
    while True:
        if schedule.due(step):
            spent += 100  # each write: 100 bytes; nothing else written
            written.append(step)
            schedule.record(step, spent, 100)
        if step == 95:
            break
        step = schedule.next_stop(step)
    # 3000 B allows ~29 writes: no thinning is needed at 10-step intervals.
    assert written == [0, 10, 20, 30, 40, 50, 60, 70, 80, 90, 95]

    tight = budget.ThinningSchedule(every=10, total_steps=95, budget_bytes=450)
    written, spent, step = [], 0, 0
    while True:
        if tight.due(step):
            spent += 100
            written.append(step)
            tight.record(step, spent, 100)
        if step == 95:
            break
        step = tight.next_stop(step)
    assert written[0] == 0
    assert written[-1] == 95
    assert len(written) * 100 <= 450
    assert written == sorted(set(written))


def test_schedule_disabled_never_due():
    schedule = budget.ThinningSchedule(every=0, total_steps=50, budget_bytes=0)
    assert not schedule.due(0)
    assert not schedule.due(50)
    assert schedule.next_stop(0) is None


def test_bytes_per_plugin_matches_files_on_disk(tiny_run):
    per_plugin = budget.bytes_per_plugin(tiny_run.path)
    assert {"scalars", "histograms", "images", "graph"} <= set(per_plugin)
    # Record sizes plus framing add up to the files (rounding: 1 B per value).
    on_disk = budget.event_bytes(tiny_run.path)
    assert abs(sum(per_plugin.values()) - on_disk) <= 0.01 * on_disk
    # What the run reported at exit (HParams' session end is written after).
    for plugin in ("scalars", "histograms", "images", "graph"):
        assert tiny_run.result.event_bytes[plugin] == per_plugin[plugin]


def test_run_prints_bytes_per_plugin(tiny_run):
    line = next(x for x in tiny_run.lines if x.startswith("event files: "))
    assert "scalars " in line
    assert "histograms " in line


def test_run_prints_its_whole_directory_bytes(tiny_run):
    """Checkpoints and artifacts count too, not only the event files."""
    line = next(x for x in tiny_run.lines if x.startswith("on disk: "))
    for part in ("events ", "checkpoints ", "artifacts "):
        assert part in line, line
    parts = tiny_run.result.disk_bytes
    checkpoints = tiny_run.path / "checkpoints"
    assert parts["checkpoints"] == sum(
        p.stat().st_size for p in checkpoints.rglob("*") if p.is_file()
    )
    events = sum(tiny_run.result.event_bytes.values())
    assert abs(parts["events"] - events) <= 0.01 * events
    assert parts["artifacts"] >= (tiny_run.path / "run.json").stat().st_size // 2


def test_histogram_event_bytes_estimate_matches_disk(tmp_path):
    import numpy as np

    from pipeline.tensorboard.summaries import SummaryLogger

    tags = [f"mlp/hidden_{i}/kernel" for i in range(5)] + ["gradients/mlp/logits/bias"]
    with SummaryLogger(tmp_path) as logger:
        for step in range(4):
            logger.histograms("train", step, [(t, np.arange(50.0)) for t in tags])
    on_disk = budget.bytes_per_plugin(tmp_path)["histograms"]
    estimate = 4 * sum(budget.histogram_event_bytes(t) for t in tags)
    assert abs(estimate - on_disk) <= 0.03 * on_disk


def test_schedule_ignores_one_time_bytes_of_the_first_chunk():
    # 3 MB of op graph lands on disk between step 0 and step 100; scalars then
    # add 100 B/step. 10 kB histograms every 100 steps over 6,000 steps fit in
    # 10 MB (3 + 0.6 + 0.6 MB): the interval must stay 100.
    schedule = budget.ThinningSchedule(
        every=100, total_steps=6000, budget_bytes=10 * MB
    )
    spent = 10_000
    schedule.record(0, spent, 10_000)
    for step in range(100, 6001, 100):
        spent += 100 * 100 + 10_000 + (3 * MB if step == 100 else 0)
        schedule.record(step, spent, 10_000)
    assert schedule.interval == 100


def test_schedule_after_a_resume_writes_at_the_next_interval():
    schedule = budget.ThinningSchedule(every=100, total_steps=1000, budget_bytes=0)
    assert not schedule.due(450)
    assert schedule.due(500)
    schedule.record(500, 0, 100)
    assert not schedule.due(550)
    assert schedule.due(600)
    assert schedule.due(1000)
